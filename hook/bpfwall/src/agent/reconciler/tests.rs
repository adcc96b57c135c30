//! The reconciler on a fake datapath and a fake host: the order of a
//! change, failing and full maps, endpoint-id reuse, containers that go
//! away mid-reconcile, pids reused, identities of replicas, whose network
//! a container is in. No root, no BPF, no Docker.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bpfwall_datapath::fake::{FakeDatapath, Op};
use bpfwall_sys::cgroup::CgroupError;
use bpfwall_sys::IoError;
use labels_policy::datapath_abi::{self as abi, EndpointKey};
use labels_policy::Direction;

use super::{Reconciler, ReconcilerConfig};
use crate::agent::host::{CgroupPlace, Host};
use crate::api::{DaemonError, EnforceRequest};
use crate::runtime::{ContainerRecord, RuntimeEvent, Source};

#[derive(Debug, Default)]
struct HostState {
    /// pid -> its cgroup; a pid missing here has no cgroup (it exited).
    cgroups: BTreeMap<u32, CgroupPlace>,
    /// pid -> start time, for the processes that run.
    alive: BTreeMap<u32, u64>,
    /// pid -> network namespace (default: one of its own, pid + 1000).
    netns: BTreeMap<u32, u64>,
    /// pid -> the addresses in its namespace.
    addresses: BTreeMap<u32, Vec<IpAddr>>,
    /// Paths where a namespace is mounted (Docker's sandbox keys) -> it.
    mounted: BTreeMap<PathBuf, u64>,
}

/// The device of the fake's namespaces (nsfs); other paths have another.
const NSFS_DEV: u64 = 4;

/// The host's own network namespace in the fake.
const HOST_NETNS: u64 = 1;

/// A host whose processes and cgroups the test makes up.
#[derive(Debug, Clone, Default)]
struct FakeHost(Arc<Mutex<HostState>>);

impl FakeHost {
    fn state(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.0.lock().unwrap()
    }

    /// A running process `pid` (started at time `pid`) in cgroup `cgroup_id`.
    fn spawn(&self, pid: u32, cgroup_id: u64) {
        let mut s = self.state();
        s.alive.insert(pid, u64::from(pid));
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
        self.state().alive.contains_key(&pid)
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        self.state().alive.get(&pid).copied()
    }

    fn netns(&self, pid: u32) -> Result<u64, IoError> {
        Ok(self
            .state()
            .netns
            .get(&pid)
            .copied()
            .unwrap_or(u64::from(pid) + 1000))
    }

    fn own_netns(&self) -> Result<u64, IoError> {
        Ok(HOST_NETNS)
    }

    fn netns_addresses(&self, pid: u32) -> Result<Vec<IpAddr>, IoError> {
        Ok(self
            .state()
            .addresses
            .get(&pid)
            .cloned()
            .unwrap_or_default())
    }

    fn addresses(&self) -> Vec<IpAddr> {
        vec!["10.0.0.1".parse().unwrap()]
    }

    fn netns_at(&self, path: &std::path::Path) -> Result<(u64, u64), IoError> {
        let text = path.to_string_lossy();
        if let Some(pid) = text
            .strip_prefix("/proc/")
            .and_then(|t| t.strip_suffix("/ns/net"))
            .and_then(|p| p.parse::<u32>().ok())
        {
            if self.alive(pid) {
                return Ok((NSFS_DEV, self.netns(pid)?));
            }
        } else if let Some(ns) = self.state().mounted.get(path) {
            return Ok((NSFS_DEV, *ns));
        } else if text.starts_with("/var/run/docker/netns/") {
            // The sandbox file before Docker mounts the namespace on it.
            return Ok((30, 77));
        }
        Err(bpfwall_sys::io_error("stat", path)(std::io::Error::from(
            std::io::ErrorKind::NotFound,
        )))
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
        pid_start_time: Some(u64::from(pid)),
        ..ContainerRecord::default()
    }
}

impl World {
    fn new() -> World {
        let datapath = FakeDatapath::new();
        let host = FakeHost::default();
        let reconciler =
            Reconciler::new(datapath.clone(), host.clone(), ReconcilerConfig::default());
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
        self.reconcile();
    }

    /// A reconcile and its finish, as the loop runs them.
    fn reconcile(&mut self) {
        self.reconciler.reconcile();
        self.reconciler.finish();
    }

    /// Docker starts one more container.
    fn docker_starts(&mut self, r: &ContainerRecord, cgroup: u64) {
        self.host.spawn(r.pid, cgroup);
        self.reconciler
            .handle(RuntimeEvent::Upsert(Source::Docker, r.clone()));
        self.reconcile();
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

    fn identity_of(&self, cgroup_id: u64) -> u32 {
        self.datapath.state().active.endpoints[&EndpointKey { cgroup_id }].identity
    }
}

const SERVER: &[(&str, &str)] = &[
    ("id", "server"),
    ("bpfwall.ingress", "allow from id=client port 80/tcp"),
];

#[test]
fn a_change_is_staged_then_flipped_and_its_leftovers_go_last() {
    let mut w = World::new();
    let client = record("client", 20, "172.18.0.3", &[("id", "client")]);
    w.docker_lists(&[(&client, 200)]);
    w.clear_journal();

    let server = record("server", 10, "172.18.0.2", SERVER);
    w.docker_starts(&server, 100);

    let journal = w.datapath.state().journal.clone();
    let ops: Vec<&str> = journal.iter().map(|(op, _)| op.kind()).collect();
    assert_eq!(
        ops,
        [
            "set_conntrack_shares",
            "reset_counters",
            "stage",
            "attach",
            "flip",
            "prune",
            "forget_conntrack",
        ],
        "{journal:#?}"
    );
    // Until the flip, nothing of the server is in force: its new programs
    // meet no endpoint (and drop). From the flip on, its endpoint, its
    // policy and its peers are in force together.
    let key = EndpointKey { cgroup_id: 100 };
    for (op, active) in &journal {
        let in_force = active.endpoints.get(&key);
        if matches!(op, Op::Flip | Op::Prune | Op::ForgetConntrack(_)) {
            let info = in_force.expect("the server's endpoint after the flip");
            assert!(active
                .policy
                .keys()
                .any(|k| k.local_identity == info.identity));
            assert_eq!(
                active.ipcache.len(),
                3,
                "after {op:?}: both peers and the host"
            );
        } else {
            assert!(in_force.is_none(), "{op:?}: in force before the flip");
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
fn a_failing_stage_keeps_what_is_in_force_closes_the_newcomer_and_recovers() {
    let mut w = World::new();
    let client = record("client", 20, "172.18.0.3", &[("id", "client")]);
    w.docker_lists(&[(&client, 200)]);
    let before = w.datapath.state().active.clone();

    w.datapath.state().fail_kind = Some("stage");
    let server = record("server", 10, "172.18.0.2", SERVER);
    w.docker_starts(&server, 100);
    let error = w.reconciler.last_error().unwrap().to_string();
    assert!(error.contains("stage"), "{error}");
    assert_eq!(w.datapath.state().active, before, "what was in force stays");
    // The server's programs are on anyway: with no endpoint in force, its
    // packets are dropped, not let through.
    assert!(w
        .datapath
        .state()
        .links
        .iter()
        .any(|l| l.owner == server.id));
    assert!(matches!(
        w.reconciler.admitted(&server.id),
        Err(DaemonError::ApplyFailed { .. })
    ));

    w.datapath.state().fail_kind = None;
    w.reconcile();
    assert_eq!(w.reconciler.last_error(), None);
    let state = w.datapath.state();
    assert_eq!(state.active.endpoints.len(), 2);
    assert_eq!(state.links.len(), 4);
    assert!(!state.active.policy.is_empty());
}

#[test]
fn a_full_policy_map_closes_what_would_grow_it_until_there_is_room() {
    let mut w = World::new();
    let client = record("client", 20, "172.18.0.3", &[("id", "client")]);
    let server = record("server", 10, "172.18.0.2", SERVER);
    w.docker_lists(&[(&client, 200), (&server, 100)]);
    let held = w.datapath.state().active.policy.len();
    assert_eq!(held, 1);
    w.datapath.state().policy_capacity = Some(held);

    // A second server wants entries of its own: they do not fit.
    let other = record(
        "other",
        30,
        "172.18.0.4",
        &[
            ("id", "other"),
            ("bpfwall.ingress", "allow from id=client port 22/tcp"),
        ],
    );
    w.docker_starts(&other, 300);
    assert_eq!(w.reconciler.last_error(), None, "closing is not a failure");
    let closures = w.reconciler.closures().to_vec();
    assert_eq!(closures.len(), 1);
    assert_eq!(closures[0].direction, Direction::Ingress);
    assert_eq!(closures[0].map, abi::MAP_POLICY);
    // Closed, not open: its ingress is in error; the first server keeps its policy.
    let state = w.datapath.state().active.clone();
    let other_ep = state.endpoints[&EndpointKey { cgroup_id: 300 }];
    assert_ne!(other_ep.flags & abi::EP_ERROR_INGRESS, 0);
    assert_eq!(state.policy.len(), 1);
    let status = w
        .reconciler
        .snapshot()
        .status("pins", None, Default::default());
    let shown = status.endpoints.iter().find(|e| e.name == "other").unwrap();
    assert_eq!(shown.ingress.state, "closed (map bpfwall_policy_v2 full)");
    assert!(matches!(
        w.reconciler.admitted(&other.id),
        Err(DaemonError::NotPoliced { .. })
    ));

    // Room again (the first server goes): the next reconcile recovers.
    w.host.exit(10);
    w.reconciler
        .handle(RuntimeEvent::Remove(Source::Docker, server.id.clone()));
    w.reconcile();
    assert!(w.reconciler.closures().is_empty());
    let state = w.datapath.state().active.clone();
    let other_ep = state.endpoints[&EndpointKey { cgroup_id: 300 }];
    assert_eq!(other_ep.flags & abi::EP_ERROR_INGRESS, 0);
    assert_eq!(state.policy.len(), 1);
}

#[test]
fn an_endpoint_id_given_back_is_not_reused_before_its_conntrack_is_forgotten() {
    let mut w = World::new();
    let a = record("a", 10, "172.18.0.2", &[("id", "a")]);
    let b = record("b", 11, "172.18.0.3", &[("id", "b")]);
    w.docker_lists(&[(&a, 100), (&b, 101)]);
    assert_eq!(w.reconciler.endpoint_id(&a.id), Some(1));
    w.datapath.state().conntrack.insert(1, 5);

    // a goes and c, on a's address, comes in the same reconcile.
    w.clear_journal();
    w.host.exit(10);
    let c = record("c", 12, "172.18.0.2", &[("id", "c")]);
    w.host.spawn(12, 102);
    w.reconciler
        .handle(RuntimeEvent::Remove(Source::Docker, a.id.clone()));
    w.reconciler
        .handle(RuntimeEvent::Upsert(Source::Docker, c.clone()));
    w.reconcile();
    assert_ne!(w.reconciler.endpoint_id(&c.id), Some(1), "not a's slot yet");
    assert!(w
        .journal()
        .contains(&Op::ForgetConntrack(BTreeSet::from([1]))));
    assert_eq!(
        w.datapath.state().conntrack.get(&1),
        None,
        "a's flows are gone"
    );

    // Now the slot is free, with zeroed counters for whoever gets it.
    w.clear_journal();
    let d = record("d", 13, "172.18.0.5", &[("id", "d")]);
    w.docker_starts(&d, 103);
    assert_eq!(w.reconciler.endpoint_id(&d.id), Some(1));
    let journal = w.journal();
    let reset = journal.iter().position(|op| *op == Op::ResetCounters(1));
    let flip = journal.iter().position(|op| *op == Op::Flip);
    assert!(reset.is_some() && reset < flip, "{journal:?}");
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
    w.reconcile();
    assert_eq!(w.reconciler.last_error(), None);
    assert_eq!(
        w.reconciler.problem(&gone.id),
        None,
        "an exit is no problem"
    );
    assert_eq!(w.reconciler.endpoint_id(&gone.id), None);
    let state = w.datapath.state();
    assert!(state.links.iter().all(|l| l.owner != gone.id));
    assert_eq!(state.active.endpoints.len(), 1, "only the one that runs");
}

#[test]
fn a_pid_reused_by_another_process_is_never_attached() {
    let mut w = World::new();
    let mut server = record("server", 10, "172.18.0.2", SERVER);
    server.pid_start_time = Some(7);
    // pid 10 runs, but it started at 10, not 7: another process now.
    w.docker_lists(&[(&server, 100)]);
    assert_eq!(w.reconciler.endpoint_id(&server.id), None);
    assert!(w.datapath.state().links.is_empty());
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
    w.reconcile();
    let problem = w.reconciler.problem(&server.id).unwrap().to_string();
    assert!(problem.contains("/sys/fs/cgroup/test/100"), "{problem}");
    assert!(w.datapath.state().links.is_empty());

    // Its die event follows: everything of it goes.
    w.host.exit(10);
    w.reconciler
        .handle(RuntimeEvent::Remove(Source::Docker, server.id.clone()));
    w.reconcile();
    assert!(w.reconciler.container_ids().is_empty());
    assert_eq!(w.reconciler.problem(&server.id), None);
    let state = w.datapath.state();
    assert!(state.active.endpoints.is_empty());
    assert!(state.active.policy.is_empty());
    assert!(state.links.is_empty());
}

fn hook_request(name: &str, pid: u32, labels: &[(&str, &str)]) -> EnforceRequest {
    EnforceRequest {
        id: format!("{name}-0123456789"),
        name: name.into(),
        pid,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        pid_start_time: Some(u64::from(pid)),
        image_labels: Default::default(),
        joins: None,
        endpoint_ids: Vec::new(),
        runtime: None,
        namespace: String::new(),
    }
}

#[test]
fn the_hook_is_refused_before_docker_was_listed_and_answered_after() {
    let mut w = World::new();
    let request = hook_request("hooked", 30, &[("bpfwall.ingress", "allow form id=x")]);
    assert!(matches!(
        w.reconciler.admit(request.clone()),
        Err(DaemonError::DaemonBusy { .. })
    ));
    w.docker_lists(&[]);
    w.host.spawn(30, 300);
    w.host
        .state()
        .addresses
        .insert(30, vec!["172.18.0.9".parse().unwrap()]);
    w.reconciler.admit(request.clone()).unwrap();
    w.reconcile();
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
    // Closed, not open: the endpoint is in force with its ingress in error.
    let state = w.datapath.state();
    let info = state.active.endpoints[&EndpointKey { cgroup_id: 300 }];
    assert_ne!(info.flags & abi::EP_ERROR_INGRESS, 0);
}

#[test]
fn the_hook_refuses_a_pid_that_is_no_longer_its_process() {
    let mut w = World::new();
    w.docker_lists(&[]);
    w.host.spawn(30, 300);
    let mut request = hook_request("hooked", 30, &[("id", "h")]);
    request.pid_start_time = Some(29);
    assert!(matches!(
        w.reconciler.admit(request),
        Err(DaemonError::NotPoliced { .. })
    ));
}

#[test]
fn containers_known_only_from_the_hook_go_when_their_process_does() {
    let mut w = World::new();
    w.docker_lists(&[]);
    w.host.spawn(30, 300);
    let request = hook_request("hooked", 30, &[("id", "h")]);
    w.reconciler.admit(request.clone()).unwrap();
    w.reconcile();
    assert!(w.reconciler.admitted(&request.id).is_ok());
    assert!(!w.reconciler.prune_dead_hook_containers());
    w.host.exit(30);
    assert!(w.reconciler.prune_dead_hook_containers());
    w.reconcile();
    assert!(w.datapath.state().links.is_empty());
    assert!(w.datapath.state().active.endpoints.is_empty());
}

#[test]
fn replicas_of_a_compose_service_share_one_identity() {
    let mut w = World::new();
    let replica = |n: u32| {
        let mut r = record(
            &format!("shop_web_{n}"),
            40 + n,
            &format!("172.18.0.{}", 10 + n),
            &[
                ("com.docker.compose.project", "shop"),
                ("com.docker.compose.service", "web"),
                ("com.docker.compose.container-number", &n.to_string()),
                ("com.docker.compose.config-hash", "f00"),
                ("maintainer", "someone"),
            ],
        );
        r.image_labels = [("maintainer".to_string(), "someone".to_string())].into();
        r
    };
    let (r1, r2, r3) = (replica(1), replica(2), replica(3));
    w.docker_lists(&[(&r1, 401), (&r2, 402), (&r3, 403)]);
    let id = w.identity_of(401);
    assert_eq!(w.identity_of(402), id);
    assert_eq!(w.identity_of(403), id);
}

#[test]
fn whose_namespace_a_container_is_in_decides_whose_addresses_it_has() {
    let mut w = World::new();
    let owner = record("owner", 50, "172.18.0.2", &[("id", "owner")]);
    // Shares the owner's namespace (and so its address) with labels of its own.
    let mut joiner = record("joiner", 51, "172.18.0.2", &[("id", "joiner")]);
    joiner.joins = Some(owner.id.clone());
    let hostnet = ContainerRecord {
        addresses: Vec::new(),
        ..record("hostnet", 52, "10.0.0.1", &[("id", "hostnet")])
    };
    w.host.state().netns.insert(51, 1050);
    w.host.state().netns.insert(52, HOST_NETNS);
    w.docker_lists(&[(&owner, 500), (&joiner, 501), (&hostnet, 502)]);
    let state = w.datapath.state().active.clone();
    let key = abi::ipcache_key(&"172.18.0.2/32".parse().unwrap());
    assert_eq!(
        state.ipcache[&key],
        w.identity_of(500),
        "peers see the owner"
    );
    // Each may send from what it has: the joiner from the owner's address,
    // the host-network container from the host's.
    let joiner_ep = state.endpoints[&EndpointKey { cgroup_id: 501 }].endpoint_id;
    let hostnet_ep = state.endpoints[&EndpointKey { cgroup_id: 502 }];
    assert!(state
        .sources
        .contains(&abi::source_key(joiner_ep, "172.18.0.2".parse().unwrap())));
    assert!(state.sources.contains(&abi::source_key(
        hostnet_ep.endpoint_id,
        "10.0.0.1".parse().unwrap()
    )));
    assert_ne!(hostnet_ep.flags & abi::EP_HOST_NETWORK, 0);
    let status = w
        .reconciler
        .snapshot()
        .status("pins", None, Default::default());
    let network = |name: &str| {
        status
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .unwrap()
            .network
            .clone()
    };
    assert_eq!(network("owner"), "own");
    assert_eq!(network("joiner"), "joined owner");
    assert_eq!(network("hostnet"), "host");
}

#[test]
fn a_newer_container_owns_an_address_a_stale_one_still_claims() {
    let mut w = World::new();
    let old = record("old", 60, "172.18.0.7", &[("id", "old")]);
    let new = record("new", 61, "172.18.0.7", &[("id", "new")]);
    w.docker_lists(&[(&old, 600), (&new, 601)]);
    let key = abi::ipcache_key(&"172.18.0.7/32".parse().unwrap());
    let owner = w.datapath.state().active.ipcache[&key];
    assert_eq!(
        owner,
        w.identity_of(601),
        "never inherited from the older one"
    );
}

#[test]
fn a_rule_on_a_label_left_out_of_identities_is_named_in_status() {
    let mut w = World::new();
    let server = record(
        "server",
        10,
        "172.18.0.2",
        &[
            ("id", "server"),
            (
                "bpfwall.ingress",
                "allow from com.docker.compose.container-number=1",
            ),
        ],
    );
    w.docker_lists(&[(&server, 100)]);
    let status = w
        .reconciler
        .snapshot()
        .status("pins", None, Default::default());
    assert!(
        status.warnings.iter().any(|w| w
            .contains("bpfwall.ingress[0] selects on label 'com.docker.compose.container-number'")),
        "{:?}",
        status.warnings
    );
}

#[test]
fn a_late_runtime_never_opens_its_containers_and_an_absent_one_holds_nothing_up() {
    use bpfwall_datapath::LinkPin;
    // An earlier daemon left links for a Docker container and a containerd
    // one; this daemon runs both sources.
    let w = World::new();
    let (datapath, host) = (w.datapath.clone(), w.host.clone());
    let mut reconciler =
        Reconciler::new(datapath.clone(), host.clone(), ReconcilerConfig::default());
    reconciler.expect_sources(&Source::STREAMING);
    for (owner, cgroup) in [("0123abcd", 700), ("containerd:default:web", 701)] {
        for direction in Direction::ALL {
            datapath.state().links.insert(LinkPin {
                owner: owner.into(),
                cgroup_id: cgroup,
                direction,
            });
        }
    }
    // containerd lists (nothing); docker has not said a word: no reconcile.
    reconciler.handle(RuntimeEvent::Resync(Source::Containerd, Vec::new()));
    assert!(!reconciler.synced());
    assert!(
        reconciler.admit(hook_request("early", 60, &[])).is_err(),
        "the hook waits for every runtime that answers"
    );
    // Docker's socket is absent: the host goes on without it.
    reconciler.handle(RuntimeEvent::Unavailable(
        Source::Docker,
        "no socket at /x".into(),
    ));
    assert!(reconciler.synced());
    reconciler.reconcile();
    reconciler.finish();
    let owners: BTreeSet<String> = datapath
        .state()
        .links
        .iter()
        .map(|l| l.owner.clone())
        .collect();
    assert_eq!(
        owners,
        BTreeSet::from(["0123abcd".to_string()]),
        "the containerd container containerd no longer lists is gone; docker's stays closed until docker lists"
    );
    // Docker comes and lists nothing: its container is gone too.
    reconciler.handle(RuntimeEvent::Connected(Source::Docker));
    reconciler.handle(RuntimeEvent::Resync(Source::Docker, Vec::new()));
    reconciler.reconcile();
    reconciler.finish();
    assert!(datapath.state().links.is_empty());

    // A containerd container this daemon attached itself (through the
    // hook, containerd's source never listing) goes with its process: only
    // what an earlier daemon left waits for its source.
    let mut fresh = Reconciler::new(datapath.clone(), host.clone(), ReconcilerConfig::default());
    fresh.expect_sources(&Source::STREAMING);
    fresh.handle(RuntimeEvent::Resync(Source::Docker, Vec::new()));
    fresh.handle(RuntimeEvent::Unavailable(
        Source::Containerd,
        "no socket".into(),
    ));
    fresh.reconcile();
    fresh.finish();
    host.spawn(80, 800);
    let mut request = hook_request("ctr", 80, &[]);
    request.runtime = Some(crate::runtime::Runtime::Containerd);
    request.namespace = "default".into();
    let key = fresh.admit(request).unwrap();
    assert_eq!(key, "containerd:default:ctr-0123456789");
    fresh.reconcile();
    fresh.finish();
    assert_eq!(datapath.state().links.len(), 2);
    host.state().alive.remove(&80);
    host.state().cgroups.remove(&80);
    assert!(fresh.prune_dead_hook_containers());
    fresh.reconcile();
    fresh.finish();
    assert!(
        datapath.state().links.is_empty(),
        "{:?}",
        datapath.state().links
    );
    let snapshot = reconciler.snapshot();
    assert!(
        snapshot.sources.iter().all(|s| s.synced),
        "{:?}",
        snapshot.sources
    );
}

/// The wrapper's hook reports a Docker container before Docker lists it:
/// the plugin endpoint whose sandbox is its namespace is bound to it then
/// (and opens once it is policed); an endpoint whose sandbox is another
/// namespace, or not mounted yet, is not; a container that joins another's
/// namespace binds nothing; nor does a pid that is no longer the hook's.
#[test]
fn the_hook_binds_the_plugin_endpoints_whose_sandbox_is_its_namespace() {
    use crate::runtime::Runtime;
    let mut w = World::new();
    w.docker_lists(&[]);
    let sandbox = |n: &str| PathBuf::from(format!("/var/run/docker/netns/{n}"));
    w.host.spawn(30, 300);
    w.host.spawn(31, 310);
    w.host.spawn(32, 320);
    {
        let mut s = w.host.state();
        s.netns.insert(30, 5030);
        s.netns.insert(31, 5031);
        // 32 joins 30's namespace (--network container:...).
        s.netns.insert(32, 5030);
        s.mounted.insert(sandbox("aaa"), 5030);
        s.mounted.insert(sandbox("bbb"), 5031);
    }
    w.reconciler
        .set_network_defaults(bpfwall_plugin::NetworkDefaults {
            default_deny_endpoints: BTreeSet::new(),
            sandbox_keys: BTreeMap::from([
                ("ep-a".to_string(), sandbox("aaa").display().to_string()),
                ("ep-b".to_string(), sandbox("bbb").display().to_string()),
                // Joined, its namespace not mounted yet.
                ("ep-c".to_string(), sandbox("ccc").display().to_string()),
            ]),
        });
    let docker = |name: &str, pid: u32| {
        let mut r = hook_request(name, pid, &[("id", name)]);
        r.runtime = Some(Runtime::Docker);
        r.namespace = "moby".into();
        r
    };
    // A pid that is no longer the hook's process binds nothing.
    let mut stale = docker("stale", 31);
    stale.pid_start_time = Some(1);
    assert!(w.reconciler.admit(stale).is_err());

    let a = docker("a", 30);
    let key = w.reconciler.admit(a).unwrap();
    let mut joiner = docker("joiner", 32);
    joiner.joins = Some("a-0123456789".into());
    let joiner_key = w.reconciler.admit(joiner).unwrap();
    w.reconcile();
    w.reconciler.admitted(&key).unwrap();
    let bindings = w.reconciler.bindings();
    assert_eq!(
        bindings.holders.keys().collect::<Vec<_>>(),
        ["ep-a"],
        "{bindings:?}"
    );
    let (name, state) = bindings.state_of("ep-a").unwrap();
    assert_eq!(name, "a");
    assert!(state.opens(), "{state:?}");
    assert_eq!(w.reconciler.gated_endpoints(&key), ["ep-a"]);
    assert!(w.reconciler.gated_endpoints(&joiner_key).is_empty());

    // An endpoint another container holds is not taken by a second hook
    // in the same namespace (a restart of the same pid's hook aside).
    let mut again = docker("other", 30);
    again.id = "other-0123456789".into();
    let other = w.reconciler.admit(again).unwrap();
    w.reconcile();
    assert!(w.reconciler.gated_endpoints(&other).is_empty());
    assert_eq!(w.reconciler.bindings().state_of("ep-a").unwrap().0, "a");
}
