//! Closed-loop load: `concurrency` callers each issue calls back to back for a fixed time;
//! the figures are completed calls per second and latency percentiles.

use std::future::Future;
use std::time::{Duration, Instant};

/// What one measurement saw.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Completed calls per second.
    pub throughput: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Calls that failed (they count against nothing but are reported).
    pub errors: u64,
}

impl Measurement {
    /// One line: throughput, p50, p99.
    pub fn line(&self) -> String {
        format!(
            "{:>9.0} calls/s   p50 {:>7.1} µs   p99 {:>7.1} µs{}",
            self.throughput,
            micros(self.p50),
            micros(self.p99),
            if self.errors > 0 { format!("   ({} errors)", self.errors) } else { String::new() }
        )
    }
}

/// Microseconds as a float.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs `call` from `concurrency` tasks for `warmup` (discarded) and then `duration`.
pub async fn measure<F, Fut>(concurrency: usize, warmup: Duration, duration: Duration, call: F) -> Measurement
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let ok = call(worker).await;
                if t0 >= start {
                    if ok {
                        latencies.push(t0.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    Measurement { throughput: all.len() as f64 / duration.as_secs_f64(), p50: pct(0.50), p99: pct(0.99), errors }
}
