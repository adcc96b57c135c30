//! The driver's networks and endpoints, saved in the daemon's state
//! directory after every change (`<state dir>/network-plugin/<name>.json`,
//! directory 0700, file 0600; written to a temporary file, synced and
//! renamed into place), so a restarted daemon knows what Docker asked for:
//! Docker never asks twice.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bpfwall_sys::{io_error, IoError};
use serde::{Deserialize, Serialize};

use crate::network::{EndpointRecord, NetworkRecord};

/// Why the state could not be read or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The saved file does not parse.
    #[error("the saved network plugin state {} does not parse", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// What is saved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Networks by Docker id.
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Endpoints by Docker id.
    pub endpoints: BTreeMap<String, EndpointRecord>,
}

/// Where the state is saved.
#[derive(Debug, Clone)]
pub struct StateStore {
    file: PathBuf,
}

impl StateStore {
    /// The store of plugin `name` under a state directory (made if missing,
    /// mode 0700).
    pub fn open(state_dir: &Path, name: &str) -> Result<Self, StoreError> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = state_dir.join("network-plugin");
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error("chmod", &dir))?;
        Ok(StateStore {
            file: dir.join(format!("{name}.json")),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The saved state (empty when none was saved).
    pub fn load(&self) -> Result<State, StoreError> {
        match std::fs::read(&self.file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
                path: self.file.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io_error("read", &self.file)(e).into()),
        }
    }

    /// Saves the state atomically.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = self.file.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(state).map_err(|source| StoreError::Parse {
            path: self.file.clone(),
            source,
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        f.write_all(&text).map_err(io_error("write", &tmp))?;
        f.sync_all().map_err(io_error("sync", &tmp))?;
        std::fs::rename(&tmp, &self.file).map_err(io_error("rename into place", &self.file))?;
        Ok(())
    }
}
