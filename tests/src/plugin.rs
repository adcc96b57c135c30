//! The Docker network plugin: a daemon serving it, a world namespace behind the host's routing, Docker's own bridges.

use super::*;

// ---- The Docker network plugin (issue 12) --------------------------------

impl TestEnv {
    /// A test daemon serves no network plugin unless its test asks for one
    /// (`--network-plugin NAME` in its daemon arguments): two daemons
    /// cannot serve one plugin socket.
    pub(crate) fn network_plugin_args(&self) -> Vec<String> {
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
        // A `--rm` client may still be on its way out (Docker removes it
        // on its own, and needs the plugin for that): until it is gone the
        // network has an active endpoint and cannot be removed, and once
        // the daemon is killed its endpoint would stay in Docker for good.
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in std::mem::take(&mut self.env.networks) {
            loop {
                self.env.remove_containers();
                let out = run(docker().args(["network", "rm", &n]));
                let gone = out.status.success()
                    || String::from_utf8_lossy(&out.stderr).contains("not found");
                if gone || Instant::now() > deadline {
                    if !gone {
                        eprintln!(
                            "network {n} not removed: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
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
