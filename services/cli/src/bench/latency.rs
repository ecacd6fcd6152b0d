//! Latency samples and their percentiles.

use std::time::Duration;

/// Recorded latencies in microseconds.
#[derive(Debug, Default)]
pub struct Samples {
    micros: Vec<u32>,
}

impl Samples {
    /// Room for `n` samples without reallocating during the run.
    pub fn with_capacity(n: usize) -> Self {
        Self { micros: Vec::with_capacity(n) }
    }

    /// Adds one latency.
    pub fn record(&mut self, d: Duration) {
        self.micros.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    /// Moves another set of samples into this one.
    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// Sorts so percentiles can be read.
    pub fn finish(&mut self) {
        self.micros.sort_unstable();
    }

    /// The `p`-th percentile (0..=100) of the sorted samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.micros.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.micros.len() - 1) as f64).round() as usize;
        Duration::from_micros(u64::from(self.micros[rank.min(self.micros.len() - 1)]))
    }
}
