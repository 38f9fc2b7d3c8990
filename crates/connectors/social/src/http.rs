//! The calls to a provider: one HTTP client per connector (redirects off, bounded time and
//! answer size), and what each kind of failure means to the login.

use std::time::Duration;

use postern_connector::egress::SendError;
use serde_json::Value;

/// How long a call to a provider may take, connection included, unless the connector is
/// built with another limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read from a provider: profiles and token answers are a few KiB.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why a step of a login failed, before it becomes the connector's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The provider failed, timed out or could not be reached: retry later.
    Unavailable(String),
    /// The provider refused (an `error` at the callback, a refused code, a refused token):
    /// the application is told `access_denied`.
    Denied(String),
    /// The provider's answer is not what the protocol says (no user id, no token): nothing
    /// is stored.
    Rejected(&'static str, String),
    /// The server's egress policy refuses the endpoint's address: the connection (or the
    /// policy) must change.
    Refused(String),
    /// A failure of this process.
    Internal(String),
}

/// A provider's answer, read whole (at most [`MAX_ANSWER_BYTES`]).
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `content-type`, lowercase, without parameters.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The client every call of one connector shares
/// ([`Egress::http_client`](postern_connector::Egress::http_client): no redirect followed,
/// names resolved under the egress policy, address literals checked by [`send`]).
pub use postern_connector::egress::HttpClient as Http;

/// What a call is, for messages and logs: the connection and the endpoint's role.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The connection's name.
    pub connection: &'a str,
    /// The provider's name (`GitHub`).
    pub provider: &'a str,
    /// The endpoint's role (`token endpoint`).
    pub endpoint: &'a str,
}

impl Call<'_> {
    /// `connection "x": GitHub's token endpoint`.
    pub fn describe(&self) -> String {
        format!("connection {:?}: {}'s {}", self.connection, self.provider, self.endpoint)
    }
}

/// Sends `request` (built with `http`) and reads the answer, whatever its status; a
/// transport failure or a timeout is [`Failure::Unavailable`], logged without the URL's
/// query; an address the egress policy refuses is [`Failure::Refused`], and nothing is sent.
pub async fn send(
    http: &Http,
    call: Call<'_>,
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<Answer, Failure> {
    let unavailable = |why: String| {
        tracing::warn!(connection = call.connection, endpoint = call.endpoint, error = %why, "provider call failed");
        Failure::Unavailable(format!("{} {why}; retry shortly", call.describe()))
    };
    let mut response = http.send(request).await.map_err(|e| match e {
        SendError::Refused(r) => {
            tracing::warn!(connection = call.connection, endpoint = call.endpoint, error = %r, "provider call refused");
            Failure::Refused(format!("{} cannot be called: {r}", call.describe()))
        }
        SendError::Transport(e) => unavailable(transport(&e, timeout)),
    })?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(Failure::Rejected(
                        "UPSTREAM_ANSWER_TOO_LARGE",
                        format!("{} answered more than {} KiB", call.describe(), MAX_ANSWER_BYTES / 1024),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(unavailable(transport(&e, timeout))),
        }
    }
    if status >= 500 || status == 429 {
        tracing::warn!(connection = call.connection, endpoint = call.endpoint, status, "provider answered an outage");
        return Err(Failure::Unavailable(format!("{} answered HTTP {status}; retry shortly", call.describe())));
    }
    Ok(Answer { status, content_type, body })
}

/// A transport failure in words with its causes (`could not be reached (client error
/// (Connect): invalid peer certificate: UnknownIssuer)`), without the URL, whose query may
/// carry a code: reqwest's own message names only the URL.
fn transport(e: &reqwest::Error, timeout: Duration) -> String {
    let causes = std::error::Error::source(e).map(postern_common::error::with_causes).unwrap_or_default();
    let why = if causes.is_empty() { String::new() } else { format!(" ({})", echo(&causes)) };
    if e.is_timeout() {
        format!("did not answer within {} ms", timeout.as_millis())
    } else if e.is_connect() {
        format!("could not be reached{why}")
    } else {
        format!("failed while answering{why}")
    }
}

/// The OAuth 2.0 error of an answer (RFC 6749 §5.2, or the Graph API's `error` object):
/// `(error, description)`.
pub fn oauth_error(body: &Value) -> Option<(String, String)> {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    match body.get("error")? {
        Value::String(code) => Some((code.clone(), text(body.get("error_description")))),
        // The Graph API: {"error": {"message", "type", "code", "fbtrace_id"}}.
        Value::Object(e) => {
            let kind = text(e.get("type"));
            let code = text(e.get("code"));
            let name = match (kind.is_empty(), code.is_empty()) {
                (false, false) => format!("{kind} {code}"),
                (false, true) => kind,
                (true, _) => code,
            };
            Some((name, text(e.get("message"))))
        }
        _ => None,
    }
}

/// Upstream text echoed in a message: at most 200 characters, no control characters.
pub fn echo(s: &str) -> String {
    postern_common::validate::truncate(s, 200).chars().filter(|c| !c.is_control()).collect()
}
