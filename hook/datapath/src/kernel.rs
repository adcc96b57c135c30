//! [`KernelDatapath`]: the C programs loaded into the kernel with aya, their
//! maps pinned (or private, for tests), and what a starting daemon does to
//! take over the state an earlier one left.

use aya::programs::CgroupSkb;
use aya::{Ebpf, EbpfLoader};
use bpfwall_sys::{error_chain, io_error};
use labels_policy::datapath_abi as abi;

use crate::bpffs::PinRoot;
use crate::maps::{MapContents, Maps};
use crate::{DatapathError, OBJECT};

/// The loaded datapath.
#[derive(Debug)]
pub struct KernelDatapath {
    pub(crate) ebpf: Ebpf,
    pub(crate) pin_root: Option<PinRoot>,
}

/// What [`KernelDatapath::adopt`] found and did.
#[derive(Debug, Default)]
pub struct AdoptReport {
    /// Links now running this daemon's programs.
    pub links_moved: usize,
    /// Links whose cgroup is gone (removed by the next reconcile).
    pub links_defunct: usize,
    /// Links that still run an older program, and why.
    pub links_not_moved: Vec<DatapathError>,
    /// Exact entries moved from the tries to the hashes.
    pub exact_entries_moved: usize,
    /// The policy revision after the bump.
    pub policy_revision: u32,
    /// What the maps hold now.
    pub contents: MapContents,
}

impl KernelDatapath {
    /// Loads the object. With a pin root, maps are pinned there (or the
    /// ones already pinned are reused) and links can be pinned; without
    /// one, maps are private to this process (for tests).
    pub fn load(pin_root: Option<&std::path::Path>) -> Result<Self, DatapathError> {
        let pin_root = pin_root.map(PinRoot::new);
        let mut loader = EbpfLoader::new();
        if let Some(root) = &pin_root {
            root.create()?;
            for name in abi::ALL_MAPS {
                loader.map_pin_path(name, root.maps().join(name));
            }
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
            if let Some(root) = &pin_root {
                let path = root.progs().join(name);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_error("replace", &path)(e).into())
                    }
                    _ => {}
                }
                prog.pin(&path).map_err(|e| DatapathError::Pin {
                    path: path.clone(),
                    source: Box::new(e),
                })?;
            }
        }
        Ok(KernelDatapath { ebpf, pin_root })
    }

    /// Loads the datapath with pins under `pin_root` and takes over what an
    /// earlier daemon (perhaps an older bpfwall) left there, in this order:
    /// every pinned link is moved onto the programs loaded now (only then
    /// may exact entries leave the tries: older programs read the tries
    /// only), exact entries move to the hashes, and the policy revision
    /// moves on so conntrack entries older programs wrote are decided again.
    pub fn adopt(&mut self) -> Result<AdoptReport, DatapathError> {
        let links = self.update_pinned_links()?;
        for e in &links.failed {
            tracing::error!(error = %error_chain(e), "a pinned link keeps an older program");
        }
        let mut maps = self.maps()?;
        let exact_entries_moved = if links.failed.is_empty() {
            maps.migrate_exact_entries()?
        } else {
            0
        };
        let policy_revision = maps.bump_policy_revision()?;
        let contents = maps.read()?;
        Ok(AdoptReport {
            links_moved: links.updated,
            links_defunct: links.defunct,
            links_not_moved: links.failed,
            exact_entries_moved,
            policy_revision,
            contents,
        })
    }

    /// A loaded program of the object, by name.
    pub fn program(&mut self, name: &'static str) -> Result<&mut CgroupSkb, DatapathError> {
        program(&mut self.ebpf, name)
    }

    /// The object's maps.
    pub fn maps(&mut self) -> Result<Maps<'_>, DatapathError> {
        Maps::new(&mut self.ebpf)
    }
}

pub(crate) fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSkb, DatapathError> {
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
