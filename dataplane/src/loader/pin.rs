//! The pin directory: how a restarted homeward recognises, crash-safely, the
//! XDP program that an earlier run of the same instance left attached.
//!
//! Layout of the directory (on bpffs, chosen by the caller, e.g.
//! `/sys/fs/bpf/homeward/<instance>`):
//!
//! - `prog-<id>`: a steering program whose kernel id is `<id>`. A new program
//!   is pinned here before it is attached anywhere, and stays pinned while
//!   its homeward runs. A crash (`kill -9`, OOM) leaves the pin, and the
//!   program attached.
//! - `maps/<name>`: the running program's maps, for bpftool.
//!
//! An XDP program found attached is ours from an earlier run when
//! `prog-<its id>` holds a program of that very kernel id (the id is read
//! from the pinned object, not taken from the file name) named
//! `homeward_steer`. The pin keeps that program alive, so its id cannot have
//! been reused by anyone else's program in the meantime. Anything else is
//! never touched.
//!
//! While a [`Steering`](super::Steering) uses the directory it holds an
//! exclusive `flock(2)` on it: a second homeward started with the same
//! directory is refused instead of taking over the interfaces of the one that
//! runs. The kernel drops the lock with the process, so a crash releases it.

use std::ffi::c_int;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libxdp_sys as sys;

use super::{
    ifname, interfaces, is_bpffs, mount_bpffs, neg_errno, path_cstring, prog_info, xdp_detach,
    xdp_state, LoaderError, MAP_NAMES, PROGRAM_NAME,
};

/// Prefix of a program pin: `prog-<kernel id>`.
pub(super) const PROG_PREFIX: &str = "prog-";
/// Subdirectory of the map pins.
pub(super) const MAPS_DIR: &str = "maps";
/// Where bpffs is mounted when the pin directory is below it and it is not.
const BPFFS: &str = "/sys/fs/bpf";

/// Serialises "is bpffs mounted? if not, mount it" within the process: two
/// threads doing it at once would stack two bpffs instances, and pins made
/// in the lower one would vanish from view.
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

/// Mount bpffs at `/sys/fs/bpf` if `dir` is below it and it is not mounted,
/// create `dir` (mode 0700), and check that it is on bpffs. `err` gives an
/// I/O failure its context.
pub(super) fn prepare_dir(
    dir: &Path,
    err: impl Fn(&'static str, &Path, io::Error) -> LoaderError,
) -> Result<(), LoaderError> {
    let bpffs = Path::new(BPFFS);
    if dir.starts_with(bpffs) {
        let _guard = MOUNT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if !is_bpffs(bpffs).map_err(|e| err("checking the filesystem of", bpffs, e))? {
            mount_bpffs(bpffs).map_err(|e| err("mounting bpffs at", bpffs, e))?;
        }
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err("creating", dir, e))?;
    if !is_bpffs(dir).map_err(|e| err("checking the filesystem of", dir, e))? {
        return Err(LoaderError::NotBpffs {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

fn pin_err(op: &'static str, path: &Path, source: io::Error) -> LoaderError {
    LoaderError::PinDir {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `Ok(())` for a path that is not there.
fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Open a pinned object; `Ok(None)` if nothing is pinned at `path`.
fn obj_get(path: &Path) -> io::Result<Option<OwnedFd>> {
    let cpath = path_cstring(path)?;
    // SAFETY: `cpath` is NUL-terminated and outlives the call.
    let fd = unsafe { sys::bpf_obj_get(cpath.as_ptr()) };
    if fd == -libc::ENOENT {
        return Ok(None);
    }
    if fd < 0 {
        return Err(neg_errno(fd));
    }
    // SAFETY: the kernel just returned `fd` to us (O_CLOEXEC, as every bpf
    // fd); nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn obj_pin(fd: RawFd, path: &Path) -> io::Result<()> {
    let cpath = path_cstring(path)?;
    // SAFETY: `fd` is a live BPF object fd; `cpath` is NUL-terminated and
    // outlives the call.
    let ret = unsafe { sys::bpf_obj_pin(fd, cpath.as_ptr()) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(())
}

/// The kernel id a program pin's file name claims (`prog-<id>`).
pub(super) fn pinned_id(name: &str) -> Option<u32> {
    name.strip_prefix(PROG_PREFIX)?.parse().ok()
}

/// A pin directory in use (locked) by one [`Steering`](super::Steering).
#[derive(Debug)]
pub(super) struct PinDir {
    path: PathBuf,
    /// The directory, opened and `flock`ed exclusively: held while we run.
    _lock: File,
    /// Kernel id of our program once pinned as `prog-<id>`.
    ours: Option<u32>,
    /// Whether `maps/` holds our maps.
    maps_pinned: bool,
}

impl PinDir {
    /// Create (mounting bpffs if needed) and lock the directory. Refuses with
    /// [`LoaderError::PinDirBusy`] a directory another running homeward uses.
    pub(super) fn open(path: &Path) -> Result<PinDir, LoaderError> {
        // The holder may remove the directory right after we opened it and
        // before its lock went (clean shutdown): then the lock we get is on
        // a deleted directory, so check and try again.
        for _ in 0..4 {
            prepare_dir(path, pin_err)?;
            let dir = File::open(path).map_err(|e| pin_err("opening", path, e))?;
            // SAFETY: `dir` is an open fd for the call; flock has no
            // memory-safety preconditions.
            let ret = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if ret < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(LoaderError::PinDirBusy {
                        path: path.to_path_buf(),
                    });
                }
                return Err(pin_err("locking", path, e));
            }
            let held = dir.metadata().map_err(|e| pin_err("reading", path, e))?;
            match fs::metadata(path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(PinDir {
                        path: path.to_path_buf(),
                        _lock: dir,
                        ours: None,
                        maps_pinned: false,
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(pin_err("reading", path, e)),
            }
        }
        Err(pin_err(
            "locking (it keeps being removed and recreated)",
            path,
            io::Error::from_raw_os_error(libc::EAGAIN),
        ))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the program of kernel id `id` is pinned.
    pub(super) fn prog_pin(&self, id: u32) -> PathBuf {
        self.path.join(format!("{PROG_PREFIX}{id}"))
    }

    /// Pin our program again as `prog-<id>`, replacing the pin if there.
    pub(super) fn repin_program(&mut self, prog_fd: RawFd, id: u32) -> Result<(), LoaderError> {
        let path = self.prog_pin(id);
        remove_if_there(&path).map_err(|e| pin_err("replacing the pin", &path, e))?;
        self.pin_program(prog_fd, id)
    }

    /// Pin our (loaded, not yet attached) program as `prog-<id>`.
    pub(super) fn pin_program(&mut self, prog_fd: RawFd, id: u32) -> Result<(), LoaderError> {
        let path = self.prog_pin(id);
        obj_pin(prog_fd, &path)
            .map_err(|e| pin_err("pinning the steering program at", &path, e))?;
        self.ours = Some(id);
        Ok(())
    }

    /// Pin the maps as `maps/<name>`, replacing the pins an earlier run left.
    pub(super) fn pin_maps(&mut self, maps: &[(&'static str, RawFd)]) -> Result<(), LoaderError> {
        let dir = self.path.join(MAPS_DIR);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| pin_err("creating", &dir, e))?;
        self.maps_pinned = true;
        for &(name, fd) in maps {
            let path = dir.join(name);
            remove_if_there(&path).map_err(|e| pin_err("removing the old map pin", &path, e))?;
            obj_pin(fd, &path).map_err(|e| pin_err("pinning map at", &path, e))?;
        }
        Ok(())
    }

    /// If the program of kernel id `prog_id` is one an earlier run of this
    /// instance pinned here, an fd of it (for `XDP_FLAGS_REPLACE`).
    pub(super) fn recognise(&self, prog_id: u32) -> Result<Option<OwnedFd>, LoaderError> {
        let path = self.prog_pin(prog_id);
        let Some(fd) = obj_get(&path).map_err(|e| pin_err("opening the pin", &path, e))? else {
            return Ok(None);
        };
        // Not a program (EINVAL): then it is not ours either.
        let Ok(info) = prog_info(fd.as_raw_fd()) else {
            tracing::debug!(pin = %path.display(), "pin is not a program");
            return Ok(None);
        };
        if info.id != prog_id
            || info.name != PROGRAM_NAME
            || info.prog_type != sys::bpf_prog_type_BPF_PROG_TYPE_XDP
        {
            tracing::debug!(
                pin = %path.display(),
                id = info.id,
                name = info.name,
                "pin does not hold the attached program"
            );
            return Ok(None);
        }
        Ok(Some(fd))
    }

    /// Remove the program pins of other ids than ours (earlier runs'), once
    /// every interface is ours. A program of such a pin still attached to an
    /// interface of this network namespace (one this run does not use any
    /// more) is detached first, so that it does not linger unrecognisable.
    /// Best effort: failures are logged.
    pub(super) fn remove_stale(&self) {
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.path.display(), error = %e, "listing the pin directory");
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(pinned_id) else {
                continue;
            };
            if Some(id) == self.ours {
                continue;
            }
            let path = entry.path();
            match self.recognise(id) {
                Ok(Some(fd)) => detach_everywhere(id, fd.as_raw_fd()),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "checking a stale pin"),
            }
            match remove_if_there(&path) {
                Ok(()) => {
                    tracing::info!(pin = %path.display(), "removed the pin of an earlier run")
                }
                Err(e) => {
                    tracing::warn!(pin = %path.display(), error = %e, "removing a stale pin")
                }
            }
        }
    }

    /// Clean shutdown: remove the map pins, our program pin unless
    /// `keep_program` (it may still be attached somewhere), and the
    /// directory if that leaves it empty. Then the lock goes.
    pub(super) fn close(self, keep_program: bool) {
        let warn = |path: &Path, e: io::Error| {
            tracing::warn!(path = %path.display(), error = %e, "removing a pin");
        };
        if self.maps_pinned {
            let dir = self.path.join(MAPS_DIR);
            for name in MAP_NAMES {
                let path = dir.join(name);
                if let Err(e) = remove_if_there(&path) {
                    warn(&path, e);
                }
            }
            if let Err(e) = fs::remove_dir(&dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn(&dir, e);
                }
            }
        }
        if let Some(id) = self.ours.filter(|_| !keep_program) {
            let path = self.prog_pin(id);
            if let Err(e) = remove_if_there(&path) {
                warn(&path, e);
            }
        }
        match fs::remove_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => tracing::debug!(
                dir = %self.path.display(),
                "pin directory not empty; left in place"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn(&self.path, e),
        }
    }
}

/// Detach the stale program `id` (fd `fd`) from every interface of this
/// network namespace that still runs it, in the mode it is attached in,
/// only if it is still the attached one (`XDP_FLAGS_REPLACE`).
fn detach_everywhere(id: u32, fd: RawFd) {
    let ifaces = match interfaces() {
        Ok(ifaces) => ifaces,
        Err(e) => {
            tracing::warn!(prog_id = id, error = %e, "listing interfaces to find a stale program");
            return;
        }
    };
    for ifindex in ifaces {
        let Ok(ifindex_c) = c_int::try_from(ifindex) else {
            continue;
        };
        let Ok(state) = xdp_state(ifindex_c) else {
            continue;
        };
        for (mode, attached) in state.per_mode() {
            if attached != id {
                continue;
            }
            let name = ifname(ifindex).unwrap_or_else(|_| ifindex.to_string());
            match xdp_detach(ifindex_c, mode, fd) {
                Ok(()) => tracing::warn!(
                    ifname = name,
                    prog_id = id,
                    "detached the XDP program a previous homeward left (id {id}) from an interface this run does not use"
                ),
                Err(e) => tracing::warn!(
                    ifname = name,
                    prog_id = id,
                    error = %e,
                    "detaching the XDP program a previous homeward left"
                ),
            }
        }
    }
}
