//! `bpfwall install-runtime` / `uninstall-runtime`: register bpfwall-runc in
//! /etc/docker/daemon.json (keeping everything already there) and reload
//! dockerd; undo exactly that.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// What an install changed, so the uninstall undoes exactly that.
#[derive(Debug, Serialize, Deserialize)]
struct InstallRecord {
    /// daemon.json did not exist before.
    created_file: bool,
    /// A "runtimes" object did not exist before.
    created_runtimes: bool,
    /// The default runtime was set; what it was before (None: unset).
    previous_default: Option<Option<Value>>,
}

fn record_path(daemon_json: &Path, name: &str) -> PathBuf {
    let dir = daemon_json.parent().unwrap_or(Path::new("/etc/docker"));
    dir.join(format!(".bpfwall-runtime-{name}.json"))
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
    let link = dir.join(crate::runtime_wrapper::WRAPPER_NAME);
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
    let record_file = record_path(&o.daemon_json, &o.name);
    let mut config = existing.clone().unwrap_or_default();
    let had_runtimes = config.contains_key("runtimes");
    let runtimes = config.entry("runtimes").or_insert_with(|| json!({}));
    let runtimes = runtimes.as_object_mut().with_context(|| {
        format!(
            "\"runtimes\" in {} is not an object",
            o.daemon_json.display()
        )
    })?;
    if runtimes.contains_key(&o.name) && !record_file.exists() {
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
    let previous = if record_file.exists() {
        let r: InstallRecord = serde_json::from_slice(&std::fs::read(&record_file)?)?;
        r
    } else {
        InstallRecord {
            created_file: existing.is_none(),
            created_runtimes: !had_runtimes,
            previous_default: None,
        }
    };
    let mut record = previous;
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

/// Removes what `install` added.
pub fn uninstall(name: &str, daemon_json: &Path) -> anyhow::Result<()> {
    let record_file = record_path(daemon_json, name);
    let record: InstallRecord = match std::fs::read(&record_file) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("cannot parse {}", record_file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!(
                "bpfwall did not install a runtime named '{name}' (no {})",
                record_file.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", record_file.display())),
    };
    let mut config = read_config(daemon_json)?.unwrap_or_default();
    if let Some(Value::Object(runtimes)) = config.get_mut("runtimes") {
        runtimes.remove(name);
        if runtimes.is_empty() && record.created_runtimes {
            config.remove("runtimes");
        }
    }
    if config.get("default-runtime") == Some(&json!(name)) {
        match record.previous_default {
            Some(Some(previous)) => {
                config.insert("default-runtime".into(), previous);
            }
            _ => {
                config.remove("default-runtime");
            }
        }
    }
    if record.created_file && config.is_empty() {
        std::fs::remove_file(daemon_json)
            .with_context(|| format!("cannot remove {}", daemon_json.display()))?;
    } else {
        write_atomically(
            daemon_json,
            &serde_json::to_vec_pretty(&Value::Object(config))?,
        )?;
    }
    std::fs::remove_file(&record_file)
        .with_context(|| format!("cannot remove {}", record_file.display()))?;
    Ok(())
}
