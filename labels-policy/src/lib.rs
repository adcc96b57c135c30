//! bpfwall's policy library: labels and Cilium JSON/YAML in, a policy model
//! and the exact entries of the datapath's maps out.
//!
//! Pure: no aya, no Docker, no files. Everything else calls it.
//!
//! The modules follow the pipeline, syntax → model → compile → map entries.
//! Each imports only modules listed before it, so there is no import circle
//! (`tests/module_layout.rs` checks this on every build):
//!
//! - [`model`]: the policy model (rules, peers, ports, selectors, host-wide
//!   policies). Imports nothing of the crate.
//! - [`datapath_abi`]: the Rust mirror of `bpf-src/bpfwall_maps.h`. Imports
//!   nothing of the crate.
//! - [`http`]: HTTP requests as policy reads them (normal form of a
//!   target) and whether an HTTP rule matches one. Imports `model`.
//! - [`syntax`]: the label language, Cilium's format, and the one dispatch
//!   that says which of them reads a label. Imports `model`.
//! - [`identity`]: identities, their allocation, and which peer selects
//!   which identity. Imports `model`, `datapath_abi`.
//! - [`compile`](mod@compile): containers and rules to map entries. Imports
//!   `syntax`, `identity`, `model`, `datapath_abi`.
//! - [`decision`]: the datapath's decision over compiled maps, a port of the
//!   C program. Imports `compile`, `model`, `datapath_abi`.
//! - [`http_decision`]: the proxy's decision on HTTP requests over the
//!   compiled HTTP table. Imports `compile`, `http`, `model`.
//! - [`attribution`]: which rule decides a flow, read from the rules.
//!   Imports `identity`, `model`, `datapath_abi`.
//! - [`query`]: `check` and `explain` for the daemon. Imports all of the
//!   above.
//! - `testing`: the shared decision table, for tests only (this crate's unit
//!   tests, or other crates' tests through the `testing` feature). Imports
//!   all of the above.
//!
//! The two leaves are the vocabularies every stage speaks: `model` the
//! rules', `datapath_abi` the maps'. The model does not know the ABI (the
//! compiler owns a direction's datapath code), and the parsers produce model
//! types only ([`HostPolicy`] is model, not compiler output), so nothing
//! before the compiler depends on it. Inside `syntax` and `compile`, a child
//! never imports its parent: what two children share lives in a leaf child
//! (`syntax::prefix`).
//!
//! The compiler and rule attribution agree on what a peer means because
//! both call [`identity::peer_selects`]. The tests hold the compiled maps
//! (through [`decision::decide`]) and attribution to an independent
//! reference of the semantics (`tests/oracle`) that shares no code with
//! either.

pub mod attribution;
pub mod compile;
pub mod datapath_abi;
pub mod decision;
pub mod http;
pub mod http_decision;
pub mod identity;
pub mod model;
pub mod query;
pub mod syntax;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use compile::{compile, Attachment, CompileInput, Compiled, ContainerInput, ContainerReport};
pub use identity::{IdentityAllocator, IdentityKind};
pub use model::{
    Direction, HeaderMatch, HostPolicy, HttpPattern, HttpRule, LabelSet, Peer, PortSpec, Protocol,
    Rule, RuleOrigin, Selector, Verdict,
};
pub use syntax::{parse_rules, policy_from_labels, LabelError, LabelPolicy};
