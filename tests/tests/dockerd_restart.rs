//! End to end: a real dockerd restart (the hardening issue). dockerd is
//! stopped (SIGTERM: its containers stop with it, and it reports their
//! exits before it goes) and started again exactly as it ran; bpfwall must
//! say it is not in sync while dockerd is away and police what starts once
//! it is back. Then dockerd crashes (SIGKILL: its containers run on, and
//! nothing reports them): a container that dies meanwhile must be withdrawn
//! without waiting for dockerd, and the living stay policed.
//!
//! This test stops dockerd, and with it every container on the host: it is
//! the only test of its binary, so cargo runs it alone, and on a shared host
//! it must hold the dockerd lock exclusively:
//! `flock -x /tmp/bpfwall-dockerd.lock cargo test -p bpfwall-e2e --test dockerd_restart`.
//! It leaves dockerd running as it found it, also when it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::process::Command;

use bpfwall_e2e::{must, Container, Direction, Dockerd, TestEnv, HTTPD, IMAGE, SLEEP, TEST_LABEL};

/// A container's init process on the host.
fn pid(c: &Container) -> i32 {
    must(Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", &c.name]))
        .parse()
        .unwrap()
}

/// An HTTP GET from a container's network namespace (its address, so its
/// identity to peers), run from the host: true when it succeeds.
fn http_in_netns_of(pid: i32, url: &str) -> bool {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "timeout", "2"])
        .args(["busybox", "wget", "-q", "-O", "/dev/null", url])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn dockerd_restart_withdraws_the_dead_and_polices_the_new_once_synced() {
    let env = TestEnv::new("dockerd");
    // Dropped before the env: dockerd runs again before the env cleans up.
    let dockerd = Dockerd::capture();

    // Restarted by dockerd when it comes back (a new process, a new cgroup).
    let server = env.start_attached(
        "server",
        &[
            "--restart",
            "always",
            "--label",
            "id=server",
            "--label",
            "bpfwall.ingress=allow from id=friend port 80/tcp",
        ],
        HTTPD,
    );
    // Not restarted: it dies with dockerd and stays dead.
    let gone = env.start_attached("gone", &["--label", "id=gone"], SLEEP);
    let before = env.status();
    assert_eq!(before["docker_synced"], true);
    let ipcache_before = before["ipcache_entries"].as_u64().unwrap();
    assert_eq!(env.pinned_links(), 4);

    dockerd.stop();
    env.wait_for("bpfwall to report that it is not in sync", |env| {
        let s = env.status();
        s["docker_synced"] == false && s["docker_connected"] == false
    });
    assert!(
        env.status_text().contains("NOT SYNCED"),
        "{}",
        env.status_text()
    );
    // The containers died with dockerd: withdrawn without waiting for it.
    env.wait_for(
        "the dead containers to be withdrawn while dockerd is away",
        |env| {
            env.status()["endpoints"]
                .as_array()
                .is_some_and(Vec::is_empty)
        },
    );
    let away = env.status();
    assert_eq!(away["docker_synced"], false, "{away}");
    assert!(
        away["ipcache_entries"].as_u64().unwrap() + 2 <= ipcache_before,
        "the dead containers' addresses left the ipcache: {} before, now {away}",
        ipcache_before
    );
    assert_eq!(env.pinned_links(), 0, "the dead containers' links are gone");

    let answering = dockerd.start();
    // As soon as dockerd answers: a client the server does not admit,
    // trying from its first instruction and on.
    env.wait_for("dockerd to restart the server", |_| {
        must(Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", &server.name]))
            == "true"
    });
    let url = format!("http://{}/", env.ip(&server));
    let client_name = format!("e2e-{}-client", env.name);
    must(
        Command::new("docker")
            .args(["run", "-d", "--name", &client_name, "--label"])
            .arg(format!("{TEST_LABEL}={}", env.name))
            .args(["--label", "id=client", IMAGE, "sh", "-c"])
            .arg(format!(
                "while true; do wget -q -T 1 -O /dev/null {url}; sleep 0.2; done"
            )),
    );
    let client = Container { name: client_name };

    env.wait_for("bpfwall to be in sync with dockerd again", |env| {
        env.status()["docker_synced"] == true
    });
    eprintln!(
        "in sync {:?} after dockerd answered (a measure, not a test: scripts/bench-reconnect.sh)",
        answering.elapsed()
    );
    // In sync means policed: the list after the reconnect is in the maps.
    for c in [&server, &client] {
        assert_eq!(
            env.endpoint(c).map(|e| e["attached"].clone()),
            Some(true.into()),
            "{} is policed as soon as bpfwall is in sync\n{}",
            c.name,
            env.status_text()
        );
    }
    env.assert_http_blocked_by(&client, &url, &server, Direction::Ingress);
    let friend = env.start_attached("friend", &["--label", "id=friend"], SLEEP);
    env.assert_http_allowed(&friend, &url);
    assert!(
        env.endpoint(&gone).is_none(),
        "the dead container came back\n{}",
        env.status_text()
    );
    assert_eq!(env.pinned_links(), 6);

    // A crash: dockerd is killed and its containers run on in their shims.
    // A container that dies now is reported by nobody: withdrawn all the same.
    let victim = env.start_attached("victim", &["--label", "id=victim"], SLEEP);
    let (victim_pid, client_pid, friend_pid) = (pid(&victim), pid(&client), pid(&friend));
    dockerd.crash();
    env.wait_for("bpfwall to report that it is not in sync", |env| {
        env.status()["docker_synced"] == false
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    env.wait_for(
        "the container that died while dockerd was away to be withdrawn",
        |env| env.endpoint(&victim).is_none(),
    );
    // The living stay policed meanwhile.
    assert_eq!(env.status()["docker_synced"], false);
    for c in [&server, &client, &friend] {
        assert_eq!(
            env.endpoint(c).map(|e| e["attached"].clone()),
            Some(true.into()),
            "{} stays policed while dockerd is away\n{}",
            c.name,
            env.status_text()
        );
    }
    // (`docker exec` needs dockerd: from the host, in their namespaces.)
    let dropped = env.drops(&server).dropped(Direction::Ingress);
    assert!(!http_in_netns_of(client_pid, &url), "{}", env.status_text());
    assert!(
        env.drops(&server).dropped(Direction::Ingress) > dropped,
        "the client's request failed, but not at the server's ingress\n{}",
        env.status_text()
    );
    assert!(http_in_netns_of(friend_pid, &url), "{}", env.status_text());

    dockerd.start();
    env.wait_for("bpfwall to be in sync with dockerd again", |env| {
        env.status()["docker_synced"] == true
    });
    assert!(env.endpoint(&victim).is_none(), "{}", env.status_text());
}
