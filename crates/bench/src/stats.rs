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
    /// Of which Postern's threads (see [`server_runtime`]; `None` unless Postern runs on a
    /// runtime of its own); the rest is the load generator's (and, on a raw path, that
    /// path's own work).
    pub server_cpu_per_call: Option<Duration>,
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
        ms(self.cpu_per_call)
    }

    /// Postern's threads' CPU time per call, in milliseconds, or `?`.
    pub fn server_cpu_ms(&self) -> String {
        ms(self.server_cpu_per_call)
    }

    /// `CPU x ms each`, and `(Postern's threads y ms)` when they are known.
    pub fn cpu_split(&self) -> String {
        match self.server_cpu_per_call {
            Some(_) => format!("CPU {} ms each (Postern's threads {} ms)", self.cpu_ms(), self.server_cpu_ms()),
            None => format!("CPU {} ms each", self.cpu_ms()),
        }
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "?".to_owned(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
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
            samples[i].server_cpu = samples[i].server_cpu.zip(s.server_cpu).map(|(a, b)| a + b);
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
    /// Of which Postern's threads'.
    server_cpu: Option<Duration>,
}

impl Default for Sample {
    fn default() -> Self {
        Sample { latencies: Vec::new(), errors: 0, cpu: Some(Duration::ZERO), server_cpu: Some(Duration::ZERO) }
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
        server_cpu_per_call: s.server_cpu.filter(|_| calls > 0).map(|cpu| cpu / calls),
    }
}

/// The CPU time (user and system, all threads) this process has used, on Linux.
pub fn process_cpu() -> Option<Duration> {
    cpu_in(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// The CPU time (user and system) of a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`
/// line.
pub fn cpu_in(stat: &str) -> Option<Duration> {
    // The fields after the command (which may hold spaces) in parentheses; utime and stime
    // are the 14th and 15th fields, in clock ticks (USER_HZ, 100 on every Linux platform).
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let ticks = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The name of the threads of [`server_runtime`] (a thread's name is cut to 15 bytes).
const SERVER_THREADS: &str = "postern-server";
/// The threads sqlx starts for SQLite connections (`sqlx-sqlite-worker-N`, cut to 15 bytes).
const SQLITE_THREADS: &str = "sqlx-sqlite-wor";

/// The runtime the sections start Postern on ([`postern_testkit::Suite::start_on`]): the
/// callers' (the current one), or with `--own-runtime` ([`own_runtime`]) one of its own,
/// whose threads (workers, and blocking threads such as Argon2's, kept alive for the whole
/// run so that none takes its CPU time away when it exits) and SQLite's worker threads are
/// Postern's, the others the load generator's.
pub fn server_runtime() -> tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if !OWN.load(std::sync::atomic::Ordering::Relaxed) {
        return tokio::runtime::Handle::current();
    }
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(crate::num_cpus())
                .thread_name(SERVER_THREADS)
                .thread_keep_alive(Duration::from_secs(24 * 3600))
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("a runtime for Postern: {e}"))
        })
        .handle()
        .clone()
}

/// Whether Postern runs on a runtime of its own (`--own-runtime`).
static OWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs Postern on a runtime of its own from now on when `own`, so that [`server_cpu`] can
/// tell its CPU time.
pub fn own_runtime(own: bool) {
    OWN.store(own, std::sync::atomic::Ordering::Relaxed);
}

/// The CPU time Postern's threads (see [`server_runtime`]) have used, on Linux; `None`
/// unless Postern runs on a runtime of its own. SQLite's worker threads end with their
/// connection: a connection closed during a measurement takes its thread's time with it, so
/// the figure is a lower bound (the pools keep their connections open).
pub fn server_cpu() -> Option<Duration> {
    if !OWN.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else { continue };
        let name = name.trim_end();
        if name == SERVER_THREADS || name == SQLITE_THREADS {
            total += std::fs::read_to_string(path.join("stat")).ok().as_deref().and_then(cpu_in).unwrap_or_default();
        }
    }
    Some(total)
}

async fn run(concurrency: usize, warmup: Duration, duration: Duration, call: Call) -> Sample {
    let start = Instant::now() + warmup;
    let end = start + duration;
    // The process's and Postern's CPU time over the measured window, read when it opens
    // and closes.
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let first = (process_cpu(), server_cpu());
        tokio::time::sleep_until(end.into()).await;
        let diff = |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
        (diff(first.0, process_cpu()), diff(first.1, server_cpu()))
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
    let (cpu, server_cpu) = cpu.await.unwrap_or_default();
    Sample { latencies: all, errors, cpu, server_cpu }
}
