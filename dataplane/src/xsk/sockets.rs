//! Opening the AF_XDP sockets of one queue: one UMEM shared by the LAN and
//! the WAN socket, so a frame received on one interface is transmitted on
//! the other without a copy in userspace.

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RingSizes, RxQueue, Socket, TxQueue, Umem};

use super::{QueueIo, RingOccupancy, Side, SocketStats, XskError};

/// `XDP_PKT_CONTD` (linux/if_xdp.h): the packet continues in the next descriptor.
const XDP_PKT_CONTD: u32 = 1;

/// Sizes of the UMEM and its rings for one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XskConfig {
    /// Frames in the UMEM shared by the queue's sockets.
    pub frame_count: u32,
    /// Bytes per frame (power of two). 2048 leaves room for a 1514-byte
    /// frame plus the 20-byte outer header after XDP's 256 bytes of headroom.
    pub frame_size: u32,
    /// Entries in each fill, completion, RX and TX ring.
    pub ring_size: u32,
    /// Frames moved per ring operation.
    pub batch: usize,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_count: 8192,
            frame_size: 2048,
            ring_size: 2048,
            batch: 64,
        }
    }
}

/// The four rings of one AF_XDP socket.
pub struct SocketRings {
    pub(crate) tx: TxQueue,
    pub(crate) rx: RxQueue,
    pub(crate) fill: FillQueue,
    pub(crate) comp: CompQueue,
    pub(crate) fd: RawFd,
    pub(crate) ifname: String,
    /// Frames one TX kick sends at most (see [`raise_tx_budget`]).
    pub(crate) tx_budget: u32,
    /// Bound in zero-copy mode (the driver offered it), else copy mode.
    pub(crate) zero_copy: bool,
}

impl SocketRings {
    /// The socket's file descriptor, for the XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The interface the socket is bound to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Frames one TX kick (sendto) sends at most.
    pub fn tx_budget(&self) -> u32 {
        self.tx_budget
    }

    /// Whether the socket is bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }
}

/// The socket's bind mode, logged. The bind asks for neither
/// `XDP_ZEROCOPY` nor `XDP_COPY`: the kernel binds zero-copy where the
/// driver supports it and falls back to copy mode otherwise.
fn bind_mode(fd: RawFd, ifname: &str, queue: u32) -> bool {
    match super::sys::xdp_zero_copy(fd) {
        Ok(zc) => {
            let mode = if zc { "zero-copy" } else { "copy" };
            tracing::info!(ifname, queue, mode, "AF_XDP socket bound");
            zc
        }
        Err(e) => {
            tracing::warn!(ifname, queue, "AF_XDP bind mode unknown (XDP_OPTIONS): {e}");
            false
        }
    }
}

/// The kernel's copy-mode limit per sendto() (TX_BATCH_SIZE).
pub const DEFAULT_TX_BUDGET: u32 = 32;

/// Lets one copy-mode kick send up to a whole TX ring (`ring` frames)
/// instead of 32 (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.17+), so the worker
/// kicks once per batch; returns the budget in use. A kernel that refuses
/// keeps 32, and the worker kicks several times per batch as before.
fn raise_tx_budget(fd: RawFd, ifname: &str, queue: u32, ring: u32) -> u32 {
    match super::sys::set_tx_skb_budget(fd, ring) {
        Ok(()) => {
            tracing::info!(
                ifname,
                queue,
                budget = ring,
                "AF_XDP TX budget per kick raised"
            );
            ring
        }
        Err(e) => {
            tracing::info!(
                ifname,
                queue,
                error = %e,
                "AF_XDP TX budget per kick stays {DEFAULT_TX_BUDGET} \
                 (XDP_MAX_TX_SKB_BUDGET needs Linux 6.17+): several kicks per batch"
            );
            DEFAULT_TX_BUDGET
        }
    }
}

/// The UMEM of one queue and the sockets bound to it.
pub struct QueueSockets {
    pub(crate) umem: Umem,
    pub(crate) frames: Vec<FrameDesc>,
    pub(crate) lan: SocketRings,
    /// `None` in one-armed mode (LAN and WAN are the same interface).
    pub(crate) wan: Option<SocketRings>,
    pub(crate) queue: u32,
    pub(crate) config: XskConfig,
    /// Whether the worker busy-polls ([`QueueSockets::enable_busy_poll`]).
    pub(crate) busy_poll: bool,
}

impl QueueSockets {
    /// Opens the UMEM and binds a socket to `queue` of `lan`, and of `wan`
    /// if it is another interface. The XDP program is ours (loaded by
    /// `loader`), so libxdp is told not to load its own.
    pub fn open(
        lan: &str,
        wan: Option<&str>,
        queue: u32,
        config: XskConfig,
    ) -> Result<QueueSockets, XskError> {
        let (umem_config, frame_count, ring) = umem_config(&config)?;
        let (umem, frames) = Umem::new(umem_config, frame_count, false)
            .map_err(|e| XskError::Umem(e.to_string()))?;

        let lan_rings = open_socket(&umem, lan, queue, ring)?;
        let wan_rings = match wan {
            Some(w) if w != lan => Some(open_socket(&umem, w, queue, ring)?),
            _ => None,
        };
        Ok(QueueSockets {
            umem,
            frames,
            lan: lan_rings,
            wan: wan_rings,
            queue,
            config,
            busy_poll: false,
        })
    }

    /// The LAN socket.
    pub fn lan(&self) -> &SocketRings {
        &self.lan
    }

    /// The WAN socket, unless one-armed.
    pub fn wan(&self) -> Option<&SocketRings> {
        self.wan.as_ref()
    }

    /// The queue index these sockets are bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Preferred busy polling on the queue's sockets (`SO_PREFER_BUSY_POLL`,
    /// `SO_BUSY_POLL`, `SO_BUSY_POLL_BUDGET` of a batch): the worker then
    /// drives the devices' receive processing itself while traffic flows
    /// instead of sleeping in poll(). The devices' interrupt deferral is
    /// [`super::DeviceTuning`]'s.
    pub fn enable_busy_poll(&mut self) -> std::io::Result<()> {
        let budget = self.config.batch as u32;
        for fd in [Some(self.lan.fd), self.wan.as_ref().map(|w| w.fd)]
            .into_iter()
            .flatten()
        {
            super::sys::set_busy_poll(fd, super::busy_poll::BUSY_POLL_USECS, budget)?;
        }
        self.busy_poll = true;
        Ok(())
    }

    /// What a successor needs besides the fds ([`QueueSockets::handover_fds`])
    /// to adopt these sockets: sizes, interfaces and the free frames.
    pub fn handover_state(&self) -> QueueState {
        QueueState {
            queue: self.queue,
            config: self.config,
            lan: self.lan.ifname.clone(),
            wan: self.wan.as_ref().map(|w| w.ifname.clone()),
            free: self.frames.iter().map(|f| f.addr() as u64).collect(),
        }
    }

    /// The fds to hand over, in order: the UMEM's memfd, the LAN socket,
    /// the WAN socket unless one-armed. `None` if the UMEM has no memfd.
    pub fn handover_fds(&self) -> Option<Vec<RawFd>> {
        let mut fds = vec![self.umem.memfd()?, self.lan.fd];
        fds.extend(self.wan.as_ref().map(|w| w.fd));
        Some(fds)
    }

    /// Duplicates of [`QueueSockets::handover_fds`], to adopt these very
    /// sockets again ([`QueueSockets::adopt`]) after a failed takeover.
    pub fn dup_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        let fds = self
            .handover_fds()
            .ok_or_else(|| std::io::Error::other("the UMEM has no memfd"))?;
        fds.into_iter()
            .map(|fd| {
                // SAFETY: every fd listed belongs to this value (its UMEM and
                // sockets), which is borrowed, so open, for the call.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
            })
            .collect()
    }

    /// Take over the sockets a predecessor process handed over: `fds` as
    /// [`QueueSockets::handover_fds`] listed them. The free frames become
    /// this queue's free list; the frames in the rings stay where they are.
    ///
    /// The predecessor must have stopped touching the rings and frames
    /// (its worker is parked) and must not resume unless handed them back.
    pub fn adopt(state: &QueueState, fds: Vec<OwnedFd>) -> Result<QueueSockets, XskError> {
        let (umem_config, frame_count, _) = umem_config(&state.config)?;
        let expected = 2 + usize::from(state.wan.is_some());
        if fds.len() != expected {
            return Err(XskError::Config(format!(
                "queue {}: {} fds handed over, {expected} expected",
                state.queue,
                fds.len()
            )));
        }
        let mut fds = fds.into_iter();
        let (Some(memfd), Some(lan_fd)) = (fds.next(), fds.next()) else {
            return Err(XskError::Config("missing fds".into()));
        };
        let umem = Umem::adopt(umem_config, frame_count, memfd)
            .map_err(|e| XskError::Umem(e.to_string()))?;
        let mut frames = Vec::with_capacity(state.free.len());
        for &addr in &state.free {
            let desc = usize::try_from(addr)
                .ok()
                .and_then(|a| umem.frame_desc(a))
                .ok_or_else(|| {
                    XskError::Config(format!("handed-over frame {addr:#x} is outside the UMEM"))
                })?;
            frames.push(desc);
        }
        let lan = adopt_socket(&umem, lan_fd, &state.lan, state.queue, &state.config)?;
        let wan = match (&state.wan, fds.next()) {
            (Some(name), Some(fd)) => {
                Some(adopt_socket(&umem, fd, name, state.queue, &state.config)?)
            }
            _ => None,
        };
        Ok(QueueSockets {
            umem,
            frames,
            lan,
            wan,
            queue: state.queue,
            config: state.config,
            busy_poll: false,
        })
    }
}

/// One queue as handed to a successor process; the fds travel beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    pub queue: u32,
    pub config: XskConfig,
    pub lan: String,
    pub wan: Option<String>,
    /// Addresses of the frames on the worker's free list.
    pub free: Vec<u64>,
}

fn umem_config(config: &XskConfig) -> Result<(UmemConfig, NonZeroU32, QueueSize), XskError> {
    let ring = QueueSize::new(config.ring_size)
        .map_err(|e| XskError::Config(format!("ring size {}: {e}", config.ring_size)))?;
    let frame_size = FrameSize::new(config.frame_size)
        .map_err(|e| XskError::Config(format!("frame size {}: {e}", config.frame_size)))?;
    let frame_count = NonZeroU32::new(config.frame_count)
        .ok_or_else(|| XskError::Config("frame count must not be 0".into()))?;
    let umem_config = UmemConfig::builder()
        .frame_size(frame_size)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| XskError::Config(format!("UMEM: {e}")))?;
    Ok((umem_config, frame_count, ring))
}

fn adopt_socket(
    umem: &Umem,
    fd: OwnedFd,
    ifname: &str,
    queue: u32,
    config: &XskConfig,
) -> Result<SocketRings, XskError> {
    let raw = fd.as_raw_fd();
    let size = config.ring_size;
    let sizes = RingSizes {
        rx: size,
        tx: size,
        fill: size,
        comp: size,
    };
    // SAFETY: the predecessor parked its worker before handing the socket
    // over (see `QueueSockets::adopt`), so these queues are the only
    // userspace side of its rings.
    let (tx, rx, fill, comp) =
        unsafe { Socket::adopt(fd, umem, sizes) }.map_err(|e| XskError::Socket {
            ifname: ifname.to_string(),
            queue,
            reason: format!("adopting a handed-over socket: {e}"),
            cause: std::error::Error::source(&e).map(|s| s.to_string()),
        })?;
    // The option is the socket's: a predecessor's setting survives, but
    // setting it again is harmless and tells this process the budget.
    let tx_budget = raise_tx_budget(raw, ifname, queue, size);
    let zero_copy = bind_mode(raw, ifname, queue);
    Ok(SocketRings {
        tx,
        rx,
        fill,
        comp,
        fd: raw,
        ifname: ifname.to_string(),
        tx_budget,
        zero_copy,
    })
}

/// How many times, [`QUEUE_RELEASE_POLL`] apart, a bind that finds the queue
/// taken tries again: about 5 s. The kernel releases a dead process's
/// AF_XDP socket from deferred work that takes the RTNL lock, so after a
/// crash (or `kill -9`) the queue can stay taken for a while after the
/// process is gone, longer while other programs change links.
const QUEUE_RELEASE_TRIES: u32 = 500;
const QUEUE_RELEASE_POLL: Duration = Duration::from_millis(10);

/// Whether a socket error is the kernel's EBUSY: the queue has a socket.
fn is_busy(e: &(dyn std::error::Error + 'static)) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
        == Some(libc::EBUSY)
}

/// `attempt` until it succeeds, fails otherwise than `busy`, or has been
/// tried `tries` times, with `pause` between tries.
fn retry_while_busy<T, E>(
    tries: u32,
    mut attempt: impl FnMut() -> Result<T, E>,
    busy: impl Fn(&E) -> bool,
    mut pause: impl FnMut(),
) -> Result<T, E> {
    let mut left = tries.max(1);
    loop {
        left -= 1;
        match attempt() {
            Err(e) if busy(&e) && left > 0 => pause(),
            done => return done,
        }
    }
}

/// The error for a queue that stayed taken: what holds it and what to do.
fn queue_held(ifname: &str, queue: u32) -> XskError {
    XskError::Socket {
        ifname: ifname.to_string(),
        queue,
        reason: format!(
            "the queue is held by another AF_XDP socket for more than {} s: stop the \
             other program bound to it (another homeward on {ifname}, or an AF_XDP \
             tool), then start homeward again",
            (QUEUE_RELEASE_POLL * QUEUE_RELEASE_TRIES).as_secs()
        ),
        cause: None,
    }
}

fn open_socket(
    umem: &Umem,
    ifname: &str,
    queue: u32,
    ring: QueueSize,
) -> Result<SocketRings, XskError> {
    let iface: Interface = ifname
        .parse()
        .map_err(|_| XskError::Config(format!("bad interface name {ifname:?}")))?;
    let bind = |flags: BindFlags| {
        let config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(flags)
            .build();
        // SAFETY: the UMEM outlives the socket (the rings keep a clone of
        // it), and its frames are handed to the kernel only through this
        // queue's worker, which tracks where every frame is.
        unsafe { Socket::new(config, umem, &iface, queue) }
    };
    let socket_error = |e: &dyn std::error::Error| XskError::Socket {
        ifname: ifname.to_string(),
        queue,
        reason: e.to_string(),
        cause: e.source().map(|s| s.to_string()),
    };
    let mut waited = false;
    let mut bind_when_free = |flags: BindFlags| {
        retry_while_busy(
            QUEUE_RELEASE_TRIES,
            || bind(flags),
            |e| is_busy(e),
            || {
                if !waited {
                    waited = true;
                    tracing::info!(
                        ifname,
                        queue,
                        "the queue is still held by an AF_XDP socket, most likely a \
                         previous homeward's that the kernel is releasing: waiting for it"
                    );
                }
                std::thread::sleep(QUEUE_RELEASE_POLL);
            },
        )
    };
    // Multi-buffer receive, so a frame larger than a UMEM frame (a guest's
    // TSO super-frame on a tap) reaches the worker in pieces, to be cut
    // into segments, instead of being dropped by the kernel. Kernels
    // before 6.6 refuse the flag: then such frames stay the kernel's drops.
    let (tx, rx, fq_cq) =
        match bind_when_free(BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_USE_SG) {
            Ok(sockets) => sockets,
            Err(e) if is_busy(&e) => return Err(queue_held(ifname, queue)),
            Err(e) => {
                tracing::warn!(
                    ifname,
                    queue,
                    error = %e,
                    "AF_XDP multi-buffer (XDP_USE_SG) refused: frames larger than a UMEM \
                     frame (TSO super-frames) will be dropped by the kernel"
                );
                match bind_when_free(BindFlags::XDP_USE_NEED_WAKEUP) {
                    Ok(sockets) => sockets,
                    Err(e) if is_busy(&e) => return Err(queue_held(ifname, queue)),
                    Err(e) => return Err(socket_error(&e)),
                }
            }
        };
    let (fill, comp) = fq_cq.ok_or_else(|| XskError::Socket {
        ifname: ifname.to_string(),
        queue,
        reason: "no fill and completion ring of its own".into(),
        cause: None,
    })?;
    let fd = rx.fd().as_raw_fd();
    if let Err(e) = super::sys::set_cloexec(fd) {
        tracing::warn!(ifname, queue, error = %e, "cannot mark the AF_XDP socket close-on-exec");
    }
    let tx_budget = raise_tx_budget(fd, ifname, queue, ring.get());
    let zero_copy = bind_mode(fd, ifname, queue);
    Ok(SocketRings {
        tx,
        rx,
        fill,
        comp,
        fd,
        ifname: ifname.to_string(),
        tx_budget,
        zero_copy,
    })
}

impl QueueSockets {
    /// The socket on `side`; the LAN socket serves both when one-armed.
    #[inline]
    fn side(&mut self, side: Side) -> &mut SocketRings {
        match (side, self.wan.as_mut()) {
            (Side::Wan, Some(wan)) => wan,
            _ => &mut self.lan,
        }
    }

    #[inline]
    fn side_ref(&self, side: Side) -> &SocketRings {
        match (side, self.wan.as_ref()) {
            (Side::Wan, Some(wan)) => wan,
            _ => &self.lan,
        }
    }
}

/// The real queue: each call is the xsk-rs call it names.
impl QueueIo for QueueSockets {
    type Desc = FrameDesc;

    #[inline]
    fn config(&self) -> XskConfig {
        self.config
    }

    #[inline]
    fn queue(&self) -> u32 {
        self.queue
    }

    #[inline]
    fn has_wan(&self) -> bool {
        self.wan.is_some()
    }

    fn take_free(&mut self) -> Vec<FrameDesc> {
        std::mem::take(&mut self.frames)
    }

    fn put_free(&mut self, free: Vec<FrameDesc>) {
        self.frames = free;
    }

    #[inline]
    fn rx_consume(&mut self, side: Side, descs: &mut [FrameDesc]) -> usize {
        // SAFETY: xsk-rs asks that the frames be of the UMEM the ring is
        // tied to: the RX ring is bound to this queue's UMEM, so every
        // descriptor it yields is one of its frames.
        unsafe { self.side(side).rx.consume(descs) }
    }

    #[inline]
    fn tx_free(&mut self, side: Side, wanted: u32) -> u32 {
        self.side(side).tx.nb_free(wanted)
    }

    #[inline]
    fn tx_produce(&mut self, side: Side, descs: &[FrameDesc]) -> usize {
        // SAFETY: xsk-rs asks that the frames be of this UMEM and on no
        // other ring (else the kernel may write a frame it also sends). The
        // kernel rejects descriptors outside the UMEM (tx_invalid), and
        // userspace touches frame memory only through `frame_mut`, whose
        // contract excludes frames on a ring: a wrong descriptor can garble
        // packets, not memory this process reads as Rust data.
        unsafe { self.side(side).tx.produce(descs) }
    }

    #[inline]
    fn tx_wakeup(&mut self, side: Side) -> std::io::Result<()> {
        self.side(side).tx.wakeup()
    }

    #[inline]
    fn tx_needs_wakeup(&self, side: Side) -> bool {
        self.side_ref(side).tx.needs_wakeup()
    }

    #[inline]
    fn tx_kick_budget(&self, side: Side) -> u32 {
        self.side_ref(side).tx_budget
    }

    fn zero_copy(&self) -> bool {
        self.lan.zero_copy && self.wan.as_ref().is_none_or(|w| w.zero_copy)
    }

    #[inline]
    fn fill_free(&mut self, side: Side, wanted: u32) -> u32 {
        self.side(side).fill.nb_free(wanted)
    }

    #[inline]
    fn fill_produce(&mut self, side: Side, descs: &[FrameDesc]) -> usize {
        // SAFETY: as for `tx_produce`: the kernel checks the descriptors,
        // and `frame_mut`'s contract keeps userspace off frames on a ring.
        unsafe { self.side(side).fill.produce(descs) }
    }

    #[inline]
    fn comp_consume(&mut self, side: Side, descs: &mut [FrameDesc]) -> usize {
        // SAFETY: as for `rx_consume`: the completion ring is this UMEM's,
        // and holds only frames that were put on its TX rings.
        unsafe { self.side(side).comp.consume(descs) }
    }

    fn occupancy(&mut self, side: Side) -> RingOccupancy {
        let size = u64::from(self.config.ring_size);
        let socket = self.side(side);
        RingOccupancy {
            fill: size.saturating_sub(u64::from(socket.fill.nb_free_exact())),
            rx: u64::from(socket.rx.nb_avail_exact()),
            tx: size.saturating_sub(u64::from(socket.tx.nb_free_exact())),
            completion: u64::from(socket.comp.nb_avail_exact()),
        }
    }

    fn statistics(&self, side: Side) -> Option<SocketStats> {
        let s = self.side_ref(side).rx.fd().xdp_statistics().ok()?;
        Some(SocketStats {
            rx_dropped: s.rx_dropped(),
            rx_ring_full: s.rx_ring_full(),
            fill_ring_empty: s.rx_fill_ring_empty_descs(),
            rx_invalid: s.rx_invalid_descs(),
            tx_invalid: s.tx_invalid_descs(),
        })
    }

    fn wait_readable(&self, timeout: Duration, bell: Option<RawFd>) -> bool {
        super::sys::poll_readable(self.lan.fd, self.wan.as_ref().map(|w| w.fd), bell, timeout)
    }

    #[inline]
    fn busy_polling(&self) -> bool {
        self.busy_poll
    }

    fn busy_poll_unreachable(&self, side: Side) -> bool {
        let fd = match (side, &self.wan) {
            (Side::Wan, Some(w)) => w.fd,
            _ => self.lan.fd,
        };
        self.busy_poll && matches!(super::sys::napi_id(fd), Ok(0))
    }

    fn stop_busy_poll(&mut self) {
        self.busy_poll = false;
    }

    fn busy_poll(&mut self) {
        if !self.busy_poll {
            return;
        }
        super::sys::busy_poll_once(self.lan.fd);
        if let Some(w) = &self.wan {
            super::sys::busy_poll_once(w.fd);
        }
    }

    #[inline]
    fn data_len(desc: &FrameDesc) -> usize {
        desc.lengths().data()
    }

    #[inline]
    fn continues(desc: &FrameDesc) -> bool {
        desc.options() & XDP_PKT_CONTD != 0
    }

    #[inline]
    unsafe fn frame_mut(&self, desc: &FrameDesc) -> (&mut [u8], usize) {
        // SAFETY: the caller owns the frame, a frame of this UMEM, and holds
        // no other slice of it (this trait method's contract), which is
        // what `whole_frame_mut` asks.
        unsafe { self.umem.whole_frame_mut(desc) }
    }

    #[inline]
    fn set_data(&self, desc: &mut FrameDesc, offset: usize, len: usize) -> bool {
        // A frame that was one piece of a multi-buffer packet keeps the
        // kernel's XDP_PKT_CONTD; sent with it, the kernel would take the
        // next descriptor as the rest of this one.
        let ok = self.umem.set_data(desc, offset, len);
        if ok {
            desc.set_options(0);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Bind {
        Busy,
        Refused,
    }

    #[test]
    fn a_taken_queue_is_tried_again_until_it_is_free() {
        let mut answers = vec![Ok(7), Err(Bind::Busy), Err(Bind::Busy), Err(Bind::Busy)];
        let mut pauses = 0;
        let got = retry_while_busy(
            10,
            || answers.pop().unwrap(),
            |e| *e == Bind::Busy,
            || pauses += 1,
        );
        assert_eq!((got, pauses), (Ok(7), 3));
    }

    #[test]
    fn a_queue_that_stays_taken_gives_up_after_the_tries() {
        let (mut tries, mut pauses) = (0, 0);
        let got: Result<(), Bind> = retry_while_busy(
            5,
            || {
                tries += 1;
                Err(Bind::Busy)
            },
            |e| *e == Bind::Busy,
            || pauses += 1,
        );
        assert_eq!((got, tries, pauses), (Err(Bind::Busy), 5, 4));
    }

    #[test]
    fn another_refusal_is_not_tried_again() {
        let mut tries = 0;
        let got: Result<(), Bind> = retry_while_busy(
            5,
            || {
                tries += 1;
                Err(Bind::Refused)
            },
            |e| *e == Bind::Busy,
            || panic!("no pause for a refusal"),
        );
        assert_eq!((got, tries), (Err(Bind::Refused), 1));
    }

    #[test]
    fn ebusy_under_the_socket_error_is_busy() {
        #[derive(Debug)]
        struct Wrapped(std::io::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bind failed")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let busy = Wrapped(std::io::Error::from_raw_os_error(libc::EBUSY));
        let other = Wrapped(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert!(is_busy(&busy));
        assert!(!is_busy(&other));
        let text = queue_held("lan0", 0).to_string();
        assert!(text.contains("stop the other program"), "{text}");
    }
}
