//! `bpfwall install-runtime` / `uninstall-runtime`: register bpfwall-runc in
//! /etc/docker/daemon.json (keeping everything already there) and reload
//! dockerd; undo exactly that.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Everything bpfwall's installs changed in one daemon.json, so that
/// uninstalls, in any order, undo exactly that: the last one restores what
/// was there before the first install.
#[derive(Debug, Serialize, Deserialize)]
struct InstallRecord {
    /// daemon.json did not exist before the first install.
    created_file: bool,
    /// A "runtimes" object did not exist before the first install.
    created_runtimes: bool,
    /// The default runtime before bpfwall set it (Some(None): it was unset).
    previous_default: Option<Option<Value>>,
    /// The runtimes bpfwall registered.
    names: Vec<String>,
}

fn record_path(daemon_json: &Path) -> PathBuf {
    let dir = daemon_json.parent().unwrap_or(Path::new("/etc/docker"));
    dir.join(".bpfwall-runtimes.json")
}

fn read_config(path: &Path) -> anyhow::Result<Option<Map<String, Value>>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Some(Map::new())),
        Ok(bytes) => {
            let v: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            match v {
                Value::Object(m) => Ok(Some(m)),
                _ => anyhow::bail!("{} is not a JSON object", path.display()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.bpfwall-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Sends SIGHUP to dockerd so it rereads daemon.json.
pub fn reload_dockerd(pid_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("cannot read {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", pid_file.display()))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("cannot signal dockerd (pid {pid})"))
}

/// The wrapper's path: a `bpfwall-runc` link beside this binary.
pub fn ensure_wrapper_link() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the bpfwall binary")?;
    let dir = exe
        .parent()
        .context("the bpfwall binary has no directory")?;
    let link = dir.join(super::runc_wrapper::WRAPPER_NAME);
    if std::fs::read_link(&link).ok().as_deref() != Some(exe.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
    }
    Ok(link)
}

/// Options of an install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The runtime's name in Docker (`docker run --runtime NAME`).
    pub name: String,
    /// Make it Docker's default runtime.
    pub default: bool,
    /// The daemon socket the hook talks to.
    pub socket: PathBuf,
    /// Let containers start when the daemon is unreachable or refuses.
    pub fail_open: bool,
    /// daemon.json.
    pub daemon_json: PathBuf,
}

/// Registers the runtime. Refuses to overwrite a runtime of that name it did
/// not install.
pub fn install(o: &InstallOptions) -> anyhow::Result<()> {
    let wrapper = ensure_wrapper_link()?;
    let existing = read_config(&o.daemon_json)?;
    let record_file = record_path(&o.daemon_json);
    let mut record: InstallRecord = match std::fs::read(&record_file) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("cannot parse {}", record_file.display()))?,
        Err(_) => InstallRecord {
            created_file: existing.is_none(),
            created_runtimes: !existing
                .as_ref()
                .is_some_and(|c| c.contains_key("runtimes")),
            previous_default: None,
            names: Vec::new(),
        },
    };
    let mut config = existing.clone().unwrap_or_default();
    let runtimes = config.entry("runtimes").or_insert_with(|| json!({}));
    let runtimes = runtimes.as_object_mut().with_context(|| {
        format!(
            "\"runtimes\" in {} is not an object",
            o.daemon_json.display()
        )
    })?;
    if runtimes.contains_key(&o.name) && !record.names.contains(&o.name) {
        anyhow::bail!(
            "{} already has a runtime named '{}' that bpfwall did not install",
            o.daemon_json.display(),
            o.name
        );
    }
    let mut args = vec![format!("--bpfwall-socket={}", o.socket.display())];
    if o.fail_open {
        args.push("--bpfwall-fail-open".into());
    }
    runtimes.insert(
        o.name.clone(),
        json!({ "path": wrapper.display().to_string(), "runtimeArgs": args }),
    );
    if !record.names.contains(&o.name) {
        record.names.push(o.name.clone());
    }
    if o.default {
        if record.previous_default.is_none() {
            record.previous_default = Some(config.get("default-runtime").cloned());
        }
        config.insert("default-runtime".into(), json!(o.name));
    }
    if let Some(dir) = o.daemon_json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomically(&record_file, &serde_json::to_vec_pretty(&record)?)?;
    write_atomically(
        &o.daemon_json,
        &serde_json::to_vec_pretty(&Value::Object(config))?,
    )?;
    Ok(())
}

/// What `uninstall` leaves for after dockerd has reloaded.
#[derive(Debug)]
pub struct PendingRestore {
    daemon_json: PathBuf,
    /// The file's final content; None to delete it.
    final_config: Option<Map<String, Value>>,
}

/// Removes what `install` added for `name`, in two steps, because dockerd
/// applies only the keys present in daemon.json: this writes explicit
/// values for dockerd to reload (`runtimes` without ours, `default-runtime`
/// back to what it was, or runc); after the reload, [`finish_uninstall`]
/// gives the file back its original shape (dropping what the first install
/// created, the file itself included).
pub fn uninstall(name: &str, daemon_json: &Path) -> anyhow::Result<PendingRestore> {
    let record_file = record_path(daemon_json);
    let mut record: InstallRecord = match std::fs::read(&record_file) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("cannot parse {}", record_file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!(
                "bpfwall installed no runtime in {} (no {})",
                daemon_json.display(),
                record_file.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", record_file.display())),
    };
    if !record.names.iter().any(|n| n == name) {
        anyhow::bail!(
            "bpfwall did not install a runtime named '{name}' in {}",
            daemon_json.display()
        );
    }
    record.names.retain(|n| n != name);
    let last = record.names.is_empty();
    let mut config = read_config(daemon_json)?.unwrap_or_default();
    if let Some(Value::Object(runtimes)) = config.get_mut("runtimes") {
        runtimes.remove(name);
    }
    let mut final_config = config.clone();
    if config.get("default-runtime") == Some(&json!(name)) {
        match record.previous_default.take() {
            Some(Some(previous)) => {
                config.insert("default-runtime".into(), previous.clone());
                final_config.insert("default-runtime".into(), previous);
            }
            _ => {
                config.insert("default-runtime".into(), json!("runc"));
                final_config.remove("default-runtime");
            }
        }
    }
    if last
        && record.created_runtimes
        && final_config
            .get("runtimes")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        final_config.remove("runtimes");
    }
    write_atomically(
        daemon_json,
        &serde_json::to_vec_pretty(&Value::Object(config))?,
    )?;
    if last {
        std::fs::remove_file(&record_file)
            .with_context(|| format!("cannot remove {}", record_file.display()))?;
    } else {
        write_atomically(&record_file, &serde_json::to_vec_pretty(&record)?)?;
    }
    Ok(PendingRestore {
        daemon_json: daemon_json.to_path_buf(),
        final_config: if last && record.created_file && final_config.is_empty() {
            None
        } else {
            Some(final_config)
        },
    })
}

/// The second step of an uninstall, once dockerd has reloaded.
pub fn finish_uninstall(pending: PendingRestore) -> anyhow::Result<()> {
    match pending.final_config {
        None => std::fs::remove_file(&pending.daemon_json)
            .with_context(|| format!("cannot remove {}", pending.daemon_json.display())),
        Some(config) => write_atomically(
            &pending.daemon_json,
            &serde_json::to_vec_pretty(&Value::Object(config))?,
        ),
    }
}

/// Waits (up to 10 s) until dockerd lists, or no longer lists, a runtime.
pub async fn wait_for_runtime(
    docker_socket: &str,
    name: &str,
    present: bool,
) -> anyhow::Result<()> {
    let docker =
        bollard::Docker::connect_with_unix(docker_socket, 10, bollard::API_DEFAULT_VERSION)
            .context("cannot connect to dockerd")?
            .negotiate_version()
            .await
            .context("cannot reach dockerd")?;
    for _ in 0..100 {
        let info = docker.info().await.context("docker info failed")?;
        if info.runtimes.unwrap_or_default().contains_key(name) == present {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "dockerd did not {} runtime '{name}' within 10 s",
        if present { "register" } else { "drop" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, name: &str, default: bool) -> InstallOptions {
        InstallOptions {
            name: name.into(),
            default,
            socket: "/s".into(),
            fail_open: false,
            daemon_json: dir.join("daemon.json"),
        }
    }

    #[test]
    fn uninstalls_in_any_order_restore_the_original() {
        let dir = std::env::temp_dir().join(format!("bpfwall-daemon-json-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("daemon.json");
        // No file at first: the last uninstall removes it again.
        install(&opts(&dir, "a", false)).unwrap();
        install(&opts(&dir, "b", true)).unwrap();
        finish_uninstall(uninstall("a", &file).unwrap()).unwrap();
        assert!(file.exists());
        let pending = uninstall("b", &file).unwrap();
        // What dockerd reloads: explicit values, so it drops the runtime and the default.
        let reload: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(
            reload,
            serde_json::json!({"runtimes": {}, "default-runtime": "runc"})
        );
        finish_uninstall(pending).unwrap();
        assert!(!file.exists() && !record_path(&file).exists());
        // An existing file keeps every key it had, including its default runtime.
        let original =
            r#"{"log-level":"warn","default-runtime":"runc","runtimes":{"kata":{"path":"/k"}}}"#;
        std::fs::write(&file, original).unwrap();
        install(&opts(&dir, "a", true)).unwrap();
        let during: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(during["default-runtime"], "a");
        assert_eq!(during["runtimes"]["kata"]["path"], "/k");
        assert!(
            install(&opts(&dir, "kata", false)).is_err(),
            "a runtime bpfwall did not install is never overwritten"
        );
        finish_uninstall(uninstall("a", &file).unwrap()).unwrap();
        let after: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(after, serde_json::from_str::<Value>(original).unwrap());
        assert!(uninstall("a", &file).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
