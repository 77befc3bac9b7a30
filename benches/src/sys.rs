//! Every `unsafe` of this crate: libbpf (through libxdp-sys) and a few
//! libc calls (setns, CPU affinity, kill, if_nametoindex). Everything above
//! this module is safe code.
//!
//! Map access goes through libbpf's `bpf_map__lookup_elem` /
//! `bpf_map__update_elem`, which check the key and value sizes against the
//! map's definition (for per-CPU maps: value size times the number of
//! possible CPUs), so a wrongly sized buffer is an `EINVAL`, never an
//! out-of-bounds access by the kernel.

use std::ffi::{c_int, c_void, CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::{self, NonNull};

use libxdp_sys as sys;

extern "C" {
    // In the libbpf that libxdp-sys links, but not in its bindings.
    fn libbpf_num_possible_cpus() -> c_int;
}

/// `offsetof(last field) + sizeof(last field)`: the `sz` of a libbpf opts
/// struct, so that libbpf never reads past what we know.
macro_rules! opts_size {
    ($t:ty, $last:ident, $last_ty:ty) => {
        std::mem::offset_of!($t, $last) + size_of::<$last_ty>()
    };
}

/// XDP attach flags (linux/if_link.h; not in libxdp-sys' bindings).
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `-ret` (libbpf returns negative errno) as an io::Error.
fn neg_errno(ret: c_int) -> io::Error {
    io::Error::from_raw_os_error(ret.checked_neg().unwrap_or(libc::EINVAL))
}

/// An opened and loaded BPF object; closed (programs and maps released,
/// unless something else holds them, e.g. an XDP attachment) on drop.
#[derive(Debug)]
pub struct Object {
    ptr: NonNull<sys::bpf_object>,
}

// SAFETY: a bpf_object is plain heap memory owned by this handle; libbpf has
// no thread affinity for it. All methods take &self and only read it
// (lookups by name, fds), or go to the kernel, which serialises map access.
unsafe impl Send for Object {}
// SAFETY: see Send; the read-only accessors are safe to call concurrently.
unsafe impl Sync for Object {}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from bpf_object__open_mem and is closed only here.
        unsafe { sys::bpf_object__close(self.ptr.as_ptr()) };
    }
}

impl Object {
    /// Opens the ELF image `bytes` and loads it into the kernel.
    pub fn load(bytes: &'static [u8], name: &CStr) -> io::Result<Object> {
        // SAFETY: bpf_object_open_opts is a plain C struct (integers, bools,
        // pointers); all-zero means "defaults".
        let mut opts: sys::bpf_object_open_opts = unsafe { std::mem::zeroed() };
        opts.sz = opts_size!(sys::bpf_object_open_opts, object_name, *const libc::c_char);
        opts.object_name = name.as_ptr();
        // SAFETY: `bytes` is a 'static ELF image that libbpf only reads;
        // `opts` and `name` are valid for the call (libbpf copies the name).
        let ptr = unsafe {
            sys::bpf_object__open_mem(bytes.as_ptr().cast::<c_void>(), bytes.len(), &opts)
        };
        let ptr = NonNull::new(ptr).ok_or_else(io::Error::last_os_error)?;
        let obj = Object { ptr };
        // SAFETY: `obj.ptr` is a valid, opened, not yet loaded object.
        let ret = unsafe { sys::bpf_object__load(obj.ptr.as_ptr()) };
        if ret < 0 {
            return Err(neg_errno(ret));
        }
        Ok(obj)
    }

    /// The file descriptor of program `name` (valid while `self` lives).
    pub fn prog_fd(&self, name: &str) -> io::Result<RawFd> {
        let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `ptr` is a valid loaded object, `cname` a NUL-terminated
        // string alive for the call.
        let prog =
            unsafe { sys::bpf_object__find_program_by_name(self.ptr.as_ptr(), cname.as_ptr()) };
        if prog.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no BPF program {name}"),
            ));
        }
        // SAFETY: `prog` belongs to the live object.
        let fd = unsafe { sys::bpf_program__fd(prog) };
        if fd < 0 {
            return Err(neg_errno(fd));
        }
        Ok(fd)
    }

    /// Map `name` of this object.
    pub fn map(&self, name: &str) -> io::Result<Map<'_>> {
        let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: as in prog_fd.
        let map = unsafe { sys::bpf_object__find_map_by_name(self.ptr.as_ptr(), cname.as_ptr()) };
        match NonNull::new(map) {
            Some(ptr) => Ok(Map { ptr, _obj: self }),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no BPF map {name}"),
            )),
        }
    }
}

/// A map of a loaded [`Object`].
#[derive(Debug, Clone, Copy)]
pub struct Map<'a> {
    ptr: NonNull<sys::bpf_map>,
    _obj: &'a Object,
}

impl Map<'_> {
    /// Size of one value (for per-CPU maps: of one CPU's value).
    pub fn value_size(&self) -> usize {
        // SAFETY: `ptr` belongs to the object borrowed by `self`.
        unsafe { sys::bpf_map__value_size(self.ptr.as_ptr()) as usize }
    }

    /// Stores `value` under `key` (BPF_ANY). libbpf checks both sizes.
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        // SAFETY: `ptr` belongs to the borrowed object; the key and value
        // slices are valid for reads of the lengths passed, and libbpf
        // rejects lengths that differ from the map's (EINVAL) before the
        // kernel reads anything.
        let ret = unsafe {
            sys::bpf_map__update_elem(
                self.ptr.as_ptr(),
                key.as_ptr().cast::<c_void>(),
                key.len(),
                value.as_ptr().cast::<c_void>(),
                value.len(),
                0,
            )
        };
        if ret < 0 {
            return Err(neg_errno(ret));
        }
        Ok(())
    }

    /// Reads the value under `key` into `value` (for per-CPU maps: all
    /// CPUs' values, one after the other). libbpf checks both sizes.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<()> {
        // SAFETY: as in update; `value` is valid for writes of its length,
        // which libbpf checked equals what the kernel writes.
        let ret = unsafe {
            sys::bpf_map__lookup_elem(
                self.ptr.as_ptr(),
                key.as_ptr().cast::<c_void>(),
                key.len(),
                value.as_mut_ptr().cast::<c_void>(),
                value.len(),
                0,
            )
        };
        if ret < 0 {
            return Err(neg_errno(ret));
        }
        Ok(())
    }
}

/// Number of possible CPUs (the stride of per-CPU map values).
pub fn num_possible_cpus() -> io::Result<usize> {
    // SAFETY: no arguments; libbpf reads /sys/devices/system/cpu/possible.
    let n = unsafe { libbpf_num_possible_cpus() };
    if n <= 0 {
        return Err(neg_errno(n));
    }
    Ok(n as usize)
}

/// Attaches program `prog_fd` as the XDP program of `ifindex` (in the
/// calling thread's network namespace), replacing any.
pub fn xdp_attach(ifindex: u32, prog_fd: RawFd, flags: u32) -> io::Result<()> {
    // SAFETY: plain integers; no opts.
    let ret = unsafe { sys::bpf_xdp_attach(ifindex as c_int, prog_fd, flags, ptr::null()) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(())
}

/// Removes the XDP program of `ifindex`.
pub fn xdp_detach(ifindex: u32, flags: u32) -> io::Result<()> {
    // SAFETY: plain integers; no opts.
    let ret = unsafe { sys::bpf_xdp_detach(ifindex as c_int, flags, ptr::null()) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(())
}

/// Runs XDP program `prog_fd` `repeat` times in live-frames mode
/// (`BPF_F_TEST_XDP_LIVE_FRAMES`) on frames initialised from `frame`, as if
/// received on `ifindex` queue `rx_queue` (in the calling thread's network
/// namespace): XDP_TX transmits, XDP_REDIRECT redirects. Returns the
/// kernel's reported duration (ns per repetition).
pub fn prog_run_live(
    prog_fd: RawFd,
    frame: &[u8],
    ifindex: u32,
    rx_queue: u32,
    repeat: u32,
    batch: u32,
) -> io::Result<u32> {
    let len = u32::try_from(frame.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let ctx = sys::xdp_md {
        data: 0,
        data_end: len,
        data_meta: 0,
        ingress_ifindex: ifindex,
        rx_queue_index: rx_queue,
        egress_ifindex: 0,
    };
    // SAFETY: bpf_test_run_opts is a plain C struct (integers and raw
    // pointers); all-zero is its "no options" value.
    let mut opts: sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
    opts.sz = opts_size!(sys::bpf_test_run_opts, batch_size, u32);
    opts.data_in = frame.as_ptr().cast::<c_void>();
    opts.data_size_in = len;
    opts.ctx_in = ptr::from_ref(&ctx).cast::<c_void>();
    opts.ctx_size_in = size_of::<sys::xdp_md>() as u32;
    opts.repeat = repeat.min(i32::MAX as u32) as c_int;
    opts.flags = sys::BPF_F_TEST_XDP_LIVE_FRAMES;
    opts.batch_size = batch;
    // SAFETY: `opts` points at `frame` and `ctx`, both alive and unmodified
    // for the call; there are no output buffers (live-frames mode has none).
    let ret = unsafe { sys::bpf_prog_test_run_opts(prog_fd, &mut opts) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(opts.duration)
}

/// Runs XDP program `prog_fd` once on a copy of `frame` (no live frames:
/// nothing is transmitted or redirected) and writes the resulting frame into
/// `out`. Returns the XDP action and the length of the result.
pub fn prog_run_once(prog_fd: RawFd, frame: &[u8], out: &mut [u8]) -> io::Result<(u32, usize)> {
    let len = u32::try_from(frame.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let out_len =
        u32::try_from(out.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    // SAFETY: as in prog_run_live.
    let mut opts: sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
    opts.sz = opts_size!(sys::bpf_test_run_opts, batch_size, u32);
    opts.data_in = frame.as_ptr().cast::<c_void>();
    opts.data_size_in = len;
    opts.data_out = out.as_mut_ptr().cast::<c_void>();
    opts.data_size_out = out_len;
    opts.repeat = 1;
    // SAFETY: `frame` is valid for reads of `len` bytes and `out` for writes
    // of `out_len` bytes for the call; the kernel writes at most
    // data_size_out bytes (ENOSPC if the result is longer).
    let ret = unsafe { sys::bpf_prog_test_run_opts(prog_fd, &mut opts) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok((opts.retval, (opts.data_size_out as usize).min(out.len())))
}

/// Moves the calling thread into the network namespace `ns` (an open
/// `/run/netns/<name>` or `/proc/<pid>/ns/net`).
pub fn setns_net(ns: &File) -> io::Result<()> {
    // SAFETY: `ns` is an open file descriptor for the call's duration;
    // setns affects only the calling thread.
    let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to CPU `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is a plain bitmask; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE (checked above), so CPU_SET stays in bounds.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    let ret = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends signal `sig` to process `pid` (a child we started).
pub fn kill(pid: u32, sig: c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: plain integers; pid > 0 targets exactly one process.
    let ret = unsafe { libc::kill(pid, sig) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the kernel send SIGTERM to the child spawned by `cmd` when the
/// spawning thread dies (also on SIGKILL of this process), so that no
/// `homeward` outlives the harness. Survives the exec of `ip netns exec`.
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe; it touches no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

static TERMINATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigterm(_: c_int) {
    // Async-signal-safe: one atomic store.
    TERMINATED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Catches SIGTERM into a flag ([`terminated`]) so the harness can clean up.
/// (The `ctrlc` crate's SIGTERM support is a cargo feature; enabling it here
/// would also change homeward's signal handling in workspace builds, by
/// feature unification.)
pub fn catch_sigterm() -> io::Result<()> {
    // SAFETY: sigaction is a plain C struct; all-zero is "no flags, empty
    // mask"; the handler only stores to an atomic, which is
    // async-signal-safe. No SA_RESTART: a blocking call returns EINTR.
    let ret = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigterm as extern "C" fn(c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, ptr::null_mut())
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether SIGTERM arrived (after [`catch_sigterm`]).
pub fn terminated() -> bool {
    TERMINATED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Index of interface `name` in the calling thread's network namespace.
pub fn if_nametoindex(name: &str) -> io::Result<u32> {
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `cname` is NUL-terminated and alive for the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}
