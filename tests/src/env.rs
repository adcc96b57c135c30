//! The test environment: one daemon of the test's own and what it made (containers, networks, namespaces), the checks that a block was bpfwall's.

use super::*;

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
    pub(crate) log: PathBuf,
    pub(crate) docker_socket: Option<PathBuf>,
    pub(crate) daemon_args: Vec<String>,
    pub(crate) daemon: Option<Child>,
    pub(crate) networks: Vec<String>,
    pub(crate) netns: Vec<String>,
    pub(crate) links: Vec<String>,
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

    /// `bpfwall daemon` with this env's pin root, socket, label, policy
    /// and state directories and its own arguments.
    pub(crate) fn daemon_command(&self) -> Command {
        let mut cmd = Command::new(bpfwall_bin());
        cmd.args(["daemon", "--bpffs-root"])
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
            .args(&self.daemon_args);
        cmd
    }

    pub(crate) fn build(name: &str, docker_socket: Option<&Path>, daemon_args: &[&str]) -> TestEnv {
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
        let mut cmd = self.daemon_command();
        if let Some(sock) = &self.docker_socket {
            cmd.arg("--docker-socket").arg(sock);
        }
        let child = cmd
            .arg("-v")
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

    pub(crate) fn remove_containers(&self) {
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
