//! The cgroup links that attach the programs to containers, pinned under
//! `links/` of the pin root so they outlive the daemon.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSkbAttachType};
use bpfwall_sys::io_error;
use labels_policy::datapath_abi as abi;
use labels_policy::Direction;

use crate::{DatapathError, KernelDatapath};

/// A link pinned for one container and direction, as named on bpffs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkPin {
    /// The owner's name (the container id).
    pub owner: String,
    /// The cgroup id the link is attached to.
    pub cgroup_id: u64,
    /// The direction of the program it holds.
    pub direction: Direction,
}

impl LinkPin {
    /// The pin's file name: `<owner>_<cgroup id>_<direction>`.
    pub fn file_name(&self) -> String {
        format!("{}_{}_{}", self.owner, self.cgroup_id, self.direction)
    }

    /// Reads a pin's file name back; None for anything else.
    pub fn parse(name: &str) -> Option<LinkPin> {
        let mut parts = name.rsplitn(3, '_');
        let direction = match parts.next()? {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
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

    /// The program a link of this direction holds.
    pub fn program(&self) -> &'static str {
        program_of(self.direction)
    }
}

fn program_of(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => abi::PROG_INGRESS,
        Direction::Egress => abi::PROG_EGRESS,
    }
}

/// What [`KernelDatapath::update_pinned_links`] did.
#[derive(Debug, Default)]
pub struct LinkUpdateReport {
    /// Links now running this daemon's programs.
    pub updated: usize,
    /// Links whose cgroup is gone (removed by the next reconcile).
    pub defunct: usize,
    /// Links that still run an older program, and why.
    pub failed: Vec<DatapathError>,
}

impl KernelDatapath {
    fn links_dir(&self) -> Option<PathBuf> {
        self.pin_root.as_ref().map(|r| r.links())
    }

    /// Attaches both programs to a cgroup and pins the links under
    /// `owner`. Without a pin root the links are dropped at once (tests
    /// that need links use a pin root).
    pub fn attach_cgroup(
        &mut self,
        owner: &str,
        cgroup_dir: &Path,
        cgroup_id: u64,
    ) -> Result<(), DatapathError> {
        let links_dir = self.links_dir();
        for direction in Direction::ALL {
            let pin = LinkPin {
                owner: owner.to_string(),
                cgroup_id,
                direction,
            };
            let path = links_dir.as_ref().map(|d| d.join(pin.file_name()));
            if path.as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            let cgroup = File::open(cgroup_dir).map_err(io_error("open", cgroup_dir))?;
            let name = pin.program();
            let attach_type = match direction {
                Direction::Ingress => CgroupSkbAttachType::Ingress,
                Direction::Egress => CgroupSkbAttachType::Egress,
            };
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
        for entry in std::fs::read_dir(&dir).map_err(io_error("read", &dir))? {
            let entry = entry.map_err(io_error("read", &dir))?;
            if let Some(pin) = entry.file_name().to_str().and_then(LinkPin::parse) {
                out.push(pin);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Detaches a link by removing its pin (the kernel drops the link with
    /// its last reference).
    pub fn detach_pin(&self, pin: &LinkPin) -> Result<(), DatapathError> {
        let Some(dir) = self.links_dir() else {
            return Ok(());
        };
        let path = dir.join(pin.file_name());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error("remove", &path)(e).into())
            }
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
            let name = pin.program();
            let path = dir.join(pin.file_name());
            let prog = self.program(name)?;
            let prog_fd = prog.fd().map_err(|e| DatapathError::Program {
                name,
                source: Box::new(e),
            })?;
            use std::os::fd::AsFd as _;
            let moved = crate::syscall::obj_get(&path)
                .and_then(|link| crate::syscall::link_update(link.as_fd(), prog_fd.as_fd()));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_round_trip() {
        let pin = LinkPin {
            owner: "0123abcd".into(),
            cgroup_id: 4242,
            direction: Direction::Egress,
        };
        assert_eq!(pin.file_name(), "0123abcd_4242_egress");
        assert_eq!(LinkPin::parse(&pin.file_name()), Some(pin));
        assert_eq!(LinkPin::parse("x_12_sideways"), None);
        assert_eq!(LinkPin::parse("x_notanumber_ingress"), None);
    }
}
