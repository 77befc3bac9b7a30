//! MAC addresses as operators write them: `aa:bb:cc:dd:ee:ff`.

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let m = mac;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with dashes).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for byte in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x5a];
        assert_eq!(format_mac(mac), "52:54:00:12:34:5a");
        assert_eq!(parse_mac("52:54:00:12:34:5a"), Some(mac));
        assert_eq!(parse_mac("52-54-00-12-34-5A"), Some(mac));
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:5a:00",
            "5:54:00:12:34:5a",
            "zz:54:00:12:34:5a",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
