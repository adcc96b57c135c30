//! One daemon per pin root. Two daemons on one pin root would write the
//! same maps from two views of the host, move each other's links, and the
//! second would unlink the first one's API socket; so a daemon takes an
//! exclusive `flock` on a lock file named from its pin root before it
//! touches the pins or the socket, and holds it until it exits. The file
//! holds the holder's pid, so the second daemon's error can name it.
//!
//! The lock file is never removed: removing it would let a daemon that
//! opened the old file and one that creates a new one both hold "the" lock.
//! The kernel drops the lock when its holder exits, however it exits.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use bpfwall_sys::{io_error, IoError};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Where the lock files live.
pub const LOCK_DIR: &str = "/run/bpfwall";

/// Why the daemon cannot have its pin root.
#[derive(Debug, thiserror::Error)]
pub enum InstanceLockError {
    /// Another daemon holds the pin root.
    #[error(
        "another bpfwall daemon ({}) already runs on the pin root {}: it holds the lock {}; stop it first",
        holder.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}")),
        pin_root.display(),
        lock_file.display()
    )]
    Held {
        /// The pin root asked for.
        pin_root: PathBuf,
        /// The lock file.
        lock_file: PathBuf,
        /// The pid written by the holder (None if it could not be read).
        holder: Option<u32>,
    },
    /// The lock file could not be made, opened, locked or written.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The exclusive hold of one pin root, for as long as this value lives.
#[derive(Debug)]
pub struct InstanceLock {
    path: PathBuf,
    _file: Flock<File>,
}

impl InstanceLock {
    /// Takes the pin root's lock in `lock_dir`, or says who holds it.
    /// Never waits.
    pub fn acquire(lock_dir: &Path, pin_root: &Path) -> Result<InstanceLock, InstanceLockError> {
        std::fs::create_dir_all(lock_dir).map_err(io_error("create the directory", lock_dir))?;
        let path = lock_dir.join(lock_file_name(pin_root));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_error("open the lock file", &path))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.lines().next()?.trim().parse().ok());
                return Err(InstanceLockError::Held {
                    pin_root: pin_root.to_path_buf(),
                    lock_file: path,
                    holder,
                });
            }
            Err((_, errno)) => {
                return Err(io_error("lock", &path)(std::io::Error::from(errno)).into());
            }
        };
        // Ours now: say who holds it (and for which pin root, for people).
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}\n{}", std::process::id(), pin_root.display())?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
        };
        write(&mut file).map_err(io_error("write the lock file", &path))?;
        Ok(InstanceLock { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file's name for a pin root: the path made absolute and
/// normal (so `/sys/fs/bpf//x/` and `/sys/fs/bpf/x` share one lock), with
/// `%` and `/` escaped, so different roots never share a name.
pub fn lock_file_name(pin_root: &Path) -> String {
    let absolute = if pin_root.is_absolute() {
        pin_root.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(pin_root)
    };
    let mut parts: Vec<String> = Vec::new();
    for c in absolute.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().replace('%', "%25")),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let name = format!("pins%2F{}.lock", parts.join("%2F"));
    if name.len() <= 200 {
        name
    } else {
        // Too long for a file name: a stable hash of it (FNV-1a, 64 bits).
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("pins-{hash:016x}.lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_per_pin_root() {
        assert_eq!(
            lock_file_name(Path::new("/sys/fs/bpf/bpfwall_v1")),
            "pins%2Fsys%2Ffs%2Fbpf%2Fbpfwall_v1.lock"
        );
        assert_eq!(
            lock_file_name(Path::new("/sys/fs/bpf//bpfwall_v1/")),
            lock_file_name(Path::new("/sys/fs/bpf/./x/../bpfwall_v1"))
        );
        assert_ne!(
            lock_file_name(Path::new("/a/b%2Fc")),
            lock_file_name(Path::new("/a/b/c"))
        );
        let long = format!("/{}", "x".repeat(300));
        assert!(lock_file_name(Path::new(&long)).len() < 40);
    }

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = std::env::temp_dir().join(format!("bpfwall-lock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = Path::new("/sys/fs/bpf/bpfwall_v1_lock_test");
        let first = InstanceLock::acquire(&dir, root).unwrap();
        let second = InstanceLock::acquire(&dir, root).unwrap_err();
        let text = second.to_string();
        assert!(
            matches!(second, InstanceLockError::Held { holder: Some(pid), .. } if pid == std::process::id()),
            "{text}"
        );
        assert!(
            text.contains(&format!("pid {}", std::process::id()))
                && text.contains("/sys/fs/bpf/bpfwall_v1_lock_test")
                && text.contains(&first.path().display().to_string()),
            "{text}"
        );
        // Another pin root is another lock.
        let other = InstanceLock::acquire(&dir, Path::new("/sys/fs/bpf/other")).unwrap();
        drop(first);
        let again = InstanceLock::acquire(&dir, root).unwrap();
        drop((again, other));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
