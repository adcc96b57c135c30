//! Every handler, fed the exact bytes Docker 20.10 sent (the protocol
//! crate's captured fixtures), on an in-memory host: what each call does
//! to the host and what it answers; refusals with their words; malformed
//! bodies answered with an error while the driver carries on; a restart
//! over the saved state.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::collections::BTreeMap;

use bpfwall_plugin::binding::{BindState, Bindings};
use bpfwall_plugin::fake::FakeHost;
use bpfwall_plugin::store::StateStore;
use bpfwall_plugin::Driver;
use bpfwall_plugin_protocol::{Method, Response};
use labels_policy::datapath_abi as abi;

const NETWORK: &str = "ab435418689ede2b8353fe7db03bfca5c253ec6244e41a133dcb83b2286261bb";
const ENDPOINT: &str = "bfa0bc1e7aa62c8571ddae666cd58ee3025121303b67d6a8666cd19d18aaa2d1";

/// A captured request: its call and body.
fn fixture(name: &str) -> (Method, Vec<u8>) {
    let path = format!(
        "{}/../protocol/tests/fixtures/{name}.http",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let path = head.split(' ').nth(1).unwrap();
    (Method::from_path(path).unwrap(), raw[split + 4..].to_vec())
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: StateStore,
    driver: Driver<FakeHost>,
}

fn clock() -> u64 {
    1_000_000
}

fn later() -> u64 {
    1_000_000 + 3600
}

fn driver() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), "bpfwall").unwrap();
    let driver = Driver::new("bpfwall", FakeHost::default(), store.clone())
        .unwrap()
        .with_clock(clock);
    Fixture {
        _dir: dir,
        store,
        driver,
    }
}

impl Fixture {
    async fn send(&mut self, name: &str) -> Response {
        let (method, body) = fixture(name);
        self.driver.call(method, &body).await
    }

    async fn ok(&mut self, name: &str) -> Response {
        let r = self.send(name).await;
        assert!(!r.is_error(), "{name}: {r:?}");
        r
    }

    fn host(&self) -> &FakeHost {
        self.driver.host()
    }

    fn gate_flags(&self) -> u32 {
        let iface = &self.host().interfaces["bwbfa0bc1e7aa6"];
        self.host().gate[&iface.ifindex].flags
    }
}

fn bound(state: BindState, synced: bool) -> Bindings {
    Bindings {
        synced,
        holders: BTreeMap::from([(ENDPOINT.to_string(), ("app1".to_string(), state))]),
    }
}

#[tokio::test]
async fn a_container_lifecycle_on_docker_bytes() {
    let mut f = driver();
    assert_eq!(
        f.ok("activate").await.to_json(),
        br#"{"Implements":["NetworkDriver"]}"#
    );
    assert_eq!(
        f.ok("get_capabilities").await.to_json(),
        br#"{"Scope":"local","ConnectivityScope":"local"}"#
    );
    assert_eq!(f.ok("create_network_default_deny").await, Response::Empty);
    assert!(f.host().firewall.contains_key(NETWORK));
    assert_eq!(f.host().nat, [NETWORK]);
    assert!(f.driver.state().networks[NETWORK].default_deny);

    assert_eq!(f.ok("create_endpoint").await.to_json(), b"{}");
    // The daemon learns of a default-deny endpoint at once.
    assert!(f
        .driver
        .defaults()
        .default_deny_endpoints
        .contains(ENDPOINT));
    assert!(
        f.host().interfaces.is_empty(),
        "nothing on the host before Join"
    );

    let join = f.ok("join").await;
    assert_eq!(
        String::from_utf8(join.to_json()).unwrap(),
        r#"{"InterfaceName":{"SrcName":"bcbfa0bc1e7aa6","DstPrefix":"eth"},"Gateway":"10.231.0.1","DisableGatewayService":true}"#
    );
    assert_eq!(f.host().routes["10.231.0.2"], "bwbfa0bc1e7aa6");
    // Closed: IPv4, not open.
    assert_eq!(f.gate_flags(), abi::NETGATE_IPV4);
    let iface = f.host().interfaces["bwbfa0bc1e7aa6"].clone();
    let entry = f.host().gate[&iface.ifindex];
    assert_eq!(entry.addr4, [10, 231, 0, 2]);
    assert_eq!((entry.subnet4, entry.subnet4_len), ([10, 231, 0, 0], 24));
    assert_eq!(entry.host_mac, iface.mac);
    assert_eq!(iface.alias, format!("bpfwall:bpfwall:{ENDPOINT}"));

    let info = f.ok("endpoint_oper_info").await;
    assert_eq!(
        info.to_json(),
        br#"{"Value":{"bpfwall.interface":"bwbfa0bc1e7aa6"}}"#
    );
    assert_eq!(f.ok("program_external_connectivity").await, Response::Empty);

    // A daemon not in sync with Docker opens nothing.
    f.driver
        .apply_bindings(bound(BindState::Policed, false))
        .await;
    assert_eq!(f.gate_flags() & abi::NETGATE_OPEN, 0);
    f.driver
        .apply_bindings(bound(BindState::NotPoliced("map full".into()), true))
        .await;
    assert_eq!(f.gate_flags() & abi::NETGATE_OPEN, 0);
    let status = f.driver.status("sock");
    assert_eq!(
        status.networks[0].endpoints[0].reason,
        "closed: its container is not policed (map full)"
    );
    f.driver
        .apply_bindings(bound(BindState::Policed, true))
        .await;
    assert_eq!(f.gate_flags(), abi::NETGATE_IPV4 | abi::NETGATE_OPEN);
    let status = f.driver.status("sock");
    assert_eq!(
        status.networks[0].endpoints[0].container.as_deref(),
        Some("app1")
    );
    assert!(status.networks[0].endpoints[0].open);

    assert_eq!(f.ok("revoke_external_connectivity").await, Response::Empty);
    // The captured Leave and DeleteEndpoint name another endpoint of
    // another network (they came from a later container): both answer
    // success and change nothing here.
    assert_eq!(f.ok("leave").await, Response::Empty);
    assert_eq!(f.ok("delete_endpoint").await, Response::Empty);
    assert!(f.host().interfaces.contains_key("bwbfa0bc1e7aa6"));

    // Docker deletes the network: everything it made goes.
    assert_eq!(f.ok("delete_network").await, Response::Empty);
    assert!(f.host().interfaces.is_empty());
    assert!(f.host().routes.is_empty());
    assert!(f.host().gate.is_empty());
    assert!(f.host().firewall.is_empty());
    assert!(f.host().nat.is_empty());
    assert!(f.driver.state().endpoints.is_empty() && f.driver.state().networks.is_empty());
    assert_eq!(f.store.load().unwrap(), *f.driver.state());
    // Asked again (a retry after a restart): success, nothing to do.
    assert_eq!(f.ok("delete_network").await, Response::Empty);
}

#[tokio::test]
async fn leave_and_delete_remove_the_interface() {
    let mut f = driver();
    f.ok("create_network_default_deny").await;
    f.ok("create_endpoint").await;
    f.ok("join").await;
    let body = format!(r#"{{"NetworkID":"{NETWORK}","EndpointID":"{ENDPOINT}"}}"#);
    // The daemon learns the sandbox key at Join (where Docker mounts the
    // container's namespace), and the open gates once they are written.
    let keys = f.driver.defaults().sandbox_keys;
    assert!(
        keys.get(ENDPOINT)
            .is_some_and(|k| k.starts_with("/var/run/docker/netns/")),
        "{keys:?}"
    );
    let gates = bpfwall_plugin::OpenGates::default();
    f.driver.set_open_gates(gates.clone());
    f.driver
        .apply_bindings(bound(BindState::Policed, true))
        .await;
    assert!(gates.is_open(ENDPOINT));
    f.driver
        .apply_bindings(bound(BindState::NotPoliced("gone".into()), true))
        .await;
    assert!(!gates.is_open(ENDPOINT));
    let r = f.driver.call(Method::Leave, body.as_bytes()).await;
    assert_eq!(r, Response::Empty);
    assert!(
        f.host().interfaces.is_empty() && f.host().gate.is_empty() && f.host().routes.is_empty()
    );
    assert!(f.driver.defaults().sandbox_keys.is_empty());
    assert!(!f.driver.state().endpoints[ENDPOINT].joined);
    let r = f.driver.call(Method::DeleteEndpoint, body.as_bytes()).await;
    assert_eq!(r, Response::Empty);
    assert!(f.driver.state().endpoints.is_empty());
    assert!(f.driver.defaults().default_deny_endpoints.is_empty());
}

#[tokio::test]
async fn published_ports_are_refused_naming_the_network_and_the_ports() {
    let mut f = driver();
    f.ok("create_network_default_deny").await;
    let Response::Error(e) = f.send("create_endpoint_published_ports").await else {
        panic!("-p was not refused")
    };
    assert_eq!(
        e,
        "bpfwall network ab435418689e does not publish ports: -p 8080:80/tcp, -p 5353:53/udp cannot be done (reach the container from a container on the network, or publish from a container also on a bridge network)"
    );
    assert!(f.driver.state().endpoints.is_empty());
    let Response::Error(e) = f
        .send("program_external_connectivity_published_ports")
        .await
    else {
        panic!("-p was not refused")
    };
    assert!(e.contains("does not publish ports"), "{e}");
}

#[tokio::test]
async fn an_internal_ipv6_network_has_no_gateway_and_an_internal_gate() {
    let mut f = driver();
    f.ok("create_network_internal_ipv6").await;
    f.ok("create_endpoint_ipv6_internal").await;
    let network = "64d444819e1c924699957e943e396bb38e475fd091742d7180f6978722c95f71";
    let endpoint = "308577f580f787a473b1d64b41124cd7356f35a050b5805a74c41e661f254b22";
    let body = format!(
        r#"{{"NetworkID":"{network}","EndpointID":"{endpoint}","SandboxKey":"/var/run/docker/netns/0dee72c066f7","Options":{{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}}}"#
    );
    let join = f.driver.call(Method::Join, body.as_bytes()).await;
    assert_eq!(
        String::from_utf8(join.to_json()).unwrap(),
        r#"{"InterfaceName":{"SrcName":"bc308577f580f7","DstPrefix":"eth"},"DisableGatewayService":true}"#
    );
    let iface = &f.host().interfaces["bw308577f580f7"];
    let entry = f.host().gate[&iface.ifindex];
    assert_eq!(
        entry.flags,
        abi::NETGATE_INTERNAL | abi::NETGATE_IPV4 | abi::NETGATE_IPV6
    );
    assert_eq!(entry.subnet6_len, 64);
    assert_eq!(f.host().routes["fd00:231::2"], "bw308577f580f7");
    assert!(f.driver.defaults().default_deny_endpoints.is_empty());
}

#[tokio::test]
async fn malformed_requests_are_answered_with_an_error_and_the_driver_carries_on() {
    let mut f = driver();
    let (_, body) = fixture("create_network_default_deny");
    let Response::Error(e) = f
        .driver
        .call(Method::CreateNetwork, &body[..body.len() - 10])
        .await
    else {
        panic!("a cut body was taken")
    };
    assert!(
        e.starts_with(
            "NetworkDriver.CreateNetwork: the request body is not valid at line 1 column "
        ),
        "{e}"
    );
    let Response::Error(e) = f.driver.call(Method::Join, b"").await else {
        panic!()
    };
    assert_eq!(
        e,
        "NetworkDriver.Join: the request has no body (expected a JSON object)"
    );
    let Response::Error(e) = f.driver.call(Method::Join, b"[1,2]").await else {
        panic!()
    };
    assert_eq!(
        e,
        "NetworkDriver.Join: the request body is not valid at line 1 column 2: invalid type: integer `1`, expected a string"
    );
    // Calls for what it does not know are refused by name.
    let (_, join) = fixture("join");
    let Response::Error(e) = f.driver.call(Method::Join, &join).await else {
        panic!()
    };
    assert_eq!(
        e,
        "network ab435418689e is not a bpfwall network this daemon knows"
    );
    // And it still works.
    f.ok("create_network_default_deny").await;
    f.ok("create_endpoint").await;
    f.ok("join").await;
    // An id that is no Docker id never becomes an interface name.
    let bad = format!(
        r#"{{"NetworkID":"{NETWORK}","EndpointID":"../../x","Interface":{{"Address":"10.231.0.9/24"}}}}"#
    );
    let Response::Error(e) = f.driver.call(Method::CreateEndpoint, bad.as_bytes()).await else {
        panic!()
    };
    assert!(e.contains("field EndpointID is \"../../x\""), "{e}");
}

#[tokio::test]
async fn options_bpfwall_does_not_have_are_refused_never_ignored() {
    let mut f = driver();
    let (_, body) = fixture("create_network_default_deny");
    let text = String::from_utf8(body).unwrap();
    for (from, to, expected) in [
        (
            r#""bpfwall.default":"deny""#,
            r#""bpfwall.default":"maybe""#,
            "bpfwall network ab435418689e: option bpfwall.default=\"maybe\": expected allow or deny",
        ),
        (
            r#""bpfwall.default":"deny""#,
            r#""com.docker.network.driver.mtu":"1400""#,
            "bpfwall network ab435418689e: option com.docker.network.driver.mtu is not supported (bpfwall networks take -o bpfwall.default=allow|deny)",
        ),
    ] {
        let changed = text.replace(from, to);
        let Response::Error(e) = f.driver.call(Method::CreateNetwork, changed.as_bytes()).await else {
            panic!("{to} was taken")
        };
        assert_eq!(e, expected);
    }
    assert!(f.driver.state().networks.is_empty());
    assert!(f.host().firewall.is_empty());
}

#[tokio::test]
async fn a_restart_keeps_what_is_in_force_and_removes_what_is_stale() {
    let mut f = driver();
    f.ok("create_network_default_deny").await;
    f.ok("create_endpoint").await;
    f.ok("join").await;
    f.driver
        .apply_bindings(bound(BindState::Policed, true))
        .await;
    assert_ne!(f.gate_flags() & abi::NETGATE_OPEN, 0);

    // The daemon dies; meanwhile an interface of this plugin that no
    // endpoint has turns up (a Join whose answer was lost).
    let mut host = std::mem::replace(
        &mut f.driver,
        Driver::new("bpfwall", FakeHost::default(), f.store.clone()).unwrap(),
    )
    .into_host();
    host.interfaces.insert(
        "bwdeadbeef0000".into(),
        bpfwall_plugin::host::HostInterface {
            name: "bwdeadbeef0000".into(),
            ifindex: 4242,
            mac: [0; 6],
            alias: "bpfwall:bpfwall:deadbeef0000aaaa".into(),
        },
    );
    // Another plugin's interface is left alone.
    host.interfaces.insert(
        "bwother000000".into(),
        bpfwall_plugin::host::HostInterface {
            name: "bwother000000".into(),
            ifindex: 4243,
            mac: [0; 6],
            alias: format!("bpfwall:other:{ENDPOINT}"),
        },
    );
    let mut restarted = Driver::new("bpfwall", host, f.store.clone())
        .unwrap()
        .with_clock(clock);
    restarted.start().await.unwrap();
    let host = restarted.host();
    assert!(!host.interfaces.contains_key("bwdeadbeef0000"));
    assert!(host.interfaces.contains_key("bwother000000"));
    assert_eq!(host.reattached, ["bwbfa0bc1e7aa6"]);
    let iface = &host.interfaces["bwbfa0bc1e7aa6"];
    assert_ne!(
        host.gate[&iface.ifindex].flags & abi::NETGATE_OPEN,
        0,
        "what was open stays open through the restart"
    );
    assert!(host.firewall.contains_key(NETWORK));

    // Docker no longer has the endpoint's container, long after: stale.
    let mut restarted = restarted.with_clock(later);
    restarted
        .apply_bindings(Bindings {
            synced: true,
            holders: BTreeMap::new(),
        })
        .await;
    assert!(restarted.state().endpoints.is_empty());
    assert!(!restarted.host().interfaces.contains_key("bwbfa0bc1e7aa6"));
}

#[tokio::test]
async fn an_endpoint_whose_interface_died_with_its_container_is_no_longer_joined() {
    let mut f = driver();
    f.ok("create_network_default_deny").await;
    f.ok("create_endpoint").await;
    f.ok("join").await;
    let mut host = std::mem::replace(
        &mut f.driver,
        Driver::new("bpfwall", FakeHost::default(), f.store.clone()).unwrap(),
    )
    .into_host();
    // The container's namespace went away, and its veth pair with it.
    host.interfaces.clear();
    let mut restarted = Driver::new("bpfwall", host, f.store.clone()).unwrap();
    restarted.start().await.unwrap();
    assert!(!restarted.state().endpoints[ENDPOINT].joined);
    assert!(restarted.host().gate.is_empty());
    assert!(!f.store.load().unwrap().endpoints[ENDPOINT].joined);
}

static NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000_000);

fn moving_clock() -> u64 {
    NOW.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn an_endpoint_no_container_holds_any_more_goes_soon_one_never_held_goes_late() {
    let mut f = driver();
    f.driver = std::mem::replace(
        &mut f.driver,
        Driver::new("bpfwall", FakeHost::default(), f.store.clone()).unwrap(),
    )
    .with_clock(moving_clock);
    f.ok("create_network_default_deny").await;
    f.ok("create_endpoint").await;
    f.ok("join").await;
    let synced_without_holders = Bindings {
        synced: true,
        holders: BTreeMap::new(),
    };
    // Never held: kept well past its creation (a container starting).
    NOW.store(1_000_000 + 60, std::sync::atomic::Ordering::SeqCst);
    f.driver
        .apply_bindings(synced_without_holders.clone())
        .await;
    assert!(f.driver.state().endpoints.contains_key(ENDPOINT));
    // Held by a running container, then by none (dockerd restarted and
    // forgot it without telling the plugin): gone 10 s later.
    f.driver
        .apply_bindings(bound(BindState::Policed, true))
        .await;
    NOW.store(1_000_000 + 65, std::sync::atomic::Ordering::SeqCst);
    f.driver
        .apply_bindings(synced_without_holders.clone())
        .await;
    assert!(f.driver.state().endpoints.contains_key(ENDPOINT));
    NOW.store(1_000_000 + 71, std::sync::atomic::Ordering::SeqCst);
    f.driver.apply_bindings(synced_without_holders).await;
    assert!(f.driver.state().endpoints.is_empty());
    assert!(f.host().interfaces.is_empty() && f.host().gate.is_empty());
    // Docker's late DeleteEndpoint for it is answered with success.
    assert_eq!(f.ok("delete_endpoint").await, Response::Empty);
}
