//! The real binary as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A `postern serve …` child process; killed when dropped.
pub struct Process {
    child: Child,
    /// The gRPC address it printed.
    pub grpc: SocketAddr,
    /// The HTTP address it printed, if it serves one.
    pub http: Option<SocketAddr>,
    /// The management address it printed (metrics and health).
    pub management: SocketAddr,
    /// Everything it printed to standard output before it was ready.
    pub stdout: Vec<String>,
}

impl Process {
    /// Runs `binary serve <args>` with `env` and waits until it prints where it listens.
    pub fn start(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.arg("serve").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Only `postern serve` and `serve gateway` have an HTTP port; a service alone has none.
        let wants_http = !args.iter().any(|a| ["tenant", "registry", "authn"].contains(a));
        Self::spawn(cmd, wants_http)
    }

    /// Runs `cmd`, which must end up running `postern serve …` (through a shell that sets a
    /// umask or a resource limit first, say, and `exec`s it), and waits until it prints
    /// where it listens (the HTTP address too when `wants_http`). Unless `cmd` sets
    /// POSTERN_MANAGEMENT_LISTEN, the management port is a free one (the default, 9000, is
    /// one port for every test).
    pub fn spawn(mut cmd: Command, wants_http: bool) -> anyhow::Result<Self> {
        if !cmd.get_envs().any(|(k, v)| k == "POSTERN_MANAGEMENT_LISTEN" && v.is_some()) {
            cmd.env("POSTERN_MANAGEMENT_LISTEN", "127.0.0.1:0");
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let mut grpc = None;
        let mut http = None;
        let mut management = None;
        while grpc.is_none() || (wants_http && http.is_none()) || management.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| anyhow::anyhow!("postern did not report its addresses; it printed: {lines:?}"))?;
            if let Some(a) = line.strip_prefix("postern: gRPC listening on ") {
                grpc = Some(a.parse()?);
            }
            if let Some(a) = line.strip_prefix("postern: HTTP listening on ") {
                http = Some(a.parse()?);
            }
            if let Some(a) = line.strip_prefix("postern: management listening on ") {
                management = Some(a.parse()?);
            }
            lines.push(line);
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let (grpc, management) = match (grpc, management) {
            (Some(g), Some(m)) => (g, m),
            _ => unreachable!("the loop ends once both are known"),
        };
        Ok(Self { child, grpc, http, management, stdout: lines })
    }

    /// The process id (to read its `/proc/<pid>/status`, say).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for a clean exit; returns whether it exited successfully.
    pub fn terminate(mut self) -> anyhow::Result<bool> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("postern did not stop within 10 s of SIGTERM")
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn crash(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to the end like [`Command::output`], but kills it and fails if it has not
/// ended within `limit`: a command that should stop at once (a refused start, a script)
/// makes its test fail, not hang, when it keeps running.
pub fn output_within(cmd: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
            anyhow::bail!(
                "{cmd:?} was still running after {limit:?} and was killed; it printed:\n{}\n{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().map_err(|_| anyhow::anyhow!("reading standard output failed"))?;
    let stderr = stderr.join().map_err(|_| anyhow::anyhow!("reading standard error failed"))?;
    Ok(Output { status, stdout, stderr })
}
