//! The edge record: a compact account of who talked to whom (workloads by
//! their labels, peers outside by address), in which direction, on which
//! protocol and port, how often, allowed, denied or audited, first and
//! last seen. It is what `bpfwall advise` and `bpfwall map` read, and it
//! survives daemon restarts: saved in `<state dir>/flows/edges.json`
//! (0600, written to a temporary file, synced and renamed into place).
//!
//! Bounded: at most [`EDGE_CAPACITY`] edges. A new edge beyond it pushes
//! out the least recently seen one (counted in `evicted`), so a container
//! that scans ports or addresses costs at most the bound, never memory
//! without end; what it pushed out is what was seen longest ago.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bpfwall_sys::{io_error, IoError};
use serde::{Deserialize, Serialize};

use crate::api::flow::{Edge, EdgeKey, EdgeList, EdgeStats};

/// Edges kept at most (about 300 bytes each in memory and on disk).
pub const EDGE_CAPACITY: usize = 10_000;

/// The file's format.
#[derive(Debug, Serialize, Deserialize)]
struct EdgeFile {
    version: u32,
    evicted: u64,
    edges: Vec<Edge>,
}

/// Why the record could not be read or saved.
#[derive(Debug, thiserror::Error)]
pub enum EdgeRecordError {
    /// The file or its directory.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The file is not an edge record.
    #[error("{} is not an edge record", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// What kind of decision an observation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Allowed.
    Allowed,
    /// Dropped by policy.
    Denied,
    /// Passed in audit mode; policy would drop it.
    Audit,
}

/// The edges, in memory, saved on demand.
#[derive(Debug)]
pub struct EdgeRecord {
    edges: HashMap<EdgeKey, EdgeStats>,
    capacity: usize,
    evicted: u64,
    dirty: bool,
    path: Option<PathBuf>,
}

impl EdgeRecord {
    /// An empty record that is never saved (tests).
    pub fn in_memory(capacity: usize) -> EdgeRecord {
        EdgeRecord {
            edges: HashMap::new(),
            capacity,
            evicted: 0,
            dirty: false,
            path: None,
        }
    }

    /// The record saved under `state_dir` (empty when there is none yet).
    pub fn open(state_dir: &Path) -> Result<EdgeRecord, EdgeRecordError> {
        let dir = state_dir.join("flows");
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let path = dir.join("edges.json");
        let mut record = EdgeRecord::in_memory(EDGE_CAPACITY);
        record.path = Some(path.clone());
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: EdgeFile =
                    serde_json::from_slice(&bytes).map_err(|source| EdgeRecordError::Decode {
                        path: path.clone(),
                        source,
                    })?;
                record.evicted = file.evicted;
                for e in file.edges.into_iter().take(record.capacity) {
                    record.edges.insert(e.key, e.stats);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("read", &path)(e).into()),
        }
        Ok(record)
    }

    /// Records `count` decisions of one edge at `now` (unix seconds).
    pub fn observe(
        &mut self,
        key: EdgeKey,
        seen: Seen,
        count: u64,
        now: u64,
        local_name: Option<String>,
        peer_name: Option<String>,
    ) {
        if !self.edges.contains_key(&key) && self.edges.len() >= self.capacity {
            let oldest = self
                .edges
                .iter()
                .min_by_key(|(_, s)| s.last_seen_unix)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.edges.remove(&k);
                self.evicted += 1;
            }
        }
        let stats = self.edges.entry(key).or_insert_with(|| EdgeStats {
            first_seen_unix: now,
            ..EdgeStats::default()
        });
        match seen {
            Seen::Allowed => stats.allowed += count,
            Seen::Denied => stats.denied += count,
            Seen::Audit => stats.audit += count,
        }
        stats.last_seen_unix = now;
        if local_name.is_some() {
            stats.local_name = local_name;
        }
        if peer_name.is_some() {
            stats.peer_name = peer_name;
        }
        self.dirty = true;
    }

    /// Every edge, sorted.
    pub fn list(&self) -> EdgeList {
        let mut edges: Vec<Edge> = self
            .edges
            .iter()
            .map(|(k, s)| Edge {
                key: k.clone(),
                stats: s.clone(),
            })
            .collect();
        edges.sort_by(|a, b| a.key.cmp(&b.key));
        EdgeList {
            edges,
            evicted: self.evicted,
            capacity: self.capacity,
        }
    }

    /// Saves the record if it changed since the last save.
    pub fn save_if_changed(&mut self) -> Result<(), EdgeRecordError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let list = self.list();
        let file = EdgeFile {
            version: 1,
            evicted: list.evicted,
            edges: list.edges,
        };
        let text = serde_json::to_vec(&file).map_err(|source| EdgeRecordError::Decode {
            path: path.clone(),
            source,
        })?;
        let tmp = path.with_extension("json.tmp");
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_error("create", &tmp))?;
            f.write_all(&text).map_err(io_error("write", &tmp))?;
            f.sync_all().map_err(io_error("sync", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io_error("rename into place", &path))?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::flow::EdgePeer;

    fn key(port: u16) -> EdgeKey {
        EdgeKey {
            local: [("id".to_string(), "web".to_string())].into(),
            direction: "ingress".into(),
            peer: EdgePeer::Host,
            protocol: 6,
            port,
        }
    }

    #[test]
    fn counts_add_up_and_the_least_recently_seen_goes_first() {
        let mut r = EdgeRecord::in_memory(2);
        r.observe(key(80), Seen::Allowed, 3, 100, Some("web".into()), None);
        r.observe(key(81), Seen::Audit, 1, 101, None, None);
        r.observe(key(80), Seen::Denied, 2, 102, None, None);
        // 81 was seen longest ago: it goes.
        r.observe(key(82), Seen::Allowed, 1, 103, None, None);
        let list = r.list();
        assert_eq!(list.evicted, 1);
        let ports: Vec<u16> = list.edges.iter().map(|e| e.key.port).collect();
        assert_eq!(ports, vec![80, 82]);
        let web = &list.edges[0].stats;
        assert_eq!(
            (
                web.allowed,
                web.denied,
                web.first_seen_unix,
                web.last_seen_unix
            ),
            (3, 2, 100, 102)
        );
        assert_eq!(web.local_name.as_deref(), Some("web"));
    }

    #[test]
    fn the_record_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("flow-edges-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = EdgeRecord::open(&dir).unwrap();
        r.observe(key(80), Seen::Allowed, 5, 100, None, None);
        r.save_if_changed().unwrap();
        let again = EdgeRecord::open(&dir).unwrap();
        assert_eq!(again.list(), r.list());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
