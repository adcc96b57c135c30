//! End to end: podman (rootful) with bpfwall's OCI hook from a hooks.d
//! file (issue 13): `podman run --label ...` containers policed from their
//! first instruction, refused when their policy is broken, and the hook's
//! uninstall leaving the hooks directory as it was.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::path::Path;

use bpfwall_e2e::{bpfwall_bin, must, run, Podman, TestEnv, HTTPD};
use std::process::Command;

/// A client whose very first action connects to ip:80 (1 s: under TCP's
/// first retransmission); prints CONNECTED or blocked.
fn first_connect(ip: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("nc -w 1 {ip} 80 </dev/null && echo CONNECTED || echo blocked"),
    ]
}

/// `n` starts of `podman run --rm` with `labels`, four at a time.
fn starts(podman: &Podman, labels: &[&str], cmd: &[String], n: usize) -> Vec<String> {
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let mut options = vec!["--rm"];
    for l in labels {
        options.extend(["--label", l]);
    }
    let mut out = Vec::new();
    for batch in 0..n.div_ceil(4) {
        let results: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4.min(n - batch * 4))
                .map(|_| s.spawn(|| podman.run(&options, &cmd)))
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
                            "{stdout} (podman run failed: {})",
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

fn hook(args: &[&str], dir: &Path) -> String {
    must(
        Command::new(bpfwall_bin())
            .args(args)
            .arg("--podman")
            .arg("--hooks-dir")
            .arg(dir),
    )
}

#[test]
fn podman_containers_policed_from_their_first_instruction_by_the_hook() {
    let mut env = TestEnv::new("pod-hook");
    let base = Path::new("/run/bpfwall-e2e/pod-hook-hooks");
    let _ = std::fs::remove_dir_all(base);
    // The hooks directory exists with someone else's hook in it: the
    // uninstall must leave exactly that.
    std::fs::create_dir_all(base).unwrap();
    std::fs::write(base.join("other.json"), "{\"version\":\"1.0.0\",\"hook\":{\"path\":\"/bin/true\"},\"when\":{\"annotations\":{\"^pod-e2e-never$\":\"x\"}},\"stages\":[\"prestart\"]}").unwrap();
    let podman = Podman::new(&env.name, base);
    struct Uninstall<'a>(&'a Path);
    impl Drop for Uninstall<'_> {
        fn drop(&mut self) {
            let _ = run(Command::new(bpfwall_bin())
                .args(["uninstall-hook", "--podman", "--hooks-dir"])
                .arg(self.0));
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _uninstall = Uninstall(base);
    let installed = must(
        Command::new(bpfwall_bin())
            .args(["install-hook", "--podman", "--socket"])
            .arg(&env.socket)
            .arg("--hooks-dir")
            .arg(base),
    );
    assert!(installed.contains("bpfwall.json"), "{installed}");

    // A server policed by the hook before it runs: web admits id=app2.
    let web = podman.run(
        &[
            "-d",
            "--name",
            "pod-hook-web",
            "--label",
            "id=web",
            "--label",
            "bpfwall.ingress=allow from id=app2 port 80/tcp",
        ],
        HTTPD,
    );
    assert!(
        web.status.success(),
        "{}",
        String::from_utf8_lossy(&web.stderr)
    );
    let web_c = bpfwall_e2e::Container {
        name: "podman/pod-hook-web".into(),
    };
    env.wait_attached(&web_c);
    let ep = env.endpoint(&web_c).unwrap();
    assert_eq!(ep["runtime"], "podman", "{ep}");
    assert_eq!(
        ep["labels"]["id"], "web",
        "labels read from podman's database: {ep}"
    );
    let ip = podman.ip("pod-hook-web");
    assert!(
        ip.starts_with("10.88."),
        "podman's default network (CNI, 10.88.0.0/16): {ip}"
    );

    // One identity space: a podman and a Docker container with the same
    // labels share an identity (the image's labels are left out of both).
    let app2 = podman.run(
        &["-d", "--name", "pod-hook-app2", "--label", "id=app2"],
        &["sleep", "600"],
    );
    assert!(
        app2.status.success(),
        "{}",
        String::from_utf8_lossy(&app2.stderr)
    );
    let app2_c = bpfwall_e2e::Container {
        name: "podman/pod-hook-app2".into(),
    };
    env.wait_attached(&app2_c);
    let docker_app2 = env.start_attached("app2", &["--label", "id=app2"], &["sleep", "600"]);
    let identity =
        |c: &bpfwall_e2e::Container| env.endpoint(c).unwrap()["identity"].as_u64().unwrap();
    assert_eq!(
        identity(&app2_c),
        identity(&docker_app2),
        "{}",
        env.status_text()
    );

    // 20 clients whose egress forbids web: none connects, each dropped.
    let default_deny = |env: &TestEnv| {
        env.drops_by_reason()
            .get("policy-default-deny")
            .copied()
            .unwrap_or(0)
    };
    let before = default_deny(&env);
    let forbidden = starts(
        &podman,
        &["id=client", "bpfwall.egress=allow to id=nobody port 80/tcp"],
        &first_connect(&ip),
        20,
    );
    assert_eq!(forbidden.len(), 20);
    assert!(
        forbidden.iter().all(|o| o == "blocked"),
        "forbidden first connections got through: {forbidden:?}"
    );
    let after = default_deny(&env);
    assert!(
        after >= before + 20,
        "20 blocked starts but {} default-deny drops\n{}",
        after - before,
        env.status_text()
    );

    // Clients web admits connect at their first SYN (known before they run);
    // one it does not is dropped by web's ingress.
    let allowed = starts(&podman, &["id=app2"], &first_connect(&ip), 4);
    assert!(allowed.iter().all(|o| o == "CONNECTED"), "{allowed:?}");
    let web_before = env.drops(&web_c);
    let refused = starts(&podman, &["id=app3"], &first_connect(&ip), 4);
    assert!(refused.iter().all(|o| o == "blocked"), "{refused:?}");
    assert!(env.drops(&web_c).ingress >= web_before.ingress + 4);

    // A restarted daemon takes back what only the hook told it (no source
    // lists podman's containers): web stays known and policed.
    env.stop_daemon();
    env.start_daemon();
    env.wait_attached(&web_c);
    let web_before = env.drops(&web_c);
    let refused = starts(&podman, &["id=app3"], &first_connect(&ip), 2);
    assert!(refused.iter().all(|o| o == "blocked"), "{refused:?}");
    assert!(
        env.drops(&web_c).ingress >= web_before.ingress + 2,
        "{}",
        env.status_text()
    );

    // A broken label refuses the start, naming the label and column.
    let bad = podman.run(
        &["--rm", "--label", "bpfwall.egress=allow to id=web port 8x"],
        &["true"],
    );
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("refused: label 'bpfwall.egress' column 22"),
        "{stderr}"
    );

    // Uninstall: exactly what install wrote goes; the directory and the
    // other hook stay; containers start unpoliced again.
    hook(&["uninstall-hook"], base);
    let left: Vec<String> = std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(left, vec!["other.json".to_string()]);
    let unhooked = podman.run(
        &["--rm", "--label", "bpfwall.egress=allow to id=web port 8x"],
        &["echo", "ran"],
    );
    assert_eq!(
        String::from_utf8_lossy(&unhooked.stdout).trim(),
        "ran",
        "{}",
        String::from_utf8_lossy(&unhooked.stderr)
    );
}
