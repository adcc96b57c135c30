//! Finding a process's cgroup v2 directory and id.
//!
//! The cgroup v2 mount point comes from /proc/self/mountinfo and the
//! process's path from the `0::` line of /proc/PID/cgroup, so hybrid hosts
//! (v2 at /sys/fs/cgroup/unified) and pure v2 hosts (systemd driver) work
//! alike. Nothing here assumes a fixed path.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{io_error, IoError};

/// Why a cgroup could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] IoError),
    /// No cgroup2 file system is mounted.
    #[error("no cgroup2 file system is mounted (looked in {path}); bpfwall needs cgroup v2, alone or beside v1")]
    NoCgroup2Mount {
        /// The mountinfo file read.
        path: PathBuf,
    },
    /// The process is in no cgroup v2 (no `0::` line).
    #[error("{path} has no cgroup v2 ('0::') line")]
    NoUnifiedLine {
        /// The cgroup file read.
        path: PathBuf,
    },
}

/// Reads the cgroup2 mount point of this mount namespace.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = PathBuf::from("/proc/self/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
    parse_cgroup2_mount(&text).ok_or(CgroupError::NoCgroup2Mount { path })
}

/// The mount point of the first cgroup2 entry of a mountinfo text.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // fields: id parent major:minor root mountpoint options... - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mountpoint = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mountpoint)))
    })
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(n as char);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// The cgroup v2 path (relative to the mount) in a /proc/PID/cgroup text.
pub fn parse_unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// A process's cgroup v2 directory.
pub fn cgroup_dir_of_pid(mount: &Path, pid: u32) -> Result<PathBuf, CgroupError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
    let rel = parse_unified_path(&text).ok_or(CgroupError::NoUnifiedLine { path })?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// A cgroup's id: the inode number of its cgroup2 directory, which is what
/// `bpf_skb_cgroup_id()` returns.
pub fn cgroup_id(dir: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|e| io_error("read", dir)(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_pure_v2_mounts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      42 31 0:39 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
        let escaped = "41 31 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/cg two"))
        );
    }

    #[test]
    fn reads_the_unified_line() {
        let hybrid = "9:name=systemd:/docker/abc\n1:cpu:/docker/abc\n0::/docker/abc\n";
        assert_eq!(parse_unified_path(hybrid), Some("/docker/abc"));
        let systemd = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            parse_unified_path(systemd),
            Some("/system.slice/docker-abc.scope")
        );
        assert_eq!(parse_unified_path("1:cpu:/x\n"), None);
    }

    #[test]
    fn own_cgroup_resolves() {
        let mount = cgroup2_mount().unwrap();
        let dir = cgroup_dir_of_pid(&mount, std::process::id()).unwrap();
        assert!(dir.is_dir(), "{}", dir.display());
        assert!(cgroup_id(&dir).unwrap() > 0);
    }
}
