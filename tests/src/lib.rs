//! The network-namespace test lab for homeward.
