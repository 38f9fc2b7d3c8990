//! SMS through an HTTP API: Twilio's Messages API shape (`POST
//! <provider_url>/Accounts/<account>/Messages.json`, HTTP Basic authentication with the
//! account and token, the form fields `To`, `From`, `Body`), or a webhook of the customer's
//! own gateway (`POST <provider_url>` with a JSON body, signed with HMAC-SHA256 under the
//! token in the header [`SIGNATURE_HEADER`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use postern_connection::secret::names;
use postern_connection::{Options, Resolved, SmsOptions, SmsProvider};
use postern_connector::{Channel, CodeConnector, CodeMessage, CodeSettings, ConnectorError, async_trait};
use sha2::Sha256;

use crate::template::{self, Vars};
use crate::{delivery_failed, misconfigured, wrong_family};

/// The header carrying a webhook's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>" under the connection's token>`.
pub const SIGNATURE_HEADER: &str = "x-postern-signature";

/// How long a provider may take to answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The connector of `sms` connections.
#[derive(Debug, Clone)]
pub struct SmsConnector {
    http: reqwest::Client,
}

impl Default for SmsConnector {
    fn default() -> Self {
        Self::new()
    }
}

impl SmsConnector {
    /// A connector with its own HTTP client (no redirects followed: a provider that
    /// redirects is misconfigured, and the token must not follow it).
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot build the SMS HTTP client; using the default one");
                reqwest::Client::new()
            });
        Self { http }
    }
}

fn options(conn: &Resolved) -> Result<&SmsOptions, ConnectorError> {
    match &conn.connection.spec.options {
        Options::Sms(o) => Ok(o),
        _ => Err(wrong_family(conn)),
    }
}

/// The signature header's value for `body` sent at `timestamp` (unix seconds) under `key`.
pub fn signature(key: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait]
impl CodeConnector for SmsConnector {
    fn settings(&self, conn: &Resolved) -> CodeSettings {
        let (length, lifetime_seconds, max_attempts, signup) = match &conn.connection.spec.options {
            Options::Sms(o) => (o.code_length, o.code_lifetime_seconds, o.max_attempts, !o.disable_signup),
            _ => (6, 180, 3, false),
        };
        CodeSettings {
            channel: Channel::Sms,
            length,
            lifetime_seconds,
            max_attempts,
            signup,
            link_by_default: false,
            link_same_browser: false,
        }
    }

    async fn deliver(&self, _tenant: &str, conn: &Resolved, m: &CodeMessage<'_>) -> Result<(), ConnectorError> {
        let o = options(conn)?;
        let body = template::text(&o.template, &Vars::of(m)).map_err(|e| misconfigured(conn, "template", &e))?;
        let token = conn.secret(names::TOKEN).map(|s| s.expose().to_owned()).unwrap_or_default();
        let request = match o.provider {
            SmsProvider::Twilio => {
                let url = format!(
                    "{}/Accounts/{}/Messages.json",
                    o.provider_url.trim_end_matches('/'),
                    url::form_urlencoded::byte_serialize(o.account.as_bytes()).collect::<String>()
                );
                self.http.post(url).basic_auth(&o.account, Some(&token)).form(&[
                    ("To", m.recipient),
                    ("From", o.from.as_str()),
                    ("Body", body.as_str()),
                ])
            }
            SmsProvider::Webhook => {
                let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let json = serde_json::to_vec(&serde_json::json!({
                    "to": m.recipient,
                    "from": o.from,
                    "body": body,
                    "timestamp": timestamp,
                }))
                .map_err(|e| ConnectorError::Internal(e.to_string()))?;
                self.http
                    .post(&o.provider_url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(SIGNATURE_HEADER, signature(&token, timestamp, &json))
                    .body(json)
            }
        };
        let answer = request.send().await.map_err(|e| delivery_failed(conn, &e))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        // The provider's explanation, shortened, for the log only.
        let text = answer.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        Err(delivery_failed(conn, &format!("the provider answered {status}: {text}")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            super::signature("key", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
    }
}
