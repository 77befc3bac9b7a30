//! Registration threads: one per VM, so a slow or silent home agent delays
//! only that VM and never the agent's loop. Requests for one VM stay in
//! order; when several queued up, only the newest is sent, since it
//! supersedes the others. Switchovers are apart: the newest queued one goes
//! first, with a short timeout, and never replaces a registration (nor a
//! registration a switchover).

use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam::channel::{Receiver, Sender};

use crate::registration::{Registered, RegistrationClient, RegistrationError, RegistrationParams};

/// Overall wait for one registration, retransmissions included.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Requests sent per registration (RFC 5944 3.6.3 retransmission).
pub const ATTEMPTS: u32 = 4;
/// Overall wait for a switchover: the migration waits for it (at most
/// `lifecycle::SWITCHOVER_WAIT`, which this stays under).
pub const SWITCHOVER_TIMEOUT: Duration = Duration::from_millis(800);
/// Requests sent per switchover (100, 200, 400 ms waits, about).
pub const SWITCHOVER_ATTEMPTS: u32 = 3;

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
            while let Ok(first) = jobs.recv() {
                let (switchover, registration) = newest(first, jobs.try_iter());
                for job in [switchover, registration].into_iter().flatten() {
                    let (timeout, attempts) = if job.params.switchover {
                        (SWITCHOVER_TIMEOUT, SWITCHOVER_ATTEMPTS)
                    } else {
                        (TIMEOUT, ATTEMPTS)
                    };
                    let result = client.register(&job.params, timeout, attempts);
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
            }
        })
}

/// The newest switchover and the newest registration among queued jobs.
fn newest(first: Job, rest: impl Iterator<Item = Job>) -> (Option<Job>, Option<Job>) {
    let (mut switchover, mut registration) = (None, None);
    for job in std::iter::once(first).chain(rest) {
        if job.params.switchover {
            switchover = Some(job);
        } else {
            registration = Some(job);
        }
    }
    (switchover, registration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn job(seq: u64, switchover: bool) -> Job {
        Job {
            seq,
            params: RegistrationParams {
                home_address: Ipv4Addr::new(192, 0, 2, 50),
                home_agent: Ipv4Addr::new(198, 51, 100, 1),
                care_of: Ipv4Addr::new(203, 0, 113, 2),
                lifetime: 60,
                reverse_tunnel: true,
                spi: 256,
                vm_mac: None,
                switchover,
            },
        }
    }

    #[test]
    fn a_switchover_neither_replaces_nor_is_replaced_by_a_registration() {
        let (s, r) = newest(
            job(1, false),
            [job(2, false), job(1, true), job(3, false)].into_iter(),
        );
        assert_eq!((s.unwrap().seq, r.unwrap().seq), (1, 3));
        let (s, r) = newest(job(4, true), std::iter::empty());
        assert_eq!((s.map(|j| j.seq), r.map(|j| j.seq)), (Some(4), None));
    }
}
