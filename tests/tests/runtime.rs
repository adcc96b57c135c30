//! End to end: the bpfwall-runc runtime and its OCI hook (issue 4): policed
//! from the first instruction, failing closed. Each test has its own daemon
//! and its own runtime name; daemon.json is restored when a test ends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::process::{Command, Output};

use bpfwall_e2e::{run, Direction, Runtime, TestEnv, HTTPD, IMAGE, SLEEP, TEST_LABEL};

/// `docker run --rm --runtime R <test label> OPTIONS IMAGE CMD`.
fn run_once(env: &TestEnv, runtime: &str, options: &[&str], cmd: &[&str]) -> Output {
    run(Command::new("docker")
        .args(["run", "--rm", "--runtime", runtime, "--label"])
        .arg(format!("{TEST_LABEL}={}", env.name))
        .args(options)
        .arg(IMAGE)
        .args(cmd))
}

/// A client whose very first action connects to ip:80, waiting up to
/// `secs`; prints CONNECTED or blocked. An admitted client must connect at
/// its first SYN (1 s, under TCP's first retransmission); a refused one is
/// given 2 s, so that a retransmitted SYN that got through would show.
fn first_action_connect(ip: &str, secs: u32) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("nc -w {secs} {ip} 80 </dev/null && echo CONNECTED || echo blocked"),
    ]
}

/// Runs `n` starts, four at a time; returns their outputs.
fn starts(env: &TestEnv, runtime: &str, options: &[&str], cmd: &[String], n: usize) -> Vec<String> {
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for batch in 0..n.div_ceil(4) {
        let results: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4.min(n - batch * 4))
                .map(|_| s.spawn(|| run_once(env, runtime, options, &cmd)))
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

#[test]
fn policed_from_the_first_instruction() {
    let env = TestEnv::new("zerowin");
    let rt = Runtime::install(&env, "rt", false);
    let web = env.start_attached(
        "web",
        &[
            "--label",
            "id=web",
            "--label",
            "bpfwall.ingress=allow from id=app2 port 80/tcp",
        ],
        HTTPD,
    );
    let open = env.start_attached("open", &["--label", "id=open"], HTTPD);
    let (web_ip, open_ip) = (env.ip(&web), env.ip(&open));

    // A client that may not reach `open` (its egress allows web only): none of 50 connects.
    // Each is dropped by its own egress, and gone (with its counters) when
    // `docker run --rm` returns: the proof is the daemon's count of
    // default-deny drops (this env's own maps), at least one per start.
    let default_deny = |env: &TestEnv| {
        env.drops_by_reason()
            .get("policy-default-deny")
            .copied()
            .unwrap_or(0)
    };
    let denied_before = default_deny(&env);
    let leaked = starts(
        &env,
        &rt.name,
        &["--label", "bpfwall.egress=allow to id=web port 80/tcp"],
        &first_action_connect(&open_ip, 2),
        50,
    );
    assert_eq!(leaked.len(), 50);
    assert!(
        leaked.iter().all(|o| o == "blocked"),
        "some forbidden first connections got through: {leaked:?}"
    );
    let denied_after = default_deny(&env);
    assert!(
        denied_after >= denied_before + 50,
        "50 blocked starts, but only {} default-deny drops\n{}",
        denied_after - denied_before,
        env.status_text()
    );

    // app3, which web's ingress does not admit: none of 20 connects, each
    // dropped by web's ingress.
    let web_before = env.drops(&web);
    let refused = starts(
        &env,
        &rt.name,
        &["--label", "id=app3"],
        &first_action_connect(&web_ip, 2),
        20,
    );
    assert!(refused.iter().all(|o| o == "blocked"), "{refused:?}");
    let web_after = env.drops(&web);
    assert!(
        web_after.ingress >= web_before.ingress + 20,
        "20 refused starts, but web's ingress dropped only {}\n{}",
        web_after.ingress - web_before.ingress,
        env.status_text()
    );

    // app2, which web admits: every one of 50 connects at the first SYN
    // (its address is known before it runs, so web drops nothing).
    let dropped_before = env.endpoint(&web).unwrap()["ingress"]["dropped_packets"]
        .as_u64()
        .unwrap();
    let allowed = starts(
        &env,
        &rt.name,
        &["--label", "id=app2"],
        &first_action_connect(&web_ip, 1),
        50,
    );
    assert!(allowed.iter().all(|o| o == "CONNECTED"), "{allowed:?}");
    let dropped_after = env.endpoint(&web).unwrap()["ingress"]["dropped_packets"]
        .as_u64()
        .unwrap();
    assert_eq!(
        dropped_before, dropped_after,
        "web dropped packets of admitted clients: their first SYN was not recognised"
    );
}

#[test]
fn fails_closed_and_fail_open_is_explicit() {
    let mut env = TestEnv::new("failclosed");
    let rt = Runtime::install(&env, "rt", false);
    let open_rt = Runtime::install(&env, "open", true);

    let bad = run_once(
        &env,
        &rt.name,
        &["--label", "bpfwall.ingress=allow form id=x"],
        &["true"],
    );
    assert!(
        !bad.status.success(),
        "a container with a bad policy label must not start"
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("label 'bpfwall.ingress' column 7") && err.contains("expected 'from'"),
        "{err}"
    );

    let good = run_once(
        &env,
        &rt.name,
        &["--label", "bpfwall.ingress=allow from id=x"],
        &["true"],
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    env.kill_daemon();
    let down = run_once(&env, &rt.name, &[], &["true"]);
    assert!(
        !down.status.success(),
        "with the daemon down, docker run must be refused"
    );
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("bpfwall daemon is unreachable"), "{err}");

    let open = run_once(&env, &open_rt.name, &[], &["echo", "started"]);
    assert!(
        open.status.success(),
        "fail-open starts anyway: {}",
        String::from_utf8_lossy(&open.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&open.stdout).trim(), "started");
    env.start_daemon();
}

#[test]
fn lifecycle_commands_behave_as_with_runc() {
    let env = TestEnv::new("lifecycle");
    let rt = Runtime::install(&env, "rt", false);
    let open = env.start_attached("open", &["--label", "id=open"], HTTPD);
    let open_url = format!("http://{}/", env.ip(&open));
    let runtime = format!("--runtime={}", rt.name);
    let c = env.start_attached(
        "c",
        &[
            &runtime,
            "--label",
            "id=c",
            "--label",
            "bpfwall.egress=allow to id=nobody",
        ],
        SLEEP,
    );
    let docker = |args: &[&str]| {
        let o = run(Command::new("docker").args(args));
        assert!(
            o.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let state = |name: &str| docker(&["inspect", "-f", "{{.State.Status}}", name]);
    assert_eq!(docker(&["exec", &c.name, "echo", "hi"]), "hi");
    env.assert_http_blocked_by(&c, &open_url, &c, Direction::Egress);
    docker(&["pause", &c.name]);
    assert_eq!(state(&c.name), "paused");
    docker(&["unpause", &c.name]);
    assert_eq!(state(&c.name), "running");
    docker(&["stop", "-t", "1", &c.name]);
    assert_eq!(state(&c.name), "exited");
    docker(&["start", &c.name]);
    assert_eq!(state(&c.name), "running");
    env.wait_attached(&c);
    env.assert_http_blocked_by(&c, &open_url, &c, Direction::Egress);
    docker(&["restart", "-t", "1", &c.name]);
    assert_eq!(state(&c.name), "running");
    env.wait_attached(&c);
    env.assert_http_blocked_by(&c, &open_url, &c, Direction::Egress);
    docker(&["kill", &c.name]);
    assert_eq!(state(&c.name), "exited");
    assert_eq!(
        docker(&["inspect", "-f", "{{.HostConfig.Runtime}}", &c.name]),
        rt.name
    );
}

/// The hook without Docker: a runc bundle written by hand (as podman's
/// hooks.d or a containerd config would), labels as OCI annotations.
#[test]
fn hook_in_a_hand_written_runc_config() {
    let env = TestEnv::new("handrunc");
    let dir = std::path::PathBuf::from("/run/bpfwall-e2e/handrunc-bundle");
    let runc_root = "/run/bpfwall-e2e/handrunc-runc";
    let id = "bpfwall-e2e-handrunc";
    struct Cleanup(&'static str, std::path::PathBuf, &'static str);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = run(Command::new("runc").args(["--root", self.2, "delete", "--force", self.0]));
            let _ = std::fs::remove_dir_all(&self.1);
            let _ = std::fs::remove_dir_all(self.2);
        }
    }
    let _cleanup = Cleanup(id, dir.clone(), runc_root);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    let created = bpfwall_e2e::must(
        Command::new("docker")
            .args(["create", "--label"])
            .arg(format!("{TEST_LABEL}={}", env.name))
            .arg(IMAGE),
    );
    let export = run(Command::new("sh").arg("-c").arg(format!(
        "docker export {created} | tar -x -C {}",
        dir.join("rootfs").display()
    )));
    let _ = run(Command::new("docker").args(["rm", &created]));
    assert!(export.status.success());
    bpfwall_e2e::must(Command::new("runc").arg("spec").current_dir(&dir));
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let bin = bpfwall_e2e::bpfwall_bin().display().to_string();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["sleep", "600"]);
    config["linux"]["cgroupsPath"] = format!("/{id}").into();
    config["annotations"] =
        serde_json::json!({ TEST_LABEL: env.name, "bpfwall.egress": "allow to id=nobody" });
    config["hooks"] = serde_json::json!({ "createRuntime": [{
        "path": bin, "args": [bin, "oci-hook", "--socket", env.socket.display().to_string()], "timeout": 30
    }]});
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    // The detached container inherits runc's stdio: give it none, or
    // reading runc's output would wait for the container to exit.
    let started = Command::new("runc")
        .args(["--root", runc_root, "run", "-d", "--bundle"])
        .arg(&dir)
        .arg(id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(started.success(), "runc run failed");
    let c = bpfwall_e2e::Container {
        name: id.to_string(),
    };
    env.wait_attached(&c);
    assert_eq!(env.endpoint(&c).unwrap()["egress"]["state"], "enforced");
    assert_eq!(env.pinned_links(), 2);

    bpfwall_e2e::must(Command::new("runc").args(["--root", runc_root, "kill", id, "KILL"]));
    env.wait_for("the exited container to be torn down", |env| {
        env.endpoint(&c).is_none() && env.pinned_links() == 0
    });
    assert_eq!(env.pinned_map_len("bpfwall_endpoints_v2"), 0);
}
