//! The one retry policy every source shares: exponential, capped, jittered.
//!
//! The cap is short (5 s by default) on purpose: capture should resume within
//! seconds of a server coming back, and an unreachable server costs one connection
//! attempt per cap, which no server notices. Jitter (±25%) keeps many sources that
//! lost the same server from reconnecting in lockstep.

use std::time::Duration;

/// Delays between attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
    seed: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Starts at `first`, doubles per attempt, never above `cap`.
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9)
            | 1;
        Backoff {
            first,
            cap,
            next: first,
            seed,
        }
    }

    /// The delay before the next attempt (jittered), and the step after it doubled.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        // xorshift64: jitter needs no cryptographic quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let unit = (self.seed % 1001) as f64 / 1000.0; // 0.0..=1.0
        base.mul_f64(0.75 + 0.5 * unit).min(self.cap)
    }

    /// Back to the first delay (after the source made progress).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(75) && delays[0] <= Duration::from_millis(125));
        assert!(delays[2] >= Duration::from_millis(300), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(1)),
            "{delays:?}"
        );
        assert!(delays[7] >= Duration::from_millis(750), "{delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
