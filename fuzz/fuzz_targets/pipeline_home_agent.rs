//! The home agent's packet pipeline on arbitrary frames: see
//! `homeward_fuzz::pipeline` for the input layout and the invariants.
#![no_main]

use dataplane::pipeline::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| homeward_fuzz::pipeline::run(Role::HomeAgent, data));
