//! What the OCI hook reads of a podman container. podman (4.3 here) passes
//! none of a container's `--label`s to the runtime: not in the OCI
//! annotations, not in config.json (it passes only its own
//! `io.podman.annotations.*`). They are in podman's database, a bolt file
//! (`<graph root>/libpod/bolt_state.db`): bucket `ctr`, then the
//! container's id, then `config`, a JSON document whose `labels` are the
//! container's labels (its image's included) and `name` its name. The
//! image's own labels are read from podman's image store
//! (`<graph root>/<driver>-images/<image id>/=<base64 of "sha256:<id>">`,
//! the image's config), so that identities leave them out as for Docker.
//!
//! The hook never runs the podman command: podman holds the container's
//! lock while the runtime creates it, so a `podman inspect` from the hook
//! would wait for itself. The database is read read-only, under bolt's
//! shared lock, which podman takes only for the length of each of its own
//! transactions (none is open while the runtime runs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::boltdb::{BoltError, BoltFile};

/// podman's default graph root (rootful).
pub const DEFAULT_GRAPH_ROOT: &str = "/var/lib/containers/storage";

/// How long the hook waits for a podman transaction to finish.
const DB_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Errors reading podman's store.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    /// The database could not be read.
    #[error("cannot read podman's database")]
    Db(#[from] BoltError),
    /// The container is not in it.
    #[error("podman's database {db} has no container {id}")]
    NoContainer {
        /// The database file.
        db: PathBuf,
        /// The container id.
        id: String,
    },
    /// Its config is not what podman writes.
    #[error("podman's config of container {id} in {db} does not parse")]
    Config {
        /// The database file.
        db: PathBuf,
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Where podman keeps its containers and images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanStore {
    /// The graph root (`--root`; /var/lib/containers/storage).
    pub graph_root: PathBuf,
    /// The database (default `<graph root>/libpod/bolt_state.db`).
    pub db: PathBuf,
}

impl PodmanStore {
    /// The store under a graph root, with its default database.
    pub fn new(graph_root: &Path) -> PodmanStore {
        PodmanStore {
            graph_root: graph_root.to_path_buf(),
            db: graph_root.join("libpod").join("bolt_state.db"),
        }
    }
}

/// What podman knows of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodmanContainer {
    /// Its name.
    pub name: String,
    /// Its labels (its image's included).
    pub labels: BTreeMap<String, String>,
    /// Its image's labels.
    pub image_labels: BTreeMap<String, String>,
}

/// The part of podman's `ContainerConfig` the hook reads.
#[derive(Debug, Deserialize)]
struct Config {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "rootfsImageID")]
    image_id: String,
}

/// An image config (only its labels matter).
#[derive(Debug, Deserialize)]
struct ImageConfig {
    config: Option<ImageConfigInner>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageConfigInner {
    labels: Option<BTreeMap<String, String>>,
}

/// Standard base64 (containers/storage names an image's files by it).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl PodmanStore {
    /// The container `id`'s name, labels and image labels.
    pub fn container(&self, id: &str) -> Result<PodmanContainer, PodmanError> {
        let db = BoltFile::open(&self.db, DB_LOCK_WAIT)?;
        let no_container = || PodmanError::NoContainer {
            db: self.db.clone(),
            id: id.to_string(),
        };
        let config = db
            .root()
            .bucket(b"ctr")?
            .and_then(|ctrs| ctrs.bucket(id.as_bytes()).transpose())
            .transpose()?
            .ok_or_else(no_container)?
            .bytes(b"config")?
            .ok_or_else(no_container)?;
        let config: Config =
            serde_json::from_slice(config).map_err(|source| PodmanError::Config {
                db: self.db.clone(),
                id: id.to_string(),
                source,
            })?;
        Ok(PodmanContainer {
            name: config.name,
            labels: config.labels.unwrap_or_default(),
            image_labels: self.image_labels(&config.image_id),
        })
    }

    /// An image's labels from the image store, under whichever driver
    /// holds it; none when it cannot be found.
    fn image_labels(&self, image_id: &str) -> BTreeMap<String, String> {
        if image_id.is_empty() || !image_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return BTreeMap::new();
        }
        let file = format!("={}", base64(format!("sha256:{image_id}").as_bytes()));
        let Ok(dirs) = std::fs::read_dir(&self.graph_root) else {
            return BTreeMap::new();
        };
        for dir in dirs.flatten() {
            if !dir.file_name().to_string_lossy().ends_with("-images") {
                continue;
            }
            let path = dir.path().join(image_id).join(&file);
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(config) = serde_json::from_slice::<ImageConfig>(&bytes) {
                    return config.config.and_then(|c| c.labels).unwrap_or_default();
                }
            }
        }
        BTreeMap::new()
    }
}

#[cfg(test)]
mod tests {
    use super::super::boltdb::testing::{build, Item};
    use super::*;

    #[test]
    fn base64_as_containers_storage_names_files() {
        assert_eq!(base64(b"sha256:ab"), "c2hhMjU2OmFi");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(
            base64(b"sha256:bd06d27939b554533c467010be568c75c9921e8fa853b90baaea2f5c8a690948"),
            "c2hhMjU2OmJkMDZkMjc5MzliNTU0NTMzYzQ2NzAxMGJlNTY4Yzc1Yzk5MjFlOGZhODUzYjkwYmFhZWEyZjVjOGE2OTA5NDg="
        );
    }

    #[test]
    fn reads_a_containers_labels_from_the_database_and_its_image() {
        let dir = std::env::temp_dir().join(format!("bpfwall-podman-{}", std::process::id()));
        let image = "ab".repeat(32);
        let images = dir.join("overlay-images").join(&image);
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(dir.join("libpod")).unwrap();
        std::fs::write(
            images.join(format!("={}", base64(format!("sha256:{image}").as_bytes()))),
            r#"{"config":{"Labels":{"from":"image"}}}"#,
        )
        .unwrap();
        let config = format!(
            r#"{{"id":"c1","name":"pod-web","labels":{{"id":"web","from":"image"}},"rootfsImageID":"{image}"}}"#
        );
        let data = build(&[(
            b"ctr".to_vec(),
            Item::Bucket {
                inline: false,
                items: vec![(
                    b"c1".to_vec(),
                    Item::Bucket {
                        inline: true,
                        items: vec![(b"config".to_vec(), Item::Bytes(config.into_bytes()))],
                    },
                )],
            },
        )]);
        std::fs::write(dir.join("libpod/bolt_state.db"), data).unwrap();
        let store = PodmanStore::new(&dir);
        let c = store.container("c1").unwrap();
        assert_eq!(c.name, "pod-web");
        assert_eq!(c.labels["id"], "web");
        assert_eq!(c.image_labels["from"], "image");
        let e = store.container("c2").unwrap_err();
        assert!(e.to_string().contains("has no container c2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
