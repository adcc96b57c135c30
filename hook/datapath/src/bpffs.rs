//! The bpf file system and the pin root's layout.

use std::path::{Path, PathBuf};

use bpfwall_sys::io_error;

use crate::DatapathError;

/// bpffs's magic number (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where a daemon pins what it loads (see the crate docs for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRoot(PathBuf);

impl PinRoot {
    /// A pin root at `path` (nothing is created yet).
    pub fn new(path: &Path) -> Self {
        PinRoot(path.to_path_buf())
    }

    /// The root itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `maps/`.
    pub fn maps(&self) -> PathBuf {
        self.0.join("maps")
    }

    /// `links/`.
    pub fn links(&self) -> PathBuf {
        self.0.join("links")
    }

    /// `progs/`.
    pub fn progs(&self) -> PathBuf {
        self.0.join("progs")
    }

    /// Mounts bpffs on the parent if needed and creates the directories.
    pub fn create(&self) -> Result<(), DatapathError> {
        if let Some(parent) = self.0.parent() {
            ensure_bpffs(parent)?;
        }
        for dir in [self.maps(), self.links(), self.progs()] {
            std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        }
        Ok(())
    }
}

/// Makes sure a bpffs is mounted at `mount` (normally /sys/fs/bpf).
pub fn ensure_bpffs(mount: &Path) -> Result<(), DatapathError> {
    std::fs::create_dir_all(mount).map_err(io_error("create", mount))?;
    let fs = nix::sys::statfs::statfs(mount).map_err(|e| DatapathError::Mount {
        path: mount.to_path_buf(),
        source: e,
    })?;
    if fs.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    tracing::info!(path = %mount.display(), "mounting bpffs");
    nix::mount::mount(
        Some("bpf"),
        mount,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| DatapathError::Mount {
        path: mount.to_path_buf(),
        source: e,
    })
}

/// Removes everything under a pin root: links (detaching them) and maps.
pub fn remove_pins(pin_root: &Path) -> Result<(), DatapathError> {
    match std::fs::remove_dir_all(pin_root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error("remove", pin_root)(e).into())
        }
        _ => Ok(()),
    }
}
