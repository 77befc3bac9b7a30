//! `--takeover`: how a running daemon hands its data path to a successor
//! process over the control socket, in both roles.
//!
//! 1. The successor connects and sends `{"op":"takeover"}`.
//! 2. The predecessor parks everything (the control socket's accept thread,
//!    the registration reader, the workers: each drains its TX ring and
//!    keeps its free frames), closes its store, unlocks its pin directory
//!    and sends an [`Offer`] with the fds it lists, by `SCM_RIGHTS`: the
//!    control socket's listener, the registration socket, and per queue
//!    the UMEM's memfd and the AF_XDP sockets.
//! 3. The successor adopts them (the rings and frames stay where they
//!    are, so nothing queued in them is lost), restores the bindings from
//!    the store, starts its workers and replaces the XDP program atomically,
//!    then answers [`Answer::Accepted`]: the predecessor exits, leaving
//!    everything attached. Or it answers [`Answer::Failed`] with the free
//!    frames it held, and the predecessor takes everything back.
//!
//! One message is an 8-byte length with the fds attached, then that many
//! bytes of JSON.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use dataplane::workers::Handed;
use dataplane::xsk::{Parked, QueueState};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bumped when the messages change incompatibly: a successor refuses an
/// offer of another version (stop and start instead).
pub const VERSION: u32 = 1;

/// The most fds one message carries (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 250;

/// Largest message accepted, against a confused peer.
const MAX_LEN: u64 = 64 << 20;

/// What the predecessor hands over. The fds come in this order: the control
/// listener, the registration socket if `registration`, then each queue's
/// ([`dataplane::xsk::QueueSockets::handover_fds`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Offer {
    Data {
        version: u32,
        /// "home-agent" or "agent": a successor of the other role refuses.
        role: String,
        registration: bool,
        queues: Vec<QueueState>,
        /// The agent's served VMs (the home agent's bindings are in its store).
        #[serde(default)]
        served: Vec<ServedVm>,
    },
    /// The predecessor cannot hand over (and carries on).
    Refused { error: String },
}

/// A VM the agent's data path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedVm {
    pub vm: Ipv4Addr,
    pub mac: [u8; 6],
    pub home_agent: Ipv4Addr,
}

/// The successor's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    /// Everything adopted and running: the predecessor exits.
    Accepted,
    /// Nothing kept: the queues' free frames as the successor left them
    /// (its workers, if started, parked first); the predecessor resumes.
    Failed {
        error: String,
        queues: Vec<QueueState>,
    },
}

/// Send `msg` with `fds` attached.
pub fn send<T: Serialize>(conn: &UnixStream, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} fds to hand over, at most {MAX_FDS} fit in one message",
            fds.len()
        )));
    }
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = (body.len() as u64).to_le_bytes();
    // Borrowed for the call only; the kernel duplicates them into the peer.
    let borrowed: Vec<BorrowedFd<'_>> = fds
        .iter()
        .map(|&fd| {
            // SAFETY: the caller keeps every fd in `fds` open across the
            // call (they belong to objects it holds).
            unsafe { BorrowedFd::borrow_raw(fd) }
        })
        .collect();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other("fds do not fit the control message"));
    }
    let mut sent = 0;
    while sent < len.len() {
        let n = sendmsg(
            conn,
            &[IoSlice::new(&len[sent..])],
            &mut control,
            SendFlags::empty(),
        )?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
        // The fds went with the first byte.
        control = SendAncillaryBuffer::default();
    }
    let mut w = conn;
    w.write_all(&body)?;
    w.flush()
}

/// Receive one message and the fds attached to it.
pub fn recv<T: DeserializeOwned>(conn: &UnixStream) -> io::Result<(T, Vec<OwnedFd>)> {
    let mut len = [0u8; 8];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut fds = Vec::new();
    let mut got = 0;
    while got < len.len() {
        let r = recvmsg(
            conn,
            &mut [IoSliceMut::new(&mut len[got..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = msg {
                fds.extend(received);
            }
        }
        if r.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::other("fds truncated in the handover message"));
        }
        if r.bytes == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += r.bytes;
    }
    let len = u64::from_le_bytes(len);
    if len > MAX_LEN {
        return Err(io::Error::other(format!("handover message of {len} bytes")));
    }
    let mut body = vec![0u8; len as usize];
    let mut r = conn;
    r.read_exact(&mut body)?;
    let msg = serde_json::from_slice(&body).map_err(io::Error::other)?;
    Ok((msg, fds))
}

/// Why an offer came to nothing.
#[derive(Debug)]
pub enum OfferError {
    /// Not sent: the successor has nothing, the predecessor carries on.
    NotSent(io::Error),
    /// Sent, but no answer: whether the successor runs the data path is
    /// unknown.
    NoAnswer(io::Error),
}

/// The predecessor's side: offer the parked data path on `conn` and wait
/// for the successor's answer. `listener` is the control socket's,
/// `registration` the registration socket's, `queues` the parked workers'.
pub fn offer(
    conn: &UnixStream,
    role: &str,
    listener: RawFd,
    registration: Option<RawFd>,
    queues: &[Parked],
    served: Vec<ServedVm>,
) -> Result<Answer, OfferError> {
    let mut fds = vec![listener];
    fds.extend(registration);
    let mut states = Vec::with_capacity(queues.len());
    for p in queues {
        let queue_fds = p.sockets.handover_fds().ok_or_else(|| {
            OfferError::NotSent(io::Error::other("the UMEM has no memfd to hand over"))
        })?;
        fds.extend(queue_fds);
        states.push(p.sockets.handover_state());
    }
    let offer = Offer::Data {
        version: VERSION,
        role: role.to_string(),
        registration: registration.is_some(),
        queues: states,
        served,
    };
    // The successor restores the store and starts within a second or so;
    // a minute means it hangs.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    send(conn, &offer, &fds).map_err(OfferError::NotSent)?;
    let (answer, _): (Answer, _) = recv(conn).map_err(OfferError::NoAnswer)?;
    Ok(answer)
}

/// Refuse a takeover (the daemon carries on).
pub fn refuse(conn: &UnixStream, error: &str) {
    let _ = send(
        conn,
        &Offer::Refused {
            error: error.to_string(),
        },
        &[],
    );
}

/// The successor's side: connected to the running daemon, holding what it
/// handed over until adopted.
#[derive(Debug)]
pub struct Successor {
    conn: UnixStream,
    /// The control socket's listener.
    pub listener: Option<OwnedFd>,
    /// The registration socket, if the predecessor had one.
    pub registration: Option<OwnedFd>,
    /// Each queue's state and fds, taken by whoever adopts it.
    pub queues: Vec<Handed>,
    /// The agent's served VMs.
    pub served: Vec<ServedVm>,
    /// The queue states as offered: handed back if adoption fails before
    /// any worker ran.
    offered: Vec<QueueState>,
}

impl Successor {
    /// Ask the daemon at `socket` for its data path; `role` must be its role.
    pub fn connect(socket: &Path, role: &str) -> Result<Successor, String> {
        let conn = UnixStream::connect(socket).map_err(|e| {
            format!(
                "--takeover: no homeward answers on {} ({e}); start without --takeover",
                socket.display()
            )
        })?;
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
        let mut w = &conn;
        w.write_all(b"{\"op\":\"takeover\"}\n")
            .map_err(|e| format!("--takeover: asking {}: {e}", socket.display()))?;
        let (offer, fds): (Offer, Vec<OwnedFd>) = recv(&conn).map_err(|e| {
            format!(
                "--takeover: the homeward on {} did not hand over ({e}); is it an older version without --takeover?",
                socket.display()
            )
        })?;
        let (version, offered_role, registration, queues, served) = match offer {
            Offer::Refused { error } => {
                return Err(format!(
                    "--takeover refused by the running homeward: {error}"
                ))
            }
            Offer::Data {
                version,
                role,
                registration,
                queues,
                served,
            } => (version, role, registration, queues, served),
        };
        let mut successor = Successor {
            conn,
            listener: None,
            registration: None,
            queues: Vec::new(),
            served,
            offered: queues.clone(),
        };
        let refuse = |successor: Successor, error: String| {
            let queues = successor.offered.clone();
            successor.fail(&error, queues);
            Err(error)
        };
        if version != VERSION || offered_role != role {
            let error = format!(
                "--takeover: the running homeward offers a {offered_role} data path, version {version}; this one is a {role}, version {VERSION}: stop it and start this one instead"
            );
            return refuse(successor, error);
        }
        let mut fds = fds.into_iter();
        successor.listener = fds.next();
        if registration {
            successor.registration = fds.next();
        }
        for q in queues {
            let n = 2 + usize::from(q.wan.is_some());
            let qfds: Vec<OwnedFd> = fds.by_ref().take(n).collect();
            if qfds.len() != n {
                return refuse(successor, "--takeover: fds missing from the offer".into());
            }
            successor.queues.push((q, qfds));
        }
        if successor.listener.is_none() {
            return refuse(
                successor,
                "--takeover: no control socket in the offer".into(),
            );
        }
        Ok(successor)
    }

    /// The queue states as offered.
    pub fn offered(&self) -> &[QueueState] {
        &self.offered
    }

    /// Everything is running here: the predecessor may exit.
    pub fn accept(&self) -> std::io::Result<()> {
        send(&self.conn, &Answer::Accepted, &[])
    }

    /// Hand everything back: `queues` with the free frames as left here.
    pub fn fail(&self, error: &str, queues: Vec<QueueState>) {
        let answer = Answer::Failed {
            error: error.to_string(),
            queues,
        };
        if let Err(e) = send(&self.conn, &answer, &[]) {
            tracing::warn!("--takeover: could not hand back to the running homeward: {e}");
        }
    }
}

/// Where a daemon starting up gets its control socket: with `takeover`,
/// from the daemon running on `socket` (its offer; the listener is adopted
/// once the data path runs, so a failed takeover leaves the connections in
/// its backlog to it), else a fresh one bound at `socket`.
pub fn successor_or_bind(
    socket: &Path,
    role: &str,
    takeover: bool,
) -> Result<
    (
        Option<Successor>,
        Option<super::control_socket::ControlSocket>,
    ),
    crate::error::Error,
> {
    if !takeover {
        return Ok((
            None,
            Some(super::control_socket::ControlSocket::bind(socket)?),
        ));
    }
    let s = Successor::connect(socket, role).map_err(crate::error::Error::Daemon)?;
    tracing::info!(
        socket = %socket.display(),
        queues = s.queues.len(),
        served = s.served.len(),
        "--takeover: the running {role} handed its data path over"
    );
    Ok((Some(s), None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_message_carries_its_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let offer = Offer::Data {
            version: VERSION,
            role: "home-agent".into(),
            registration: false,
            queues: vec![],
            served: vec![],
        };
        send(&a, &offer, &[r.as_raw_fd(), w.as_raw_fd()]).unwrap();
        let (got, fds): (Offer, _) = recv(&b).unwrap();
        assert!(matches!(
            got,
            Offer::Data {
                version: VERSION,
                ..
            }
        ));
        assert_eq!(fds.len(), 2);
        // The received write end writes into the pipe we still read.
        let mut w2 = std::fs::File::from(fds.into_iter().nth(1).unwrap());
        w2.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        (&r).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }

    #[test]
    fn a_short_stream_is_an_error_not_a_panic() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&[5, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
        drop(a);
        assert!(recv::<Answer>(&b).is_err());
    }
}
