//! A real SAML 2.0 identity provider for the `samlp` tests: pysaml2 (`tests/saml/idp.py`,
//! which signs through Debian's `xmlsec1`) on a free loopback port, started once per test
//! binary and shared by its tests. Each test registers its service provider by the SP
//! metadata Postern publishes (`/<tenant>/samlp/metadata?connection=`), with a mode saying
//! how its responses are made (signed or not, by which key, for which audience, wrapped…).
//!
//! The IdP runs as a child whose standard input is a pipe this process never writes: when
//! the test binary ends, however it ends, the pipe closes and the script exits.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::peers::missing;
use crate::web::Agent;

/// The shared IdP.
#[derive(Debug)]
pub struct SamlIdp {
    /// Its base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its entity id (`<url>/metadata`).
    pub entity_id: String,
    /// Its signing certificate (PEM).
    pub certificate: String,
    /// A certificate of another key (PEM), which signed nothing of this IdP.
    pub other_certificate: String,
    _child: Mutex<Child>,
    _lifeline: Mutex<ChildStdin>,
}

static SHARED: OnceLock<Result<SamlIdp, String>> = OnceLock::new();

fn script() -> PathBuf {
    let starts = [std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from), std::env::current_dir().ok()];
    starts
        .into_iter()
        .flatten()
        .find_map(|start| start.ancestors().map(|a| a.join("tests/saml/idp.py")).find(|f| f.is_file()))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/saml/idp.py")))
}

impl SamlIdp {
    /// The IdP of this test binary, started by the first test that asks; `None` after
    /// reporting what is missing for `test` (python3 with pysaml2, or xmlsec1).
    pub fn shared(test: &str) -> Option<&'static SamlIdp> {
        match SHARED.get_or_init(Self::start) {
            Ok(i) => Some(i),
            Err(why) => {
                missing(test, why);
                None
            }
        }
    }

    fn start() -> Result<SamlIdp, String> {
        if Command::new("xmlsec1").arg("--version").output().is_err() {
            return Err("xmlsec1 is not installed (apt-get install xmlsec1)".into());
        }
        let probe = Command::new("python3").args(["-c", "import saml2"]).output();
        if !probe.is_ok_and(|o| o.status.success()) {
            return Err("python3 with pysaml2 is not installed (pip install pysaml2)".into());
        }
        let mut child = Command::new("python3")
            .args(["-W", "ignore"])
            .arg(script())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("python3 could not start the SAML IdP: {e}"))?;
        let lifeline = child.stdin.take().ok_or("no pipe to the SAML IdP")?;
        let stdout = child.stdout.take().ok_or("the SAML IdP has no output")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map_err(|e| format!("the SAML IdP: {e}"))?;
        let ready: Value =
            serde_json::from_str(&line).map_err(|e| format!("the SAML IdP printed {line:?} ({e}), not its URL"))?;
        let text = |k: &str| ready[k].as_str().map(str::to_owned).ok_or(format!("the SAML IdP printed no {k}"));
        Ok(SamlIdp {
            url: text("url")?,
            entity_id: text("entity_id")?,
            certificate: text("certificate")?,
            other_certificate: text("other_certificate")?,
            _child: Mutex::new(child),
            _lifeline: Mutex::new(lifeline),
        })
    }

    /// Its single sign-on URL (HTTP-Redirect binding).
    pub fn sso_url(&self) -> String {
        format!("{}/sso/redirect", self.url)
    }

    /// Its single logout URL (HTTP-Redirect binding).
    pub fn slo_url(&self) -> String {
        format!("{}/slo/redirect", self.url)
    }

    /// The `LogoutRequest`s it has received, oldest first: `{"sp", "name_id",
    /// "name_id_format", "session_index": [...], "signed", "destination"}` each.
    pub async fn logouts(&self) -> anyhow::Result<Vec<Value>> {
        let url = format!("{}/control/logouts", self.url);
        let answer = Agent::new().get(&url).await.with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(answer.status == 200, "GET {url}: {} {}", answer.status, answer.body);
        Ok(serde_json::from_str(&answer.body)?)
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url);
        let answer = Agent::new()
            .send("POST", &url, &[("content-type", "application/json")], Some(&body.to_string()))
            .await
            .with_context(|| format!("POST {url}"))?;
        anyhow::ensure!((200..300).contains(&answer.status), "POST {url}: {} {}", answer.status, answer.body);
        Ok(serde_json::from_str(&answer.body)?)
    }

    /// Registers the SP of `metadata` (Postern's SP metadata document) and how its
    /// responses are made (`mode`, see `tests/saml/idp.py`): its entity id.
    pub async fn register_sp(&self, metadata: &str, mode: Value) -> anyhow::Result<String> {
        let v = self.post("/control/sp", &json!({"metadata": metadata, "mode": mode})).await?;
        Ok(v["entity_id"].as_str().unwrap_or_default().to_owned())
    }

    /// The URL of its metadata as published under `name` ([`SamlIdp::publish`]).
    pub fn metadata_url(&self, name: &str) -> String {
        format!("{}/metadata/{name}", self.url)
    }

    /// What [`SamlIdp::metadata_url`] of `name` publishes from now on: the certificate of
    /// `key` (`idp` or `other`) as the IdP's signing certificate, with `cache_control` as its
    /// `Cache-Control` header. A login's response is signed with the key of the SP's mode.
    pub async fn publish(&self, name: &str, key: &str, cache_control: Option<&str>) -> anyhow::Result<()> {
        self.post("/control/metadata", &json!({"name": name, "key": key, "cache_control": cache_control})).await?;
        Ok(())
    }

    /// An unsolicited base64 `SAMLResponse` (an IdP-initiated login: no `InResponseTo`) for
    /// the registered SP `sp`, posted to `acs`, made with the SP's mode updated by `mode`.
    pub async fn unsolicited(&self, sp: &str, acs: &str, mode: Value) -> anyhow::Result<String> {
        let v = self.post("/control/mint", &json!({"sp": sp, "acs": acs, "mode": mode})).await?;
        v["response"].as_str().map(str::to_owned).context("no response minted")
    }

    /// A base64 `SAMLResponse` for the registered SP `sp`, answering `in_response_to`,
    /// made with the SP's mode updated by `mode`.
    pub async fn mint(&self, sp: &str, in_response_to: &str, mode: Value) -> anyhow::Result<String> {
        let v = self.post("/control/mint", &json!({"sp": sp, "in_response_to": in_response_to, "mode": mode})).await?;
        v["response"].as_str().map(str::to_owned).context("no response minted")
    }
}
