//! Compiles the C datapath in bpf-src/ with clang into $OUT_DIR/bpfwall.o
//! (the cgroup/skb programs), $OUT_DIR/bpfwall_netgate.o (the network
//! plugin's gate), $OUT_DIR/bpfwall_l7.o (the sk_lookup program of the
//! HTTP proxy) and the benchmarks' empty baseline into
//! $OUT_DIR/bench_empty.o.

#![allow(
    clippy::expect_used,
    reason = "a build script reports failure by panicking"
)]

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn multiarch_include() -> Option<PathBuf> {
    let triple = match env::var("CARGO_CFG_TARGET_ARCH").ok()?.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        _ => return None,
    };
    let dir = PathBuf::from("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let src_dir = manifest.join("../../bpf-src");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=CLANG");
    for entry in std::fs::read_dir(&src_dir).expect("bpf-src/ is readable") {
        let path = entry.expect("bpf-src/ entry").path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // The datapath, and the empty baseline program of the microbenchmark.
    for (source, object) in [
        ("bpfwall_cgroup_skb.c", "bpfwall.o"),
        ("bpfwall_network_gate.c", "bpfwall_netgate.o"),
        ("bpfwall_sk_lookup.c", "bpfwall_l7.o"),
        ("bench_empty.c", "bench_empty.o"),
    ] {
        let mut cmd = Command::new(&clang);
        cmd.args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror", "-c"])
            .arg(src_dir.join(source))
            .arg("-o")
            .arg(out_dir.join(object));
        if let Some(dir) = multiarch_include() {
            cmd.arg("-I").arg(dir);
        }
        let status = cmd.status().unwrap_or_else(|e| {
            panic!("cannot run {clang} to build the eBPF datapath ({e}); run scripts/setup.sh or install clang")
        });
        assert!(
            status.success(),
            "{clang} failed to compile bpf-src/{source}"
        );
    }
}
