//! Addresses nobody may claim: neither `homeward bind` nor a correctly
//! signed registration may bind the home agent's own addresses (on every
//! interface it serves) or a home subnet's network or broadcast address,
//! and no care-of address may be one of ours. Otherwise the gateway's own
//! traffic, or the subnet's broadcasts, would go into a tunnel. The agent
//! applies the same to the VMs it is configured to serve.

use std::net::Ipv4Addr;

/// The reserved addresses of one home agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Every IPv4 address of the interfaces the home agent serves, and its
    /// `--address`.
    own: Vec<Ipv4Addr>,
    /// The home subnets: their network and broadcast addresses are reserved.
    prefixes: Vec<(Ipv4Addr, u8)>,
}

impl Claims {
    pub fn new(own: Vec<Ipv4Addr>, prefixes: Vec<(Ipv4Addr, u8)>) -> Claims {
        Claims { own, prefixes }
    }

    /// Why `vm` cannot be a VM's home address, if it cannot.
    pub fn refuse_home(&self, vm: Ipv4Addr) -> Option<String> {
        if self.own.contains(&vm) {
            return Some(format!("{vm} is one of this host's own addresses"));
        }
        for &(addr, len) in &self.prefixes {
            // /31 and /32 have no network or broadcast address (RFC 3021).
            if len > 30 {
                continue;
            }
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            let network = u32::from(addr) & mask;
            if u32::from(vm) == network {
                return Some(format!(
                    "{vm} is the network address of {}/{len}",
                    Ipv4Addr::from(network)
                ));
            }
            if u32::from(vm) == network | !mask {
                return Some(format!(
                    "{vm} is the broadcast address of {}/{len}",
                    Ipv4Addr::from(network)
                ));
            }
        }
        None
    }

    /// Why `care_of` cannot be a care-of address, if it cannot.
    pub fn refuse_care_of(&self, care_of: Ipv4Addr) -> Option<String> {
        self.own
            .contains(&care_of)
            .then(|| format!("{care_of} is one of this host's own addresses"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims::new(
            vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 1)],
            vec![
                (Ipv4Addr::new(192, 0, 2, 1), 24),
                (Ipv4Addr::new(203, 0, 113, 7), 31),
            ],
        )
    }

    #[test]
    fn own_network_and_broadcast_addresses_are_refused() {
        let c = claims();
        for a in [
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(198, 51, 100, 1),
            Ipv4Addr::new(192, 0, 2, 0),
            Ipv4Addr::new(192, 0, 2, 255),
        ] {
            assert!(c.refuse_home(a).is_some(), "{a} accepted");
        }
        assert!(c.refuse_home(Ipv4Addr::new(192, 0, 2, 50)).is_none());
        // A /31 has no network or broadcast address.
        assert!(c.refuse_home(Ipv4Addr::new(203, 0, 113, 6)).is_none());
        assert!(c.refuse_home(Ipv4Addr::new(203, 0, 113, 7)).is_none());
        assert!(c.refuse_care_of(Ipv4Addr::new(198, 51, 100, 1)).is_some());
        assert!(c.refuse_care_of(Ipv4Addr::new(198, 51, 100, 2)).is_none());
    }

    #[test]
    fn prefix_lengths_at_the_edges() {
        let c = Claims::new(vec![], vec![(Ipv4Addr::new(10, 1, 2, 3), 0)]);
        assert!(c.refuse_home(Ipv4Addr::new(0, 0, 0, 0)).is_some());
        assert!(c.refuse_home(Ipv4Addr::BROADCAST).is_some());
        assert!(c.refuse_home(Ipv4Addr::new(10, 1, 2, 3)).is_none());
    }
}
