//! Which binding a frame will be looked up by, read ahead of processing:
//! the worker prefetches a batch's table slots with it.

use std::net::Ipv4Addr;

use super::{ether, ipv4, Pipeline, Port, Role};

impl Pipeline {
    /// The address [`Pipeline::process`] will most likely look a binding up
    /// by for this frame (`buf[start..start + len]`), read without
    /// validating anything: for prefetching a batch's table slots before
    /// processing it. `None` for frames that look nothing up by address.
    pub fn binding_key(
        &self,
        buf: &[u8],
        start: usize,
        len: usize,
        ingress: Port,
    ) -> Option<Ipv4Addr> {
        let frame = buf.get(start..start.checked_add(len)?)?;
        let l2 = ether::parse(frame).ok()?;
        if l2.ethertype != ether::ETHERTYPE_IPV4 {
            return None;
        }
        let ip = frame.get(l2.len()..)?;
        let addr = |at: usize| -> Option<Ipv4Addr> {
            let b: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
            Some(Ipv4Addr::from(b))
        };
        let ihl = usize::from(ip.first()? & 0x0f) * 4;
        let ipip = *ip.get(9)? == ipv4::PROTO_IPIP;
        match self.config.role {
            Role::HomeAgent if ipip && addr(16)? == self.config.ha_addr => addr(ihl + 12),
            Role::HomeAgent => addr(16),
            Role::ForeignAgent if ingress == Port::Lan => addr(12),
            Role::ForeignAgent if ipip => addr(ihl + 16),
            Role::ForeignAgent => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    /// The key a frame's `process` looked a binding up by first.
    fn first_lookup(p: &mut Pipeline, frame: &[u8], ingress: Port) -> Option<Ipv4Addr> {
        let lookup = lookup();
        let (mut buf, start) = place(frame);
        p.process(&mut buf, start, frame.len(), ingress, 0, &lookup);
        let first = lookup.asked.borrow().first().copied();
        first
    }

    fn key(p: &Pipeline, frame: &[u8], ingress: Port) -> Option<Ipv4Addr> {
        let (buf, start) = place(frame);
        p.binding_key(&buf, start, frame.len(), ingress)
    }

    #[test]
    fn the_key_is_what_processing_looks_up() {
        let ha = pipeline(1);
        let mut fa_config = config();
        fa_config.role = Role::ForeignAgent;
        let fa = Pipeline::new(fa_config, 1);
        let to_vm = Ip::udp(LAN_HOST, VM, b"x");
        let from_vm = Ip::udp(VM, LAN_HOST, b"x");
        let cases = [
            (&ha, to_vm.clone().frame(), Port::Lan),
            (&ha, to_vm.clone().vlan(7).frame(), Port::Lan),
            (
                &ha,
                Ip::ipip(CARE_OF, HA, from_vm.clone()).frame(),
                Port::Wan,
            ),
            (
                &ha,
                Ip::ipip(CARE_OF, HA, from_vm.clone().options(&[1; 4])).frame(),
                Port::Wan,
            ),
            (&fa, from_vm.clone().frame(), Port::Lan),
            (&fa, Ip::ipip(CARE_OF, HA, to_vm.clone()).frame(), Port::Wan),
        ];
        for (i, (p, frame, ingress)) in cases.into_iter().enumerate() {
            let mut fresh = p.clone();
            let looked_up = first_lookup(&mut fresh, &frame, ingress);
            assert!(looked_up.is_some(), "case {i}");
            assert_eq!(key(p, &frame, ingress), looked_up, "case {i}");
        }
    }

    #[test]
    fn frames_that_look_nothing_up_by_address_have_no_key() {
        let p = pipeline(1);
        let arp = ArpFrame::request(LAN_HOST_MAC, LAN_HOST, VM).frame();
        assert_eq!(key(&p, &arp, Port::Lan), None);
        for n in 0..40 {
            let frame = Ip::udp(LAN_HOST, VM, b"x").frame();
            let _ = key(&p, &frame[..n], Port::Lan);
        }
        let (buf, start) = place(&Ip::udp(LAN_HOST, VM, b"x").frame());
        assert_eq!(p.binding_key(&buf, start, usize::MAX, Port::Lan), None);
        assert_eq!(p.binding_key(&buf, usize::MAX, 1, Port::Lan), None);
    }
}
