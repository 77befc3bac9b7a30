//! The harness's sink on a real interface: counts (and drops) every frame
//! that reaches `--iface`, printing packets and bits per second each
//! interval, until Ctrl-C. The sink box of a three-machine benchmark
//! (pktgen -> homeward -> sink): docs/benchmarks.md has the command lines.
//!
//! It runs bpf/sink.c in native (driver) mode, the program `forward` puts
//! on its veth sink, so counting costs the sink box one map update per
//! frame and no skb.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

use homeward_benches::bpf::{self, Sink};
use homeward_benches::sys;

static STOP: AtomicBool = AtomicBool::new(false);

/// Count the frames arriving at an interface (root; native XDP).
#[derive(Debug, Parser)]
#[command(name = "sink")]
struct Args {
    /// The interface the device under test transmits to.
    #[arg(long)]
    iface: String,
    /// Seconds between lines.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed)) {
        eprintln!("sink: cannot install the signal handler: {e}");
        std::process::exit(1);
    }
    if let Err(e) = run(&args) {
        eprintln!("sink: {e}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn run(args: &Args) -> Result<()> {
    if args.interval.is_nan() || args.interval <= 0.0 {
        return Err("--interval must be above 0".into());
    }
    let ifindex = sys::if_nametoindex(&args.iface)
        .map_err(|e| format!("no interface {}: {e}", args.iface))?;
    sys::catch_sigterm().map_err(|e| format!("cannot catch SIGTERM: {e}"))?;
    let sink = Sink::load()?;
    // The latency pass is what counts IP-in-IP frames; pktgen's payload has
    // no generator stamp, so no latency is recorded.
    sink.set_latency(true)?;
    sink.reset()?;
    bpf::attach_native(ifindex, sink.count_fd).map_err(|e| {
        format!(
            "{e} (the sink needs native XDP: a driver with XDP support, and no other XDP program on {})",
            args.iface
        )
    })?;
    println!(
        "counting frames at {} (native XDP, every frame dropped); Ctrl-C to stop",
        args.iface
    );
    let result = count(args, &sink);
    // Detach whatever happened: the interface must not stay a black hole.
    let detached = bpf::detach_native(ifindex);
    result?;
    detached?;
    Ok(())
}

fn count(args: &Args, sink: &Sink) -> Result<()> {
    let started = Instant::now();
    let interval = Duration::from_secs_f64(args.interval);
    let first = sink.stats()?;
    let mut last = first;
    let mut t = Instant::now();
    while !STOP.load(Ordering::Relaxed) && !sys::terminated() {
        thread::sleep(interval);
        let now = sink.stats()?;
        let dt = t.elapsed().as_secs_f64();
        t = Instant::now();
        println!(
            "{:8.1} s  {:>12.0} pps  {:>9.1} Mbit/s  ({} packets, {} IP-in-IP)",
            started.elapsed().as_secs_f64(),
            (now.packets - last.packets) as f64 / dt,
            (now.bytes - last.bytes) as f64 * 8.0 / dt / 1e6,
            now.packets - first.packets,
            now.ipip - first.ipip,
        );
        last = now;
        if args
            .duration
            .is_some_and(|d| started.elapsed().as_secs_f64() >= d)
        {
            break;
        }
    }
    let total = started.elapsed().as_secs_f64();
    println!(
        "total: {} packets in {total:.1} s, {:.0} pps on average",
        last.packets - first.packets,
        (last.packets - first.packets) as f64 / total
    );
    Ok(())
}
