//! bpfwall's policy library: the label language and the policy model,
//! compiled to the exact entries of the datapath's maps.
//!
//! Pure: labels (and, later, Cilium JSON/YAML) in, a model and map entries
//! out. No aya, no Docker, no files: everything else calls it.

pub mod attribution;
pub mod compile;
pub mod datapath_abi;
pub mod decision;
pub mod identity;
pub mod model;
pub mod query;
pub mod syntax;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use compile::{compile, Attachment, CompileInput, Compiled, ContainerInput, ContainerReport};
pub use identity::{IdentityAllocator, IdentityKind};
pub use model::{
    Direction, HostPolicy, LabelSet, Peer, PortSpec, Protocol, Rule, RuleOrigin, Selector, Verdict,
};
pub use syntax::{parse_rules, policy_from_labels, LabelError, LabelPolicy};
