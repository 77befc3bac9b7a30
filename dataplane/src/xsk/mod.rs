//! AF_XDP: the UMEM and sockets of each queue, the frame accounting and the
//! forwarding worker. Besides the BPF loader, this is the only module with
//! `unsafe`, each block with a `// SAFETY:` comment.

mod accounting;
mod busy_poll;
#[cfg(test)]
mod memqueue;
mod neighbor_queue;
mod rings;
mod sockets;
mod sys;
mod worker;

pub use accounting::{FrameAccounting, QueueFrames, RingOccupancy, SharedAccounting};
pub use busy_poll::DeviceTuning;
pub use rings::{QueueIo, Side, SocketStats};
pub use sockets::{QueueSockets, QueueState, SocketRings, XskConfig};
pub use sys::{pin_current_thread, promiscuous};
pub use worker::{Command, Parked, Worker, WorkerShared};

/// Failures opening AF_XDP sockets.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A size or name the kernel would not take.
    #[error("AF_XDP configuration: {0}")]
    Config(String),
    /// The UMEM could not be created.
    #[error("cannot create the UMEM: {0}")]
    Umem(String),
    /// A socket could not be created or bound.
    #[error("cannot open an AF_XDP socket on {ifname} queue {queue}: {reason}{}", cause.as_ref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Socket {
        ifname: String,
        queue: u32,
        reason: String,
        cause: Option<String>,
    },
}
