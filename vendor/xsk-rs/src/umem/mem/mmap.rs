pub use inner::Mmap;

use std::{io, ptr::NonNull};

#[cfg(not(test))]
mod inner {
    use libc::{MAP_FAILED, MAP_POPULATE, MAP_SHARED, PROT_READ, PROT_WRITE};
    use log::error;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::ptr;

    use super::*;

    /// A shared mapping of a memfd.
    ///
    /// homeward patch: the region is a memfd rather than anonymous
    /// memory, so that it can be handed to another process (with
    /// `SCM_RIGHTS`) which maps the very same pages: the kernel keeps
    /// the UMEM's pages pinned, not the mapping, and a successor that
    /// maps the memfd sees every frame where the predecessor left it.
    #[derive(Debug)]
    pub struct Mmap {
        addr: NonNull<libc::c_void>,
        len: usize,
        memfd: OwnedFd,
    }

    unsafe impl Send for Mmap {}

    impl Mmap {
        pub fn new(len: usize, use_huge_pages: bool) -> io::Result<Self> {
            let mut flags = libc::MFD_CLOEXEC;
            if use_huge_pages {
                flags |= libc::MFD_HUGETLB;
            }
            // SAFETY: the name is a NUL-terminated string; memfd_create
            // has no other memory-safety preconditions.
            let fd = unsafe { libc::memfd_create(c"xsk-umem".as_ptr(), flags) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned to us and nothing else owns it.
            let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
            let size = libc::off_t::try_from(len)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: plain syscall on an fd we own.
            if unsafe { libc::ftruncate(memfd.as_raw_fd(), size) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Self::map(memfd, len)
        }

        /// Map `len` bytes of a memfd another process created with
        /// [`Mmap::new`].
        pub fn from_memfd(memfd: OwnedFd, len: usize) -> io::Result<Self> {
            // SAFETY: `stat` is plain data, written by fstat.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `st` is a valid, writeable stat for the call.
            if unsafe { libc::fstat(memfd.as_raw_fd(), &mut st) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if (st.st_size as u64) < len as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("memfd holds {} bytes, UMEM needs {len}", st.st_size),
                ));
            }
            Self::map(memfd, len)
        }

        fn map(memfd: OwnedFd, len: usize) -> io::Result<Self> {
            // MAP_SHARED: the kernel and any process mapping the memfd
            // see the same pages. MAP_POPULATE: pre-populate page
            // tables, reduces blocking on page faults later.
            let addr = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    len,
                    PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_POPULATE,
                    memfd.as_raw_fd(),
                    0,
                )
            };

            if addr == MAP_FAILED {
                Err(io::Error::last_os_error())
            } else {
                let addr =
                    NonNull::new(addr).expect("ptr non-null since we confirmed `mmap()` succeeded");

                Ok(Mmap { addr, len, memfd })
            }
        }

        /// Returns a pointer to the start of the mmap'd region.
        #[inline]
        pub fn addr(&self) -> NonNull<libc::c_void> {
            self.addr
        }

        /// The memfd behind the region.
        pub fn memfd(&self) -> Option<RawFd> {
            Some(self.memfd.as_raw_fd())
        }
    }

    impl Drop for Mmap {
        fn drop(&mut self) {
            let err = unsafe { libc::munmap(self.addr.as_ptr(), self.len) };

            if err != 0 {
                error!(
                    "`munmap()` failed with error: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

#[cfg(test)]
mod inner {
    use std::mem::ManuallyDrop;

    use super::*;

    #[derive(Debug)]
    struct VecParts<T> {
        ptr: NonNull<T>,
        len: usize,
        capacity: usize,
    }

    unsafe impl<T> Send for VecParts<T> {}

    impl<T> VecParts<T> {
        fn new(v: Vec<T>) -> Self {
            let mut v = ManuallyDrop::new(v);

            Self {
                ptr: NonNull::new(v.as_mut_ptr()).expect("obtained pointer from Vec"),
                len: v.len(),
                capacity: v.capacity(),
            }
        }
    }

    impl<T> Drop for VecParts<T> {
        fn drop(&mut self) {
            unsafe { Vec::from_raw_parts(self.ptr.as_ptr(), self.len, self.capacity) };
        }
    }

    /// A mocked [`Mmap`] that uses the heap for memory.
    #[derive(Debug)]
    pub struct Mmap(VecParts<u8>);

    impl Mmap {
        pub fn new(len: usize, _use_huge_pages: bool) -> io::Result<Self> {
            Ok(Self(VecParts::new(vec![0; len])))
        }

        pub fn from_memfd(_memfd: std::os::fd::OwnedFd, len: usize) -> io::Result<Self> {
            Self::new(len, false)
        }

        pub fn memfd(&self) -> Option<std::os::fd::RawFd> {
            None
        }

        /// Returns a pointer to the start of the mmap'd region.
        #[inline]
        pub fn addr(&self) -> NonNull<libc::c_void> {
            NonNull::new(self.0.ptr.as_ptr() as *mut libc::c_void).unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn confirm_pointer_offset_is_a_single_byte() {
        assert_eq!(std::mem::size_of::<libc::c_void>(), 1);
    }
}
