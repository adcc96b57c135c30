//! dockerd itself, stopped and started as it ran (the dockerd-restart tests only).

use super::*;

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
