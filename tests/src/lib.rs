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

/// A network namespace a test made, reachable from containers through the host.
#[derive(Debug, Clone)]
pub struct Netns {
    /// Its name.
    pub name: String,
}

/// One test's world.
#[derive(Debug)]
pub struct TestEnv {
    /// The test's name.
    pub name: String,
    /// The daemon's pin root.
    pub pin_root: PathBuf,
    /// The daemon's API socket.
    pub socket: PathBuf,
    /// The daemon's policy directory.
    pub policy_dir: PathBuf,
    /// The daemon's state directory (saved policy versions).
    pub state_dir: PathBuf,
    log: PathBuf,
    docker_socket: Option<PathBuf>,
    daemon_args: Vec<String>,
    daemon: Option<Child>,
    networks: Vec<String>,
    netns: Vec<String>,
    links: Vec<String>,
}

impl TestEnv {
    /// Cleans whatever an earlier run of this test left, then starts the daemon.
    pub fn new(name: &str) -> TestEnv {
        Self::build(name, None, &[])
    }

    /// Like [`TestEnv::new`], with the daemon talking to dockerd through
    /// `docker_socket` (a [`DockerProxy`]) instead of /var/run/docker.sock.
    pub fn with_docker_socket(name: &str, docker_socket: Option<&Path>) -> TestEnv {
        Self::build(name, docker_socket, &[])
    }

    /// Like [`TestEnv::new`], with `args` added to `bpfwall daemon`'s
    /// command line (at every start of the daemon).
    pub fn with_daemon_args(name: &str, args: &[&str]) -> TestEnv {
        Self::build(name, None, args)
    }

    fn build(name: &str, docker_socket: Option<&Path>, daemon_args: &[&str]) -> TestEnv {
        let out = run(docker().arg("image").arg("inspect").arg(IMAGE));
        assert!(
            out.status.success(),
            "test image {IMAGE} is missing: run scripts/setup.sh"
        );
        let dir = PathBuf::from("/run/bpfwall-e2e");
        std::fs::create_dir_all(&dir).unwrap();
        let mut env = TestEnv {
            name: name.to_string(),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/bpfwall_v1_e2e_{name}")),
            socket: dir.join(format!("{name}.sock")),
            policy_dir: dir.join(format!("{name}-policies")),
            state_dir: dir.join(format!("{name}-state")),
            log: dir.join(format!("{name}.log")),
            docker_socket: docker_socket.map(Path::to_path_buf),
            daemon_args: daemon_args.iter().map(|a| a.to_string()).collect(),
            daemon: None,
            networks: Vec::new(),
            netns: Vec::new(),
            links: Vec::new(),
        };
        env.remove_containers();
        let _ = std::fs::remove_dir_all(&env.pin_root);
        let _ = std::fs::remove_dir_all(&env.policy_dir);
        let _ = std::fs::remove_dir_all(&env.state_dir);
        std::fs::create_dir_all(&env.policy_dir).unwrap();
        env.start_daemon();
        env
    }

    /// Starts the daemon and waits until it answers and has listed Docker.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bpfwall_bin());
        if let Some(sock) = &self.docker_socket {
            cmd.arg("daemon").arg("--docker-socket").arg(sock);
        } else {
            cmd.arg("daemon");
        }
        let child = cmd
            .args(["-v", "--bpffs-root"])
            .arg(&self.pin_root)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--manage-label")
            .arg(format!("{TEST_LABEL}={}", self.name))
            .arg("--policy-dir")
            .arg(&self.policy_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(self.network_plugin_args())
            .args(&self.daemon_args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start bpfwall daemon");
        self.daemon = Some(child);
        // A docker socket that does not exist is a host without dockerd:
        // the daemon must answer without it.
        let no_docker = self.docker_socket.as_ref().is_some_and(|p| !p.exists());
        self.wait_for("the daemon to answer and list docker", |env| {
            env.try_status().is_some_and(|s| {
                s["docker_synced"] == true
                    || (no_docker
                        && s["sources"].as_array().is_some_and(|v| {
                            v.iter().any(|x| {
                                x["source"] == "docker"
                                    && x["state"].as_str().is_some_and(|t| t.starts_with("off"))
                            })
                        }))
            })
        });
    }

    /// Kills the daemon with SIGKILL (no cleanup of its own).
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Polls `cond` every 100 ms for up to 15 s.
    pub fn wait_for(&self, what: &str, cond: impl Fn(&TestEnv) -> bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\n{}", self.daemon_log());
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `bpfwall status --json`, or None if the daemon does not answer.
    pub fn try_status(&self) -> Option<Value> {
        let out = run(Command::new(bpfwall_bin())
            .arg("status")
            .arg("--json")
            .arg("--socket")
            .arg(&self.socket));
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `bpfwall status --json`.
    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("bpfwall status failed\n{}", self.daemon_log()))
    }

    /// `bpfwall status` as a person reads it.
    pub fn status_text(&self) -> String {
        must(
            Command::new(bpfwall_bin())
                .arg("status")
                .arg("--socket")
                .arg(&self.socket),
        )
    }

    /// The status entry of one container.
    pub fn endpoint(&self, c: &Container) -> Option<Value> {
        self.status()["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == c.name.as_str())
            .cloned()
    }

    /// Creates a user-defined network of the test's own.
    pub fn network(&mut self, suffix: &str) -> String {
        self.network_with(suffix, &[])
    }

    /// Creates a user-defined network of the test's own with `docker
    /// network create` options (e.g. `--ipv6 --subnet ...`).
    pub fn network_with(&mut self, suffix: &str, options: &[&str]) -> String {
        let name = format!("e2e-{}-{suffix}", self.name);
        let _ = run(docker().args(["network", "rm", &name]));
        must(
            docker()
                .args(["network", "create", "--label"])
                .arg(format!("{TEST_LABEL}={}", self.name))
                .args(options)
                .arg(&name),
        );
        self.networks.push(name.clone());
        name
    }

    /// Starts a detached container `e2e-<test>-<role>` with the test label.
    /// `options` go before the image, `cmd` after it.
    pub fn start(&self, role: &str, options: &[&str], cmd: &[&str]) -> Container {
        let name = format!("e2e-{}-{role}", self.name);
        must(
            docker()
                .args(["run", "-d", "--name", &name, "--label"])
                .arg(format!("{TEST_LABEL}={}", self.name))
                .args(options)
                .arg(IMAGE)
                .args(cmd),
        );
        Container { name }
    }

    /// Starts a container and waits until the daemon has attached to it.
    pub fn start_attached(&self, role: &str, options: &[&str], cmd: &[&str]) -> Container {
        let c = self.start(role, options, cmd);
        self.wait_attached(&c);
        c
    }

    /// Starts the article's three containers; `app1_options` (labels) and
    /// `common` (e.g. `--network=...`) go to `docker run`.
    pub fn article(&self, app1_options: &[&str], common: &[&str]) -> Article {
        let with = |extra: &[&str]| -> Vec<String> {
            common.iter().chain(extra).map(|s| s.to_string()).collect()
        };
        fn opts(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let mut app1_opts = with(&["--label", "id=app1"]);
        app1_opts.extend(app1_options.iter().map(|s| s.to_string()));
        // 8080 too, so that a block of another port is bpfwall's, not a refusal.
        let app1 = self.start_attached(
            "app1",
            &opts(&app1_opts),
            &[
                "sh",
                "-c",
                "httpd -p 8080 -h /www; exec httpd -f -p 80 -h /www",
            ],
        );
        let app2 = self.start_attached("app2", &opts(&with(&["--label", "id=app2"])), SLEEP);
        let app3 = self.start_attached("app3", &opts(&with(&["--label", "id=app3"])), SLEEP);
        let target = format!("http://{}/", self.ip(&app1));
        Article {
            app1,
            app2,
            app3,
            target,
        }
    }

    /// Waits until the daemon reports the container attached.
    pub fn wait_attached(&self, c: &Container) {
        self.wait_for(&format!("{} to be attached", c.name), |env| {
            env.endpoint(c).is_some_and(|e| e["attached"] == true)
        });
    }

    /// A container's address on a network (default: its first).
    pub fn ip(&self, c: &Container) -> String {
        let ips = must(docker().args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            &c.name,
        ]));
        ips.split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("{} has no address", c.name))
            .to_string()
    }

    /// A container's global IPv6 address on its first network that has one.
    pub fn ip6(&self, c: &Container) -> String {
        let ips = must(docker().args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}} {{end}}",
            &c.name,
        ]));
        ips.split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("{} has no global IPv6 address", c.name))
            .to_string()
    }

    /// A container's IPv6 link-local (fe80::) address on `dev`, read inside it.
    pub fn link_local(&self, c: &Container, dev: &str) -> String {
        let out = self.exec(
            c,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("{} has no link-local address on {dev}: {text}", c.name))
            .to_string()
    }

    /// Runs a command in a container; its output.
    pub fn exec(&self, c: &Container, cmd: &[&str]) -> Output {
        run(docker().arg("exec").arg(&c.name).args(cmd))
    }

    /// Runs a command in a container; true when it exits 0.
    pub fn exec_ok(&self, c: &Container, cmd: &[&str]) -> bool {
        self.exec(c, cmd).status.success()
    }

    /// Runs a command in a container that must succeed; its trimmed stdout.
    pub fn exec_must(&self, c: &Container, cmd: &[&str]) -> String {
        must(docker().arg("exec").arg(&c.name).args(cmd))
    }

    /// What a container printed to stdout so far (`docker logs`).
    pub fn logs(&self, c: &Container) -> String {
        let out = run(docker().args(["logs", &c.name]));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// An HTTP GET from a container (allowed flows get 5 s, enough for a SYN retry).
    pub fn http(&self, from: &Container, url: &str, seconds: u32) -> bool {
        let secs = seconds.to_string();
        self.exec_ok(
            from,
            &["timeout", &secs, "wget", "-q", "-O", "/dev/null", url],
        )
    }

    /// A UDP echo round trip from a container.
    pub fn udp(&self, from: &Container, addr: &str, port: u16, millis: u32) -> bool {
        self.exec_ok(
            from,
            &[
                "udp_echo",
                "ask",
                addr,
                &port.to_string(),
                &millis.to_string(),
            ],
        )
    }

    /// Asserts an HTTP GET works.
    pub fn assert_http_allowed(&self, from: &Container, url: &str) {
        assert!(
            self.http(from, url, 6),
            "{} -> {url} should be allowed\n{}",
            from.name,
            self.status_text()
        );
    }

    /// A container's drop counters and the daemon's drops by reason.
    /// Panics if the container is not one of the daemon's endpoints.
    pub fn drops(&self, c: &Container) -> Drops {
        let status = self.status();
        let ep = status["endpoints"]
            .as_array()
            .and_then(|eps| eps.iter().find(|e| e["name"] == c.name.as_str()))
            .unwrap_or_else(|| panic!("{} is not an endpoint of the daemon: {status}", c.name));
        let dropped = |d: Direction| {
            ep[d.key()]["dropped_packets"]
                .as_u64()
                .unwrap_or_else(|| panic!("no {}.dropped_packets in {ep}", d.key()))
        };
        Drops {
            ingress: dropped(Direction::Ingress),
            egress: dropped(Direction::Egress),
            by_reason: drops_by_reason(&status),
        }
    }

    /// The daemon's drops by reason (`status --json` `drops`).
    pub fn drops_by_reason(&self) -> BTreeMap<String, u64> {
        drops_by_reason(&self.status())
    }

    /// Asserts that `enforcer`'s drop counter in `direction` is above
    /// `before` (taken with [`TestEnv::drops`] before the attempt `what`).
    pub fn assert_dropped_since(
        &self,
        before: &Drops,
        enforcer: &Container,
        direction: Direction,
        what: &str,
    ) {
        let after = self.drops(enforcer);
        assert!(
            after.dropped(direction) > before.dropped(direction),
            "{what} failed, but {}'s {} drop counter did not move ({} before, {} after): \
             not a drop by bpfwall there (refused? no such name? nothing listening?)\n{}",
            enforcer.name,
            direction.key(),
            before.dropped(direction),
            after.dropped(direction),
            self.status_text()
        );
    }

    /// Asserts that `attempt` (which returns whether it got through) fails
    /// and that `enforcer`'s drop counter in `direction` moved across it:
    /// bpfwall, at that endpoint, blocked it.
    pub fn assert_blocked_by(
        &self,
        what: &str,
        enforcer: &Container,
        direction: Direction,
        attempt: impl FnOnce() -> bool,
    ) {
        let before = self.drops(enforcer);
        assert!(
            !attempt(),
            "{what} should be blocked by {}'s {}\n{}",
            enforcer.name,
            direction.key(),
            self.status_text()
        );
        self.assert_dropped_since(&before, enforcer, direction, what);
    }

    /// Asserts an HTTP GET fails because `enforcer` drops it in `direction`.
    pub fn assert_http_blocked_by(
        &self,
        from: &Container,
        url: &str,
        enforcer: &Container,
        direction: Direction,
    ) {
        self.assert_blocked_by(
            &format!("{} -> {url}", from.name),
            enforcer,
            direction,
            || self.http(from, url, 2),
        );
    }

    /// Asserts a UDP echo round trip fails because `enforcer` drops the
    /// request in `direction`.
    pub fn assert_udp_blocked_by(
        &self,
        from: &Container,
        addr: &str,
        port: u16,
        enforcer: &Container,
        direction: Direction,
    ) {
        self.assert_blocked_by(
            &format!("{} -> {addr}:{port}/udp", from.name),
            enforcer,
            direction,
            || self.udp(from, addr, port, 700),
        );
    }

    /// A network namespace of the test's own, routed from the host: a veth
    /// pair whose namespace end holds `addrs` (each /24 routed to it from
    /// the host). Containers reach it through the host, as an outside peer.
    pub fn outside_netns(&mut self, index: u8, addrs: &[&str]) -> Netns {
        let name = format!("bpfwall-e2e-{}", self.name);
        let host_if = format!("bpfwe-{index}h");
        let ns_if = format!("bpfwe-{index}n");
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        let _ = run(Command::new("ip").args(["link", "del", &host_if]));
        // Routed to the namespace: only addresses the test hands in, which must
        // be documentation/benchmark ranges that nothing else on the host uses.
        must(Command::new("ip").args(["netns", "add", &name]));
        self.netns.push(name.clone());
        must(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]));
        self.links.push(host_if.clone());
        must(Command::new("ip").args(["link", "set", &ns_if, "netns", &name]));
        let link_net = format!("169.254.{index}.");
        must(Command::new("ip").args(["addr", "add", &format!("{link_net}1/30"), "dev", &host_if]));
        must(Command::new("ip").args(["link", "set", &host_if, "up"]));
        let in_ns =
            |args: &[&str]| must(Command::new("ip").args(["netns", "exec", &name]).args(args));
        in_ns(&["ip", "link", "set", "lo", "up"]);
        in_ns(&["ip", "link", "set", &ns_if, "up"]);
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{link_net}2/30"),
            "dev",
            &ns_if,
        ]);
        in_ns(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("{link_net}1"),
        ]);
        for a in addrs {
            in_ns(&["ip", "addr", "add", &format!("{a}/32"), "dev", &ns_if]);
            must(Command::new("ip").args([
                "route",
                "replace",
                &format!("{a}/32"),
                "via",
                &format!("{link_net}2"),
            ]));
        }
        Netns { name }
    }

    /// Starts busybox httpd on a port inside a namespace (stopped with it).
    pub fn netns_http_server(&self, ns: &Netns, port: u16) {
        let www = format!("/run/bpfwall-e2e/{}-www", self.name);
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(format!("{www}/index.html"), "outside\n").unwrap();
        must(Command::new("ip").args([
            "netns",
            "exec",
            &ns.name,
            "busybox",
            "httpd",
            "-p",
            &port.to_string(),
            "-h",
            &www,
        ]));
    }

    /// Writes a policy file into the daemon's policy directory (atomically).
    pub fn write_policy(&self, file: &str, text: &str) {
        let tmp = self.policy_dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.policy_dir.join(file)).unwrap();
    }

    /// Removes a policy file.
    pub fn remove_policy(&self, file: &str) {
        std::fs::remove_file(self.policy_dir.join(file)).unwrap();
    }

    /// Runs `bpfwall ARGS --socket <this env's>` for subcommands that talk to the daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(Command::new(bpfwall_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket))
    }

    /// How many entries a pinned map holds.
    pub fn pinned_map_len(&self, map: &str) -> usize {
        let path = self.pin_root.join("maps").join(map);
        let out = must(
            Command::new("bpftool")
                .arg("-j")
                .args(["map", "dump", "pinned"])
                .arg(&path),
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array().map_or(0, Vec::len)
    }

    /// How many links are pinned.
    pub fn pinned_links(&self) -> usize {
        std::fs::read_dir(self.pin_root.join("links")).map_or(0, |d| d.count())
    }

    /// Asserts that there are `expected` pinned links and that each runs
    /// the program of its direction the running daemon pinned (read with
    /// bpftool), as after a restart or an upgrade.
    pub fn assert_links_run_the_daemons_programs(&self, expected: usize) {
        let id_of = |what: &str, path: &Path| -> u64 {
            let out = must(
                Command::new("bpftool")
                    .args(["-j", what, "show", "pinned"])
                    .arg(path),
            );
            let v: Value = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("bpftool {what} show {}: {e}: {out}", path.display()));
            let key = if what == "link" { "prog_id" } else { "id" };
            v[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no {key} in bpftool's answer: {out}"))
        };
        let links: Vec<_> = std::fs::read_dir(self.pin_root.join("links"))
            .expect("the links directory")
            .flatten()
            .collect();
        assert_eq!(links.len(), expected, "pinned links");
        for entry in links {
            let name = entry.file_name().to_string_lossy().to_string();
            let prog = if name.ends_with("_ingress") {
                "bpfwall_ingress"
            } else {
                "bpfwall_egress"
            };
            assert_eq!(
                id_of("link", &entry.path()),
                id_of("prog", &self.pin_root.join("progs").join(prog)),
                "link {name} runs the running daemon's program"
            );
        }
    }

    /// Stops and removes a container.
    pub fn remove(&self, c: &Container) {
        must(docker().args(["rm", "-f", &c.name]));
    }

    fn remove_containers(&self) {
        let ids = must(
            docker()
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label={TEST_LABEL}={}", self.name)),
        );
        if !ids.is_empty() {
            let _ = run(docker().args(["rm", "-f"]).args(ids.split_whitespace()));
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- bpfwall daemon log of {} ----\n{}",
                self.name,
                self.daemon_log()
            );
        }
        if let Some(mut child) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        self.remove_containers();
        for n in &self.networks {
            let _ = run(docker().args(["network", "rm", n]));
        }
        for ns in &self.netns {
            let pids = run(Command::new("ip").args(["netns", "pids", ns]));
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
        for l in &self.links {
            let _ = run(Command::new("ip").args(["link", "del", l]));
        }
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.policy_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_dir_all(format!("/run/bpfwall-e2e/{}-www", self.name));
    }
}

fn drops_by_reason(status: &Value) -> BTreeMap<String, u64> {
    status["drops"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// A unix-socket proxy in front of /var/run/docker.sock, so a test can cut
/// the daemon off from dockerd (and restore it) without touching dockerd.
#[derive(Debug)]
pub struct DockerProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl DockerProxy {
    /// Starts forwarding `path` to dockerd.
    pub fn start(path: &Path) -> DockerProxy {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(upstream) = UnixStream::connect("/var/run/docker.sock") else {
                    continue;
                };
                let mut list = conns2.lock().unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
                list.push(client);
                list.push(upstream);
            }
        });
        DockerProxy {
            path: path.to_path_buf(),
            stop,
            conns,
            thread: Some(thread),
        }
    }

    /// Cuts every connection and stops accepting new ones.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serialises changes to /etc/docker/daemon.json between tests.
static DAEMON_JSON: Mutex<()> = Mutex::new(());

/// bpfwall-runc registered with Docker under a test's own name, talking to
/// that test's daemon; uninstalled (daemon.json restored) when dropped.
#[derive(Debug)]
pub struct Runtime {
    /// The runtime's name (`docker run --runtime NAME`).
    pub name: String,
}

impl Runtime {
    /// Installs the runtime for `env` and waits until dockerd knows it.
    pub fn install(env: &TestEnv, suffix: &str, fail_open: bool) -> Runtime {
        let name = format!("bpfwall-e2e-{}-{suffix}", env.name);
        {
            let _lock = DAEMON_JSON.lock().unwrap_or_else(|e| e.into_inner());
            let _ = run(Command::new(bpfwall_bin()).args(["uninstall-runtime", "--name", &name]));
            let mut cmd = Command::new(bpfwall_bin());
            cmd.args(["install-runtime", "--name", &name, "--socket"])
                .arg(&env.socket);
            if fail_open {
                cmd.arg("--fail-open");
            }
            must(&mut cmd);
        }
        let rt = Runtime { name };
        env.wait_for("dockerd to know the runtime", |_| {
            must(docker().args(["info", "-f", "{{json .Runtimes}}"]))
                .contains(&format!("\"{}\"", rt.name))
        });
        rt
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _lock = DAEMON_JSON.lock().unwrap_or_else(|e| e.into_inner());
        let _ = run(Command::new(bpfwall_bin()).args(["uninstall-runtime", "--name", &self.name]));
    }
}

// ---- Daemon lifecycle (the hardening issue: restarts, the pin root lock) --

impl TestEnv {
    /// The running daemon's pid.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Stops the daemon as an operator or an upgrade does (SIGTERM) and
    /// waits for it to exit.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// Runs a second `bpfwall daemon` with exactly this env's pin root,
    /// socket, policy and state directories, and waits up to `limit` for
    /// it to exit. Err (after killing it) if it is still running then.
    pub fn run_second_daemon(&self, limit: Duration) -> Result<Output, String> {
        let mut child = Command::new(bpfwall_bin())
            .args(["daemon", "--bpffs-root"])
            .arg(&self.pin_root)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--manage-label")
            .arg(format!("{TEST_LABEL}={}", self.name))
            .arg("--policy-dir")
            .arg(&self.policy_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(self.network_plugin_args())
            .args(&self.daemon_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a second bpfwall daemon");
        let start = Instant::now();
        while start.elapsed() < limit {
            if child.try_wait().unwrap().is_some() {
                return Ok(child.wait_with_output().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let out = child.wait_with_output().unwrap();
        Err(format!(
            "the second daemon was still running after {limit:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Each pinned link's name and the id of the program it runs.
    pub fn link_programs(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(self.pin_root.join("links"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = must(
                Command::new("bpftool")
                    .args(["-j", "link", "show", "pinned"])
                    .arg(entry.path()),
            );
            let v: Value = serde_json::from_str(&text).unwrap();
            out.insert(
                entry.file_name().to_string_lossy().to_string(),
                v["prog_id"].as_u64().unwrap_or(0),
            );
        }
        out
    }
}

// ---- dockerd itself (the dockerd-restart test only) --------------------

/// How dockerd runs on this host, captured so that a test can stop it and
/// start it again exactly as it was. Dropping it (also when the test
/// panics) starts dockerd again if it does not answer, so a test never
/// leaves the host without Docker.
///
/// Stopping dockerd stops every container on the host: only a test that
/// runs alone may use this (`flock -x /tmp/bpfwall-dockerd.lock` on a
/// shared host).
#[derive(Debug)]
pub struct Dockerd {
    how: DockerdRun,
}

#[derive(Debug, Clone)]
enum DockerdRun {
    /// systemd units that were active (docker.socket can start dockerd on
    /// its own, so it is stopped and started with it).
    Systemd(Vec<String>),
    /// A plain process (`nohup dockerd &`, as scripts/setup.sh does).
    Process {
        argv: Vec<std::ffi::OsString>,
        cwd: PathBuf,
        env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
        stdout: PathBuf,
        stderr: PathBuf,
    },
}

/// Does dockerd answer?
pub fn dockerd_answers() -> bool {
    run(docker().args(["version", "--format", "{{.Server.Version}}"]))
        .status
        .success()
}

fn dockerd_pid() -> Option<i32> {
    std::fs::read_to_string("/var/run/docker.pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Marks every descriptor this process inherited or opened (above
/// stdin, stdout and stderr) close-on-exec, so that a dockerd started from
/// here holds none of them: above all not the lock a test runner took with
/// `flock -x LOCKFILE cargo test` (flock(1) passes its descriptor on), which
/// a dockerd that outlives the test would otherwise hold for good.
fn close_descriptors_on_exec() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        // The directory's own descriptor is closed by now: its error is moot.
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
}

/// Is the process gone (or a zombie nobody reaped yet)?
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

impl Dockerd {
    /// Finds how dockerd runs now: a systemd unit if `systemctl is-active
    /// docker` says so, else the process of /var/run/docker.pid (its
    /// command line, directory, environment and output files).
    pub fn capture() -> Dockerd {
        assert!(dockerd_answers(), "dockerd does not answer");
        let active = |unit: &str| {
            run(Command::new("systemctl").args(["is-active", "--quiet", unit]))
                .status
                .success()
        };
        if Command::new("systemctl").arg("--version").output().is_ok() && active("docker") {
            let units = ["docker.socket", "docker.service"]
                .into_iter()
                .filter(|u| active(u))
                .map(String::from)
                .collect();
            return Dockerd {
                how: DockerdRun::Systemd(units),
            };
        }
        let pid = dockerd_pid().expect("no pid in /var/run/docker.pid");
        let nul_list = |what: &str| -> Vec<std::ffi::OsString> {
            use std::os::unix::ffi::OsStrExt as _;
            std::fs::read(format!("/proc/{pid}/{what}"))
                .unwrap_or_else(|e| panic!("read /proc/{pid}/{what}: {e}"))
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| std::ffi::OsStr::from_bytes(s).to_os_string())
                .collect()
        };
        let argv = nul_list("cmdline");
        assert!(!argv.is_empty(), "dockerd (pid {pid}) has no command line");
        let env = nul_list("environ")
            .into_iter()
            .filter_map(|kv| {
                let text = kv.to_string_lossy().to_string();
                let (k, v) = text.split_once('=')?;
                Some((k.into(), v.into()))
            })
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| "/".into());
        // Its output goes on to the same files; a pipe or a terminal has no
        // path to reopen, so scripts/setup.sh's log stands in.
        let output = |fd: u32| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .ok()
                .filter(|p| p.is_absolute() && p.exists())
                .unwrap_or_else(|| PathBuf::from("/var/log/bpfwall-dockerd.log"))
        };
        Dockerd {
            how: DockerdRun::Process {
                argv,
                cwd,
                env,
                stdout: output(1),
                stderr: output(2),
            },
        }
    }

    /// Stops dockerd (SIGTERM, or systemctl stop) and waits until it is gone.
    pub fn stop(&self) {
        match &self.how {
            DockerdRun::Systemd(units) => {
                must(
                    Command::new("systemctl")
                        .arg("stop")
                        .args(units.iter().rev()),
                );
            }
            DockerdRun::Process { .. } => {
                let pid = dockerd_pid().expect("no pid in /var/run/docker.pid");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let start = Instant::now();
                while !process_gone(pid) {
                    assert!(
                        start.elapsed() < Duration::from_secs(90),
                        "dockerd (pid {pid}) did not stop within 90 s of SIGTERM"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        assert!(!dockerd_answers(), "dockerd still answers after it stopped");
    }

    /// Kills dockerd as a crash would (SIGKILL): its containers run on in
    /// their shims, and no event tells of what happens to them until it
    /// is back. Waits until it is gone.
    pub fn crash(&self) {
        match &self.how {
            DockerdRun::Systemd(units) => {
                // Killed, then stopped so that systemd does not restart it
                // before the test does.
                must(Command::new("systemctl").args([
                    "kill",
                    "--signal=SIGKILL",
                    "docker.service",
                ]));
                must(
                    Command::new("systemctl")
                        .arg("stop")
                        .args(units.iter().rev()),
                );
            }
            DockerdRun::Process { .. } => {
                let pid = dockerd_pid().expect("no pid in /var/run/docker.pid");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let start = Instant::now();
                while !process_gone(pid) {
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "dockerd (pid {pid}) did not die of SIGKILL"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        assert!(
            !dockerd_answers(),
            "dockerd still answers after it was killed"
        );
    }

    /// Starts dockerd again exactly as it ran, and returns once it
    /// answers; returns the instant it was first seen answering.
    pub fn start(&self) -> Instant {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(&self) -> Result<Instant, String> {
        match &self.how {
            DockerdRun::Systemd(units) => {
                let out = run(Command::new("systemctl").arg("start").args(units));
                if !out.status.success() {
                    return Err(format!(
                        "systemctl start {units:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
            DockerdRun::Process {
                argv,
                cwd,
                env,
                stdout,
                stderr,
            } => {
                // A killed dockerd leaves its pid file, and dockerd refuses
                // to start while that pid exists, even as a zombie that an
                // init slow to reap keeps (as here): the file is stale once
                // its process is gone or a zombie.
                if dockerd_pid().is_some_and(process_gone) {
                    let _ = std::fs::remove_file("/var/run/docker.pid");
                }
                let open = |p: &Path| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| format!("open {}: {e}", p.display()))
                };
                // In a session of its own, so that it outlives the test,
                // and with no descriptor but its output.
                close_descriptors_on_exec();
                let status = Command::new("setsid")
                    .arg("-f")
                    .args(argv)
                    .current_dir(cwd)
                    .env_clear()
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(open(stdout)?))
                    .stderr(Stdio::from(open(stderr)?))
                    .status()
                    .map_err(|e| format!("run setsid {argv:?}: {e}"))?;
                if !status.success() {
                    return Err(format!("setsid -f {argv:?} failed: {status}"));
                }
            }
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(90) {
            if dockerd_answers() {
                return Ok(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("dockerd did not answer within 90 s of its start".into())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Never a panic here: this runs while a failed test unwinds.
        for attempt in 1..=3 {
            if dockerd_answers() {
                return;
            }
            eprintln!("dockerd does not answer: starting it again as it ran (attempt {attempt})");
            match self.try_start() {
                Ok(_) => return,
                Err(e) => eprintln!("{e}"),
            }
        }
        eprintln!("DOCKERD IS DOWN: start it as scripts/setup.sh does");
    }
}

// ---- HTTP (L7) helpers ---------------------------------------------------------

/// What an HTTP GET (busybox wget) from a container got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpOutcome {
    /// A 2xx answer, with its body.
    Ok(String),
    /// Another status (wget's "server returned error: HTTP/1.1 403 ...").
    Status(u16),
    /// No answer: refused, reset, timed out.
    Failed(String),
}

impl TestEnv {
    /// An HTTP request with busybox wget from a container (`extra`: more
    /// wget options, such as `--post-file F` or `--header 'N: V'`).
    pub fn http_request(
        &self,
        from: &Container,
        url: &str,
        seconds: u32,
        extra: &[&str],
    ) -> HttpOutcome {
        let secs = seconds.to_string();
        let mut cmd = vec!["timeout", &secs, "wget", "-q", "-O", "-"];
        cmd.extend_from_slice(extra);
        cmd.push(url);
        let out = self.exec(from, &cmd);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            return HttpOutcome::Ok(stdout);
        }
        if let Some(rest) = stderr.split("server returned error: HTTP/1.").nth(1) {
            if let Some(code) = rest.get(2..5).and_then(|c| c.parse().ok()) {
                return HttpOutcome::Status(code);
            }
        }
        HttpOutcome::Failed(stderr)
    }

    /// An HTTP GET from a container.
    pub fn http_get(&self, from: &Container, url: &str) -> HttpOutcome {
        self.http_request(from, url, 6, &[])
    }

    /// Raw bytes to `host:port` from a container with busybox nc; `script`
    /// is a shell command list whose output is sent (sleep in it to pace
    /// the requests; nc stops reading when it ends). What came back.
    pub fn raw_tcp(
        &self,
        from: &Container,
        host: &str,
        port: u16,
        script: &str,
        seconds: u32,
    ) -> String {
        let cmd = format!("({script}; sleep 1) | timeout {seconds} nc {host} {port}");
        let out = self.exec(from, &["sh", "-c", &cmd]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits until the daemon's proxy serves a container.
    pub fn wait_proxy_ready(&self, c: &Container) {
        self.wait_for(&format!("the http proxy of {}", c.name), |env| {
            env.endpoint(c).is_some_and(|e| e["proxy"]["ready"] == true)
        });
    }

    /// A container's HTTP requests allowed and denied in a direction
    /// (`status --json`).
    pub fn http_counts(&self, c: &Container, direction: Direction) -> (u64, u64) {
        let ep = self
            .endpoint(c)
            .unwrap_or_else(|| panic!("{} is not an endpoint", c.name));
        let d = &ep[direction.key()];
        (
            d["http_allowed"].as_u64().unwrap_or(0),
            d["http_denied"].as_u64().unwrap_or(0),
        )
    }

    /// Connections the proxy closed for a reason (`status --json`).
    pub fn proxy_closed(&self, reason: &str) -> u64 {
        self.status()["proxy_closed"][reason].as_u64().unwrap_or(0)
    }

    /// `bpfwall policy check ... --port PORT/tcp --http 'METHOD TARGET'`:
    /// (allowed, the printed answer).
    pub fn check_http(
        &self,
        from: &Container,
        to: &Container,
        port: u16,
        request: &str,
        headers: &[&str],
    ) -> (bool, String) {
        let port = format!("{port}/tcp");
        let mut args = vec![
            "policy", "check", "--from", &from.name, "--to", &to.name, "--port", &port, "--http",
            request,
        ];
        for h in headers {
            args.push("--header");
            args.push(h);
        }
        let out = self.cli(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        match out.status.code() {
            Some(0) => (true, text),
            Some(1) => (false, text),
            _ => panic!("policy check failed: {text}"),
        }
    }
}

// ---- containerd and podman (issue 13): a containerd of the test's own, ctr
// containers in network namespaces of the test's own on a Docker bridge of
// the test's own (so Docker and ctr containers talk without NAT), podman ---

/// The containerd namespace the tests' ctr containers live in.
pub const CTR_NAMESPACE: &str = "default";

/// The test image's name in containerd after `ctr images import`.
pub fn ctr_image() -> String {
    let (repo, tag) = IMAGE.split_once(':').unwrap_or((IMAGE, "latest"));
    if repo.contains('/') {
        format!("{repo}:{tag}")
    } else {
        format!("docker.io/library/{repo}:{tag}")
    }
}

/// A containerd of a test's own: its own socket, root and state
/// directories under /run/ctrd-e2e/<name> and /var/lib/ctrd-e2e/<name>,
/// with the test image imported (from `docker save`: no registry). Its
/// shims get `BPFWALL_SOCKET` (the test daemon's socket), so
/// `ctr run --runc-binary <bpfwall-runc>` talks to the test's daemon.
/// Dropping it (also on a failed test) kills its containers, stops it and
/// its shims, and removes its directories; dockerd's containerd is never
/// touched.
#[derive(Debug)]
pub struct Containerd {
    /// The name it was made for.
    pub name: String,
    /// /run/ctrd-e2e/<name>.
    pub dir: PathBuf,
    root: PathBuf,
    bpfwall_socket: PathBuf,
    child: Option<Child>,
    exec_ids: std::sync::atomic::AtomicU32,
}

impl Containerd {
    /// Starts a containerd for `name` whose shims tell `bpfwall-runc` to
    /// talk to `bpfwall_socket`; imports the test image.
    pub fn start(name: &str, bpfwall_socket: &Path) -> Containerd {
        let dir = PathBuf::from(format!("/run/ctrd-e2e/{name}"));
        let root = PathBuf::from(format!("/var/lib/ctrd-e2e/{name}"));
        let mut c = Containerd {
            name: name.to_string(),
            dir: dir.clone(),
            root: root.clone(),
            bpfwall_socket: bpfwall_socket.to_path_buf(),
            child: None,
            exec_ids: Default::default(),
        };
        // What an earlier, killed run left.
        c.cleanup();
        create_dir_beside_cleanups(&dir);
        create_dir_beside_cleanups(&root);
        std::fs::write(
            dir.join("config.toml"),
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"#,
                root = root.join("root").display(),
                state = dir.join("state").display(),
                sock = c.socket().display(),
            ),
        )
        .unwrap();
        c.start_process();
        let tar = dir.join("image.tar");
        must(docker().args(["save", "-o"]).arg(&tar).arg(IMAGE));
        must(c.ctr().args(["images", "import"]).arg(&tar));
        let _ = std::fs::remove_file(&tar);
        c
    }

    /// runc's state directory for this containerd's containers (`ctr run
    /// --runc-root`; runc's default is one for every containerd).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// Its API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Starts the containerd process (again) and waits for its socket.
    pub fn start_process(&mut self) {
        assert!(self.child.is_none(), "containerd already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("BPFWALL_SOCKET", &self.bpfwall_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start containerd (scripts/setup.sh installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if run(self.ctr().arg("version")).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "containerd did not answer on {}\n{}",
            self.socket().display(),
            std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
        );
    }

    /// Stops the containerd process (SIGTERM), as a restart does: its
    /// containers keep running under their shims.
    pub fn stop_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// `ctr` on this containerd, in the tests' namespace.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(self.socket()).args(["-n", CTR_NAMESPACE]);
        cmd
    }

    /// `ctr run -d` of a container `<test>-<role>` (runc keeps every
    /// containerd's containers under one root per namespace: ids must be
    /// the test's own) with the test label of `env`, `--label` for each of
    /// `labels`, in network namespace `netns` (a path), running `cmd`.
    /// Panics if it fails.
    pub fn run_detached(
        &self,
        env: &TestEnv,
        role: &str,
        labels: &[&str],
        netns: &str,
        cmd: &[&str],
    ) -> Container {
        let id = format!("{}-{role}", env.name);
        let id = id.as_str();
        let mut c = self.ctr();
        c.args(["run", "-d", "--runc-root"])
            .arg(self.runc_root())
            .arg("--label")
            .arg(format!("{TEST_LABEL}={}", env.name));
        for l in labels {
            c.args(["--label", l]);
        }
        c.arg("--with-ns")
            .arg(format!("network:{netns}"))
            .arg(ctr_image())
            .arg(id)
            .args(cmd);
        let out = run(&mut c);
        assert!(
            out.status.success(),
            "ctr run {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Container {
            name: format!("{CTR_NAMESPACE}/{id}"),
        }
    }

    /// Runs `cmd` in a ctr container (`ctr task exec`); its output.
    pub fn exec(&self, c: &Container, cmd: &[&str]) -> Output {
        let id = c.name.rsplit('/').next().unwrap_or(&c.name);
        let n = self
            .exec_ids
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        run(self
            .ctr()
            .args(["task", "exec", "--exec-id"])
            .arg(format!("e2e-{n}"))
            .arg(id)
            .args(cmd))
    }

    /// An HTTP GET from a ctr container.
    pub fn http(&self, from: &Container, url: &str, seconds: u32) -> bool {
        self.exec(
            from,
            &[
                "timeout",
                &seconds.to_string(),
                "wget",
                "-q",
                "-O",
                "/dev/null",
                url,
            ],
        )
        .status
        .success()
    }

    /// Kills a ctr container's task and deletes it.
    pub fn remove(&self, c: &Container) {
        let id = c.name.rsplit('/').next().unwrap_or(&c.name).to_string();
        let _ = run(self.ctr().args(["task", "kill", "-s", "KILL", &id]));
        for _ in 0..50 {
            if run(self.ctr().args(["task", "delete", &id]))
                .status
                .success()
                || !run(self.ctr().args(["task", "ls", "-q"]))
                    .stdout
                    .split(|b| *b == b'\n')
                    .any(|l| l == id.as_bytes())
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = run(self.ctr().args(["container", "delete", &id]));
    }

    fn cleanup(&mut self) {
        if self.child.is_none() && self.socket().exists() {
            // An earlier run's containerd may still answer: stop it by pid.
            let out = run(Command::new("pgrep").arg("-f").arg(format!(
                "containerd --config {}",
                self.dir.join("config.toml").display()
            )));
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        if self.child.is_some() {
            let ids = run(self.ctr().args(["container", "ls", "-q"]));
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                self.remove(&Container {
                    name: format!("{CTR_NAMESPACE}/{id}"),
                });
            }
        }
        self.stop_process();
        // Shims of this containerd (by its socket) and their containers.
        let out = run(Command::new("pgrep").arg("-f").arg(format!(
            "containerd-shim.*-address {}",
            self.socket().display()
        )));
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Mounts left under its directories (rootfs of killed tasks).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| {
                p.starts_with(&*self.dir.to_string_lossy())
                    || p.starts_with(&*self.root.to_string_lossy())
            })
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = run(Command::new("umount").args(["-l", p]));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.root);
        // The parents, once no test's containerd is left in them.
        for dir in [&self.dir, &self.root] {
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// `create_dir_all` while another test's containerd may remove the shared
/// parent it found empty (its cleanup): between making the parent and the
/// directory the parent can go, so try again.
fn create_dir_beside_cleanups(dir: &Path) {
    for _ in 0..50 {
        match std::fs::create_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("create {}: {e}", dir.display()),
        }
    }
    panic!("create {}: its parent kept going away", dir.display());
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- containerd log of {} ----\n{}",
                self.name,
                std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
            );
        }
        self.cleanup();
    }
}

impl TestEnv {
    /// A Docker network of the test's own with an explicit subnet
    /// `10.213.<index>.0/24` whose Docker addresses stay below .128; the
    /// rest is for namespaces made by [`TestEnv::bridge_netns`]. Returns
    /// the network's name.
    pub fn shared_bridge(&mut self, index: u8) -> String {
        self.network_with(
            "shared",
            &[
                "--subnet",
                &format!("10.213.{index}.0/24"),
                "--ip-range",
                &format!("10.213.{index}.0/25"),
                "--gateway",
                &format!("10.213.{index}.1"),
            ],
        )
    }

    /// A network namespace of the test's own plugged into a Docker
    /// network's bridge (a veth, `eth0` inside) with `address`/24 and the
    /// bridge's gateway as default route: what a ctr container joins with
    /// `--with-ns network:<path>`. Returns the namespace's path.
    pub fn bridge_netns(&mut self, network: &str, role: &str, address: &str) -> String {
        let id = must(docker().args(["network", "inspect", "-f", "{{.Id}}", network]));
        let bridge = format!("br-{}", &id[..12]);
        let gateway = must(docker().args([
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            network,
        ]));
        let name = format!("bpfwall-e2e-{}-{role}", self.name);
        // Interface names are at most 15 bytes: a short hash of the namespace.
        let tag = name
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let host_if = format!("ctrd{:08x}", tag);
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        let _ = run(Command::new("ip").args(["link", "del", &host_if]));
        must(Command::new("ip").args(["netns", "add", &name]));
        self.netns.push(name.clone());
        must(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]));
        self.links.push(host_if.clone());
        must(Command::new("ip").args(["link", "set", &host_if, "master", &bridge, "up"]));
        let in_ns =
            |args: &[&str]| must(Command::new("ip").args(["netns", "exec", &name]).args(args));
        in_ns(&["ip", "link", "set", "lo", "up"]);
        in_ns(&["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        in_ns(&["ip", "link", "set", "eth0", "up"]);
        in_ns(&["ip", "route", "add", "default", "via", &gateway]);
        format!("/var/run/netns/{name}")
    }
}

/// podman, rootful, with the flags these machines need (runc refuses
/// podman's default rlimits here).
pub const PODMAN_ULIMITS: &[&str] = &[
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The test image's name in podman after `podman load`.
pub fn podman_image() -> String {
    if IMAGE.contains('/') {
        IMAGE.to_string()
    } else {
        format!("localhost/{IMAGE}")
    }
}

/// podman for one test: the test image loaded (from `docker save`), and
/// every podman container with the test's label removed when dropped
/// (also on a failed test).
#[derive(Debug)]
pub struct Podman {
    /// The test's name (its label value).
    pub name: String,
    /// The hooks directory the test's podman commands read (`--hooks-dir`).
    pub hooks_dir: PathBuf,
}

impl Podman {
    /// Loads the test image into podman; `hooks_dir` is the directory its
    /// commands read hooks from (it need not exist).
    pub fn new(name: &str, hooks_dir: &Path) -> Podman {
        let p = Podman {
            name: name.to_string(),
            hooks_dir: hooks_dir.to_path_buf(),
        };
        p.remove_all();
        let tar = PathBuf::from(format!("/run/bpfwall-e2e/{name}-image.tar"));
        must(docker().args(["save", "-o"]).arg(&tar).arg(IMAGE));
        must(Command::new("podman").arg("load").arg("-i").arg(&tar));
        let _ = std::fs::remove_file(&tar);
        p
    }

    /// `podman --hooks-dir <the test's> ...`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--hooks-dir").arg(&self.hooks_dir);
        c
    }

    /// `podman run OPTIONS IMAGE CMD` with the test label and the ulimits.
    pub fn run(&self, options: &[&str], cmd: &[&str]) -> Output {
        run(self
            .cmd()
            .args(["run", "--label"])
            .arg(format!("{TEST_LABEL}={}", self.name))
            .args(PODMAN_ULIMITS)
            .args(options)
            .arg(podman_image())
            .args(cmd))
    }

    /// A container's address on podman's network.
    pub fn ip(&self, name: &str) -> String {
        must(Command::new("podman").args(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name]))
    }

    fn remove_all(&self) {
        let ids = run(Command::new("podman")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={TEST_LABEL}={}", self.name)));
        let ids = String::from_utf8_lossy(&ids.stdout).to_string();
        if !ids.trim().is_empty() {
            let _ = run(Command::new("podman")
                .args(["rm", "-f", "-t", "0"])
                .args(ids.split_whitespace()));
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.remove_all();
    }
}

impl TestEnv {
    /// A host without dockerd: the daemon is given a docker socket that
    /// does not exist, and `daemon_args` (e.g. `--containerd-socket`).
    pub fn without_dockerd(name: &str, daemon_args: &[&str]) -> TestEnv {
        let absent = PathBuf::from(format!("/run/bpfwall-e2e/{name}-no-dockerd.sock"));
        let _ = std::fs::remove_file(&absent);
        Self::build(name, Some(&absent), daemon_args)
    }
}

// ---- Flow events, metrics, advise (the flows issue) --------------------

/// A running `bpfwall monitor --json` whose records are collected on a
/// thread of their own. Dropping it kills the monitor.
#[derive(Debug)]
pub struct Monitor {
    child: Child,
    records: Arc<Mutex<Vec<Value>>>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Every JSON record so far (the first line, the daemon's answer, left out).
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    /// Every line printed so far (human output).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits up to `limit` for a record that satisfies `cond`; returns it.
    pub fn wait_for(&self, limit: Duration, cond: impl Fn(&Value) -> bool) -> Option<Value> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(r) = self.records().into_iter().find(&cond) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl TestEnv {
    /// Starts `bpfwall monitor ARGS --socket <this env's>` and waits until it
    /// streams (its first record or a moment after it connected).
    pub fn monitor(&self, args: &[&str]) -> Monitor {
        use std::io::BufRead as _;
        let mut child = Command::new(bpfwall_bin())
            .arg("monitor")
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bpfwall monitor");
        let stdout = child.stdout.take().unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (r, l) = (records.clone(), lines.clone());
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    r.lock().unwrap().push(v);
                }
                l.lock().unwrap().push(line);
            }
        });
        // The daemon subscribes the monitor before it answers; give the
        // connection a moment.
        std::thread::sleep(Duration::from_millis(300));
        Monitor {
            child,
            records,
            lines,
            reader: Some(reader),
        }
    }
}

/// `GET /metrics` over plain HTTP/1.1 from `addr`; the body.
pub fn scrape_metrics(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect to the metrics address {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Parses the Prometheus (OpenMetrics) text format strictly enough for a
/// test: every line is a comment (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`)
/// or `name{label="value",...} number`; the text ends with `# EOF`.
/// Returns each sample's `name{labels}` (as written) and value.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last().copied(),
        Some("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    for line in lines {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split_whitespace().next().unwrap_or("");
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "unknown comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in: {line}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.ends_with('}'), "labels not closed: {line}");
            for pair in labels[1..labels.len() - 1]
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label in {line}"));
                assert!(
                    !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                    "bad label in {line}"
                );
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        out.insert(series.to_string(), v);
    }
    out
}

/// A free TCP port on loopback (bound and released).
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- The Docker network plugin (issue 12) --------------------------------

impl TestEnv {
    /// A test daemon serves no network plugin unless its test asks for one
    /// (`--network-plugin NAME` in its daemon arguments): two daemons
    /// cannot serve one plugin socket.
    fn network_plugin_args(&self) -> Vec<String> {
        if self.daemon_args.iter().any(|a| a == "--network-plugin") {
            Vec::new()
        } else {
            vec!["--no-network-plugin".to_string()]
        }
    }
}

/// A network namespace of a test's own standing in for the world, reached
/// from containers only through the host's routing (and its masquerade).
#[derive(Debug)]
pub struct World {
    /// The namespace.
    pub netns: String,
    /// The host end of its link.
    link: String,
}

impl World {
    /// Makes namespace `name` with a veth pair `<link>h`/`<link>n`
    /// (169.254.231.`index*4`+1/2 between them) holding `addrs`, each routed
    /// to it from the host. The addresses must be documentation ranges.
    pub fn new(name: &str, link: &str, index: u8, addrs: &[&str]) -> World {
        let (host_if, ns_if) = (format!("{link}h"), format!("{link}n"));
        let _ = run(Command::new("ip").args(["netns", "del", name]));
        let _ = run(Command::new("ip").args(["link", "del", &host_if]));
        must(Command::new("ip").args(["netns", "add", name]));
        let world = World {
            netns: name.to_string(),
            link: host_if.clone(),
        };
        must(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]));
        must(Command::new("ip").args(["link", "set", &ns_if, "netns", name]));
        let base = index * 4;
        let (h, n) = (
            format!("169.254.231.{}", base + 1),
            format!("169.254.231.{}", base + 2),
        );
        must(Command::new("ip").args(["addr", "add", &format!("{h}/30"), "dev", &host_if]));
        must(Command::new("ip").args(["link", "set", &host_if, "up"]));
        let in_ns =
            |args: &[&str]| must(Command::new("ip").args(["netns", "exec", name]).args(args));
        in_ns(&["ip", "link", "set", "lo", "up"]);
        in_ns(&["ip", "link", "set", &ns_if, "up"]);
        in_ns(&["ip", "addr", "add", &format!("{n}/30"), "dev", &ns_if]);
        in_ns(&["ip", "route", "add", "default", "via", &h]);
        for a in addrs {
            in_ns(&["ip", "addr", "add", &format!("{a}/32"), "dev", &ns_if]);
            must(Command::new("ip").args(["route", "replace", &format!("{a}/32"), "via", &n]));
        }
        // Answers leave from the world's first address (a UDP server bound
        // to the wildcard answers from the route's source).
        if let Some(first) = addrs.first() {
            in_ns(&[
                "ip",
                "route",
                "replace",
                &format!("169.254.231.{base}/30"),
                "dev",
                &ns_if,
                "scope",
                "link",
                "src",
                first,
            ]);
        }
        world
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args))
    }

    /// Starts `udp_echo log PORT echo` from the test image's binary inside
    /// the namespace, appending what arrives to `log`.
    pub fn udp_log(&self, port: u16, log: &Path) -> Child {
        let bin = udp_echo_binary();
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(&bin)
            .args(["log", &port.to_string(), "echo"])
            .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let pids = run(Command::new("ip").args(["netns", "pids", &self.netns]));
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.netns]));
        let _ = run(Command::new("ip").args(["link", "del", &self.link]));
    }
}

/// The test image's udp_echo, copied out of it once (static: runs anywhere).
pub fn udp_echo_binary() -> PathBuf {
    let path = PathBuf::from(format!(
        "/run/bpfwall-e2e/udp_echo-{}",
        IMAGE.replace([':', '/'], "_")
    ));
    if !path.exists() {
        let name = format!("bpfwall-e2e-udp-echo-{}", std::process::id());
        let _ = run(docker().args(["rm", "-f", &name]));
        must(docker().args(["create", "--name", &name, IMAGE, "true"]));
        let tmp = path.with_extension("tmp");
        let out = run(docker()
            .args(["cp", &format!("{name}:/bin/udp_echo")])
            .arg(&tmp));
        let _ = run(docker().args(["rm", "-f", &name]));
        assert!(out.status.success(), "docker cp udp_echo: {out:?}");
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// A [`TestEnv`] whose daemon serves the network plugin named like the env
/// (`docker network create -d <name>`; the name starts `plug-`). Dropping
/// it removes the test's containers and networks while the daemon still
/// runs (Docker deletes a plugin's network through the plugin, which
/// removes what it made), then drops the env.
#[derive(Debug)]
pub struct PluginEnv {
    env: TestEnv,
}

impl PluginEnv {
    /// Starts the env's daemon with the plugin (names start `plug`).
    pub fn new(name: &str) -> PluginEnv {
        assert!(name.starts_with("plug"), "plugin test names start plug");
        PluginEnv {
            env: TestEnv::with_daemon_args(name, &["--network-plugin", name]),
        }
    }
}

impl std::ops::Deref for PluginEnv {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.env
    }
}

impl std::ops::DerefMut for PluginEnv {
    fn deref_mut(&mut self) -> &mut TestEnv {
        &mut self.env
    }
}

impl Drop for PluginEnv {
    fn drop(&mut self) {
        if self.env.daemon.is_none() && !std::thread::panicking() {
            // Docker needs the plugin to delete its networks.
            self.env.start_daemon();
        }
        self.env.remove_containers();
        for n in std::mem::take(&mut self.env.networks) {
            let _ = run(docker().args(["network", "rm", &n]));
        }
    }
}

impl TestEnv {
    /// The network plugin's name (the env's).
    pub fn plugin(&self) -> &str {
        &self.name
    }

    /// A network of the plugin's, `<env>-<suffix>`, with `docker network
    /// create` options.
    pub fn plugin_network(&mut self, suffix: &str, options: &[&str]) -> String {
        let name = format!("{}-{suffix}", self.name);
        let _ = run(docker().args(["network", "rm", &name]));
        must(
            docker()
                .args(["network", "create", "-d", &self.name.clone(), "--label"])
                .arg(format!("{TEST_LABEL}={}", self.name))
                .args(options)
                .arg(&name),
        );
        self.networks.push(name.clone());
        name
    }

    /// `docker run -d` of a container `<env>-<role>` (names start `plug-`).
    pub fn run_plug(&self, role: &str, options: &[&str], cmd: &[&str]) -> Container {
        let name = format!("{}-{role}", self.name);
        let _ = run(docker().args(["rm", "-f", &name]));
        must(
            docker()
                .args(["run", "-d", "--name", &name, "--label"])
                .arg(format!("{TEST_LABEL}={}", self.name))
                .args(options)
                .arg(IMAGE)
                .args(cmd),
        );
        Container { name }
    }

    /// `docker run --rm` of a short-lived container, its output.
    pub fn run_plug_once(&self, options: &[&str], cmd: &[&str]) -> Output {
        run(docker()
            .args(["run", "--rm", "--label"])
            .arg(format!("{TEST_LABEL}={}", self.name))
            .args(options)
            .arg(IMAGE)
            .args(cmd))
    }

    /// The plugin's part of `status --json`.
    pub fn plugin_status(&self) -> Value {
        self.status()["network_plugin"].clone()
    }

    /// The gate's drops by reason.
    pub fn gate_drops(&self) -> BTreeMap<String, u64> {
        self.plugin_status()["drops"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The plugin's endpoints held by a container (status entries).
    pub fn plugin_endpoints(&self, c: &Container) -> Vec<Value> {
        let status = self.plugin_status();
        let mut out = Vec::new();
        for n in status["networks"].as_array().into_iter().flatten() {
            for e in n["endpoints"].as_array().into_iter().flatten() {
                if e["container"] == c.name.as_str() {
                    out.push(e.clone());
                }
            }
        }
        out
    }

    /// Waits until every plugin endpoint of the container is open (and it
    /// has `n` of them).
    pub fn wait_open(&self, c: &Container, n: usize) {
        self.wait_for(&format!("{}'s {n} endpoint(s) to open", c.name), |env| {
            let eps = env.plugin_endpoints(c);
            eps.len() == n && eps.iter().all(|e| e["open"] == true)
        });
    }

    /// A container's address on one network.
    pub fn ip_on(&self, c: &Container, network: &str, v6: bool) -> String {
        let field = if v6 { "GlobalIPv6Address" } else { "IPAddress" };
        must(docker().args([
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").{field}}}}}"),
            &c.name,
        ]))
    }
}

impl TestEnv {
    /// A bridge network of Docker's own, `<env>-<suffix>`.
    pub fn bridge_network(&mut self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.name);
        let _ = run(docker().args(["network", "rm", &name]));
        must(
            docker()
                .args(["network", "create", "--label"])
                .arg(format!("{TEST_LABEL}={}", self.name))
                .arg(&name),
        );
        self.networks.push(name.clone());
        name
    }
}
