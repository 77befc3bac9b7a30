//! RFC 5944 registration: the wire format, the Mobile-Home authenticator,
//! key file, timestamp replay protection, the home agent's pure request
//! handler and the registering client.

pub mod auth;
pub mod client;
pub mod home_agent;
pub mod keys;
pub mod replay;
pub mod wire;

pub use client::{Registered, RegistrationClient, RegistrationError, RegistrationParams};
pub use keys::KeyFile;
