//! Token bucket for ICMP errors (RFC 1812 §4.3.2.8: a router must be able to limit the rate
//! at which it originates ICMP errors). Time is passed in; the bucket never reads a clock.

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// `rate` tokens per second up to `burst`; one token per ICMP error. Starts full.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    rate_per_sec: u32,
    burst: u32,
    /// Tokens scaled by 1e9 (nano-tokens) so refill needs no division or floats.
    nano_tokens: u128,
    last_ns: u64,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        TokenBucket {
            rate_per_sec,
            burst,
            nano_tokens: u128::from(burst) * NANOS_PER_SEC,
            last_ns: 0,
        }
    }

    /// Takes one token if there is one at `now_ns`. A clock that goes backwards refills
    /// nothing (and does not move `last_ns` back, so it cannot be replayed into tokens).
    pub fn try_take(&mut self, now_ns: u64) -> bool {
        let cap = u128::from(self.burst) * NANOS_PER_SEC;
        if now_ns > self.last_ns {
            let elapsed = u128::from(now_ns - self.last_ns);
            // elapsed < 2^64 and rate < 2^32: the product fits in u128.
            let refill = elapsed * u128::from(self.rate_per_sec);
            self.nano_tokens = self.nano_tokens.saturating_add(refill).min(cap);
            self.last_ns = now_ns;
        }
        if self.nano_tokens >= NANOS_PER_SEC {
            self.nano_tokens -= NANOS_PER_SEC;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(100, 3);
        let t0 = 5_000 * MS;
        assert!(b.try_take(t0) && b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0));
        // 100/s: one token per 10 ms.
        assert!(!b.try_take(t0 + 9 * MS));
        assert!(b.try_take(t0 + 10 * MS));
        assert!(!b.try_take(t0 + 10 * MS));
        // A long pause refills to the burst, not beyond.
        let t1 = t0 + 3_600_000 * MS;
        assert_eq!((0..10).filter(|_| b.try_take(t1)).count(), 3);
    }

    #[test]
    fn clock_going_backwards_gives_nothing() {
        let mut b = TokenBucket::new(1000, 1);
        assert!(b.try_take(10 * MS));
        assert!(!b.try_take(0));
        assert!(!b.try_take(10 * MS));
        assert!(b.try_take(11 * MS));
    }

    #[test]
    fn zero_rate_or_burst() {
        let mut b = TokenBucket::new(0, 2);
        assert!(b.try_take(0) && b.try_take(u64::MAX));
        assert!(!b.try_take(u64::MAX));
        let mut b = TokenBucket::new(u32::MAX, 0);
        assert!(!b.try_take(u64::MAX));
    }
}
