//! [`NetworkGate`]: the network plugin's gate (bpf-src/bpfwall_network_gate.c)
//! loaded with aya. Its maps are the ones pinned under the pin root (the
//! daemon's `KernelDatapath` pins every map of the header, these
//! included), so one process owns one set of maps. Its two tc programs are
//! attached through netlink (cls_bpf, direct action) on the host end of a
//! veth: a filter lives with its interface, so it goes on enforcing while
//! no daemon runs and goes away with the interface. A starting daemon
//! replaces the filters on the interfaces it made with the programs it
//! loaded, in place (same priority and handle: no moment without a filter).

use std::collections::BTreeMap;
use std::path::Path;

use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use labels_policy::datapath_abi::{self as abi, NetgateDrop, NetgateEndpoint};

use crate::bpffs::PinRoot;
use crate::maps::netgate::NetgateMaps;
use crate::{DatapathError, NETGATE_OBJECT};

/// The tc filter priority of the gate's programs.
pub const FILTER_PRIORITY: u16 = 1;
/// Their filter handle.
pub const FILTER_HANDLE: TcHandle = TcHandle::new(0, 0xbf01);

/// The loaded gate.
#[derive(Debug)]
pub struct NetworkGate {
    ebpf: Ebpf,
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::Program {
            name,
            source: Box::new(aya::programs::ProgramError::NotLoaded),
        })?;
    prog.try_into().map_err(|e| DatapathError::Program {
        name,
        source: Box::new(e),
    })
}

impl NetworkGate {
    /// Loads the gate with the maps pinned under `pin_root` (created by the
    /// daemon's datapath before), or private maps without one (tests).
    pub fn load(pin_root: Option<&Path>) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        if let Some(root) = pin_root {
            let root = PinRoot::new(root);
            root.create()?;
            for name in abi::ALL_MAPS {
                loader.map_pin_path(name, root.maps().join(name));
            }
        }
        let mut ebpf = loader
            .load(NETGATE_OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        for name in [abi::PROG_NETGATE_IN, abi::PROG_NETGATE_OUT] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|e| DatapathError::Program {
                    name,
                    source: Box::new(e),
                })?;
        }
        Ok(NetworkGate { ebpf })
    }

    /// A loaded program, by name (tests run it with `BPF_PROG_TEST_RUN`).
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        program(&mut self.ebpf, name)
    }

    /// Puts both programs on an interface (adding the clsact qdisc), or
    /// replaces the ones there in place.
    pub fn attach(&mut self, interface: &str) -> Result<(), DatapathError> {
        // An interface that has the qdisc already answers EEXIST: fine.
        let _ = aya::programs::tc::qdisc_add_clsact(interface);
        for (name, attach_type) in [
            (abi::PROG_NETGATE_IN, TcAttachType::Ingress),
            (abi::PROG_NETGATE_OUT, TcAttachType::Egress),
        ] {
            let prog = program(&mut self.ebpf, name)?;
            let err = |source| DatapathError::TcAttach {
                name,
                interface: interface.to_string(),
                source: Box::new(source),
            };
            // Replace what is there (a daemon restart); else create.
            let replaced = SchedClassifierLink::attached(
                interface,
                attach_type,
                FILTER_PRIORITY,
                FILTER_HANDLE,
                None,
            )
            .map_err(|e| err(aya::programs::ProgramError::IOError(e)))
            .and_then(|link| prog.attach_to_link(link).map_err(err));
            let id = match replaced {
                Ok(id) => id,
                Err(_) => prog
                    .attach_with_options(
                        interface,
                        attach_type,
                        TcAttachOptions::Netlink(NlOptions {
                            priority: FILTER_PRIORITY,
                            handle: FILTER_HANDLE,
                            classid: None,
                        }),
                    )
                    .map_err(err)?,
            };
            // The filter belongs to the interface, not to this process:
            // dropping aya's link would detach it.
            let link = prog.take_link(id).map_err(err)?;
            std::mem::forget(link);
        }
        Ok(())
    }

    /// The gate's maps.
    pub fn maps(&mut self) -> Result<NetgateMaps<'_>, DatapathError> {
        NetgateMaps::new(&mut self.ebpf)
    }

    /// Writes one interface's entry.
    pub fn set(&mut self, ifindex: u32, endpoint: &NetgateEndpoint) -> Result<(), DatapathError> {
        self.maps()?.put(ifindex, endpoint)
    }

    /// Removes one interface's entry.
    pub fn remove(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.maps()?.delete(ifindex)
    }

    /// Every entry, by ifindex.
    pub fn entries(&mut self) -> Result<BTreeMap<u32, NetgateEndpoint>, DatapathError> {
        self.maps()?.entries()
    }

    /// Drops by reason.
    pub fn drops(&mut self) -> Result<BTreeMap<NetgateDrop, u64>, DatapathError> {
        self.maps()?.drops()
    }
}

/// Reads the gate's drops from the pinned map, on the side (the API
/// answers status with them while the plugin's task owns the gate).
pub struct NetgateDropsReader {
    drops: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
}

impl std::fmt::Debug for NetgateDropsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetgateDropsReader").finish_non_exhaustive()
    }
}

impl NetgateDropsReader {
    /// Opens `maps/bpfwall_netgate_drops_v1` under a pin root.
    pub fn open(pin_root: &Path) -> Result<Self, DatapathError> {
        let path = PinRoot::new(pin_root).maps().join(abi::MAP_NETGATE_DROPS);
        let data = aya::maps::MapData::from_pin(&path).map_err(crate::error::map_error(
            abi::MAP_NETGATE_DROPS,
            "open the pin of",
        ))?;
        let drops = aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(crate::error::map_error(abi::MAP_NETGATE_DROPS, "open"))?;
        Ok(NetgateDropsReader { drops })
    }

    /// Drops by reason, summed over CPUs.
    pub fn read(&self) -> Result<BTreeMap<NetgateDrop, u64>, DatapathError> {
        let mut out = BTreeMap::new();
        for reason in NetgateDrop::ALL {
            let per_cpu = self
                .drops
                .get(&(reason as u32), 0)
                .map_err(crate::error::map_error(abi::MAP_NETGATE_DROPS, "read"))?;
            out.insert(reason, per_cpu.iter().sum());
        }
        Ok(out)
    }
}
