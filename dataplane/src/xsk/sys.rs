//! The raw syscalls of the data path: poll(2) on a worker's sockets, CPU
//! pinning, a link's promiscuity, and socket options xsk-rs does not set.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Sleep until `a` or `b` has something to read, `bell` is rung, or
/// `timeout` passes; returns whether `bell` was rung. Errors (EINTR) are
/// the same as a timeout to the caller: it just loops.
pub(crate) fn poll_readable(
    a: RawFd,
    b: Option<RawFd>,
    bell: Option<RawFd>,
    timeout: Duration,
) -> bool {
    let pollin = |fd: Option<RawFd>| libc::pollfd {
        // poll(2) skips a negative fd.
        fd: fd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [pollin(Some(a)), pollin(b), pollin(bell)];
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid array of 3 pollfd structs that lives across
    // the call; poll only writes their `revents` fields.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    bell.is_some() && fds[2].revents & libc::POLLIN != 0
}

/// A worker's doorbell (an eventfd): the control plane rings it when it
/// hands the worker something to do (a gratuitous ARP, a stop), so that a
/// worker asleep in [`poll_readable`] wakes at once rather than at its
/// timeout (up to 10 ms idle).
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    pub fn new() -> std::io::Result<Doorbell> {
        // SAFETY: plain eventfd(2); the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened by this function, which owns it alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Doorbell { fd })
    }

    /// Rings: the fd turns readable. Failing only when rung 2^64-2 times
    /// unanswered (EAGAIN), when it is readable anyway.
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which lives across the call,
        // to an eventfd this struct owns.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Answers: the fd is no longer readable (until rung again).
    pub fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into `count`, which lives across the
        // call; non-blocking (EAGAIN when not rung).
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }

    /// The fd to poll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
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

/// Marks `fd` close-on-exec. libxdp (1.6) opens its AF_XDP sockets without
/// `SOCK_CLOEXEC`, and a socket inherited by a child process would hold the
/// queue after homeward is gone (a restart would find it taken).
pub(crate) fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_GETFD/F_SETFD touch no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A rung doorbell wakes a poll that would otherwise sleep 5 s, and is
    /// quiet again once cleared.
    #[test]
    fn a_rung_doorbell_wakes_poll_and_clear_quiets_it() {
        let idle = Doorbell::new().unwrap(); // a socket stand-in, never readable
        let bell = Doorbell::new().unwrap();
        let ringer = std::thread::spawn({
            let fd = bell.fd.try_clone().unwrap();
            move || {
                std::thread::sleep(Duration::from_millis(50));
                Doorbell { fd }.ring();
            }
        });
        let t0 = Instant::now();
        assert!(poll_readable(
            idle.fd(),
            None,
            Some(bell.fd()),
            Duration::from_secs(5)
        ));
        assert!(t0.elapsed() < Duration::from_secs(5), "woke by the timeout");
        ringer.join().unwrap();
        bell.clear();
        assert!(!poll_readable(
            idle.fd(),
            None,
            Some(bell.fd()),
            Duration::from_millis(1)
        ));
        bell.ring();
        bell.ring();
        assert!(poll_readable(
            idle.fd(),
            None,
            Some(bell.fd()),
            Duration::from_millis(1)
        ));
        bell.clear();
        assert!(!poll_readable(
            idle.fd(),
            Some(idle.fd()),
            Some(bell.fd()),
            Duration::from_millis(1)
        ));
    }
}
