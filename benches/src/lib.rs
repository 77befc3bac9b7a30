//! Benchmark support for homeward: traffic generation and measurement helpers.
