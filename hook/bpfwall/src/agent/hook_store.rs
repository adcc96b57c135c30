//! Containers that only the OCI hook reports (podman's, a runc config
//! written by hand): no runtime source lists them, so without a record a
//! restarted daemon would not know them and would remove their links,
//! opening them. Each is saved when the hook reports it, as the hook's
//! request, in `<state dir>/hook-containers/<key>.json` (directory 0700,
//! files 0600, written to a temporary file and renamed; not synced to
//! disk: only a restarted daemon needs it, never a rebooted host), and forgotten
//! when the container is. A starting daemon takes back those whose process
//! still runs and is the same process (pid and start time).

use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use bpfwall_sys::{io_error, IoError};

use crate::api::EnforceRequest;

/// The hook containers' records, one file each.
#[derive(Debug)]
pub struct HookStore {
    dir: PathBuf,
    /// The keys saved now.
    saved: BTreeSet<String>,
}

impl HookStore {
    /// Opens (makes) `<state_dir>/hook-containers`.
    pub fn open(state_dir: &Path) -> Result<HookStore, IoError> {
        let dir = state_dir.join("hook-containers");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_error("create", &dir))?;
        Ok(HookStore {
            dir,
            saved: BTreeSet::new(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Every saved request, by key (a file that cannot be read is logged,
    /// removed and skipped: its container is then unknown, as before).
    pub fn load(&mut self) -> Vec<(String, EnforceRequest)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            let path = entry.path();
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(request) => {
                    self.saved.insert(key.to_string());
                    out.push((key.to_string(), request));
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable hook container record: removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        out
    }

    /// Saves what the hook said of a container.
    pub fn save(&mut self, key: &str, request: &EnforceRequest) -> Result<(), IoError> {
        let path = self.path(key);
        let tmp = self.dir.join(format!(".{key}.tmp"));
        let text = serde_json::to_vec(request).unwrap_or_default();
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // Not synced to disk: the record matters to a daemon that
            // restarts, not to a host that does (its containers do not
            // survive that); a start does not wait for the disk.
            f.write_all(&text)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(io_error("save", &path))?;
        self.saved.insert(key.to_string());
        Ok(())
    }

    /// Forgets the saved containers `keep` does not hold.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.saved.iter().filter(|k| !keep(k)).cloned().collect();
        for key in gone {
            let path = self.path(&key);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a hook container record");
                    continue;
                }
            }
            self.saved.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_requests_come_back_and_go_when_told() {
        let dir = std::env::temp_dir().join(format!("bpfwall-hookstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = HookStore::open(&dir).unwrap();
        let request = EnforceRequest {
            id: "abc".into(),
            name: "podman/web".into(),
            pid: 42,
            labels: [("id".to_string(), "web".to_string())].into(),
            pid_start_time: Some(7),
            image_labels: Default::default(),
            joins: None,
            runtime: Some(crate::runtime::Runtime::Podman),
            namespace: String::new(),
        };
        store.save("podman:abc", &request).unwrap();
        let mut again = HookStore::open(&dir).unwrap();
        let loaded = again.load();
        assert_eq!(loaded, vec![("podman:abc".to_string(), request)]);
        again.retain(|_| false);
        assert!(HookStore::open(&dir).unwrap().load().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
