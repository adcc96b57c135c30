//! An in-memory [`Datapath`] for unit tests that need neither root nor BPF:
//! it keeps what the maps and links would hold, records every call in
//! order with the contents after it (so a test can ask what a packet would
//! have met at each step), and fails on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use labels_policy::datapath_abi::{
    DropReason, EndpointCounters, EndpointInfo, EndpointKey, IpcacheKey, IpcacheValue, PolicyKey,
    PolicyValue,
};
use labels_policy::Direction;

use crate::{CounterReader, Datapath, DatapathError, LinkPin, MapContents};

/// One call the reconciler made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `read`.
    Read,
    /// `upsert_policy` with this many entries.
    UpsertPolicy(usize),
    /// `upsert_ipcache`.
    UpsertIpcache(usize),
    /// `upsert_endpoints`.
    UpsertEndpoints(usize),
    /// `remove_policy`.
    RemovePolicy(usize),
    /// `remove_ipcache`.
    RemoveIpcache(usize),
    /// `remove_endpoints`.
    RemoveEndpoints(usize),
    /// `reset_counters` of this slot.
    ResetCounters(u32),
    /// `bump_policy_revision`.
    BumpRevision,
    /// `forget_conntrack` of these slots.
    ForgetConntrack(BTreeSet<u32>),
    /// `attach` for this owner and cgroup id.
    Attach(String, u64),
    /// `detach` of this link.
    Detach(LinkPin),
}

impl Op {
    /// The operation's kind, for failure injection: "upsert_policy",
    /// "attach", ...
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::UpsertPolicy(_) => "upsert_policy",
            Op::UpsertIpcache(_) => "upsert_ipcache",
            Op::UpsertEndpoints(_) => "upsert_endpoints",
            Op::RemovePolicy(_) => "remove_policy",
            Op::RemoveIpcache(_) => "remove_ipcache",
            Op::RemoveEndpoints(_) => "remove_endpoints",
            Op::ResetCounters(_) => "reset_counters",
            Op::BumpRevision => "bump_policy_revision",
            Op::ForgetConntrack(_) => "forget_conntrack",
            Op::Attach(..) => "attach",
            Op::Detach(_) => "detach",
        }
    }
}

/// What the fake holds; shared with the test through [`FakeDatapath::state`].
#[derive(Debug, Default)]
pub struct FakeState {
    /// The three compiled map families.
    pub contents: MapContents,
    /// Pinned links.
    pub links: BTreeSet<LinkPin>,
    /// The policy revision.
    pub revision: u32,
    /// Conntrack entries per endpoint slot (a count is all tests need).
    pub conntrack: BTreeMap<u32, usize>,
    /// Counters per endpoint slot.
    pub counters: BTreeMap<u32, EndpointCounters>,
    /// Every call, with the map contents after it.
    pub journal: Vec<(Op, MapContents)>,
    /// Calls of this kind fail (with a map error) while set.
    pub fail_kind: Option<&'static str>,
    /// `attach` fails for these cgroup directories (the cgroup is gone).
    pub vanished_cgroups: BTreeSet<std::path::PathBuf>,
    /// The policy family holds at most this many entries (a full map fails
    /// the upsert that would pass it, after writing what fits).
    pub policy_capacity: Option<usize>,
}

/// The fake datapath.
#[derive(Debug, Clone, Default)]
pub struct FakeDatapath {
    state: Arc<Mutex<FakeState>>,
}

fn injected(kind: &'static str) -> DatapathError {
    DatapathError::Map {
        name: "fake",
        op: kind,
        source: Box::new(aya::maps::MapError::KeyNotFound),
    }
}

impl FakeDatapath {
    /// An empty datapath.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state, to inspect or to arrange failures.
    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(
        &self,
        op: Op,
        change: impl FnOnce(&mut FakeState) -> Result<(), DatapathError>,
    ) -> Result<(), DatapathError> {
        let mut s = self.state();
        if s.fail_kind == Some(op.kind()) {
            return Err(injected(op.kind()));
        }
        let result = change(&mut s);
        let after = s.contents.clone();
        s.journal.push((op, after));
        result
    }
}

impl Datapath for FakeDatapath {
    fn read(&mut self) -> Result<MapContents, DatapathError> {
        let mut out = MapContents::default();
        self.record(Op::Read, |s| {
            out = s.contents.clone();
            Ok(())
        })?;
        Ok(out)
    }

    fn upsert_policy(&mut self, entries: &[(PolicyKey, PolicyValue)]) -> Result<(), DatapathError> {
        self.record(Op::UpsertPolicy(entries.len()), |s| {
            for (k, v) in entries {
                let full = s
                    .policy_capacity
                    .is_some_and(|cap| s.contents.policy.len() >= cap);
                if full && !s.contents.policy.contains_key(k) {
                    return Err(DatapathError::Map {
                        name: "bpfwall_policy_v1",
                        op: "insert",
                        source: Box::new(aya::maps::MapError::SyscallError(
                            aya::sys::SyscallError {
                                call: "bpf_map_update_elem",
                                io_error: std::io::Error::from_raw_os_error(libc::E2BIG),
                            },
                        )),
                    });
                }
                s.contents.policy.insert(*k, *v);
            }
            Ok(())
        })
    }

    fn upsert_ipcache(
        &mut self,
        entries: &[(IpcacheKey, IpcacheValue)],
    ) -> Result<(), DatapathError> {
        self.record(Op::UpsertIpcache(entries.len()), |s| {
            s.contents.ipcache.extend(entries.iter().copied());
            Ok(())
        })
    }

    fn upsert_endpoints(
        &mut self,
        entries: &[(EndpointKey, EndpointInfo)],
    ) -> Result<(), DatapathError> {
        self.record(Op::UpsertEndpoints(entries.len()), |s| {
            s.contents.endpoints.extend(entries.iter().copied());
            Ok(())
        })
    }

    fn remove_policy(&mut self, keys: &[PolicyKey]) -> Result<(), DatapathError> {
        self.record(Op::RemovePolicy(keys.len()), |s| {
            for k in keys {
                s.contents.policy.remove(k);
            }
            Ok(())
        })
    }

    fn remove_ipcache(&mut self, keys: &[IpcacheKey]) -> Result<(), DatapathError> {
        self.record(Op::RemoveIpcache(keys.len()), |s| {
            for k in keys {
                s.contents.ipcache.remove(k);
            }
            Ok(())
        })
    }

    fn remove_endpoints(&mut self, keys: &[EndpointKey]) -> Result<(), DatapathError> {
        self.record(Op::RemoveEndpoints(keys.len()), |s| {
            for k in keys {
                s.contents.endpoints.remove(k);
            }
            Ok(())
        })
    }

    fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        self.record(Op::ResetCounters(endpoint_id), |s| {
            s.counters.insert(endpoint_id, EndpointCounters::default());
            Ok(())
        })
    }

    fn bump_policy_revision(&mut self) -> Result<u32, DatapathError> {
        let mut next = 0;
        self.record(Op::BumpRevision, |s| {
            s.revision = s.revision.wrapping_add(1).max(1);
            next = s.revision;
            Ok(())
        })?;
        Ok(next)
    }

    fn forget_conntrack(&mut self, endpoint_ids: &BTreeSet<u32>) -> Result<usize, DatapathError> {
        let mut forgotten = 0;
        self.record(Op::ForgetConntrack(endpoint_ids.clone()), |s| {
            for ep in endpoint_ids {
                forgotten += s.conntrack.remove(ep).unwrap_or(0);
            }
            Ok(())
        })?;
        Ok(forgotten)
    }

    fn links(&self) -> Result<Vec<LinkPin>, DatapathError> {
        Ok(self.state().links.iter().cloned().collect())
    }

    fn attach(
        &mut self,
        owner: &str,
        cgroup_dir: &Path,
        cgroup_id: u64,
    ) -> Result<(), DatapathError> {
        self.record(Op::Attach(owner.to_string(), cgroup_id), |s| {
            if s.vanished_cgroups.contains(cgroup_dir) {
                return Err(
                    bpfwall_sys::io_error("open", cgroup_dir)(std::io::Error::from(
                        std::io::ErrorKind::NotFound,
                    ))
                    .into(),
                );
            }
            for direction in Direction::ALL {
                s.links.insert(LinkPin {
                    owner: owner.to_string(),
                    cgroup_id,
                    direction,
                });
            }
            Ok(())
        })
    }

    fn detach(&mut self, pin: &LinkPin) -> Result<(), DatapathError> {
        self.record(Op::Detach(pin.clone()), |s| {
            s.links.remove(pin);
            Ok(())
        })
    }

    fn counter_reader(&mut self) -> Result<Box<dyn CounterReader>, DatapathError> {
        Ok(Box::new(self.clone()))
    }
}

impl CounterReader for FakeDatapath {
    fn counters(&self, endpoint_id: u32) -> Result<EndpointCounters, DatapathError> {
        Ok(self
            .state()
            .counters
            .get(&endpoint_id)
            .copied()
            .unwrap_or_default())
    }

    fn drops(&self) -> Result<BTreeMap<DropReason, u64>, DatapathError> {
        Ok(DropReason::ALL.into_iter().map(|r| (r, 0)).collect())
    }
}
