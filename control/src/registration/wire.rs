//! RFC 5944 registration messages on the wire: zero-copy views over a
//! buffer (smoltcp style: `new_checked` validates the length once, then the
//! accessors cannot panic), builders, and the extension TLVs.
//!
//! ```text
//! Registration Request (type 1)           Registration Reply (type 3)
//!  0      type = 1                         0      type = 3
//!  1      flags S B D M G r T x            1      code
//!  2..4   lifetime                         2..4   lifetime
//!  4..8   home address                     4..8   home address
//!  8..12  home agent                       8..12  home agent
//! 12..16  care-of address                 12..20  identification
//! 16..24  identification                  20..    extensions
//! 24..    extensions
//! ```

// The whole wire vocabulary is defined here, also what this home agent
// never sends or looks at.
#![allow(dead_code)]

use std::net::Ipv4Addr;

/// The registration UDP port (RFC 5944 §3.1).
pub const PORT: u16 = 434;
pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_REPLY: u8 = 3;
pub const REQUEST_LEN: usize = 24;
pub const REPLY_LEN: usize = 20;

/// Mobile-Home Authentication Extension (RFC 5944 §3.5.2).
pub const EXT_MH_AUTH: u8 = 32;
/// Mobile-Foreign and Foreign-Home Authentication Extensions: known, and
/// only ever after the Mobile-Home one.
pub const EXT_MF_AUTH: u8 = 33;
pub const EXT_FH_AUTH: u8 = 34;

/// Normal Vendor/Organization Specific Extension (RFC 3115 §3.2). Type
/// 134 is skippable (128-255): a home agent that does not know it ignores it.
pub const EXT_NVSE: u8 = 134;

/// Critical Vendor/Organization Specific Extension (RFC 3115 §3.1), in
/// the long format (16-bit length). Type 38 is not skippable: a home agent
/// that does not know it discards the whole message (RFC 5944 §1.9), which
/// is what a switchover must get from a home agent without buffering, rather
/// than being taken for a registration.
pub const EXT_CVSE: u8 = 38;

/// Our Vendor/Org-ID in NVSEs and CVSEs: 32473, the IANA Private Enterprise Number
/// reserved for documentation (RFC 5612). A deployment with its own PEN
/// changes only this constant (both ends must agree on it).
pub const HOMEWARD_VENDOR_ID: u32 = 32473;

/// Vendor-NVSE-Types under [`HOMEWARD_VENDOR_ID`].
pub mod nvse_type {
    /// The VM's link-layer address: a 6-byte Ethernet MAC, so the home
    /// agent can hand the address back with gratuitous ARP in the VM's name
    /// without having seen the VM on its LAN.
    pub const VM_LINK_LAYER_ADDRESS: u16 = 1;
}

/// Vendor-CVSE-Types under [`HOMEWARD_VENDOR_ID`].
pub mod cvse_type {
    /// Switchover (no value): the VM stopped at its source for the last
    /// step of a live migration. The home agent takes the VM's traffic and
    /// holds it, for at most the request's lifetime, until the destination
    /// registers (or the source does again, if the migration failed). The
    /// request's care-of address is the source's; it is not bound.
    pub const SWITCHOVER: u16 = 1;
}

/// Request flag bits (RFC 5944 §3.3; T from RFC 3024).
pub mod flags {
    /// Simultaneous bindings.
    pub const S: u8 = 0x80;
    /// Broadcast datagrams.
    pub const B: u8 = 0x40;
    /// Decapsulation by the mobile node (co-located care-of address).
    pub const D: u8 = 0x20;
    /// Minimal encapsulation.
    pub const M: u8 = 0x10;
    /// GRE encapsulation.
    pub const G: u8 = 0x08;
    /// Reserved, sent as zero, ignored on reception.
    pub const R: u8 = 0x04;
    /// Reverse tunnelling requested (RFC 3024).
    pub const T: u8 = 0x02;
    /// Reserved, sent as zero, ignored on reception.
    pub const X: u8 = 0x01;
}

/// Reply codes used here (RFC 5944 §3.4, RFC 3024 §5).
pub mod code {
    pub const ACCEPTED: u8 = 0;
    pub const ACCEPTED_NO_SIMULTANEOUS: u8 = 1;
    pub const UNSPECIFIED: u8 = 128;
    pub const ADMIN_PROHIBITED: u8 = 129;
    pub const INSUFFICIENT_RESOURCES: u8 = 130;
    pub const MN_AUTH_FAILED: u8 = 131;
    pub const FA_AUTH_FAILED: u8 = 132;
    pub const ID_MISMATCH: u8 = 133;
    pub const POORLY_FORMED: u8 = 134;
    pub const TOO_MANY_BINDINGS: u8 = 135;
    pub const UNKNOWN_HA: u8 = 136;
    pub const REVERSE_TUNNEL_UNAVAILABLE: u8 = 137;
    pub const REVERSE_TUNNEL_MANDATORY: u8 = 138;
    pub const ENCAPSULATION_UNAVAILABLE: u8 = 139;
}

/// What a reply code means, for logs and the CLI.
pub fn code_meaning(c: u8) -> &'static str {
    match c {
        0 => "registration accepted",
        1 => "registration accepted, but simultaneous mobility bindings unsupported",
        64..=127 => "denied by the foreign agent",
        128 => "reason unspecified",
        129 => "administratively prohibited",
        130 => "insufficient resources",
        131 => "mobile node failed authentication",
        132 => "foreign agent failed authentication",
        133 => "registration Identification mismatch",
        134 => "poorly formed request",
        135 => "too many simultaneous mobility bindings",
        136 => "unknown home agent address",
        137 => "requested reverse tunnel unavailable",
        138 => "reverse tunnel is mandatory and 'T' bit not set",
        139 => "requested encapsulation unavailable",
        _ => "unknown code",
    }
}

/// Why bytes are not a registration message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// shorter than the fixed part of the message
    #[error("message truncated: {0} bytes")]
    Truncated(usize),
    /// the type byte names another message
    #[error("message type {0} where {1} was expected")]
    WrongType(u8, u8),
    /// an extension's length runs past the end of the message
    #[error("extension type {kind} at offset {offset} overruns the message")]
    ExtensionOverrun { kind: u8, offset: usize },
    /// a Mobile-Home Authentication Extension too short to hold an SPI
    #[error("authentication extension too short ({0} bytes of data)")]
    ShortAuth(usize),
    /// an extension to build whose data does not fit the length byte
    #[error("extension of {0} bytes does not fit a one-byte length")]
    ExtensionTooLong(usize),
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[a, c, d, e]) => u32::from_be_bytes([a, c, d, e]),
        _ => 0,
    }
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::from(be32(b, at))
}

/// A Registration Request view. After `new_checked` the fixed part is
/// known to be present; accessors still never index out of range.
#[derive(Debug, Clone, Copy)]
pub struct Request<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Request<T> {
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < REQUEST_LEN {
            return Err(WireError::Truncated(b.len()));
        }
        if b[0] != TYPE_REQUEST {
            return Err(WireError::WrongType(b[0], TYPE_REQUEST));
        }
        Ok(Request { buffer })
    }
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn flags(&self) -> u8 {
        self.as_bytes().get(1).copied().unwrap_or(0)
    }
    pub fn lifetime(&self) -> u16 {
        be16(self.as_bytes(), 2)
    }
    pub fn home_address(&self) -> Ipv4Addr {
        addr(self.as_bytes(), 4)
    }
    pub fn home_agent(&self) -> Ipv4Addr {
        addr(self.as_bytes(), 8)
    }
    pub fn care_of(&self) -> Ipv4Addr {
        addr(self.as_bytes(), 12)
    }
    pub fn identification(&self) -> u64 {
        be64(self.as_bytes(), 16)
    }
    pub fn extensions(&self) -> Extensions<'_> {
        Extensions::new(self.as_bytes(), REQUEST_LEN)
    }
    /// The Mobile-Home Authentication Extension, if any (see [`find_mh_auth`]).
    pub fn mh_auth(&self) -> Result<Option<MhAuth<'_>>, WireError> {
        find_mh_auth(self.as_bytes(), REQUEST_LEN)
    }
}

/// A Registration Reply view.
#[derive(Debug, Clone, Copy)]
pub struct Reply<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Reply<T> {
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < REPLY_LEN {
            return Err(WireError::Truncated(b.len()));
        }
        if b[0] != TYPE_REPLY {
            return Err(WireError::WrongType(b[0], TYPE_REPLY));
        }
        Ok(Reply { buffer })
    }
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn code(&self) -> u8 {
        self.as_bytes().get(1).copied().unwrap_or(0)
    }
    pub fn lifetime(&self) -> u16 {
        be16(self.as_bytes(), 2)
    }
    pub fn home_address(&self) -> Ipv4Addr {
        addr(self.as_bytes(), 4)
    }
    pub fn home_agent(&self) -> Ipv4Addr {
        addr(self.as_bytes(), 8)
    }
    pub fn identification(&self) -> u64 {
        be64(self.as_bytes(), 12)
    }
    pub fn extensions(&self) -> Extensions<'_> {
        Extensions::new(self.as_bytes(), REPLY_LEN)
    }
    pub fn mh_auth(&self) -> Result<Option<MhAuth<'_>>, WireError> {
        find_mh_auth(self.as_bytes(), REPLY_LEN)
    }
}

/// One extension: `offset` is where its type byte sits in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    pub kind: u8,
    pub offset: usize,
    pub data: &'a [u8],
}

impl Extension<'_> {
    /// RFC 5944 §1.9: types 0-127 must be understood or the whole message
    /// is discarded; 128-255 may be skipped.
    pub fn skippable(&self) -> bool {
        self.kind >= 128
    }
}

/// Iterator over the type-length-value extensions after the fixed part.
/// Yields an error once (then stops) if a length overruns the message.
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    msg: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Extensions<'a> {
    fn new(msg: &'a [u8], start: usize) -> Self {
        Extensions {
            msg,
            pos: start,
            failed: false,
        }
    }
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Result<Extension<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.msg.len() {
            return None;
        }
        let offset = self.pos;
        let kind = self.msg[offset];
        // The long format (RFC 5944 §1.11): type, reserved, 16-bit length.
        let (header, len) = if kind == EXT_CVSE {
            let len = self
                .msg
                .get(offset + 2..offset + 4)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
            (4, len)
        } else {
            (2, self.msg.get(offset + 1).map(|&len| usize::from(len)))
        };
        let data = len.and_then(|len| self.msg.get(offset + header..offset + header + len));
        match data {
            Some(data) => {
                self.pos = offset + header + data.len();
                Some(Ok(Extension { kind, offset, data }))
            }
            None => {
                self.failed = true;
                Some(Err(WireError::ExtensionOverrun { kind, offset }))
            }
        }
    }
}

/// A Mobile-Home Authentication Extension: SPI, authenticator, and the
/// bytes the authenticator covers (RFC 5944 §3.5.1: the message and every
/// extension before this one, then this one's type, length and SPI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MhAuth<'a> {
    pub spi: u32,
    pub authenticator: &'a [u8],
    pub covered: &'a [u8],
    /// Unknown non-skippable extensions before it (the message must then be
    /// discarded, RFC 5944 §1.9).
    pub unknown_before: Option<u8>,
}

/// Finds the first Mobile-Home Authentication Extension. Extensions after
/// it are not authenticated by it and are not looked at.
pub fn find_mh_auth(msg: &[u8], fixed_len: usize) -> Result<Option<MhAuth<'_>>, WireError> {
    let mut unknown_before = None;
    for ext in Extensions::new(msg, fixed_len) {
        let ext = ext?;
        if ext.kind == EXT_MH_AUTH {
            if ext.data.len() < 4 {
                return Err(WireError::ShortAuth(ext.data.len()));
            }
            let (spi, authenticator) = ext.data.split_at(4);
            let covered = msg.get(..ext.offset + 6).unwrap_or(msg);
            return Ok(Some(MhAuth {
                spi: be32(spi, 0),
                authenticator,
                covered,
                unknown_before,
            }));
        }
        if !ext.skippable() && !is_known_cvse(&ext) && unknown_before.is_none() {
            unknown_before = Some(ext.kind);
        }
    }
    Ok(None)
}

/// A Normal Vendor/Organization Specific Extension (RFC 3115 §3.2):
///
/// ```text
///  0      type = 134
///  1      length (of what follows: 8 + the value's length)
///  2..4   reserved (sent as zero, ignored)
///  4..8   Vendor/Org-ID (an IANA Private Enterprise Number)
///  8..10  Vendor-NVSE-Type
/// 10..    Vendor-NVSE-Value
/// ```
///
/// Generic over vendor and type, so any message that carries extensions
/// (requests, replies, later message types) can reuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nvse<'a> {
    pub vendor: u32,
    pub kind: u16,
    pub value: &'a [u8],
}

/// Length of an NVSE's data before its value (reserved, vendor, type).
pub const NVSE_HEADER_LEN: usize = 8;

impl<'a> Nvse<'a> {
    /// Reads an NVSE from an extension; `None` if it is another type or
    /// too short for its header (RFC 3115: an NVSE that is not understood
    /// is ignored, so the caller just skips it).
    pub fn parse(ext: &Extension<'a>) -> Option<Nvse<'a>> {
        if ext.kind != EXT_NVSE {
            return None;
        }
        let value = ext.data.get(NVSE_HEADER_LEN..)?;
        Some(Nvse {
            vendor: be32(ext.data, 2),
            kind: be16(ext.data, 6),
            value,
        })
    }

    /// Appends this NVSE as an extension. A value longer than 247 bytes
    /// does not fit the one-byte length: refused rather than cut.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let len = u8::try_from(NVSE_HEADER_LEN + self.value.len())
            .map_err(|_| WireError::ExtensionTooLong(NVSE_HEADER_LEN + self.value.len()))?;
        out.push(EXT_NVSE);
        out.push(len);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.vendor.to_be_bytes());
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(self.value);
        Ok(())
    }
}

/// The extensions a Mobile-Home Authentication Extension covers: those
/// before the first one (RFC 5944 §3.5.1). Anything after it is not
/// authenticated by it and must not be acted upon. Stops at a malformed
/// extension.
pub fn authenticated_extensions(
    msg: &[u8],
    fixed_len: usize,
) -> impl Iterator<Item = Extension<'_>> {
    Extensions::new(msg, fixed_len)
        .map_while(Result::ok)
        .take_while(|e| e.kind != EXT_MH_AUTH)
}

/// Why a VM link-layer address NVSE was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VmMacError {
    /// the value is not 6 bytes
    #[error("VM link-layer address extension of {0} bytes, not 6")]
    BadLength(u8),
    /// multicast, broadcast or all-zero: never a VM's own address
    #[error("VM link-layer address extension is not a unicast MAC")]
    NotUnicast,
}

/// The VM link-layer address in the authenticated part of a message: the
/// first of our NVSEs of that type before the Mobile-Home Authentication
/// Extension. `Ok(None)` without one (other vendors' NVSEs and types are
/// skipped); `Err` if ours is there but unusable (the caller ignores it and
/// counts it: RFC 3115 has the receiver ignore what it cannot use).
pub fn vm_mac(msg: &[u8], fixed_len: usize) -> Result<Option<[u8; 6]>, VmMacError> {
    let found = authenticated_extensions(msg, fixed_len)
        .filter_map(|e| Nvse::parse(&e))
        .find(|n| n.vendor == HOMEWARD_VENDOR_ID && n.kind == nvse_type::VM_LINK_LAYER_ADDRESS);
    let Some(n) = found else {
        return Ok(None);
    };
    let mac: [u8; 6] = n
        .value
        .try_into()
        // An extension's data is at most 255 bytes.
        .map_err(|_| VmMacError::BadLength(u8::try_from(n.value.len()).unwrap_or(u8::MAX)))?;
    // Bit 0 of the first octet is the group bit (multicast and broadcast).
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(VmMacError::NotUnicast);
    }
    Ok(Some(mac))
}

/// Appends the VM link-layer address NVSE (before the authentication
/// extension, so the authenticator covers it).
pub fn push_vm_mac(out: &mut Vec<u8>, mac: [u8; 6]) {
    // 8 + 6 bytes always fits the length byte.
    let _ = Nvse {
        vendor: HOMEWARD_VENDOR_ID,
        kind: nvse_type::VM_LINK_LAYER_ADDRESS,
        value: &mac,
    }
    .emit(out);
}

/// The fixed part of a Registration Request, for building one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFields {
    pub flags: u8,
    pub lifetime: u16,
    pub home_address: Ipv4Addr,
    pub home_agent: Ipv4Addr,
    pub care_of: Ipv4Addr,
    pub identification: u64,
}

impl RequestFields {
    /// Appends the fixed part to `out`; extensions go after it.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(TYPE_REQUEST);
        out.push(self.flags);
        out.extend_from_slice(&self.lifetime.to_be_bytes());
        out.extend_from_slice(&self.home_address.octets());
        out.extend_from_slice(&self.home_agent.octets());
        out.extend_from_slice(&self.care_of.octets());
        out.extend_from_slice(&self.identification.to_be_bytes());
    }
}

/// The fixed part of a Registration Reply, for building one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFields {
    pub code: u8,
    pub lifetime: u16,
    pub home_address: Ipv4Addr,
    pub home_agent: Ipv4Addr,
    pub identification: u64,
}

impl ReplyFields {
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(TYPE_REPLY);
        out.push(self.code);
        out.extend_from_slice(&self.lifetime.to_be_bytes());
        out.extend_from_slice(&self.home_address.octets());
        out.extend_from_slice(&self.home_agent.octets());
        out.extend_from_slice(&self.identification.to_be_bytes());
    }
}

/// Appends one extension. `data` longer than 255 bytes cannot be encoded
/// in a short TLV; callers only pass fixed, small payloads.
pub fn push_extension(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    let len = u8::try_from(data.len()).unwrap_or(u8::MAX);
    out.push(kind);
    out.push(len);
    out.extend_from_slice(&data[..usize::from(len)]);
}

/// Whether the authenticated part of a message carries our switchover
/// CVSE ([`cvse_type::SWITCHOVER`]).
pub fn is_switchover(msg: &[u8], fixed_len: usize) -> bool {
    authenticated_extensions(msg, fixed_len).any(|e| is_our_cvse(&e, cvse_type::SWITCHOVER))
}

/// Whether `ext` is our CVSE of type `kind`: vendor ID and type in its
/// first 6 bytes (the long header is not in `data`).
pub fn is_our_cvse(ext: &Extension<'_>, kind: u16) -> bool {
    ext.kind == EXT_CVSE
        && ext.data.get(..4) == Some(&HOMEWARD_VENDOR_ID.to_be_bytes()[..])
        && ext.data.get(4..6) == Some(&kind.to_be_bytes()[..])
}

/// Whether `ext` is a CVSE this implementation understands.
pub fn is_known_cvse(ext: &Extension<'_>) -> bool {
    is_our_cvse(ext, cvse_type::SWITCHOVER)
}

/// Appends the switchover CVSE (before the authentication extension, so
/// the authenticator covers it).
pub fn push_switchover(out: &mut Vec<u8>) {
    out.push(EXT_CVSE);
    out.push(0);
    out.extend_from_slice(&6u16.to_be_bytes());
    out.extend_from_slice(&HOMEWARD_VENDOR_ID.to_be_bytes());
    out.extend_from_slice(&cvse_type::SWITCHOVER.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        hex::decode(s).unwrap()
    }

    // A request: T flag, lifetime 60, home 192.0.2.50, HA 198.51.100.1,
    // CoA 198.51.100.2, id 0x0102030405060708, MH auth SPI 256 with a
    // 4-byte authenticator.
    const REQUEST: &str = "01 02 003c c0000232 c6336401 c6336402 0102030405060708
                           20 08 00000100 deadbeef";

    #[test]
    fn request_fixture_parses() {
        let bytes = unhex(REQUEST);
        let r = Request::new_checked(&bytes[..]).unwrap();
        assert_eq!(r.flags(), flags::T);
        assert_eq!(r.lifetime(), 60);
        assert_eq!(r.home_address(), Ipv4Addr::new(192, 0, 2, 50));
        assert_eq!(r.home_agent(), Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(r.care_of(), Ipv4Addr::new(198, 51, 100, 2));
        assert_eq!(r.identification(), 0x0102_0304_0506_0708);
        let auth = r.mh_auth().unwrap().unwrap();
        assert_eq!(auth.spi, 256);
        assert_eq!(auth.authenticator, &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(auth.covered, &bytes[..30]);
        assert_eq!(auth.unknown_before, None);
    }

    #[test]
    fn request_builds_to_the_fixture() {
        let mut out = Vec::new();
        RequestFields {
            flags: flags::T,
            lifetime: 60,
            home_address: Ipv4Addr::new(192, 0, 2, 50),
            home_agent: Ipv4Addr::new(198, 51, 100, 1),
            care_of: Ipv4Addr::new(198, 51, 100, 2),
            identification: 0x0102_0304_0506_0708,
        }
        .emit(&mut out);
        push_extension(&mut out, EXT_MH_AUTH, &unhex("00000100 deadbeef"));
        assert_eq!(out, unhex(REQUEST));
    }

    #[test]
    fn reply_fixture_round_trips() {
        let bytes = unhex("03 85 0000 c0000232 c6336401 e1b2c3d4 05060708");
        let r = Reply::new_checked(&bytes[..]).unwrap();
        assert_eq!(r.code(), code::ID_MISMATCH);
        assert_eq!(r.lifetime(), 0);
        assert_eq!(r.identification(), 0xe1b2_c3d4_0506_0708);
        assert_eq!(r.mh_auth().unwrap(), None);
        let mut out = Vec::new();
        ReplyFields {
            code: r.code(),
            lifetime: r.lifetime(),
            home_address: r.home_address(),
            home_agent: r.home_agent(),
            identification: r.identification(),
        }
        .emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn extensions_are_walked_and_checked() {
        // A skippable NAI-like extension (131), then unknown type 5, then MH auth.
        let mut bytes = unhex("03 00 0000 c0000232 c6336401 0000000000000001");
        bytes.extend(unhex("83 02 6869  05 00  20 04 00000101"));
        let r = Reply::new_checked(&bytes[..]).unwrap();
        let kinds: Vec<u8> = r.extensions().map(|e| e.unwrap().kind).collect();
        assert_eq!(kinds, [131, 5, 32]);
        let auth = r.mh_auth().unwrap().unwrap();
        assert_eq!(auth.spi, 257);
        assert!(auth.authenticator.is_empty());
        assert_eq!(auth.unknown_before, Some(5));
        // Overrun: the length says 9 but only 4 bytes follow.
        let mut bad = bytes[..REPLY_LEN].to_vec();
        bad.extend(unhex("20 09 00000101"));
        assert_eq!(
            Reply::new_checked(&bad[..]).unwrap().mh_auth(),
            Err(WireError::ExtensionOverrun {
                kind: 32,
                offset: 20
            })
        );
        // Too short for an SPI.
        let mut short = bytes[..REPLY_LEN].to_vec();
        short.extend(unhex("20 02 0000"));
        assert_eq!(
            Reply::new_checked(&short[..]).unwrap().mh_auth(),
            Err(WireError::ShortAuth(2))
        );
        // A lone type byte at the end.
        let mut lone = bytes[..REPLY_LEN].to_vec();
        lone.push(0x20);
        assert!(Reply::new_checked(&lone[..]).unwrap().mh_auth().is_err());
    }

    #[test]
    fn short_and_wrong_type_are_refused() {
        let bytes = unhex(REQUEST);
        for n in 0..REQUEST_LEN {
            assert_eq!(
                Request::new_checked(&bytes[..n]).unwrap_err(),
                WireError::Truncated(n)
            );
        }
        assert_eq!(
            Reply::new_checked(&bytes[..]).unwrap_err(),
            WireError::WrongType(1, 3)
        );
    }

    /// The VM link-layer address NVSE for 02:00:5e:00:00:51, by hand:
    /// type 134, length 14, reserved, vendor 32473 (0x7ed9), type 1, MAC.
    const VM_MAC_NVSE: &str = "86 0e 0000 00007ed9 0001 02005e000051";
    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x51];

    /// `REQUEST`'s fixed part, then `middle`, then its MH auth extension.
    fn request_with(middle: &str) -> Vec<u8> {
        let mut b = unhex(REQUEST);
        let auth = b.split_off(REQUEST_LEN);
        b.extend(unhex(middle));
        b.extend(auth);
        b
    }

    #[test]
    fn vm_mac_nvse_encodes_to_the_fixture_and_round_trips() {
        let mut out = Vec::new();
        push_vm_mac(&mut out, MAC);
        assert_eq!(out, unhex(VM_MAC_NVSE));
        // The fuzz seeds `fuzz/seeds/registration/*_vm_mac` carry these
        // extension bytes (written by fuzz/examples/gen_seeds.rs with
        // `push_vm_mac`): keep them in step.
        let bytes = request_with(VM_MAC_NVSE);
        assert_eq!(
            hex::encode(&bytes),
            "0102003cc0000232c6336401c63364020102030405060708\
             860e000000007ed9000102005e000051\
             200800000100deadbeef"
        );
        let r = Request::new_checked(&bytes[..]).unwrap();
        let ext = r.extensions().next().unwrap().unwrap();
        assert!(ext.skippable());
        assert_eq!(
            Nvse::parse(&ext),
            Some(Nvse {
                vendor: HOMEWARD_VENDOR_ID,
                kind: nvse_type::VM_LINK_LAYER_ADDRESS,
                value: &MAC,
            })
        );
        assert_eq!(vm_mac(&bytes, REQUEST_LEN), Ok(Some(MAC)));
        // The authenticator covers it.
        let auth = r.mh_auth().unwrap().unwrap();
        assert_eq!(auth.covered.len(), REQUEST_LEN + 16 + 6);
        assert_eq!(auth.unknown_before, None);
        // Generic: any vendor, type and value.
        let mut out = Vec::new();
        let n = Nvse {
            vendor: 9,
            kind: 0xbeef,
            value: b"xyz",
        };
        n.emit(&mut out).unwrap();
        assert_eq!(out, unhex("86 0b 0000 00000009 beef 78797a"));
        let e = Extensions::new(&out, 0).next().unwrap().unwrap();
        assert_eq!(Nvse::parse(&e), Some(n));
        let long = [0u8; 248];
        let mut out = Vec::new();
        let too_long = Nvse {
            vendor: 9,
            kind: 1,
            value: &long,
        };
        assert_eq!(
            too_long.emit(&mut out),
            Err(WireError::ExtensionTooLong(256))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn vm_mac_nvse_malformed_foreign_and_after_auth() {
        // None at all.
        assert_eq!(vm_mac(&unhex(REQUEST), REQUEST_LEN), Ok(None));
        // Too short for the NVSE header: not an NVSE we understand, skipped.
        let short = request_with("86 05 0000 00007e");
        assert_eq!(vm_mac(&short, REQUEST_LEN), Ok(None));
        let r = Request::new_checked(&short[..]).unwrap();
        let ext = r.extensions().next().unwrap().unwrap();
        assert_eq!(Nvse::parse(&ext), None);
        // Our vendor and type with a value of the wrong length.
        for value in ["", "02005e0000", "02005e00005100"] {
            let len = 8 + value.len() / 2;
            let b = request_with(&format!("86 {len:02x} 0000 00007ed9 0001 {value}"));
            assert_eq!(
                vm_mac(&b, REQUEST_LEN),
                Err(VmMacError::BadLength((value.len() / 2) as u8))
            );
        }
        // Multicast, broadcast, zero.
        for mac in [
            "01005e000001",
            "ffffffffffff",
            "000000000000",
            "330000000001",
        ] {
            let b = request_with(&format!("86 0e 0000 00007ed9 0001 {mac}"));
            assert_eq!(
                vm_mac(&b, REQUEST_LEN),
                Err(VmMacError::NotUnicast),
                "{mac}"
            );
        }
        // Another vendor, or another of our types: ignored.
        let other_vendor = request_with("86 0e 0000 00007eda 0001 02005e000051");
        assert_eq!(vm_mac(&other_vendor, REQUEST_LEN), Ok(None));
        let other_type = request_with("86 0e 0000 00007ed9 0002 02005e000051");
        assert_eq!(vm_mac(&other_type, REQUEST_LEN), Ok(None));
        // Another vendor's first, ours after it: ours is found.
        let both = request_with(&format!("86 0a 0000 00000009 0001 aabb {VM_MAC_NVSE}"));
        assert_eq!(vm_mac(&both, REQUEST_LEN), Ok(Some(MAC)));
        // After the authentication extension: not covered, not used.
        let mut after = unhex(REQUEST);
        after.extend(unhex(VM_MAC_NVSE));
        assert_eq!(vm_mac(&after, REQUEST_LEN), Ok(None));
        assert_eq!(authenticated_extensions(&after, REQUEST_LEN).count(), 0);
        // A malformed extension before it ends the walk without a panic.
        let mut overrun = unhex(REQUEST)[..REQUEST_LEN].to_vec();
        overrun.extend(unhex("86 20 0000"));
        assert_eq!(vm_mac(&overrun, REQUEST_LEN), Ok(None));
    }

    /// Deterministic xorshift, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn poke(b: &[u8]) {
        if let Ok(r) = Request::new_checked(b) {
            let _ = (r.flags(), r.lifetime(), r.home_address(), r.home_agent());
            let _ = (r.care_of(), r.identification(), r.mh_auth());
            let _ = r.extensions().count();
            let _ = vm_mac(b, REQUEST_LEN);
            let _ = r
                .extensions()
                .flatten()
                .filter_map(|e| Nvse::parse(&e))
                .count();
        }
        if let Ok(r) = Reply::new_checked(b) {
            let _ = (r.code(), r.lifetime(), r.identification(), r.mh_auth());
            let _ = r.extensions().count();
        }
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = (rng.next() % 80) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = b.first_mut() {
                *first = [1, 3][(rng.next() % 2) as usize];
            }
            poke(&b);
        }
        for base in [unhex(REQUEST), request_with(VM_MAC_NVSE)] {
            for _ in 0..20_000 {
                let mut b = base.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let i = (rng.next() as usize) % b.len();
                    b[i] ^= 1 << (rng.next() % 8);
                }
                b.truncate((rng.next() as usize) % (base.len() + 1));
                poke(&b);
            }
        }
    }

    #[test]
    fn switchover_cvse_is_long_format_and_authenticated() {
        let mut msg = vec![0u8; REQUEST_LEN];
        msg[0] = TYPE_REQUEST;
        push_switchover(&mut msg);
        assert_eq!(
            &msg[REQUEST_LEN..],
            &[38, 0, 0, 6, 0, 0, 0x7e, 0xd9, 0, 1],
            "type, reserved, length 6, PEN 32473, type 1"
        );
        let ext = Extensions::new(&msg, REQUEST_LEN).next().unwrap().unwrap();
        assert!(is_known_cvse(&ext) && !ext.skippable());
        assert!(is_switchover(&msg, REQUEST_LEN));
        // After the authenticator it is not covered, so not acted on.
        let mut after = vec![0u8; REQUEST_LEN];
        after.extend_from_slice(&[EXT_MH_AUTH, 4, 0, 0, 1, 0]);
        push_switchover(&mut after);
        assert!(!is_switchover(&after, REQUEST_LEN));
        // Another vendor's or type's CVSE is not ours; a cut one overruns.
        let mut other = msg.clone();
        other[REQUEST_LEN + 9] = 2;
        assert!(!is_switchover(&other, REQUEST_LEN));
        let cut = &msg[..msg.len() - 1];
        assert!(matches!(
            Extensions::new(cut, REQUEST_LEN).next(),
            Some(Err(WireError::ExtensionOverrun { kind: 38, .. }))
        ));
        assert!(!is_switchover(cut, REQUEST_LEN));
    }
}
