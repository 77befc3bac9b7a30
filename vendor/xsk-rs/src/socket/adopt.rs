//! homeward patch: adopting a bound AF_XDP socket handed over by another
//! process (`SCM_RIGHTS`), so that a new binary can take over a running
//! forwarder's sockets without unbinding them.
//!
//! The kernel keeps a bound socket's rings, and the producer and consumer
//! positions in them, for as long as any process holds its fd. Adopting one
//! is mapping its four rings again (`XDP_MMAP_OFFSETS` says where each part
//! lies) and setting each ring's cached positions from the shared ones, the
//! way libxdp does when it creates a socket.

use std::{
    io, mem,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    ptr::{self, NonNull},
    sync::{Arc, Mutex},
};

use libxdp_sys::{
    XDP_MMAP_OFFSETS, XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING, XDP_UMEM_PGOFF_COMPLETION_RING,
    XDP_UMEM_PGOFF_FILL_RING, xdp_desc, xdp_mmap_offsets, xdp_ring_offset, xsk_ring_cons,
    xsk_ring_prod,
};

use super::{Fd, RxQueue, Socket, SocketCreateError, SocketInner, TxQueue};
use crate::{
    ring::{XskRingCons, XskRingProd},
    umem::{CompQueue, FillQueue, Umem},
};

/// The ring mappings and fd of an adopted socket, released on drop.
#[derive(Debug)]
pub(super) struct AdoptedRings {
    maps: Vec<(NonNull<libc::c_void>, usize)>,
    _fd: OwnedFd,
}

// SAFETY: the mappings are only unmapped, on drop; the rings in them are
// reached through the queues, which serialise access themselves.
unsafe impl Send for AdoptedRings {}

impl Drop for AdoptedRings {
    fn drop(&mut self) {
        for (addr, len) in self.maps.drain(..) {
            // SAFETY: each entry is a mapping this struct made and owns;
            // the queues that read it hold the socket, so are gone by now.
            unsafe { libc::munmap(addr.as_ptr(), len) };
        }
    }
}

/// Sizes (entries) of an adopted socket's rings: those it was created with.
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    /// RX ring entries.
    pub rx: u32,
    /// TX ring entries.
    pub tx: u32,
    /// Fill ring entries.
    pub fill: u32,
    /// Completion ring entries.
    pub comp: u32,
}

fn mmap_offsets(fd: RawFd) -> io::Result<xdp_mmap_offsets> {
    // SAFETY: plain data, written by getsockopt.
    let mut off: xdp_mmap_offsets = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: `off` is writeable for `len` bytes for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            XDP_MMAP_OFFSETS as i32,
            (&mut off as *mut xdp_mmap_offsets).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != mem::size_of::<xdp_mmap_offsets>() {
        // Kernels before 5.4 have no flags offset; need_wakeup needs it.
        return Err(io::Error::other("XDP_MMAP_OFFSETS without ring flags"));
    }
    Ok(off)
}

/// Where one ring lies in its mapping.
struct Mapped {
    base: *mut u8,
    off: xdp_ring_offset,
}

impl Mapped {
    fn at(&self, offset: u64) -> *mut u32 {
        // SAFETY (of the callers' use): every offset the kernel gave lies
        // inside the mapping, which is `off.desc + entries` long.
        self.base.wrapping_add(offset as usize).cast()
    }
}

fn map_ring(
    fd: RawFd,
    pgoff: u64,
    off: xdp_ring_offset,
    entries: u32,
    entry_size: usize,
    maps: &mut Vec<(NonNull<libc::c_void>, usize)>,
) -> io::Result<Mapped> {
    if !entries.is_power_of_two() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let len = off.desc as usize + entries as usize * entry_size;
    // SAFETY: a fresh shared mapping of the socket's ring at the offset
    // the kernel defines for it; nothing else is at the address chosen.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            pgoff as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let addr = NonNull::new(addr).ok_or_else(|| io::Error::other("mmap returned null"))?;
    maps.push((addr, len));
    Ok(Mapped {
        base: addr.as_ptr().cast(),
        off,
    })
}

fn prod_ring(m: &Mapped, entries: u32) -> XskRingProd {
    let ring = XskRingProd::default();
    let producer = m.at(m.off.producer);
    let consumer = m.at(m.off.consumer);
    // SAFETY: `ring` is ours alone (just made), and the positions are
    // inside the live mapping; they are read once, as libxdp does at
    // creation: the kernel may move the consumer on meanwhile, which only
    // makes the cached free space an underestimate until the next reload.
    unsafe {
        *ring.as_ptr() = xsk_ring_prod {
            cached_prod: ptr::read_volatile(producer),
            cached_cons: ptr::read_volatile(consumer).wrapping_add(entries),
            mask: entries - 1,
            size: entries,
            producer,
            consumer,
            ring: m.base.wrapping_add(m.off.desc as usize).cast(),
            flags: m.at(m.off.flags),
        };
    }
    ring
}

fn cons_ring(m: &Mapped, entries: u32) -> XskRingCons {
    let ring = XskRingCons::default();
    let producer = m.at(m.off.producer);
    let consumer = m.at(m.off.consumer);
    // SAFETY: as in `prod_ring`; a stale cached producer only hides
    // entries until the next peek reloads it.
    unsafe {
        *ring.as_ptr() = xsk_ring_cons {
            cached_prod: ptr::read_volatile(producer),
            cached_cons: ptr::read_volatile(consumer),
            mask: entries - 1,
            size: entries,
            producer,
            consumer,
            ring: m.base.wrapping_add(m.off.desc as usize).cast(),
            flags: m.at(m.off.flags),
        };
    }
    ring
}

impl Socket {
    /// homeward patch: take over `fd`, a bound AF_XDP socket that another
    /// process created on `umem`'s frames (with its own fill and
    /// completion rings) and handed over. `umem` is that UMEM adopted
    /// ([`Umem::adopt`]); `sizes` are the ring sizes it was created with.
    ///
    /// # Safety
    ///
    /// The process that handed the socket over must no longer touch its
    /// rings or the frames in them: every ring has one producer and one
    /// consumer, and from now on the queues returned here are the
    /// userspace side of all four.
    pub unsafe fn adopt(
        fd: OwnedFd,
        umem: &Umem,
        sizes: RingSizes,
    ) -> Result<(TxQueue, RxQueue, FillQueue, CompQueue), SocketCreateError> {
        let fail = |reason, err| SocketCreateError {
            reason,
            err: Some(err),
        };
        let raw = fd.as_raw_fd();
        let off =
            mmap_offsets(raw).map_err(|e| fail("cannot read the socket's ring offsets", e))?;
        let mut maps = Vec::with_capacity(4);
        let desc = mem::size_of::<xdp_desc>();
        let addr = mem::size_of::<u64>();
        let mapped = (|| {
            Ok::<_, io::Error>((
                map_ring(
                    raw,
                    XDP_PGOFF_RX_RING.into(),
                    off.rx,
                    sizes.rx,
                    desc,
                    &mut maps,
                )?,
                map_ring(
                    raw,
                    XDP_PGOFF_TX_RING.into(),
                    off.tx,
                    sizes.tx,
                    desc,
                    &mut maps,
                )?,
                map_ring(
                    raw,
                    XDP_UMEM_PGOFF_FILL_RING,
                    off.fr,
                    sizes.fill,
                    addr,
                    &mut maps,
                )?,
                map_ring(
                    raw,
                    XDP_UMEM_PGOFF_COMPLETION_RING,
                    off.cr,
                    sizes.comp,
                    addr,
                    &mut maps,
                )?,
            ))
        })();
        let adopted = AdoptedRings { maps, _fd: fd };
        let (rx_map, tx_map, fill_map, comp_map) =
            mapped.map_err(|e| fail("cannot map the socket's rings", e))?;

        let rx = cons_ring(&rx_map, sizes.rx);
        let tx = prod_ring(&tx_map, sizes.tx);
        let fill = prod_ring(&fill_map, sizes.fill);
        let comp = cons_ring(&comp_map, sizes.comp);

        let inner = SocketInner {
            ptr: None,
            _rx_ring: rx.handle(),
            _tx_ring: tx.handle(),
            umem: umem.clone(),
            _adopted: Some(adopted),
        };
        let socket = Socket {
            fd: Fd::new(raw),
            _inner: Arc::new(Mutex::new(inner)),
        };
        Ok((
            TxQueue::new(tx, socket.clone()),
            RxQueue::new(rx, socket.clone()),
            FillQueue::new(fill, socket.clone()),
            CompQueue::new(comp, socket),
        ))
    }
}
