//! homeward's control plane as a library: the `homeward` binary (main.rs)
//! is its command line, and the fuzz targets reach the parsers through it.

pub mod agent;
pub mod cli;
pub mod client;
pub mod common;
pub mod config;
pub mod daemon;
pub mod error;
pub mod proto;
pub mod register;
pub mod registration;
pub mod store;
