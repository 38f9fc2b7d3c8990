//! A real SMTP server for the passwordless tests: Python's aiosmtpd (`tests/smtp/server.py`),
//! an implementation independent of the lettre client Postern sends with, started once per
//! test binary and shared by its tests (each test writes to its own recipients). It listens
//! in every transport mode an `email` connection uses ([`Listener`]): plain, opportunistic
//! STARTTLS for a credential-less relay, required STARTTLS with authentication, and implicit
//! TLS (SMTPS) with authentication, all with a certificate for 127.0.0.1 issued by a throwaway
//! CA made here ([`SmtpPeer::ca`]). Each message it accepts is reported with whether its
//! session was encrypted and as whom it authenticated, its parts decoded.
//!
//! The server runs as a child whose standard input is a pipe this process never writes: when
//! the test binary ends, however it ends, the pipe closes and the script exits.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::peers::missing;

/// The user name the authenticated listeners take.
pub const USER: &str = "mailer";
/// Its password.
pub const PASSWORD: &str = "smtp-secret";

/// How a listener of the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// No TLS, no authentication.
    Plain,
    /// Offers STARTTLS; takes mail without authentication.
    Opportunistic,
    /// Requires STARTTLS first, then authentication (port 587 style).
    Starttls,
    /// TLS from the first byte, then authentication (SMTPS, port 465 style).
    Implicit,
}

impl Listener {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Opportunistic => "opportunistic",
            Self::Starttls => "starttls",
            Self::Implicit => "implicit",
        }
    }
}

/// A message the server accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The listener that took it (`plain`, `opportunistic`, `starttls`, `implicit`).
    pub listener: String,
    /// Whether the session was encrypted (STARTTLS or implicit TLS).
    pub tls: bool,
    /// The user the session authenticated as, if it did.
    pub login: Option<String>,
    /// The envelope's sender.
    pub from: String,
    /// The envelope's recipients.
    pub to: Vec<String>,
    /// The Subject header, decoded.
    pub subject: String,
    /// The text/plain part, decoded.
    pub text: String,
    /// The text/html part, decoded.
    pub html: String,
}

/// An AUTH the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// The listener.
    pub listener: String,
    /// The user name given.
    pub user: String,
    /// Whether the credentials were right.
    pub ok: bool,
}

#[derive(Default)]
struct Received {
    mails: Vec<Mail>,
    auths: Vec<Auth>,
}

/// The shared server.
pub struct SmtpPeer {
    /// The PEM certificate of the CA that issued the server's certificate (for a
    /// connection's `smtp_ca_certificate`).
    pub ca: String,
    ports: HashMap<String, u16>,
    received: Arc<Mutex<Received>>,
    notify: Arc<tokio::sync::Notify>,
    _child: Mutex<Child>,
    _lifeline: Mutex<ChildStdin>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for SmtpPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpPeer").field("ports", &self.ports).finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Result<SmtpPeer, String>> = OnceLock::new();

fn script() -> PathBuf {
    let starts = [std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from), std::env::current_dir().ok()];
    starts
        .into_iter()
        .flatten()
        .find_map(|start| start.ancestors().map(|a| a.join("tests/smtp/server.py")).find(|f| f.is_file()))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/smtp/server.py")))
}

fn text(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

impl SmtpPeer {
    /// The server of this test binary, started by the first test that asks; `None` after
    /// reporting what is missing for `test` (python3 with aiosmtpd).
    pub fn shared(test: &str) -> Option<&'static SmtpPeer> {
        match SHARED.get_or_init(Self::start) {
            Ok(s) => Some(s),
            Err(why) => {
                missing(test, why);
                None
            }
        }
    }

    fn start() -> Result<SmtpPeer, String> {
        let probe = Command::new("python3").args(["-c", "import aiosmtpd"]).output();
        if !probe.is_ok_and(|o| o.status.success()) {
            return Err("python3 with aiosmtpd is not installed (pip install aiosmtpd)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (ca, cert, key) = crate::slapd::issue()?;
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert).map_err(|e| e.to_string())?;
        std::fs::write(&key_path, key).map_err(|e| e.to_string())?;
        let mut child = Command::new("python3")
            .args(["-W", "ignore"])
            .arg(script())
            .arg(&cert_path)
            .arg(&key_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("python3 could not start the SMTP server: {e}"))?;
        let lifeline = child.stdin.take().ok_or("no pipe to the SMTP server")?;
        let stdout = child.stdout.take().ok_or("the SMTP server has no output")?;
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        lines.read_line(&mut line).map_err(|e| format!("the SMTP server: {e}"))?;
        let ready: Value = serde_json::from_str(&line)
            .map_err(|e| format!("the SMTP server printed {line:?} ({e}), not its ports"))?;
        let ports: HashMap<String, u16> = ready["ports"]
            .as_object()
            .ok_or(format!("the SMTP server printed no ports: {line}"))?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), u16::try_from(v.as_u64()?).ok()?)))
            .collect();
        let received = Arc::new(Mutex::new(Received::default()));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (r, n) = (received.clone(), notify.clone());
        std::thread::spawn(move || {
            for line in lines.lines() {
                let Ok(line) = line else { return };
                let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
                let mut received = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match event["event"].as_str() {
                    Some("mail") => received.mails.push(Mail {
                        listener: text(&event, "listener"),
                        tls: event["tls"].as_bool().unwrap_or(false),
                        login: event["login"].as_str().map(str::to_owned),
                        from: text(&event, "from"),
                        to: event["to"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
                            .unwrap_or_default(),
                        subject: text(&event, "subject"),
                        text: text(&event, "text"),
                        html: text(&event, "html"),
                    }),
                    Some("auth") => received.auths.push(Auth {
                        listener: text(&event, "listener"),
                        user: text(&event, "user"),
                        ok: event["ok"].as_bool().unwrap_or(false),
                    }),
                    _ => continue,
                }
                drop(received);
                n.notify_waiters();
            }
        });
        Ok(SmtpPeer {
            ca,
            ports,
            received,
            notify,
            _child: Mutex::new(child),
            _lifeline: Mutex::new(lifeline),
            _dir: dir,
        })
    }

    /// The port of `listener` on 127.0.0.1.
    pub fn port(&self, listener: Listener) -> u16 {
        self.ports.get(listener.name()).copied().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `seen`-th message (from 0) to `to`, waiting for it up to `wait`; `None` when it
    /// did not come.
    pub async fn mail_to(&self, to: &str, seen: usize, wait: Duration) -> Option<Mail> {
        tokio::time::timeout(wait, async {
            loop {
                let notified = self.notify.notified();
                if let Some(m) = self.lock().mails.iter().filter(|m| m.to.iter().any(|t| t == to)).nth(seen) {
                    return m.clone();
                }
                // The notification, or a look again shortly (a notification is not kept).
                let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
            }
        })
        .await
        .ok()
    }

    /// How many messages went to `to`.
    pub fn count_to(&self, to: &str) -> usize {
        self.lock().mails.iter().filter(|m| m.to.iter().any(|t| t == to)).count()
    }

    /// The AUTHs `listener` answered so far, oldest first.
    pub fn auths(&self, listener: Listener) -> Vec<Auth> {
        self.lock().auths.iter().filter(|a| a.listener == listener.name()).cloned().collect()
    }
}
