//! The reconciler on a fake datapath and a fake host: the order of a
//! change, failing map writes, endpoint-id reuse, containers that go away
//! mid-reconcile. No root, no BPF, no Docker.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bpfwall_datapath::fake::{FakeDatapath, Op};
use bpfwall_datapath::MapContents;
use bpfwall_sys::cgroup::CgroupError;
use bpfwall_sys::IoError;
use labels_policy::datapath_abi::{self as abi, EndpointKey};

use super::Reconciler;
use crate::agent::host::{CgroupPlace, Host};
use crate::api::{DaemonError, EnforceRequest};
use crate::runtime::{ContainerRecord, RuntimeEvent, Source};

#[derive(Debug, Default)]
struct HostState {
    /// pid -> its cgroup; a pid missing here has no cgroup (it exited).
    cgroups: BTreeMap<u32, CgroupPlace>,
    alive: BTreeSet<u32>,
    netns: BTreeMap<u32, Vec<IpAddr>>,
}

/// A host whose processes and cgroups the test makes up.
#[derive(Debug, Clone, Default)]
struct FakeHost(Arc<Mutex<HostState>>);

impl FakeHost {
    fn state(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.0.lock().unwrap()
    }

    /// A running process `pid` in cgroup `cgroup_id`.
    fn spawn(&self, pid: u32, cgroup_id: u64) {
        let mut s = self.state();
        s.alive.insert(pid);
        s.cgroups.insert(
            pid,
            CgroupPlace {
                dir: PathBuf::from(format!("/sys/fs/cgroup/test/{cgroup_id}")),
                id: cgroup_id,
            },
        );
    }

    fn exit(&self, pid: u32) {
        let mut s = self.state();
        s.alive.remove(&pid);
        s.cgroups.remove(&pid);
    }
}

impl Host for FakeHost {
    fn cgroup_of(&mut self, pid: u32) -> Result<CgroupPlace, CgroupError> {
        self.state().cgroups.get(&pid).cloned().ok_or_else(|| {
            CgroupError::Read(bpfwall_sys::io_error(
                "read",
                std::path::Path::new("/proc/0/cgroup"),
            )(std::io::Error::from(
                std::io::ErrorKind::NotFound,
            )))
        })
    }

    fn forbidden_cgroups(&mut self) -> Result<Vec<PathBuf>, CgroupError> {
        Ok(vec![
            PathBuf::from("/sys/fs/cgroup"),
            PathBuf::from("/sys/fs/cgroup/bpfwall"),
        ])
    }

    fn alive(&self, pid: u32) -> bool {
        self.state().alive.contains(&pid)
    }

    // The fake's records carry no start time, so only being alive counts.
    fn start_time(&self, pid: u32) -> Option<u64> {
        self.alive(pid).then_some(0)
    }

    fn netns_addresses(&self, pid: u32) -> Result<Vec<IpAddr>, IoError> {
        Ok(self.state().netns.get(&pid).cloned().unwrap_or_default())
    }

    fn addresses(&self) -> Vec<IpAddr> {
        vec!["10.0.0.1".parse().unwrap()]
    }
}

struct World {
    reconciler: Reconciler<FakeDatapath, FakeHost>,
    datapath: FakeDatapath,
    host: FakeHost,
}

fn record(name: &str, pid: u32, addr: &str, labels: &[(&str, &str)]) -> ContainerRecord {
    ContainerRecord {
        id: format!("{name}-0123456789abcdef"),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        addresses: vec![addr.parse().unwrap()],
        pid,
        start_time: None,
    }
}

impl World {
    fn new() -> World {
        let datapath = FakeDatapath::new();
        let host = FakeHost::default();
        let reconciler = Reconciler::new(
            datapath.clone(),
            host.clone(),
            Default::default(),
            MapContents::default(),
        );
        World {
            reconciler,
            datapath,
            host,
        }
    }

    /// Docker lists these containers (their processes run).
    fn docker_lists(&mut self, records: &[(&ContainerRecord, u64)]) {
        for (r, cgroup) in records {
            self.host.spawn(r.pid, *cgroup);
        }
        let records = records.iter().map(|(r, _)| (*r).clone()).collect();
        self.reconciler
            .handle(RuntimeEvent::Resync(Source::Docker, records));
        self.reconciler.reconcile();
    }

    fn journal(&self) -> Vec<Op> {
        self.datapath
            .state()
            .journal
            .iter()
            .map(|(op, _)| op.clone())
            .collect()
    }

    fn clear_journal(&self) {
        self.datapath.state().journal.clear();
    }
}

const SERVER: &[(&str, &str)] = &[
    ("id", "server"),
    ("bpfwall.ingress", "allow from id=client port 80/tcp"),
];

#[test]
fn a_new_container_is_found_only_once_its_policy_and_peers_are_in() {
    let mut w = World::new();
    let client = record("client", 20, "172.18.0.3", &[("id", "client")]);
    w.docker_lists(&[(&client, 200)]);
    w.clear_journal();

    let server = record("server", 10, "172.18.0.2", SERVER);
    w.host.spawn(10, 100);
    w.reconciler
        .handle(RuntimeEvent::Upsert(Source::Docker, server.clone()));
    w.reconciler.reconcile();

    let journal = w.datapath.state().journal.clone();
    let ops: Vec<&str> = journal.iter().map(|(op, _)| op.kind()).collect();
    assert_eq!(
        ops,
        [
            "reset_counters",
            "upsert_policy",
            "upsert_ipcache",
            "upsert_endpoints",
            "attach",
            "remove_endpoints",
            "remove_ipcache",
            "remove_policy",
            "bump_policy_revision",
            "forget_conntrack",
        ],
        "{journal:#?}"
    );
    // Wherever the server's endpoint entry exists, its allow and the
    // client's address are already there.
    let key = EndpointKey { cgroup_id: 100 };
    for (op, contents) in &journal {
        if let Some(info) = contents.endpoints.get(&key) {
            assert!(
                contents
                    .policy
                    .keys()
                    .any(|k| k.local_identity == info.identity),
                "after {op:?}: endpoint without its policy"
            );
            assert_eq!(contents.ipcache.len(), 3, "after {op:?}: peers missing");
        }
    }
    assert!(w
        .datapath
        .state()
        .links
        .iter()
        .any(|l| l.owner == server.id && l.cgroup_id == 100));
}

#[test]
fn a_failing_map_write_is_reported_and_the_next_reconcile_recovers() {
    let mut w = World::new();
    w.datapath.state().fail_kind = Some("upsert_policy");
    let server = record("server", 10, "172.18.0.2", SERVER);
    let client = record("client", 20, "172.18.0.3", &[("id", "client")]);
    w.docker_lists(&[(&server, 100), (&client, 200)]);
    let error = w.reconciler.last_error().unwrap().to_string();
    assert!(error.contains("upsert_policy"), "{error}");
    assert!(
        w.datapath.state().contents.endpoints.is_empty(),
        "nothing after the failed write went in"
    );
    assert!(w.datapath.state().links.is_empty());
    // The hook would be refused with the kind that says so.
    assert!(matches!(
        w.reconciler.admitted(&server.id),
        Err(DaemonError::ApplyFailed { .. })
    ));

    w.datapath.state().fail_kind = None;
    w.reconciler.reconcile();
    assert_eq!(w.reconciler.last_error(), None);
    let state = w.datapath.state();
    assert_eq!(state.contents.endpoints.len(), 2);
    assert_eq!(state.links.len(), 4);
    assert!(!state.contents.policy.is_empty());
}

#[test]
fn a_freed_endpoint_id_is_handed_out_again_with_zeroed_counters() {
    let mut w = World::new();
    let a = record("a", 10, "172.18.0.2", &[("id", "a")]);
    let b = record("b", 11, "172.18.0.3", &[("id", "b")]);
    w.docker_lists(&[(&a, 100), (&b, 101)]);
    assert_eq!(w.reconciler.endpoint_id(&a.id), Some(1));
    assert_eq!(w.reconciler.endpoint_id(&b.id), Some(2));

    w.clear_journal();
    w.host.exit(10);
    w.reconciler
        .handle(RuntimeEvent::Remove(Source::Docker, a.id.clone()));
    w.reconciler.reconcile();
    assert!(w
        .journal()
        .contains(&Op::ForgetConntrack(BTreeSet::from([1]))));
    assert!(w.datapath.state().links.iter().all(|l| l.owner != a.id));

    w.clear_journal();
    let c = record("c", 12, "172.18.0.4", &[("id", "c")]);
    w.host.spawn(12, 102);
    w.reconciler
        .handle(RuntimeEvent::Upsert(Source::Docker, c.clone()));
    w.reconciler.reconcile();
    assert_eq!(
        w.reconciler.endpoint_id(&c.id),
        Some(1),
        "the lowest free id"
    );
    let journal = w.journal();
    let reset = journal.iter().position(|op| *op == Op::ResetCounters(1));
    let endpoint = journal
        .iter()
        .position(|op| matches!(op, Op::UpsertEndpoints(n) if *n > 0));
    assert!(
        reset.is_some() && reset < endpoint,
        "counters zeroed before the endpoint goes in: {journal:?}"
    );
}

#[test]
fn a_container_that_exits_between_list_and_attach_leaves_nothing() {
    let mut w = World::new();
    let gone = record("gone", 10, "172.18.0.2", SERVER);
    let stays = record("stays", 11, "172.18.0.3", &[("id", "client")]);
    // Listed by Docker, but its process is gone before the reconcile
    // reads its cgroup.
    w.host.spawn(11, 101);
    w.reconciler.handle(RuntimeEvent::Resync(
        Source::Docker,
        vec![gone.clone(), stays.clone()],
    ));
    w.reconciler.reconcile();
    assert_eq!(w.reconciler.last_error(), None);
    assert_eq!(
        w.reconciler.problem(&gone.id),
        None,
        "an exit is no problem"
    );
    assert_eq!(w.reconciler.endpoint_id(&gone.id), None);
    let state = w.datapath.state();
    assert!(state.links.iter().all(|l| l.owner != gone.id));
    assert_eq!(state.contents.endpoints.len(), 1, "only the one that runs");
}

#[test]
fn a_container_whose_cgroup_vanishes_at_attach_is_cleaned_up_by_its_exit() {
    let mut w = World::new();
    let server = record("server", 10, "172.18.0.2", SERVER);
    w.host.spawn(10, 100);
    w.datapath
        .state()
        .vanished_cgroups
        .insert(PathBuf::from("/sys/fs/cgroup/test/100"));
    w.reconciler
        .handle(RuntimeEvent::Resync(Source::Docker, vec![server.clone()]));
    w.reconciler.reconcile();
    let problem = w.reconciler.problem(&server.id).unwrap().to_string();
    assert!(problem.contains("/sys/fs/cgroup/test/100"), "{problem}");
    assert!(w.datapath.state().links.is_empty());

    // Its die event follows: everything of it goes.
    w.host.exit(10);
    w.reconciler
        .handle(RuntimeEvent::Remove(Source::Docker, server.id.clone()));
    w.reconciler.reconcile();
    assert!(w.reconciler.container_ids().is_empty());
    assert_eq!(w.reconciler.problem(&server.id), None);
    let state = w.datapath.state();
    assert!(state.contents.endpoints.is_empty());
    assert!(state.contents.policy.is_empty());
    assert!(state.links.is_empty());
}

#[test]
fn the_hook_is_refused_before_docker_was_listed_and_answered_after() {
    let mut w = World::new();
    let request = EnforceRequest {
        id: "hooked-0123456789".into(),
        name: "hooked".into(),
        pid: 30,
        labels: [("bpfwall.ingress".to_string(), "allow form id=x".to_string())].into(),
    };
    assert!(matches!(
        w.reconciler.admit(request.clone()),
        Err(DaemonError::DaemonBusy { .. })
    ));
    w.docker_lists(&[]);
    w.host.spawn(30, 300);
    w.host
        .state()
        .netns
        .insert(30, vec!["172.18.0.9".parse().unwrap()]);
    w.reconciler.admit(request.clone()).unwrap();
    w.reconciler.reconcile();
    match w.reconciler.admitted(&request.id) {
        Err(DaemonError::PolicyInvalid {
            container,
            problems,
        }) => {
            assert_eq!(container, "hooked");
            assert_eq!(problems[0].label, "bpfwall.ingress");
            assert_eq!(problems[0].column, 7);
        }
        other => panic!("expected policy_invalid, got {other:?}"),
    }
    // Closed, not open: the endpoint is in with its ingress in error.
    let state = w.datapath.state();
    let info = state.contents.endpoints[&EndpointKey { cgroup_id: 300 }];
    assert_ne!(info.flags & abi::EP_ERROR_INGRESS, 0);
}

#[test]
fn containers_known_only_from_the_hook_go_when_their_process_does() {
    let mut w = World::new();
    w.docker_lists(&[]);
    w.host.spawn(30, 300);
    let request = EnforceRequest {
        id: "hooked-0123456789".into(),
        name: "hooked".into(),
        pid: 30,
        labels: [("id".to_string(), "h".to_string())].into(),
    };
    w.reconciler.admit(request.clone()).unwrap();
    w.reconciler.reconcile();
    assert!(w.reconciler.admitted(&request.id).is_ok());
    assert!(!w.reconciler.prune_dead_hook_containers());
    w.host.exit(30);
    assert!(w.reconciler.prune_dead_hook_containers());
    w.reconciler.reconcile();
    assert!(w.datapath.state().links.is_empty());
    assert!(w.datapath.state().contents.endpoints.is_empty());
}
