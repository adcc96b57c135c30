//! bpfwall's policy library: the label language and the policy model,
//! compiled to the exact entries of the datapath's maps.
//!
//! Pure: labels (and, later, Cilium JSON/YAML) in, a model and map entries
//! out. No aya, no Docker, no files: everything else calls it.

pub mod cilium;
pub mod compile;
pub mod datapath_abi;
pub mod decision;
pub mod identity;
pub mod label_syntax;
pub mod model;
pub mod query;

pub use compile::{compile, Attachment, CompileInput, Compiled, ContainerInput, ContainerReport};
pub use identity::{IdentityAllocator, IdentityKind};
pub use label_syntax::{parse_rules, policy_from_labels, LabelError, LabelPolicy};
pub use model::{
    Direction, HostPolicy, LabelSet, Peer, PortSpec, Protocol, Rule, RuleOrigin, Selector, Verdict,
};
