//! Small things both roles use; imports nothing above it.

use std::path::{Path, PathBuf};

/// Where homeward's instances pin their XDP program in bpffs.
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/homeward";

/// The bpffs directory of one instance, named after what identifies it (the
/// home agent's state directory, the agent's control socket), so that a
/// restart with the same settings finds what the previous run left, and
/// two instances never share one.
pub fn bpf_pin_dir(role: &str, key: &Path) -> PathBuf {
    let key: String = key
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // bpffs names, like any, stop at 255 bytes; keep the distinctive tail.
    let key = &key[key.len().saturating_sub(200)..];
    Path::new(BPF_PIN_ROOT).join(format!("{role}-{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_dirs_are_distinct_and_tame() {
        assert_eq!(
            bpf_pin_dir("ha", Path::new("/var/lib/homeward")),
            Path::new("/sys/fs/bpf/homeward/ha-var_lib_homeward")
        );
        assert_ne!(
            bpf_pin_dir("ha", Path::new("/tmp/a/state")),
            bpf_pin_dir("ha", Path::new("/tmp/b/state"))
        );
        let long = "x/".repeat(300);
        let d = bpf_pin_dir("agent", Path::new(&long));
        assert!(d.file_name().unwrap().len() < 255);
    }
}
