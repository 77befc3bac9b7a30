//! The forwarder's seams in memory, for unit tests of the forwarder and of
//! the roles' binding managers above it: no BPF, no netlink, no root.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{NextHops, SteeringMaps};

/// The steering maps in memory; `fail_next` makes the next write fail,
/// `fail_next_bind` the next `bind`.
#[derive(Debug, Default)]
pub struct MemoryMaps {
    pub bound: BTreeMap<Ipv4Addr, Ipv4Addr>,
    pub care_ofs: BTreeSet<Ipv4Addr>,
    pub fail_next: bool,
    pub fail_next_bind: bool,
}

impl MemoryMaps {
    fn write(&mut self) -> Result<(), String> {
        if std::mem::take(&mut self.fail_next) {
            return Err("injected map failure".into());
        }
        Ok(())
    }
}

impl SteeringMaps for MemoryMaps {
    fn bind(&mut self, vm: Ipv4Addr, care_of: Ipv4Addr) -> Result<(), String> {
        self.write()?;
        if std::mem::take(&mut self.fail_next_bind) {
            return Err("injected bound_vms failure".into());
        }
        self.bound.insert(vm, care_of);
        Ok(())
    }
    fn unbind(&mut self, vm: Ipv4Addr) -> Result<(), String> {
        self.write()?;
        self.bound.remove(&vm);
        Ok(())
    }
    fn add_care_of(&mut self, care_of: Ipv4Addr) -> Result<(), String> {
        self.write()?;
        self.care_ofs.insert(care_of);
        Ok(())
    }
    fn remove_care_of(&mut self, care_of: Ipv4Addr) -> Result<(), String> {
        self.write()?;
        self.care_ofs.remove(&care_of);
        Ok(())
    }
    fn bound(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, String> {
        Ok(self.bound.iter().map(|(a, b)| (*a, *b)).collect())
    }
}

/// Tracked next hops, with the balance of track and untrack calls per
/// address (a set must never see a second track or a stray untrack).
#[derive(Debug, Default)]
pub struct MemoryHops {
    pub calls: RefCell<BTreeMap<Ipv4Addr, i32>>,
    /// Resolved next hops.
    pub resolved: RefCell<BTreeMap<Ipv4Addr, [u8; 6]>>,
}

impl MemoryHops {
    /// The tracked addresses.
    pub fn tracked(&self) -> Vec<Ipv4Addr> {
        self.calls
            .borrow()
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Whether every address was tracked at most once at a time.
    pub fn balanced(&self) -> bool {
        self.calls.borrow().values().all(|n| *n == 0 || *n == 1)
    }
}

impl NextHops for MemoryHops {
    fn track(&self, a: Ipv4Addr) {
        *self.calls.borrow_mut().entry(a).or_default() += 1;
    }
    fn untrack(&self, a: Ipv4Addr) {
        *self.calls.borrow_mut().entry(a).or_default() -= 1;
    }
    fn macs(&self) -> Vec<(Ipv4Addr, Option<[u8; 6]>)> {
        let resolved = self.resolved.borrow();
        self.tracked()
            .into_iter()
            .map(|a| (a, resolved.get(&a).copied()))
            .collect()
    }
}
