//! Every call decoded from the exact bytes Docker 20.10.24 sent: the
//! fixtures were captured by a logging plugin socket in front of a real
//! `docker network create -d ...`, `docker run` (with and without `-p`),
//! `docker network connect`, `docker rm -f` and `docker network rm`.
//! Each file is the whole HTTP request as it came off the socket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::net::IpAddr;

use bpfwall_plugin_protocol::{
    decode, EndpointOptions, Method, ProtocolError, Request, CONTENT_TYPE,
};

/// A captured request: its path, its headers (lower-cased names) and body.
struct Captured {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn fixture(name: &str) -> Captured {
    let path = format!("{}/tests/fixtures/{name}.http", env!("CARGO_MANIFEST_DIR"));
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a blank line after the headers");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap();
    let mut parts = request_line.split(' ');
    assert_eq!(parts.next(), Some("POST"), "{name}: {request_line}");
    let path = parts.next().unwrap().to_string();
    assert_eq!(parts.next(), Some("HTTP/1.1"));
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Captured {
        path,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn header<'a>(c: &'a Captured, name: &str) -> Option<&'a str> {
    c.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn decoded(name: &str) -> (Method, Request) {
    let c = fixture(name);
    let method = Method::from_path(&c.path).unwrap();
    let request = decode(method, &c.body).unwrap_or_else(|e| panic!("{name}: {e}"));
    (method, request)
}

const NETWORK: &str = "ab435418689ede2b8353fe7db03bfca5c253ec6244e41a133dcb83b2286261bb";
const ENDPOINT: &str = "bfa0bc1e7aa62c8571ddae666cd58ee3025121303b67d6a8666cd19d18aaa2d1";

#[test]
fn docker_sends_no_content_type_and_no_body_for_the_handshake() {
    for name in [
        "activate",
        "get_capabilities",
        "join",
        "create_network_default_deny",
    ] {
        let c = fixture(name);
        assert_eq!(header(&c, "content-type"), None, "{name}");
        assert_eq!(header(&c, "accept"), Some(CONTENT_TYPE), "{name}");
    }
    let activate = fixture("activate");
    assert!(activate.body.is_empty());
    assert_eq!(header(&activate, "content-length"), Some("0"));
    assert_eq!(decoded("activate"), (Method::Activate, Request::Activate));
    assert_eq!(
        decoded("get_capabilities"),
        (Method::GetCapabilities, Request::GetCapabilities)
    );
}

#[test]
fn create_network_with_a_generic_option() {
    let (method, request) = decoded("create_network_default_deny");
    assert_eq!(method, Method::CreateNetwork);
    let Request::CreateNetwork(r) = request else {
        panic!("{request:?}")
    };
    assert_eq!(r.network_id, NETWORK);
    let o = r.options().unwrap();
    assert_eq!(
        o.generic.get("bpfwall.default").map(String::as_str),
        Some("deny")
    );
    assert!(!o.internal && !o.enable_ipv6);
    assert_eq!(o.ipv4.len(), 1);
    assert_eq!(o.ipv4[0].subnet.to_string(), "10.231.0.0/24");
    assert_eq!(
        o.ipv4[0].gateway,
        Some("10.231.0.1".parse::<IpAddr>().unwrap())
    );
    assert!(o.ipv6.is_empty());
}

#[test]
fn create_network_internal_with_ipv6() {
    let (_, request) = decoded("create_network_internal_ipv6");
    let Request::CreateNetwork(r) = request else {
        panic!("{request:?}")
    };
    let o = r.options().unwrap();
    assert!(o.internal && o.enable_ipv6);
    assert!(o.generic.is_empty());
    assert_eq!(o.ipv6[0].subnet.to_string(), "fd00:231::/64");
    assert_eq!(
        o.ipv6[0].gateway,
        Some("fd00:231::1".parse::<IpAddr>().unwrap())
    );
}

#[test]
fn create_network_with_a_pool_docker_chose() {
    let (_, request) = decoded("create_network_default_pool");
    let Request::CreateNetwork(r) = request else {
        panic!("{request:?}")
    };
    let o = r.options().unwrap();
    assert_eq!(o.ipv4[0].subnet.to_string(), "172.18.0.0/16");
    assert_eq!(r.ipv4_data[0].address_space, "LocalDefault");
}

#[test]
fn create_endpoint_with_and_without_ports() {
    let (_, request) = decoded("create_endpoint");
    let Request::CreateEndpoint(r) = request else {
        panic!("{request:?}")
    };
    assert_eq!(
        (r.network_id.as_str(), r.endpoint_id.as_str()),
        (NETWORK, ENDPOINT)
    );
    let iface = r.interface.clone().unwrap();
    assert_eq!(iface.ipv4().unwrap().unwrap().to_string(), "10.231.0.2/24");
    assert_eq!(iface.ipv6().unwrap(), None);
    assert_eq!(iface.mac_address, "");
    assert_eq!(
        EndpointOptions::parse(Method::CreateEndpoint, &r.options).unwrap(),
        EndpointOptions::default()
    );

    let (_, request) = decoded("create_endpoint_published_ports");
    let Request::CreateEndpoint(r) = request else {
        panic!("{request:?}")
    };
    let o = EndpointOptions::parse(Method::CreateEndpoint, &r.options).unwrap();
    let published: Vec<String> = o.port_map.iter().map(ToString::to_string).collect();
    assert_eq!(published, ["8080:80/tcp", "5353:53/udp"]);
    assert_eq!(o.exposed_ports.len(), 3);

    // An internal network's endpoint comes with no options at all.
    let (_, request) = decoded("create_endpoint_ipv6_internal");
    let Request::CreateEndpoint(r) = request else {
        panic!("{request:?}")
    };
    assert!(r.options.is_empty());
    assert_eq!(
        r.interface.unwrap().ipv6().unwrap().unwrap().to_string(),
        "fd00:231::2/64"
    );
}

#[test]
fn join_names_a_sandbox_but_no_container() {
    let (_, request) = decoded("join");
    let Request::Join(r) = request else {
        panic!("{request:?}")
    };
    assert_eq!(r.endpoint_id, ENDPOINT);
    assert_eq!(r.sandbox_key, "/var/run/docker/netns/df7571f3a5c5");
    let text = String::from_utf8(fixture("join").body).unwrap();
    assert!(!text.contains("Container"), "{text}");
}

#[test]
fn external_connectivity_carries_the_ports() {
    let (_, request) = decoded("program_external_connectivity_published_ports");
    let Request::ProgramExternalConnectivity(r) = request else {
        panic!("{request:?}")
    };
    let o = EndpointOptions::parse(Method::ProgramExternalConnectivity, &r.options).unwrap();
    assert_eq!(o.port_map.len(), 2);
    let (_, request) = decoded("program_external_connectivity");
    let Request::ProgramExternalConnectivity(r) = request else {
        panic!("{request:?}")
    };
    assert!(
        EndpointOptions::parse(Method::ProgramExternalConnectivity, &r.options)
            .unwrap()
            .port_map
            .is_empty()
    );
}

#[test]
fn the_endpoint_calls() {
    for (name, method) in [
        ("endpoint_oper_info", Method::EndpointOperInfo),
        ("leave", Method::Leave),
        ("delete_endpoint", Method::DeleteEndpoint),
        (
            "revoke_external_connectivity",
            Method::RevokeExternalConnectivity,
        ),
    ] {
        let (m, request) = decoded(name);
        assert_eq!(m, method, "{name}");
        let r = match request {
            Request::EndpointOperInfo(r)
            | Request::Leave(r)
            | Request::DeleteEndpoint(r)
            | Request::RevokeExternalConnectivity(r) => r,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(r.network_id.len(), 64, "{name}");
        assert_eq!(r.endpoint_id.len(), 64, "{name}");
    }
    let (_, request) = decoded("delete_network");
    let Request::DeleteNetwork(r) = request else {
        panic!("{request:?}")
    };
    assert_eq!(r.network_id, NETWORK);
}

#[test]
fn malformed_bodies_are_clear_errors_that_name_the_call_and_position() {
    // The captured Join, cut short.
    let body = fixture("join").body;
    let cut = &body[..body.len() / 2];
    let err = decode(Method::Join, cut).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ProtocolError::Json { line: 1, .. }), "{text}");
    assert!(
        text.starts_with("NetworkDriver.Join: the request body is not valid at line 1 column "),
        "{text}"
    );

    let err = decode(Method::CreateNetwork, b"{\"NetworkID\": 12}").unwrap_err();
    assert!(err.to_string().contains("invalid type: integer"), "{err}");

    let err = decode(Method::CreateEndpoint, b"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "NetworkDriver.CreateEndpoint: the request has no body (expected a JSON object)"
    );
    let err = decode(Method::Leave, b"  \n").unwrap_err();
    assert!(matches!(err, ProtocolError::EmptyBody { .. }));

    // Well-formed JSON, wrong values.
    let Request::CreateNetwork(r) = decode(
        Method::CreateNetwork,
        br#"{"NetworkID":"n","Options":{"com.docker.network.internal":"maybe"},"IPv4Data":[{"Pool":"10.77.0.0/33"}]}"#,
    )
    .unwrap() else {
        panic!()
    };
    let err = r.options().unwrap_err().to_string();
    assert!(
        err.contains("com.docker.network.internal") && err.contains("true or false"),
        "{err}"
    );
    let Request::CreateNetwork(r) = decode(
        Method::CreateNetwork,
        br#"{"NetworkID":"n","IPv4Data":[{"Pool":"fd00::/64"}]}"#,
    )
    .unwrap() else {
        panic!()
    };
    let err = r.options().unwrap_err().to_string();
    assert_eq!(
        err,
        "NetworkDriver.CreateNetwork: field IPv4Data[0].Pool is \"fd00::/64\": expected an IPv4 prefix"
    );
    let Request::CreateEndpoint(r) = decode(
        Method::CreateEndpoint,
        br#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.77.0.300/24"},"Options":{"com.docker.network.portmap":"80"}}"#,
    )
    .unwrap() else {
        panic!()
    };
    assert!(r.interface.unwrap().ipv4().is_err());
    let err = EndpointOptions::parse(Method::CreateEndpoint, &r.options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a list of port bindings"), "{err}");
}

#[test]
fn calls_without_arguments_take_any_body() {
    assert_eq!(
        decode(Method::Activate, b"null\n").unwrap(),
        Request::Activate
    );
    assert_eq!(
        decode(Method::GetCapabilities, b"{garbage").unwrap(),
        Request::GetCapabilities
    );
    // Fields a later Docker may add are not refused.
    let r = decode(
        Method::Leave,
        br#"{"NetworkID":"n","EndpointID":"e","SomethingNew":1}"#,
    )
    .unwrap();
    assert!(matches!(r, Request::Leave(_)));
    // Swarm-only and discovery calls decode too (answered with success).
    assert!(matches!(
        decode(
            Method::DiscoverNew,
            br#"{"DiscoveryType":1,"DiscoveryData":{"Address":"10.0.0.1","self":true}}"#
        )
        .unwrap(),
        Request::DiscoverNew(_)
    ));
    assert!(matches!(
        decode(
            Method::AllocateNetwork,
            br#"{"NetworkID":"n","Options":{}}"#
        )
        .unwrap(),
        Request::AllocateNetwork(_)
    ));
    assert!(matches!(
        decode(Method::FreeNetwork, br#"{"NetworkID":"n"}"#).unwrap(),
        Request::FreeNetwork(_)
    ));
}
