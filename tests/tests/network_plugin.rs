//! End to end: the Docker network plugin (`docker network create -d
//! bpfwall`), on the real dockerd with real packets. Each test runs its own
//! daemon serving a plugin named like the test (`plug-...`), with networks
//! and containers of its own (`plug-...`).
//!
//! A blocked check names the program that must block it and shows that its
//! drop counter moved (the cgroup programs' counters, or the gate's drops
//! by reason), so a name that does not resolve or a server that is not up
//! never passes as a block.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use bpfwall_e2e::{must, run, Direction, PluginEnv, Runtime, TestEnv, World, HTTPD, SLEEP};

fn docker() -> Command {
    Command::new("docker")
}

/// A client whose very first action connects to ip:80; prints CONNECTED
/// with /proc/uptime before and after, or blocked.
fn first_action_connect(ip: &str, secs: u32) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "t0=$(cut -d' ' -f1 /proc/uptime); nc -w {secs} {ip} 80 </dev/null && echo CONNECTED $t0 $(cut -d' ' -f1 /proc/uptime) || echo blocked"
        ),
    ]
}

/// Runs `n` `docker run --rm` of `cmd`, four at a time; their outputs.
fn starts(env: &TestEnv, options: &[&str], cmd: &[String], n: usize) -> Vec<String> {
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for batch in 0..n.div_ceil(4) {
        let results: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4.min(n - batch * 4))
                .map(|_| s.spawn(|| env.run_plug_once(options, &cmd)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    let o = h.join().unwrap();
                    let stdout = String::from_utf8_lossy(&o.stdout).trim().to_string();
                    if o.status.success() {
                        stdout
                    } else {
                        format!(
                            "{stdout} (docker run failed: {})",
                            String::from_utf8_lossy(&o.stderr).trim()
                        )
                    }
                })
                .collect()
        });
        out.extend(results);
    }
    out
}

fn gate_drop(env: &TestEnv, reason: &str) -> u64 {
    env.gate_drops().get(reason).copied().unwrap_or(0)
}

fn net_opt(net: &str) -> String {
    format!("--network={net}")
}

#[test]
fn plug_scenario_by_name_and_address_and_network_connect() {
    let mut env = PluginEnv::new("plug-scen");
    let net = env.plugin_network("net", &["--subnet", "10.231.20.0/24"]);
    let on = net_opt(&net);
    let app1 = env.run_plug(
        "app1",
        &[
            &on,
            "--label",
            "id=app1",
            "--label",
            "bpfwall.ingress=allow from id=app2 port 80/tcp",
        ],
        HTTPD,
    );
    let app2 = env.run_plug("app2", &[&on, "--label", "id=app2"], SLEEP);
    let app3 = env.run_plug("app3", &[&on, "--label", "id=app3"], SLEEP);
    for c in [&app1, &app2, &app3] {
        env.wait_attached(c);
        env.wait_open(c, 1);
    }
    let ip1 = env.ip_on(&app1, &net, false);
    assert!(ip1.starts_with("10.231.20."), "{ip1}");
    // By name (Docker's embedded DNS) and by address.
    for url in [format!("http://{}/", app1.name), format!("http://{ip1}/")] {
        env.assert_http_allowed(&app2, &url);
        env.assert_http_blocked_by(&app3, &url, &app1, Direction::Ingress);
    }
    let status = env.status_text();
    assert!(
        status.contains("open: its container is policed"),
        "{status}"
    );

    // A running container (on Docker's default bridge) connected to the
    // network: its new endpoint opens once bpfwall polices it there.
    let late = env.run_plug("late", &["--label", "id=app2"], SLEEP);
    env.wait_attached(&late);
    must(docker().args(["network", "connect", &net, &late.name]));
    env.wait_open(&late, 1);
    env.assert_http_allowed(&late, &format!("http://{}/", app1.name));
    let late3 = env.run_plug("late3", &["--label", "id=app3"], SLEEP);
    env.wait_attached(&late3);
    must(docker().args(["network", "connect", &net, &late3.name]));
    env.wait_open(&late3, 1);
    env.assert_http_blocked_by(&late3, &format!("http://{ip1}/"), &app1, Direction::Ingress);
}

#[test]
fn plug_both_ways_with_dockers_own_bridges() {
    let mut env = PluginEnv::new("plug-both");
    let net = env.plugin_network("net", &["--subnet", "10.231.21.0/24"]);
    let br = env.bridge_network("br");
    let (on, onbr) = (net_opt(&net), net_opt(&br));
    // A server on each side, each admitting one client from the other side.
    let psrv = env.run_plug(
        "psrv",
        &[
            &on,
            "--label",
            "id=psrv",
            "--label",
            "bpfwall.ingress=allow from id=bfriend port 80/tcp",
        ],
        HTTPD,
    );
    let bsrv = env.run_plug(
        "bsrv",
        &[
            &onbr,
            "--label",
            "id=bsrv",
            "--label",
            "bpfwall.ingress=allow from id=pfriend port 80/tcp",
        ],
        HTTPD,
    );
    let bfriend = env.run_plug("bfriend", &[&onbr, "--label", "id=bfriend"], SLEEP);
    let bstranger = env.run_plug("bstranger", &[&onbr, "--label", "id=bstranger"], SLEEP);
    let pfriend = env.run_plug("pfriend", &[&on, "--label", "id=pfriend"], SLEEP);
    let pstranger = env.run_plug("pstranger", &[&on, "--label", "id=pstranger"], SLEEP);
    for c in [&psrv, &bsrv, &bfriend, &bstranger, &pfriend, &pstranger] {
        env.wait_attached(c);
    }
    for c in [&psrv, &pfriend, &pstranger] {
        env.wait_open(c, 1);
    }
    // Bridge to bpfwall network: the server sees each client's own address,
    // so its identity (dockerd's bridge masquerade does not apply).
    let purl = format!("http://{}/", env.ip_on(&psrv, &net, false));
    env.assert_http_allowed(&bfriend, &purl);
    env.assert_http_blocked_by(&bstranger, &purl, &psrv, Direction::Ingress);
    // And the other way: the plugin does not masquerade to Docker's bridges.
    let burl = format!("http://{}/", env.ip_on(&bsrv, &br, false));
    env.assert_http_allowed(&pfriend, &burl);
    env.assert_http_blocked_by(&pstranger, &burl, &bsrv, Direction::Ingress);
}

#[test]
fn plug_first_packet_30_forbidden_starts_0_through_30_allowed_all_through() {
    let mut env = PluginEnv::new("plug-first");
    let net = env.plugin_network("net", &["--subnet", "10.231.22.0/24"]);
    let on = net_opt(&net);
    let web = env.run_plug(
        "web",
        &[
            &on,
            "--label",
            "id=web",
            "--label",
            "bpfwall.ingress=allow from id=ok port 80/tcp",
        ],
        HTTPD,
    );
    let open = env.run_plug("open", &[&on, "--label", "id=open"], HTTPD);
    for c in [&web, &open] {
        env.wait_attached(c);
        env.wait_open(c, 1);
    }
    let (web_ip, open_ip) = (env.ip_on(&web, &net, false), env.ip_on(&open, &net, false));

    // Forbidden: its egress allows web only, and its first instruction
    // connects to `open` (which admits anyone). Without the gate, an event
    // listener lets the first connection through in 30 of 30 starts
    // (docs/runtime-hook.md). Each start's SYNs are dropped by bpfwall:
    // by the gate while it is closed, then by the client's own egress.
    let dropped = |env: &TestEnv| {
        gate_drop(env, "closed")
            + env
                .drops_by_reason()
                .get("policy-default-deny")
                .copied()
                .unwrap_or(0)
    };
    let before = dropped(&env);
    let leaked = starts(
        &env,
        &[
            &on,
            "--label",
            "id=nope",
            "--label",
            "bpfwall.egress=allow to id=web port 80/tcp",
        ],
        &first_action_connect(&open_ip, 3),
        30,
    );
    assert_eq!(leaked.len(), 30);
    assert!(
        leaked.iter().all(|o| o == "blocked"),
        "forbidden first connections got through: {leaked:?}\n{}",
        env.daemon_log()
    );
    let after = dropped(&env);
    assert!(
        after >= before + 30,
        "30 blocked starts, but only {} drops by the gate or by default deny\n{}",
        after - before,
        env.status_text()
    );

    // Allowed: every one of 30 connects; how long its first connection waits.
    let results = starts(
        &env,
        &[&on, "--label", "id=ok"],
        &first_action_connect(&web_ip, 6),
        30,
    );
    let mut waits: Vec<f64> = results
        .iter()
        .map(|o| {
            let parts: Vec<&str> = o.split_whitespace().collect();
            assert_eq!(
                parts.first(),
                Some(&"CONNECTED"),
                "an allowed start failed: {results:?}"
            );
            parts[2].parse::<f64>().unwrap() - parts[1].parse::<f64>().unwrap()
        })
        .collect();
    waits.sort_by(f64::total_cmp);
    eprintln!(
        "first allowed connection waited: median {:.2} s, max {:.2} s over 30 starts (the first SYN meets the closed gate; TCP sends it again after 1 s; a measure, not a test: scripts/bench-plugin.sh)",
        waits[15], waits[29]
    );
}

#[test]
fn plug_outbound_to_the_world_and_internal_networks() {
    let mut env = PluginEnv::new("plug-out");
    let world = World::new("plug-out-world", "plug-o0", 0, &["198.51.100.31"]);
    let log = std::path::PathBuf::from("/run/bpfwall-e2e/plug-out-world.log");
    let mut server = world.udp_log(7000, &log);
    let net = env.plugin_network("net", &["--subnet", "10.231.23.0/24"]);
    let internal = env.plugin_network("int", &["--internal", "--subnet", "10.231.24.0/24"]);
    let out = env.run_plug("out", &[&net_opt(&net), "--label", "id=out"], SLEEP);
    // NET_ADMIN lets it add a route out of the internal network: the gate
    // must drop what a container sends outside it, whatever its routes.
    let inside = env.run_plug(
        "inside",
        &[
            &net_opt(&internal),
            "--cap-add",
            "NET_ADMIN",
            "--label",
            "id=inside",
        ],
        SLEEP,
    );
    let peer = env.run_plug("peer", &[&net_opt(&internal), "--label", "id=peer"], HTTPD);
    for c in [&out, &inside, &peer] {
        env.wait_attached(c);
        env.wait_open(c, 1);
    }
    // Out to the world, masqueraded: the world sees the host, not 10.231.23.x.
    assert!(
        env.udp(&out, "198.51.100.31", 7000, 2000),
        "no way out\n{}",
        env.status_text()
    );
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(seen.contains("7000 "), "{seen}");
    assert!(!seen.contains("10.231.23."), "not masqueraded: {seen}");

    // Internal: no default route, so nothing leaves; the peer is reachable.
    let routes = env.exec_must(&inside, &["ip", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    env.assert_http_allowed(&inside, &format!("http://{}/", peer.name));
    // Given a route (through the network's gateway address, which the gate
    // answers ARP for), it still cannot leave: the gate drops it.
    env.exec_must(
        &inside,
        &["ip", "route", "add", "default", "via", "10.231.24.1"],
    );
    let before = gate_drop(&env, "internal");
    assert!(!env.udp(&inside, "198.51.100.31", 7000, 700));
    assert!(
        gate_drop(&env, "internal") > before,
        "not dropped by the gate as internal\n{}",
        env.status_text()
    );
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&log);
}

#[test]
fn plug_default_deny_network_and_ipv6() {
    let mut env = PluginEnv::new("plug-zt");
    let zt = env.plugin_network(
        "zt",
        &["-o", "bpfwall.default=deny", "--subnet", "10.231.25.0/24"],
    );
    let on = net_opt(&zt);
    // Every container here is default deny both ways until its labels allow.
    let srv = env.run_plug(
        "srv",
        &[
            &on,
            "--label",
            "id=srv",
            "--label",
            "bpfwall.ingress=allow from id=ok port 80/tcp",
        ],
        HTTPD,
    );
    let ok = env.run_plug(
        "ok",
        &[
            &on,
            "--label",
            "id=ok",
            "--label",
            "bpfwall.egress=allow to id=srv port 80/tcp",
        ],
        SLEEP,
    );
    let quiet = env.run_plug("quiet", &[&on, "--label", "id=ok"], SLEEP);
    let open_srv = env.run_plug("opensrv", &[&on, "--label", "id=opensrv"], HTTPD);
    for c in [&srv, &ok, &quiet, &open_srv] {
        env.wait_attached(c);
        env.wait_open(c, 1);
    }
    // Allowed both ways by labels; by name (DNS stays in the container).
    env.assert_http_allowed(&ok, &format!("http://{}/", srv.name));
    // Same identity as `ok` but no egress rule: its network's default denies.
    let srv_url = format!("http://{}/", env.ip_on(&srv, &zt, false));
    env.assert_http_blocked_by(&quiet, &srv_url, &quiet, Direction::Egress);
    // A server with no ingress rule admits nobody here.
    let open_url = format!("http://{}/", env.ip_on(&open_srv, &zt, false));
    env.assert_http_blocked_by(&ok, &open_url, &ok, Direction::Egress);
    let check = env.cli(&[
        "policy",
        "check",
        "--from",
        &ok.name,
        "--to",
        &open_srv.name,
        "--port",
        "80/tcp",
    ]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("its network's default is deny"),
        "check does not name the network's default: {text}"
    );

    // An IPv6 network works like IPv4.
    let v6 = env.plugin_network(
        "v6",
        &[
            "--ipv6",
            "--subnet",
            "10.231.26.0/24",
            "--subnet",
            "fd00:231:26::/64",
        ],
    );
    let on6 = net_opt(&v6);
    let srv6 = env.run_plug(
        "srv6",
        &[
            &on6,
            "--label",
            "id=srv6",
            "--label",
            "bpfwall.ingress=allow from id=ok6 port 80/tcp",
        ],
        HTTPD,
    );
    let ok6 = env.run_plug("ok6", &[&on6, "--label", "id=ok6"], SLEEP);
    let bad6 = env.run_plug("bad6", &[&on6, "--label", "id=bad6"], SLEEP);
    for c in [&srv6, &ok6, &bad6] {
        env.wait_attached(c);
        env.wait_open(c, 1);
    }
    let addr6 = env.ip_on(&srv6, &v6, true);
    assert!(addr6.starts_with("fd00:231:26:"), "{addr6}");
    let url6 = format!("http://[{addr6}]/");
    env.assert_http_allowed(&ok6, &url6);
    env.assert_http_blocked_by(&bad6, &url6, &srv6, Direction::Ingress);
}

#[test]
fn plug_publishing_a_port_fails_naming_the_network() {
    let mut env = PluginEnv::new("plug-pub");
    let net = env.plugin_network("net", &["--subnet", "10.231.27.0/24"]);
    let out = run(docker()
        .args(["run", "--rm", "--name", "plug-pub-p", "--label"])
        .arg(format!("bpfwall-e2e.test={}", env.name))
        .args([&net_opt(&net), "-p", "127.0.0.1:18080:80"])
        .arg(bpfwall_e2e::IMAGE)
        .args(["true"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "-p on a bpfwall network was ignored");
    assert!(
        stderr.contains(&net)
            && stderr.contains("does not publish ports: -p 127.0.0.1:18080:80/tcp"),
        "the refusal does not name the network and the port: {stderr}"
    );
}

#[test]
fn plug_daemon_sigkill_and_restart_under_a_live_flow() {
    let mut env = PluginEnv::new("plug-kill");
    let net = env.plugin_network("net", &["--subnet", "10.231.28.0/24"]);
    let on = net_opt(&net);
    let srv = env.run_plug(
        "srv",
        &[
            &on,
            "--label",
            "id=srv",
            "--label",
            "bpfwall.ingress=allow from id=cli port 7000/udp",
        ],
        &["udp_echo", "serve", "7000"],
    );
    let cli = env.run_plug("cli", &[&on, "--label", "id=cli"], SLEEP);
    let bad = env.run_plug("bad", &[&on, "--label", "id=bad"], SLEEP);
    for c in [&srv, &cli, &bad] {
        env.wait_attached(c);
        env.wait_open(c, 1);
    }
    let ip = env.ip_on(&srv, &net, false);
    // One flow of 160 datagrams, 50 ms apart (8 s), across the kill and
    // the restart: every one is answered.
    let flow = {
        let (name, ip) = (cli.name.clone(), ip.clone());
        std::thread::spawn(move || {
            run(docker().args([
                "exec", &name, "udp_echo", "ask", &ip, "7000", "500", "160", "50",
            ]))
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    env.kill_daemon();
    // While no daemon runs: the flow goes on, the refused client stays refused.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !env.udp(&bad, &ip, 7000, 700),
        "a refused client got through while the daemon was down"
    );
    let restarted = Instant::now();
    env.start_daemon();
    let socket = format!("/run/docker/plugins/{}.sock", env.plugin());
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "the plugin socket is not back"
    );
    let out = flow.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("answered 160 of 160"),
        "the flow lost datagrams across the daemon's death and restart: {text}\n{}",
        env.status_text()
    );
    eprintln!(
        "daemon back and in sync {:?} after its start",
        restarted.elapsed()
    );
    // Docker's next calls succeed: a new container joins and is policed.
    let late = env.run_plug("late", &[&on, "--label", "id=cli"], SLEEP);
    env.wait_attached(&late);
    env.wait_open(&late, 1);
    assert!(env.udp(&late, &ip, 7000, 2000), "{}", env.status_text());
    env.assert_udp_blocked_by(&bad, &ip, 7000, &srv, Direction::Ingress);
    // The gate on the server's interface runs the restarted daemon's program.
    let id = env.plugin_endpoints(&srv)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let filters = must(Command::new("tc").args([
        "filter",
        "show",
        "dev",
        &format!("bw{}", &id[..12]),
        "ingress",
    ]));
    assert!(filters.contains("bpfwall_netgate"), "{filters}");
}

#[test]
fn plug_network_rm_leaves_nothing_behind() {
    let mut env = PluginEnv::new("plug-rm");
    let net = env.plugin_network(
        "net",
        &[
            "--ipv6",
            "--subnet",
            "10.231.29.0/24",
            "--subnet",
            "fd00:231:29::/64",
        ],
    );
    let on = net_opt(&net);
    let a = env.run_plug("a", &[&on, "--label", "id=a"], SLEEP);
    let b = env.run_plug("b", &[&on, "--label", "id=b"], SLEEP);
    for c in [&a, &b] {
        env.wait_attached(c);
        env.wait_open(c, 1);
    }
    let alias = format!("bpfwall:{}:", env.plugin());
    let links = || {
        let out = must(Command::new("ip").args(["-d", "-o", "link", "show"]));
        out.lines().filter(|l| l.contains(&alias)).count()
    };
    let rules = || {
        let mut n = 0;
        for tool in ["iptables-save", "ip6tables-save"] {
            let out = must(&mut Command::new(tool));
            n += out
                .lines()
                .filter(|l| l.contains(&format!("bpfwall {} ", env.plugin())))
                .count();
        }
        n
    };
    let nat_table = || {
        must(Command::new("nft").args(["list", "tables"]))
            .contains(&format!("bpfwall_{}", env.plugin().replace('-', "_")))
    };
    let routes = || {
        must(Command::new("ip").args(["route"])).contains("10.231.29.")
            || must(Command::new("ip").args(["-6", "route"])).contains("fd00:231:29:")
    };
    assert_eq!(links(), 2);
    assert!(rules() > 0 && routes() && nat_table());
    assert_eq!(env.pinned_map_len("bpfwall_netgate_v1"), 2);

    for c in [&a, &b] {
        env.remove(c);
    }
    must(docker().args(["network", "rm", &net]));
    assert_eq!(links(), 0, "interfaces left");
    assert!(!routes(), "routes left");
    assert_eq!(rules(), 0, "firewall rules left");
    assert!(!nat_table(), "the nat table is left");
    assert_eq!(
        env.pinned_map_len("bpfwall_netgate_v1"),
        0,
        "gate entries left"
    );
    let state = std::fs::read_to_string(
        env.state_dir
            .join("network-plugin")
            .join(format!("{}.json", env.plugin())),
    )
    .unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["networks"], serde_json::json!({}));
    assert_eq!(state["endpoints"], serde_json::json!({}));
    assert_eq!(env.plugin_status()["networks"], serde_json::json!([]));
}

/// With the runtime wrapper, the daemon binds a container's plugin
/// endpoint at the OCI hook (its namespace is the endpoint's sandbox) and
/// opens the gate to exactly its policy before answering the hook, so
/// before the container's first instruction: an allowed first connect
/// goes through at its first SYN (the gate's `closed` drops do not move
/// while these clients start, and none waits for TCP's resend after 1 s),
/// and 30 forbidden first connects still get nothing through, each dropped
/// by bpfwall.
#[test]
fn plugb_wrapped_first_connect_goes_at_the_first_syn_and_forbidden_ones_never() {
    let mut env = PluginEnv::new("plugb-hook");
    let net = env.plugin_network("n1", &["--subnet", "10.231.63.0/24"]);
    let on = net_opt(&net);
    let rt = Runtime::install(&env, "rt", false);
    let wrapped = format!("--runtime={}", rt.name);
    let web = env.run_plug(
        "web",
        &[
            &on,
            "--label",
            "id=web",
            "--label",
            "bpfwall.ingress=allow from id=ok port 80/tcp",
        ],
        HTTPD,
    );
    let open = env.run_plug("open", &[&on, "--label", "id=open"], HTTPD);
    for c in [&web, &open] {
        env.wait_attached(c);
        env.wait_open(c, 1);
    }
    let (web_ip, open_ip) = (env.ip_on(&web, &net, false), env.ip_on(&open, &net, false));

    // Allowed, wrapped: each first connect at its first SYN: the client's
    // namespace counts no SYN sent again (TcpExt TCPSynRetrans, printed
    // after the connect), and it connected well within TCP's first resend
    // (1 s). The gate's `closed` count is no measure here: the host end's
    // own first IPv6 multicast report to a new container meets the closed
    // gate before the hook in every start.
    let mut cmd = first_action_connect(&web_ip, 3);
    cmd[2] = format!(
        "{}; awk '/^TcpExt:/{{if(!n){{n=split($0,h);next}} for(i=1;i<=NF;i++) if(h[i]==\"TCPSynRetrans\") print \"SYNRETRANS\", $i}}' /proc/net/netstat; sleep 600",
        cmd[2]
    );
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let clients: Vec<_> = (0..6)
        .map(|i| {
            env.run_plug(
                &format!("ok{i}"),
                &[&wrapped, &on, "--label", "id=ok"],
                &cmd,
            )
        })
        .collect();
    let mut waits = Vec::new();
    for c in &clients {
        env.wait_for(&format!("{} to connect or give up", c.name), |env| {
            let out = env.logs(c);
            out.contains("CONNECTED") || out.contains("blocked")
        });
        let out = env.logs(c);
        let parts: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(
            parts.first(),
            Some(&"CONNECTED"),
            "an allowed wrapped start failed: {out}"
        );
        waits.push(parts[2].parse::<f64>().unwrap() - parts[1].parse::<f64>().unwrap());
        assert!(
            out.contains("SYNRETRANS 0"),
            "{}'s first SYN was sent again (its endpoint was not open at its first instruction): {out}\n{}",
            c.name,
            env.daemon_log()
        );
    }
    assert!(
        waits.iter().all(|w| *w < 0.9),
        "a wrapped allowed client waited for a resent SYN: {waits:?}"
    );
    eprintln!("wrapped first allowed connections waited (s): {waits:?}");
    for c in &clients {
        env.remove(c);
    }

    // Forbidden, wrapped: its egress allows web only; its first
    // instruction connects to `open` (which admits anyone).
    let dropped = |env: &TestEnv| {
        gate_drop(env, "closed")
            + env
                .drops_by_reason()
                .get("policy-default-deny")
                .copied()
                .unwrap_or(0)
    };
    let before = dropped(&env);
    let leaked = starts(
        &env,
        &[
            &wrapped,
            &on,
            "--label",
            "id=nope",
            "--label",
            "bpfwall.egress=allow to id=web port 80/tcp",
        ],
        &first_action_connect(&open_ip, 2),
        30,
    );
    assert_eq!(leaked.len(), 30);
    assert!(
        leaked.iter().all(|o| o == "blocked"),
        "forbidden wrapped first connections got through: {leaked:?}"
    );
    let after = dropped(&env);
    assert!(
        after >= before + 30,
        "30 blocked starts, but only {} drops by the gate or by default deny\n{}",
        after - before,
        env.status_text()
    );
    // `docker run --rm` returns before Docker has removed the container:
    // gone (its endpoint deleted through the plugin) before the env goes.
    env.wait_for("the forbidden clients to be removed", |_| {
        must(docker().args([
            "ps",
            "-aq",
            "--filter",
            "label=id=nope",
            "--filter",
            &format!("network={net}"),
        ]))
        .is_empty()
    });
}
