//! The end of a switchover for a VM that came home: what the worker held
//! for it goes onto the home link, to the VM's own MAC, as a router would
//! forward it (RFC 1812 §5.2: TTL decremented); what it sent through a
//! tunnel meanwhile is dropped. A VM that went elsewhere needs nothing here:
//! its held frames are simply processed again.

use super::ether;
use super::ipv4;
use super::{DropReason, Lookup, Pipeline, Verdict};

impl Pipeline {
    /// A frame held by [`Verdict::Hold`] whose VM has no binding any more:
    /// to the VM on the home link, or [`Verdict::AwaitLanNeighbor`] until its
    /// MAC resolves. Never panics, whatever the bounds.
    pub fn deliver_home(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        lookup: &impl Lookup,
    ) -> Verdict {
        match self.home_frame(buf, start, len, lookup) {
            Ok(v) => v,
            Err(reason) => {
                self.counters.count_drop(reason);
                Verdict::Drop(reason)
            }
        }
    }

    fn home_frame(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        lookup: &impl Lookup,
    ) -> Result<Verdict, DropReason> {
        let end = super::frame_end(buf, start, len)?;
        let l2 = ether::parse(buf.get(start..end).ok_or(DropReason::BadFrameBounds)?)?;
        if l2.ethertype != ether::ETHERTYPE_IPV4 {
            return Err(DropReason::Unexpected);
        }
        let ip_off = start + l2.len();
        let ip = ipv4::parse(buf.get(ip_off..end).ok_or(DropReason::Ipv4Truncated)?)?;
        if ip.protocol == ipv4::PROTO_IPIP {
            // The VM's own frame, held while it came in through a tunnel: the VM is home
            // now, and a tunnel from a care-of address is no longer its.
            return Err(DropReason::DecapCareOfMismatch);
        }
        if ip.ttl <= 1 {
            return Err(DropReason::TtlExceeded);
        }
        // Untagged, as decapsulated frames leave: the home link's own VLAN
        // handling is the kernel's.
        self.onto_lan(buf, ip_off, &ip, None, lookup)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::testutil::*;
    use super::super::*;

    fn held_lookup() -> TestLookup {
        let mut l = lookup();
        for (vm, b) in &mut l.bindings {
            if *vm == Ipv4Addr::from(VM) {
                b.care_of = Ipv4Addr::UNSPECIFIED;
            }
        }
        l
    }

    /// `v` holds the frame at `start`, `len` as received: nothing written to
    /// the buffer (`bufs`: after, before), nothing counted.
    #[track_caller]
    fn assert_held(v: Verdict, p: &Pipeline, bufs: (&[u8], &[u8]), start: usize, len: usize) {
        let vm = VM.into();
        assert_eq!(v, Verdict::Hold { vm, start, len });
        assert_eq!(bufs.0, bufs.1, "untouched");
        assert_eq!(p.counters(), &Counters::default(), "nothing counted yet");
    }

    #[test]
    fn a_vm_in_switchover_has_its_frames_held_untouched() {
        let input = Ip::udp(LAN_HOST, VM, b"while the vm moves").frame();
        let (mut buf, start) = place(&input);
        let before = buf.clone();
        let mut p = pipeline(1);
        let v = p.process(&mut buf, start, input.len(), Port::Lan, 0, &held_lookup());
        assert_held(v, &p, (&buf, &before), start, input.len());
        // Once the binding has a care-of address again, processing it once
        // more tunnels it.
        let v = p.process(&mut buf, start, input.len(), Port::Lan, 0, &lookup());
        assert!(
            matches!(
                v,
                Verdict::Tx {
                    port: Port::Wan,
                    ..
                }
            ),
            "{v:?}"
        );
    }

    #[test]
    fn the_vms_first_frames_from_its_destination_wait_for_its_registration() {
        // The VM resumed at CARE_OF and answers before CARE_OF's
        // registration has reached the HA: held, not dropped.
        let inner = Ip::udp(VM, LAN_HOST, b"resumed");
        let input = Ip::ipip(CARE_OF, HA, inner.clone()).frame();
        let (mut buf, start) = place(&input);
        let before = buf.clone();
        let mut p = pipeline(1);
        let v = p.process(&mut buf, start, input.len(), Port::Wan, 0, &held_lookup());
        assert_held(v, &p, (&buf, &before), start, input.len());
        // The registration names CARE_OF: decapsulated onto the home link.
        let v = p.process(&mut buf, start, input.len(), Port::Wan, 0, &lookup());
        let (port, out_start, out_len, _) = expect_tx(v);
        assert_eq!(port, Port::Lan);
        check_decapsulated(
            &buf[out_start..out_start + out_len],
            &inner.datagram(),
            LAN_HOST_MAC,
        );
        // Had it named another care-of, or had the VM come home: dropped.
        let (mut buf, start) = place(&input);
        let mut elsewhere = lookup();
        for (vm, b) in &mut elsewhere.bindings {
            if *vm == Ipv4Addr::from(VM) {
                b.care_of = CARE_OF2.into();
            }
        }
        let v = p.process(&mut buf, start, input.len(), Port::Wan, 0, &elsewhere);
        assert_eq!(v, Verdict::Drop(DropReason::DecapCareOfMismatch));
        let (mut buf, start) = place(&input);
        let v = p.deliver_home(&mut buf, start, input.len(), &lookup());
        assert_eq!(v, Verdict::Drop(DropReason::DecapCareOfMismatch));
    }

    #[test]
    fn a_vm_that_came_home_gets_its_held_frames_on_the_home_link() {
        let datagram = Ip::udp(LAN_HOST, VM, b"welcome home");
        let input = datagram.clone().frame();
        let vm_mac = [0x52, 0x54, 0, 0, 0, 0x50];
        let mut l = lookup();
        l.bindings.clear();
        let mut p = pipeline(1);
        // MAC not known yet: the frame waits for it.
        let (mut buf, start) = place(&input);
        let v = p.deliver_home(&mut buf, start, input.len(), &l);
        let Verdict::AwaitLanNeighbor {
            addr,
            start: s,
            len,
            slot: None,
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!(addr, Ipv4Addr::from(VM));
        assert!(p.deliver_held(&mut buf, s, len, vm_mac));
        check_decapsulated(&buf[s..s + len], &datagram.datagram(), vm_mac);
        // Known: straight out on the LAN.
        l.neighbors.push((VM.into(), vm_mac));
        let (mut buf, start) = place(&input);
        let v = p.deliver_home(&mut buf, start, input.len(), &l);
        let Verdict::Tx {
            port: Port::Lan,
            start: s,
            len,
            slot: None,
        } = v
        else {
            panic!("{v:?}")
        };
        check_decapsulated(&buf[s..s + len], &datagram.datagram(), vm_mac);
        // TTL 1 and junk are dropped and counted, never a panic.
        let ttl1 = Ip::udp(LAN_HOST, VM, b"x").ttl(1).frame();
        let (mut buf, start) = place(&ttl1);
        let v = p.deliver_home(&mut buf, start, ttl1.len(), &l);
        assert_eq!(v, Verdict::Drop(DropReason::TtlExceeded));
        let n = buf.len();
        let v = p.deliver_home(&mut buf, n - 4, 10, &l);
        assert_eq!(v, Verdict::Drop(DropReason::BadFrameBounds));
        let arp = ArpFrame::request(LAN_HOST_MAC, LAN_HOST, VM).frame();
        let (mut buf, start) = place(&arp);
        let v = p.deliver_home(&mut buf, start, arp.len(), &l);
        assert_eq!(v, Verdict::Drop(DropReason::Unexpected));
    }
}
