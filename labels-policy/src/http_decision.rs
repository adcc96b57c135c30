//! The proxy's decision on HTTP requests, over the compiled HTTP table
//! (`Compiled::http`): product code the daemon's proxy and `query` use.
//!
//! A connection from a client identity to a server identity's TCP port is
//! *restricted* on a side (the server's ingress rules, the client's egress
//! rules) when an HTTP deny for that peer and port exists there, or an HTTP
//! allow does and no L3/L4 allow lifts it. A restricted connection is
//! parsed and each request decided; one restricted on neither side passes
//! as it is (every request would be allowed). On each side:
//!
//! 1. an HTTP deny for the peer and port that matches the request: denied
//!    (the first in rule order is named);
//! 2. an L3/L4 allow for the peer and port: allowed (it lifts the HTTP
//!    rules; the first in rule order is named);
//! 3. an HTTP allow for the peer and port that matches: allowed (the first
//!    rule in rule order, and its first matching HTTP rule, are named);
//! 4. otherwise: denied by default.
//!
//! A request passes when neither side denies it.
//!
//! Imports: [`crate::compile`](mod@crate::compile) (the table),
//! [`crate::http`] (matching) and [`crate::model`].

use serde::{Deserialize, Serialize};

use crate::compile::{Compiled, HttpEntry, HttpKey};
use crate::http::{rule_matches, HttpRequest};
use crate::model::{Direction, Verdict};

/// What one side says of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum RequestVerdict {
    /// Allowed: by an HTTP rule, or by an L3/L4 allow that lifts them.
    Allowed {
        /// The rule's origin (`label[index]`, `file spec[i].ingress[j]`).
        origin: String,
        /// The matching HTTP rule as written, or None for an L3/L4 allow.
        http: Option<String>,
    },
    /// Denied by an HTTP deny.
    Denied {
        /// The rule's origin.
        origin: String,
        /// The matching HTTP rule as written.
        http: String,
    },
    /// HTTP rules apply and none allows the request.
    DeniedByDefault,
}

impl RequestVerdict {
    /// Does it let the request through?
    pub fn allowed(&self) -> bool {
        matches!(self, RequestVerdict::Allowed { .. })
    }

    /// The deciding rule in words.
    pub fn describe(&self) -> String {
        match self {
            RequestVerdict::Allowed {
                origin,
                http: Some(h),
            } => format!("allowed by {origin} (http {h})"),
            RequestVerdict::Allowed { origin, http: None } => {
                format!("allowed by {origin} (an L3/L4 allow: its http rules are lifted)")
            }
            RequestVerdict::Denied { origin, http } => format!("denied by {origin} (http {http})"),
            RequestVerdict::DeniedByDefault => {
                "denied by default: http rules apply and none allows this request".into()
            }
        }
    }
}

/// The entries of one side that apply to one peer.
#[derive(Debug, Clone)]
pub struct SideRules<'a> {
    entries: Vec<&'a HttpEntry>,
}

impl<'a> SideRules<'a> {
    /// The entries of `key` whose peers hold `peer`, or None when no HTTP
    /// rule names that key.
    pub fn of(compiled: &'a Compiled, key: HttpKey, peer: u32) -> Option<SideRules<'a>> {
        let entries = compiled.http.get(&key)?;
        Some(SideRules {
            entries: entries.iter().filter(|e| e.peers.contains(peer)).collect(),
        })
    }

    /// Are requests decided one by one (see the module's documentation)?
    pub fn restricts(&self) -> bool {
        let http_deny = self
            .entries
            .iter()
            .any(|e| e.verdict == Verdict::Deny && !e.http.is_empty());
        let http_allow = self
            .entries
            .iter()
            .any(|e| e.verdict == Verdict::Allow && !e.http.is_empty());
        let lifted = self
            .entries
            .iter()
            .any(|e| e.verdict == Verdict::Allow && e.http.is_empty());
        http_deny || (http_allow && !lifted)
    }

    /// This side's verdict on a request.
    pub fn decide(&self, request: &HttpRequest) -> RequestVerdict {
        for e in self.entries.iter().filter(|e| e.verdict == Verdict::Deny) {
            if let Some(h) = e
                .http
                .iter()
                .find(|h| rule_matches(h, request, Verdict::Deny))
            {
                return RequestVerdict::Denied {
                    origin: e.origin.to_string(),
                    http: h.to_string(),
                };
            }
        }
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.verdict == Verdict::Allow && e.http.is_empty())
        {
            return RequestVerdict::Allowed {
                origin: e.origin.to_string(),
                http: None,
            };
        }
        for e in self.entries.iter().filter(|e| e.verdict == Verdict::Allow) {
            if let Some(h) = e
                .http
                .iter()
                .find(|h| rule_matches(h, request, Verdict::Allow))
            {
                return RequestVerdict::Allowed {
                    origin: e.origin.to_string(),
                    http: Some(h.to_string()),
                };
            }
        }
        RequestVerdict::DeniedByDefault
    }
}

/// The HTTP rules of both sides of one connection: a client identity to a
/// server identity's TCP port.
#[derive(Debug, Clone)]
pub struct ConnectionRules<'a> {
    /// The client's egress rules for the server, if any name the port.
    pub egress: Option<SideRules<'a>>,
    /// The server's ingress rules for the client, if any name the port.
    pub ingress: Option<SideRules<'a>>,
}

impl<'a> ConnectionRules<'a> {
    /// The rules of a connection from `client` to `server`'s `port`.
    pub fn of(compiled: &'a Compiled, client: u32, server: u32, port: u16) -> ConnectionRules<'a> {
        ConnectionRules {
            egress: SideRules::of(
                compiled,
                HttpKey {
                    identity: client,
                    direction: Direction::Egress,
                    port,
                },
                server,
            ),
            ingress: SideRules::of(
                compiled,
                HttpKey {
                    identity: server,
                    direction: Direction::Ingress,
                    port,
                },
                client,
            ),
        }
    }

    /// Is any request of this connection decided one by one?
    pub fn restricts(&self) -> bool {
        self.egress.as_ref().is_some_and(SideRules::restricts)
            || self.ingress.as_ref().is_some_and(SideRules::restricts)
    }

    /// Each restricting side's verdict on a request: (egress, ingress).
    pub fn decide(
        &self,
        request: &HttpRequest,
    ) -> (Option<RequestVerdict>, Option<RequestVerdict>) {
        let side = |s: &Option<SideRules<'_>>| {
            s.as_ref()
                .filter(|s| s.restricts())
                .map(|s| s.decide(request))
        };
        (side(&self.egress), side(&self.ingress))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::collections::BTreeSet;

    use super::*;
    use crate::compile::PeerSet;
    use crate::model::{HttpPattern, HttpRule, RuleOrigin};

    const PEER: u32 = 7;

    /// An entry for PEER: `http` is "" for an L3/L4 allow, else "METHOD PATH".
    fn entry(verdict: Verdict, http: &str, index: usize) -> HttpEntry {
        let http = http
            .split_once(' ')
            .map(|(m, p)| {
                let pattern = |t: &str| (t != "*").then(|| HttpPattern::new(t).unwrap());
                vec![HttpRule {
                    method: pattern(m),
                    path: pattern(p),
                    ..HttpRule::default()
                }]
            })
            .unwrap_or_default();
        HttpEntry {
            verdict,
            peers: PeerSet {
                any: false,
                identities: BTreeSet::from([PEER]),
            },
            http,
            origin: RuleOrigin {
                source: "bpfwall.ingress".into(),
                index,
            },
        }
    }

    fn side(entries: &[HttpEntry]) -> SideRules<'_> {
        SideRules {
            entries: entries.iter().collect(),
        }
    }

    fn get(target: &str) -> HttpRequest {
        HttpRequest::from_parts("GET", target, []).unwrap()
    }

    #[test]
    fn what_restricts_a_side() {
        let allow = entry(Verdict::Allow, "GET /public", 0);
        let lift = entry(Verdict::Allow, "", 1);
        let deny = entry(Verdict::Deny, "* /admin", 2);
        assert!(
            !side(&[]).restricts(),
            "no rule for the peer: the datapath's"
        );
        assert!(side(std::slice::from_ref(&allow)).restricts());
        assert!(!side(&[allow.clone(), lift.clone()]).restricts(), "lifted");
        assert!(
            side(&[allow, lift.clone(), deny.clone()]).restricts(),
            "a deny is never lifted"
        );
        assert!(side(&[lift, deny]).restricts());
    }

    #[test]
    fn deny_then_lift_then_allow_then_default() {
        let entries = [
            entry(Verdict::Allow, "GET /public(/.*)?", 0),
            entry(Verdict::Deny, "* /admin(/.*)?", 1),
            entry(Verdict::Allow, "GET /public/x", 2),
        ];
        let s = side(&entries);
        assert_eq!(
            s.decide(&get("/public/x")),
            RequestVerdict::Allowed {
                origin: "bpfwall.ingress[0]".into(),
                http: Some("GET /public(/.*)?".into())
            },
            "the first matching rule in rule order is named"
        );
        assert_eq!(
            s.decide(&get("/admin/a")),
            RequestVerdict::Denied {
                origin: "bpfwall.ingress[1]".into(),
                http: "* /admin(/.*)?".into()
            }
        );
        assert_eq!(
            s.decide(&get("/restricted/")),
            RequestVerdict::DeniedByDefault
        );
        let lifted = [
            entry(Verdict::Allow, "GET /public", 0),
            entry(Verdict::Allow, "", 1),
            entry(Verdict::Deny, "* /admin", 2),
        ];
        let s = side(&lifted);
        assert_eq!(
            s.decide(&get("/restricted/")),
            RequestVerdict::Allowed {
                origin: "bpfwall.ingress[1]".into(),
                http: None
            },
            "an L3/L4 allow lifts the http allows"
        );
        assert!(!s.decide(&get("/admin")).allowed(), "but not the http deny");
        assert!(!s.decide(&get("/admin?x=1")).allowed(), "with a query too");
    }
}
