//! End to end: flow events (`bpfwall monitor`), Prometheus metrics, audit
//! mode and policy learned from traffic (`bpfwall advise`, `bpfwall map`),
//! on a real dockerd with real traffic. Every name starts with `flow-`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::process::Command;
use std::time::Duration;

use bpfwall_e2e::{
    bpfwall_bin, must, parse_prometheus, run, scrape_metrics, Direction, TestEnv, HTTPD, SLEEP,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// A record of the receiver's ingress decision on a flow from -> to.
fn is_flow(r: &Value, verdict: &str, from: &str, to: &str) -> bool {
    r["type"] == "flow"
        && r["verdict"] == verdict
        && r["direction"] == "ingress"
        && r["container"] == to
        && r["source"]["container"] == from
        && r["destination"]["container"] == to
}

/// `monitor --json` names both containers, their labels and the rule of an
/// allowed and a denied flow; its filters keep only what they say.
#[test]
fn flow_monitor_names_containers_and_rules_and_filters() {
    let env = TestEnv::new("flow-mon");
    let bpfwall_e2e::Article {
        app1,
        app2,
        app3,
        target,
    } = env.article(
        &["--label", "bpfwall.ingress=allow from id=app2 port 80/tcp"],
        &[],
    );
    let all = env.monitor(&["--json"]);
    let dropped = env.monitor(&["--json", "--verdict", "dropped"]);
    let by_app3 = env.monitor(&["--json", "--container", "id=app3"]);
    let by_name = env.monitor(&[
        "--json",
        "--container",
        &app2.name,
        "--direction",
        "ingress",
    ]);
    let port_8080 = env.monitor(&["--json", "--port", "8080"]);
    let human = env.monitor(&[]);

    env.assert_http_allowed(&app2, &target);
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);

    let allowed = all
        .wait_for(WAIT, |r| is_flow(r, "allowed", &app2.name, &app1.name))
        .unwrap_or_else(|| panic!("no allowed flow app2 -> app1: {:?}", all.records()));
    assert_eq!(allowed["direction"], "ingress");
    assert_eq!(allowed["port"], 80);
    assert_eq!(allowed["protocol"], "tcp");
    assert_eq!(allowed["rule"], "bpfwall.ingress[0]");
    assert_eq!(allowed["source"]["labels"]["id"], "app2");
    assert_eq!(allowed["destination"]["labels"]["id"], "app1");
    let denied = all
        .wait_for(WAIT, |r| is_flow(r, "dropped", &app3.name, &app1.name))
        .unwrap_or_else(|| panic!("no dropped flow app3 -> app1: {:?}", all.records()));
    assert_eq!(denied["drop_reason"], "policy-default-deny");
    assert!(
        denied["summary"]
            .as_str()
            .unwrap()
            .contains("no ingress rule allows it"),
        "{denied}"
    );
    // app2's own egress (no rules: open) is reported too, naming no rule.
    all.wait_for(WAIT, |r| {
        r["verdict"] == "allowed"
            && r["direction"] == "egress"
            && r["container"] == app2.name.as_str()
    })
    .expect("app2's egress decision");

    // Filters.
    dropped
        .wait_for(WAIT, |r| is_flow(r, "dropped", &app3.name, &app1.name))
        .expect("the dropped filter shows the drop");
    assert!(
        dropped.records().iter().all(|r| r["verdict"] == "dropped"),
        "{:?}",
        dropped.records()
    );
    by_app3
        .wait_for(WAIT, |r| r["source"]["container"] == app3.name.as_str())
        .expect("the selector filter shows app3's flows");
    assert!(by_app3.records().iter().all(|r| {
        r["source"]["labels"]["id"] == "app3" || r["destination"]["labels"]["id"] == "app3"
    }));
    assert!(by_name.records().iter().all(|r| r["direction"] == "ingress"
        && (r["source"]["container"] == app2.name.as_str()
            || r["destination"]["container"] == app2.name.as_str())));
    assert!(
        !by_name.records().is_empty(),
        "app2 -> app1 is an ingress flow of app2's"
    );
    assert!(
        port_8080.records().is_empty(),
        "nothing went to 8080: {:?}",
        port_8080.records()
    );
    env.assert_http_blocked_by(
        &app2,
        &format!("http://{}:8080/", env.ip(&app1)),
        &app1,
        Direction::Ingress,
    );
    port_8080
        .wait_for(WAIT, |r| r["port"] == 8080 && r["verdict"] == "dropped")
        .expect("the port filter shows the drop on 8080");
    assert!(port_8080.records().iter().all(|r| r["port"] == 8080));

    // For people: one line naming verdict, containers, labels and rule.
    let start = std::time::Instant::now();
    loop {
        let lines = human.lines();
        if lines.iter().any(|l| {
            l.contains("ALLOWED ingress")
                && l.contains(&format!(" {} (", app2.name))
                && l.contains("id=app2) -> ")
                && l.contains(&format!(" {} (", app1.name))
                && l.contains("id=app1) tcp/80: allowed by bpfwall.ingress[0]")
        }) {
            break;
        }
        assert!(start.elapsed() < WAIT, "no such line in {lines:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A flood of denied datagrams: the Prometheus counters, scraped over
/// HTTP and parsed as Prometheus text, equal the datapath's own counts;
/// events the ring could not hold are reported as lost, and `monitor`
/// still answers after it. A non-loopback metrics address is refused.
#[test]
fn flow_flood_keeps_exact_counters_and_reports_lost_events() {
    let port = bpfwall_e2e::free_loopback_port();
    let addr = format!("127.0.0.1:{port}");
    // Every event sent (no rate limit) into a ring of 8 KiB (about 100
    // events): the flood must overflow it.
    let env = TestEnv::with_daemon_args(
        "flow-flood",
        &[
            "--metrics-addr",
            &addr,
            "--metrics-per-container",
            "--flow-event-interval-ms",
            "0",
            "--flow-event-ring-bytes",
            "8192",
        ],
    );
    // A UDP socket on 5353: cgroup/skb ingress runs for packets that find
    // a socket, so the flood must aim at one.
    let server = env.start_attached(
        "server",
        &[
            "--label",
            "id=server",
            "--label",
            "bpfwall.ingress=allow from id=client port 80/tcp",
        ],
        &[
            "sh",
            "-c",
            "udp_echo serve 5353 & exec httpd -f -p 80 -h /www",
        ],
    );
    let client = env.start_attached("client", &["--label", "id=client"], SLEEP);
    let flooder = env.start_attached("flooder", &["--label", "id=flooder"], SLEEP);
    let target = format!("http://{}/", env.ip(&server));
    let monitor = env.monitor(&["--json"]);

    // 1,000 flows of 300 datagrams each, denied at the server's ingress.
    let out = env.exec(
        &flooder,
        &["rawpkt", "flood", &env.ip(&server), "5353", "1000", "300"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lost = monitor
        .wait_for(WAIT, |r| {
            r["type"] == "lost_events" && r["source"] == "datapath"
        })
        .unwrap_or_else(|| {
            panic!(
                "no lost-events record after the flood ({}); metrics: {}",
                String::from_utf8_lossy(&out.stdout),
                scrape_metrics(&addr)
            )
        });
    assert!(lost["count"].as_u64().unwrap() > 0);
    // Still answering: a new flow after the flood shows up.
    env.assert_http_allowed(&client, &target);
    monitor
        .wait_for(WAIT, |r| {
            r["type"] == "flow"
                && r["verdict"] == "allowed"
                && r["container"] == server.name.as_str()
        })
        .expect("monitor answers after the flood");

    // Quiet now: the scrape and the datapath's counts must agree exactly.
    std::thread::sleep(Duration::from_millis(500));
    let status = env.status();
    let metrics = parse_prometheus(&scrape_metrics(&addr));
    let drops = |reason: &str| -> f64 {
        ["ingress", "egress"]
            .iter()
            .map(|d| {
                metrics
                    [&format!("bpfwall_drop_count_total{{reason=\"{reason}\",direction=\"{d}\"}}")]
            })
            .sum()
    };
    for (reason, n) in status["drops"].as_object().unwrap() {
        assert_eq!(
            drops(reason),
            n.as_u64().unwrap() as f64,
            "drops of {reason}"
        );
    }
    assert!(drops("policy-default-deny") >= 1000.0, "{metrics:?}");
    let server_ep = env.endpoint(&server).unwrap();
    assert_eq!(
        metrics[&format!(
            "bpfwall_container_drop_count_total{{container=\"{}\",direction=\"ingress\"}}",
            server.name
        )],
        server_ep["ingress"]["dropped_packets"].as_u64().unwrap() as f64
    );
    assert!(metrics["bpfwall_flow_events_lost_total"] > 0.0);
    assert!(metrics["bpfwall_forward_count_total{direction=\"ingress\"}"] > 0.0);
    assert!(
        metrics["bpfwall_policy_verdicts_total{direction=\"ingress\",action=\"deny\"}"] >= 1000.0
    );
    assert_eq!(metrics["bpfwall_endpoints{state=\"policed\"}"], 3.0);
    assert!(metrics["bpfwall_map_capacity{map=\"bpfwall_policy_v2\"}"] > 0.0);
    assert!(metrics["bpfwall_policy_apply_duration_seconds_count"] >= 1.0);
    assert_eq!(metrics["bpfwall_reconcile_errors_total"], 0.0);

    // Loopback only, unless asked: refused before anything starts.
    let refused = run(Command::new(bpfwall_bin()).args([
        "daemon",
        "--metrics-addr",
        "0.0.0.0:9",
        "--bpffs-root",
        "/sys/fs/bpf/flow-never-made",
        "--socket",
        "/run/bpfwall-e2e/flow-never-made.sock",
    ]));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--metrics-allow-remote"),
        "{err}"
    );
    assert!(!std::path::Path::new("/sys/fs/bpf/flow-never-made").exists());
}

/// Audit mode passes what enforce mode drops and reports it; status shows
/// the mode; a bad mode value fails closed, naming the label.
#[test]
fn flow_audit_passes_what_enforce_drops_and_reports_it() {
    let env = TestEnv::new("flow-audit");
    let rule = "bpfwall.ingress=allow from id=client port 80/tcp";
    let enforced = env.start_attached(
        "enforced",
        &["--label", "id=enforced", "--label", rule],
        HTTPD,
    );
    let audited = env.start_attached(
        "audited",
        &[
            "--label",
            "id=audited",
            "--label",
            rule,
            "--label",
            "bpfwall.mode=audit",
        ],
        HTTPD,
    );
    let stranger = env.start_attached("stranger", &["--label", "id=stranger"], SLEEP);
    let monitor = env.monitor(&["--json", "--verdict", "audit"]);

    env.assert_http_blocked_by(
        &stranger,
        &format!("http://{}/", env.ip(&enforced)),
        &enforced,
        Direction::Ingress,
    );
    let before = env.drops(&audited);
    env.assert_http_allowed(&stranger, &format!("http://{}/", env.ip(&audited)));
    assert_eq!(
        env.drops(&audited).ingress,
        before.ingress,
        "audit drops nothing"
    );
    let r = monitor
        .wait_for(WAIT, |r| r["container"] == audited.name.as_str())
        .expect("an audit record for the audited container");
    assert_eq!(r["source"]["container"], stranger.name.as_str());
    assert_eq!(r["drop_reason"], "policy-default-deny");
    assert!(monitor.records().iter().all(|r| r["verdict"] == "audit"));

    assert_eq!(env.endpoint(&audited).unwrap()["mode"], "audit");
    assert_eq!(env.endpoint(&enforced).unwrap()["mode"], "enforce");
    assert!(env.status_text().contains("AUDIT"), "{}", env.status_text());

    // A typo in the mode: closed both ways (never audit), the label named.
    let typo = env.start_attached(
        "typo",
        &[
            "--label",
            "id=typo",
            "--label",
            rule,
            "--label",
            "bpfwall.mode=audti",
        ],
        HTTPD,
    );
    let ep = env.endpoint(&typo).unwrap();
    assert_eq!(ep["mode"], "enforce");
    assert_eq!(ep["ingress"]["state"], "closed (label error)");
    assert_eq!(ep["egress"]["state"], "closed (label error)");
    assert!(ep["errors"].to_string().contains("bpfwall.mode"), "{ep}");
    env.assert_http_blocked_by(
        &stranger,
        &format!("http://{}/", env.ip(&typo)),
        &typo,
        Direction::Ingress,
    );
}

/// Tears down the compose project of the advise test (before the env
/// removes its containers).
struct ComposeProject {
    files: Vec<std::path::PathBuf>,
    dir: std::path::PathBuf,
}

impl ComposeProject {
    fn cmd(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.args(["-p", "flowadvise"]);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        // Containers the test put on the project's network (the intruder)
        // first, or the network cannot go.
        let on_net =
            run(Command::new("docker").args(["ps", "-aq", "--filter", "network=flow-advise-net"]));
        for id in String::from_utf8_lossy(&on_net.stdout).split_whitespace() {
            let _ = run(Command::new("docker").args(["rm", "-f", id]));
        }
        let _ = run(self.cmd().args(["down", "--remove-orphans", "-t", "1"]));
        let _ = run(Command::new("docker").args(["network", "rm", "flow-advise-net"]));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Well-formed XML (every element closed, in order): the SVG check.
fn well_formed(text: &str) -> bool {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let Some(end) = rest.find('>') else {
            return false;
        };
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if let Some(closing) = tag.strip_prefix('/') {
            if stack.pop().as_deref() != Some(closing) {
                return false;
            }
        } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
            stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
        }
    }
    stack.is_empty()
}

/// The advise round trip: a compose app runs its traffic in audit mode;
/// what `advise` suggests (each form valid for `policy validate`) is
/// applied in enforce mode; the same traffic passes and a new peer is
/// blocked. The edge record survives a restart of the daemon, and `map
/// --svg` draws every service.
#[test]
fn flow_advise_round_trip() {
    let mut env = TestEnv::new("flow-advise");
    let dir = std::path::PathBuf::from("/run/bpfwall-e2e/flow-advise-compose");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // web -> api:8080 -> db:5432. Every ingress enforced (a rule that
    // matches nothing here), every container auditing: all of it is
    // reported, nothing is dropped.
    let service = |name: &str, cmd: &str| {
        format!(
            "  {name}:\n    image: {image}\n    container_name: e2e-flow-advise-{name}\n    command: [\"sh\", \"-c\", \"{cmd}\"]\n    labels:\n      bpfwall-e2e.test: flow-advise\n      bpfwall.mode: ${{FLOW_MODE}}\n      bpfwall.ingress.base: \"deny from cidr 192.0.2.0/24\"\n",
            image = bpfwall_e2e::IMAGE
        )
    };
    let base = format!(
        "version: \"2.4\"\nservices:\n{}{}{}networks:\n  default:\n    name: flow-advise-net\n    labels:\n      bpfwall-e2e.test: flow-advise\n",
        service("web", "exec sleep 600"),
        service("api", "exec httpd -f -p 8080 -h /www"),
        service("db", "exec httpd -f -p 5432 -h /www"),
    );
    std::fs::write(dir.join("base.yml"), base).unwrap();
    let mut compose = ComposeProject {
        files: vec![dir.join("base.yml")],
        dir: dir.clone(),
    };
    must(compose.cmd().env("FLOW_MODE", "audit").args(["up", "-d"]));
    let c = |name: &str| bpfwall_e2e::Container {
        name: format!("e2e-flow-advise-{name}"),
    };
    let (web, api, db) = (c("web"), c("api"), c("db"));
    for x in [&web, &api, &db] {
        env.wait_attached(x);
        assert_eq!(env.endpoint(x).unwrap()["mode"], "audit");
    }
    let traffic = |env: &TestEnv| {
        env.assert_http_allowed(&web, "http://api:8080/");
        env.assert_http_allowed(&api, "http://db:5432/");
    };
    traffic(&env);
    // Audited, as the record says.
    env.wait_for("the audited edges", |env| {
        let out = env.cli(&["map", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list["edges"].as_array().is_some_and(|edges| {
            edges.iter().any(|e| {
                e["local"]["com.docker.compose.service"] == "api"
                    && e["direction"] == "ingress"
                    && e["audit"].as_u64() > Some(0)
            }) && edges.iter().any(|e| {
                e["local"]["com.docker.compose.service"] == "db" && e["direction"] == "ingress"
            })
        })
    });

    // The record survives a restart of the daemon (saved in the state dir).
    env.stop_daemon();
    env.start_daemon();

    // Every form of every suggestion parses.
    let mut overrides = Vec::new();
    for x in [&web, &api, &db] {
        let labels = String::from_utf8(env.cli(&["advise", &x.name]).stdout).unwrap();
        let flags: Vec<&str> = labels
            .lines()
            .filter_map(|l| l.strip_prefix("--label '")?.strip_suffix('\''))
            .collect();
        assert!(!flags.is_empty(), "advise {}: {labels}", x.name);
        for f in flags {
            must(Command::new(bpfwall_bin()).args(["policy", "validate", "--label", f]));
        }
        let cilium = env.cli(&["advise", &x.name, "--format", "cilium"]);
        let file = dir.join(format!("{}-cilium.yaml", x.name));
        std::fs::write(&file, &cilium.stdout).unwrap();
        must(
            Command::new(bpfwall_bin())
                .args(["policy", "validate"])
                .arg(&file),
        );
        let text =
            String::from_utf8(env.cli(&["advise", &x.name, "--format", "compose"]).stdout).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        for (k, v) in doc["services"]
            .as_mapping()
            .unwrap()
            .values()
            .next()
            .unwrap()["labels"]
            .as_mapping()
            .unwrap()
        {
            let label = format!("{}={}", k.as_str().unwrap(), v.as_str().unwrap());
            must(Command::new(bpfwall_bin()).args(["policy", "validate", "--label", &label]));
        }
        let file = dir.join(format!("{}-override.yml", x.name));
        std::fs::write(&file, text).unwrap();
        overrides.push(file);
    }
    let api_advice = String::from_utf8(env.cli(&["advise", &api.name]).stdout).unwrap();
    assert!(
        api_advice.contains("bpfwall.ingress=allow from com.docker.compose.project=flowadvise,com.docker.compose.service=web port 8080/tcp")
            && api_advice.contains("bpfwall.egress=allow to com.docker.compose.project=flowadvise,com.docker.compose.service=db port 5432/tcp"),
        "{api_advice}"
    );

    // The map names every service.
    let svg = dir.join("map.svg");
    let out = env.cli(&["map", "--svg", svg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"") && well_formed(&text),
        "{text}"
    );
    for name in ["web", "api", "db"] {
        assert!(
            text.contains(&format!(">{name}</text>")),
            "{name} in {text}"
        );
    }

    // Enforce what was advised: the same traffic passes ...
    compose.files.extend(overrides);
    must(
        compose
            .cmd()
            .env("FLOW_MODE", "enforce")
            .args(["up", "-d", "-t", "1"]),
    );
    for x in [&web, &api, &db] {
        env.wait_for("enforce mode", |env| {
            env.endpoint(x)
                .is_some_and(|e| e["attached"] == true && e["mode"] == "enforce")
        });
    }
    assert_eq!(
        env.endpoint(&api).unwrap()["ingress"]["rules"],
        2,
        "the base rule and the advised one"
    );
    traffic(&env);
    // ... and a peer never seen is blocked by api's ingress.
    let intruder = env.start_attached(
        "intruder",
        &["--network", "flow-advise-net", "--label", "id=intruder"],
        SLEEP,
    );
    env.assert_http_blocked_by(&intruder, "http://api:8080/", &api, Direction::Ingress);
    // api may reach only db: not web.
    env.assert_blocked_by("api -> web:80", &api, Direction::Egress, || {
        env.http(&api, &format!("http://{}/", env.ip(&web)), 2)
    });
    drop(compose);
}

/// `bpfwall daemon --audit`: every managed container audits; status says so.
#[test]
fn flow_host_wide_audit() {
    let env = TestEnv::with_daemon_args("flow-hostaudit", &["--audit"]);
    let server = env.start_attached(
        "server",
        &[
            "--label",
            "id=server",
            "--label",
            "bpfwall.ingress=allow from id=client port 80/tcp",
        ],
        HTTPD,
    );
    let stranger = env.start_attached("stranger", &["--label", "id=stranger"], SLEEP);
    let monitor = env.monitor(&["--json", "--verdict", "audit", "--container", &server.name]);
    let before = env.drops(&server);
    env.assert_http_allowed(&stranger, &format!("http://{}/", env.ip(&server)));
    assert_eq!(
        env.drops(&server).ingress,
        before.ingress,
        "audit drops nothing"
    );
    monitor
        .wait_for(WAIT, |r| r["source"]["container"] == stranger.name.as_str())
        .expect("an audit record");
    assert_eq!(env.endpoint(&server).unwrap()["mode"], "audit");
    assert_eq!(env.status()["audit_all"], true);
    assert!(env.status_text().contains("AUDIT MODE (--audit)"));
}
