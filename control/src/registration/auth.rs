//! The Mobile-Home authenticator (RFC 5944 §3.5.1): a keyed HMAC over the
//! registration message up to and including the SPI of the Mobile-Home
//! Authentication Extension. HMAC-MD5 is RFC 5944's mandatory default and
//! kept for interop; HMAC-SHA256 is ours by default.

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::Sha256;

use super::wire::EXT_MH_AUTH;

/// An authentication algorithm, as the key file names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
pub enum Algorithm {
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-md5")]
    HmacMd5,
}

impl Algorithm {
    /// Length of the authenticator on the wire.
    pub fn tag_len(self) -> usize {
        match self {
            Algorithm::HmacSha256 => 32,
            Algorithm::HmacMd5 => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacMd5 => "hmac-md5",
        }
    }
}

#[derive(Clone)]
enum Keyed {
    Sha256(Hmac<Sha256>),
    Md5(Hmac<Md5>),
}

/// A secret keyed for one algorithm. The keyed HMAC state is computed once
/// and cloned per message; the key itself is never printed.
#[derive(Clone)]
pub struct SecretKey {
    keyed: Keyed,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}, redacted)", self.algorithm().name())
    }
}

/// HMAC accepts keys of any length, so this only guards the API contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the key cannot be used with {0}")]
pub struct BadKey(pub &'static str);

impl SecretKey {
    pub fn new(algorithm: Algorithm, key: &[u8]) -> Result<SecretKey, BadKey> {
        let keyed = match algorithm {
            Algorithm::HmacSha256 => Keyed::Sha256(
                Hmac::<Sha256>::new_from_slice(key).map_err(|_| BadKey(algorithm.name()))?,
            ),
            Algorithm::HmacMd5 => {
                Keyed::Md5(Hmac::<Md5>::new_from_slice(key).map_err(|_| BadKey(algorithm.name()))?)
            }
        };
        Ok(SecretKey { keyed })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.keyed {
            Keyed::Sha256(_) => Algorithm::HmacSha256,
            Keyed::Md5(_) => Algorithm::HmacMd5,
        }
    }

    /// The authenticator over `data`.
    pub fn tag(&self, data: &[u8]) -> Vec<u8> {
        match &self.keyed {
            Keyed::Sha256(m) => m
                .clone()
                .chain_update(data)
                .finalize()
                .into_bytes()
                .to_vec(),
            Keyed::Md5(m) => m
                .clone()
                .chain_update(data)
                .finalize()
                .into_bytes()
                .to_vec(),
        }
    }

    /// Constant-time check of `tag` over `data`; a tag of the wrong length
    /// fails (`verify_slice` rejects it rather than comparing a prefix).
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        match &self.keyed {
            Keyed::Sha256(m) => m.clone().chain_update(data).verify_slice(tag).is_ok(),
            Keyed::Md5(m) => m.clone().chain_update(data).verify_slice(tag).is_ok(),
        }
    }

    /// Appends a Mobile-Home Authentication Extension to a complete
    /// message (fixed part and any earlier extensions).
    pub fn append_mh_auth(&self, msg: &mut Vec<u8>, spi: u32) {
        let len = 4 + self.algorithm().tag_len();
        msg.push(EXT_MH_AUTH);
        // Both tag lengths fit: 4 + 32 < 256.
        msg.push(u8::try_from(len).unwrap_or(u8::MAX));
        msg.extend_from_slice(&spi.to_be_bytes());
        let tag = self.tag(msg);
        msg.extend_from_slice(&tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn hmac_md5_rfc2202_vectors() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 3] = [
            (
                vec![0x0b; 16],
                b"Hi There".to_vec(),
                "9294727a3638bb1c13f48ef8158bfc9d",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "750c783e6ab0b503eaa86e310a5db738",
            ),
            (
                vec![0xaa; 16],
                vec![0xdd; 50],
                "56be34521d144c88dbb8c733f0e8b3f6",
            ),
        ];
        for (key, data, want) in cases {
            let k = SecretKey::new(Algorithm::HmacMd5, &key).unwrap();
            assert_eq!(hex::encode(k.tag(&data)), want);
            assert!(k.verify(&data, &unhex(want)));
        }
    }

    #[test]
    fn hmac_sha256_rfc4231_vectors() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 3] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
        ];
        for (key, data, want) in cases {
            let k = SecretKey::new(Algorithm::HmacSha256, &key).unwrap();
            assert_eq!(hex::encode(k.tag(&data)), want);
            assert!(k.verify(&data, &unhex(want)));
        }
    }

    #[test]
    fn verify_refuses_wrong_tags() {
        let k = SecretKey::new(Algorithm::HmacSha256, &[7; 16]).unwrap();
        let tag = k.tag(b"message");
        assert!(k.verify(b"message", &tag));
        assert!(!k.verify(b"messagf", &tag));
        assert!(!k.verify(b"message", &tag[..16]));
        assert!(!k.verify(b"message", &[]));
        let mut flipped = tag.clone();
        flipped[31] ^= 1;
        assert!(!k.verify(b"message", &flipped));
        let other = SecretKey::new(Algorithm::HmacSha256, &[8; 16]).unwrap();
        assert!(!other.verify(b"message", &tag));
    }

    #[test]
    fn mh_auth_covers_message_and_spi() {
        let k = SecretKey::new(Algorithm::HmacMd5, &[1; 16]).unwrap();
        let mut msg = vec![3, 0, 0, 0];
        k.append_mh_auth(&mut msg, 0x100);
        assert_eq!(msg.len(), 4 + 2 + 4 + 16);
        assert_eq!(&msg[4..10], &[32, 20, 0, 0, 1, 0]);
        assert!(k.verify(&msg[..10], &msg[10..]));
        assert!(format!("{k:?}").contains("redacted"));
    }
}
