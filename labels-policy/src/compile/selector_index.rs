//! Which identities a rule's peer selects, found without testing every
//! identity: container identities indexed by label pair. The answer is by
//! definition the set [`peer_selects`] accepts; the index only narrows the
//! candidates.
//!
//! Imports: [`crate::identity`] (identities and the one peer-matching
//! function) and [`crate::model`].

use std::collections::BTreeMap;

use crate::identity::{peer_selects, IdentityKind};
use crate::model::Peer;

/// Container identities by label pair, so a selector is matched against the
/// few identities that carry one of its pairs instead of all of them.
pub(crate) struct SelectorIndex<'a> {
    by_pair: BTreeMap<(&'a str, &'a str), Vec<u32>>,
}

impl<'a> SelectorIndex<'a> {
    pub(crate) fn new(identities: &'a BTreeMap<u32, IdentityKind>) -> Self {
        let mut by_pair: BTreeMap<(&str, &str), Vec<u32>> = BTreeMap::new();
        for (id, kind) in identities {
            if let IdentityKind::Containers(labels) = kind {
                for (k, v) in labels {
                    by_pair
                        .entry((k.as_str(), v.as_str()))
                        .or_default()
                        .push(*id);
                }
            }
        }
        SelectorIndex { by_pair }
    }

    /// The identities `peer` selects (the same set as testing `peer_selects`
    /// on every identity).
    pub(crate) fn select(&self, peer: &Peer, identities: &BTreeMap<u32, IdentityKind>) -> Vec<u32> {
        if let Peer::Endpoints(sel) = peer {
            if !sel.match_labels.is_empty() {
                // Candidates: the identities with the rarest of the selector's pairs.
                let smallest = sel
                    .match_labels
                    .iter()
                    .map(|(k, v)| {
                        self.by_pair
                            .get(&(k.as_str(), v.as_str()))
                            .map_or(&[][..], Vec::as_slice)
                    })
                    .min_by_key(|c| c.len())
                    .unwrap_or(&[]);
                return smallest
                    .iter()
                    .filter(|id| {
                        identities
                            .get(id)
                            .is_some_and(|kind| peer_selects(peer, kind))
                    })
                    .copied()
                    .collect();
            }
        }
        identities
            .iter()
            .filter(|(_, kind)| peer_selects(peer, kind))
            .map(|(id, _)| *id)
            .collect()
    }
}
