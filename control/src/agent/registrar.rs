//! Registration threads: one per VM, so a slow or silent home agent delays
//! only that VM and never the agent's loop. Requests for one VM stay in
//! order; when several queued up, only the newest is sent, since it
//! supersedes the others.

use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam::channel::{Receiver, Sender};

use crate::registration::{Registered, RegistrationClient, RegistrationError, RegistrationParams};

/// Overall wait for one registration, retransmissions included.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Requests sent per registration (RFC 5944 3.6.3 retransmission).
pub const ATTEMPTS: u32 = 4;

/// A request for the thread: the lifecycle's sequence number and what to send.
#[derive(Debug, Clone)]
pub struct Job {
    pub seq: u64,
    pub params: RegistrationParams,
}

/// The answer, tagged with the VM's index.
#[derive(Debug)]
pub struct Done {
    pub index: usize,
    pub seq: u64,
    pub params: RegistrationParams,
    pub result: Result<Registered, RegistrationError>,
    /// Wall-clock time the answer arrived, to compare with QEMU's
    /// event timestamps.
    pub at: SystemTime,
}

/// Starts the registration thread of VM `index`.
pub fn spawn(
    index: usize,
    name: &str,
    mut client: RegistrationClient,
    jobs: Receiver<Job>,
    done: Sender<Done>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("reg-{name}"))
        .spawn(move || {
            while let Ok(mut job) = jobs.recv() {
                while let Ok(newer) = jobs.try_recv() {
                    job = newer;
                }
                let result = client.register(&job.params, TIMEOUT, ATTEMPTS);
                let d = Done {
                    index,
                    seq: job.seq,
                    params: job.params,
                    result,
                    at: SystemTime::now(),
                };
                if done.send(d).is_err() {
                    return;
                }
            }
        })
}
