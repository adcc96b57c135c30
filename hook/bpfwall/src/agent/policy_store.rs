//! The last good version of each policy file, kept on disk so that it
//! survives restarts and upgrades: a file that is broken when the daemon
//! starts keeps the version that was in force before.
//!
//! Each version is one JSON file under `<state dir>/policies/` (the
//! directory mode 0700, the files 0600: policies say what is open), named
//! from the file it came from and holding that file's path, when it was
//! read, and its text. A version is written to a temporary file, synced
//! and renamed over the old one, so a crash leaves the old version or the
//! new one, never a mix. The text is parsed again at start (the same
//! parser as for the file itself).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use bpfwall_sys::{io_error, IoError};
use serde::{Deserialize, Serialize};

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bpfwall";
/// The store's directory under the state directory.
const SUBDIR: &str = "policies";
/// The layout of a saved version; a new layout gets a new number.
const FORMAT: u32 = 1;

/// A saved version, as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedFile {
    /// The layout ([`FORMAT`]).
    format: u32,
    /// The policy file it came from.
    source: PathBuf,
    /// When that version was read (unix seconds).
    read_unix: u64,
    /// Its text.
    content: String,
}

/// A saved version of one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedVersion {
    /// The policy file it came from.
    pub source: PathBuf,
    /// When it was read (unix seconds).
    pub read_unix: u64,
    /// Its text.
    pub content: String,
    /// Where it is saved.
    pub saved_as: PathBuf,
}

/// A saved file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    /// It could not be read.
    #[error(transparent)]
    Io(#[from] IoError),
    /// It is not a saved version of this layout.
    #[error("{} is not a saved policy version (format {FORMAT})", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The saved versions, in one directory.
#[derive(Debug, Clone)]
pub struct PolicyStore {
    dir: PathBuf,
}

impl PolicyStore {
    /// Opens the store under `state_dir`, making both directories if
    /// needed, the store's only root-readable.
    pub fn open(state_dir: &Path) -> Result<PolicyStore, IoError> {
        let dir = state_dir.join(SUBDIR);
        std::fs::create_dir_all(&dir).map_err(io_error("create the directory", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error("chmod 0700", &dir))?;
        Ok(PolicyStore { dir })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the version of `source` is saved: the file's name (readable)
    /// and a hash of its whole path (unique), so files of the same name in
    /// two directories never share a saved version.
    pub fn path_for(&self, source: &Path) -> PathBuf {
        let text = source.to_string_lossy();
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let name: String = source
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(100).collect())
            .unwrap_or_default();
        self.dir.join(format!("{name}.{hash:016x}.json"))
    }

    /// Every saved version of a file directly in `policy_dir`, and the
    /// saved files that could not be used. Err when the store cannot be
    /// listed at all.
    pub fn load(
        &self,
        policy_dir: &Path,
    ) -> Result<(Vec<SavedVersion>, Vec<PolicyStoreError>), IoError> {
        let mut versions = Vec::new();
        let mut problems = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error("list", &self.dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                // A temporary file a crash left: never a version in force.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(io_error("read", &path)(e).into());
                    continue;
                }
            };
            let saved: SavedFile = match serde_json::from_str(&text) {
                Ok(s) => s,
                Err(source) => {
                    problems.push(PolicyStoreError::Decode { path, source });
                    continue;
                }
            };
            if saved.format != FORMAT {
                problems.push(PolicyStoreError::Decode {
                    path,
                    source: serde::de::Error::custom(format!("format {}", saved.format)),
                });
                continue;
            }
            // Versions of another policy directory (the daemon ran with
            // another --policy-dir) stay saved, unused.
            if saved.source.parent() != Some(policy_dir) {
                continue;
            }
            versions.push(SavedVersion {
                source: saved.source,
                read_unix: saved.read_unix,
                content: saved.content,
                saved_as: path,
            });
        }
        versions.sort_by(|a, b| a.source.cmp(&b.source));
        Ok((versions, problems))
    }

    /// Saves the last good version of `source`, atomically.
    pub fn save(&self, source: &Path, read_unix: u64, content: &str) -> Result<PathBuf, IoError> {
        let path = self.path_for(source);
        let tmp = self.dir.join(format!(
            ".{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let text = serde_json::to_string(&SavedFile {
            format: FORMAT,
            source: source.to_path_buf(),
            read_unix,
            content: content.to_string(),
        })
        .map_err(|e| io_error("encode", &path)(std::io::Error::other(e)))?;
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        write().map_err(io_error("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_error("rename into place", &path))?;
        // The rename itself is durable only once the directory is.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync", &self.dir))?;
        Ok(path)
    }

    /// Deletes the saved version of `source` (none saved is fine).
    pub fn remove(&self, source: &Path) -> Result<(), IoError> {
        let path = self.path_for(source);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", &path)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bpfwall-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saves_atomically_root_only_and_loads_per_directory() {
        let state = temp("roundtrip");
        let store = PolicyStore::open(&state).unwrap();
        let a = Path::new("/etc/bpfwall/policies/a.yaml");
        let other = Path::new("/elsewhere/a.yaml");
        let saved = store.save(a, 42, "text of a").unwrap();
        store.save(other, 43, "text of the other a").unwrap();
        assert_ne!(store.path_for(a), store.path_for(other));
        assert!(saved
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("a.yaml."));
        assert_eq!(
            std::fs::metadata(store.dir()).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(std::fs::metadata(&saved).unwrap().mode() & 0o777, 0o600);
        // A crash between write and rename leaves a temporary file: ignored.
        std::fs::write(store.dir().join(".a.yaml.x.json.tmp"), "half").unwrap();
        // A damaged version is reported, naming its file.
        std::fs::write(store.dir().join("b.yaml.0.json"), "{not json").unwrap();

        let (versions, problems) = store.load(Path::new("/etc/bpfwall/policies")).unwrap();
        assert_eq!(
            versions,
            [SavedVersion {
                source: a.to_path_buf(),
                read_unix: 42,
                content: "text of a".into(),
                saved_as: saved.clone(),
            }]
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("b.yaml.0.json"),
            "{}",
            problems[0]
        );
        assert!(!store.dir().join(".a.yaml.x.json.tmp").exists());

        store.save(a, 44, "new text").unwrap();
        let (versions, _) = store.load(Path::new("/etc/bpfwall/policies/")).unwrap();
        assert_eq!(versions[0].content, "new text");
        store.remove(a).unwrap();
        store.remove(a).unwrap();
        let (versions, _) = store.load(Path::new("/etc/bpfwall/policies")).unwrap();
        assert!(versions.is_empty());
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn a_store_that_cannot_be_made_is_an_error_naming_it() {
        let state = temp("blocked");
        std::fs::write(&state, "a file, not a directory").unwrap();
        let e = PolicyStore::open(&state).unwrap_err();
        assert!(e.to_string().contains(&state.display().to_string()), "{e}");
        std::fs::remove_file(&state).unwrap();
    }
}
