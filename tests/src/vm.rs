//! The test VM's guest: Debian's cloud kernel plus a busybox initramfs.
//!
//! `scripts/install-deps.sh` unpacks the kernel (`vmlinuz`) and the virtio
//! modules it needs into [`vm_cache_dir`]; it never installs a kernel on the
//! host. [`GuestImage::build`] packs busybox-static, those modules, the
//! guest's `/init` (`tests/vm/init`) and its web server's files into a newc
//! cpio, cached there per content hash, so parallel tests share one.
//!
//! The guest takes its address from the kernel command line
//! (`hw_addr=192.0.2.50/24 hw_gw=192.0.2.1`), pings the gateway once (the
//! gateway's ARP cache learns it), and serves:
//! - TCP 8080, busybox httpd: `/hello.txt` ("homeward-vm up") for probes and
//!   `/cgi-bin/stream?chunk=N&delay=USEC`, the numbers `1\n2\n3\n...`
//!   ([`expected_stream`]) paced in the guest, for downloads;
//! - TCP 7: echo, for the simplest reachability probes.
//!
//! It prints [`READY_MARKER`] on the serial console when all that runs.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::link::Mac;

/// Where install-deps.sh puts the guest kernel and modules (override with
/// `$HOMEWARD_VM_CACHE`, as the script does).
pub const VM_CACHE_ENV: &str = "HOMEWARD_VM_CACHE";
/// Default of [`VM_CACHE_ENV`].
pub const DEFAULT_VM_CACHE: &str = "/var/cache/homeward/vm";
/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";
/// The line the guest's `/init` prints on the console when its servers run.
pub const READY_MARKER: &str = "HOMEWARD-VM-READY";
/// The VM's home address (the same as [`crate::topology::VM_HOME_ADDR`]).
pub const VM_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
/// Its gateway: the home agent's LAN address.
pub const VM_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Its fixed MAC (QEMU's 52:54:00 prefix), so ARP caches and bridges keep
/// one identity across migrations.
pub const VM_MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x50]);
/// HTTP port of the guest's server.
pub const HTTP_PORT: u16 = 8080;
/// TCP echo port of the guest.
pub const ECHO_PORT: u16 = 7;
/// Path of the paced stream on [`HTTP_PORT`].
pub const STREAM_PATH: &str = "/cgi-bin/stream";
/// Path of the probe page on [`HTTP_PORT`] and its body.
pub const HELLO_PATH: &str = "/hello.txt";
/// Body of [`HELLO_PATH`].
pub const HELLO_BODY: &str = "homeward-vm up\n";

const INIT: &str = include_str!("../vm/init");
const STREAM_CGI: &str = include_str!("../vm/stream.cgi");
const HELLO: &str = include_str!("../vm/hello.txt");

/// The cache directory install-deps.sh fills.
pub fn vm_cache_dir() -> PathBuf {
    std::env::var_os(VM_CACHE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VM_CACHE))
}

/// The first `len` bytes of the guest's stream body: `1\n2\n3\n...`.
pub fn expected_stream(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut n: u64 = 1;
    while out.len() < len {
        out.extend_from_slice(n.to_string().as_bytes());
        out.push(b'\n');
        n += 1;
    }
    out.truncate(len);
    out
}

/// What the guest needs to boot: kernel, initramfs and the command line.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The cloud kernel's `vmlinuz`.
    pub kernel: PathBuf,
    /// The cached initramfs (uncompressed newc cpio).
    pub initramfs: PathBuf,
    /// Kernel release of the modules packed (`6.1.0-...-cloud-amd64`).
    pub kernel_version: String,
}

/// The guest's network settings, passed on the kernel command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestNet {
    /// eth0's address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
}

impl Default for GuestNet {
    fn default() -> GuestNet {
        GuestNet {
            addr: VM_ADDR,
            prefix: 24,
            gateway: VM_GATEWAY,
        }
    }
}

impl GuestNet {
    /// The kernel command line for this guest: serial console, our
    /// parameters, and a reboot-free panic so a broken guest shows in the
    /// log instead of looping.
    pub fn cmdline(&self) -> String {
        format!(
            "console=ttyS0 loglevel=4 panic=-1 hw_addr={}/{} hw_gw={}",
            self.addr, self.prefix, self.gateway
        )
    }
}

impl GuestImage {
    /// Finds the kernel and builds (or reuses) the initramfs. Panics with a
    /// pointer to install-deps.sh if something is missing.
    #[track_caller]
    pub fn build() -> GuestImage {
        let cache = vm_cache_dir();
        let kernel = cache.join("vmlinuz");
        let hint = "run scripts/install-deps.sh (as root) to unpack the guest kernel";
        assert!(
            kernel.is_file(),
            "no guest kernel at {}: {hint}",
            kernel.display()
        );
        let kernel_version = fs::read_to_string(cache.join("version"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let list = fs::read_to_string(cache.join("modules.list"))
            .unwrap_or_else(|e| panic!("{}/modules.list: {e}: {hint}", cache.display()));
        let busybox = fs::read(BUSYBOX)
            .unwrap_or_else(|e| panic!("{BUSYBOX}: {e}: install busybox-static ({hint})"));

        let mut files: Vec<Entry> = vec![
            Entry::dir("bin"),
            Entry::dir("dev"),
            Entry::dir("proc"),
            Entry::dir("sys"),
            Entry::dir("tmp"),
            Entry::dir("etc"),
            Entry::dir("lib"),
            Entry::dir("lib/modules"),
            Entry::dir("www"),
            Entry::dir("www/cgi-bin"),
            // The kernel opens /dev/console for init's stdio before devtmpfs
            // is mounted; an external initramfs must bring the node itself.
            Entry::chardev("dev/console", 5, 1),
            Entry::file("bin/busybox", 0o755, busybox),
            Entry::symlink("bin/sh", "busybox"),
            Entry::file("init", 0o755, INIT.as_bytes().to_vec()),
            Entry::file("www/cgi-bin/stream", 0o755, STREAM_CGI.as_bytes().to_vec()),
            Entry::file("www/hello.txt", 0o644, HELLO.as_bytes().to_vec()),
            Entry::file("www/index.html", 0o644, HELLO.as_bytes().to_vec()),
            Entry::file("lib/modules/modules.list", 0o644, list.as_bytes().to_vec()),
        ];
        for module in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let path = cache.join("modules").join(module);
            let data =
                fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}: {hint}", path.display()));
            files.push(Entry::file(&format!("lib/modules/{module}"), 0o644, data));
        }

        let cpio = newc_archive(&files);
        let hash = fnv1a64(&cpio);
        let initramfs = cache.join(format!("initramfs-{hash:016x}.cpio"));
        if !initramfs.is_file() {
            // Write under a unique name, then rename: parallel tests may
            // build the same archive at once.
            let tmp = cache.join(format!(
                ".initramfs-{hash:016x}.{}.{:?}.tmp",
                std::process::id(),
                std::thread::current().id()
            ));
            let mut f = fs::File::create(&tmp)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
            f.write_all(&cpio)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
            drop(f);
            fs::rename(&tmp, &initramfs)
                .unwrap_or_else(|e| panic!("cannot rename to {}: {e}", initramfs.display()));
        }
        GuestImage {
            kernel,
            initramfs,
            kernel_version,
        }
    }
}

/// One member of the cpio archive.
struct Entry {
    name: String,
    mode: u32,
    data: Vec<u8>,
    rdev: (u32, u32),
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Entry {
    fn dir(name: &str) -> Entry {
        Entry {
            name: name.into(),
            mode: S_IFDIR | 0o755,
            data: Vec::new(),
            rdev: (0, 0),
        }
    }
    fn file(name: &str, perm: u32, data: Vec<u8>) -> Entry {
        Entry {
            name: name.into(),
            mode: S_IFREG | perm,
            data,
            rdev: (0, 0),
        }
    }
    fn symlink(name: &str, target: &str) -> Entry {
        Entry {
            name: name.into(),
            mode: S_IFLNK | 0o777,
            data: target.as_bytes().to_vec(),
            rdev: (0, 0),
        }
    }
    fn chardev(name: &str, major: u32, minor: u32) -> Entry {
        Entry {
            name: name.into(),
            mode: S_IFCHR | 0o600,
            data: Vec::new(),
            rdev: (major, minor),
        }
    }
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as
/// initramfs. Written here rather than with cpio(1): a dozen lines, and no
/// host tool to install. Timestamps are 0 so the bytes (and the cache
/// hash) depend on the contents only.
fn newc_archive(entries: &[Entry]) -> Vec<u8> {
    fn pad4(out: &mut Vec<u8>) {
        // (not is_multiple_of: the workspace MSRV is 1.85)
        while out.len() & 3 != 0 {
            out.push(0);
        }
    }
    fn member(out: &mut Vec<u8>, ino: u32, e: &Entry) {
        let nlink = if e.mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            ino,
            e.mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            e.data.len() as u32,
            0, // devmajor
            0, // devminor
            e.rdev.0,
            e.rdev.1,
            e.name.len() as u32 + 1,
            0, // check
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(e.name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(&e.data);
        pad4(out);
    }
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        member(&mut out, i as u32 + 1, e);
    }
    member(
        &mut out,
        0,
        &Entry {
            name: "TRAILER!!!".into(),
            mode: 0,
            data: Vec::new(),
            rdev: (0, 0),
        },
    );
    out
}

/// FNV-1a, 64 bits: stable across Rust versions (unlike std's hasher), so
/// the cache name of an archive does not change with the toolchain.
fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A path as a string, for QEMU option strings and QMP arguments.
pub(crate) fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_the_numbers() {
        assert_eq!(expected_stream(10), b"1\n2\n3\n4\n5\n");
        let s = expected_stream(100_000);
        assert_eq!(s.len(), 100_000);
        assert!(s.starts_with(b"1\n2\n"));
        assert!(String::from_utf8(s).unwrap().contains("\n9999\n10000\n"));
    }

    #[test]
    fn newc_layout() {
        let a = newc_archive(&[Entry::file("init", 0o755, b"abc".to_vec())]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        // header 110 bytes + "init\0" padded to 116, data 3 padded to 4
        assert_eq!(&a[116..119], b"abc");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
