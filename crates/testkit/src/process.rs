//! The real binary as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `postern serve …` child process; killed when dropped.
pub struct Process {
    child: Child,
    /// The gRPC address it printed.
    pub grpc: SocketAddr,
    /// The HTTP address it printed, if it serves one.
    pub http: Option<SocketAddr>,
    /// Everything it printed to standard output before it was ready.
    pub stdout: Vec<String>,
}

impl Process {
    /// Runs `binary serve <args>` with `env` and waits until it prints where it listens.
    pub fn start(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.arg("serve").args(args).stdout(Stdio::piped()).stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
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
        // Only `postern serve` and `serve gateway` have an HTTP port; a service alone has none.
        let wants_http = !args.iter().any(|a| ["tenant", "registry", "authn"].contains(a));
        while grpc.is_none() || (wants_http && http.is_none()) {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| anyhow::anyhow!("postern did not report its addresses; it printed: {lines:?}"))?;
            if let Some(a) = line.strip_prefix("postern: gRPC listening on ") {
                grpc = Some(a.parse()?);
            }
            if let Some(a) = line.strip_prefix("postern: HTTP listening on ") {
                http = Some(a.parse()?);
            }
            lines.push(line);
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Ok(Self { child, grpc: grpc.unwrap_or_else(|| unreachable!()), http, stdout: lines })
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
