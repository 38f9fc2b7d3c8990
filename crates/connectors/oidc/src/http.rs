//! The upstream's HTTP: one reqwest client (redirects off, timeouts, bounded bodies) used
//! directly for discovery, keys and userinfo, and handed to `openidconnect` as its async
//! HTTP client (a closure) for the code exchange.

use std::time::Duration;

use postern_connector::ConnectorError;
use postern_connector::egress::{Egress, HttpClient, Refused, SendError};

/// The largest body read from an upstream (discovery, keys, tokens, userinfo).
const MAX_BODY: usize = 1 << 20;

/// How long an upstream may take to answer one request.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// Why an upstream HTTP request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// No answer: connection refused, timeout, TLS.
    #[error("{}", transport(.0))]
    Transport(#[source] reqwest::Error),
    /// The answer was larger than [`MAX_BODY`].
    #[error("the answer is larger than {MAX_BODY} bytes")]
    TooLarge,
    /// The answer could not be rebuilt as an `http` response.
    #[error("{0}")]
    Http(#[source] http::Error),
    /// The server's egress policy refuses the endpoint's address.
    #[error("{0}")]
    Refused(#[source] Refused),
}

impl From<SendError> for HttpError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Refused(r) => Self::Refused(r),
            SendError::Transport(e) => Self::Transport(e),
        }
    }
}

/// A transport failure in words: its causes (`client error (Connect): tcp connect error:
/// Connection refused`, `… invalid peer certificate: Expired`), which reqwest's own message
/// (the URL alone) leaves out.
pub(crate) fn transport(e: &reqwest::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => postern_common::error::with_causes(cause),
        None if e.is_timeout() => "no answer in time".to_owned(),
        None => "the request failed".to_owned(),
    }
}

/// The client every upstream call goes through, under the egress policy.
pub(crate) type Http = HttpClient;

/// The client every upstream call goes through ([`Egress::http_client`]): no redirects (an
/// upstream endpoint that redirects is misconfigured, and following it would send secrets
/// elsewhere), [`TIMEOUT`] per call, names resolved under `egress`.
pub(crate) fn client(egress: &Egress) -> Http {
    egress.http_client(TIMEOUT)
}

/// Reads a body, refusing one larger than [`MAX_BODY`].
pub(crate) async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(HttpError::Transport)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Sends an `openidconnect` request with `client`: the async HTTP client of the crate.
pub(crate) async fn execute(
    http: Http,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let request = http.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body);
    let response = http.send(request).await?;
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let body = read_body(response).await?;
    builder.body(body).map_err(HttpError::Http)
}

/// A JSON document fetched with `GET`, and how long it may be cached (its
/// `Cache-Control: max-age`, capped; `no-store`/`no-cache` mean not at all; an hour when
/// the upstream says nothing).
pub(crate) struct Fetched {
    /// The document.
    pub(crate) json: serde_json::Value,
    /// How long it may be kept.
    pub(crate) max_age: Duration,
}

/// The longest an upstream document is kept, whatever it says.
const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);
/// How long an upstream document is kept when it says nothing.
const DEFAULT_CACHE: Duration = Duration::from_secs(3600);

/// The lifetime a `Cache-Control` header gives.
pub(crate) fn cache_lifetime(cache_control: Option<&str>) -> Duration {
    postern_connector::egress::max_age(cache_control).unwrap_or(DEFAULT_CACHE).min(MAX_CACHE)
}

/// Fetches the JSON document at `url` for the connection `connection` (named in errors).
pub(crate) async fn get_json(
    http: &Http,
    connection: &str,
    what: &str,
    url: &str,
    bearer: Option<&str>,
) -> Result<Fetched, ConnectorError> {
    let unavailable = |detail: String| {
        tracing::warn!(connection, url, detail = %detail, "upstream {what} unavailable");
        ConnectorError::Unavailable {
            reason: "UPSTREAM_UNAVAILABLE",
            message: format!("connection {connection:?}: the upstream's {what} could not be read ({detail})"),
        }
    };
    let refused = |refused: &Refused| {
        tracing::warn!(connection, url, detail = %refused, "upstream {what} refused by the egress policy");
        refused.connector_error(format_args!("connection {connection:?}: the upstream's {what} cannot be read"))
    };
    let mut request = http.get(url).header(http::header::ACCEPT, "application/json");
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = http.send(request).await.map_err(|e| match e {
        SendError::Refused(r) => refused(&r),
        SendError::Transport(e) => unavailable(transport(&e)),
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(unavailable(format!("HTTP {}", status.as_u16())));
    }
    let cache_control = response.headers().get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok());
    let max_age = cache_lifetime(cache_control);
    let body = read_body(response).await.map_err(|e| unavailable(e.to_string()))?;
    let json = serde_json::from_slice(&body).map_err(|e| unavailable(format!("not JSON: {e}")))?;
    Ok(Fetched { json, max_age })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_lifetimes() {
        assert_eq!(cache_lifetime(None), DEFAULT_CACHE);
        assert_eq!(cache_lifetime(Some("public, max-age=300")), Duration::from_secs(300));
        assert_eq!(cache_lifetime(Some("max-age=0")), Duration::ZERO);
        assert_eq!(cache_lifetime(Some("no-store")), Duration::ZERO);
        assert_eq!(cache_lifetime(Some("private, no-cache, max-age=60")), Duration::ZERO);
        assert_eq!(cache_lifetime(Some("max-age=99999999")), MAX_CACHE);
        assert_eq!(cache_lifetime(Some("public")), DEFAULT_CACHE);
    }
}
