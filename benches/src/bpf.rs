//! The benchmark's BPF programs (built from `bpf/*.c` by `build.rs`) and
//! safe handles for them: the generator, the sink and the two in-kernel
//! baselines. The `#[repr]`-free structs here mirror the C structs by
//! explicit byte layout (`to_bytes` / `from_bytes`); each C struct has a
//! `_Static_assert` on its size and libbpf checks the sizes on every map
//! access.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use crate::hist::N_BUCKETS;
use crate::sys::{self, Map, Object};

#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static GEN_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/gen.bpf.o")));
static SINK_OBJ: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/sink.bpf.o")));
static REDIRECT_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/baseline_redirect.bpf.o"
)));
static IPIP_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/baseline_ipip.bpf.o"
)));

/// Errors with the step that failed.
#[derive(Debug)]
pub struct BpfError {
    /// What was being done.
    pub what: String,
    /// The cause.
    pub source: io::Error,
}

impl std::fmt::Display for BpfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for BpfError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, BpfError>;

fn ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> BpfError {
    let what = what.into();
    move |source| BpfError { what, source }
}

const ZERO_KEY: [u8; 4] = [0; 4];

fn load(bytes: &'static Aligned<[u8]>, name: &'static CStr) -> Result<Object> {
    Object::load(&bytes.0, name).map_err(ctx(format!("loading BPF object {name:?}")))
}

fn map<'a>(obj: &'a Object, name: &str) -> Result<Map<'a>> {
    obj.map(name).map_err(ctx(format!("map {name}")))
}

fn prog_fd(obj: &Object, name: &str) -> Result<RawFd> {
    obj.prog_fd(name).map_err(ctx(format!("program {name}")))
}

/// Sum over CPUs of a per-CPU value made of `u64` fields.
fn percpu_u64s(map: &Map<'_>, key: &[u8], ncpus: usize) -> Result<Vec<u64>> {
    let size = map.value_size();
    let mut buf = vec![0u8; size.next_multiple_of(8) * ncpus];
    map.lookup(key, &mut buf)
        .map_err(ctx("per-CPU map lookup"))?;
    let fields = size / 8;
    let mut sum = vec![0u64; fields];
    for cpu in buf.chunks_exact(size.next_multiple_of(8)) {
        for (s, f) in sum.iter_mut().zip(cpu.chunks_exact(8)) {
            *s += u64::from_ne_bytes(f.try_into().unwrap_or([0; 8]));
        }
    }
    Ok(sum)
}

/// Zeroes a per-CPU value on every CPU.
fn percpu_zero(map: &Map<'_>, key: &[u8], ncpus: usize) -> Result<()> {
    let buf = vec![0u8; map.value_size().next_multiple_of(8) * ncpus];
    map.update(key, &buf).map_err(ctx("per-CPU map reset"))
}

/// Configuration of the generator (`struct gen_config` in bpf/gen.c).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenConfig {
    /// Ethernet + IPv4 + UDP headers written into every frame (42 bytes).
    pub headers: [u8; crate::frames::UDP_HDRS],
    /// Packets per second per generating CPU; 0: as fast as possible.
    pub rate_pps: u64,
    /// Largest burst after a pause, packets.
    pub burst: u64,
    /// Read the clock every `clock_mask + 1` iterations while out of credit.
    pub clock_mask: u32,
    /// UDP source port = `sport_base + (seq & flow_mask)`.
    pub flow_mask: u32,
    /// First UDP source port.
    pub sport_base: u16,
    /// Write the send time into every payload (for latency).
    pub stamp: bool,
    /// Destinations: the template's and the next `vm_count - 1` addresses,
    /// spread pseudo-randomly over the frames (0 or 1: the template's).
    pub vm_count: u32,
}

impl GenConfig {
    /// The 88 bytes of `struct gen_config`.
    pub fn to_bytes(&self) -> [u8; 88] {
        let mut b = [0u8; 88];
        b[..self.headers.len()].copy_from_slice(&self.headers);
        b[48..56].copy_from_slice(&self.rate_pps.to_ne_bytes());
        b[56..64].copy_from_slice(&self.burst.to_ne_bytes());
        b[64..68].copy_from_slice(&self.clock_mask.to_ne_bytes());
        b[68..72].copy_from_slice(&self.flow_mask.to_ne_bytes());
        b[72..76].copy_from_slice(&u32::from(self.sport_base).to_ne_bytes());
        b[76..80].copy_from_slice(&u32::from(self.stamp).to_ne_bytes());
        b[80..84].copy_from_slice(&self.vm_count.to_ne_bytes());
        b
    }
}

/// Counters of the generator, summed over CPUs (`struct gen_state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Frames sent (XDP_TX).
    pub sent: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Iterations without credit (paced, XDP_DROP).
    pub paced: u64,
    /// Clock reads for pacing.
    pub clock_reads: u64,
    /// Frames too short for the headers.
    pub short_frames: u64,
}

/// The generator program, loaded.
#[derive(Debug)]
pub struct Generator {
    obj: Object,
    prog: RawFd,
    ncpus: usize,
}

impl Generator {
    /// Loads bpf/gen.c.
    pub fn load() -> Result<Generator> {
        let obj = load(GEN_OBJ, c"hwb_gen")?;
        let prog = prog_fd(&obj, "gen")?;
        let ncpus = sys::num_possible_cpus().map_err(ctx("number of CPUs"))?;
        Ok(Generator { obj, prog, ncpus })
    }

    /// Sets the configuration used by every following run.
    pub fn configure(&self, cfg: &GenConfig) -> Result<()> {
        map(&self.obj, "gen_cfg")?
            .update(&ZERO_KEY, &cfg.to_bytes())
            .map_err(ctx("writing gen_cfg"))
    }

    /// Zeroes the counters and the pacing state.
    pub fn reset(&self) -> Result<()> {
        percpu_zero(&map(&self.obj, "gen_stats")?, &ZERO_KEY, self.ncpus)
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<GenStats> {
        let v = percpu_u64s(&map(&self.obj, "gen_stats")?, &ZERO_KEY, self.ncpus)?;
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        Ok(GenStats {
            sent: get(0),
            bytes: get(1),
            paced: get(2),
            clock_reads: get(3),
            short_frames: get(7),
        })
    }

    /// The program's file descriptor.
    pub fn prog_fd(&self) -> RawFd {
        self.prog
    }

    /// Runs the generator `repeat` times in live-frames mode on `ifindex`
    /// (in the calling thread's namespace), queue `rx_queue`, with frames of
    /// `frame.len()` bytes initialised from `frame`. Returns the kernel's
    /// average ns per run.
    pub fn run(
        &self,
        frame: &[u8],
        ifindex: u32,
        rx_queue: u32,
        repeat: u32,
        batch: u32,
    ) -> io::Result<u32> {
        sys::prog_run_live(self.prog, frame, ifindex, rx_queue, repeat, batch)
    }
}

/// Runs `prog_fd` once on `frame` (BPF_PROG_RUN without live frames: for
/// tests). Returns the XDP action and the frame as the program left it.
pub fn run_once(prog_fd: RawFd, frame: &[u8]) -> io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let (action, len) = sys::prog_run_once(prog_fd, frame, &mut out)?;
    out.truncate(len);
    Ok((action, out))
}

/// Counters of the sink, summed over CPUs (`struct sink_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Frames received.
    pub packets: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Timestamps recorded in the histogram.
    pub stamped: u64,
    /// Frames that were IP-in-IP.
    pub ipip: u64,
}

/// The sink programs, loaded: `sink` (count, latency) and `drop_all`.
#[derive(Debug)]
pub struct Sink {
    obj: Object,
    /// The counting program.
    pub count_fd: RawFd,
    /// The program that only drops.
    pub drop_fd: RawFd,
    ncpus: usize,
}

impl Sink {
    /// Loads bpf/sink.c.
    pub fn load() -> Result<Sink> {
        let obj = load(SINK_OBJ, c"hwb_sink")?;
        let count_fd = prog_fd(&obj, "sink")?;
        let drop_fd = prog_fd(&obj, "drop_all")?;
        let ncpus = sys::num_possible_cpus().map_err(ctx("number of CPUs"))?;
        Ok(Sink {
            obj,
            count_fd,
            drop_fd,
            ncpus,
        })
    }

    /// Turns the latency histogram on or off.
    pub fn set_latency(&self, on: bool) -> Result<()> {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&u32::from(on).to_ne_bytes());
        map(&self.obj, "sink_cfg")?
            .update(&ZERO_KEY, &v)
            .map_err(ctx("writing sink_cfg"))
    }

    /// Zeroes the counters and the histogram.
    pub fn reset(&self) -> Result<()> {
        percpu_zero(&map(&self.obj, "sink_stats")?, &ZERO_KEY, self.ncpus)?;
        let hist = map(&self.obj, "sink_hist")?;
        for i in 0..N_BUCKETS as u32 {
            percpu_zero(&hist, &i.to_ne_bytes(), self.ncpus)?;
        }
        Ok(())
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<SinkStats> {
        let v = percpu_u64s(&map(&self.obj, "sink_stats")?, &ZERO_KEY, self.ncpus)?;
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        Ok(SinkStats {
            packets: get(0),
            bytes: get(1),
            stamped: get(2),
            ipip: get(3),
        })
    }

    /// The latency histogram's bucket counts, summed over CPUs.
    pub fn histogram(&self) -> Result<Vec<u64>> {
        let hist = map(&self.obj, "sink_hist")?;
        (0..N_BUCKETS as u32)
            .map(|i| {
                percpu_u64s(&hist, &i.to_ne_bytes(), self.ncpus)
                    .map(|v| v.first().copied().unwrap_or(0))
            })
            .collect()
    }
}

/// Which in-kernel baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaselineKind {
    /// (b) XDP_REDIRECT without encapsulation (bpf/baseline_redirect.c).
    Redirect,
    /// (c) IP-in-IP encapsulation in XDP (bpf/baseline_ipip.c).
    Ipip,
}

/// An in-kernel forwarding baseline, loaded.
#[derive(Debug)]
pub struct Baseline {
    obj: Object,
    /// Its XDP program.
    pub prog_fd: RawFd,
    /// Which one.
    pub kind: BaselineKind,
}

impl Baseline {
    /// Loads the baseline.
    pub fn load(kind: BaselineKind) -> Result<Baseline> {
        let (obj, prog) = match kind {
            BaselineKind::Redirect => (load(REDIRECT_OBJ, c"hwb_redirect")?, "redirect"),
            BaselineKind::Ipip => (load(IPIP_OBJ, c"hwb_ipip")?, "encap"),
        };
        let prog_fd = prog_fd(&obj, prog)?;
        Ok(Baseline { obj, prog_fd, kind })
    }

    /// Next hop and own addresses, and the egress interface `tx_ifindex`
    /// (resolved in the calling thread's network namespace: call it in the
    /// home agent's).
    pub fn configure(
        &self,
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        ha_addr: Ipv4Addr,
        tx_ifindex: u32,
    ) -> Result<()> {
        let mut v = [0u8; 16];
        v[..6].copy_from_slice(&dst_mac);
        v[6..12].copy_from_slice(&src_mac);
        v[12..16].copy_from_slice(&ha_addr.octets());
        map(&self.obj, "fwd_cfg")?
            .update(&ZERO_KEY, &v)
            .map_err(ctx("writing fwd_cfg"))?;
        map(&self.obj, "tx_port")?
            .update(&ZERO_KEY, &tx_ifindex.to_ne_bytes())
            .map_err(ctx("writing the DEVMAP"))
    }

    /// Binds `vms` addresses from `first` on, all to `care_of` (IP-in-IP
    /// baseline only; no-op otherwise): the map holds up to 2^20.
    pub fn bind_block(&self, first: Ipv4Addr, vms: u32, care_of: Ipv4Addr) -> Result<()> {
        if self.kind != BaselineKind::Ipip {
            return Ok(());
        }
        let m = map(&self.obj, "bound_vms")?;
        for i in 0..vms {
            let vm = Ipv4Addr::from(u32::from(first).wrapping_add(i));
            m.update(&vm.octets(), &care_of.octets())
                .map_err(ctx("writing bound_vms"))?;
        }
        Ok(())
    }

    /// Binds `vm` to `care_of` (IP-in-IP baseline only; no-op otherwise).
    pub fn bind(&self, vm: Ipv4Addr, care_of: Ipv4Addr) -> Result<()> {
        if self.kind != BaselineKind::Ipip {
            return Ok(());
        }
        map(&self.obj, "bound_vms")?
            .update(&vm.octets(), &care_of.octets())
            .map_err(ctx("writing bound_vms"))
    }
}

/// Attaches `prog_fd` in native (driver) mode to `ifindex` of the calling
/// thread's network namespace.
pub fn attach_native(ifindex: u32, prog_fd: RawFd) -> Result<()> {
    sys::xdp_attach(ifindex, prog_fd, sys::XDP_FLAGS_DRV_MODE)
        .map_err(ctx(format!("attaching XDP to ifindex {ifindex}")))
}

/// Removes the native XDP program of `ifindex`.
pub fn detach_native(ifindex: u32) -> Result<()> {
    sys::xdp_detach(ifindex, sys::XDP_FLAGS_DRV_MODE)
        .map_err(ctx(format!("detaching XDP from ifindex {ifindex}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_config_layout() {
        let c = GenConfig {
            headers: [0xab; 42],
            rate_pps: 1,
            burst: 2,
            clock_mask: 3,
            flow_mask: 4,
            sport_base: 5,
            stamp: true,
            vm_count: 6,
        };
        let b = c.to_bytes();
        assert_eq!(&b[..42], &[0xab; 42]);
        assert_eq!(&b[42..48], &[0; 6]);
        assert_eq!(b[48], 1);
        assert_eq!(b[56], 2);
        assert_eq!(b[64], 3);
        assert_eq!(b[68], 4);
        assert_eq!(b[72], 5);
        assert_eq!(b[76], 1);
        assert_eq!(b[80], 6);
        assert_eq!(&b[84..], &[0; 4]);
    }

    #[test]
    fn objects_are_embedded() {
        for o in [GEN_OBJ, SINK_OBJ, REDIRECT_OBJ, IPIP_OBJ] {
            assert_eq!(&o.0[..4], b"\x7fELF");
        }
    }
}
