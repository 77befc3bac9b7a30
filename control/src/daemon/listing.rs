//! `homeward list`, taken a part at a time between the control loop's
//! other work: at a million bindings the whole list took the loop most of
//! a second, during which registrations waited. Each VM is listed once, as
//! it was when its part was taken.

use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crossbeam::channel::{self, Receiver, Sender};

use dataplane::forwarder::{NextHops, SteeringMaps};

use super::bindings::Bindings;
use crate::common::control_socket::ListReply;
use crate::proto::BindingInfo;

/// Bindings per part: about 15 ms of the control loop.
const PART: usize = 20_000;

/// One list under way: where it stands and who writes it.
struct Listing {
    reply: ListReply<BindingInfo>,
    after: Option<Ipv4Addr>,
}

/// The lists under way.
pub(super) struct Listings {
    lists: Vec<Listing>,
    /// Told by a writer each time it takes a part: room for the next.
    room: (Sender<()>, Receiver<()>),
}

impl Default for Listings {
    fn default() -> Self {
        Listings {
            lists: Vec::new(),
            room: channel::bounded(1),
        }
    }
}

impl Listings {
    /// A `list` request on `conn`.
    pub fn start(&mut self, conn: UnixStream) {
        if let Some(reply) = ListReply::start(conn, self.room.0.clone()) {
            self.lists.push(Listing { reply, after: None });
        }
    }

    /// Ready when a writer took a part (the loop then calls
    /// [`Listings::advance`] again).
    pub fn room(&self) -> &Receiver<()> {
        &self.room.1
    }

    /// Takes the next part of each list whose writer has room; a list
    /// that is complete, or whose client is gone, ends.
    pub fn advance<S: SteeringMaps, N: NextHops>(
        &mut self,
        bindings: &Bindings<S, N>,
        now: Instant,
    ) {
        self.advance_by(bindings, now, PART);
    }

    fn advance_by<S: SteeringMaps, N: NextHops>(
        &mut self,
        bindings: &Bindings<S, N>,
        now: Instant,
        part: usize,
    ) {
        self.lists.retain_mut(|l| {
            if l.reply.ended() {
                return false;
            }
            if !l.reply.ready() {
                return true;
            }
            let items = bindings.list_after(now, l.after, part);
            let next = (items.len() == part).then(|| items[part - 1].vm);
            // A full part may be followed by nothing: then an empty last one.
            let sent = l.reply.send(items, next.is_none());
            l.after = next;
            sent && next.is_some()
        });
    }

    /// Whether a list can take its next part now: the loop must not wait.
    /// (One whose writer is busy wakes the loop through [`Listings::room`].)
    pub fn ready(&self) -> bool {
        self.lists.iter().any(|l| l.reply.ready())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::proto::Reply;
    use crate::store::Origin;

    #[test]
    fn a_list_in_parts_is_the_whole_list_once_and_a_gone_client_ends_it() {
        let (mut b, _reader, now) = super::super::bindings::tests::bindings();
        for i in 60..64 {
            let vm = std::net::Ipv4Addr::new(192, 0, 2, i);
            b.bind(now, vm, [203, 0, 113, 1].into(), None, None, Origin::Admin)
                .unwrap();
        }
        let mut listings = Listings::default();
        let (ours, mut client) = UnixStream::pair().unwrap();
        listings.start(ours);
        let mut turns = 0;
        while !listings.lists.is_empty() {
            listings.advance_by(&b, now.mono, 1);
            turns += 1;
            assert!(turns < 100, "never ends");
            if !listings.ready() {
                // The writer tells when it took a part.
                listings
                    .room()
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .unwrap();
            }
        }
        let mut line = String::new();
        client.read_to_string(&mut line).unwrap();
        let reply: Reply = serde_json::from_str(&line).unwrap();
        let want = serde_json::to_value(b.list(now.mono)).unwrap();
        assert_eq!(reply.result, Some(want));
        assert!(turns >= 4, "a part a turn: {turns}");

        // A client that leaves: its writer ends, and so does the listing.
        let (ours, client) = UnixStream::pair().unwrap();
        listings.start(ours);
        drop(client);
        let mut turns = 0;
        while !listings.lists.is_empty() {
            listings.advance_by(&b, now.mono, 1);
            let _ = listings
                .room()
                .recv_timeout(std::time::Duration::from_millis(100));
            turns += 1;
            assert!(turns < 100, "a listing outlived its client");
        }
    }
}
