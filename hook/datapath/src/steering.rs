//! Steering to the HTTP proxy: the sk_lookup program of
//! `bpf-src/bpfwall_sk_lookup.c`, its links to containers' network
//! namespaces, and the maps it reads that are not policy: the proxy's
//! listening sockets (`bpfwall_l7_sockets_v1`), the addresses of the
//! containers they serve (`bpfwall_l7_addresses_v1`), and its drop
//! counters (`bpfwall_l7_drops_v1`). Which ports are steered is policy and
//! lives in the policy map, written with its generations by the reconciler
//! (see `bpf-src/l7.h`).
//!
//! The program is its own object, loaded with the maps the datapath pinned
//! ([`crate::KernelDatapath::load`] pins every map of `ALL_MAPS`), so both
//! objects read the same maps. Its links are pinned under
//! `netns_links/<owner>_<netns inode>` of the pin root and keep steering
//! while no daemon runs; with no daemon there is no proxy socket either,
//! and the program drops what it would have steered (fail closed).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd as _, AsRawFd};
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuArray, SockMap};
use aya::programs::links::FdLink;
use aya::programs::SkLookup;
use aya::{Ebpf, EbpfLoader};
use bpfwall_sys::io_error;
use labels_policy::datapath_abi::{
    self as abi, L7AddressKey, L7AddressValue, L7DropReason, ALL_MAPS,
};

use crate::error::map_error;
use crate::pod::P;
use crate::{DatapathError, KernelDatapath};

/// The sk_lookup object (bpf-src/bpfwall_sk_lookup.c).
pub const L7_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpfwall_l7.o"));

/// The directory of the netns links under a pin root.
pub fn netns_links_dir(pin_root: &Path) -> PathBuf {
    pin_root.join("netns_links")
}

/// A link of the sk_lookup program pinned for one container's namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetnsLinkPin {
    /// The owner's name (the container id).
    pub owner: String,
    /// The inode of the network namespace it is attached to.
    pub netns: u64,
}

impl NetnsLinkPin {
    /// The pin's file name: `<owner>_<netns inode>`.
    pub fn file_name(&self) -> String {
        format!("{}_{}", self.owner, self.netns)
    }

    /// Reads a pin's file name back; None for anything else.
    pub fn parse(name: &str) -> Option<NetnsLinkPin> {
        let (owner, netns) = name.rsplit_once('_')?;
        Some(NetnsLinkPin {
            owner: owner.to_string(),
            netns: netns.parse().ok()?,
        })
    }
}

/// What loading the steering did with the links an earlier daemon pinned.
#[derive(Debug, Default)]
pub struct SteeringAdopted {
    /// Links now running this daemon's program.
    pub moved: usize,
    /// Links whose namespace is gone.
    pub defunct: usize,
    /// Links that keep an older program, and why.
    pub failed: Vec<DatapathError>,
}

/// The loaded sk_lookup program and the maps the proxy writes.
pub struct Steering {
    ebpf: Ebpf,
    links_dir: PathBuf,
    sockets: SockMap<MapData>,
    addresses: HashMap<MapData, P<L7AddressKey>, P<L7AddressValue>>,
    drops: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("links_dir", &self.links_dir)
            .finish_non_exhaustive()
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DatapathError> {
    let map = ebpf
        .take_map(name)
        .ok_or(DatapathError::MissingMap { name })?;
    T::try_from(map).map_err(map_error(name, "open"))
}

impl Steering {
    /// Loads the sk_lookup program with the maps pinned under `pin_root`
    /// (load the datapath first: it pins them), pins the program at
    /// `progs/bpfwall_l7_lookup`, and moves every netns link an earlier
    /// daemon pinned onto it (atomically, as the cgroup links).
    pub fn load(pin_root: &Path) -> Result<(Steering, SteeringAdopted), DatapathError> {
        let maps = pin_root.join("maps");
        let mut loader = EbpfLoader::new();
        for name in ALL_MAPS {
            loader.map_pin_path(name, maps.join(name));
        }
        let mut ebpf = loader
            .load(L7_OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        let name = abi::PROG_L7_LOOKUP;
        let program_error = |e| DatapathError::Program {
            name,
            source: Box::new(e),
        };
        let prog: &mut SkLookup = ebpf
            .program_mut(name)
            .ok_or(DatapathError::Program {
                name,
                source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
            })?
            .try_into()
            .map_err(program_error)?;
        prog.load().map_err(program_error)?;
        let progs = pin_root.join("progs");
        std::fs::create_dir_all(&progs).map_err(io_error("create", &progs))?;
        let path = progs.join(name);
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
        let links_dir = netns_links_dir(pin_root);
        std::fs::create_dir_all(&links_dir).map_err(io_error("create", &links_dir))?;
        let sockets = take(&mut ebpf, abi::MAP_L7_SOCKETS)?;
        let addresses = take(&mut ebpf, abi::MAP_L7_ADDRESSES)?;
        let drops = take(&mut ebpf, abi::MAP_L7_DROPS)?;
        let steering = Steering {
            ebpf,
            links_dir,
            sockets,
            addresses,
            drops,
        };
        let adopted = steering.update_links()?;
        Ok((steering, adopted))
    }

    fn program(&mut self) -> Result<&mut SkLookup, DatapathError> {
        let name = abi::PROG_L7_LOOKUP;
        self.ebpf
            .program_mut(name)
            .ok_or(DatapathError::Program {
                name,
                source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
            })?
            .try_into()
            .map_err(|e| DatapathError::Program {
                name,
                source: Box::new(e),
            })
    }

    /// Moves every pinned netns link onto this program.
    fn update_links(&self) -> Result<SteeringAdopted, DatapathError> {
        let mut report = SteeringAdopted::default();
        let name = abi::PROG_L7_LOOKUP;
        let prog: &SkLookup = self
            .ebpf
            .program(name)
            .ok_or(DatapathError::Program {
                name,
                source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
            })?
            .try_into()
            .map_err(|e| DatapathError::Program {
                name,
                source: Box::new(e),
            })?;
        let prog_fd = prog.fd().map_err(|e| DatapathError::Program {
            name,
            source: Box::new(e),
        })?;
        for pin in self.links()? {
            let path = self.links_dir.join(pin.file_name());
            let moved = crate::syscall::obj_get(&path)
                .and_then(|link| crate::syscall::link_update(link.as_fd(), prog_fd.as_fd()));
            match moved {
                Ok(()) => report.moved += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => report.defunct += 1,
                Err(source) => report
                    .failed
                    .push(DatapathError::LinkUpdate { path, name, source }),
            }
        }
        Ok(report)
    }

    /// Attaches the program to a network namespace (a handle on
    /// `/proc/PID/ns/net`) and pins the link for `owner`. Nothing is done
    /// when that pin exists.
    pub fn attach(&mut self, owner: &str, netns: &File, inode: u64) -> Result<(), DatapathError> {
        let pin = NetnsLinkPin {
            owner: owner.to_string(),
            netns: inode,
        };
        let path = self.links_dir.join(pin.file_name());
        if path.exists() {
            return Ok(());
        }
        let name = abi::PROG_L7_LOOKUP;
        let attach = |source| DatapathError::AttachNetns {
            name,
            netns: inode,
            source: Box::new(source),
        };
        let prog = self.program()?;
        let id = prog.attach(netns).map_err(attach)?;
        let link: FdLink = prog.take_link(id).map_err(attach)?.into();
        link.pin(&path).map_err(|e| DatapathError::Pin {
            path: path.clone(),
            source: Box::new(e),
        })?;
        Ok(())
    }

    /// Every pinned netns link.
    pub fn links(&self) -> Result<Vec<NetnsLinkPin>, DatapathError> {
        let dir = &self.links_dir;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error("read", dir))? {
            let entry = entry.map_err(io_error("read", dir))?;
            if let Some(pin) = entry.file_name().to_str().and_then(NetnsLinkPin::parse) {
                out.push(pin);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Detaches a netns link by removing its pin.
    pub fn detach(&self, pin: &NetnsLinkPin) -> Result<(), DatapathError> {
        let path = self.links_dir.join(pin.file_name());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error("remove", &path)(e).into())
            }
            _ => Ok(()),
        }
    }

    /// Puts a listening socket in an endpoint's slot for a family. The
    /// socket must be the proxy's, made in that endpoint's network
    /// namespace: the kernel does not check (the caller does).
    pub fn set_socket(
        &mut self,
        endpoint_id: u32,
        v6: bool,
        socket: &impl AsRawFd,
    ) -> Result<(), DatapathError> {
        self.sockets
            .set(L7DropReason::socket_slot(endpoint_id, v6), socket, 0)
            .map_err(map_error(abi::MAP_L7_SOCKETS, "set"))
    }

    /// Empties an endpoint's slot for a family (closing the socket does too).
    pub fn clear_socket(&mut self, endpoint_id: u32, v6: bool) -> Result<(), DatapathError> {
        match self
            .sockets
            .clear_index(&L7DropReason::socket_slot(endpoint_id, v6))
        {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            other => other.map_err(map_error(abi::MAP_L7_SOCKETS, "clear")),
        }
    }

    /// The addresses steered now, with the cgroup of their container.
    pub fn addresses(&self) -> Result<BTreeMap<L7AddressKey, u64>, DatapathError> {
        let mut out = BTreeMap::new();
        for item in self.addresses.iter() {
            let (k, v) = item.map_err(map_error(abi::MAP_L7_ADDRESSES, "read"))?;
            out.insert(k.0, v.0.cgroup_id);
        }
        Ok(out)
    }

    /// Says which container (by cgroup) an address belongs to.
    pub fn set_address(&mut self, key: L7AddressKey, cgroup_id: u64) -> Result<(), DatapathError> {
        self.addresses
            .insert(P(key), P(L7AddressValue { cgroup_id }), 0)
            .map_err(map_error(abi::MAP_L7_ADDRESSES, "write"))
    }

    /// Forgets an address.
    pub fn remove_address(&mut self, key: &L7AddressKey) -> Result<(), DatapathError> {
        match self.addresses.remove(&P(*key)) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            other => other.map_err(map_error(abi::MAP_L7_ADDRESSES, "delete")),
        }
    }

    /// A reader of the L7 drop counters for other threads.
    pub fn drop_reader(&self) -> Result<L7Drops, DatapathError> {
        use aya::maps::IterableMap as _;
        let id = self
            .drops
            .map()
            .info()
            .map(|i| i.id())
            .map_err(map_error(abi::MAP_L7_DROPS, "read the id of"))?;
        let data = MapData::from_id(id).map_err(map_error(abi::MAP_L7_DROPS, "open by id"))?;
        let map = aya::maps::Map::from_map_data(data)
            .map_err(map_error(abi::MAP_L7_DROPS, "open by id"))?;
        Ok(L7Drops {
            map: PerCpuArray::try_from(map).map_err(map_error(abi::MAP_L7_DROPS, "open"))?,
        })
    }
}

/// The L7 drop counters, opened for reading from any thread.
pub struct L7Drops {
    map: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for L7Drops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L7Drops").finish_non_exhaustive()
    }
}

fn sum_l7_drops(
    map: &PerCpuArray<impl std::borrow::Borrow<MapData>, u64>,
) -> Result<BTreeMap<L7DropReason, u64>, DatapathError> {
    let mut out = BTreeMap::new();
    for reason in L7DropReason::ALL {
        let per_cpu = map
            .get(&(reason as u32), 0)
            .map_err(map_error(abi::MAP_L7_DROPS, "read"))?;
        out.insert(reason, per_cpu.iter().sum());
    }
    Ok(out)
}

impl L7Drops {
    /// Host-wide L7 drops per reason.
    pub fn read(&self) -> Result<BTreeMap<L7DropReason, u64>, DatapathError> {
        sum_l7_drops(&self.map)
    }
}

#[cfg(feature = "testing")]
impl Steering {
    /// Runs the sk_lookup program once under BPF_PROG_TEST_RUN on a
    /// `struct bpf_sk_lookup` (given and returned in `ctx`; the selected
    /// socket's cookie comes back in its first 8 bytes). Its return value.
    pub fn test_run(&mut self, ctx: &mut [u8]) -> std::io::Result<u32> {
        let prog = self
            .program()
            .map_err(|e| std::io::Error::other(bpfwall_sys::error_chain(&e)))?;
        let fd = prog
            .fd()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        crate::syscall::prog_test_run_ctx(fd.as_fd(), ctx)
    }

    /// The L7 drops, read on the spot.
    pub fn l7_drops(&self) -> Result<BTreeMap<L7DropReason, u64>, DatapathError> {
        sum_l7_drops(&self.drops)
    }
}

impl KernelDatapath {
    /// Host-wide L7 drops per reason, as the cgroup programs count them
    /// (step 10b) in the object's own copy of the map.
    pub fn l7_drops(&mut self) -> Result<BTreeMap<L7DropReason, u64>, DatapathError> {
        let name = abi::MAP_L7_DROPS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { name })?;
        let array: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_error(name, "open"))?;
        sum_l7_drops(&array)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_pin_names_round_trip() {
        let pin = NetnsLinkPin {
            owner: "0123abcd".into(),
            netns: 4026532000,
        };
        assert_eq!(pin.file_name(), "0123abcd_4026532000");
        assert_eq!(NetnsLinkPin::parse(&pin.file_name()), Some(pin));
        assert_eq!(NetnsLinkPin::parse("x_y"), None);
    }
}
