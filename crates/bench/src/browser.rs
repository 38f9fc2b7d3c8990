//! The load generator's browser: a visit with a cookie jar of its own on the load
//! generator's keep-alive connections, for the sections that log users in through pages.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use postern_testkit::web::{Agent, Answer};

use crate::oauth::Http;

/// A browser's visit: a cookie jar of its own (the test kit's [`Agent`]'s), its requests on
/// the load generator's keep-alive connections. Browsers keep their connections alive, and a
/// Postern deployed behind an ingress or load balancer sees that proxy's pooled connections,
/// not one per request.
pub(crate) struct Visit<'a> {
    client: &'a Http,
    /// The visit's cookies; also the agent for requests that leave the keep-alive pool.
    pub(crate) jar: Agent,
}

impl<'a> Visit<'a> {
    /// A new browser (no cookies) on `client`'s connections.
    pub(crate) fn new(client: &'a Http) -> Self {
        Self { client, jar: Agent::new() }
    }

    /// Sends `method url` with the visit's cookies (and `form`, url-encoded, for a POST),
    /// keeping the cookies the answer sets.
    pub(crate) async fn send(
        &mut self,
        method: http::Method,
        url: &url::Url,
        form: Option<String>,
    ) -> anyhow::Result<Answer> {
        let host = url.host_str().ok_or_else(|| anyhow::anyhow!("no host in {url}"))?;
        let authority = format!("{host}:{}", url.port_or_known_default().unwrap_or(80));
        let mut req = http::Request::builder().method(method).uri(url.as_str());
        if let Some(cookie) = self.jar.cookie_header(&authority) {
            req = req.header(http::header::COOKIE, cookie);
        }
        if form.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let resp = self.client.request(req.body(Full::new(Bytes::from(form.unwrap_or_default())))?).await?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
        let answer = Answer { status, headers, body };
        for set in answer.headers("set-cookie") {
            self.jar.keep(&authority, set);
        }
        Ok(answer)
    }
}

/// `pairs` url-encoded as a form body.
pub(crate) fn encode_form<I, K, V>(pairs: I) -> String
where
    I: IntoIterator,
    I::Item: std::borrow::Borrow<(K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}
