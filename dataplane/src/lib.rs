//! homeward's data path.
//!
//! - [`pipeline`]: pure packet logic (classify, encapsulate, decapsulate, ARP, ICMP).
//! - [`table`]: the lock-free binding table (one writer, readers never block).
//! - [`neigh`]: next hops for care-of addresses from the kernel (rtnetlink).
//! - [`loader`]: loads and attaches the XDP steering program, keeps its maps in sync.
//! - [`xsk`]: AF_XDP sockets, UMEM and the forwarding worker.

pub mod loader;
pub mod neigh;
pub mod pipeline;
pub mod table;
pub mod xsk;
