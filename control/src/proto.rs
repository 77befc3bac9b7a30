//! The control socket protocol: one JSON request per line, one JSON reply
//! per line. Other tooling drives the daemon through the CLI, which speaks
//! this; it is versioned by the `homeward` binary itself.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Bind {
        vm: Ipv4Addr,
        care_of: Ipv4Addr,
        #[serde(default)]
        lifetime: Option<u32>,
        #[serde(default)]
        vm_mac: Option<String>,
    },
    Unbind {
        vm: Ipv4Addr,
    },
    /// `homeward bind --file`: the request line is followed by `bytes`
    /// bytes of a bind file (see `daemon::durable::parse_bind_file`),
    /// answered once, when every binding is applied and committed.
    BindMany {
        bytes: u64,
    },
    List {},
    Stats {},
    /// `homeward capture`: answered with a reply line, then a pcapng
    /// stream on the same connection (see `common::capture`).
    Capture {
        /// Only frames from or to this address (outer or inner IPv4, ARP).
        #[serde(default)]
        vm: Option<Ipv4Addr>,
        /// Stop after this many packets.
        #[serde(default)]
        count: Option<u64>,
    },
    /// `--takeover`: hand the data path to the process asking (see
    /// `common::handover`); answered with fds, not a reply line.
    Takeover {},
    /// `homeward role`: keepalived's VRRP state for this gateway
    /// (`master`, `backup`, `fault`, `stop`); only `master` is active.
    Role {
        state: String,
    },
    /// `homeward health`: whether every worker turns its loop.
    Health {},
}

/// The daemon's answer: `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn ok(result: serde_json::Value) -> Reply {
        Reply {
            ok: true,
            result: Some(result),
            error: None,
        }
    }
    pub fn err(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }
}

/// One binding as `list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingInfo {
    pub vm: Ipv4Addr,
    pub care_of: Ipv4Addr,
    pub vm_mac: Option<String>,
    /// Seconds left, `None` for a binding without a lifetime.
    pub expires_in: Option<u64>,
    /// Seconds since the binding was made or last refreshed.
    pub age: u64,
    pub packets: u64,
    pub bytes: u64,
    /// MAC of the next hop toward the care-of address, if resolved.
    pub next_hop: Option<String>,
    /// "admin" (`homeward bind`) or "registration".
    #[serde(default)]
    pub origin: String,
    /// The SPI of the registration that made it.
    #[serde(default)]
    pub spi: Option<u32>,
    /// Milliseconds from the last move's arrival (registration or bind) to
    /// the first packet forwarded under it.
    #[serde(default)]
    pub first_packet_ms: Option<f64>,
}

pub use dataplane::mac::{format_mac, parse_mac};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_reject_unknown_fields() {
        let r = Request::Bind {
            vm: Ipv4Addr::new(192, 0, 2, 50),
            care_of: Ipv4Addr::new(198, 51, 100, 2),
            lifetime: Some(30),
            vm_mac: None,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"list","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"bind","vm":"1.2.3"}"#).is_err());
    }
}
