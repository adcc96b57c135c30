//! The Rust mirrors against the compiled object: every struct of
//! bpf-src/bpfwall_maps.h must have the same size and member offsets in the
//! object's BTF as its mirror in labels_policy::datapath_abi.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::collections::BTreeMap;
use std::process::Command;

use labels_policy::datapath_abi::layouts;

#[test]
fn mirrors_match_the_object_btf() {
    let dir = std::env::temp_dir().join(format!("bpfwall-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("bpfwall.o");
    std::fs::write(&obj, bpfwall_datapath::OBJECT).unwrap();
    let out = Command::new("bpftool")
        .args(["-j", "btf", "dump", "file"])
        .arg(&obj)
        .output()
        .expect("bpftool must be installed (scripts/setup.sh installs it)");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let btf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let types = btf["types"].as_array().expect("bpftool JSON has types");

    // name -> (size, member -> byte offset)
    let mut structs: BTreeMap<String, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
    for t in types {
        if t["kind"] == "STRUCT" {
            let members = t["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap().to_string(),
                        m["bits_offset"].as_u64().unwrap() / 8,
                    )
                })
                .collect();
            structs.insert(
                t["name"].as_str().unwrap_or("").to_string(),
                (t["size"].as_u64().unwrap(), members),
            );
        }
    }
    let mut checked = 0;
    for (name, size, members) in layouts() {
        let (c_size, c_members) = structs
            .get(name)
            .unwrap_or_else(|| panic!("struct {name} is not in the object's BTF"));
        assert_eq!(*c_size as usize, size, "sizeof(struct {name})");
        assert_eq!(
            c_members.len(),
            members.len(),
            "struct {name} member count: C has {c_members:?}"
        );
        for (member, offset) in members {
            let c_offset = c_members
                .get(member)
                .unwrap_or_else(|| panic!("struct {name} has no member {member} in C"));
            assert_eq!(
                *c_offset as usize, offset,
                "offsetof(struct {name}, {member})"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 23, "every mirrored struct was checked");
}
