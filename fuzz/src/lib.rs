//! Helpers shared by homeward's fuzz targets and the seed generator
//! (`examples/gen_seeds.rs`): the pipeline harness with its invariants, and
//! small frame and message builders.
//!
//! Every `assert!` here stands for a property the code under test promises
//! (see `dataplane/src/pipeline/mod.rs`, "no panic on any input", and the
//! property test in `dataplane/src/pipeline/robustness.rs`): a failure is a
//! bug to fix, or this file's misunderstanding to correct, never noise.

pub mod frames;
pub mod pipeline;

/// The key file of the `registration` target (and of its seeds' signed
/// replies): SPI 256 HMAC-SHA256 for the home /24, 257 HMAC-MD5 for half of
/// it and an address outside, 258 for one address.
pub const REGISTRATION_KEYS: &str = r#"
[[spi]]
spi = 256
algorithm = "hmac-sha256"
key = "000102030405060708090a0b0c0d0e0f"
home_addresses = ["192.0.2.0/24"]

[[spi]]
spi = 257
algorithm = "hmac-md5"
key = "101112131415161718191a1b1c1d1e1f"
home_addresses = ["192.0.2.0/25", "10.0.0.1"]

[[spi]]
spi = 258
key = "202122232425262728292a2b2c2d2e2f"
home_addresses = ["192.0.2.50"]
"#;

/// The Internet checksum (RFC 1071) over `bytes`: 0 when a header that
/// carries its own checksum verifies. Written here rather than borrowed from
/// the pipeline, so the check does not share its implementation.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
