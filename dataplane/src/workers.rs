//! The workers of one data path, assembled the same way for both roles:
//! per queue, the AF_XDP sockets (the LAN or VM link, and the WAN or
//! uplink if there is one) on one UMEM, registered in the steering
//! program's XSKMAP, and a worker thread running the pipeline; stopped
//! together, each returning its queue's frame accounting.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam::channel::Receiver;

use crate::loader::{LoaderError, Steering, PORT_LAN, PORT_WAN};
use crate::lookup::Tables;
use crate::pipeline::PipelineConfig;
use crate::xsk::{
    pin_current_thread, Command, DeviceTuning, FrameAccounting, Parked, QueueSockets, QueueState,
    Worker, WorkerShared, XskConfig, XskError,
};

/// What the workers serve.
#[derive(Debug, Clone)]
pub struct WorkersConfig<'a> {
    /// Port 0: the home agent's LAN, the agent's VM link.
    pub lan: &'a str,
    /// Port 1: the WAN or uplink; `None` when one-armed.
    pub wan: Option<&'a str>,
    pub queues: u32,
    /// Binding slots (the table's capacity), for per-binding counters.
    pub slots: usize,
    pub pipeline: PipelineConfig,
    /// Queue `i`'s worker runs on `cpus[i % len]`; empty: not pinned.
    pub cpus: &'a [usize],
    /// Thread name prefix (`homeward-q`: threads `homeward-q0`, ...).
    pub name: &'a str,
    /// Preferred busy polling (see [`QueueSockets::enable_busy_poll`] and
    /// [`DeviceTuning`]).
    pub busy_poll: bool,
}

/// Why the workers could not start. Workers started before the failure
/// are stopped again.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("queue {queue}: {source}")]
    Sockets { queue: u32, source: XskError },
    #[error("queue {queue}: registering its AF_XDP socket in the XSKMAP: {source}")]
    Xskmap { queue: u32, source: LoaderError },
    #[error("cannot start the worker thread of queue {queue}: {source}")]
    Thread { queue: u32, source: std::io::Error },
}

/// The running workers (none: `Default`).
#[derive(Debug, Default)]
pub struct Workers {
    shared: Vec<Arc<WorkerShared>>,
    threads: Vec<JoinHandle<Parked>>,
    /// The devices' interrupt settings for busy polling, restored when
    /// the workers are dropped, or by a worker that finds busy polling
    /// cannot reach its device.
    tuning: Arc<Mutex<Vec<DeviceTuning>>>,
}

impl Workers {
    /// Opens each queue's sockets, registers them with `steering`, and
    /// starts its worker with the lookup `tables()` and the command channel
    /// `commands(queue)`.
    pub fn start(
        config: WorkersConfig<'_>,
        steering: &Steering,
        tables: impl FnMut() -> Tables,
        commands: impl FnMut(u32) -> Receiver<Command>,
    ) -> Result<Workers, WorkersError> {
        let (lan, wan) = (config.lan, config.wan);
        Workers::start_with(config.clone(), steering, tables, commands, |queue| {
            QueueSockets::open(lan, wan, queue, XskConfig::default())
        })
    }

    /// Starts workers on sockets that already exist: `sockets(queue)` gives
    /// queue `queue`'s, e.g. adopted from a predecessor process
    /// ([`QueueSockets::adopt`]) or parked ([`Workers::park`]). They are
    /// (re-)registered with `steering` like new ones.
    pub fn start_with(
        config: WorkersConfig<'_>,
        steering: &Steering,
        mut tables: impl FnMut() -> Tables,
        mut commands: impl FnMut(u32) -> Receiver<Command>,
        mut sockets: impl FnMut(u32) -> Result<QueueSockets, XskError>,
    ) -> Result<Workers, WorkersError> {
        // Every queue's sockets before any worker runs: a queue that cannot
        // be had leaves the others' rings untouched (a failed takeover hands
        // them back as they were).
        let mut all = Vec::with_capacity(config.queues as usize);
        for queue in 0..config.queues {
            all.push(sockets(queue).map_err(|source| WorkersError::Sockets { queue, source })?);
        }
        let mut workers = Workers {
            shared: Vec::new(),
            threads: Vec::new(),
            tuning: Arc::default(),
        };
        if config.busy_poll {
            let wan = config.wan.filter(|w| *w != config.lan);
            workers.tuning = Arc::new(Mutex::new(
                [Some(config.lan), wan]
                    .into_iter()
                    .flatten()
                    .map(DeviceTuning::apply)
                    .collect(),
            ));
        }
        for mut s in all {
            if config.busy_poll {
                match s.enable_busy_poll() {
                    Ok(()) => tracing::info!(queue = s.queue(), "busy polling"),
                    Err(e) => tracing::warn!(
                        queue = s.queue(),
                        "busy polling refused, the worker sleeps in poll() instead: {e}"
                    ),
                }
            }
            let queue = s.queue();
            if let Err(e) = workers.start_queue(&config, s, steering, tables(), commands(queue)) {
                workers.stop();
                return Err(e);
            }
        }
        Ok(workers)
    }

    /// Starts workers on sockets a predecessor process handed over, queue
    /// by queue ([`QueueSockets::adopt`]).
    pub fn adopt(
        config: WorkersConfig<'_>,
        steering: &Steering,
        tables: impl FnMut() -> Tables,
        commands: impl FnMut(u32) -> Receiver<Command>,
        handed: Vec<Handed>,
    ) -> Result<Workers, WorkersError> {
        let mut handed = handed.into_iter();
        Workers::start_with(config, steering, tables, commands, |queue| {
            match handed.next() {
                Some((state, fds)) if state.queue == queue => QueueSockets::adopt(&state, fds),
                _ => Err(XskError::Config(format!(
                    "queue {queue} was not handed over (--queues differs?)"
                ))),
            }
        })
    }

    fn start_queue(
        &mut self,
        config: &WorkersConfig<'_>,
        sockets: QueueSockets,
        steering: &Steering,
        tables: Tables,
        commands: Receiver<Command>,
    ) -> Result<(), WorkersError> {
        let queue = sockets.queue();
        let xskmap = |source| WorkersError::Xskmap { queue, source };
        steering
            .register_socket(PORT_LAN, queue, sockets.lan().fd())
            .map_err(xskmap)?;
        if let Some(w) = sockets.wan() {
            steering
                .register_socket(PORT_WAN, queue, w.fd())
                .map_err(xskmap)?;
        }
        let shared = WorkerShared::new(config.slots);
        let worker = Worker::new(
            sockets,
            config.pipeline.clone(),
            tables,
            commands,
            shared.clone(),
        )
        .with_device_tuning(self.tuning.clone());
        let cpu =
            (!config.cpus.is_empty()).then(|| config.cpus[queue as usize % config.cpus.len()]);
        // The worker pins itself before it touches a ring; start waits for
        // that, so "running" is logged only once every worker is in place.
        let (pinned_tx, pinned) = crossbeam::channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name(format!("{}{queue}", config.name))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    match pin_current_thread(cpu) {
                        Ok(()) => tracing::info!(queue, cpu, "worker pinned"),
                        Err(e) => tracing::warn!(queue, cpu, "cannot pin worker: {e}"),
                    }
                }
                drop(pinned_tx);
                worker.run()
            })
            .map_err(|source| WorkersError::Thread { queue, source })?;
        // Disconnected once the worker has pinned itself (or died trying).
        let _ = pinned.recv();
        self.shared.push(shared);
        self.threads.push(thread);
        Ok(())
    }

    /// Counters without threads, for unit tests of what reads them.
    #[cfg(test)]
    pub(crate) fn detached(shared: Vec<Arc<WorkerShared>>) -> Workers {
        Workers {
            shared,
            threads: Vec::new(),
            tuning: Arc::default(),
        }
    }

    /// Each queue's counters, accounting and per-binding counts.
    pub fn shared(&self) -> &[Arc<WorkerShared>] {
        &self.shared
    }

    /// Stops every worker (each drains its TX rings first) and returns each
    /// queue's frame accounting.
    pub fn stop(&mut self) -> Vec<FrameAccounting> {
        self.park().into_iter().map(|p| p.accounting).collect()
    }

    /// Stops every worker like [`Workers::stop`], but keeps each queue's
    /// sockets and free frames: to start again ([`Workers::start_with`]) or
    /// to hand to a successor process. A worker that panicked has lost its
    /// queue; it is missing from the list.
    pub fn park(&mut self) -> Vec<Parked> {
        for w in &self.shared {
            w.stop();
        }
        self.threads
            .drain(..)
            .filter_map(|t| t.join().ok())
            .collect()
    }
}

/// One queue as handed over by `--takeover`: its state and its fds.
pub type Handed = (QueueState, Vec<OwnedFd>);

/// Whether the queues `offered` by a predecessor are the ones `config`
/// serves: same count, same interfaces.
pub fn offer_fits(config: &WorkersConfig<'_>, offered: &[QueueState]) -> bool {
    let wan = config.wan.filter(|w| *w != config.lan);
    offered.len() == config.queues as usize
        && offered
            .iter()
            .enumerate()
            .all(|(i, q)| q.queue == i as u32 && q.lan == config.lan && q.wan.as_deref() == wan)
}

/// After a failed takeover: the parked queues' own sockets again, to adopt
/// afresh (the successor may have moved their rings on), with the free
/// frames the successor `returned`.
pub fn reclaim(parked: Vec<Parked>, returned: &[QueueState]) -> Result<Vec<Handed>, XskError> {
    let mut handed = Vec::with_capacity(parked.len());
    for p in &parked {
        let queue = p.sockets.queue();
        let state = returned
            .iter()
            .find(|q| q.queue == queue)
            .ok_or_else(|| XskError::Config(format!("queue {queue} was not handed back")))?;
        let fds = p.sockets.dup_fds().map_err(|e| {
            XskError::Config(format!("duplicating the sockets of queue {queue}: {e}"))
        })?;
        handed.push((state.clone(), fds));
    }
    Ok(handed)
}
