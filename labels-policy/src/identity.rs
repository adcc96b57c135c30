//! Identities: numbers the datapath compares instead of addresses.
//!
//! Containers with the same label set share one identity, as in Cilium. The
//! host and the world are reserved; each address prefix a rule names gets a
//! CIDR identity of its own. Allocation is remembered across reconciles so
//! the maps change only where the world did, and it can adopt the numbers a
//! previous daemon left pinned.
//!
//! What a peer means is stated over identities, so [`peer_selects`], the one
//! function that says whether a rule's peer selects an identity, lives here
//! beside [`IdentityKind`]: the compiler's selector index and rule
//! attribution both ask it, and neither imports the other.
//!
//! Imports: [`crate::model`] and [`crate::datapath_abi`] (the reserved and
//! first numbers of each range).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::datapath_abi::{
    IDENTITY_FIRST_CIDR, IDENTITY_FIRST_CONTAINER, IDENTITY_HOST, IDENTITY_WORLD,
};
use crate::model::{LabelSet, Peer};

/// The last container identity (the CIDR range starts after it).
pub const IDENTITY_LAST_CONTAINER: u32 = IDENTITY_FIRST_CIDR - 1;
/// The last CIDR identity.
pub const IDENTITY_LAST_CIDR: u32 = 0x01ff_ffff;

/// What an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityKind {
    /// The Docker host.
    Host,
    /// Everything else.
    World,
    /// Containers carrying exactly these labels.
    Containers(LabelSet),
    /// Addresses in this prefix that no container or host address claims.
    Cidr(IpNet),
}

/// Does a CIDR peer select the CIDR identity of `q`? (Inside the prefix and
/// inside none of its excepts.)
fn cidr_selects(prefix: &IpNet, except: &[IpNet], q: &IpNet) -> bool {
    prefix.contains(q) && !except.iter().any(|e| e.contains(q))
}

/// Does `peer` select an identity of this kind? The one definition of what a
/// peer means: the compiler's selector index and rule attribution both ask
/// it. `Peer::Any` selects every kind (the compiler writes it as the
/// wildcard identity rather than one entry per identity); `Peer::World`
/// selects the world and every CIDR identity, as Cilium's `world` entity
/// does; a CIDR peer selects only CIDR identities, never a container or the
/// host even when their address is inside the prefix.
pub fn peer_selects(peer: &Peer, kind: &IdentityKind) -> bool {
    match (peer, kind) {
        (Peer::Any, _) => true,
        (Peer::Host, IdentityKind::Host) => true,
        (Peer::World, IdentityKind::World | IdentityKind::Cidr(_)) => true,
        (Peer::Endpoints(sel), IdentityKind::Containers(labels)) => sel.matches(labels),
        (Peer::Cidr { prefix, except }, IdentityKind::Cidr(q)) => cidr_selects(prefix, except, q),
        _ => false,
    }
}

/// A name for an identity in logs and `status`.
pub fn describe(identity: u32) -> &'static str {
    match identity {
        IDENTITY_HOST => "host",
        IDENTITY_WORLD => "world",
        i if (IDENTITY_FIRST_CONTAINER..=IDENTITY_LAST_CONTAINER).contains(&i) => "container",
        i if (IDENTITY_FIRST_CIDR..=IDENTITY_LAST_CIDR).contains(&i) => "cidr",
        _ => "reserved",
    }
}

/// Hands out identities and remembers them.
#[derive(Debug, Clone, Default)]
pub struct IdentityAllocator {
    containers: BTreeMap<LabelSet, u32>,
    cidrs: BTreeMap<IpNet, u32>,
    /// The numbers in use, kept beside the maps so allocation stays cheap.
    used_containers: BTreeSet<u32>,
    used_cidrs: BTreeSet<u32>,
}

/// The allocator ran out of numbers in a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free {kind} identity is left (range {first}..={last})")]
pub struct IdentityExhausted {
    /// "container" or "cidr".
    pub kind: &'static str,
    /// First number of the range.
    pub first: u32,
    /// Last number of the range.
    pub last: u32,
}

/// The lowest number in first..=last not in `used` (which holds only numbers
/// of that range): the first gap, found by walking the sorted set.
fn lowest_free(used: &BTreeSet<u32>, first: u32, last: u32) -> Option<u32> {
    let mut candidate = first;
    for &n in used.range(first..=last) {
        if n != candidate {
            break;
        }
        candidate = n.checked_add(1)?;
    }
    (candidate <= last).then_some(candidate)
}

impl IdentityAllocator {
    /// An allocator that has handed out nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes over a container identity a previous run allocated. Returns
    /// false (and changes nothing) when the number is out of range or already
    /// stands for other labels, or the labels already have another number.
    pub fn adopt_container(&mut self, labels: &LabelSet, identity: u32) -> bool {
        if !(IDENTITY_FIRST_CONTAINER..=IDENTITY_LAST_CONTAINER).contains(&identity) {
            return false;
        }
        if let Some(existing) = self.containers.get(labels) {
            return *existing == identity;
        }
        if self.used_containers.contains(&identity) {
            return false;
        }
        self.containers.insert(labels.clone(), identity);
        self.used_containers.insert(identity);
        true
    }

    /// The identity of containers with these labels, allocated on first use.
    pub fn container(&mut self, labels: &LabelSet) -> Result<u32, IdentityExhausted> {
        if let Some(id) = self.containers.get(labels) {
            return Ok(*id);
        }
        let id = lowest_free(
            &self.used_containers,
            IDENTITY_FIRST_CONTAINER,
            IDENTITY_LAST_CONTAINER,
        )
        .ok_or(IdentityExhausted {
            kind: "container",
            first: IDENTITY_FIRST_CONTAINER,
            last: IDENTITY_LAST_CONTAINER,
        })?;
        self.containers.insert(labels.clone(), id);
        self.used_containers.insert(id);
        Ok(id)
    }

    /// The identity of an address prefix, allocated on first use.
    pub fn cidr(&mut self, prefix: IpNet) -> Result<u32, IdentityExhausted> {
        if let Some(id) = self.cidrs.get(&prefix) {
            return Ok(*id);
        }
        let id = lowest_free(&self.used_cidrs, IDENTITY_FIRST_CIDR, IDENTITY_LAST_CIDR).ok_or(
            IdentityExhausted {
                kind: "cidr",
                first: IDENTITY_FIRST_CIDR,
                last: IDENTITY_LAST_CIDR,
            },
        )?;
        self.cidrs.insert(prefix, id);
        self.used_cidrs.insert(id);
        Ok(id)
    }

    /// Forgets every identity not in use any more.
    pub fn retain(&mut self, labels: &BTreeSet<&LabelSet>, prefixes: &BTreeSet<IpNet>) {
        self.containers.retain(|l, _| labels.contains(l));
        self.cidrs.retain(|p, _| prefixes.contains(p));
        self.used_containers = self.containers.values().copied().collect();
        self.used_cidrs = self.cidrs.values().copied().collect();
    }
}

/// Labels that name one instance rather than what a container is: never
/// part of its identity unless the daemon is told otherwise. Compose's
/// per-replica and per-run labels (so replicas of one service share an
/// identity), the OCI image annotations an image carries, and what
/// containerd's clients record per container.
pub const DEFAULT_EXCLUDED_LABELS: &[&str] = &[
    "com.docker.compose.container-number",
    "com.docker.compose.oneoff",
    "com.docker.compose.config-hash",
    "com.docker.compose.version",
    "com.docker.compose.slug",
    "com.docker.compose.replace",
    "com.docker.compose.depends_on",
    "com.docker.compose.image",
    "com.docker.compose.project.config_files",
    "com.docker.compose.project.working_dir",
    "com.docker.compose.project.environment_file",
    "org.opencontainers.image.*",
    // What containerd clients record per container: `ctr run` copies the
    // image's stop signal (`io.containerd.image.config.stop-signal`),
    // nerdctl its own bookkeeping (name, hostname, state directory...).
    "io.containerd.*",
    "nerdctl/*",
];

/// Which of a container's labels make its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityLabels {
    /// Keys left out: exact, or a prefix when it ends in `*`.
    pub exclude: Vec<String>,
    /// Keep the labels a container only has from its image (off by
    /// default: two services built from one image are not one identity).
    pub include_image_labels: bool,
}

impl Default for IdentityLabels {
    fn default() -> Self {
        IdentityLabels {
            exclude: DEFAULT_EXCLUDED_LABELS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            include_image_labels: false,
        }
    }
}

impl IdentityLabels {
    /// Is this key left out of identities?
    pub fn excludes(&self, key: &str) -> bool {
        if key.starts_with(crate::syntax::LABEL_PREFIX) {
            // A container's own policy is always part of what it is.
            return false;
        }
        self.exclude
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => key == pattern,
            })
    }

    /// The identity-relevant labels of a container with `labels`, whose
    /// image carries `image_labels`. A label with the image's key and value
    /// came from the image (a `--label` of the same key with another value
    /// is the container's own, and kept).
    pub fn relevant(&self, labels: &LabelSet, image_labels: &LabelSet) -> LabelSet {
        labels
            .iter()
            .filter(|(k, v)| {
                !self.excludes(k)
                    && (self.include_image_labels
                        || k.starts_with(crate::syntax::LABEL_PREFIX)
                        || image_labels.get(*k) != Some(*v))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_and_images_do_not_split_identities() {
        let l = |pairs: &[(&str, &str)]| -> LabelSet {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let config = IdentityLabels::default();
        let image = l(&[
            ("maintainer", "x"),
            ("org.opencontainers.image.title", "web"),
        ]);
        let replica = |n: &str| {
            l(&[
                ("com.docker.compose.project", "shop"),
                ("com.docker.compose.service", "web"),
                ("com.docker.compose.container-number", n),
                ("com.docker.compose.config-hash", "abc"),
                ("maintainer", "x"),
                ("org.opencontainers.image.title", "web"),
                ("bpfwall.ingress", "allow from any"),
            ])
        };
        let one = config.relevant(&replica("1"), &image);
        assert_eq!(one, config.relevant(&replica("2"), &image));
        assert_eq!(
            one.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "bpfwall.ingress",
                "com.docker.compose.project",
                "com.docker.compose.service"
            ]
        );
        // A label given at run time with another value than the image's stays.
        let own = config.relevant(&l(&[("maintainer", "me")]), &image);
        assert_eq!(own, l(&[("maintainer", "me")]));
        let keep = IdentityLabels {
            exclude: vec!["tier*".into()],
            include_image_labels: true,
        };
        let kept = keep.relevant(
            &l(&[("maintainer", "x"), ("tier", "a"), ("bpfwall.egress", "x")]),
            &image,
        );
        assert_eq!(kept, l(&[("maintainer", "x"), ("bpfwall.egress", "x")]));
    }

    #[test]
    fn lowest_free_finds_the_first_gap() {
        let used: BTreeSet<u32> = [256, 257, 259].into();
        assert_eq!(lowest_free(&used, 256, 300), Some(258));
        assert_eq!(lowest_free(&BTreeSet::new(), 256, 300), Some(256));
        let full: BTreeSet<u32> = (256..=258).collect();
        assert_eq!(lowest_free(&full, 256, 258), None);
    }

    #[test]
    fn retain_frees_numbers_for_reuse() {
        let mut a = IdentityAllocator::new();
        let l1: LabelSet = [("id".to_string(), "1".to_string())].into();
        let l2: LabelSet = [("id".to_string(), "2".to_string())].into();
        assert_eq!(a.container(&l1).unwrap(), 256);
        assert_eq!(a.container(&l2).unwrap(), 257);
        a.retain(&[&l2].into(), &BTreeSet::new());
        assert_eq!(a.container(&l1).unwrap(), 256);
        assert!(!a.adopt_container(&[("id".to_string(), "3".to_string())].into(), 257));
    }
}
