//! An in-memory [`Datapath`] for unit tests that need neither root nor BPF:
//! it keeps what the active and the staged generation hold and the links,
//! records every call in order with the active content after it (what a
//! packet would have met at that step), and fails on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use labels_policy::datapath_abi::{self as abi, DropReason, EndpointCounters};
use labels_policy::Direction;

use crate::maps::conntrack::{Collected, CtShares};
use crate::{
    ConntrackCollector, CounterReader, Datapath, DatapathError, LinkPin, MapContents, StageError,
};

/// One call the reconciler made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `stage`.
    Stage,
    /// `flip`.
    Flip,
    /// `prune`.
    Prune,
    /// `set_conntrack_shares`.
    SetShares(CtShares),
    /// `reset_counters` of this slot.
    ResetCounters(u32),
    /// `forget_conntrack` of these slots.
    ForgetConntrack(BTreeSet<u32>),
    /// `attach` for this owner and cgroup id.
    Attach(String, u64),
    /// `detach` of this link.
    Detach(LinkPin),
}

impl Op {
    /// The operation's kind, for failure injection: "stage", "attach", ...
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Stage => "stage",
            Op::Flip => "flip",
            Op::Prune => "prune",
            Op::SetShares(_) => "set_conntrack_shares",
            Op::ResetCounters(_) => "reset_counters",
            Op::ForgetConntrack(_) => "forget_conntrack",
            Op::Attach(..) => "attach",
            Op::Detach(_) => "detach",
        }
    }
}

/// What the fake holds; shared with the test through [`FakeDatapath::state`].
#[derive(Debug, Default)]
pub struct FakeState {
    /// The active generation.
    pub active: MapContents,
    /// The staged generation, between stage and flip.
    pub staged: Option<MapContents>,
    /// Keys the maps still hold beyond the active generation (until prune).
    pub leftover: MapContents,
    /// Pinned links.
    pub links: BTreeSet<LinkPin>,
    /// The policy revision.
    pub revision: u32,
    /// Conntrack entries per endpoint slot (a count is all tests need).
    pub conntrack: BTreeMap<u32, usize>,
    /// Counters per endpoint slot.
    pub counters: BTreeMap<u32, EndpointCounters>,
    /// The conntrack shares last set.
    pub shares: Option<CtShares>,
    /// Every call, with the active content after it.
    pub journal: Vec<(Op, MapContents)>,
    /// Calls of this kind fail (with a map error) while set.
    pub fail_kind: Option<&'static str>,
    /// `attach` fails for these cgroup directories (the cgroup is gone).
    pub vanished_cgroups: BTreeSet<std::path::PathBuf>,
    /// The policy maps hold at most this many entries (both generations
    /// together, as the real maps do).
    pub policy_capacity: Option<usize>,
}

/// The fake datapath.
#[derive(Debug, Clone, Default)]
pub struct FakeDatapath {
    state: Arc<Mutex<FakeState>>,
    /// A copy of the active content, for `active()`'s borrow.
    active: MapContents,
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

    fn record<T>(
        &self,
        op: Op,
        change: impl FnOnce(&mut FakeState) -> Result<T, DatapathError>,
    ) -> Result<T, DatapathError> {
        let mut s = self.state();
        if s.fail_kind == Some(op.kind()) {
            return Err(injected(op.kind()));
        }
        let result = change(&mut s);
        let after = s.active.clone();
        s.journal.push((op, after));
        result
    }

    fn sync_active(&mut self) {
        let active = self.state().active.clone();
        self.active = active;
    }
}

impl Datapath for FakeDatapath {
    fn active(&self) -> &MapContents {
        &self.active
    }

    fn stage(&mut self, next: &MapContents) -> Result<(), StageError> {
        let mut s = self.state();
        if s.fail_kind == Some("stage") {
            return Err(StageError::Datapath(injected("stage")));
        }
        if let Some(capacity) = s.policy_capacity {
            let keys: BTreeSet<_> = s
                .active
                .policy
                .keys()
                .chain(s.leftover.policy.keys())
                .chain(next.policy.keys())
                .collect();
            if keys.len() > capacity {
                return Err(StageError::Full {
                    map: abi::MAP_POLICY,
                    needed: keys.len(),
                    capacity,
                });
            }
        }
        s.staged = Some(next.clone());
        let after = s.active.clone();
        s.journal.push((Op::Stage, after));
        Ok(())
    }

    fn flip(&mut self) -> Result<u32, DatapathError> {
        let revision = self.record(Op::Flip, |s| {
            if let Some(staged) = s.staged.take() {
                let old = std::mem::replace(&mut s.active, staged);
                s.leftover.policy.extend(old.policy);
                s.leftover.ipcache.extend(old.ipcache);
                s.leftover.endpoints.extend(old.endpoints);
                s.leftover.sources.extend(old.sources);
                s.revision = s.revision.wrapping_add(1).max(1);
            }
            Ok(s.revision)
        })?;
        self.sync_active();
        Ok(revision)
    }

    fn prune(&mut self) -> Result<(), DatapathError> {
        self.record(Op::Prune, |s| {
            s.leftover = MapContents::default();
            Ok(())
        })
    }

    fn fill(&self) -> BTreeMap<&'static str, (usize, usize)> {
        let s = self.state();
        BTreeMap::from([(
            abi::MAP_POLICY,
            (
                s.active.policy.len() + s.leftover.policy.len(),
                s.policy_capacity.unwrap_or(abi::POLICY_ENTRIES as usize),
            ),
        )])
    }

    fn set_conntrack_shares(&mut self, shares: &CtShares) -> Result<(), DatapathError> {
        self.record(Op::SetShares(*shares), |s| {
            s.shares = Some(*shares);
            Ok(())
        })
    }

    fn conntrack_capacity(&self) -> u32 {
        abi::CT_ENTRIES
    }

    fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        self.record(Op::ResetCounters(endpoint_id), |s| {
            s.counters.insert(endpoint_id, EndpointCounters::default());
            Ok(())
        })
    }

    fn forget_conntrack(&mut self, endpoint_ids: &BTreeSet<u32>) -> Result<usize, DatapathError> {
        self.record(Op::ForgetConntrack(endpoint_ids.clone()), |s| {
            let mut forgotten = 0;
            for ep in endpoint_ids {
                forgotten += s.conntrack.remove(ep).unwrap_or(0);
            }
            Ok(forgotten)
        })
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

    fn conntrack_collector(&mut self) -> Result<Box<dyn ConntrackCollector>, DatapathError> {
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

    fn conntrack_used(&self, endpoint_id: u32) -> Result<u32, DatapathError> {
        Ok(self
            .state()
            .conntrack
            .get(&endpoint_id)
            .map_or(0, |n| *n as u32))
    }
}

impl ConntrackCollector for FakeDatapath {
    fn collect(&mut self, _now: u64) -> Result<Collected, DatapathError> {
        let s = self.state();
        Ok(Collected {
            expired: 0,
            per_endpoint: s.conntrack.iter().map(|(ep, n)| (*ep, *n as u32)).collect(),
            total: s.conntrack.values().sum::<usize>() as u32,
        })
    }
}
