//! The run over time: one bucket per second (activations, answers below
//! the threshold, errors and a coarse latency histogram), for the report's
//! charts and the progress line.
//!
//! The hot loop stays cheap: each worker counts into its own [`Recorder`]
//! for the second it is in and hands that bucket to the shared [`Series`]
//! (one lock) only when its second changes, and once when it ends.

use serde::Serialize;
use std::sync::Mutex;
use tokio::time::Instant;

/// Sub-buckets per octave of the coarse latency histogram (±9%).
const SUB: usize = 4;
/// Octaves covered: 1 µs .. 2^30 µs (≈ 18 min, above the 10-minute clamp).
const OCTAVES: usize = 30;
/// Buckets of the coarse latency histogram.
pub const LAT_BUCKETS: usize = SUB * OCTAVES;

/// The coarse latency bucket of `us` (microseconds, at least 1).
pub fn lat_bucket(us: u64) -> usize {
    let us = us.max(1);
    let octave = 63 - us.leading_zeros() as usize;
    // The two bits below the leading one (zeros below 4 µs).
    let sub = ((us << 2) >> octave) as usize & (SUB - 1);
    (octave * SUB + sub).min(LAT_BUCKETS - 1)
}

/// The latencies bucket `i` holds: `[low, high)` in microseconds.
pub fn lat_bounds(i: usize) -> (u64, u64) {
    let (octave, sub) = ((i / SUB) as u32, (i % SUB) as u64);
    let low = ((SUB as u64 + sub) << octave) >> 2;
    let high = ((SUB as u64 + sub + 1) << octave) >> 2;
    (low.max(1), high.max(low + 1))
}

/// One second of a run as counted.
#[derive(Clone)]
pub struct Bucket {
    pub ok: u32,
    pub below: u32,
    pub errors: u32,
    pub lat: [u32; LAT_BUCKETS],
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            ok: 0,
            below: 0,
            errors: 0,
            lat: [0; LAT_BUCKETS],
        }
    }
}

impl Bucket {
    fn add(&mut self, o: &Bucket) {
        self.ok += o.ok;
        self.below += o.below;
        self.errors += o.errors;
        for (a, b) in self.lat.iter_mut().zip(o.lat.iter()) {
            *a += b;
        }
    }

    fn is_empty(&self) -> bool {
        self.ok == 0 && self.errors == 0
    }

    /// The latency at quantile `q` (0..=1) of this second's activations:
    /// the middle of the bucket it falls in; 0 without activations.
    pub fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.lat.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &n) in self.lat.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                let (lo, hi) = lat_bounds(i);
                return lo + (hi - lo) / 2;
            }
        }
        0
    }
}

/// The per-second buckets every worker adds into.
pub struct Series {
    start: Instant,
    seconds: Mutex<Vec<Bucket>>,
}

impl Series {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            seconds: Mutex::new(Vec::new()),
        }
    }

    /// The second of the run `at` falls in.
    pub fn second_of(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.start).as_secs() as usize
    }

    fn add(&self, second: usize, b: &Bucket) {
        let mut s = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() <= second {
            s.resize(second + 1, Bucket::default());
        }
        s[second].add(b);
    }

    /// Totals handed in so far: (activations, errors).
    pub fn totals(&self) -> (u64, u64) {
        let s = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        let ok = s.iter().map(|b| u64::from(b.ok)).sum();
        let err = s.iter().map(|b| u64::from(b.errors)).sum();
        (ok, err)
    }

    /// The buckets, one per second from the start; the last one is cut
    /// at `elapsed_secs`.
    pub fn samples(&self, elapsed_secs: f64) -> Vec<SecondSample> {
        let s = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        let whole = elapsed_secs.max(0.0).ceil() as usize;
        let n = s.len().max(whole);
        (0..n)
            .map(|i| {
                let b = s.get(i).cloned().unwrap_or_default();
                let width = (elapsed_secs - i as f64).clamp(0.001, 1.0);
                SecondSample::of(i as u32, width, &b)
            })
            .collect()
    }
}

/// What one worker counts for the second it is in.
#[derive(Default)]
pub struct Recorder {
    second: usize,
    b: Bucket,
}

impl Recorder {
    /// Moves to the second `at` falls in, handing the last one over.
    fn at(&mut self, series: &Series, at: Instant) -> &mut Bucket {
        let second = series.second_of(at);
        if second != self.second {
            self.flush(series);
            self.second = second;
        }
        &mut self.b
    }

    /// A verified activation that took `us`, finished at `at`; `below`
    /// when the count it got is under its threshold.
    pub fn ok(&mut self, series: &Series, at: Instant, us: u64, below: bool) {
        let b = self.at(series, at);
        b.ok += 1;
        b.below += u32::from(below);
        b.lat[lat_bucket(us)] += 1;
    }

    /// A failed activation, ended at `at`.
    pub fn error(&mut self, series: &Series, at: Instant) {
        self.at(series, at).errors += 1;
    }

    /// Hands the current second over.
    pub fn flush(&mut self, series: &Series) {
        if !self.b.is_empty() {
            series.add(self.second, &self.b);
            self.b = Bucket::default();
        }
    }
}

/// One second of the run, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SecondSample {
    /// Seconds since the start.
    pub t: u32,
    /// How much of the second the run covered (the last one is partial).
    pub width: f64,
    /// Verified activations that ended in this second.
    pub activations: u64,
    /// Of those, answers whose count was below the client's threshold.
    pub below_threshold: u64,
    pub errors: u64,
    /// Latency of this second's activations (µs, ±10%).
    pub p50_us: u64,
    pub p99_us: u64,
}

impl SecondSample {
    fn of(t: u32, width: f64, b: &Bucket) -> Self {
        Self {
            t,
            width,
            activations: u64::from(b.ok),
            below_threshold: u64::from(b.below),
            errors: u64::from(b.errors),
            p50_us: b.quantile(0.5),
            p99_us: b.quantile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_cover_and_order_latencies() {
        let mut last = 0;
        for us in [1u64, 2, 3, 4, 5, 7, 8, 100, 1_000, 999_999, 600_000_000] {
            let i = lat_bucket(us);
            assert!(i >= last, "{us}");
            last = i;
            let (lo, hi) = lat_bounds(i);
            assert!(lo <= us && us < hi, "{us} in [{lo}, {hi})");
            // Coarse but within a quarter octave.
            assert!(hi as f64 / lo as f64 <= 2.0, "{us}");
        }
        assert_eq!(lat_bucket(1030), lat_bucket(1050));
        assert_ne!(lat_bucket(1030), lat_bucket(1300));
    }

    #[test]
    fn quantiles_of_a_second() {
        let mut b = Bucket::default();
        for _ in 0..99 {
            b.lat[lat_bucket(1000)] += 1;
        }
        b.lat[lat_bucket(50_000)] += 1;
        let p50 = b.quantile(0.5);
        assert!((900..1200).contains(&p50), "{p50}");
        let p99 = b.quantile(0.99);
        assert!((900..1200).contains(&p99), "{p99}");
        let max = b.quantile(1.0);
        assert!((45_000..60_000).contains(&max), "{max}");
        assert_eq!(Bucket::default().quantile(0.5), 0);
    }

    #[test]
    fn workers_hand_seconds_over() {
        let start = Instant::now();
        let s = Series::new(start);
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.ok(&s, start, 100, true);
        a.ok(&s, start + Duration::from_millis(500), 100, false);
        b.error(&s, start + Duration::from_millis(200));
        // Nothing is handed over before a worker moves on.
        assert_eq!(s.totals(), (0, 0));
        a.ok(&s, start + Duration::from_millis(2100), 300, false);
        assert_eq!(s.totals(), (2, 0));
        a.flush(&s);
        b.flush(&s);
        let samples = s.samples(2.5);
        assert_eq!(samples.len(), 3);
        assert_eq!((samples[0].activations, samples[0].below_threshold), (2, 1));
        assert_eq!(samples[0].errors, 1);
        assert_eq!(samples[1].activations, 0);
        assert_eq!(samples[2].activations, 1);
        assert!((samples[2].width - 0.5).abs() < 1e-9);
        assert!(samples[2].p50_us >= 256 && samples[2].p50_us < 384);
    }
}
