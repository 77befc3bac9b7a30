//! The mobility security associations: a TOML key file, one `[[spi]]`
//! table per SPI. It holds secrets, so it is refused unless root owns it
//! and nobody else can read or write it.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::auth::{Algorithm, SecretKey};

/// Shortest key accepted (RFC 5944 §5.1 asks for 128 bits at least).
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// the file cannot be opened or read
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// permissions would let someone else read or replace the secrets
    #[error("key file {path} must be owned by root with mode 0600 or 0400 (it is uid {uid}, mode {mode:04o})")]
    Permissions { path: PathBuf, uid: u32, mode: u32 },
    /// not valid TOML, or not the expected fields
    #[error("bad key file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    spi: Vec<RawSpi>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpi {
    spi: u32,
    #[serde(default)]
    algorithm: Algorithm,
    key: String,
    #[serde(default)]
    home_addresses: Vec<String>,
}

/// An IPv4 prefix, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    pub fn new(addr: Ipv4Addr, len: u8) -> Prefix {
        let len = len.min(32);
        Prefix {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(len)),
            len,
        }
    }

    fn mask(len: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & Self::mask(self.len) == u32::from(self.addr)
    }

    /// `a.b.c.d/len`, or a bare address meaning /32.
    pub fn parse(s: &str) -> Option<Prefix> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().ok().filter(|l| *l <= 32)?),
            None => (s, 32),
        };
        Some(Prefix::new(a.parse().ok()?, len))
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One security association.
#[derive(Debug, Clone)]
pub struct SpiEntry {
    pub spi: u32,
    pub key: SecretKey,
    /// Home addresses this SPI may register (home agent side).
    pub home_addresses: Vec<Prefix>,
}

impl SpiEntry {
    pub fn authorizes(&self, home: Ipv4Addr) -> bool {
        self.home_addresses.iter().any(|p| p.contains(home))
    }
}

/// The parsed key file.
#[derive(Debug, Clone, Default)]
pub struct KeyFile {
    entries: BTreeMap<u32, SpiEntry>,
}

impl KeyFile {
    /// Opens, checks ownership and mode of the opened file (not the path,
    /// so a swap between check and read changes nothing), then parses.
    pub fn load(path: &Path) -> Result<KeyFile, KeyError> {
        let read = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        let mode = meta.mode() & 0o7777;
        if meta.uid() != 0 || mode & 0o077 != 0 || !meta.is_file() {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                uid: meta.uid(),
                mode,
            });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read)?;
        Self::parse(&text).map_err(|message| KeyError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses key file text; the error is one line.
    pub fn parse(text: &str) -> Result<KeyFile, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
        let mut entries = BTreeMap::new();
        for r in raw.spi {
            // RFC 5944 §5.1 reserves SPIs 0 to 255.
            if r.spi < 256 {
                return Err(format!("spi {} is reserved (use 256 or more)", r.spi));
            }
            let key = hex::decode(r.key.trim())
                .map_err(|e| format!("spi {}: key is not hex: {e}", r.spi))?;
            if key.len() < MIN_KEY_LEN {
                return Err(format!(
                    "spi {}: key is {} bytes, at least {MIN_KEY_LEN} needed",
                    r.spi,
                    key.len()
                ));
            }
            let key = SecretKey::new(r.algorithm, &key).map_err(|e| e.to_string())?;
            let home_addresses = r
                .home_addresses
                .iter()
                .map(|s| {
                    Prefix::parse(s)
                        .ok_or_else(|| format!("spi {}: bad home address prefix {s:?}", r.spi))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let entry = SpiEntry {
                spi: r.spi,
                key,
                home_addresses,
            };
            if entries.insert(r.spi, entry).is_some() {
                return Err(format!("spi {} appears twice", r.spi));
            }
        }
        Ok(KeyFile { entries })
    }

    pub fn get(&self, spi: u32) -> Option<&SpiEntry> {
        self.entries.get(&spi)
    }

    #[cfg(test)]
    pub fn spis(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const GOOD: &str = r#"
[[spi]]
spi = 256
key = "00112233445566778899aabbccddeeff"
home_addresses = ["192.0.2.50/32", "192.0.2.64/26"]

[[spi]]
spi = 300
algorithm = "hmac-md5"
key = "0f0e0d0c0b0a09080706050403020100ff"
"#;

    #[test]
    fn parses_entries_and_defaults() {
        let k = KeyFile::parse(GOOD).unwrap();
        assert_eq!(k.spis().collect::<Vec<_>>(), [256, 300]);
        let a = k.get(256).unwrap();
        assert_eq!(a.key.algorithm(), Algorithm::HmacSha256);
        assert!(a.authorizes(Ipv4Addr::new(192, 0, 2, 50)));
        assert!(a.authorizes(Ipv4Addr::new(192, 0, 2, 127)));
        assert!(!a.authorizes(Ipv4Addr::new(192, 0, 2, 51)));
        let b = k.get(300).unwrap();
        assert_eq!(b.key.algorithm(), Algorithm::HmacMd5);
        assert!(!b.authorizes(Ipv4Addr::new(192, 0, 2, 50)));
        assert!(k.get(257).is_none());
    }

    #[test]
    fn refuses_bad_content() {
        let bad = [
            ("[[spi]]\nspi = 256\nkey = \"0011\"\n", "at least 16"),
            ("[[spi]]\nspi = 5\nkey = \"00112233445566778899aabbccddeeff\"\n", "reserved"),
            ("[[spi]]\nspi = 256\nkey = \"zz112233445566778899aabbccddeeff\"\n", "not hex"),
            ("[[spi]]\nspi = 256\nkey = \"00112233445566778899aabbccddeeff\"\nalgorithm = \"sha1\"\n", "unknown variant"),
            ("[[spi]]\nspi = 256\nkee = \"00\"\n", "unknown field"),
            ("[[spi]]\nspi = 256\nkey = \"00112233445566778899aabbccddeeff\"\nhome_addresses = [\"192.0.2.0/33\"]\n", "prefix"),
            ("[[spi]]\nspi = 256\nkey = \"00112233445566778899aabbccddeeff\"\n[[spi]]\nspi = 256\nkey = \"00112233445566778899aabbccddeeff\"\n", "twice"),
        ];
        for (text, want) in bad {
            let e = KeyFile::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn prefixes() {
        let p = Prefix::parse("192.0.2.77/26").unwrap();
        assert_eq!(p.to_string(), "192.0.2.64/26");
        assert!(Prefix::parse("0.0.0.0/0")
            .unwrap()
            .contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(Prefix::parse("10.0.0.1").unwrap().len, 32);
        assert!(Prefix::parse("10.0.0/8").is_none());
    }

    #[test]
    fn load_checks_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, GOOD).unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = KeyFile::load(&path);
            // Only root owns files it creates as root; other users see Permissions errors.
            let root = std::fs::metadata(&path).unwrap().uid() == 0;
            assert_eq!(r.is_ok(), ok && root, "mode {mode:o}: {r:?}");
            if !ok {
                assert!(r.unwrap_err().to_string().contains("must be owned by root"));
            }
        }
        assert!(matches!(
            KeyFile::load(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
    }
}
