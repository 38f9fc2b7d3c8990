//! Closed-loop load: `concurrency` callers each issue calls back to back for a fixed time;
//! the figures are completed calls per second and latency percentiles.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

/// What one measurement saw.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Completed calls per second.
    pub throughput: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Calls that failed (not counted in the throughput).
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

/// One call of a measured path, by worker number; `true` when it succeeded.
pub type Call = Arc<dyn Fn(usize) -> BoxFuture<'static, bool> + Send + Sync>;

/// Boxes a path's call.
pub fn call<F, Fut>(f: F) -> Call
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    Arc::new(move |w| Box::pin(f(w)))
}

/// Runs each of `paths` in turn, `rounds` times over (so that background noise on the machine
/// falls on every path alike), each round for `duration / rounds` after a short warm-up, and
/// merges each path's rounds into one measurement.
pub async fn interleaved(concurrency: usize, duration: Duration, rounds: u32, paths: &[Call]) -> Vec<Measurement> {
    let rounds = rounds.max(1);
    let mut samples: Vec<(Vec<Duration>, u64)> = vec![(Vec::new(), 0); paths.len()];
    for _ in 0..rounds {
        for (i, path) in paths.iter().enumerate() {
            let (l, e) = run(concurrency, Duration::from_millis(200), duration / rounds, path.clone()).await;
            samples[i].0.extend(l);
            samples[i].1 += e;
        }
    }
    samples.into_iter().map(|(l, e)| summarize(l, e, duration)).collect()
}

/// Runs `f` from `concurrency` tasks for `warmup` (discarded) and then `duration`.
#[allow(dead_code)] // for sections that measure one path at a time
pub async fn measure<F, Fut>(concurrency: usize, warmup: Duration, duration: Duration, f: F) -> Measurement
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let (all, errors) = run(concurrency, warmup, duration, call(f)).await;
    summarize(all, errors, duration)
}

fn summarize(mut all: Vec<Duration>, errors: u64, duration: Duration) -> Measurement {
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    Measurement { throughput: all.len() as f64 / duration.as_secs_f64(), p50: pct(0.50), p99: pct(0.99), errors }
}

async fn run(concurrency: usize, warmup: Duration, duration: Duration, call: Call) -> (Vec<Duration>, u64) {
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 14);
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
    (all, errors)
}
