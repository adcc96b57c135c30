//! The shipped systemd unit (plugin/systemd/bpfwall.service): systemd's own
//! checker accepts it (with its ExecStart pointed at the binary under test,
//! which must exist for the check), and it starts bpfwall before dockerd
//! (dockerd retries a missing network plugin for only about 30 s).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::process::Command;

#[test]
fn plug_the_systemd_unit_verifies_and_orders_bpfwall_before_docker() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugin/systemd/bpfwall.service"
    ))
    .unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    assert!(lines.contains(&"Before=docker.service"), "{unit}");
    assert!(
        lines.contains(&"ExecStart=/usr/local/bin/bpfwall daemon"),
        "{unit}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("WantedBy=") && l.contains("docker.service")),
        "starting docker must start bpfwall: {unit}"
    );
    let dir = std::env::temp_dir().join(format!("plug-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bpfwall.service");
    let bin = bpfwall_e2e::bpfwall_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/bpfwall", &bin.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze must be installed (scripts/setup.sh installs it)");
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}{stderr}",
        out.status
    );
}
