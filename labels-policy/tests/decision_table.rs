//! The shared decision table against the Rust model of the datapath.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use labels_policy::datapath_abi as abi;
use labels_policy::decision::{case_setup, cases, decide};

#[test]
fn every_row_holds() {
    let mut failures = Vec::new();
    for case in cases() {
        let setup = case_setup(&case, 4242).unwrap();
        assert_eq!(
            setup.endpoint.endpoint_id, 7,
            "{}: local endpoint missing",
            case.name
        );
        let got = decide(&setup.compiled, &setup.endpoint, &setup.packet, case.ct);
        if got != case.expect {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                case.name, case.expect, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn table_covers_what_the_issue_lists() {
    let names: Vec<&str> = cases().iter().map(|c| c.name).collect();
    for topic in [
        "L3+L4",
        "L4 only",
        "L3 only",
        "deny precedence",
        "conntrack",
        "loopback",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(topic)),
            "no case for {topic}"
        );
    }
}

#[test]
fn bad_label_sets_error_flag_and_no_entries() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "bad label: direction closed")
        .unwrap();
    let setup = case_setup(&case, 1).unwrap();
    assert_eq!(
        setup.endpoint.flags & abi::EP_ERROR_INGRESS,
        abi::EP_ERROR_INGRESS
    );
    assert_eq!(setup.endpoint.flags & abi::EP_ERROR_EGRESS, 0);
    assert!(setup
        .compiled
        .policy
        .keys()
        .all(|k| k.local_identity != setup.endpoint.identity));
}
