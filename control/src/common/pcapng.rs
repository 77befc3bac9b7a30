//! The few pcapng blocks `homeward capture` writes (draft-ietf-opsawg-pcapng),
//! little-endian, and a reader of block boundaries for the client and the
//! tests. Written by hand rather than with a crate: four block types and
//! two option kinds, a page of code, checked against fixtures below and by
//! tcpdump in the end-to-end test.
//!
//! - Section Header Block (one, first), with `shb_userappl`.
//! - Interface Description Block per port: linktype Ethernet, the snap
//!   length, `if_name`, `if_tsresol` 9 (timestamps in nanoseconds).
//! - Enhanced Packet Block per record, with `opt_comment`.
//! - Interface Statistics Block at the end, with `isb_ifdrop`: records
//!   lost to full capture queues, and `opt_comment`.

/// Block types.
pub const SHB: u32 = 0x0A0D_0D0A;
pub const IDB: u32 = 0x0000_0001;
pub const ISB: u32 = 0x0000_0005;
pub const EPB: u32 = 0x0000_0006;

/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u16 = 1;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const ISB_STARTTIME: u16 = 2;
const ISB_ENDTIME: u16 = 3;
const ISB_IFDROP: u16 = 5;

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Appends one block: type, length, `body` (already padded), options,
/// length again.
fn block(out: &mut Vec<u8>, kind: u32, body: &[u8], options: &[(u16, &[u8])]) {
    let opts_len: usize = if options.is_empty() {
        0
    } else {
        options
            .iter()
            .map(|(_, v)| 4 + pad4(v.len()))
            .sum::<usize>()
            + 4
    };
    let total = (12 + body.len() + opts_len) as u32;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    if !options.is_empty() {
        for (code, value) in options {
            // Options longer than 64 KiB do not exist here (names, comments).
            let len = value.len().min(u16::MAX as usize);
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&value[..len]);
            out.resize(out.len() + pad4(len) - len, 0);
        }
        out.extend_from_slice(&OPT_END.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
    }
    out.extend_from_slice(&total.to_le_bytes());
}

/// A Section Header Block, version 1.0, section length unknown.
pub fn section_header(out: &mut Vec<u8>, application: &str) {
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&(-1i64).to_le_bytes());
    block(out, SHB, &body, &[(SHB_USERAPPL, application.as_bytes())]);
}

/// An Interface Description Block: Ethernet, `snaplen`, nanosecond
/// timestamps.
pub fn interface(out: &mut Vec<u8>, name: &str, snaplen: u32) {
    let mut body = Vec::with_capacity(8);
    body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&snaplen.to_le_bytes());
    block(
        out,
        IDB,
        &body,
        &[(IF_NAME, name.as_bytes()), (IF_TSRESOL, &[9])],
    );
}

/// An Enhanced Packet Block: `data` (the captured bytes) of a frame of
/// `orig_len` bytes on interface `interface` at `ts_ns` nanoseconds since
/// the Unix epoch.
pub fn packet(
    out: &mut Vec<u8>,
    interface: u32,
    ts_ns: u64,
    data: &[u8],
    orig_len: u32,
    comment: &str,
) {
    let mut body = Vec::with_capacity(20 + pad4(data.len()));
    body.extend_from_slice(&interface.to_le_bytes());
    body.extend_from_slice(&((ts_ns >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(ts_ns as u32).to_le_bytes());
    body.extend_from_slice(&(data.len() as u32).to_le_bytes());
    body.extend_from_slice(&orig_len.to_le_bytes());
    body.extend_from_slice(data);
    body.resize(20 + pad4(data.len()), 0);
    let options: &[(u16, &[u8])] = if comment.is_empty() {
        &[]
    } else {
        &[(OPT_COMMENT, comment.as_bytes())]
    };
    block(out, EPB, &body, options);
}

/// An Interface Statistics Block: `dropped` records over
/// `start_ns..end_ns`, with `comment`.
pub fn statistics(
    out: &mut Vec<u8>,
    interface: u32,
    start_ns: u64,
    end_ns: u64,
    dropped: u64,
    comment: &str,
) {
    let ts = |ns: u64| {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&((ns >> 32) as u32).to_le_bytes());
        v[4..].copy_from_slice(&(ns as u32).to_le_bytes());
        v
    };
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&interface.to_le_bytes());
    body.extend_from_slice(&ts(end_ns));
    let (start, end) = (ts(start_ns), ts(end_ns));
    block(
        out,
        ISB,
        &body,
        &[
            (ISB_STARTTIME, &start),
            (ISB_ENDTIME, &end),
            (ISB_IFDROP, &dropped.to_le_bytes()),
            (OPT_COMMENT, comment.as_bytes()),
        ],
    );
}

/// One block as read back: its type and body (between the lengths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub kind: u32,
    pub body: Vec<u8>,
}

/// An Enhanced Packet Block as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub interface: u32,
    /// Nanoseconds since the Unix epoch (`if_tsresol` 9).
    pub ts_ns: u64,
    /// The captured bytes.
    pub data: &'a [u8],
    pub orig_len: u32,
    pub comment: Option<String>,
}

/// Largest block the reader accepts (a packet is at most a snap length).
pub const MAX_BLOCK: usize = 1 << 20;

/// Reads the length of a block from its first 8 bytes: the total length,
/// or why it is not a block this reader takes.
pub fn block_len(header: &[u8; 8]) -> Result<usize, String> {
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len < 12 || !len.is_multiple_of(4) || len > MAX_BLOCK {
        return Err(format!("bad pcapng block length {len}"));
    }
    Ok(len)
}

impl Block {
    /// A block from its 8-byte header and the rest (`len - 8` bytes).
    pub fn parse(header: &[u8; 8], rest: &[u8]) -> Result<Block, String> {
        let len = block_len(header)?;
        if rest.len() != len - 8 {
            return Err("truncated pcapng block".into());
        }
        let trailer = &rest[rest.len() - 4..];
        if trailer != &header[4..8] {
            return Err("pcapng block lengths differ".into());
        }
        Ok(Block {
            kind: u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
            body: rest[..rest.len() - 4].to_vec(),
        })
    }

    /// Every block of `bytes` (a whole file), in order.
    pub fn all(bytes: &[u8]) -> Result<Vec<Block>, String> {
        let mut blocks = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let header: &[u8; 8] = bytes
                .get(at..at + 8)
                .and_then(|h| h.try_into().ok())
                .ok_or("truncated pcapng block header")?;
            let len = block_len(header)?;
            let rest = bytes
                .get(at + 8..at + len)
                .ok_or("truncated pcapng block")?;
            blocks.push(Block::parse(header, rest)?);
            at += len;
        }
        Ok(blocks)
    }

    /// The options after `fixed` bytes of the body, `(code, value)`.
    pub fn options(&self, fixed: usize) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = fixed;
        while let Some(h) = self.body.get(at..at + 4) {
            let code = u16::from_le_bytes([h[0], h[1]]);
            let len = u16::from_le_bytes([h[2], h[3]]) as usize;
            if code == OPT_END {
                break;
            }
            let Some(v) = self.body.get(at + 4..at + 4 + len) else {
                break;
            };
            out.push((code, v.to_vec()));
            at += 4 + pad4(len);
        }
        out
    }

    /// An EPB's interface, timestamp, bytes, original length and comment.
    pub fn packet(&self) -> Option<Packet<'_>> {
        if self.kind != EPB {
            return None;
        }
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(
                self.body.get(i..i + 4)?.try_into().ok()?,
            ))
        };
        let (interface, high, low, caplen, orig) =
            (word(0)?, word(4)?, word(8)?, word(12)?, word(16)?);
        let data = self.body.get(20..20 + caplen as usize)?;
        let comment = self
            .options(20 + pad4(caplen as usize))
            .into_iter()
            .find(|(c, _)| *c == OPT_COMMENT)
            .map(|(_, v)| String::from_utf8_lossy(&v).into_owned());
        Some(Packet {
            interface,
            ts_ns: (u64::from(high) << 32) | u64::from(low),
            data,
            orig_len: orig,
            comment,
        })
    }

    /// An ISB's `isb_ifdrop`.
    pub fn dropped(&self) -> Option<u64> {
        if self.kind != ISB {
            return None;
        }
        self.options(12)
            .into_iter()
            .find(|(c, v)| *c == ISB_IFDROP && v.len() == 8)
            .and_then(|(_, v)| Some(u64::from_le_bytes(v.try_into().ok()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn section_header_bytes() {
        let mut out = Vec::new();
        section_header(&mut out, "hw");
        assert_eq!(
            hex(&out),
            concat!(
                "0a0d0d0a",
                "28000000", // type, length 40
                "4d3c2b1a",
                "0100",
                "0000",
                "ffffffffffffffff", // BOM, 1.0, length -1
                "0400",
                "0200",
                "68770000", // shb_userappl "hw", padded
                "0000",
                "0000", // end of options
                "28000000",
            )
        );
    }

    #[test]
    fn interface_bytes() {
        let mut out = Vec::new();
        interface(&mut out, "eth1", 256);
        assert_eq!(
            hex(&out),
            concat!(
                "01000000", "28000000", // type, length 40
                "0100", "0000", "00010000", // Ethernet, reserved, snaplen 256
                "0200", "0400", "65746831", // if_name "eth1"
                "0900", "0100", "09000000", // if_tsresol 9, padded
                "0000", "0000", "28000000",
            )
        );
    }

    #[test]
    fn packet_bytes_and_read_back() {
        let mut out = Vec::new();
        let ts = 0x0000_0001_0000_0002u64;
        packet(&mut out, 1, ts, &[0xaa, 0xbb, 0xcc], 60, "in lan q0: x");
        assert_eq!(
            hex(&out),
            concat!(
                "06000000",
                "38000000", // type, length 56
                "01000000",
                "01000000",
                "02000000", // interface 1, ts high, low
                "03000000",
                "3c000000", // captured 3, original 60
                "aabbcc00", // data, padded
                "0100",
                "0c00",
                "696e206c616e2071303a2078", // opt_comment (12 bytes)
                "0000",
                "0000",
                "38000000",
            )
        );
        let blocks = Block::all(&out).unwrap();
        assert_eq!(blocks.len(), 1);
        let p = blocks[0].packet().unwrap();
        assert_eq!(
            (p.interface, p.ts_ns, p.data, p.orig_len),
            (1, ts, &[0xaa, 0xbb, 0xcc][..], 60)
        );
        assert_eq!(p.comment.as_deref(), Some("in lan q0: x"));
    }

    #[test]
    fn statistics_read_back_and_bad_input_is_an_error() {
        let mut out = Vec::new();
        section_header(&mut out, "homeward");
        statistics(&mut out, 0, 1, 2, 42, "capture_dropped");
        let blocks = Block::all(&out).unwrap();
        assert_eq!(blocks[0].kind, SHB);
        assert_eq!(blocks[1].dropped(), Some(42));
        assert!(Block::all(&out[..out.len() - 1]).is_err());
        let mut bad = out.clone();
        bad[4] = 13;
        assert!(Block::all(&bad).is_err());
        assert!(block_len(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
