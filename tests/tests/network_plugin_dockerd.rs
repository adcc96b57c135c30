//! End to end: the Docker network plugin across real dockerd restarts. A
//! bpfwall network and its running containers come back when dockerd
//! restarts (stopped, then crashed), policed as before, and the plugin
//! keeps no stale endpoint or interface.
//!
//! This test stops dockerd, and with it every container on the host: it is
//! the only test of its binary, so cargo runs it alone, and on a shared host
//! it must hold the dockerd lock exclusively:
//! `flock -x /tmp/bpfwall-dockerd.lock cargo test -p bpfwall-e2e --test network_plugin_dockerd`.
//! It leaves dockerd running as it found it, also when it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use bpfwall_e2e::{must, Container, Dockerd, PluginEnv, TestEnv, HTTPD, SLEEP};

/// Polls `cond` every 200 ms for up to `secs` (dockerd restarts its
/// containers at its own pace).
fn wait_long(env: &TestEnv, secs: u64, what: &str, cond: impl Fn(&TestEnv) -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if cond(env) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "timed out waiting for {what}\n{}\n{}",
        env.try_status().map(|s| s.to_string()).unwrap_or_default(),
        env.daemon_log()
    );
}

/// A container's init process on the host.
fn pid(c: &Container) -> i32 {
    must(Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", &c.name]))
        .parse()
        .unwrap()
}

/// An HTTP GET from a container's network namespace, run from the host
/// (no dockerd needed): true when it succeeds.
fn http_in_netns_of(pid: i32, url: &str) -> bool {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "timeout", "3"])
        .args(["busybox", "wget", "-q", "-O", "/dev/null", url])
        .status()
        .is_ok_and(|s| s.success())
}

/// Every endpoint of the plugin, open or not.
fn endpoints(env: &TestEnv) -> Vec<serde_json::Value> {
    env.plugin_status()["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// This plugin's interfaces on the host.
fn interfaces(env: &TestEnv) -> usize {
    let alias = format!("bpfwall:{}:", env.plugin());
    must(Command::new("ip").args(["-d", "-o", "link", "show"]))
        .lines()
        .filter(|l| l.contains(&alias))
        .count()
}

#[test]
fn plug_dockerd_restart_brings_the_network_and_its_containers_back() {
    let mut env = PluginEnv::new("plug-dockerd");
    // Dropped before the env: dockerd runs again before the env cleans up.
    let dockerd = Dockerd::capture();
    let net = env.plugin_network("net", &["--subnet", "10.231.30.0/24"]);
    let on = format!("--network={net}");
    let srv = env.run_plug(
        "srv",
        &[
            &on,
            "--restart",
            "always",
            "--label",
            "id=srv",
            "--label",
            "bpfwall.ingress=allow from id=cli port 80/tcp",
        ],
        HTTPD,
    );
    let cli = env.run_plug(
        "cli",
        &[&on, "--restart", "always", "--label", "id=cli"],
        SLEEP,
    );
    let bad = env.run_plug(
        "bad",
        &[&on, "--restart", "always", "--label", "id=bad"],
        SLEEP,
    );
    for c in [&srv, &cli, &bad] {
        env.wait_attached(c);
        env.wait_open(c, 1);
    }
    let url = format!("http://{}/", srv.name);
    env.assert_http_allowed(&cli, &url);

    // dockerd stops (its containers with it) and starts again: it finds the
    // plugin, restores the network without asking for it again, restarts
    // the containers, which join anew and are policed as before.
    dockerd.stop();
    let answering = dockerd.start();
    for c in [&srv, &cli, &bad] {
        wait_long(
            &env,
            90,
            &format!("{} to be back and open", c.name),
            |env| {
                let eps = env.plugin_endpoints(c);
                eps.len() == 1 && eps[0]["open"] == true
            },
        );
    }
    eprintln!(
        "containers back and open {:?} after dockerd answered",
        answering.elapsed()
    );
    env.assert_http_allowed(&cli, &url);
    let ip = env.ip_on(&srv, &net, false);
    env.assert_http_blocked_by(
        &bad,
        &format!("http://{ip}/"),
        &srv,
        bpfwall_e2e::Direction::Ingress,
    );
    wait_long(&env, 30, "no stale endpoint or interface", |env| {
        endpoints(env).len() == 3 && interfaces(env) == 3
    });

    // dockerd crashes: its containers run on and stay policed, the gate
    // as it was (no daemon in sync with Docker changes it).
    let (cli_pid, bad_pid) = (pid(&cli), pid(&bad));
    dockerd.crash();
    wait_long(&env, 15, "bpfwall to see dockerd gone", |env| {
        env.status()["docker_synced"] == false
    });
    let ip_url = format!("http://{ip}/");
    assert!(http_in_netns_of(cli_pid, &ip_url), "{}", env.status_text());
    assert!(!http_in_netns_of(bad_pid, &ip_url), "{}", env.status_text());

    // Back: dockerd (no live restore) kills what ran, restarts it; the old
    // endpoints go (through the plugin), the new ones open.
    dockerd.start();
    for c in [&srv, &cli, &bad] {
        wait_long(
            &env,
            90,
            &format!("{} to be back and open", c.name),
            |env| {
                let eps = env.plugin_endpoints(c);
                eps.len() == 1 && eps[0]["open"] == true
            },
        );
    }
    env.assert_http_allowed(&cli, &url);
    wait_long(&env, 60, "no stale endpoint or interface", |env| {
        endpoints(env).len() == 3 && interfaces(env) == 3
    });
    drop(dockerd);
}
