//! End to end: containerd's own containers (issue 13). Each test runs a
//! containerd of its own (its own socket, root and state; dockerd's stays
//! untouched), `ctr run` containers labelled with `--label` in network
//! namespaces the test makes on a Docker bridge of its own, so Docker and
//! ctr containers talk without NAT and select each other by label.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::process::Command;

use bpfwall_e2e::{
    bpfwall_bin, ctr_image, run, Container, Containerd, Direction, TestEnv, TEST_LABEL,
};

/// app1 of the article: HTTP on 80 and 8080 (so a block of 8080 is
/// bpfwall's, not a refusal).
const APP1: &[&str] = &[
    "sh",
    "-c",
    "httpd -p 8080 -h /www; exec httpd -f -p 80 -h /www",
];
const SLEEP: &[&str] = &["sleep", "600"];

/// The env and its containerd; the daemon follows that containerd.
fn env_with_containerd(name: &str) -> (Containerd, TestEnv) {
    let socket = std::path::PathBuf::from(format!("/run/bpfwall-e2e/{name}.sock"));
    let ctrd = Containerd::start(name, &socket);
    let env = TestEnv::with_daemon_args(
        name,
        &["--containerd-socket", &ctrd.socket().display().to_string()],
    );
    env.wait_for("the containerd source to be in sync", |env| {
        source_synced(env, "containerd")
    });
    (ctrd, env)
}

fn source_synced(env: &TestEnv, source: &str) -> bool {
    env.try_status().is_some_and(|s| {
        s["sources"].as_array().is_some_and(|v| {
            v.iter()
                .any(|x| x["source"] == source && x["synced"] == true)
        })
    })
}

fn identity(env: &TestEnv, c: &Container) -> u64 {
    env.endpoint(c).unwrap()["identity"].as_u64().unwrap()
}

#[test]
fn ctr_containers_by_label_and_one_identity_space_with_docker() {
    let (ctrd, mut env) = env_with_containerd("ctrd-article");
    let net = env.shared_bridge(71);
    let ns1 = env.bridge_netns(&net, "app1", "10.213.71.201");
    let ns2 = env.bridge_netns(&net, "app2", "10.213.71.202");
    let ns3 = env.bridge_netns(&net, "app3", "10.213.71.203");
    let app1 = ctrd.run_detached(
        &env,
        "app1",
        &["id=app1", "bpfwall.ingress=allow from id=app2 port 80/tcp"],
        &ns1,
        APP1,
    );
    let app2 = ctrd.run_detached(&env, "app2", &["id=app2"], &ns2, SLEEP);
    let app3 = ctrd.run_detached(&env, "app3", &["id=app3"], &ns3, SLEEP);
    for c in [&app1, &app2, &app3] {
        env.wait_attached(c);
    }
    let ep = env.endpoint(&app1).unwrap();
    assert_eq!(ep["runtime"], "containerd");
    assert_eq!(ep["namespace"], "default");
    assert_eq!(ep["id"], "ctrd-article-app1");
    assert_eq!(
        ep["addresses"][0], "10.213.71.201",
        "read in its namespace: {ep}"
    );
    let text = env.status_text();
    assert!(
        text.contains("runtime containerd, namespace default"),
        "{text}"
    );

    // The article among ctr containers, proven by app1's drop counter.
    let url = "http://10.213.71.201/";
    assert!(
        ctrd.http(&app2, url, 6),
        "app2 -> app1:80 must pass\n{text}"
    );
    env.assert_blocked_by("app3 -> app1:80", &app1, Direction::Ingress, || {
        ctrd.http(&app3, url, 2)
    });
    env.assert_blocked_by("app2 -> app1:8080", &app1, Direction::Ingress, || {
        ctrd.http(&app2, "http://10.213.71.201:8080/", 2)
    });

    // Docker containers with the same labels share the ctr containers'
    // identities, and a ctr container's policy admits a Docker container
    // by its label (and not another).
    let d2 = env.start_attached("d2", &["--network", &net, "--label", "id=app2"], SLEEP);
    let d3 = env.start_attached("d3", &["--network", &net, "--label", "id=app3"], SLEEP);
    assert_eq!(
        identity(&env, &d2),
        identity(&env, &app2),
        "{}",
        env.status_text()
    );
    assert_eq!(identity(&env, &d3), identity(&env, &app3));
    env.assert_http_allowed(&d2, url);
    env.assert_http_blocked_by(&d3, url, &app1, Direction::Ingress);

    // And the other way: a Docker container's policy admits a ctr container.
    let web = env.start_attached(
        "web",
        &[
            "--network",
            &net,
            "--label",
            "id=web",
            "--label",
            "bpfwall.ingress=allow from id=app2 port 80/tcp",
        ],
        bpfwall_e2e::HTTPD,
    );
    let web_url = format!("http://{}/", env.ip(&web));
    assert!(
        ctrd.http(&app2, &web_url, 6),
        "ctr app2 -> docker web must pass"
    );
    env.assert_blocked_by("ctr app3 -> docker web", &web, Direction::Ingress, || {
        ctrd.http(&app3, &web_url, 2)
    });

    // A task that exits leaves the maps (containerd's exit event).
    ctrd.remove(&app3);
    env.wait_for("app3 to be gone", |env| env.endpoint(&app3).is_none());
}

#[test]
fn a_bad_label_closes_its_direction_and_status_names_it() {
    let (ctrd, mut env) = env_with_containerd("ctrd-badlabel");
    let net = env.shared_bridge(72);
    let ns1 = env.bridge_netns(&net, "bad", "10.213.72.201");
    let ns2 = env.bridge_netns(&net, "client", "10.213.72.202");
    let bad = ctrd.run_detached(
        &env,
        "bad",
        &["id=bad", "bpfwall.ingress=allow form id=client port 80/tcp"],
        &ns1,
        APP1,
    );
    let client = ctrd.run_detached(&env, "client", &["id=client"], &ns2, SLEEP);
    env.wait_attached(&bad);
    env.wait_attached(&client);
    let ep = env.endpoint(&bad).unwrap();
    assert_eq!(ep["ingress"]["state"], "closed (label error)", "{ep}");
    let errors = ep["errors"].to_string();
    assert!(
        errors.contains(
            "containerd container 'default/ctrd-badlabel-bad' (namespace default, id ctrd-badlabel-bad): label 'bpfwall.ingress' column 7"
        ),
        "status names the runtime, namespace, container and label: {errors}"
    );
    // Closed, not open: even the client the label meant to admit is dropped.
    env.assert_blocked_by("client -> bad:80", &bad, Direction::Ingress, || {
        ctrd.http(&client, "http://10.213.72.201/", 2)
    });
}

#[test]
fn containerd_restarted_is_resynced_and_still_policed() {
    let (mut ctrd, mut env) = env_with_containerd("ctrd-restart");
    let net = env.shared_bridge(73);
    let ns1 = env.bridge_netns(&net, "app1", "10.213.73.201");
    let ns3 = env.bridge_netns(&net, "app3", "10.213.73.203");
    let ns4 = env.bridge_netns(&net, "late", "10.213.73.204");
    let app1 = ctrd.run_detached(
        &env,
        "app1",
        &["id=app1", "bpfwall.ingress=allow from id=app2 port 80/tcp"],
        &ns1,
        APP1,
    );
    let app3 = ctrd.run_detached(&env, "app3", &["id=app3"], &ns3, SLEEP);
    env.wait_attached(&app1);
    env.wait_attached(&app3);

    // containerd goes away (its containers run on under their shims).
    ctrd.stop_process();
    env.wait_for("containerd to be reported away", |env| {
        env.try_status().is_some_and(|s| {
            s["sources"].as_array().is_some_and(|v| {
                v.iter().any(|x| {
                    x["source"] == "containerd"
                        && x["state"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("disconnected: no socket at"))
                })
            })
        })
    });
    let text = env.status_text();
    assert!(
        text.contains("NOT SYNCED with containerd: disconnected: no socket at"),
        "{text}"
    );
    // Enforcement goes on meanwhile (ctr cannot exec without containerd:
    // the request leaves from app3's namespace, with app3's address).
    env.assert_blocked_by(
        "app3 -> app1 (containerd away)",
        &app1,
        Direction::Ingress,
        || {
            run(Command::new("ip")
                .args(["netns", "exec"])
                .arg(ns3.trim_start_matches("/var/run/netns/"))
                .args([
                    "busybox",
                    "timeout",
                    "2",
                    "busybox",
                    "wget",
                    "-q",
                    "-O",
                    "/dev/null",
                    "http://10.213.73.201/",
                ]))
            .status
            .success()
        },
    );

    // Back: resynced without restarting bpfwall, and what it starts now is policed.
    ctrd.start_process();
    env.wait_for("the containerd source to be in sync again", |env| {
        source_synced(env, "containerd")
    });
    let late = ctrd.run_detached(&env, "late", &["id=app2"], &ns4, SLEEP);
    env.wait_attached(&late);
    assert!(
        ctrd.http(&late, "http://10.213.73.201/", 6),
        "app2-labelled late -> app1"
    );
    env.assert_blocked_by("app3 -> app1 (after)", &app1, Direction::Ingress, || {
        ctrd.http(&app3, "http://10.213.73.201/", 2)
    });
}

/// `ctr run --rm --runc-binary <bpfwall-runc>` of a client whose first
/// action connects to ip:80 (1 s: under TCP's first retransmission).
fn wrapped_start(
    ctrd: &Containerd,
    env: &TestEnv,
    wrapper: &str,
    id: &str,
    netns: &str,
    labels: &[&str],
    ip: &str,
) -> String {
    let mut c = ctrd.ctr();
    c.args(["run", "--rm", "--runc-binary", wrapper, "--runc-root"])
        .arg(ctrd.runc_root())
        .arg("--label")
        .arg(format!("{TEST_LABEL}={}", env.name));
    for l in labels {
        c.args(["--label", l]);
    }
    c.arg("--with-ns")
        .arg(format!("network:{netns}"))
        .arg(ctr_image())
        .arg(id)
        .args([
            "sh",
            "-c",
            &format!("nc -w 1 {ip} 80 </dev/null && echo CONNECTED || echo blocked"),
        ]);
    let out = run(&mut c);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        stdout
    } else {
        format!(
            "{stdout} (ctr run failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

#[test]
fn the_wrapper_polices_ctr_containers_from_their_first_instruction() {
    let (ctrd, mut env) = env_with_containerd("ctrd-zerowin");
    let wrapper = ctrd.dir.join("bpfwall-runc");
    std::os::unix::fs::symlink(bpfwall_bin(), &wrapper).unwrap();
    let wrapper = wrapper.display().to_string();
    let net = env.shared_bridge(74);
    let ns_web = env.bridge_netns(&net, "web", "10.213.74.201");
    let slots: Vec<String> = (0..4)
        .map(|i| env.bridge_netns(&net, &format!("c{i}"), &format!("10.213.74.{}", 210 + i)))
        .collect();
    let web = ctrd.run_detached(&env, "web", &["id=web"], &ns_web, APP1);
    env.wait_attached(&web);

    // 30 starts whose egress forbids web, four at a time: none connects.
    let default_deny = |env: &TestEnv| {
        env.drops_by_reason()
            .get("policy-default-deny")
            .copied()
            .unwrap_or(0)
    };
    let before = default_deny(&env);
    let mut outcomes = Vec::new();
    for batch in 0..8 {
        let results: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = slots
                .iter()
                .enumerate()
                .take(if batch == 7 { 2 } else { 4 })
                .map(|(i, ns)| {
                    let (ctrd, env, wrapper) = (&ctrd, &env, &wrapper);
                    s.spawn(move || {
                        wrapped_start(
                            ctrd,
                            env,
                            wrapper,
                            &format!("{}-z{batch}-{i}", env.name),
                            ns,
                            &["id=client", "bpfwall.egress=allow to id=nobody port 80/tcp"],
                            "10.213.74.201",
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        outcomes.extend(results);
    }
    assert_eq!(outcomes.len(), 30);
    assert!(
        outcomes.iter().all(|o| o == "blocked"),
        "forbidden first connections got through: {outcomes:?}"
    );
    let after = default_deny(&env);
    assert!(
        after >= before + 30,
        "30 blocked starts but {} default-deny drops\n{}",
        after - before,
        env.status_text()
    );

    // An allowed client connects at its first SYN: it is known before it runs.
    let ok = wrapped_start(
        &ctrd,
        &env,
        &wrapper,
        "ctrd-zerowin-ok",
        &slots[0],
        &["id=client2"],
        "10.213.74.201",
    );
    assert_eq!(ok, "CONNECTED");

    // A broken label refuses the start, naming the label and column.
    let refused = wrapped_start(
        &ctrd,
        &env,
        &wrapper,
        "ctrd-zerowin-refused",
        &slots[1],
        &["bpfwall.egress=allow to id=web port 8x"],
        "10.213.74.201",
    );
    assert!(
        refused.contains(
            "container 'default/ctrd-zerowin-refused' refused: label 'bpfwall.egress' column 22"
        ),
        "{refused}"
    );
    // Nothing of the refused one stays with containerd.
    let left = run(ctrd.ctr().args(["task", "ls", "-q"]));
    assert!(!String::from_utf8_lossy(&left.stdout).contains("ctrd-zerowin-refused"));
}

#[test]
fn a_host_without_dockerd_polices_ctr_containers() {
    let name = "ctrd-nodocker";
    let socket = std::path::PathBuf::from(format!("/run/bpfwall-e2e/{name}.sock"));
    let ctrd = Containerd::start(name, &socket);
    let mut env = TestEnv::without_dockerd(
        name,
        &["--containerd-socket", &ctrd.socket().display().to_string()],
    );
    env.wait_for("the containerd source to be in sync", |env| {
        source_synced(env, "containerd")
    });
    let text = env.status_text();
    assert!(
        text.contains("docker off") && text.contains("docker: off: no socket at"),
        "{text}"
    );
    // The namespaces are plain ones of the test's (no Docker network is
    // needed: a bridge of its own would do; the Docker one is just at hand).
    let net = env.shared_bridge(75);
    let ns1 = env.bridge_netns(&net, "app1", "10.213.75.201");
    let ns3 = env.bridge_netns(&net, "app3", "10.213.75.203");
    let app1 = ctrd.run_detached(
        &env,
        "app1",
        &["id=app1", "bpfwall.ingress=allow from id=app2 port 80/tcp"],
        &ns1,
        APP1,
    );
    let app3 = ctrd.run_detached(&env, "app3", &["id=app3"], &ns3, SLEEP);
    env.wait_attached(&app1);
    env.wait_attached(&app3);
    env.assert_blocked_by("app3 -> app1:80", &app1, Direction::Ingress, || {
        ctrd.http(&app3, "http://10.213.75.201/", 2)
    });
}
