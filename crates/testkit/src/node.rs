//! The JavaScript peers: scripts of the node workspace in `tests/node` (npm's
//! `openid-client` as an independent relying party, npm's `oidc-provider` as a reference
//! provider), run with Node.js.
//!
//! `.ci/run` installs the workspace (`npm ci` in `tests/node`); by hand:
//! `(cd tests/node && npm ci)`. Node and the installed packages are real peers: when either
//! is missing, [`Node::find`] reports it ([`crate::peers::missing`]) and answers `None`.
//!
//! A script takes its input from its arguments and environment and prints one JSON value
//! on the last line of its standard output; anything else it prints is kept for the error
//! message of a failed run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::peers::missing;

/// The node workspace of the repository (`tests/node`): found from the package directory
/// cargo gives the running test or program (`CARGO_MANIFEST_DIR` at run time), else from
/// the current directory, else where the test kit was built.
pub fn workspace_dir() -> PathBuf {
    let starts = [std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from), std::env::current_dir().ok()];
    starts
        .into_iter()
        .flatten()
        .find_map(|start| start.ancestors().map(|a| a.join("tests/node")).find(|d| d.join("package.json").is_file()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/node"))
}

/// Node.js with the workspace's packages installed.
#[derive(Clone, Debug)]
pub struct Node {
    dir: PathBuf,
}

/// Why a script run failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The script could not be started.
    #[error("node could not start {script}: {source}")]
    Spawn {
        /// The script.
        script: String,
        /// Why.
        source: std::io::Error,
    },
    /// The script did not end within its time limit (it was killed).
    #[error("{script} did not end within {limit:?}; it printed:\n{output}")]
    Timeout {
        /// The script.
        script: String,
        /// The limit.
        limit: Duration,
        /// What it printed.
        output: String,
    },
    /// The script failed, or printed no JSON on its last line.
    #[error("{script} failed ({status}); it printed:\n{output}")]
    Failed {
        /// The script.
        script: String,
        /// Its exit status, or what was wrong with its output.
        status: String,
        /// What it printed.
        output: String,
    },
}

impl Node {
    /// The workspace, or `None` after reporting what is missing for `test`.
    pub fn find(test: &str) -> Option<Self> {
        match Self::locate() {
            Ok(node) => Some(node),
            Err(why) => {
                missing(test, &why);
                None
            }
        }
    }

    /// The workspace, or why it cannot run (for programs that are not tests, such as the
    /// benchmark, which say so in their own words).
    pub fn locate() -> Result<Self, String> {
        let dir = workspace_dir();
        if std::process::Command::new("node").arg("--version").output().is_err() {
            return Err("node is not installed".into());
        }
        for package in ["openid-client", "oidc-provider", "@auth0/auth0-spa-js"] {
            if !dir.join("node_modules").join(package).join("package.json").exists() {
                return Err(format!(
                    "the npm package {package} is not installed in {} (run `npm ci` there)",
                    dir.display()
                ));
            }
        }
        Ok(Self { dir })
    }

    /// The workspace's directory (`tests/node`), whose `node_modules` hold the packages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `node <script> <args>` in the workspace with `env` added, and answers the JSON
    /// value on the last line of its output. Killed and failed after `limit`.
    pub async fn run(
        &self,
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
        limit: Duration,
    ) -> Result<serde_json::Value, NodeError> {
        let mut cmd = self.command(script, args, env);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| NodeError::Spawn { script: script.into(), source })?;
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => return Err(NodeError::Spawn { script: script.into(), source }),
            // Dropping the future drops the child, which `kill_on_drop` kills.
            Err(_) => {
                return Err(NodeError::Timeout { script: script.into(), limit, output: String::new() });
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let output = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(NodeError::Failed { script: script.into(), status: out.status.to_string(), output });
        }
        let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
        serde_json::from_str(last).map_err(|e| NodeError::Failed {
            script: script.into(),
            status: format!("no JSON on its last line: {e}"),
            output,
        })
    }

    /// Starts `node <script> <args>` as a server and waits (up to `limit`) for the first
    /// line of its output, a JSON value saying where it listens. The server stops when the
    /// answer is dropped.
    pub async fn serve(
        &self,
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
        limit: Duration,
    ) -> Result<(NodeServer, serde_json::Value), NodeError> {
        let mut cmd = self.command(script, args, env);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| NodeError::Spawn { script: script.into(), source })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(NodeError::Failed { script: script.into(), status: "no output".into(), output: String::new() });
        };
        // What the server says on standard error (warnings, a failure) is kept for the error
        // of a failed start, and otherwise dropped.
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let keep = said.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut said = keep.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if said.len() < 64 * 1024 {
                    said.push_str(&line);
                    said.push('\n');
                }
            }
        });
        let output = || said.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut lines = BufReader::new(stdout).lines();
        let first = match tokio::time::timeout(limit, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                let status = child.wait().await.map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(NodeError::Failed { script: script.into(), status, output: output() });
            }
            Err(_) => return Err(NodeError::Timeout { script: script.into(), limit, output: output() }),
        };
        let ready = serde_json::from_str(&first).map_err(|e| NodeError::Failed {
            script: script.into(),
            status: format!("its first line is not JSON: {e}"),
            output: first.clone(),
        })?;
        // Keep reading, so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((NodeServer { _child: child }, ready))
    }

    fn command(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("node");
        cmd.current_dir(&self.dir).arg(script).args(args).stdin(Stdio::null()).kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// A node server started by [`Node::serve`]; killed when dropped.
pub struct NodeServer {
    _child: tokio::process::Child,
}
