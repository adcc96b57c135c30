//! `bpfwall_ct_v2` (connection tracking, keyed from the endpoint's side),
//! what each endpoint holds of it (`bpfwall_ct_used_v2`) and the shares
//! (`bpfwall_ct_config_v2`); the collector that removes expired entries.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap, MapData};
use labels_policy::datapath_abi::{self as abi, CtConfig, CtKey, CtValue};

use super::{ignore_missing, Maps};
use crate::error::map_error;
use crate::pod::P;
use crate::DatapathError;

/// The conntrack shares the daemon sets (see `struct ct_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtShares {
    /// Entries one endpoint may hold at most.
    pub per_endpoint: u32,
    /// Entries beyond which only guaranteed shares remain.
    pub shared_limit: u32,
    /// Entries every endpoint may take whatever the fill.
    pub guaranteed: u32,
}

impl CtShares {
    /// The shares for `endpoints` endpoints in a map of `capacity` entries:
    /// each endpoint is guaranteed `guaranteed` entries (less when the
    /// endpoints are so many that the guarantees would take over half the
    /// map), and may hold at most `per_endpoint`.
    pub fn for_endpoints(
        capacity: u32,
        per_endpoint: u32,
        guaranteed: u32,
        endpoints: u32,
    ) -> Self {
        let endpoints = endpoints.max(1);
        let guaranteed = guaranteed.min(capacity / 2 / endpoints).max(1);
        CtShares {
            per_endpoint,
            shared_limit: capacity.saturating_sub(guaranteed.saturating_mul(endpoints)),
            guaranteed,
        }
    }
}

/// Is a conntrack entry still live at `now` (CLOCK_MONOTONIC_COARSE, ns)?
/// The rule of `ct_is_live()` in bpf-src/conntrack.h.
pub fn ct_is_live(key: &CtKey, value: &CtValue, now: u64) -> bool {
    const NS: u64 = 1_000_000_000;
    let lifetime = if value.flags & abi::CT_TCP_CLOSING != 0 {
        abi::CT_LIFETIME_TCP_CLOSING_S
    } else if key.protocol == abi::IPPROTO_TCP {
        if value.flags & abi::CT_SEEN_REPLY != 0 {
            abi::CT_LIFETIME_TCP_S
        } else {
            abi::CT_LIFETIME_TCP_OPENING_S
        }
    } else {
        abi::CT_LIFETIME_OTHER_S
    } * NS;
    (now.wrapping_sub(value.last_seen_ns) as i64) < lifetime as i64
}

/// The clock the datapath stamps entries with (`bpf_ktime_get_coarse_ns`).
pub fn coarse_now() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

impl Maps<'_> {
    /// Deletes every conntrack entry of these endpoints and zeroes their
    /// use. Returns how many went.
    pub fn forget_conntrack(
        &mut self,
        endpoint_ids: &BTreeSet<u32>,
    ) -> Result<usize, DatapathError> {
        if endpoint_ids.is_empty() {
            return Ok(0);
        }
        let mut stale = Vec::new();
        for key in self.ct.keys() {
            let key = key.map_err(map_error(abi::MAP_CT, "iterate"))?;
            if endpoint_ids.contains(&key.0.endpoint_id) {
                stale.push(key);
            }
        }
        for key in &stale {
            ignore_missing(self.ct.remove(key)).map_err(map_error(abi::MAP_CT, "remove"))?;
        }
        for ep in endpoint_ids {
            self.ct_used
                .set(*ep, 0, 0)
                .map_err(map_error(abi::MAP_CT_USED, "reset"))?;
        }
        Ok(stale.len())
    }

    /// Adds a conntrack entry (tests and benchmarks set up flows this way).
    pub fn insert_conntrack(&mut self, key: CtKey, value: CtValue) -> Result<(), DatapathError> {
        self.ct
            .insert(P(key), P(value), 0)
            .map_err(map_error(abi::MAP_CT, "insert"))
    }

    /// Sets the shared limit and the guaranteed share.
    pub fn set_ct_config(&mut self, shares: &CtShares) -> Result<(), DatapathError> {
        self.ct_config
            .set(
                0,
                P(CtConfig {
                    shared_limit: shares.shared_limit,
                    guaranteed: shares.guaranteed,
                    pad: [0; 2],
                }),
                0,
            )
            .map_err(map_error(abi::MAP_CT_CONFIG, "write"))
    }
}

/// What one collection found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Entries removed (expired).
    pub expired: usize,
    /// Entries left, per endpoint id (index 0 is not an endpoint).
    pub per_endpoint: BTreeMap<u32, u32>,
    /// Entries left in all.
    pub total: u32,
}

/// The conntrack maps opened a second time, by map id, for a collector
/// thread of its own.
pub struct Collector {
    ct: HashMap<MapData, P<CtKey>, P<CtValue>>,
    used: Array<MapData, u32>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

impl Collector {
    pub(crate) fn open(ct_id: u32, used_id: u32) -> Result<Self, DatapathError> {
        let open = |id: u32, name: &'static str| -> Result<aya::maps::Map, DatapathError> {
            let data = MapData::from_id(id).map_err(map_error(name, "open by id"))?;
            aya::maps::Map::from_map_data(data).map_err(map_error(name, "open by id"))
        };
        Ok(Collector {
            ct: HashMap::try_from(open(ct_id, abi::MAP_CT)?)
                .map_err(map_error(abi::MAP_CT, "open"))?,
            used: Array::try_from(open(used_id, abi::MAP_CT_USED)?)
                .map_err(map_error(abi::MAP_CT_USED, "open"))?,
        })
    }

    /// Removes the entries that are past their lifetime and recounts what
    /// every endpoint holds (the datapath only adds to the counts).
    pub fn collect(&mut self, now: u64) -> Result<Collected, DatapathError> {
        let mut out = Collected::default();
        let mut expired = Vec::new();
        for item in self.ct.iter() {
            let (k, v) = item.map_err(map_error(abi::MAP_CT, "iterate"))?;
            if ct_is_live(&k.0, &v.0, now) {
                *out.per_endpoint.entry(k.0.endpoint_id).or_default() += 1;
                out.total += 1;
            } else {
                expired.push(k);
            }
        }
        for key in &expired {
            // A packet may have refreshed it since: look again.
            if let Ok(v) = self.ct.get(key, 0) {
                if ct_is_live(&key.0, &v.0, now) {
                    *out.per_endpoint.entry(key.0.endpoint_id).or_default() += 1;
                    out.total += 1;
                    continue;
                }
            }
            ignore_missing(self.ct.remove(key)).map_err(map_error(abi::MAP_CT, "remove"))?;
            out.expired += 1;
        }
        // Recount every slot that holds something, or held something.
        let mut slots: BTreeSet<u32> = out.per_endpoint.keys().copied().collect();
        for (ep, used) in self.used.iter().enumerate() {
            if matches!(used, Ok(n) if n > 0) {
                slots.insert(ep as u32);
            }
        }
        for ep in slots {
            let n = if ep == 0 {
                out.total
            } else {
                out.per_endpoint.get(&ep).copied().unwrap_or(0)
            };
            self.used
                .set(ep, n, 0)
                .map_err(map_error(abi::MAP_CT_USED, "recount"))?;
        }
        Ok(out)
    }

    /// What each endpoint holds now, as counted (index 0: the whole map).
    pub fn used(&self, endpoint_id: u32) -> u32 {
        self.used.get(&endpoint_id, 0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_keep_room_for_every_endpoint() {
        let s = CtShares::for_endpoints(524_288, 65_536, 1024, 10);
        assert_eq!(s.guaranteed, 1024);
        assert_eq!(s.shared_limit, 524_288 - 10_240);
        // So many endpoints that the guarantees would take over half the map.
        let s = CtShares::for_endpoints(1000, 500, 1024, 10);
        assert_eq!(s.guaranteed, 50);
        assert_eq!(s.shared_limit, 500);
    }

    #[test]
    fn lifetimes_follow_the_datapath() {
        let key = CtKey {
            protocol: abi::IPPROTO_TCP,
            ..CtKey::default()
        };
        let s = 1_000_000_000u64;
        let opening = CtValue {
            last_seen_ns: 100 * s,
            ..CtValue::default()
        };
        assert!(ct_is_live(&key, &opening, 159 * s));
        assert!(!ct_is_live(&key, &opening, 161 * s));
        let established = CtValue {
            flags: abi::CT_SEEN_REPLY,
            ..opening
        };
        assert!(ct_is_live(&key, &established, 3600 * s));
        let closing = CtValue {
            flags: abi::CT_SEEN_REPLY | abi::CT_TCP_CLOSING,
            ..opening
        };
        assert!(!ct_is_live(&key, &closing, 111 * s));
    }
}
