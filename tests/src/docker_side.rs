//! What a test changes in Docker's set-up: a proxy in front of dockerd's socket, runtimes in daemon.json, and the daemon's lifecycle (restarts, the pin root lock).

use super::*;

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
        let mut child = self
            .daemon_command()
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
