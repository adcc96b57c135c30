//! The end-to-end harness: a real bpfwall daemon, a real dockerd, real
//! containers, real packets.
//!
//! Every test makes a [`TestEnv`] with a name of its own. The env runs its
//! own daemon (pins under /sys/fs/bpf/bpfwall_v1_e2e_<name>, API socket,
//! policy and state directories under /run/bpfwall-e2e/) that attaches only to containers labelled
//! `bpfwall-e2e.test=<name>`, so tests run side by side and never touch
//! containers they did not create. Dropping the env (also when the test
//! panics) kills the daemon and removes its containers, networks, network
//! namespaces, links and pins.
//!
//! A check that something is blocked names the endpoint that must block it
//! and the direction ([`TestEnv::assert_http_blocked_by`] and friends): it
//! passes only when the attempt failed *and* that endpoint's drop counter in
//! that direction moved across the attempt, so a refused connection, a name
//! that does not resolve or a server that is not up never passes as a block.
//!
//! Needs root, dockerd and the test image (scripts/setup.sh makes all three).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test harness: a failed step is a failed test"
)]

use std::collections::BTreeMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A container command: busybox httpd on port 80, in the foreground.
pub const HTTPD: &[&str] = &["httpd", "-f", "-p", "80", "-h", "/www"];
/// A container command that just stays up.
pub const SLEEP: &[&str] = &["sleep", "600"];

/// The article's three containers: app1 (an HTTP server on ports 80 and 8080,
/// with the given policy labels), app2 and app3 (idle clients), all attached.
#[derive(Debug)]
pub struct Article {
    /// The server.
    pub app1: Container,
    /// The client the policy admits.
    pub app2: Container,
    /// The client it does not.
    pub app3: Container,
    /// `http://<app1's address>/`.
    pub target: String,
}

/// The image scripts/build-test-image.sh builds: `BPFWALL_TEST_IMAGE` when
/// the tests are compiled (the variable that script reads), else
/// bpfwall-test:latest.
pub const IMAGE: &str = match option_env!("BPFWALL_TEST_IMAGE") {
    Some(image) => image,
    None => "bpfwall-test:latest",
};
/// The label that marks (and scopes) every object a test creates.
pub const TEST_LABEL: &str = "bpfwall-e2e.test";

/// Runs a command, returning its output; panics only if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its trimmed stdout.
pub fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker() -> Command {
    Command::new("docker")
}

/// The bpfwall binary under test.
pub fn bpfwall_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BPFWALL_BIN") {
        return PathBuf::from(p);
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let candidates = [target.join("debug/bpfwall"), target.join("release/bpfwall")];
    candidates
        .iter()
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .cloned()
        .expect("no bpfwall binary: run scripts/test.sh, or cargo build -p bpfwall first")
}

/// A container a test started.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its name.
    pub name: String,
}

/// The direction of a packet at the endpoint that polices it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Towards the container.
    Ingress,
    /// Leaving the container.
    Egress,
}

impl Direction {
    /// Its key in `status --json` (`endpoints[].ingress` / `.egress`).
    pub fn key(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Drop counters at one moment: one container's dropped packets per
/// direction (`status --json` `endpoints[].<direction>.dropped_packets`) and
/// the daemon's drops by reason (`drops`; the maps are this env's own, so
/// only this test's containers count there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drops {
    /// Packets the container's ingress program dropped.
    pub ingress: u64,
    /// Packets its egress program dropped.
    pub egress: u64,
    /// Drops by reason name (`policy-deny`, `policy-default-deny`, ...).
    pub by_reason: BTreeMap<String, u64>,
}

impl Drops {
    /// Dropped packets in one direction.
    pub fn dropped(&self, direction: Direction) -> u64 {
        match direction {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }

    /// Drops counted under one reason (0 when the daemon reports none).
    pub fn reason(&self, reason: &str) -> u64 {
        self.by_reason.get(reason).copied().unwrap_or(0)
    }
}

mod containerd;
mod docker_side;
mod dockerd;
/// A network namespace a test made, reachable from containers through the host.
mod env;
mod flows;
mod http;
mod plugin;

pub use containerd::*;
pub use docker_side::*;
pub use dockerd::*;
pub use env::*;
pub use flows::*;
pub use http::*;
pub use plugin::*;
