//! [`KernelDatapath`]: the C programs loaded into the kernel with aya, their
//! maps pinned (or private, for tests), what a starting daemon does to take
//! over the state an earlier one left, and a change carried out in
//! generations: stage, flip, prune (see `crate::generations`).

use std::collections::{BTreeMap, BTreeSet};

use aya::programs::CgroupSkb;
use aya::{Ebpf, EbpfLoader};
use bpfwall_sys::{error_chain, io_error};
use labels_policy::datapath_abi as abi;

use crate::bpffs::PinRoot;
use crate::generations::{self, decode, encode, generation_of, next_revision, Physical};
use crate::maps::conntrack::{Collector, CtShares};
use crate::maps::counters::OwnedCounters;
use crate::maps::{MapContents, Maps};
use crate::rcu::RcuBarrier;
use crate::{DatapathError, StageError, OBJECT};

/// Map sizes other than the header's (tests and small hosts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapSizes {
    /// Entries of each policy map (exact hash and trie).
    pub policy: Option<u32>,
    /// Entries of the conntrack map.
    pub conntrack: Option<u32>,
    /// Bytes of the flow event ring (a power of two, at least a page).
    pub events_ring: Option<u32>,
}

/// The loaded datapath.
#[derive(Debug)]
pub struct KernelDatapath {
    pub(crate) ebpf: Ebpf,
    pub(crate) pin_root: Option<PinRoot>,
    /// What the maps hold, both generations (kept in step with every write;
    /// read again after a failure).
    physical: Physical,
    /// The policy revision; its lowest bit is the active generation.
    revision: u32,
    /// The active generation's content.
    active: MapContents,
    /// The staged generation's content, between `stage` and `flip`.
    staged: Option<MapContents>,
    /// Conntrack entries an endpoint may hold (`endpoint_info.ct_limit`).
    ct_limit: u32,
    capacities: BTreeMap<&'static str, usize>,
    barrier: RcuBarrier,
    /// A flip happened and no barrier has been waited for since: packets
    /// decided by the old generation may still run.
    unquiesced: bool,
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
    /// The policy revision found.
    pub policy_revision: u32,
}

impl KernelDatapath {
    /// Loads the object. With a pin root, maps are pinned there (or the
    /// ones already pinned are reused) and links can be pinned; without
    /// one, maps are private to this process (for tests).
    pub fn load(pin_root: Option<&std::path::Path>) -> Result<Self, DatapathError> {
        Self::load_sized(pin_root, &MapSizes::default())
    }

    /// [`KernelDatapath::load`] with map sizes of its own (they apply to
    /// maps created now; pinned maps keep theirs).
    pub fn load_sized(
        pin_root: Option<&std::path::Path>,
        sizes: &MapSizes,
    ) -> Result<Self, DatapathError> {
        let pin_root = pin_root.map(PinRoot::new);
        let mut loader = EbpfLoader::new();
        if let Some(root) = &pin_root {
            root.create()?;
            for name in abi::ALL_MAPS {
                loader.map_pin_path(name, root.maps().join(name));
            }
        }
        if let Some(n) = sizes.policy {
            loader.map_max_entries(abi::MAP_POLICY, n);
            loader.map_max_entries(abi::MAP_POLICY_EXACT, n);
        }
        if let Some(n) = sizes.conntrack {
            loader.map_max_entries(abi::MAP_CT, n);
        }
        if let Some(n) = sizes.events_ring {
            loader.map_max_entries(abi::MAP_EVENTS, n);
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
        let barrier = RcuBarrier::new().map_err(|source| DatapathError::Barrier { source })?;
        let mut dp = KernelDatapath {
            ebpf,
            pin_root,
            physical: Physical::default(),
            revision: 0,
            active: MapContents::default(),
            staged: None,
            ct_limit: abi::CT_ENTRIES,
            capacities: BTreeMap::new(),
            barrier,
            unquiesced: false,
        };
        dp.reread()?;
        let maps = dp.maps()?;
        dp.capacities = maps.capacities()?;
        Ok(dp)
    }

    /// Reads what the maps hold and which generation is active.
    fn reread(&mut self) -> Result<(), DatapathError> {
        let maps = self.maps()?;
        let physical = maps.read_physical()?;
        let revision = maps.policy_revision()?;
        self.active = decode(generation_of(revision), &physical);
        self.physical = physical;
        self.revision = revision;
        self.staged = None;
        Ok(())
    }

    /// Takes over what an earlier daemon (perhaps an older bpfwall) left
    /// under the pin root: every pinned link is moved onto the programs
    /// loaded now (atomically: no cgroup is ever without a program), so
    /// they read the maps this daemon writes. The maps' content is kept as
    /// it is, in force, until the first change.
    pub fn adopt(&mut self) -> Result<AdoptReport, DatapathError> {
        let links = self.update_pinned_links()?;
        for e in &links.failed {
            tracing::error!(error = %error_chain(e), "a pinned link keeps an older program");
        }
        if links.failed.is_empty() {
            self.remove_older_maps();
        }
        Ok(AdoptReport {
            links_moved: links.updated,
            links_defunct: links.defunct,
            links_not_moved: links.failed,
            policy_revision: self.revision,
        })
    }

    /// Maps of an older layout (another `_vN` than this object's) that an
    /// older daemon pinned: once every link runs this daemon's programs
    /// nothing reads them, so their pins go.
    fn remove_older_maps(&self) {
        let Some(root) = &self.pin_root else { return };
        let Ok(entries) = std::fs::read_dir(root.maps()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("bpfwall_") && !abi::ALL_MAPS.contains(&name.as_str()) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!(map = %name, "removed a map of an older layout"),
                    Err(e) => {
                        tracing::warn!(map = %name, error = %e, "cannot remove a map of an older layout")
                    }
                }
            }
        }
    }

    /// A loaded program of the object, by name.
    pub fn program(&mut self, name: &'static str) -> Result<&mut CgroupSkb, DatapathError> {
        program(&mut self.ebpf, name)
    }

    /// The object's maps.
    pub fn maps(&mut self) -> Result<Maps<'_>, DatapathError> {
        Maps::new(&mut self.ebpf)
    }

    /// The active generation's content.
    pub fn active_contents(&self) -> &MapContents {
        &self.active
    }

    /// Waits, if a flip happened since the last wait, until no packet
    /// decided by the generation before it is still running: only then may
    /// that generation's values be written over or its keys deleted.
    fn quiesce(&mut self) {
        if !self.unquiesced {
            return;
        }
        if let Err(source) = self.barrier.wait() {
            // The barrier has never failed where it exists; if it does, a
            // grace period is far shorter than this.
            tracing::error!(error = %source, "the RCU barrier failed: waiting 100 ms instead");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.unquiesced = false;
    }

    /// Writes what `next` needs into the staged generation.
    pub(crate) fn stage_contents(&mut self, next: &MapContents) -> Result<(), StageError> {
        self.quiesce();
        let active = generation_of(self.revision);
        let mut desired = encode(active, &self.active, next, &self.physical);
        for info in desired.endpoints.values_mut() {
            info.ct_limit = self.ct_limit;
        }
        // Everything must fit before anything is written.
        for (map, needed) in generations::fill(&desired) {
            let capacity = self.capacities.get(map).copied().unwrap_or(usize::MAX);
            if needed > capacity {
                return Err(StageError::Full {
                    map,
                    needed,
                    capacity,
                });
            }
        }
        match self.write_physical(&desired) {
            Ok(()) => {
                self.physical = desired;
                self.staged = Some(next.clone());
                Ok(())
            }
            Err(e) => {
                // Keys new to the maps were written with "absent" (or what
                // their covering entry says) for the active generation: take
                // them out, then read back what is really there.
                self.take_back_new_keys(&desired);
                if let Err(re) = self.reread() {
                    tracing::error!(error = %error_chain(&re), "cannot read the maps back after a failed write");
                }
                Err(StageError::Datapath(e))
            }
        }
    }

    fn write_physical(&mut self, desired: &Physical) -> Result<(), DatapathError> {
        let before = std::mem::take(&mut self.physical);
        let result = (|| {
            let mut maps = self.maps()?;
            for (k, v) in &desired.endpoints {
                if before.endpoints.get(k) != Some(v) {
                    maps.put_endpoint(k, v)?;
                }
            }
            for (k, v) in &desired.ipcache {
                if before.ipcache.get(k) != Some(v) {
                    maps.put_ipcache(k, v)?;
                }
            }
            for (k, v) in &desired.policy {
                if before.policy.get(k) != Some(v) {
                    maps.put_policy(k, v)?;
                }
            }
            for (k, v) in &desired.sources {
                if before.sources.get(k) != Some(v) {
                    maps.put_source(k, v)?;
                }
            }
            Ok(())
        })();
        self.physical = before;
        result
    }

    fn take_back_new_keys(&mut self, desired: &Physical) {
        let before = self.physical.clone();
        let Ok(mut maps) = self.maps() else { return };
        for k in desired.endpoints.keys() {
            if !before.endpoints.contains_key(k) {
                let _ = maps.delete_endpoint(k);
            }
        }
        for k in desired.ipcache.keys() {
            if !before.ipcache.contains_key(k) {
                let _ = maps.delete_ipcache(k);
            }
        }
        for k in desired.policy.keys() {
            if !before.policy.contains_key(k) {
                let _ = maps.delete_policy(k);
            }
        }
        for k in desired.sources.keys() {
            if !before.sources.contains_key(k) {
                let _ = maps.delete_source(k);
            }
        }
    }

    /// Makes the staged generation active for every packet that starts
    /// from now on. Packets already running finish with the old one: the
    /// next stage or prune waits for them first.
    pub(crate) fn flip_generation(&mut self) -> Result<u32, DatapathError> {
        let Some(staged) = self.staged.take() else {
            return Ok(self.revision);
        };
        let next = next_revision(self.revision);
        if let Err(e) = self.maps().and_then(|mut m| m.set_policy_revision(next)) {
            self.staged = Some(staged);
            return Err(e);
        }
        self.revision = next;
        self.active = staged;
        self.unquiesced = true;
        Ok(next)
    }

    /// Deletes every key the active generation does not have (after
    /// waiting for the packets of the generation before it).
    pub(crate) fn prune_keys(&mut self) -> Result<(), DatapathError> {
        if self.staged.is_some() {
            // Never delete what a staged generation still needs.
            return Ok(());
        }
        self.quiesce();
        let active = self.active.clone();
        let mut physical = std::mem::take(&mut self.physical);
        let result = (|| {
            let mut maps = self.maps()?;
            let gone: Vec<_> = physical
                .endpoints
                .keys()
                .filter(|k| !active.endpoints.contains_key(k))
                .copied()
                .collect();
            for k in gone {
                maps.delete_endpoint(&k)?;
                physical.endpoints.remove(&k);
            }
            let gone: Vec<_> = physical
                .ipcache
                .keys()
                .filter(|k| !active.ipcache.contains_key(k))
                .copied()
                .collect();
            for k in gone {
                maps.delete_ipcache(&k)?;
                physical.ipcache.remove(&k);
            }
            let gone: Vec<_> = physical
                .policy
                .keys()
                .filter(|k| !active.policy.contains_key(k))
                .copied()
                .collect();
            for k in gone {
                maps.delete_policy(&k)?;
                physical.policy.remove(&k);
            }
            let gone: Vec<_> = physical
                .sources
                .keys()
                .filter(|k| !active.sources.contains(k))
                .copied()
                .collect();
            for k in gone {
                maps.delete_source(&k)?;
                physical.sources.remove(&k);
            }
            Ok(())
        })();
        self.physical = physical;
        result
    }

    /// Sets the conntrack shares (and the per-endpoint limit the next
    /// staged generation writes).
    pub(crate) fn set_shares(&mut self, shares: &CtShares) -> Result<(), DatapathError> {
        self.ct_limit = shares.per_endpoint;
        self.maps()?.set_ct_config(shares)
    }

    /// Entries and capacity of every map, by name.
    pub(crate) fn map_fill(&self) -> BTreeMap<&'static str, (usize, usize)> {
        generations::fill(&self.physical)
            .into_iter()
            .map(|(name, n)| {
                (
                    name,
                    (n, self.capacities.get(name).copied().unwrap_or_default()),
                )
            })
            .collect()
    }

    /// Capacity of one map.
    pub fn capacity(&self, map: &str) -> usize {
        self.capacities.get(map).copied().unwrap_or_default()
    }

    pub(crate) fn open_counters(&mut self) -> Result<OwnedCounters, DatapathError> {
        let (counters, drops, used) = self.map_ids()?;
        OwnedCounters::open(counters, drops, used)
    }

    pub(crate) fn open_collector(&mut self) -> Result<Collector, DatapathError> {
        use aya::maps::IterableMap as _;
        let maps = self.maps()?;
        let ct = map_id(maps.ct.map(), abi::MAP_CT)?;
        let used = map_id(maps.ct_used.map(), abi::MAP_CT_USED)?;
        Collector::open(ct, used)
    }

    fn map_ids(&mut self) -> Result<(u32, u32, u32), DatapathError> {
        use aya::maps::IterableMap as _;
        let maps = self.maps()?;
        Ok((
            map_id(maps.counters.map(), abi::MAP_COUNTERS)?,
            map_id(maps.drops.map(), abi::MAP_DROPS)?,
            map_id(maps.ct_used.map(), abi::MAP_CT_USED)?,
        ))
    }

    /// Deletes conntrack entries of endpoint slots.
    pub(crate) fn forget(&mut self, endpoint_ids: &BTreeSet<u32>) -> Result<usize, DatapathError> {
        self.maps()?.forget_conntrack(endpoint_ids)
    }
}

fn map_id(data: &aya::maps::MapData, name: &'static str) -> Result<u32, DatapathError> {
    data.info()
        .map(|i| i.id())
        .map_err(crate::error::map_error(name, "read the id of"))
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
