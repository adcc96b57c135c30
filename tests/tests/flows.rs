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
