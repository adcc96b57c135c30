//! containerd and podman: a containerd of the test's own and ctr containers; podman, rootful.

use super::*;

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
    /// Whether podman's default bridge (`cni-podman0`) was there before
    /// the test: podman makes it on first use and leaves it.
    bridge_was_there: bool,
    /// Whether podman had the test image before the test loaded it.
    image_was_there: bool,
}

/// podman's default network's bridge on these machines (CNI).
const PODMAN_BRIDGE: &str = "cni-podman0";

fn link_exists(name: &str) -> bool {
    run(Command::new("ip").args(["link", "show", name]))
        .status
        .success()
}

impl Podman {
    /// Loads the test image into podman; `hooks_dir` is the directory its
    /// commands read hooks from (it need not exist).
    pub fn new(name: &str, hooks_dir: &Path) -> Podman {
        let p = Podman {
            name: name.to_string(),
            hooks_dir: hooks_dir.to_path_buf(),
            bridge_was_there: link_exists(PODMAN_BRIDGE),
            image_was_there: run(Command::new("podman")
                .args(["image", "exists"])
                .arg(podman_image()))
            .status
            .success(),
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
        if !self.image_was_there {
            let _ = run(Command::new("podman")
                .args(["rmi", "-f"])
                .arg(podman_image()));
        }
        // The bridge podman made for this test goes once no container of
        // podman's is left on it.
        let others = run(self.cmd().args(["ps", "-aq"]));
        if !self.bridge_was_there
            && link_exists(PODMAN_BRIDGE)
            && String::from_utf8_lossy(&others.stdout).trim().is_empty()
        {
            let _ = run(Command::new("ip").args(["link", "del", PODMAN_BRIDGE]));
        }
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
