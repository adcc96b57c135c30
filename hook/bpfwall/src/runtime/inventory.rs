//! The one place where runtime sources merge: which containers exist, and
//! who said so.
//!
//! A resync from a source replaces what that source said; a container one
//! source reports and another does not list stays while another source
//! vouches for it. The OCI hook reports a container before Docker lists it
//! (or for runtimes Docker does not know) and never reports its exit, so a
//! container known only from the hook stays while its process lives and
//! goes when it dies.

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
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in a source's event. `alive` tells whether a pid still runs.
    /// Returns true when the set of containers (or what is known of one)
    /// changed.
    pub fn apply(&mut self, event: RuntimeEvent, alive: impl Fn(u32) -> bool) -> bool {
        match event {
            RuntimeEvent::Resync(source, records) => {
                self.synced.insert(source);
                self.connected.insert(source);
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
                        && (e.sources != BTreeSet::from([Source::OciHook]) || alive(e.record.pid))
                });
                true
            }
            RuntimeEvent::Upsert(source, record) => {
                self.report(source, record);
                true
            }
            // A runtime saying a container stopped is the last word on it.
            RuntimeEvent::Remove(_, id) => self.entries.remove(&id).is_some(),
            RuntimeEvent::Disconnected(source) => {
                // Everything stays as it is: enforcement goes on.
                self.connected.remove(&source);
                false
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

    /// Forgets containers known only from the hook whose process is gone
    /// (no runtime event will tell). Returns true if any went.
    pub fn prune_dead(&mut self, alive: impl Fn(u32) -> bool) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.sources != BTreeSet::from([Source::OciHook]) || alive(e.record.pid));
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
            labels: Default::default(),
            addresses: Vec::new(),
            pid,
            ..ContainerRecord::default()
        }
    }

    #[test]
    fn a_resync_keeps_hook_containers_only_while_they_live() {
        let mut inv = Inventory::new();
        inv.report(Source::OciHook, record("live", 10));
        inv.report(Source::OciHook, record("dead", 11));
        inv.report(Source::Docker, record("gone", 12));
        inv.apply(
            RuntimeEvent::Resync(Source::Docker, vec![record("listed", 13)]),
            |pid| pid == 10,
        );
        let ids: Vec<&str> = inv.entries().keys().map(String::as_str).collect();
        assert_eq!(ids, ["listed", "live"]);
        assert!(inv.synced(Source::Docker) && inv.connected(Source::Docker));
    }

    #[test]
    fn docker_takes_over_a_hook_container_and_its_exit_removes_it() {
        let mut inv = Inventory::new();
        inv.report(Source::OciHook, record("c", 10));
        inv.apply(
            RuntimeEvent::Upsert(Source::Docker, record("c", 10)),
            |_| true,
        );
        assert_eq!(inv.get("c").unwrap().sources.len(), 2);
        // Not listed by a later resync, but the hook vouches while it lives.
        inv.apply(RuntimeEvent::Resync(Source::Docker, Vec::new()), |_| true);
        assert!(inv.get("c").is_some());
        assert!(inv.apply(RuntimeEvent::Remove(Source::Docker, "c".into()), |_| true));
        assert!(inv.get("c").is_none());
    }

    #[test]
    fn a_disconnect_keeps_everything() {
        let mut inv = Inventory::new();
        inv.apply(
            RuntimeEvent::Resync(Source::Docker, vec![record("a", 1)]),
            |_| true,
        );
        assert!(!inv.apply(RuntimeEvent::Disconnected(Source::Docker), |_| true));
        assert!(inv.get("a").is_some());
        assert!(inv.synced(Source::Docker) && !inv.connected(Source::Docker));
        assert!(
            !inv.prune_dead(|_| false),
            "docker's containers are not pruned"
        );
    }
}
