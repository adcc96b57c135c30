//! The sk_lookup program (bpf-src/bpfwall_sk_lookup.c, l7.h) under
//! BPF_PROG_TEST_RUN, on the maps a compile of an http-policed container
//! writes: each row of l7.h's table.
//!
//! Needs root and BPF; makes a pin root of its own on bpffs and removes it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::net::{IpAddr, TcpListener};
use std::os::fd::AsRawFd as _;

use bpfwall_datapath::steering::Steering;
use bpfwall_datapath::KernelDatapath;
use labels_policy::datapath_abi::{l7_address_key, L7DropReason};
use labels_policy::testing::{case_setup, cases, Case, CASE_LOCAL_ADDR, CASE_PEER_ADDR};

/// `struct bpf_sk_lookup` (linux/bpf.h), as the test run takes it.
const CTX_SIZE: usize = 72;
const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;

fn ctx(remote: &str, local: &str, local_port: u16) -> [u8; CTX_SIZE] {
    let mut c = [0u8; CTX_SIZE];
    let v4 = |a: &str| match a.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("IPv4 here"),
    };
    c[8..12].copy_from_slice(&2u32.to_ne_bytes()); // family AF_INET
    c[12..16].copy_from_slice(&6u32.to_ne_bytes()); // protocol TCP
    c[16..20].copy_from_slice(&v4(remote)); // remote_ip4
    c[36..38].copy_from_slice(&40000u16.to_be_bytes()); // remote_port
    c[40..44].copy_from_slice(&v4(local)); // local_ip4
    c[60..64].copy_from_slice(&u32::from(local_port).to_ne_bytes()); // local_port
    c
}

fn cookie_of(listener: &TcpListener) -> u64 {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 into the buffer we own.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE");
    cookie
}

/// (return value, the cookie of the socket it selected or 0).
fn lookup(steering: &mut Steering, remote: &str, local: &str, port: u16) -> (u32, u64) {
    let mut c = ctx(remote, local, port);
    let rv = steering
        .test_run(&mut c)
        .expect("BPF_PROG_TEST_RUN of sk_lookup");
    (rv, u64::from_ne_bytes(c[0..8].try_into().unwrap()))
}

#[test]
fn the_lookup_table_holds_in_the_kernel() {
    let root = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/bpfwall_l7_test_{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    let result = std::panic::catch_unwind(|| {
        let mut dp =
            KernelDatapath::load(Some(&root)).expect("load the datapath (needs root and BPF)");
        let case = cases()
            .into_iter()
            .find(|c| c.name.starts_with("L7: a flow to a port steered"))
            .unwrap();
        let setup = case_setup(&case, 4242).unwrap();
        dp.write_compiled(&setup.compiled).unwrap();
        let (mut steering, _) = Steering::load(&root).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let cookie = cookie_of(&listener);
        steering
            .set_address(l7_address_key(CASE_LOCAL_ADDR.parse().unwrap()), 4242)
            .unwrap();
        steering
            .set_socket(setup.endpoint.endpoint_id, false, &listener)
            .unwrap();
        let app3 = "172.31.0.4";
        // Steered, and L3/L4 admits app2: to the proxy's socket.
        assert_eq!(
            lookup(&mut steering, CASE_PEER_ADDR, CASE_LOCAL_ADDR, 80),
            (SK_PASS, cookie)
        );
        // L3/L4 refuses app3: not steered (the container's program drops it).
        assert_eq!(
            lookup(&mut steering, app3, CASE_LOCAL_ADDR, 80),
            (SK_PASS, 0)
        );
        // A port that is not steered, an address that is no steered
        // container's, and the proxy's own hop from loopback: not steered.
        assert_eq!(
            lookup(&mut steering, CASE_PEER_ADDR, CASE_LOCAL_ADDR, 8080),
            (SK_PASS, 0)
        );
        assert_eq!(
            lookup(&mut steering, CASE_PEER_ADDR, "172.31.0.9", 80),
            (SK_PASS, 0)
        );
        assert_eq!(
            lookup(&mut steering, "127.0.0.1", CASE_LOCAL_ADDR, 80),
            (SK_PASS, 0)
        );
        // Open to everyone at L3/L4: only the loopback source keeps the
        // proxy's own hop from being steered back to the proxy.
        const ANY: &[(&str, &str)] =
            &[("bpfwall.ingress", "allow from any port 80/tcp http GET /")];
        let open = case_setup(
            &Case {
                labels: ANY,
                ..case
            },
            4242,
        )
        .unwrap();
        dp.write_compiled(&open.compiled).unwrap();
        assert_eq!(
            lookup(&mut steering, app3, CASE_LOCAL_ADDR, 80),
            (SK_PASS, cookie)
        );
        assert_eq!(
            lookup(&mut steering, "127.0.0.1", CASE_LOCAL_ADDR, 80),
            (SK_PASS, 0)
        );
        assert_eq!(
            lookup(&mut steering, "127.1.2.3", CASE_LOCAL_ADDR, 80),
            (SK_PASS, 0)
        );
        // No proxy socket (no daemon): dropped and counted, never passed.
        let before = steering.l7_drops().unwrap()[&L7DropReason::NoProxy];
        steering
            .clear_socket(setup.endpoint.endpoint_id, false)
            .unwrap();
        assert_eq!(
            lookup(&mut steering, CASE_PEER_ADDR, CASE_LOCAL_ADDR, 80),
            (SK_DROP, 0)
        );
        assert_eq!(
            steering.l7_drops().unwrap()[&L7DropReason::NoProxy],
            before + 1
        );
        // Closing the socket empties its slot too.
        steering
            .set_socket(setup.endpoint.endpoint_id, false, &listener)
            .unwrap();
        drop(listener);
        assert_eq!(
            lookup(&mut steering, CASE_PEER_ADDR, CASE_LOCAL_ADDR, 80),
            (SK_DROP, 0)
        );
    });
    let _ = std::fs::remove_dir_all(&root);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
