//! The policy languages, and the one place that decides which of them reads
//! a label.
//!
//! [`policy_from_labels`] dispatches every `bpfwall.*` label of a container:
//! `bpfwall.ingress[.<name>]` and `bpfwall.egress[.<name>]` to the label
//! language ([`labels`]), `bpfwall.policy` to the Cilium parser
//! ([`cilium`]), which also reads host-wide policy files. Both produce the
//! policy model ([`crate::model`]).
//!
//! Imports: [`crate::model`] and its own children. The children import the
//! model and the leaf `prefix` module, never this parent (that would be a
//! circle): the prefix parser they share lives in `prefix`, the
//! `bpfwall.policy` key in `cilium`, which names the rules it parses after
//! it; both are re-exported here.

pub mod cilium;
pub mod labels;
mod prefix;

pub use cilium::POLICY_LABEL;
pub use labels::{parse_port, parse_rules, LabelError};
pub use prefix::parse_prefix;

use crate::model::{Direction, LabelSet, Rule};

/// Every policy label key starts with this.
pub const LABEL_PREFIX: &str = "bpfwall.";

/// The label that puts a container in audit mode (`audit`) or keeps it
/// enforcing (`enforce`, the default): in audit mode what its policy would
/// drop is reported and passes.
pub const MODE_LABEL: &str = "bpfwall.mode";

/// The policy a container's own labels declare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelPolicy {
    /// Rules parsed from every valid policy label.
    pub rules: Vec<Rule>,
    /// Labels that failed to parse. Their directions are closed.
    pub errors: Vec<LabelError>,
    /// `bpfwall.mode=audit`: policy drops are reported and pass.
    pub audit: bool,
}

impl LabelPolicy {
    /// True when an error closes `direction`.
    pub fn has_error(&self, direction: Direction) -> bool {
        self.errors.iter().any(|e| e.closes.contains(&direction))
    }
}

/// Which direction a label key declares, or None when the key is not a
/// bpfwall key. Unknown `bpfwall.*` keys are an error: a typo must not
/// leave a container open.
fn label_direction(key: &str) -> Option<Result<Direction, LabelError>> {
    let rest = key.strip_prefix(LABEL_PREFIX)?;
    let (head, name) = match rest.split_once('.') {
        Some((head, name)) => (head, Some(name)),
        None => (rest, None),
    };
    if key == POLICY_LABEL || key == MODE_LABEL {
        return None;
    }
    let direction = match head {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => {
            return Some(Err(LabelError {
                label: key.to_string(),
                column: 1,
                message: format!(
                    "expected a label key bpfwall.ingress, bpfwall.egress, bpfwall.ingress.<name>, bpfwall.egress.<name>, bpfwall.policy or bpfwall.mode, found '{key}'"
                ),
                closes: Direction::ALL.to_vec(),
            }))
        }
    };
    if name == Some("") {
        return Some(Err(LabelError {
            label: key.to_string(),
            column: 1,
            message: format!("expected a name after '{LABEL_PREFIX}{head}.', found nothing"),
            closes: vec![direction],
        }));
    }
    Some(Ok(direction))
}

/// Reads every `bpfwall.*` label of a container. Labels are visited in key
/// order, so rule origins are stable.
pub fn policy_from_labels(labels: &LabelSet) -> LabelPolicy {
    let mut out = LabelPolicy::default();
    for (key, value) in labels {
        if key == MODE_LABEL {
            match value.trim() {
                "audit" => out.audit = true,
                "enforce" => {}
                other => out.errors.push(LabelError {
                    label: key.clone(),
                    column: 1,
                    message: format!("expected 'audit' or 'enforce', found '{other}'"),
                    closes: Direction::ALL.to_vec(),
                }),
            }
            continue;
        }
        if key == POLICY_LABEL {
            match cilium::parse_policy_label(value) {
                Ok(mut rules) => out.rules.append(&mut rules),
                Err(e) => out.errors.push(LabelError {
                    label: key.clone(),
                    column: column_of(value, e.line, e.column),
                    message: e.message,
                    closes: Direction::ALL.to_vec(),
                }),
            }
            continue;
        }
        match label_direction(key) {
            None => {}
            Some(Err(e)) => out.errors.push(e),
            Some(Ok(direction)) => match parse_rules(key, direction, value) {
                Ok(mut rules) => out.rules.append(&mut rules),
                Err(e) => out.errors.push(e),
            },
        }
    }
    out
}

/// The 1-based character column in `text` of a (line, column) position.
fn column_of(text: &str, line: usize, column: usize) -> usize {
    text.split('\n')
        .take(line.saturating_sub(1))
        .map(|l| l.chars().count() + 1)
        .sum::<usize>()
        + column
}
