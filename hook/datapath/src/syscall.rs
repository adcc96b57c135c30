//! The bpf(2) commands aya 0.14 does not offer: getting a pinned link and
//! moving it onto another program (upgrades), and creating and updating a
//! map-in-map (the RCU barrier of `crate::rcu`). Every raw bpf(2) call of
//! the crate is here.

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
#[cfg(feature = "testing")]
const BPF_PROG_TEST_RUN: libc::c_long = 10;

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `union bpf_attr` for BPF_MAP_CREATE, up to `map_name` (linux/bpf.h);
/// the kernel reads the rest as zero.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` for BPF_MAP_UPDATE_ELEM (linux/bpf.h).
#[repr(C)]
struct MapUpdateAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a fully initialised bpf_attr prefix for `cmd` whose
    // pointers (if any) point to memory that outlives the call; the kernel
    // reads size_of::<T>() bytes of it and treats the rest as zero.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn owned_fd(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// A one-element array map of u32 (the inner map of the RCU barrier).
pub(crate) fn create_inner_array() -> std::io::Result<OwnedFd> {
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: *b"bpfwall_rcu_in\0\0",
    };
    bpf(BPF_MAP_CREATE, &attr).map(owned_fd)
}

/// A one-element array of maps shaped like `inner`.
pub(crate) fn create_array_of_maps(inner: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        inner_map_fd: inner.as_raw_fd() as u32,
        numa_node: 0,
        map_name: *b"bpfwall_rcu\0\0\0\0\0",
    };
    bpf(BPF_MAP_CREATE, &attr).map(owned_fd)
}

/// Stores `inner` at key 0 of an array of maps. The kernel waits for an
/// RCU grace period before it returns (`maybe_wait_bpf_programs()`): every
/// program that was running when the call began has finished.
pub(crate) fn update_array_of_maps(
    outer: BorrowedFd<'_>,
    inner: BorrowedFd<'_>,
) -> std::io::Result<()> {
    let key: u32 = 0;
    let value: u32 = inner.as_raw_fd() as u32;
    let attr = MapUpdateAttr {
        map_fd: outer.as_raw_fd() as u32,
        pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &attr).map(|_| ())
}

/// `union bpf_attr` for BPF_OBJ_GET (linux/bpf.h).
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

/// `union bpf_attr` for BPF_LINK_UPDATE (linux/bpf.h).
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// A new fd for a pinned object.
pub(crate) fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    bpf(BPF_OBJ_GET, &attr).map(owned_fd)
}

/// Points a link at another program, atomically.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> std::io::Result<()> {
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &attr).map(|_| ())
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (linux/bpf.h `test`).
#[cfg(feature = "testing")]
#[repr(C)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

/// Runs a program once on a context alone (no packet), as sk_lookup's test
/// run takes it; the context comes back in `ctx`. Returns the program's
/// return value.
#[cfg(feature = "testing")]
pub(crate) fn prog_test_run_ctx(prog: BorrowedFd<'_>, ctx: &mut [u8]) -> std::io::Result<u32> {
    let len = u32::try_from(ctx.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        retval: 0,
        data_size_in: 0,
        data_size_out: 0,
        data_in: 0,
        data_out: 0,
        repeat: 1,
        duration: 0,
        ctx_size_in: len,
        ctx_size_out: len,
        ctx_in: ctx.as_ptr() as u64,
        ctx_out: ctx.as_mut_ptr() as u64,
        flags: 0,
        cpu: 0,
        batch_size: 0,
        pad: 0,
    };
    // SAFETY: attr is a whole bpf_attr prefix for BPF_PROG_TEST_RUN; its
    // ctx pointers point into `ctx`, which outlives the call and is
    // `ctx_size_*` bytes long; the kernel writes the results back into
    // `attr` (through the mutable pointer) and into `ctx`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr.retval)
}
