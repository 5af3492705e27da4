//! Jittered exponential backoff for reconnects and retries (the sinks, the fleet ingest).
//! Pure; imports nothing of ours.

use std::time::Duration;

/// Jittered exponential delays between retries: `min`, doubled per failure up to `max`,
/// each drawn from its upper half ("equal jitter"), so that sinks (or a fleet) failing together do
/// not retry together and a delay never drops below half its step.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    seed: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            min,
            max,
            step: min,
            // splitmix64's finaliser, so that nearby seeds (sink 1, sink 2) start far apart.
            seed: {
                let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) | 1
            },
        }
    }

    /// The delay before the next try.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // xorshift64: enough randomness for spreading retries, no dependency.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let unit = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
        let delay = self.step.mul_f64(0.5 + unit / 2.0);
        self.step = (self.step * 2).min(self.max);
        delay
    }

    /// The longest delay it draws from.
    pub(crate) fn max(&self) -> Duration {
        self.max
    }

    /// After a success: the next failure starts again at `min`.
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(60));
        let mut b = Backoff::new(min, max, 42);
        let mut steps = Vec::new();
        for i in 0..12 {
            let d = b.next_delay();
            let step = (min * 2u32.pow(i)).min(max);
            assert!(
                d >= step / 2 && d <= step,
                "try {i}: {d:?} outside {step:?}/2..{step:?}"
            );
            steps.push(d);
        }
        println!("delays: {steps:?}");
        assert!(
            steps.windows(2).any(|w| w[0] != w[1] / 2),
            "jittered, not exact doublings"
        );
        b.reset();
        assert!(b.next_delay() <= min);
        let mut other = Backoff::new(min, max, 43);
        let mut again = Backoff::new(min, max, 42);
        assert_ne!(
            other.next_delay(),
            again.next_delay(),
            "seeds spread sinks apart"
        );
    }
}
