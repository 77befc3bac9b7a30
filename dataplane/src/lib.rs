//! homeward's data path.
//!
//! - [`forwarder`]: the one owner of a data path (table, maps, next hops,
//!   workers), used by both roles.
//! - [`pipeline`]: pure packet logic (classify, encapsulate, decapsulate, ARP, ICMP).
//! - [`table`]: the lock-free binding table (one writer, readers never block).
//! - [`neigh`]: next hops for care-of addresses from the kernel (rtnetlink).
//! - [`lookup`]: the pipeline's view of those tables.
//! - [`loader`]: loads and attaches the XDP steering program, keeps its maps in sync.
//! - [`xsk`]: AF_XDP sockets, UMEM, frame accounting and the forwarding worker.
//! - [`stats`]: counters the workers publish.
//! - [`cpu_hints`]: prefetching and huge pages for the per-binding arrays.

pub mod capture;
pub mod cpu_hints;
pub mod forwarder;
pub mod loader;
pub mod lookup;
pub mod mac;
pub mod neigh;
pub mod pipeline;
pub mod stats;
pub mod table;
pub mod workers;
pub mod xsk;
