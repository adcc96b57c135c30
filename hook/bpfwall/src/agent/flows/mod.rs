//! What the datapath saw, for people and tools: the flow events read from
//! the ring buffer on a task of its own, described ([`describe`]: names,
//! labels, the deciding rule or the drop reason), streamed to every
//! `bpfwall monitor`, and learned as edges ([`edges`]) that `bpfwall
//! advise` ([`advise`]) and `bpfwall map` read.
//!
//! The task never blocks the datapath: a full ring costs the events it
//! could not hold (counted in the kernel, reported as lost-event records),
//! a slow monitor loses the records it did not read (reported to it), and
//! the exact counters never come from here.

pub mod advise;
pub mod describe;
pub mod edges;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bpfwall_datapath::{EventReader, MetricsReader};
use bpfwall_sys::error_chain;
use labels_policy::datapath_abi::{self as abi, FlowEvent};
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, watch};

use self::edges::{EdgeRecord, Seen};
use super::snapshot::Snapshot;
use crate::api::flow::MonitorRecord;

/// Records waiting for a slow monitor before it loses some.
const MONITOR_BACKLOG: usize = 8192;
/// Lost events are looked for, and the edge record saved, this often.
const TICK: Duration = Duration::from_secs(1);
/// The edge record is saved (when it changed) every this many ticks.
const SAVE_EVERY: u32 = 5;
/// Snapshots kept to describe events of earlier revisions.
const REVISIONS_KEPT: usize = 4;

/// What the API server reads: the stream and the record.
#[derive(Debug, Clone)]
pub struct FlowHub {
    /// Every record, to every monitor.
    pub records: broadcast::Sender<Arc<MonitorRecord>>,
    /// The edges learned.
    pub edges: Arc<Mutex<EdgeRecord>>,
}

impl FlowHub {
    /// A hub over a record.
    pub fn new(edges: EdgeRecord) -> FlowHub {
        FlowHub {
            records: broadcast::channel(MONITOR_BACKLOG).0,
            edges: Arc::new(Mutex::new(edges)),
        }
    }
}

/// Nanoseconds to add to CLOCK_MONOTONIC to get unix time, now.
fn wall_offset_ns() -> i128 {
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    wall - mono
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The snapshots of the last few revisions: an event is described with
/// the compile that was in force when it was decided.
#[derive(Debug, Default)]
struct Revisions {
    by_revision: BTreeMap<u32, Arc<Snapshot>>,
    latest: Arc<Snapshot>,
}

impl Revisions {
    fn update(&mut self, snap: Arc<Snapshot>) {
        self.by_revision.insert(snap.policy_revision, snap.clone());
        while self.by_revision.len() > REVISIONS_KEPT {
            self.by_revision.pop_first();
        }
        self.latest = snap;
    }

    fn for_event(&self, event: &FlowEvent) -> &Snapshot {
        self.by_revision
            .get(&event.policy_revision)
            .unwrap_or(&self.latest)
    }
}

/// Handles one event: described, streamed, learned.
fn handle(hub: &FlowHub, revisions: &Revisions, event: &FlowEvent, offset: i128, now: u64) {
    let described = describe::describe(event, revisions.for_event(event), offset);
    if let Some((key, local_name, peer_name)) = described.edge {
        let seen = match event.kind {
            abi::EVENT_ALLOWED => Seen::Allowed,
            abi::EVENT_AUDIT => Seen::Audit,
            _ => Seen::Denied,
        };
        if let Ok(mut edges) = hub.edges.lock() {
            edges.observe(
                key,
                seen,
                1 + u64::from(event.suppressed),
                now,
                local_name,
                peer_name,
            );
        }
    }
    // No monitor listening is not an error.
    let _ = hub
        .records
        .send(Arc::new(MonitorRecord::Flow(described.record)));
}

/// Reads the ring until the daemon stops.
pub async fn run(
    reader: EventReader,
    metrics: Option<Arc<MetricsReader>>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    hub: FlowHub,
) {
    // SAFETY: the reader owns the ring's map, whose descriptor stays open
    // and the same for as long as the reader lives, which the AsyncFd owns.
    let registered =
        unsafe { AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(fd) => fd,
        Err(e) => {
            let (_, e) = e.into_parts();
            tracing::error!(error = %e, "cannot watch the flow event ring: no flow events");
            return;
        }
    };
    let mut revisions = Revisions::default();
    revisions.update(snapshots.borrow().clone());
    let mut lost_seen = metrics
        .as_ref()
        .and_then(|m| m.read().ok())
        .map_or(0, |m| m.events_lost);
    let mut tick = tokio::time::interval(TICK);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!(error = %e, "the flow event ring failed: no more flow events");
                        return;
                    }
                };
                if snapshots.has_changed().unwrap_or(false) {
                    revisions.update(snapshots.borrow_and_update().clone());
                }
                let offset = wall_offset_ns();
                let now = now_unix();
                guard.get_inner_mut().drain(|event| handle(&hub, &revisions, &event, offset, now));
                guard.clear_ready();
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                revisions.update(snapshots.borrow_and_update().clone());
            }
            _ = tick.tick() => {
                if let Some(m) = &metrics {
                    if let Ok(counters) = m.read() {
                        if counters.events_lost > lost_seen {
                            let _ = hub.records.send(Arc::new(MonitorRecord::LostEvents {
                                time_unix_ns: std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map_or(0, |d| d.as_nanos() as u64),
                                count: counters.events_lost - lost_seen,
                                source: "datapath".into(),
                            }));
                            lost_seen = counters.events_lost;
                        }
                    }
                }
                ticks += 1;
                if ticks.is_multiple_of(SAVE_EVERY) {
                    let saved = hub.edges.lock().map(|mut e| e.save_if_changed());
                    if let Ok(Err(e)) = saved {
                        tracing::warn!(error = %error_chain(&e), "cannot save the edge record");
                    }
                }
            }
        }
    }
}
