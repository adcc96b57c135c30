//! End to end: one daemon per pin root (the hardening issue). A second
//! daemon on a pin root that a running daemon holds exits with an error
//! naming the pin root and the holder, and leaves the first one's socket,
//! pins and enforcement alone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use bpfwall_e2e::{Direction, TestEnv, SLEEP};

#[test]
fn a_second_daemon_on_the_same_pin_root_is_refused() {
    let env = TestEnv::new("pinlock");
    let bpfwall_e2e::Article {
        app1,
        app2,
        app3,
        target,
    } = env.article(
        &["--label", "bpfwall.ingress=allow from id=app2 port 80/tcp"],
        &[],
    );
    let first = env.daemon_pid().unwrap();
    let socket_inode = std::fs::metadata(&env.socket).unwrap().ino();
    let links = env.link_programs();
    assert_eq!(links.len(), 6);

    // Same pin root, same socket, same everything.
    let out = env
        .run_second_daemon(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", env.status_text()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&env.pin_root.display().to_string())
            && stderr.contains(&format!("pid {first}")),
        "the error names the pin root and the holder: {stderr}"
    );

    // The first daemon still answers on its own socket...
    assert_eq!(
        std::fs::metadata(&env.socket).unwrap().ino(),
        socket_inode,
        "the first daemon's socket was replaced"
    );
    assert_eq!(env.status()["endpoints"].as_array().unwrap().len(), 3);
    // ...its links still run its programs...
    assert_eq!(env.link_programs(), links, "the pinned links were moved");
    // Nor can its pins be torn down under it.
    let teardown = bpfwall_e2e::run(
        std::process::Command::new(bpfwall_e2e::bpfwall_bin())
            .args(["teardown", "--bpffs-root"])
            .arg(&env.pin_root),
    );
    assert!(!teardown.status.success(), "{teardown:?}");
    assert!(
        String::from_utf8_lossy(&teardown.stderr).contains(&format!("pid {first}")),
        "{teardown:?}"
    );
    assert_eq!(env.link_programs(), links, "teardown removed pins");
    // ...and it keeps enforcing and following Docker.
    env.assert_http_allowed(&app2, &target);
    env.assert_http_blocked_by(&app3, &target, &app1, Direction::Ingress);
    let late = env.start_attached("late", &["--label", "id=late"], SLEEP);
    env.assert_http_blocked_by(&late, &target, &app1, Direction::Ingress);
}
