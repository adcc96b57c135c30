//! The eBPF datapath: the compiled object, its pinned maps, and the pinned
//! cgroup links that attach it to containers.
//!
//! Layout under the pin root (default /sys/fs/bpf/bpfwall_v1, versioned
//! with the ABI):
//!
//! ```text
//! maps/bpfwall_<what>_v1         every map, shared by all links
//! progs/bpfwall_ingress          the programs this daemon loaded (replaced at
//! progs/bpfwall_egress           each start; links keep the ones they hold)
//! links/<name>_<cgroup id>_ingress
//! links/<name>_<cgroup id>_egress
//! ```
//!
//! (bpffs refuses names with a '.', so the parts are joined by '_'.)
//!
//! Links hold the programs in the kernel, so enforcement goes on while no
//! daemon runs; a new daemon reuses the pinned maps and reads the links
//! directory to know what is attached.

pub mod maps;
pub mod pod;
pub mod test_run;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use aya::{Ebpf, EbpfLoader};
use labels_policy::datapath_abi::{self as abi};

/// The compiled datapath object.
pub const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpfwall.o"));

/// The microbenchmark's baseline: a cgroup/skb program that only passes.
pub const EMPTY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_empty.o"));

/// bpffs's magic number (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Why the datapath could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// bpffs could not be mounted.
    #[error("cannot mount bpffs at {path}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The object could not be loaded.
    #[error("cannot load the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is missing from the object or could not be loaded.
    #[error("program {name}")]
    Program {
        /// The program name.
        name: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A program could not be attached to a cgroup.
    #[error("cannot attach {name} to {cgroup}")]
    Attach {
        /// The program name.
        name: &'static str,
        /// The cgroup directory.
        cgroup: PathBuf,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A link could not be turned into a pinnable fd link.
    #[error("link of {name} on {cgroup} is not an fd link")]
    Link {
        /// The program name.
        name: &'static str,
        /// The cgroup directory.
        cgroup: PathBuf,
        /// The cause.
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    /// A link or program could not be pinned.
    #[error("cannot pin at {path}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<aya::pin::PinError>,
    },
    /// A pinned link could not be moved onto this daemon's program.
    #[error("cannot move the link {path} onto {name}")]
    LinkUpdate {
        /// The link's pin.
        path: PathBuf,
        /// The program name.
        name: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A map is missing from the object.
    #[error("map {name} is missing from the object")]
    MissingMap {
        /// The map name.
        name: &'static str,
    },
    /// A map operation failed.
    #[error("map {name}: {op}")]
    Map {
        /// The map name.
        name: &'static str,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DatapathError + 'a {
    move |source| DatapathError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What [`Datapath::update_pinned_links`] did.
#[derive(Debug, Default)]
pub struct LinkUpdateReport {
    /// Links now running this daemon's programs.
    pub updated: usize,
    /// Links whose cgroup is gone (removed by the next reconcile).
    pub defunct: usize,
    /// Links that still run an older program, and why.
    pub failed: Vec<DatapathError>,
}

/// A link pinned for one container and direction, as named on bpffs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkPin {
    /// The owner's name (the container id).
    pub owner: String,
    /// The cgroup id the link is attached to.
    pub cgroup_id: u64,
    /// "ingress" or "egress".
    pub direction: &'static str,
}

impl LinkPin {
    fn file_name(&self) -> String {
        format!("{}_{}_{}", self.owner, self.cgroup_id, self.direction)
    }

    fn parse(name: &str) -> Option<LinkPin> {
        let mut parts = name.rsplitn(3, '_');
        let direction = match parts.next()? {
            "ingress" => "ingress",
            "egress" => "egress",
            _ => return None,
        };
        let cgroup_id = parts.next()?.parse().ok()?;
        let owner = parts.next()?.to_string();
        Some(LinkPin {
            owner,
            cgroup_id,
            direction,
        })
    }
}

/// Makes sure a bpffs is mounted at `mount` (normally /sys/fs/bpf).
pub fn ensure_bpffs(mount: &Path) -> Result<(), DatapathError> {
    std::fs::create_dir_all(mount).map_err(io("create", mount))?;
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

/// The loaded datapath.
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    pin_root: Option<PathBuf>,
}

impl Datapath {
    /// Loads the object. With a pin root, maps are pinned there (or the
    /// ones already pinned are reused) and links can be pinned; without
    /// one, maps are private to this process (for tests).
    pub fn load(pin_root: Option<&Path>) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        let mut map_paths = Vec::new();
        if let Some(root) = pin_root {
            if let Some(parent) = root.parent() {
                ensure_bpffs(parent)?;
            }
            for sub in ["maps", "links", "progs"] {
                let dir = root.join(sub);
                std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
            }
            for name in abi::ALL_MAPS {
                map_paths.push((name, root.join("maps").join(name)));
            }
        }
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        for name in [abi::PROG_INGRESS, abi::PROG_EGRESS] {
            let prog = program(&mut ebpf, name)?;
            prog.load().map_err(|e| DatapathError::Program {
                name,
                source: Box::new(e),
            })?;
            if let Some(root) = pin_root {
                let path = root.join("progs").join(name);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io("replace", &path)(e))
                    }
                    _ => {}
                }
                prog.pin(&path).map_err(|e| DatapathError::Pin {
                    path: path.clone(),
                    source: Box::new(e),
                })?;
            }
        }
        Ok(Datapath {
            ebpf,
            pin_root: pin_root.map(Path::to_path_buf),
        })
    }

    /// The loaded ingress or egress program.
    pub fn program(&mut self, name: &'static str) -> Result<&mut CgroupSkb, DatapathError> {
        program(&mut self.ebpf, name)
    }

    /// The object's maps.
    pub fn maps(&mut self) -> Result<maps::Maps<'_>, DatapathError> {
        maps::Maps::new(&mut self.ebpf)
    }

    fn links_dir(&self) -> Option<PathBuf> {
        self.pin_root.as_ref().map(|r| r.join("links"))
    }

    /// Attaches both programs to a cgroup and pins the links under
    /// `owner`. Without a pin root the links are dropped at once (tests
    /// that need links use a pin root).
    pub fn attach(
        &mut self,
        owner: &str,
        cgroup_dir: &Path,
        cgroup_id: u64,
    ) -> Result<(), DatapathError> {
        let links_dir = self.links_dir();
        for (name, attach_type, direction) in [
            (abi::PROG_INGRESS, CgroupSkbAttachType::Ingress, "ingress"),
            (abi::PROG_EGRESS, CgroupSkbAttachType::Egress, "egress"),
        ] {
            let pin = LinkPin {
                owner: owner.to_string(),
                cgroup_id,
                direction,
            };
            let path = links_dir.as_ref().map(|d| d.join(pin.file_name()));
            if path.as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            let cgroup = File::open(cgroup_dir).map_err(io("open", cgroup_dir))?;
            let prog = self.program(name)?;
            let attach = |source| DatapathError::Attach {
                name,
                cgroup: cgroup_dir.to_path_buf(),
                source: Box::new(source),
            };
            let id = prog
                .attach(&cgroup, attach_type, CgroupAttachMode::Single)
                .map_err(attach)?;
            let link: FdLink = prog.take_link(id).map_err(attach)?.try_into().map_err(
                |e: aya::programs::links::LinkError| DatapathError::Link {
                    name,
                    cgroup: cgroup_dir.to_path_buf(),
                    source: Box::new(e),
                },
            )?;
            if let Some(path) = path {
                link.pin(&path).map_err(|e| DatapathError::Pin {
                    path: path.clone(),
                    source: Box::new(e),
                })?;
            }
        }
        Ok(())
    }

    /// Every link pinned under the pin root.
    pub fn pinned_links(&self) -> Result<Vec<LinkPin>, DatapathError> {
        let Some(dir) = self.links_dir() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let entry = entry.map_err(io("read", &dir))?;
            if let Some(pin) = entry.file_name().to_str().and_then(LinkPin::parse) {
                out.push(pin);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Detaches a link by removing its pin (the kernel drops the link with
    /// its last reference).
    pub fn detach(&self, pin: &LinkPin) -> Result<(), DatapathError> {
        let Some(dir) = self.links_dir() else {
            return Ok(());
        };
        let path = dir.join(pin.file_name());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Moves every pinned link onto the programs this daemon loaded, with
    /// BPF_LINK_UPDATE: the swap is atomic, so no cgroup is ever without a
    /// program, and links an older bpfwall pinned run the current datapath
    /// (which reads the maps the current daemon writes). A link whose cgroup
    /// is gone (its container exited while no daemon ran) is left for the
    /// reconcile to remove; a link that cannot be moved keeps its program
    /// and is reported.
    pub fn update_pinned_links(&mut self) -> Result<LinkUpdateReport, DatapathError> {
        let mut report = LinkUpdateReport::default();
        let Some(dir) = self.links_dir() else {
            return Ok(report);
        };
        for pin in self.pinned_links()? {
            let name = match pin.direction {
                "ingress" => abi::PROG_INGRESS,
                _ => abi::PROG_EGRESS,
            };
            let path = dir.join(pin.file_name());
            let prog = self.program(name)?;
            let prog_fd = prog.fd().map_err(|e| DatapathError::Program {
                name,
                source: Box::new(e),
            })?;
            use std::os::fd::AsFd as _;
            let moved = bpf_syscall::obj_get(&path)
                .and_then(|link| bpf_syscall::link_update(link.as_fd(), prog_fd.as_fd()));
            match moved {
                Ok(()) => report.updated += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => report.defunct += 1,
                Err(source) => report.failed.push(DatapathError::LinkUpdate {
                    path: path.clone(),
                    name,
                    source,
                }),
            }
        }
        Ok(report)
    }

    /// Links grouped by owner.
    pub fn links_by_owner(&self) -> Result<BTreeMap<String, Vec<LinkPin>>, DatapathError> {
        let mut out: BTreeMap<String, Vec<LinkPin>> = BTreeMap::new();
        for pin in self.pinned_links()? {
            out.entry(pin.owner.clone()).or_default().push(pin);
        }
        Ok(out)
    }
}

/// The two bpf(2) commands aya 0.14 does not offer for cgroup links.
mod bpf_syscall {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStrExt as _;
    use std::path::Path;

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 29;

    /// `union bpf_attr` for BPF_OBJ_GET (linux/bpf.h).
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        pad: u32,
    }

    /// `union bpf_attr` for BPF_LINK_UPDATE (linux/bpf.h).
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }

    /// A new fd for a pinned object.
    pub(super) fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
        let c_path = CString::new(path.as_os_str().as_bytes())?;
        let attr = ObjGetAttr {
            pathname: c_path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
            path_fd: 0,
            pad: 0,
        };
        // SAFETY: attr is a fully initialised BPF_OBJ_GET attribute whose
        // pathname points to a NUL-terminated string that outlives the call;
        // the kernel reads size_of::<ObjGetAttr>() bytes of it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                &attr as *const ObjGetAttr,
                std::mem::size_of::<ObjGetAttr>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// Points a link at another program, atomically.
    pub(super) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> std::io::Result<()> {
        let attr = LinkUpdateAttr {
            link_fd: link.as_raw_fd() as u32,
            new_prog_fd: prog.as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        };
        // SAFETY: attr is a fully initialised BPF_LINK_UPDATE attribute; both
        // fds are borrowed for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_UPDATE,
                &attr as *const LinkUpdateAttr,
                std::mem::size_of::<LinkUpdateAttr>(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSkb, DatapathError> {
    let missing = || DatapathError::Program {
        name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    };
    let prog = ebpf.program_mut(name).ok_or_else(missing)?;
    prog.try_into().map_err(|e| DatapathError::Program {
        name,
        source: Box::new(e),
    })
}

/// Removes everything under a pin root: links (detaching them) and maps.
pub fn remove_pins(pin_root: &Path) -> Result<(), DatapathError> {
    match std::fs::remove_dir_all(pin_root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", pin_root)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_round_trip() {
        let pin = LinkPin {
            owner: "0123abcd".into(),
            cgroup_id: 4242,
            direction: "egress",
        };
        assert_eq!(LinkPin::parse(&pin.file_name()), Some(pin));
        assert_eq!(LinkPin::parse("x_12_sideways"), None);
        assert_eq!(LinkPin::parse("x_notanumber_ingress"), None);
    }
}
