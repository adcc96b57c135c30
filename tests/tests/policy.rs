//! End to end: Cilium-format policy files, the bpfwall.policy label, hot
//! reload, and the policy tools (issue 3). Each test has its own daemon.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::process::Command;

use bpfwall_e2e::{must, run, Container, Direction, TestEnv, HTTPD, SLEEP};

const ARTICLE: &str = r#"[{"endpointSelector":{"matchLabels":{"id":"app1"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"id":"app2"}}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}]}]"#;

fn file_in_force(env: &TestEnv, file: &str, error: bool) -> bool {
    env.status()["policy_files"]
        .as_array()
        .is_some_and(|files| {
            files.iter().any(|f| {
                f["file"].as_str().is_some_and(|n| n.ends_with(file))
                    && f["error"].is_null() != error
            })
        })
}

#[test]
fn article_policy_from_a_file_and_reload() {
    let env = TestEnv::new("pfile");
    let bpfwall_e2e::Article {
        app1,
        app2,
        app3,
        target,
    } = env.article(&[], &[]);
    env.assert_http_allowed(&app3, &target);

    env.write_policy("article.json", ARTICLE);
    env.wait_for("article.json to load", |env| {
        file_in_force(env, "article.json", false)
    });
    env.assert_http_allowed(&app2, &target);
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);

    // A broken version is rejected whole; the previous one stays in force.
    env.write_policy(
        "article.json",
        &ARTICLE.replace("fromEndpoints", "fromEndpoint"),
    );
    env.wait_for("the broken version to be rejected", |env| {
        file_in_force(env, "article.json", true)
    });
    let text = env.status_text();
    assert!(
        text.contains("article.json:1:")
            && text.contains("fromEndpoint")
            && text.contains("previous version stays in force"),
        "{text}"
    );
    env.assert_http_allowed(&app2, &target);
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);

    // A fixed version that admits app3 takes over without restarts.
    env.write_policy("article.json", &ARTICLE.replace("\"app2\"", "\"app3\""));
    env.wait_for("the fixed version to load", |env| {
        file_in_force(env, "article.json", false)
    });
    env.assert_http_allowed(&app3, &target);
    env.assert_http_blocked_by(&app2, &target, &app1, Direction::Ingress);

    // Removing the file removes its policy: app1 is open again.
    env.remove_policy("article.json");
    env.wait_for("the file to be dropped", |env| {
        env.status()["policy_files"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    env.assert_http_allowed(&app2, &target);
}

#[test]
fn policy_label_is_enforced() {
    let env = TestEnv::new("plabel");
    let label = r#"bpfwall.policy=[{"ingress":[{"fromEndpoints":[{"matchLabels":{"id":"app2"}}],"toPorts":[{"ports":[{"port":80,"protocol":"tcp"}]}]}]}]"#;
    let bpfwall_e2e::Article {
        app1,
        app2,
        app3,
        target,
    } = env.article(&["--label", label], &[]);
    env.assert_http_allowed(&app2, &target);
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);
    let explain = must(
        Command::new(bpfwall_e2e::bpfwall_bin())
            .args(["policy", "explain", &app1.name, "--socket"])
            .arg(&env.socket),
    );
    assert!(
        explain.contains("bpfwall.policy spec[0].ingress[0]") && explain.contains(&app2.name),
        "{explain}"
    );
}

#[test]
fn validate_reports_positions() {
    let dir = std::env::temp_dir().join(format!("bpfwall-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    let bad = dir.join("bad.yaml");
    std::fs::write(&good, ARTICLE).unwrap();
    std::fs::write(
        &bad,
        "endpointSelector: {}\negress:\n  - toPorts: [{ports: [{port: 80, protocol: SCTP}]}]\n",
    )
    .unwrap();
    let bin = bpfwall_e2e::bpfwall_bin();
    let ok = run(Command::new(&bin).args(["policy", "validate"]).arg(&good));
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let out = run(Command::new(&bin)
        .args(["policy", "validate"])
        .arg(&good)
        .arg(&bad));
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{}:3:", bad.display())) && text.contains("SCTP"),
        "{text}"
    );
    let label = run(Command::new(&bin).args([
        "policy",
        "validate",
        "--label",
        "bpfwall.egress=allow to id=x port 80/tpc",
    ]));
    assert_eq!(label.status.code(), Some(2));
    let text = String::from_utf8_lossy(&label.stdout);
    assert!(text.contains("label 'bpfwall.egress' column 23"), "{text}");
    let good_label = run(Command::new(&bin).args([
        "policy",
        "validate",
        "--label",
        "bpfwall.egress=allow to id=x port 80/tcp",
    ]));
    assert_eq!(good_label.status.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

const WEB_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {id: web}}
  ingress:
    - fromEndpoints:
        - matchExpressions: [{key: role, operator: In, values: [client, admin]}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    - fromEndpoints: [{matchLabels: {role: admin}}]
      toPorts: [{ports: [{port: 8000, endPort: 8100, protocol: tcp}]}]
    - fromEntities: [host]
    - fromEndpoints: [{matchLabels: {role: client}}]
      toPorts: [{ports: [{port: "5353", protocol: UDP}]}]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {quarantine: "yes"}}]
"#;

const API_POLICY: &str = r#"bpfwall.policy=[{"ingress":[{"fromEndpoints":[{"matchLabels":{"role":"admin"}}]}],"egress":[{"toEndpoints":[{"matchLabels":{"id":"web"}}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]},{"toCIDRSet":[{"cidr":"198.18.0.0/15","except":["198.18.6.0/24"]}]}]}]"#;

enum End<'a> {
    C(&'a Container),
    Addr(&'a str),
}

/// What real traffic must do: pass, or be dropped by this endpoint in this direction.
enum Expect<'a> {
    Allowed,
    BlockedBy(&'a Container, Direction),
}

#[test]
fn check_agrees_with_real_traffic() {
    let mut env = TestEnv::new("pcheck");
    let ns = env.outside_netns(2, &["198.18.5.9", "198.18.6.9"]);
    env.netns_http_server(&ns, 8080);
    env.write_policy("web.yaml", WEB_POLICY);
    env.wait_for("web.yaml to load", |env| {
        file_in_force(env, "web.yaml", false)
    });
    let web = env.start_attached(
        "web",
        &["--label", "id=web", "--label", "tier=front"],
        &["sh", "-c", "httpd -p 8080 -h /www; httpd -p 8101 -h /www; udp_echo serve 5353 & exec httpd -f -p 80 -h /www"],
    );
    let api = env.start_attached(
        "api",
        &[
            "--label",
            "id=api",
            "--label",
            "role=client",
            "--label",
            API_POLICY,
        ],
        &[
            "sh",
            "-c",
            "httpd -p 8080 -h /www; exec httpd -f -p 80 -h /www",
        ],
    );
    let ext = env.start_attached(
        "ext",
        &[
            "--label",
            "id=ext",
            "--label",
            "bpfwall.egress=allow to world port 8080/tcp",
        ],
        SLEEP,
    );
    let client = env.start_attached("client", &["--label", "role=client"], SLEEP);
    let admin = env.start_attached("admin", &["--label", "role=admin"], SLEEP);
    let bad = env.start_attached(
        "bad",
        &["--label", "role=client", "--label", "quarantine=yes"],
        SLEEP,
    );
    let stranger = env.start_attached("stranger", &["--label", "role=other"], HTTPD);
    let gateway = must(Command::new("docker").args([
        "inspect",
        "-f",
        "{{.NetworkSettings.Gateway}}",
        &web.name,
    ]));
    let (web_ip, api_ip, stranger_ip) = (env.ip(&web), env.ip(&api), env.ip(&stranger));

    use Direction::{Egress, Ingress};
    use End::{Addr, C};
    use Expect::{Allowed, BlockedBy};
    // (from, to, port, expected); every target listens on its port, so a
    // blocked case is bpfwall's drop, checked on the endpoint named.
    let cases: Vec<(End, End, &str, Expect)> = vec![
        (C(&client), C(&web), "80/tcp", Allowed),
        (C(&admin), C(&web), "80/tcp", Allowed),
        (C(&stranger), C(&web), "80/tcp", BlockedBy(&web, Ingress)),
        (C(&bad), C(&web), "80/tcp", BlockedBy(&web, Ingress)),
        (C(&client), C(&web), "8080/tcp", BlockedBy(&web, Ingress)),
        (C(&admin), C(&web), "8080/tcp", Allowed),
        (C(&admin), C(&web), "8101/tcp", BlockedBy(&web, Ingress)),
        (C(&client), C(&web), "5353/udp", Allowed),
        (C(&stranger), C(&web), "5353/udp", BlockedBy(&web, Ingress)),
        (C(&bad), C(&web), "5353/udp", BlockedBy(&web, Ingress)),
        (C(&admin), C(&api), "80/tcp", Allowed),
        (C(&admin), C(&api), "8080/tcp", Allowed),
        (C(&client), C(&api), "80/tcp", BlockedBy(&api, Ingress)),
        (C(&api), C(&web), "80/tcp", Allowed),
        (C(&api), C(&web), "8080/tcp", BlockedBy(&api, Egress)),
        (C(&api), C(&stranger), "80/tcp", BlockedBy(&api, Egress)),
        (C(&api), Addr("198.18.5.9"), "8080/tcp", Allowed),
        // The outside namespace is not policed: the client's egress blocks.
        (
            C(&api),
            Addr("198.18.6.9"),
            "8080/tcp",
            BlockedBy(&api, Egress),
        ),
        (C(&ext), Addr("198.18.6.9"), "8080/tcp", Allowed),
        (C(&ext), C(&stranger), "80/tcp", BlockedBy(&ext, Egress)),
        (C(&client), C(&stranger), "80/tcp", Allowed),
        (Addr(&gateway), C(&web), "80/tcp", Allowed),
        // From the host, which is not policed: the server's ingress blocks.
        (Addr(&gateway), C(&api), "80/tcp", BlockedBy(&api, Ingress)),
    ];
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (from, to, port, expect) in &cases {
        let expected = matches!(expect, Allowed);
        let before = match expect {
            BlockedBy(enforcer, _) => Some(env.drops(enforcer)),
            Allowed => None,
        };
        let mut args: Vec<String> = vec!["policy".into(), "check".into()];
        let name = |e: &End| match e {
            C(c) => c.name.clone(),
            Addr(a) => a.to_string(),
        };
        match from {
            C(c) => args.extend(["--from".into(), c.name.clone()]),
            Addr(a) => args.extend(["--from-cidr".into(), a.to_string()]),
        }
        match to {
            C(c) => args.extend(["--to".into(), c.name.clone()]),
            Addr(a) => args.extend(["--to-cidr".into(), a.to_string()]),
        }
        args.extend(["--port".into(), port.to_string()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.cli(&argv);
        let checked = match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            other => panic!(
                "check {args:?} exited {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        };
        let (number, proto) = port.split_once('/').unwrap();
        let to_ip = match to {
            C(c) if c.name == web.name => web_ip.clone(),
            C(c) if c.name == api.name => api_ip.clone(),
            C(c) if c.name == stranger.name => stranger_ip.clone(),
            C(c) => env.ip(c),
            Addr(a) => a.to_string(),
        };
        let real = match (from, proto) {
            (C(c), "tcp") => env.http(
                c,
                &format!("http://{to_ip}:{number}/"),
                if expected { 6 } else { 2 },
            ),
            (C(c), _) => env.udp(
                c,
                &to_ip,
                number.parse().unwrap(),
                if expected { 2000 } else { 800 },
            ),
            (Addr(_), _) => {
                // From the host itself: its address on the bridge is the source.
                let secs = if expected { "6" } else { "2" };
                run(Command::new("timeout").args([
                    secs,
                    "busybox",
                    "wget",
                    "-q",
                    "-O",
                    "/dev/null",
                    &format!("http://{to_ip}:{number}/"),
                ]))
                .status
                .success()
            }
        };
        let line = format!(
            "{} -> {} {port}: expected {expected}, check said {checked}, traffic said {real}\n{}",
            name(from),
            name(to),
            String::from_utf8_lossy(&out.stdout)
        );
        if checked != real || checked != expected {
            failures.push(line);
        } else if let (BlockedBy(enforcer, direction), Some(before)) = (expect, &before) {
            let after = env.drops(enforcer);
            if after.dropped(*direction) <= before.dropped(*direction) {
                failures.push(format!(
                    "{line}but {}'s {} drop counter did not move ({} before, {} after)\n",
                    enforcer.name,
                    direction.key(),
                    before.dropped(*direction),
                    after.dropped(*direction)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn a_file_broken_while_the_daemon_is_stopped_keeps_its_last_good_version() {
    let mut env = TestEnv::new("plastgood");
    let bpfwall_e2e::Article {
        app1,
        app2,
        app3,
        target,
    } = env.article(&[], &[]);
    env.write_policy("article.json", ARTICLE);
    env.wait_for("article.json to load", |env| {
        file_in_force(env, "article.json", false)
    });
    env.assert_http_allowed(&app2, &target);
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);

    // Stopped (an upgrade, a reboot); the file breaks meanwhile; started.
    env.stop_daemon();
    env.write_policy(
        "article.json",
        &ARTICLE.replace("fromEndpoints", "fromEndpoint"),
    );
    env.start_daemon();
    env.wait_attached(&app1);
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);
    env.assert_http_allowed(&app2, &target);
    assert_eq!(env.endpoint(&app1).unwrap()["ingress"]["rules"], 1);
    let file = env.status()["policy_files"][0].clone();
    assert_eq!(file["in_force"], "saved", "{file}");
    assert_eq!(file["specs"], 1, "{file}");
    let text = env.status_text();
    assert!(
        text.contains("article.json:1:")
            && text.contains("fromEndpoint")
            && text.contains("kept the last good version from ")
            && text.contains("stays in force"),
        "{text}"
    );
}
