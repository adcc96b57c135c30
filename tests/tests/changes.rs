//! End to end: how policy changes land (hardening issue): an exact allow
//! replaced by a deny under continuous traffic, a policy map too small for
//! a change, and identities of compose replicas. Each test has its own
//! daemon, names and containers (see the harness).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::time::{Duration, Instant};

use bpfwall_e2e::{Direction, TestEnv, HTTPD, SLEEP};

/// Lines `udp_echo log` printed for datagrams to `port`.
fn received(env: &TestEnv, server: &bpfwall_e2e::Container, port: u16) -> usize {
    let prefix = format!("{port} ");
    env.logs(server)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .count()
}

/// A server whose policy lives in a file: an exact allow of one client on
/// one UDP port, replaced by a deny of that client while the client sends a
/// datagram every 2 ms on one flow. Once bpfwall says the deny is in force,
/// no datagram of the flow reaches the server, and the server's ingress
/// drops them.
#[test]
fn an_exact_allow_replaced_by_a_deny_under_traffic_lets_nothing_through_after() {
    let env = TestEnv::new("swap");
    let server = env.start_attached(
        "server",
        &["--label", "id=server"],
        &["udp_echo", "log", "5353"],
    );
    let client = env.start_attached("client", &["--label", "id=swapc"], SLEEP);
    let allow = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: swap}\nspec:\n  endpointSelector: {matchLabels: {id: server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {id: swapc}}]\n    toPorts: [{ports: [{port: \"5353\", protocol: UDP}]}]\n";
    env.write_policy("swap.yaml", allow);
    env.wait_for("the allow to be in force", |env| {
        env.endpoint(&server)
            .is_some_and(|e| e["ingress"]["state"] == "enforced")
    });
    let ip = env.ip(&server);
    // One flow, for a long while: a datagram every 2 ms.
    bpfwall_e2e::must(std::process::Command::new("docker").args([
        "exec",
        "-d",
        &client.name,
        "udp_echo",
        "ask",
        &ip,
        "5353",
        "1",
        "30000",
        "2",
    ]));
    env.wait_for("datagrams to arrive", |env| {
        received(env, &server, 5353) > 20
    });

    // The allow goes, a deny of the client comes (and an allow of anyone
    // else, so the direction stays enforced with an allow entry in force).
    let deny = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: swap}\nspec:\n  endpointSelector: {matchLabels: {id: server}}\n  ingress:\n  - fromEntities: [all]\n    toPorts: [{ports: [{port: \"5353\", protocol: UDP}]}]\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {id: swapc}}]\n";
    let before = env.drops(&server);
    env.write_policy("swap.yaml", deny);
    env.wait_for("the deny to be in force", |env| {
        let explain = env.cli(&["policy", "explain", &server.name, "--json"]);
        String::from_utf8_lossy(&explain.stdout).contains("\"verdict\": \"deny\"")
    });
    let at_change = received(&env, &server, 5353);
    std::thread::sleep(Duration::from_secs(2));
    let after = received(&env, &server, 5353);
    assert_eq!(
        after,
        at_change,
        "{} datagrams of the denied flow arrived after the deny was in force",
        after - at_change
    );
    env.assert_dropped_since(&before, &server, Direction::Ingress, "the denied flow");
    let drops = env.drops(&server);
    assert!(
        drops.reason("policy-deny") + drops.reason("flow-revoked")
            > before.reason("policy-deny") + before.reason("flow-revoked"),
        "dropped as denied: {drops:?}"
    );
}

/// With policy maps of 8 entries, a server whose rules need 8 more cannot
/// fit beside one that holds an entry: its ingress is closed, not opened,
/// status names the map, and the drops are bpfwall's. When the first
/// server goes, the second one's policy goes in.
#[test]
fn a_full_policy_map_closes_the_change_and_recovers_when_room_frees() {
    let env = TestEnv::with_daemon_args("full", &["--policy-map-entries", "8"]);
    let first = env.start_attached(
        "first",
        &[
            "--label",
            "id=first",
            "--label",
            "bpfwall.ingress=allow from id=fullc port 80/tcp",
        ],
        HTTPD,
    );
    let client = env.start_attached("client", &["--label", "id=fullc"], SLEEP);
    let first_url = format!("http://{}/", env.ip(&first));
    env.assert_http_allowed(&client, &first_url);

    // Eight single ports: eight exact entries, nine with the first's.
    let ports: Vec<String> = (81..=88)
        .map(|p| format!("allow from id=fullc port {p}/tcp"))
        .collect();
    let second = env.start_attached(
        "second",
        &[
            "--label",
            "id=second",
            "--label",
            &format!("bpfwall.ingress={}", ports.join("; ")),
        ],
        &["httpd", "-f", "-p", "81", "-h", "/www"],
    );
    let second_url = format!("http://{}:81/", env.ip(&second));
    env.wait_for(
        "the second's ingress to be closed for the full map",
        |env| {
            env.endpoint(&second).is_some_and(|e| {
                e["ingress"]["state"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("closed (map bpfwall_policy"))
            })
        },
    );
    let status = env.status();
    assert!(status["map_full_events"].as_u64().unwrap() > 0, "{status}");
    env.assert_http_blocked_by(&client, &second_url, &second, Direction::Ingress);
    assert!(env.drops(&second).reason("policy-error") > 0);
    // The first server's policy is untouched.
    env.assert_http_allowed(&client, &first_url);

    // Room again: the change goes in whole.
    env.remove(&first);
    env.wait_for("the second's ingress to be enforced", |env| {
        env.endpoint(&second)
            .is_some_and(|e| e["ingress"]["state"] == "enforced")
    });
    env.assert_http_allowed(&client, &second_url);
}

/// Three replicas of one compose service share one identity (compose's
/// per-replica labels are left out of identities), and a client allowed by
/// the service's label reaches each of them.
#[test]
fn replicas_of_a_compose_service_share_one_identity() {
    let mut env = TestEnv::new("replicas");
    let net = env.network("net");
    let dir = std::env::temp_dir().join(format!("bpfwall-e2e-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let compose = format!(
        "version: '2.4'\nservices:\n  web:\n    image: {image}\n    command: [httpd, -f, -p, '80', -h, /www]\n    labels:\n      {label}: replicas\n      tier: web\n      bpfwall.ingress: allow from id=rclient port 80/tcp\nnetworks:\n  default:\n    external:\n      name: {net}\n",
        image = bpfwall_e2e::IMAGE,
        label = bpfwall_e2e::TEST_LABEL,
    );
    std::fs::write(dir.join("docker-compose.yml"), compose).unwrap();
    let compose_cmd = |args: &[&str]| {
        let mut cmd = std::process::Command::new("docker-compose");
        cmd.arg("--project-name")
            .arg("e2ereplicas")
            .arg("--file")
            .arg(dir.join("docker-compose.yml"))
            .args(args);
        cmd
    };
    struct Down<F: Fn()>(F);
    impl<F: Fn()> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _down = Down(|| {
        let _ = bpfwall_e2e::run(&mut compose_cmd(&["down", "--timeout", "1"]));
        let _ = std::fs::remove_dir_all(&dir);
    });
    bpfwall_e2e::must(&mut compose_cmd(&["up", "-d", "--scale", "web=3"]));
    let t0 = Instant::now();
    let replicas = loop {
        let status = env.status();
        let replicas: Vec<serde_json::Value> = status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("e2ereplicas_web_")
            })
            .filter(|e| e["attached"] == true)
            .cloned()
            .collect();
        if replicas.len() == 3 || t0.elapsed() > Duration::from_secs(20) {
            break replicas;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(replicas.len(), 3, "three replicas attached");
    let identities: std::collections::BTreeSet<u64> = replicas
        .iter()
        .map(|e| e["identity"].as_u64().unwrap())
        .collect();
    assert_eq!(
        identities.len(),
        1,
        "one identity for the three: {replicas:?}"
    );

    let client = env.start_attached(
        "client",
        &["--network", &net, "--label", "id=rclient"],
        SLEEP,
    );
    let stranger = env.start_attached(
        "stranger",
        &["--network", &net, "--label", "id=rstranger"],
        SLEEP,
    );
    for n in 1..=3 {
        let url = format!("http://e2ereplicas_web_{n}/");
        env.assert_http_allowed(&client, &url);
        let replica = bpfwall_e2e::Container {
            name: format!("e2ereplicas_web_{n}"),
        };
        env.assert_http_blocked_by(&stranger, &url, &replica, Direction::Ingress);
    }
}

/// `--network container:X`: the joiner sends from X's address, which peers
/// see as X (never as the joiner, whatever the order of their ids), while
/// the joiner's own policy polices its own sockets.
#[test]
fn a_container_in_anothers_namespace_is_seen_as_the_owner() {
    let env = TestEnv::new("joined");
    let owner = env.start_attached("owner", &["--label", "id=jowner"], HTTPD);
    let joiner = env.start_attached(
        "joiner",
        &[
            "--network",
            &format!("container:{}", owner.name),
            "--label",
            "id=jjoiner",
            "--label",
            "bpfwall.egress=allow to id=jserver port 80/tcp",
        ],
        SLEEP,
    );
    // The server admits the owner's identity only.
    let server = env.start_attached(
        "server",
        &[
            "--label",
            "id=jserver",
            "--label",
            "bpfwall.ingress=allow from id=jowner port 80/tcp",
        ],
        HTTPD,
    );
    let other = env.start_attached("other", &["--label", "id=jother"], HTTPD);
    let joiner_status = env.endpoint(&joiner).unwrap();
    assert_eq!(
        joiner_status["network"],
        format!("joined {}", owner.name),
        "{joiner_status}"
    );
    // From the joiner, the server sees the owner's address: admitted.
    env.assert_http_allowed(&joiner, &format!("http://{}/", env.ip(&server)));
    // The joiner's own egress still polices its sockets.
    env.assert_http_blocked_by(
        &joiner,
        &format!("http://{}/", env.ip(&other)),
        &joiner,
        Direction::Egress,
    );
}
