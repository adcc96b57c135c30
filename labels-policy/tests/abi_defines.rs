//! The constants of `bpf-src/bpfwall_maps.h` against their Rust mirrors in
//! `labels_policy::datapath_abi`: every numeric `#define BPFWALL_*` against
//! `DEFINES` (both ways, names and values), every map the header defines
//! against `ALL_MAPS`, and `BPFWALL_DROP_*` against `DropReason`. The struct
//! layouts are checked elsewhere (const asserts, `hook/tests/abi_layout.rs`).
//!
//! Only bpfwall_maps.h is the shared ABI; the other headers' defines are
//! private to the C programs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};

use labels_policy::datapath_abi::{DropReason, ALL_MAPS, DEFINES, DROP_REASON_MAX};

const HEADER_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf-src/bpfwall_maps.h");
const HEADER: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../bpf-src/bpfwall_maps.h"
));

/// The text with `/* */` and `//` comments blanked out (newlines kept, so
/// line numbers stay right).
fn without_comments(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let block = rest.find("/*");
        let line = rest.find("//");
        match (block, line) {
            (Some(b), l) if l.is_none_or(|l| b < l) => {
                out.push_str(&rest[..b]);
                let end = rest[b + 2..]
                    .find("*/")
                    .map(|e| b + 2 + e + 2)
                    .ok_or_else(|| format!("{HEADER_PATH}: unterminated comment"))?;
                out.extend(rest[b..end].chars().filter(|c| *c == '\n'));
                rest = &rest[end..];
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                let end = rest[l..].find('\n').map_or(rest.len(), |e| l + e);
                rest = &rest[end..];
            }
            (_, None) => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    Ok(out)
}

fn parse_number(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(['u', 'U', 'l', 'L']);
    match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => digits.parse().ok(),
    }
}

/// Every object-like `#define BPFWALL_<NAME> <number>` of the header, by
/// name. A define without a value (the include guard) is skipped, and so
/// are function-like macros; any other value is an error, so that a define
/// the check cannot read never slips past it.
fn header_defines(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in without_comments(text)?.lines().enumerate() {
        let at = format!("{HEADER_PATH}:{}", i + 1);
        let Some(directive) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let Some(rest) = directive.trim_start().strip_prefix("define") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(name) = words.next() else {
            return Err(format!("{at}: #define without a name"));
        };
        if !name.starts_with("BPFWALL_") || name.contains('(') {
            continue;
        }
        let value: Vec<&str> = words.collect();
        match value.as_slice() {
            [] => {}
            [number] => {
                let Some(n) = parse_number(number) else {
                    return Err(format!(
                        "{at}: {name} is '{number}', not a decimal or hex number"
                    ));
                };
                if out.insert(name.to_string(), n).is_some() {
                    return Err(format!("{at}: {name} is defined twice"));
                }
            }
            more => {
                return Err(format!(
                    "{at}: {name} is '{}', not one number: teach this test to read it",
                    more.join(" ")
                ))
            }
        }
    }
    Ok(out)
}

/// Every map the header defines: `} bpfwall_<what>_v<N> SEC(".maps");`.
fn header_maps(text: &str) -> Result<BTreeSet<String>, String> {
    let code = without_comments(text)?;
    let mut out = BTreeSet::new();
    for (i, line) in code.lines().enumerate() {
        let Some(at) = line.find("SEC(\".maps\")") else {
            continue;
        };
        let name = line[..at].trim().trim_start_matches('}').trim();
        let well_formed = name.strip_prefix("bpfwall_").is_some_and(|rest| {
            rest.rsplit_once("_v").is_some_and(|(what, n)| {
                !what.is_empty() && !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())
            })
        });
        if !well_formed || line[at..].matches("SEC(").count() != 1 {
            return Err(format!(
                "{HEADER_PATH}:{}: expected `}} bpfwall_<what>_v<N> SEC(\".maps\");`, found '{}'",
                i + 1,
                line.trim()
            ));
        }
        if !out.insert(name.to_string()) {
            return Err(format!(
                "{HEADER_PATH}:{}: map {name} is defined twice",
                i + 1
            ));
        }
    }
    Ok(out)
}

#[test]
fn every_numeric_define_is_mirrored_with_its_value() {
    let header = header_defines(HEADER).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        header.len() >= 30,
        "only {} defines read from {HEADER_PATH}: is the parser broken?",
        header.len()
    );
    let mut table = BTreeMap::new();
    for (name, value) in DEFINES {
        assert!(
            table.insert(*name, *value).is_none(),
            "datapath_abi::DEFINES lists {name} twice"
        );
    }
    let mut problems = Vec::new();
    for (name, value) in &header {
        match table.get(name.as_str()) {
            None => problems.push(format!(
                "{name} ({value}) is in the header but not in datapath_abi::DEFINES"
            )),
            Some(rust) if rust != value => problems.push(format!(
                "{name}: the header says {value} (0x{value:x}), the Rust mirror {rust} (0x{rust:x})"
            )),
            Some(_) => {}
        }
    }
    for (name, value) in &table {
        if !header.contains_key(*name) {
            problems.push(format!(
                "{name} ({value}) is in datapath_abi::DEFINES but not in the header"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{HEADER_PATH} and datapath_abi disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_map_is_in_all_maps() {
    let header = header_maps(HEADER).unwrap_or_else(|e| panic!("{e}"));
    let rust: BTreeSet<String> = ALL_MAPS.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        rust.len(),
        ALL_MAPS.len(),
        "datapath_abi::ALL_MAPS has a duplicate"
    );
    assert_eq!(
        header, rust,
        "the maps of {HEADER_PATH} (left) and datapath_abi::ALL_MAPS (right) differ"
    );
}

#[test]
fn drop_reasons_match_the_header() {
    let header = header_defines(HEADER).unwrap_or_else(|e| panic!("{e}"));
    let reasons: BTreeSet<u64> = header
        .iter()
        .filter(|(name, _)| name.starts_with("BPFWALL_DROP_") && *name != "BPFWALL_DROP_REASON_MAX")
        .map(|(_, value)| *value)
        .collect();
    let rust: BTreeSet<u64> = DropReason::ALL.iter().map(|r| *r as u64).collect();
    assert_eq!(
        rust.len(),
        DropReason::ALL.len(),
        "DropReason::ALL has a duplicate"
    );
    assert_eq!(
        reasons, rust,
        "BPFWALL_DROP_* values (left) and DropReason::ALL (right) differ"
    );
    assert_eq!(
        header.get("BPFWALL_DROP_REASON_MAX"),
        Some(&u64::from(DROP_REASON_MAX))
    );
    let last = rust.last().copied().unwrap_or(0);
    assert_eq!(
        u64::from(DROP_REASON_MAX),
        last + 1,
        "DROP_REASON_MAX sizes bpfwall_drops_v1: one past the last reason"
    );
    assert!(
        DropReason::ALL.windows(2).all(|w| w[0] < w[1]),
        "DropReason::ALL is in index order"
    );
}

#[test]
fn the_parser_reads_what_it_must_and_refuses_what_it_cannot() {
    let text = "#ifndef BPFWALL_X_H\n#define BPFWALL_X_H\n/* #define BPFWALL_COMMENTED 9 */\n#define BPFWALL_A 0x10 /* note */\n#  define BPFWALL_B 7 // note\n#define BPFWALL_F(x) ((x) + 1)\n#define OTHER 3\n";
    let got = header_defines(text).unwrap();
    assert_eq!(
        got,
        BTreeMap::from([("BPFWALL_A".to_string(), 16), ("BPFWALL_B".to_string(), 7)])
    );
    let refused = header_defines("#define BPFWALL_C (1 << 3)\n").unwrap_err();
    assert!(refused.contains("BPFWALL_C"), "{refused}");
    let maps = header_maps("struct {\n\t__uint(type, 1);\n} bpfwall_thing_v2 SEC(\".maps\");\n");
    assert_eq!(maps, Ok(BTreeSet::from(["bpfwall_thing_v2".to_string()])));
    let odd = header_maps("struct {\n} thing SEC(\".maps\");\n").unwrap_err();
    assert!(odd.contains("'} thing SEC"), "{odd}");
}
