//! Byte builders for seed frames: the same shapes as the pipeline's fixtures
//! (`dataplane/src/pipeline/testutil.rs`), which are `#[cfg(test)]` and so
//! out of reach here. Addresses match those fixtures.

use crate::internet_checksum;

pub const HA: [u8; 4] = [203, 0, 113, 1];
pub const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];
pub const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x02];
pub const NEXT_HOP_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
pub const LAN_NEXT_HOP_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfd];
/// Home agent role: a VM away at CARE_OF (next hop on the WAN), VM2 at
/// CARE_OF2 (next hop on the LAN), VM3 at CARE_OF3 (no next hop).
pub const VM: [u8; 4] = [192, 0, 2, 10];
pub const CARE_OF: [u8; 4] = [198, 51, 100, 20];
pub const VM2: [u8; 4] = [192, 0, 2, 11];
pub const CARE_OF2: [u8; 4] = [192, 0, 2, 200];
pub const VM3: [u8; 4] = [192, 0, 2, 12];
pub const CARE_OF3: [u8; 4] = [198, 51, 100, 30];
pub const LAN_HOST: [u8; 4] = [192, 0, 2, 1];
pub const LAN_HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x33];
pub const REMOTE: [u8; 4] = [198, 51, 100, 99];
/// Foreign agent role: our care-of address, the served VM's home agent, the
/// served VM and a host on its home subnet.
pub const FA: [u8; 4] = [203, 0, 113, 2];
pub const HOME_AGENT: [u8; 4] = [198, 51, 100, 1];
pub const SERVED: [u8; 4] = [192, 0, 2, 50];
pub const SERVED_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x50];
pub const CLIENT: [u8; 4] = [192, 0, 2, 10];

/// An IPv4 datagram to build.
#[derive(Clone, Debug)]
pub struct Ip {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub payload: Vec<u8>,
    pub tos: u8,
    pub ttl: u8,
    pub df: bool,
    pub mf: bool,
    /// In 8-byte units.
    pub offset: u16,
    pub ident: u16,
    /// Padded with zeros to a multiple of 4.
    pub options: Vec<u8>,
    pub vlan: Option<u16>,
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
}

impl Ip {
    pub fn raw(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Ip {
        Ip {
            src,
            dst,
            proto,
            payload: payload.to_vec(),
            tos: 0,
            ttl: 64,
            df: true,
            mf: false,
            offset: 0,
            ident: 0x1c46,
            options: Vec::new(),
            vlan: None,
            eth_dst: LAN_MAC,
            eth_src: LAN_HOST_MAC,
        }
    }

    /// UDP 1234 -> 5678, checksum 0 (none).
    pub fn udp(src: [u8; 4], dst: [u8; 4], data: &[u8]) -> Ip {
        let mut p = Vec::with_capacity(8 + data.len());
        p.extend_from_slice(&1234u16.to_be_bytes());
        p.extend_from_slice(&5678u16.to_be_bytes());
        p.extend_from_slice(&u16::try_from(8 + data.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(data);
        Ip::raw(src, dst, 17, &p)
    }

    /// ICMP: type, code, checksum, then `rest`.
    pub fn icmp(src: [u8; 4], dst: [u8; 4], ty: u8, code: u8, rest: &[u8]) -> Ip {
        let mut p = vec![ty, code, 0, 0];
        p.extend_from_slice(rest);
        let c = internet_checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        Ip::raw(src, dst, 1, &p)
    }

    /// IPv4 in IPv4.
    pub fn ipip(src: [u8; 4], dst: [u8; 4], inner: &Ip) -> Ip {
        let mut ip = Ip::raw(src, dst, 4, &inner.datagram());
        ip.ident = 0x0abc;
        ip.eth_dst = WAN_MAC;
        ip.eth_src = NEXT_HOP_MAC;
        ip
    }

    pub fn ttl(mut self, ttl: u8) -> Ip {
        self.ttl = ttl;
        self
    }
    pub fn tos(mut self, tos: u8) -> Ip {
        self.tos = tos;
        self
    }
    pub fn df(mut self, df: bool) -> Ip {
        self.df = df;
        self
    }
    pub fn frag(mut self, mf: bool, offset: u16) -> Ip {
        self.mf = mf;
        self.offset = offset;
        self
    }
    pub fn options(mut self, options: &[u8]) -> Ip {
        self.options = options.to_vec();
        self
    }
    pub fn vlan(mut self, tci: u16) -> Ip {
        self.vlan = Some(tci);
        self
    }
    pub fn eth_dst(mut self, mac: [u8; 6]) -> Ip {
        self.eth_dst = mac;
        self
    }
    pub fn eth_src(mut self, mac: [u8; 6]) -> Ip {
        self.eth_src = mac;
        self
    }

    pub fn datagram(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        while options.len() % 4 != 0 {
            options.push(0);
        }
        let ihl = 20 + options.len();
        let total = u16::try_from(ihl + self.payload.len()).unwrap();
        let flags_frag = u16::from(self.df) << 14 | u16::from(self.mf) << 13 | self.offset;
        let mut h = vec![0x40 | (ihl / 4) as u8, self.tos];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.ident.to_be_bytes());
        h.extend_from_slice(&flags_frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&options);
        let c = internet_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&self.payload);
        h
    }

    /// Ethernet (+ tag) + datagram, padded to 60 bytes.
    pub fn frame(&self) -> Vec<u8> {
        let mut f = eth(self.eth_dst, self.eth_src, self.vlan, 0x0800);
        f.extend_from_slice(&self.datagram());
        pad60(f)
    }
}

/// Ethernet header, with a single 802.1Q tag if `vlan`.
pub fn eth(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(18);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(tci) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn pad60(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// An ARP request (Ethernet, IPv4) for `tpa` from `sha`/`spa`, broadcast,
/// padded to 60 bytes with garbage unless `vlan` is set.
pub fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4], vlan: Option<u16>) -> Vec<u8> {
    let mut f = eth([0xff; 6], sha, vlan, 0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    if vlan.is_none() {
        f.resize(60, 0xa5);
    }
    f
}
