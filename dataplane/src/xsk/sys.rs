//! The raw syscalls of the data path: poll(2) on a worker's sockets, CPU
//! pinning, a link's promiscuity, and socket options xsk-rs does not set.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Sleep until `a` or `b` has something to read, or `timeout` passes.
/// Errors (EINTR) are the same as a timeout to the caller: it just loops.
pub(crate) fn poll_readable(a: RawFd, b: Option<RawFd>, timeout: Duration) {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let n = if b.is_some() { 2 } else { 1 };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid array of `n` pollfd structs that lives across
    // the call; poll only writes their `revents` fields.
    unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
}

/// Pin the calling thread to `cpu` (sched_setaffinity), so a worker keeps
/// its core instead of being moved next to softirq or generator load.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data for which all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), as CPU_SET needs.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Puts the link `ifindex` into promiscuous mode for as long as the
/// returned socket is open, as tcpdump does (a packet socket's
/// `PACKET_MR_PROMISC` membership): the kernel counts it, so closing the
/// socket, or the process ending however it ends, undoes it, and other
/// users of promiscuous mode are unaffected. The socket (protocol 0)
/// receives nothing.
pub fn promiscuous(ifindex: u32) -> std::io::Result<OwnedFd> {
    let ifindex = libc::c_int::try_from(ifindex)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket this function just opened and owns alone.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mreq = libc::packet_mreq {
        mr_ifindex: ifindex,
        mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    // SAFETY: `mreq` is a valid packet_mreq that lives across the call, and
    // its size is what is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(socket)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `SOL_XDP` and `XDP_MAX_TX_SKB_BUDGET` (include/uapi/linux/if_xdp.h,
/// Linux 6.17+): frames one copy-mode sendto() may transmit, instead of
/// the kernel's fixed 32.
const SOL_XDP: libc::c_int = 283;
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// `XDP_OPTIONS` and its `XDP_OPTIONS_ZEROCOPY` flag (linux/if_xdp.h).
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

/// Whether the AF_XDP socket `fd` is bound in zero-copy mode (else copy).
pub(crate) fn xdp_zero_copy(fd: RawFd) -> std::io::Result<bool> {
    // struct xdp_options is one u32 of flags.
    Ok(getsockopt_u32(fd, SOL_XDP, XDP_OPTIONS)? & XDP_OPTIONS_ZEROCOPY != 0)
}

/// The NAPI instance the socket's frames were last received by
/// (`SO_INCOMING_NAPI_ID`): what its busy polling runs. 0 when none: not
/// received yet, or a device whose XDP receive queue has no NAPI id (veth,
/// generic XDP), which busy polling cannot reach.
pub(crate) fn napi_id(fd: RawFd) -> std::io::Result<u32> {
    getsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_INCOMING_NAPI_ID)
}

/// A socket option whose value is one u32.
fn getsockopt_u32(fd: RawFd, level: libc::c_int, name: libc::c_int) -> std::io::Result<u32> {
    let mut value: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes across the call, and
    // `len` is `value`'s size.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut u32).cast(), &mut len) };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raise the socket's copy-mode TX budget per kick to `budget` frames
/// (the kernel allows 32 up to the TX ring's size). Kernels before 6.17
/// answer ENOPROTOOPT.
pub(crate) fn set_tx_skb_budget(fd: RawFd, budget: u32) -> std::io::Result<()> {
    setsockopt_u32(fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, budget)
}

/// setsockopt(2) with a 4-byte integer value.
pub(crate) fn setsockopt_u32(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: u32,
) -> std::io::Result<()> {
    // SAFETY: `value` is a valid u32 that lives across the call, and its
    // size is what is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Busy polling on socket `fd`: prefer it over interrupts
/// (`SO_PREFER_BUSY_POLL`), spin up to `usecs` per call (`SO_BUSY_POLL`),
/// `budget` packets per NAPI poll (`SO_BUSY_POLL_BUDGET`). Root (or
/// CAP_NET_ADMIN) may set them above the system's defaults.
pub(crate) fn set_busy_poll(fd: RawFd, usecs: u32, budget: u32) -> std::io::Result<()> {
    setsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_PREFER_BUSY_POLL, 1)?;
    setsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL, usecs)?;
    setsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL_BUDGET, budget)
}

/// An empty non-blocking recvfrom(2): on an AF_XDP socket with busy
/// polling it runs the device's NAPI poll in this thread, which moves
/// received frames onto the RX ring. Errors (EAGAIN) mean nothing to do.
pub(crate) fn busy_poll_once(fd: RawFd) {
    // SAFETY: a zero-length receive into no buffer, with no address out:
    // the kernel writes nothing to userspace memory.
    unsafe {
        libc::recvfrom(
            fd,
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
}
