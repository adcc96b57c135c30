//! End to end: label-selected L3/L4 policy on a real dockerd (issue 2).
//! Each test has its own daemon, names and containers (see the harness).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use bpfwall_e2e::{Container, Direction, TestEnv, HTTPD, SLEEP};

fn url(ip: &str) -> String {
    format!("http://{ip}/")
}

/// The article's scenario on the default bridge, peers by address.
#[test]
fn article_scenario_on_default_bridge() {
    let env = TestEnv::new("article");
    let bpfwall_e2e::Article {
        app1,
        app2,
        app3,
        target,
    } = env.article(
        &["--label", "bpfwall.ingress=allow from id=app2 port 80/tcp"],
        &[],
    );
    env.assert_http_allowed(&app2, &target);
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);
    // Only 80/tcp: app2 cannot reach another port of app1 (which listens on 8080).
    env.assert_http_blocked_by(
        &app2,
        &format!("http://{}:8080/", env.ip(&app1)),
        &app1,
        Direction::Ingress,
    );

    let ep = env.endpoint(&app1).unwrap();
    assert_eq!(ep["ingress"]["state"], "enforced");
    assert_eq!(ep["ingress"]["rules"], 1);
    assert_eq!(ep["egress"]["state"], "open");
    assert!(
        ep["ingress"]["dropped_packets"].as_u64().unwrap() > 0,
        "{ep}"
    );
    assert!(
        ep["ingress"]["allowed_packets"].as_u64().unwrap() > 0,
        "{ep}"
    );
    let text = env.status_text();
    assert!(
        text.contains("e2e-article-app1")
            && text.contains("bpfwall.ingress=allow from id=app2 port 80/tcp"),
        "{text}"
    );
}

/// The same on a user-defined network, peers addressed by container name,
/// and a client that runs once with `docker run --rm` as the README shows.
#[test]
fn user_network_by_name() {
    let mut env = TestEnv::new("byname");
    let net = env.network("net");
    let net_opt = format!("--network={net}");
    let bpfwall_e2e::Article {
        app1, app2, app3, ..
    } = env.article(
        &["--label", "bpfwall.ingress=allow from id=app2 port 80/tcp"],
        &[&net_opt],
    );
    let target = format!("http://{}/", app1.name);
    env.assert_http_allowed(&app2, &target);
    // By name: a name that did not resolve would fail too, but not move app1's counter.
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);

    let once = |id: &str| {
        bpfwall_e2e::run(
            std::process::Command::new("docker")
                .args([
                    "run",
                    "--rm",
                    &net_opt,
                    "--label",
                    &format!("id={id}"),
                    "--label",
                ])
                .arg(format!("{}={}", bpfwall_e2e::TEST_LABEL, env.name))
                .arg(bpfwall_e2e::IMAGE)
                // As PID 1, busybox timeout's SIGTERM would be ignored; a shell stays PID 1.
                .args([
                    "sh",
                    "-c",
                    &format!("timeout 6 wget -q -O /dev/null {target}; exit $?"),
                ]),
        )
        .status
        .success()
    };
    assert!(
        once("app2"),
        "a fresh app2 must get through (at worst after a SYN retry)"
    );
    // A container just started: whether app1 still sees its address as
    // `world` or already as id=app3, app1's ingress is what drops it (and
    // app1 outlives it, so its counter can be read after).
    env.assert_blocked_by("a fresh app3", &app1, Direction::Ingress, || once("app3"));
}

#[test]
fn egress_rule() {
    let env = TestEnv::new("egress");
    let web = env.start_attached("web", &["--label", "id=web"], HTTPD);
    let other = env.start_attached("other", &["--label", "id=other"], HTTPD);
    let client = env.start_attached(
        "client",
        &[
            "--label",
            "id=client",
            "--label",
            "bpfwall.egress=allow to id=web port 80/tcp",
        ],
        HTTPD,
    );
    env.assert_http_allowed(&client, &url(&env.ip(&web)));
    env.assert_http_blocked_by(&client, &url(&env.ip(&other)), &client, Direction::Egress);
    // The client's ingress stays open; its answers leave through the
    // enforced egress as conntrack replies.
    env.assert_http_allowed(&other, &url(&env.ip(&client)));
    let ep = env.endpoint(&client).unwrap();
    assert_eq!(ep["egress"]["state"], "enforced");
    assert_eq!(ep["ingress"]["state"], "open");
}

#[test]
fn deny_wins_over_broader_allow() {
    let env = TestEnv::new("deny");
    let server = env.start_attached(
        "server",
        &[
            "--label",
            "id=server",
            "--label",
            "bpfwall.ingress=allow from any; deny from id=bad",
            "--label",
            "bpfwall.ingress.narrow=deny from id=good port 8080/tcp",
        ],
        &["sh", "-c", "httpd -p 8080 -h /www; httpd -f -p 80 -h /www"],
    );
    let good = env.start_attached("good", &["--label", "id=good"], SLEEP);
    let bad = env.start_attached("bad", &["--label", "id=bad"], SLEEP);
    let ip = env.ip(&server);
    env.assert_http_allowed(&good, &url(&ip));
    for (client, target) in [
        (&good, format!("http://{ip}:8080/")),
        (&bad, url(&ip)),
        (&bad, format!("http://{ip}:8080/")),
    ] {
        env.assert_http_blocked_by(client, &target, &server, Direction::Ingress);
    }
}

#[test]
fn port_range() {
    let env = TestEnv::new("range");
    let server = env.start_attached(
        "server",
        &["--label", "id=server", "--label", "bpfwall.ingress=allow from id=c port 8000-8100/tcp"],
        &["sh", "-c", "httpd -p 8000 -h /www; httpd -p 8100 -h /www; httpd -p 8101 -h /www; httpd -f -p 7999 -h /www"],
    );
    let c = env.start_attached("c", &["--label", "id=c"], SLEEP);
    let ip = env.ip(&server);
    env.assert_http_allowed(&c, &format!("http://{ip}:8000/"));
    env.assert_http_allowed(&c, &format!("http://{ip}:8100/"));
    for port in [8101, 7999] {
        env.assert_http_blocked_by(
            &c,
            &format!("http://{ip}:{port}/"),
            &server,
            Direction::Ingress,
        );
    }
}

#[test]
fn udp_with_replies() {
    let env = TestEnv::new("udp");
    let server = env.start_attached(
        "server",
        &[
            "--label",
            "id=server",
            "--label",
            "bpfwall.ingress=allow from id=c port 5353/udp",
        ],
        &["sh", "-c", "udp_echo serve 5354 & exec udp_echo serve 5353"],
    );
    // The client's egress is enforced too: the echo coming back is a reply.
    let c = env.start_attached(
        "c",
        &[
            "--label",
            "id=c",
            "--label",
            "bpfwall.egress=allow to id=server port 5353-5354/udp",
        ],
        SLEEP,
    );
    let d = env.start_attached("d", &["--label", "id=d"], SLEEP);
    let ip = env.ip(&server);
    assert!(
        env.udp(&c, &ip, 5353, 2000),
        "c -> 5353/udp must round-trip\n{}",
        env.status_text()
    );
    // Blocked at the server (it listens on both ports).
    env.assert_udp_blocked_by(&c, &ip, 5354, &server, Direction::Ingress);
    env.assert_udp_blocked_by(&d, &ip, 5353, &server, Direction::Ingress);
}

#[test]
fn cidr_and_world() {
    let mut env = TestEnv::new("cidr");
    let ns = env.outside_netns(1, &["198.18.5.2", "198.18.6.2"]);
    env.netns_http_server(&ns, 8080);
    let cidr = env.start_attached(
        "bycidr",
        &[
            "--label",
            "id=bycidr",
            "--label",
            "bpfwall.egress=allow to cidr 198.18.0.0/15 except 198.18.6.0/24 port 8080/tcp",
        ],
        SLEEP,
    );
    let world = env.start_attached(
        "byworld",
        &[
            "--label",
            "id=byworld",
            "--label",
            "bpfwall.egress=allow to world",
        ],
        SLEEP,
    );
    let web = env.start_attached("web", &["--label", "id=web"], HTTPD);
    // Without policy both outside addresses answer (the setup works).
    let open = env.start_attached("open", &["--label", "id=open"], SLEEP);
    env.assert_http_allowed(&open, "http://198.18.5.2:8080/");
    env.assert_http_allowed(&open, "http://198.18.6.2:8080/");

    // The outside namespace is not policed: every block is the client's egress.
    env.assert_http_allowed(&cidr, "http://198.18.5.2:8080/");
    env.assert_http_blocked_by(&cidr, "http://198.18.6.2:8080/", &cidr, Direction::Egress);
    env.assert_http_blocked_by(&cidr, &url(&env.ip(&web)), &cidr, Direction::Egress);

    env.assert_http_allowed(&world, "http://198.18.5.2:8080/");
    env.assert_http_allowed(&world, "http://198.18.6.2:8080/");
    env.assert_http_blocked_by(&world, &url(&env.ip(&web)), &world, Direction::Egress);
}

#[test]
fn host_network_container_under_policy() {
    let env = TestEnv::new("hostnet");
    let port = "18431";
    let server = env.start_attached(
        "server",
        &[
            "--network=host",
            "--label",
            "id=hostsrv",
            "--label",
            &format!("bpfwall.ingress=allow from id=c port {port}/tcp"),
        ],
        &["httpd", "-f", "-p", port, "-h", "/www"],
    );
    let c = env.start_attached("c", &["--label", "id=c"], SLEEP);
    let d = env.start_attached("d", &["--label", "id=d"], SLEEP);
    // The host's address on the clients' bridge.
    let gateway = bpfwall_e2e::must(std::process::Command::new("docker").args([
        "inspect",
        "-f",
        "{{.NetworkSettings.Gateway}}",
        &c.name,
    ]));
    assert!(!gateway.is_empty());
    let target = format!("http://{gateway}:{port}/");
    env.assert_http_allowed(&c, &target);
    env.assert_http_blocked_by(&d, &target, &server, Direction::Ingress);
    assert_eq!(
        env.endpoint(&server).unwrap()["ingress"]["state"],
        "enforced"
    );
}

#[test]
fn selector_follows_containers_started_later() {
    let env = TestEnv::new("later");
    let server = env.start_attached(
        "server",
        &[
            "--label",
            "id=server",
            "--label",
            "bpfwall.ingress=allow from role=client port 80/tcp",
        ],
        HTTPD,
    );
    let target = url(&env.ip(&server));
    let stranger = env.start_attached("stranger", &["--label", "role=other"], SLEEP);
    env.assert_http_blocked_by(&stranger, &target, &server, Direction::Ingress);
    // Two clients arrive after the server; nothing restarts.
    for n in 1..=2 {
        let c = env.start_attached(
            &format!("client{n}"),
            &["--label", "role=client", "--label", &format!("n={n}")],
            SLEEP,
        );
        env.assert_http_allowed(&c, &target);
    }
    env.assert_http_blocked_by(&stranger, &target, &server, Direction::Ingress);
}

#[test]
fn exit_leaves_no_state_behind() {
    let env = TestEnv::new("exit");
    let keeper = env.start_attached(
        "keeper",
        &[
            "--label",
            "id=keeper",
            "--label",
            "bpfwall.ingress=allow from id=x port 80/tcp",
        ],
        HTTPD,
    );
    let baseline = |env: &TestEnv| {
        (
            env.pinned_map_len("bpfwall_endpoints_v2"),
            env.pinned_map_len("bpfwall_policy_v2"),
            env.pinned_links(),
        )
    };
    let before = baseline(&env);
    assert_eq!(before.0, 1, "one endpoint");
    assert_eq!(before.2, 2, "two links (ingress, egress)");
    let target = url(&env.ip(&keeper));
    for i in 0..100 {
        let c: Container = env.start_attached(
            &format!("cycle{i}"),
            &[
                "--label",
                "id=x",
                "--label",
                "bpfwall.egress=allow to id=keeper port 80/tcp",
            ],
            SLEEP,
        );
        if i % 25 == 0 {
            env.assert_http_allowed(&c, &target);
        }
        env.remove(&c);
    }
    env.wait_for("state to return to the baseline", |env| {
        baseline(env) == before
    });
    // Conntrack entries of the removed endpoints are gone too: only the keeper's remain.
    let keeper_id = env.endpoint(&keeper).unwrap();
    assert_eq!(keeper_id["attached"], true);
    let ct = bpfwall_e2e::must(
        std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(env.pin_root.join("maps/bpfwall_ct_v2")),
    );
    let entries: serde_json::Value = serde_json::from_str(&ct).unwrap();
    let endpoint_ids: std::collections::BTreeSet<u64> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            // ct_key.endpoint_id is its last four bytes (little-endian here).
            let key = e["key"].as_array().unwrap();
            let b: Vec<u8> = key
                .iter()
                .map(|x| {
                    u8::from_str_radix(x.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect();
            u64::from(u32::from_le_bytes([b[40], b[41], b[42], b[43]]))
        })
        .collect();
    assert!(
        endpoint_ids.len() <= 1,
        "conntrack entries of {} endpoints remain: {endpoint_ids:?}",
        endpoint_ids.len()
    );
}

#[test]
fn daemon_sigkill_keeps_enforcing_and_restart_adopts() {
    let mut env = TestEnv::new("sigkill");
    let bpfwall_e2e::Article {
        app1,
        app2,
        app3,
        target,
    } = env.article(
        &["--label", "bpfwall.ingress=allow from id=app2 port 80/tcp"],
        &[],
    );
    env.assert_http_allowed(&app2, &target);
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);
    let identity_before = env.endpoint(&app1).unwrap()["identity"].clone();

    // With the daemon down there is no status to read: the counters are
    // read before the kill and after the restart (they live in a pinned
    // map, and app1 keeps its endpoint slot); only app3's attempt can have
    // made app1 drop in between.
    let before_kill = env.drops(&app1);
    env.kill_daemon();
    assert!(env.try_status().is_none(), "the daemon is down");
    env.assert_http_allowed(&app2, &target);
    assert!(
        !env.http(&app3, &target, 2),
        "app3 -> {target} should be blocked while the daemon is down"
    );

    env.start_daemon();
    env.wait_attached(&app1);
    env.assert_dropped_since(
        &before_kill,
        &app1,
        Direction::Ingress,
        "app3 -> app1 while the daemon was down",
    );
    assert_eq!(
        env.endpoint(&app1).unwrap()["identity"],
        identity_before,
        "identity adopted from the pins"
    );
    env.assert_http_allowed(&app2, &target);
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);
    assert_eq!(
        env.pinned_links(),
        6,
        "no duplicate links after the restart"
    );
    // The restarted daemon moved every link onto the programs it loaded
    // (as after an upgrade), without detaching anything.
    env.assert_links_run_the_daemons_programs(6);
}

#[test]
fn malformed_label_fails_closed_and_shows_in_status() {
    let env = TestEnv::new("badlabel");
    let broken = env.start_attached(
        "broken",
        &[
            "--label",
            "id=broken",
            "--label",
            "bpfwall.ingress=allow form id=c port 80/tcp",
        ],
        HTTPD,
    );
    let c = env.start_attached("c", &["--label", "id=c"], HTTPD);
    env.assert_http_blocked_by(&c, &url(&env.ip(&broken)), &broken, Direction::Ingress);
    // Egress was not broken: it stays open.
    env.assert_http_allowed(&broken, &url(&env.ip(&c)));
    let ep = env.endpoint(&broken).unwrap();
    assert_eq!(ep["ingress"]["state"], "closed (label error)");
    let errors = ep["errors"].to_string();
    assert!(
        errors.contains("e2e-badlabel-broken")
            && errors.contains("bpfwall.ingress")
            && errors.contains("column 7"),
        "{errors}"
    );
    let text = env.status_text();
    assert!(
        text.contains("ERROR container 'e2e-badlabel-broken': label 'bpfwall.ingress' column 7"),
        "{text}"
    );
}

#[test]
fn docker_restart_reconnects_and_resyncs() {
    let sock = std::path::PathBuf::from("/run/bpfwall-e2e/reconnect-docker.sock");
    std::fs::create_dir_all("/run/bpfwall-e2e").unwrap();
    let mut proxy = bpfwall_e2e::DockerProxy::start(&sock);
    let env = TestEnv::with_docker_socket("reconnect", Some(&sock));
    let server = env.start_attached(
        "server",
        &[
            "--label",
            "id=server",
            "--label",
            "bpfwall.ingress=allow from id=c port 80/tcp",
        ],
        HTTPD,
    );
    let gone = env.start_attached("gone", &["--label", "id=gone"], SLEEP);
    let target = url(&env.ip(&server));

    proxy.stop();
    env.wait_for("the daemon to notice dockerd is gone", |env| {
        env.status()["docker_connected"] == false
    });
    // While the daemon cannot see Docker: a new client is unknown (and so
    // refused by the server's selector rule), and a container goes away.
    let c = env.start("c", &["--label", "id=c"], SLEEP);
    env.remove(&gone);
    // c is not attached (the daemon has not heard of it): the server's
    // ingress drops it, c's address being `world` to its selector rule.
    env.assert_http_blocked_by(&c, &target, &server, Direction::Ingress);
    // The removed container's process is gone: it is withdrawn without
    // waiting for dockerd (a later container must not inherit its address).
    env.wait_for("the removed container to go while disconnected", |env| {
        env.pinned_links() == 2
    });

    let _proxy = bpfwall_e2e::DockerProxy::start(&sock);
    env.wait_attached(&c);
    env.wait_for("the removed container's links to go", |env| {
        env.pinned_links() == 4
    });
    assert!(env
        .endpoint(&Container {
            name: gone.name.clone()
        })
        .is_none());
    env.assert_http_allowed(&c, &target);
}

#[test]
fn a_container_gone_while_the_daemon_was_down_does_not_stop_its_restart() {
    // Its links outlive its cgroup (the kernel severs them); the restarted
    // daemon moves the live links onto its programs, skips the severed
    // ones, starts, and removes their pins.
    let mut env = TestEnv::new("severed");
    let gone = env.start_attached("gone", &["--label", "id=gone"], SLEEP);
    let stays = env.start_attached(
        "stays",
        &[
            "--label",
            "bpfwall.ingress=allow from id=nobody port 80/tcp",
        ],
        HTTPD,
    );
    assert_eq!(env.pinned_links(), 4);
    env.kill_daemon();
    env.remove(&gone);
    env.start_daemon();
    env.wait_attached(&stays);
    env.wait_for("the severed links to be removed", |e| e.pinned_links() == 2);
    env.assert_links_run_the_daemons_programs(2);
    let client = env.start_attached("client", &["--label", "id=client"], SLEEP);
    env.assert_http_blocked_by(&client, &url(&env.ip(&stays)), &stays, Direction::Ingress);
}

/// For a container in the host's network namespace, loopback is not
/// exempt: its traffic to 127.0.0.1 is the host's, and policed both ways
/// (docs/design.md, known limits).
#[test]
fn host_network_loopback_is_policed() {
    let env = TestEnv::new("hostlo");
    let port = "18432";
    let target = format!("http://127.0.0.1:{port}/");
    let server = env.start_attached(
        "server",
        &[
            "--network=host",
            "--label",
            "id=loserver",
            "--label",
            &format!("bpfwall.ingress=allow from host port {port}/tcp"),
        ],
        &["httpd", "-f", "-p", port, "-h", "/www"],
    );
    // Allowed to the host on that port: it gets there over loopback.
    let allowed = env.start_attached(
        "allowed",
        &[
            "--network=host",
            "--label",
            "id=loallowed",
            "--label",
            &format!("bpfwall.egress=allow to host port {port}/tcp"),
        ],
        SLEEP,
    );
    env.assert_http_allowed(&allowed, &target);
    // Allowed only to a container: its loopback connection is its egress's to drop.
    let limited = env.start_attached(
        "limited",
        &[
            "--network=host",
            "--label",
            "id=lolimited",
            "--label",
            "bpfwall.egress=allow to id=nobody port 80/tcp",
        ],
        SLEEP,
    );
    env.assert_http_blocked_by(&limited, &target, &limited, Direction::Egress);
    // And the server's ingress polices loopback clients: only host is allowed,
    // on that port; a second port is closed to loopback too.
    let other = "18433";
    bpfwall_e2e::must(std::process::Command::new("docker").args([
        "exec",
        "-d",
        &server.name,
        "httpd",
        "-f",
        "-p",
        other,
        "-h",
        "/www",
    ]));
    let open = env.start_attached("open", &["--network=host", "--label", "id=loopen"], SLEEP);
    env.assert_http_blocked_by(
        &open,
        &format!("http://127.0.0.1:{other}/"),
        &server,
        Direction::Ingress,
    );
    assert_eq!(env.endpoint(&server).unwrap()["network"], "host");
}
