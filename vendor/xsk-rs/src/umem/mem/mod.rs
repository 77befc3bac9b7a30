mod mmap;
use mmap::Mmap;

use std::{
    io,
    num::NonZeroU32,
    ptr::NonNull,
    slice,
    sync::{Arc, Mutex},
};

use super::{
    FrameLayout,
    frame::{Data, DataMut, FrameDesc, Headroom, HeadroomMut},
};
use crate::util;

/// A framed, memory mapped region which functions as the working
/// memory for some UMEM.
#[derive(Clone, Debug)]
pub struct UmemRegion {
    layout: FrameLayout,
    // Keep a copy of the pointer to the mmap region to avoid a double
    // deref, through for example an `Arc<Mmap>`. We know this won't
    // dangle since this struct holds an `Arc`d copy of the mmap
    // region.
    addr: NonNull<libc::c_void>,
    len: usize,
    _mmap: Arc<Mutex<Mmap>>,
}

unsafe impl Send for UmemRegion {}

// SAFETY: this impl is only safe in the context of this library and
// assuming the various unsafe requirements are upheld. Mutations to
// the memory region may occur concurrently but always in disjoint
// sections by either the user space process xor the kernel.
unsafe impl Sync for UmemRegion {}

impl UmemRegion {
    pub(super) fn new(
        frame_count: NonZeroU32,
        frame_layout: FrameLayout,
        use_huge_pages: bool,
    ) -> io::Result<Self> {
        let len = (frame_count.get() as usize) * frame_layout.frame_size();

        let mmap = Mmap::new(len, use_huge_pages)?;

        Ok(Self {
            layout: frame_layout,
            addr: mmap.addr(),
            len,
            _mmap: Arc::new(Mutex::new(mmap)),
        })
    }

    /// homeward patch: the region of `frame_count` frames that another
    /// process created, mapped from its memfd.
    pub(super) fn from_memfd(
        memfd: std::os::fd::OwnedFd,
        frame_count: NonZeroU32,
        frame_layout: FrameLayout,
    ) -> io::Result<Self> {
        let len = (frame_count.get() as usize) * frame_layout.frame_size();

        let mmap = Mmap::from_memfd(memfd, len)?;

        Ok(Self {
            layout: frame_layout,
            addr: mmap.addr(),
            len,
            _mmap: Arc::new(Mutex::new(mmap)),
        })
    }

    /// homeward patch: the memfd behind the region, to hand over.
    pub fn memfd(&self) -> Option<std::os::fd::RawFd> {
        self._mmap.lock().ok().and_then(|m| m.memfd())
    }

    /// The size of the underlying memory region.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Get a pointer to the start of the memory region.
    #[inline]
    pub fn as_ptr(&self) -> *mut libc::c_void {
        self.addr.as_ptr()
    }

    /// A pointer to the headroom segment of the frame described by
    /// `desc`.
    ///
    /// The headroom the user reserves sits at the start of the frame,
    /// ahead of the headroom the kernel reserves for the XDP program.
    ///
    /// # Safety
    ///
    /// `desc` must describe a frame belonging to this [`UmemRegion`].
    #[inline]
    unsafe fn headroom_ptr(&self, desc: &FrameDesc) -> *mut u8 {
        let addr = self.layout.frame_start(desc.addr);
        unsafe { self.as_ptr().add(addr) as *mut u8 }
    }

    /// A pointer to the packet data segment of the frame described by
    /// `desc`.
    ///
    /// # Safety
    ///
    /// `desc` must describe a frame belonging to this [`UmemRegion`].
    #[inline]
    unsafe fn data_ptr(&self, desc: &FrameDesc) -> *mut u8 {
        unsafe { self.as_ptr().add(desc.addr) as *mut u8 }
    }

    /// The number of bytes between the start of the frame described
    /// by `desc` and the start of its packet data segment, capped at
    /// the frame headroom.
    ///
    /// Equal to the frame headroom whenever the packet starts where
    /// [`Umem::new`] put it, and shorter when it starts inside the
    /// headroom.
    ///
    /// [`Umem::new`]: super::Umem::new
    #[inline]
    fn headroom_capacity(&self, desc: &FrameDesc) -> usize {
        util::min_usize(
            desc.addr - self.layout.frame_start(desc.addr),
            self.layout.frame_headroom,
        )
    }

    /// The number of bytes between the start of the packet data
    /// segment of the frame described by `desc` and the end of that
    /// frame.
    ///
    /// Equal to the mtu whenever the packet starts where [`Umem::new`]
    /// put it, and larger or smaller when an XDP program has moved
    /// it.
    ///
    /// [`Umem::new`]: super::Umem::new
    #[inline]
    fn data_capacity(&self, desc: &FrameDesc) -> usize {
        (self.layout.frame_start(desc.addr) + self.layout.frame_size()) - desc.addr
    }

    /// See docs for [`super::Umem::frame`].
    /// homeward patch: the whole frame that `desc` points into, from
    /// its first byte to its last, and where the packet data starts
    /// within it.
    ///
    /// # Safety
    ///
    /// As for `frame_mut`.
    #[inline]
    pub unsafe fn whole_frame_mut<'a>(&'a self, desc: &FrameDesc) -> (&'a mut [u8], usize) {
        let start = self.layout.frame_start(desc.addr);
        // SAFETY: `start` is the first byte of a frame of this region
        // and the frame is `frame_size` long; exclusivity is the
        // caller's contract.
        let buf = unsafe {
            slice::from_raw_parts_mut(
                self.as_ptr().add(start) as *mut u8,
                self.layout.frame_size(),
            )
        };
        (buf, desc.addr - start)
    }

    /// homeward patch: make `desc` describe `len` bytes starting at
    /// `offset` from the start of its frame. Returns false, and leaves
    /// `desc` alone, when that would leave the frame.
    #[inline]
    pub fn set_data(&self, desc: &mut FrameDesc, offset: usize, len: usize) -> bool {
        let frame_size = self.layout.frame_size();
        match offset.checked_add(len) {
            Some(end) if end <= frame_size => {
                desc.addr = self.layout.frame_start(desc.addr) + offset;
                desc.lengths.data = len;
                desc.lengths.headroom = 0;
                true
            }
            _ => false,
        }
    }

    /// homeward patch: the index of the frame `desc` points into.
    #[inline]
    pub fn frame_index(&self, desc: &FrameDesc) -> usize {
        desc.addr / self.layout.frame_size()
    }

    #[inline]
    pub unsafe fn frame(&self, desc: &FrameDesc) -> (Headroom<'_>, Data<'_>) {
        // SAFETY: see `super::Umem::frame`
        unsafe { (self.headroom(desc), self.data(desc)) }
    }

    /// See docs for [`super::Umem::headroom`].
    #[inline]
    pub unsafe fn headroom(&self, desc: &FrameDesc) -> Headroom<'_> {
        // SAFETY: see `frame`.
        let headroom_ptr = unsafe { self.headroom_ptr(desc) };

        Headroom::new(unsafe { slice::from_raw_parts(headroom_ptr, desc.lengths.headroom) })
    }

    /// See docs for [`super::Umem::data`].
    #[inline]
    pub unsafe fn data(&self, desc: &FrameDesc) -> Data<'_> {
        // SAFETY: see `frame`.
        let data_ptr = unsafe { self.data_ptr(desc) };

        Data::new(unsafe { slice::from_raw_parts(data_ptr, desc.lengths.data) })
    }

    /// See docs for [`super::Umem::frame_mut`].
    #[inline]
    pub unsafe fn frame_mut<'a>(
        &'a self,
        desc: &'a mut FrameDesc,
    ) -> (HeadroomMut<'a>, DataMut<'a>) {
        // SAFETY: see `super::Umem::frame_mut`
        let headroom_ptr = unsafe { self.headroom_ptr(desc) };
        let data_ptr = unsafe { self.data_ptr(desc) };

        let headroom =
            unsafe { slice::from_raw_parts_mut(headroom_ptr, self.headroom_capacity(desc)) };

        let data = unsafe { slice::from_raw_parts_mut(data_ptr, self.data_capacity(desc)) };

        (
            HeadroomMut::new(&mut desc.lengths.headroom, headroom),
            DataMut::new(&mut desc.lengths.data, data),
        )
    }

    /// See docs for [`super::Umem::headroom_mut`].
    #[inline]
    pub unsafe fn headroom_mut<'a>(&'a self, desc: &'a mut FrameDesc) -> HeadroomMut<'a> {
        // SAFETY: see `frame_mut`.
        let headroom_ptr = unsafe { self.headroom_ptr(desc) };

        let headroom =
            unsafe { slice::from_raw_parts_mut(headroom_ptr, self.headroom_capacity(desc)) };

        HeadroomMut::new(&mut desc.lengths.headroom, headroom)
    }

    /// See docs for [`super::Umem::data_mut`].
    #[inline]
    pub unsafe fn data_mut<'a>(&'a self, desc: &'a mut FrameDesc) -> DataMut<'a> {
        // SAFETY: see `frame_mut`.
        let data_ptr = unsafe { self.data_ptr(desc) };

        let data = unsafe { slice::from_raw_parts_mut(data_ptr, self.data_capacity(desc)) };

        DataMut::new(&mut desc.lengths.data, data)
    }
}
