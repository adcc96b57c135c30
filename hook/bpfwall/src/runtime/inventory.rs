//! The one place where runtime sources merge: which containers exist, and
//! who said so.
//!
//! A resync from a source replaces what that source said; a container one
//! source reports and another does not list stays while another source
//! vouches for it. The OCI hook reports a container before Docker lists it
//! (or for runtimes Docker does not know) and never reports its exit, so a
//! container known only from the hook stays while its process lives and
//! goes when it dies.
//!
//! A streaming source is *in sync* from its resync (the full list after
//! connecting) until it loses its runtime. While it is not, its exit
//! events are not coming: a container it reported whose init process is
//! gone (or is another process now: pids are reused, so the process start
//! time recorded with the pid is compared) is forgotten by
//! [`Inventory::prune_dead`] without waiting for the runtime, so its
//! identity and addresses leave the maps and are never inherited by a
//! container that reuses the address.
//!
//! **The first reconcile** waits until every streaming source the daemon
//! runs ([`Inventory::expect`]) has either listed its containers or found
//! its runtime absent ([`RuntimeEvent::Unavailable`]: no socket, or nothing
//! that answers as it should): [`Inventory::ready`]. A source that is off
//! does not hold the host up (a containerd-only host has no dockerd at
//! all); what it may own is kept closed instead of opened, see
//! [`Inventory::may_forget_unreported`].

use std::collections::{BTreeMap, BTreeSet};

use super::{ContainerRecord, RuntimeEvent, Source};

/// One container and the sources that reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What was last reported.
    pub record: ContainerRecord,
    /// Who reported it.
    pub sources: BTreeSet<Source>,
}

/// Every container some source reported, by id.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    entries: BTreeMap<String, Entry>,
    /// Sources that have listed their containers at least once.
    synced: BTreeSet<Source>,
    /// Sources connected to their runtime now.
    connected: BTreeSet<Source>,
    /// Sources whose list since they (re)connected has been taken in.
    in_sync: BTreeSet<Source>,
    /// The streaming sources the daemon runs.
    expected: BTreeSet<Source>,
    /// Sources whose runtime is not there now, and why.
    off: BTreeMap<Source, String>,
}

/// Is the record's init process still running, and still the same
/// process? `process_start(pid)` is the start time of the process that has
/// the pid now, None when none has.
fn same_process(record: &ContainerRecord, process_start: &impl Fn(u32) -> Option<u64>) -> bool {
    match process_start(record.pid) {
        None => false,
        Some(now) => record.pid_start_time.is_none_or(|then| then == now),
    }
}

impl Inventory {
    /// An empty inventory that waits for Docker's list.
    pub fn new() -> Self {
        Self::expecting(&[Source::Docker])
    }

    /// An empty inventory that waits for each of these sources to list its
    /// containers or to report its runtime absent.
    pub fn expecting(sources: &[Source]) -> Self {
        Inventory {
            expected: sources.iter().copied().collect(),
            ..Self::default()
        }
    }

    /// True once every expected source has listed its containers at least
    /// once or found its runtime absent: from then on a reconcile knows
    /// every peer that can be known, and never waits again.
    pub fn ready(&self) -> bool {
        self.expected
            .iter()
            .all(|s| self.synced.contains(s) || self.off.contains_key(s))
    }

    /// May a container with this key that no source reports now be
    /// forgotten (its links removed)? Only once the source that could own
    /// it has listed since the daemon started: until then it may be a
    /// container of a runtime that is late or away, and its links are kept
    /// (its packets meet no endpoint: closed, never opened). Containers only
    /// the hook reports (no source lists them) are forgotten when their
    /// process is.
    pub fn may_forget_unreported(&self, key: &str) -> bool {
        match super::key_source(key) {
            Some(source) => self.synced.contains(&source),
            None => true,
        }
    }

    /// Why a source is off, if it is.
    pub fn off_reason(&self, source: Source) -> Option<&str> {
        self.off.get(&source).map(String::as_str)
    }

    /// Takes in a source's event. `process_start(pid)` is the start time of
    /// the process that has the pid now (None: no such process). Returns
    /// true when the set of containers (or what is known of one) changed.
    pub fn apply(
        &mut self,
        event: RuntimeEvent,
        process_start: impl Fn(u32) -> Option<u64>,
    ) -> bool {
        match event {
            RuntimeEvent::Resync(source, records) => {
                self.off.remove(&source);
                self.synced.insert(source);
                self.connected.insert(source);
                self.in_sync.insert(source);
                let listed: BTreeSet<String> = records.iter().map(|r| r.id.clone()).collect();
                for record in records {
                    self.report(source, record);
                }
                // What the source no longer lists goes, unless another source
                // still vouches for it (the hook: while its process lives).
                self.entries.retain(|id, e| {
                    if !listed.contains(id) {
                        e.sources.remove(&source);
                    }
                    !e.sources.is_empty()
                        && (e.sources != BTreeSet::from([Source::OciHook])
                            || same_process(&e.record, &process_start))
                });
                true
            }
            RuntimeEvent::Upsert(source, record) => {
                self.report(source, record);
                true
            }
            // A runtime saying a container stopped is the last word on it.
            RuntimeEvent::Remove(_, id) => self.entries.remove(&id).is_some(),
            RuntimeEvent::Connected(source) => {
                // Not in sync until its list is in.
                self.off.remove(&source);
                self.connected.insert(source);
                self.in_sync.remove(&source);
                false
            }
            RuntimeEvent::Disconnected(source) => {
                // Everything stays as it is (enforcement goes on), except
                // what `prune_dead` finds dead.
                self.connected.remove(&source);
                self.in_sync.remove(&source);
                false
            }
            RuntimeEvent::Unavailable(source, reason) => {
                // Like a disconnect; and the first reconcile need not wait.
                let was_ready = self.ready();
                self.connected.remove(&source);
                self.in_sync.remove(&source);
                self.off.insert(source, reason);
                self.ready() && !was_ready
            }
        }
    }

    /// Records what `source` says of a container.
    pub fn report(&mut self, source: Source, record: ContainerRecord) {
        match self.entries.get_mut(&record.id) {
            Some(e) => {
                e.record = record;
                e.sources.insert(source);
            }
            None => {
                self.entries.insert(
                    record.id.clone(),
                    Entry {
                        record,
                        sources: BTreeSet::from([source]),
                    },
                );
            }
        }
    }

    /// Forgets containers whose init process is gone (or is another
    /// process now) and whose exit no source will report now: those known
    /// only from the hook, and those none of whose sources is in sync (a
    /// runtime that is disconnected, or reconnected but not yet listed).
    /// `process_start` as for [`Inventory::apply`]. Returns true if any went.
    pub fn prune_dead(&mut self, process_start: impl Fn(u32) -> Option<u64>) -> bool {
        let before = self.entries.len();
        let in_sync = &self.in_sync;
        self.entries.retain(|_, e| {
            same_process(&e.record, &process_start)
                || e.sources
                    .iter()
                    .any(|s| *s != Source::OciHook && in_sync.contains(s))
        });
        self.entries.len() != before
    }

    /// Has this source listed its containers at least once?
    pub fn synced(&self, source: Source) -> bool {
        self.synced.contains(&source)
    }

    /// Is this source connected to its runtime now?
    pub fn connected(&self, source: Source) -> bool {
        self.connected.contains(&source)
    }

    /// Has this source's list been taken in since it last (re)connected,
    /// and is it still connected? Only then do its events keep the
    /// inventory true.
    pub fn in_sync(&self, source: Source) -> bool {
        self.in_sync.contains(&source)
    }

    /// Every container, by id.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// One container.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, pid: u32) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: id.into(),
            pid,
            ..ContainerRecord::default()
        }
    }

    /// A record whose process start time was read.
    fn started(id: &str, pid: u32, start_time: u64) -> ContainerRecord {
        ContainerRecord {
            pid_start_time: Some(start_time),
            ..record(id, pid)
        }
    }

    /// Processes by pid, with their start times.
    fn processes(list: &[(u32, u64)]) -> impl Fn(u32) -> Option<u64> + '_ {
        move |pid| list.iter().find(|(p, _)| *p == pid).map(|(_, t)| *t)
    }

    #[test]
    fn a_resync_keeps_hook_containers_only_while_they_live() {
        let mut inv = Inventory::new();
        inv.report(Source::OciHook, record("live", 10));
        inv.report(Source::OciHook, record("dead", 11));
        inv.report(Source::Docker, record("gone", 12));
        inv.apply(
            RuntimeEvent::Resync(Source::Docker, vec![record("listed", 13)]),
            processes(&[(10, 1)]),
        );
        let ids: Vec<&str> = inv.entries().keys().map(String::as_str).collect();
        assert_eq!(ids, ["listed", "live"]);
        assert!(inv.synced(Source::Docker) && inv.connected(Source::Docker));
        assert!(inv.in_sync(Source::Docker));
    }

    #[test]
    fn docker_takes_over_a_hook_container_and_its_exit_removes_it() {
        let mut inv = Inventory::new();
        inv.report(Source::OciHook, record("c", 10));
        inv.apply(
            RuntimeEvent::Upsert(Source::Docker, record("c", 10)),
            processes(&[(10, 1)]),
        );
        assert_eq!(inv.get("c").unwrap().sources.len(), 2);
        // Not listed by a later resync, but the hook vouches while it lives.
        inv.apply(
            RuntimeEvent::Resync(Source::Docker, Vec::new()),
            processes(&[(10, 1)]),
        );
        assert!(inv.get("c").is_some());
        assert!(inv.apply(
            RuntimeEvent::Remove(Source::Docker, "c".into()),
            processes(&[(10, 1)])
        ));
        assert!(inv.get("c").is_none());
    }

    #[test]
    fn a_disconnect_keeps_the_living_and_is_not_in_sync_until_the_next_list() {
        let mut inv = Inventory::new();
        inv.apply(
            RuntimeEvent::Resync(Source::Docker, vec![started("a", 1, 100)]),
            processes(&[(1, 100)]),
        );
        assert!(inv.in_sync(Source::Docker));
        assert!(
            !inv.prune_dead(processes(&[])),
            "while docker is in sync, its exit events say who is gone"
        );
        assert!(!inv.apply(
            RuntimeEvent::Disconnected(Source::Docker),
            processes(&[(1, 100)])
        ));
        assert!(inv.get("a").is_some());
        assert!(inv.synced(Source::Docker));
        assert!(!inv.connected(Source::Docker) && !inv.in_sync(Source::Docker));
        assert!(
            !inv.prune_dead(processes(&[(1, 100)])),
            "a living container stays"
        );

        // Connected again, but not listed yet: still not in sync.
        inv.apply(RuntimeEvent::Connected(Source::Docker), processes(&[]));
        assert!(inv.connected(Source::Docker) && !inv.in_sync(Source::Docker));
        inv.apply(
            RuntimeEvent::Resync(Source::Docker, vec![started("a", 1, 100)]),
            processes(&[(1, 100)]),
        );
        assert!(inv.in_sync(Source::Docker));
    }

    #[test]
    fn docker_containers_that_die_while_docker_is_away_are_forgotten() {
        let mut inv = Inventory::new();
        inv.apply(
            RuntimeEvent::Resync(
                Source::Docker,
                vec![
                    started("lives", 1, 100),
                    started("dies", 2, 200),
                    started("pid-reused", 3, 300),
                    record("unknown-start", 4),
                ],
            ),
            processes(&[(1, 100), (2, 200), (3, 300), (4, 400)]),
        );
        inv.report(Source::OciHook, started("hook-too", 5, 500));
        inv.report(Source::Docker, started("hook-too", 5, 500));
        inv.apply(RuntimeEvent::Disconnected(Source::Docker), processes(&[]));
        // Pid 2 is gone; pid 3 runs another process now; pid 4 runs (no
        // start time was read for it); pid 5 (also reported by the hook) is gone.
        assert!(inv.prune_dead(processes(&[(1, 100), (3, 999), (4, 400)])));
        let ids: Vec<&str> = inv.entries().keys().map(String::as_str).collect();
        assert_eq!(ids, ["lives", "unknown-start"]);

        // Reconnected but not listed yet: still pruned.
        inv.apply(RuntimeEvent::Connected(Source::Docker), processes(&[]));
        assert!(inv.prune_dead(processes(&[(4, 400)])));
        let ids: Vec<&str> = inv.entries().keys().map(String::as_str).collect();
        assert_eq!(ids, ["unknown-start"]);
    }

    #[test]
    fn ready_once_every_source_listed_or_is_off() {
        let mut inv = Inventory::expecting(&Source::STREAMING);
        assert!(!inv.ready());
        // containerd's socket is absent: it does not hold the host up.
        assert!(!inv.apply(
            RuntimeEvent::Unavailable(Source::Containerd, "no socket at /x".into()),
            processes(&[])
        ));
        assert!(!inv.ready(), "docker has not listed yet");
        inv.apply(
            RuntimeEvent::Resync(Source::Docker, Vec::new()),
            processes(&[]),
        );
        assert!(inv.ready());
        assert_eq!(inv.off_reason(Source::Containerd), Some("no socket at /x"));

        // A containerd-only host: docker off, containerd listed.
        let mut inv = Inventory::expecting(&Source::STREAMING);
        inv.apply(
            RuntimeEvent::Resync(Source::Containerd, Vec::new()),
            processes(&[]),
        );
        assert!(!inv.ready());
        assert!(
            inv.apply(
                RuntimeEvent::Unavailable(Source::Docker, "no socket".into()),
                processes(&[])
            ),
            "the source that made the daemon ready asks for a reconcile"
        );
        assert!(inv.ready());
        // Docker's containers that no source reports are kept (closed)
        // until Docker has listed; containerd's are forgotten.
        assert!(!inv.may_forget_unreported("0123abcd"));
        assert!(inv.may_forget_unreported("containerd:default:web"));
        assert!(inv.may_forget_unreported("podman:0123"));
        inv.apply(RuntimeEvent::Connected(Source::Docker), processes(&[]));
        assert_eq!(inv.off_reason(Source::Docker), None);
        inv.apply(
            RuntimeEvent::Resync(Source::Docker, Vec::new()),
            processes(&[]),
        );
        assert!(inv.may_forget_unreported("0123abcd"));
    }

    #[test]
    fn hook_containers_go_when_their_process_does_or_is_another() {
        let mut inv = Inventory::new();
        inv.report(Source::OciHook, started("a", 1, 100));
        inv.report(Source::OciHook, record("b", 2));
        assert!(!inv.prune_dead(processes(&[(1, 100), (2, 1)])));
        assert!(inv.prune_dead(processes(&[(1, 101), (2, 1)])));
        assert_eq!(inv.entries().len(), 1);
        assert!(inv.prune_dead(processes(&[])));
        assert!(inv.entries().is_empty());
    }
}
