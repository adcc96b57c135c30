//! `bpfwall install-hook --podman` and `uninstall-hook --podman`: an OCI
//! hooks.d file (the format podman and CRI-O read, `oci-hooks(5)`) that
//! runs `bpfwall oci-hook --podman` at the createRuntime stage of every
//! container, so it is policed before its first instruction and refused
//! when it cannot be (the hook's exit fails the start).
//!
//! Install writes `<hooks dir>/<name>.json` atomically; it refuses to
//! replace a file it did not write. When it had to make the hooks
//! directory, it says so in `<hooks dir>/.<name>.bpfwall-record` (podman
//! reads only `*.json`). Uninstall removes exactly that: the file, and the
//! directory when the install made it and it is empty again.

use std::path::{Path, PathBuf};

use bpfwall_sys::{io_error, IoError};
use serde_json::{json, Value};

/// podman's hooks directory for the administrator (it also reads
/// /usr/share/containers/oci/hooks.d, the distribution's).
pub const DEFAULT_HOOKS_DIR: &str = "/etc/containers/oci/hooks.d";

/// Errors installing or removing the hook file.
#[derive(Debug, thiserror::Error)]
pub enum HooksDirError {
    /// A file could not be read, written or removed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The file is there and is not ours.
    #[error("{path} exists and was not written by bpfwall: refusing to replace or remove it")]
    NotOurs {
        /// The file.
        path: PathBuf,
    },
}

/// What the hook file says.
#[derive(Debug, Clone)]
pub struct HookFile {
    /// The hooks directory.
    pub dir: PathBuf,
    /// The file's name without `.json`.
    pub name: String,
    /// The bpfwall binary the hook runs.
    pub exe: PathBuf,
    /// The daemon's API socket.
    pub socket: PathBuf,
    /// podman's graph root (its database and images).
    pub podman_root: PathBuf,
    /// Let containers start when the hook cannot enforce.
    pub fail_open: bool,
}

impl HookFile {
    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.name))
    }

    fn record(&self) -> PathBuf {
        self.dir.join(format!(".{}.bpfwall-record", self.name))
    }

    /// The file's JSON.
    pub fn contents(&self) -> Value {
        let mut args = vec![
            "bpfwall".to_string(),
            "oci-hook".to_string(),
            "--socket".to_string(),
            self.socket.display().to_string(),
            "--podman".to_string(),
            "--podman-root".to_string(),
            self.podman_root.display().to_string(),
        ];
        if self.fail_open {
            args.push("--fail-open".to_string());
        }
        json!({
            "version": "1.0.0",
            "hook": { "path": self.exe.display().to_string(), "args": args, "timeout": 30 },
            "when": { "always": true },
            "stages": ["createRuntime"],
        })
    }
}

/// Is the file at `path` one bpfwall wrote (a hook running `oci-hook`)?
fn ours(path: &Path) -> Result<Option<bool>, IoError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice::<Value>(&bytes)
                .ok()
                .is_some_and(|v| v["hook"]["args"].get(1) == Some(&json!("oci-hook"))),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

/// Writes the hook file (replacing an older one of ours).
pub fn install(hook: &HookFile) -> Result<PathBuf, HooksDirError> {
    let path = hook.path();
    if ours(&path)? == Some(false) {
        return Err(HooksDirError::NotOurs { path });
    }
    if !hook.dir.exists() {
        std::fs::create_dir_all(&hook.dir).map_err(io_error("create", &hook.dir))?;
        std::fs::write(hook.record(), b"{\"made_dir\":true}\n")
            .map_err(io_error("write", &hook.record()))?;
    }
    let tmp = hook.dir.join(format!(".{}.json.tmp", hook.name));
    let text = serde_json::to_vec_pretty(&hook.contents()).unwrap_or_default();
    std::fs::write(&tmp, text).map_err(io_error("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error("replace", &path))?;
    Ok(path)
}

/// Removes the hook file (and the directory, if install made it and it is
/// empty). Returns what was removed; nothing when there was nothing.
pub fn uninstall(dir: &Path, name: &str) -> Result<Vec<PathBuf>, HooksDirError> {
    let hook = HookFile {
        dir: dir.to_path_buf(),
        name: name.to_string(),
        exe: PathBuf::new(),
        socket: PathBuf::new(),
        podman_root: PathBuf::new(),
        fail_open: false,
    };
    let path = hook.path();
    let mut removed = Vec::new();
    match ours(&path)? {
        Some(false) => return Err(HooksDirError::NotOurs { path }),
        Some(true) => {
            std::fs::remove_file(&path).map_err(io_error("remove", &path))?;
            removed.push(path);
        }
        None => {}
    }
    let record = hook.record();
    if record.exists() {
        std::fs::remove_file(&record).map_err(io_error("remove", &record))?;
        // Only when it is empty: anything else in it is someone else's.
        if std::fs::remove_dir(dir).is_ok() {
            removed.push(dir.to_path_buf());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(dir: &Path) -> HookFile {
        HookFile {
            dir: dir.to_path_buf(),
            name: "bpfwall".into(),
            exe: "/usr/local/bin/bpfwall".into(),
            socket: "/run/bpfwall/bpfwall.sock".into(),
            podman_root: "/var/lib/containers/storage".into(),
            fail_open: false,
        }
    }

    #[test]
    fn install_then_uninstall_leaves_what_was_there() {
        let base = std::env::temp_dir().join(format!("bpfwall-hooksd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        // A directory the install makes: gone again after.
        let made = base.join("made/hooks.d");
        let path = install(&hook(&made)).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["stages"], json!(["createRuntime"]));
        assert_eq!(v["hook"]["args"][4], "--podman");
        install(&hook(&made)).unwrap();
        uninstall(&made, "bpfwall").unwrap();
        assert!(!made.exists());

        // A directory that was there, with someone else's hook: both stay.
        let there = base.join("there");
        std::fs::create_dir_all(&there).unwrap();
        std::fs::write(there.join("other.json"), "{}").unwrap();
        install(&hook(&there)).unwrap();
        uninstall(&there, "bpfwall").unwrap();
        let left: Vec<_> = std::fs::read_dir(&there)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("other.json")]);

        // A file of the same name that is not ours is never touched.
        std::fs::write(
            there.join("bpfwall.json"),
            "{\"hook\":{\"args\":[\"x\",\"y\"]}}",
        )
        .unwrap();
        assert!(matches!(
            install(&hook(&there)),
            Err(HooksDirError::NotOurs { .. })
        ));
        assert!(matches!(
            uninstall(&there, "bpfwall"),
            Err(HooksDirError::NotOurs { .. })
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
