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
    /// The CPU time this process spent per completed call (every thread: callers, servers,
    /// databases), when the system tells it (Linux).
    pub cpu_per_call: Option<Duration>,
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

    /// The CPU time per call, in milliseconds, or `?` where the system does not tell it.
    pub fn cpu_ms(&self) -> String {
        self.cpu_per_call.map_or_else(|| "?".to_owned(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
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
/// falls on every path alike), each round for `duration / rounds` after a short warm-up and
/// in an order rotated by one path per round, and merges each path's rounds into one
/// measurement.
pub async fn interleaved(concurrency: usize, duration: Duration, rounds: u32, paths: &[Call]) -> Vec<Measurement> {
    let rounds = rounds.max(1);
    let mut samples: Vec<Sample> = vec![Sample::default(); paths.len()];
    for round in 0..rounds as usize {
        // Each round starts with another path, so that no path always follows the same one
        // (the path after the raw hash was measured about a millisecond of CPU dearer per
        // call, whichever it was).
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let s = run(concurrency, Duration::from_millis(200), duration / rounds, paths[i].clone()).await;
            samples[i].latencies.extend(s.latencies);
            samples[i].errors += s.errors;
            samples[i].cpu = samples[i].cpu.zip(s.cpu).map(|(a, b)| a + b);
        }
    }
    samples.into_iter().map(|s| summarize(s, duration)).collect()
}

/// Runs `f` from `concurrency` tasks for `warmup` (discarded) and then `duration`.
#[allow(dead_code)] // for sections that measure one path at a time
pub async fn measure<F, Fut>(concurrency: usize, warmup: Duration, duration: Duration, f: F) -> Measurement
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    summarize(run(concurrency, warmup, duration, call(f)).await, duration)
}

/// What one or more runs of a path collected.
#[derive(Debug, Clone)]
struct Sample {
    latencies: Vec<Duration>,
    errors: u64,
    /// CPU time of the process over the measured windows, if known.
    cpu: Option<Duration>,
}

impl Default for Sample {
    fn default() -> Self {
        Sample { latencies: Vec::new(), errors: 0, cpu: Some(Duration::ZERO) }
    }
}

fn summarize(mut s: Sample, duration: Duration) -> Measurement {
    let all = &mut s.latencies;
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    let calls = u32::try_from(all.len()).unwrap_or(u32::MAX);
    Measurement {
        throughput: all.len() as f64 / duration.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        errors: s.errors,
        cpu_per_call: s.cpu.filter(|_| calls > 0).map(|cpu| cpu / calls),
    }
}

/// The CPU time (user and system, all threads) this process has used, on Linux.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command (which may hold spaces) in parentheses; utime and stime
    // are the 14th and 15th fields, in clock ticks (USER_HZ, 100 on every Linux platform).
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let ticks = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

async fn run(concurrency: usize, warmup: Duration, duration: Duration, call: Call) -> Sample {
    let start = Instant::now() + warmup;
    let end = start + duration;
    // The process's CPU time over the measured window, read when it opens and closes.
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let first = process_cpu();
        tokio::time::sleep_until(end.into()).await;
        first.zip(process_cpu()).map(|(a, b)| b.saturating_sub(a))
    });
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
    Sample { latencies: all, errors, cpu: cpu.await.ok().flatten() }
}
