//! npm's `oidc-provider` as the upstream of federated logins (`tests/node/upstream.mjs`):
//! started once per test binary and shared by its tests, each registering its own client
//! (with its own Postern's callback) and, where it tests a broken answer, the defect its
//! client's ID tokens get.
//!
//! The provider runs as a child whose standard input is a pipe this process never writes:
//! when the test binary ends, however it ends, the pipe closes and the script exits, so no
//! provider outlives its tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::node::workspace_dir;
use crate::peers::missing;
use crate::web::Agent;

/// The shared upstream provider.
#[derive(Debug)]
pub struct Upstream {
    /// Its issuer, `http://127.0.0.1:<port>`.
    pub issuer: String,
    child: Mutex<Child>,
}

static SHARED: OnceLock<Result<Upstream, String>> = OnceLock::new();

impl Upstream {
    /// The provider of this test binary, started by the first test that asks; `None` after
    /// reporting what is missing for `test` (node, or the workspace's packages).
    pub fn shared(test: &str) -> Option<&'static Upstream> {
        match SHARED.get_or_init(Self::start) {
            Ok(u) => Some(u),
            Err(why) => {
                missing(test, why);
                None
            }
        }
    }

    fn start() -> Result<Upstream, String> {
        crate::node::Node::locate()?;
        let dir = workspace_dir();
        let mut child = Command::new("node")
            .current_dir(&dir)
            .arg("upstream.mjs")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("node could not start upstream.mjs: {e}"))?;
        let stdout = child.stdout.take().ok_or("upstream.mjs has no output")?;
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        stdout.read_line(&mut line).map_err(|e| format!("upstream.mjs: {e}"))?;
        // The rest of its output is drained: the provider prints notices (its default
        // logout page does), and a closed pipe would kill it (EPIPE).
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let ready: Value =
            serde_json::from_str(&line).map_err(|e| format!("upstream.mjs printed {line:?} ({e}), not its issuer"))?;
        let issuer = ready["issuer"].as_str().ok_or("upstream.mjs printed no issuer")?.to_owned();
        Ok(Upstream { issuer, child: Mutex::new(child) })
    }

    /// The provider's process id (a benchmark reads its CPU time in `/proc/<pid>/stat`).
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner).id()
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.issuer);
        let answer = Agent::new()
            .send("POST", &url, &[("content-type", "application/json")], Some(&body.to_string()))
            .await
            .with_context(|| format!("POST {url}"))?;
        anyhow::ensure!((200..300).contains(&answer.status), "POST {url}: {} {}", answer.status, answer.body);
        Ok(serde_json::from_str(&answer.body)?)
    }

    /// Registers a client (dynamic registration): the provider's answer.
    async fn register(&self, client: Value) -> anyhow::Result<Value> {
        self.post("/reg", &client).await
    }

    fn client_id(registered: &Value) -> anyhow::Result<String> {
        Ok(registered["client_id"].as_str().context("no client_id")?.to_owned())
    }

    /// Registers a client whose callback is `redirect_uri` (a Postern's
    /// `/<tenant>/login/callback`): its id and secret. `auth_method` is the token
    /// endpoint's client authentication (`client_secret_basic`, `client_secret_post`).
    pub async fn register_client(&self, redirect_uri: &str, auth_method: &str) -> anyhow::Result<(String, String)> {
        let c = self
            .register(json!({
                "redirect_uris": [redirect_uri],
                "response_types": ["code"],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": auth_method,
            }))
            .await?;
        let secret = c["client_secret"].as_str().context("no client_secret")?.to_owned();
        Ok((Self::client_id(&c)?, secret))
    }

    /// Registers a client as [`Upstream::register_client`] does (`client_secret_basic`), that
    /// may also send the browser back to `post_logout_redirect_uri` after a logout (OpenID
    /// RP-Initiated Logout): its id and secret.
    pub async fn register_logout_client(
        &self,
        redirect_uri: &str,
        post_logout_redirect_uri: &str,
    ) -> anyhow::Result<(String, String)> {
        let c = self
            .register(json!({
                "redirect_uris": [redirect_uri],
                "post_logout_redirect_uris": [post_logout_redirect_uri],
                "response_types": ["code"],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "client_secret_basic",
            }))
            .await?;
        let secret = c["client_secret"].as_str().context("no client_secret")?.to_owned();
        Ok((Self::client_id(&c)?, secret))
    }

    /// Logs out at the provider from `end_session_url` (its `end_session_endpoint`, where
    /// Postern sent the browser), with `agent`'s cookies: the user confirms on the provider's
    /// page. Answers where the provider then sends the browser.
    pub async fn log_out(&self, agent: &mut Agent, end_session_url: &str) -> anyhow::Result<String> {
        let mut url = end_session_url.to_owned();
        let mut answer = agent.get(&url).await?;
        for _ in 0..8 {
            if let Some(next) = answer.location() {
                let next = url::Url::parse(&url)?.join(next)?.to_string();
                if !next.starts_with(&self.issuer) {
                    return Ok(next);
                }
                url = next;
                answer = agent.get(&url).await?;
                continue;
            }
            anyhow::ensure!(answer.status == 200, "{url}: {} {}", answer.status, answer.body);
            // The confirmation page: its form (whose button, outside it, says `logout=yes`).
            let mut form = answer
                .forms()
                .into_iter()
                .find(|f| f.has("xsrf"))
                .with_context(|| format!("no logout form at {url}: {}", answer.body))?;
            form.set("logout", "yes");
            answer = agent.submit(&url, &form).await?;
        }
        anyhow::bail!("the provider never sent the browser back after logout")
    }

    /// Registers a client that authenticates at the token endpoint with `private_key_jwt`
    /// (its key set holds `jwk`, a public JWK), whose callback is `redirect_uri`: its id.
    pub async fn register_key_client(&self, redirect_uri: &str, jwk: Value) -> anyhow::Result<String> {
        let c = self
            .register(json!({
                "redirect_uris": [redirect_uri],
                "response_types": ["code"],
                "grant_types": ["authorization_code"],
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [jwk]},
            }))
            .await?;
        Self::client_id(&c)
    }

    /// Registers a client of the implicit flow (an OpenID Connect front channel: the ID token
    /// alone, `response_type=id_token`, no secret) whose callback is `redirect_uri`: its id.
    /// oidc-provider takes an `http` loopback callback for such a client only as a native
    /// application's.
    pub async fn register_implicit_client(&self, redirect_uri: &str) -> anyhow::Result<String> {
        let c = self
            .register(json!({
                "application_type": "native",
                "redirect_uris": [redirect_uri],
                "response_types": ["id_token"],
                "grant_types": ["implicit"],
                "token_endpoint_auth_method": "none",
            }))
            .await?;
        Self::client_id(&c)
    }

    /// Gives `client_id`'s ID tokens a defect (`wrong_aud`, `wrong_iss`, `wrong_nonce`,
    /// `expired`, `alg_none`, `other_key`, `rotated`) or, with `claims`, extra claims.
    pub async fn set_mode(&self, client_id: &str, mode: &str, claims: Value) -> anyhow::Result<()> {
        self.post("/__test/mode", &json!({"client_id": client_id, "mode": mode, "claims": claims})).await.map(drop)
    }

    /// Sets the claims of account `id` (on top of its defaults).
    pub async fn set_account(&self, id: &str, claims: Value) -> anyhow::Result<()> {
        self.post("/__test/account", &json!({"id": id, "claims": claims})).await.map(drop)
    }

    /// Publishes a second signing key at `/__test/jwks`, with which the `rotated` clients'
    /// tokens are signed from now on.
    pub async fn rotate(&self) -> anyhow::Result<()> {
        self.post("/__test/rotate", &json!({})).await.map(drop)
    }

    /// How many times `/__test/jwks` was fetched, and the token endpoint called; how long the
    /// provider spent serving requests (`busy_ms`) and token requests (`token_ms`), measured
    /// by the provider from each request's arrival to its answer.
    pub async fn stats(&self) -> anyhow::Result<Value> {
        let answer = Agent::new().get(&format!("{}/__test/stats", self.issuer)).await?;
        Ok(serde_json::from_str(&answer.body)?)
    }

    /// Logs `login` in at the provider's login page, starting from `authorization_url` (where
    /// Postern sent the browser), with `agent`'s cookies, granting consent where the provider
    /// asks it: answers how the provider sends the browser back (to Postern's callback with
    /// the code, or the error). With `cancel`, the user aborts on the login page instead.
    pub async fn log_in(
        &self,
        agent: &mut Agent,
        authorization_url: &str,
        login: &str,
        cancel: bool,
    ) -> anyhow::Result<Back> {
        let mut url = authorization_url.to_owned();
        let mut answer = agent.get(&url).await?;
        for _ in 0..8 {
            if let Some(next) = answer.location() {
                let next = url::Url::parse(&url)?.join(next)?.to_string();
                if !next.starts_with(&self.issuer) {
                    return Ok(Back::Redirect(next));
                }
                url = next;
                answer = agent.get(&url).await?;
                continue;
            }
            anyhow::ensure!(answer.status == 200, "{url}: {} {}", answer.status, answer.body);
            let forms = answer.forms();
            // `response_mode=form_post`: a page whose form posts the answer back.
            if let Some(form) = forms
                .iter()
                .find(|f| !f.action.is_empty() && !f.action.starts_with('/') && !f.action.starts_with(&self.issuer))
            {
                return Ok(Back::FormPost { action: form.action.clone(), fields: form.fields() });
            }
            answer = if cancel {
                agent.get(&format!("{}/abort", url.trim_end_matches('/'))).await?
            } else if let Some(consent) = forms.iter().find(|f| f.value("prompt") == Some("consent")) {
                // The consent page (the provider asks it of native clients each time): the
                // user grants it.
                agent.submit(&url, consent).await?
            } else {
                let mut form = forms
                    .into_iter()
                    .find(|f| f.has("login"))
                    .with_context(|| format!("no login form at {url}: {}", answer.body))?;
                form.set("login", login).set("password", "any password");
                agent.submit(&url, &form).await?
            };
        }
        anyhow::bail!("the provider never sent the browser back")
    }
}

/// How the upstream sends the browser back to Postern.
#[derive(Debug, Clone)]
pub enum Back {
    /// A redirect to this URL.
    Redirect(String),
    /// A page whose form posts `fields` to `action`.
    FormPost {
        /// The form's action.
        action: String,
        /// Its fields.
        fields: Vec<(String, String)>,
    },
}

impl Back {
    /// Where it goes.
    pub fn url(&self) -> &str {
        match self {
            Back::Redirect(u) => u,
            Back::FormPost { action, .. } => action,
        }
    }

    /// Goes back as a browser would, with `agent`'s cookies.
    pub async fn follow(&self, agent: &mut Agent) -> anyhow::Result<crate::web::Answer> {
        match self {
            Back::Redirect(u) => agent.get(u).await,
            Back::FormPost { action, fields } => agent.post_form(action, fields).await,
        }
    }
}
