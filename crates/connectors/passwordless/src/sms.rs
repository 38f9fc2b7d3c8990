//! SMS through an HTTP API: Twilio's Messages API shape (`POST
//! <provider_url>/Accounts/<account>/Messages.json`, HTTP Basic authentication with the
//! account and token, the form fields `To`, `From`, `Body`), or a webhook of the customer's
//! own gateway (`POST <provider_url>` with a JSON body, signed with HMAC-SHA256 under the
//! token in the header [`SIGNATURE_HEADER`]).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use postern_connection::secret::names;
use postern_connection::{Options, Resolved, SmsOptions, SmsProvider};
use postern_connector::egress::{Egress, HttpClient, SendError};
use postern_connector::{
    Channel, CodeConnector, CodeMessage, CodeSecret, CodeSettings, ConnectorError, TestReport, TestStep, async_trait,
};
use sha2::Sha256;

use crate::template::{self, Vars};
use crate::{delivery_failed, echo, misconfigured, wrong_family};

/// The header carrying a webhook's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>" under the connection's token>`.
pub const SIGNATURE_HEADER: &str = "x-postern-signature";

/// How long a provider may take to answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The connector of `sms` connections.
#[derive(Debug, Clone)]
pub struct SmsConnector {
    http: HttpClient,
}

/// Why a request to the provider has no answer, in words (reqwest's own message names only
/// the URL).
fn why(e: &SendError) -> String {
    match e {
        SendError::Refused(r) => r.to_string(),
        SendError::Transport(e) => transport(e),
    }
}

impl Default for SmsConnector {
    fn default() -> Self {
        Self::new()
    }
}

impl SmsConnector {
    /// A connector with its own HTTP client (no redirects followed: a provider that
    /// redirects is misconfigured, and the token must not follow it), under the built-in
    /// egress policy.
    pub fn new() -> Self {
        Self::with_egress(&Egress::default())
    }

    /// A connector with its own HTTP client, connecting only where `egress` allows.
    pub fn with_egress(egress: &Egress) -> Self {
        Self { http: egress.http_client(HTTP_TIMEOUT) }
    }
}

fn options(conn: &Resolved) -> Result<&SmsOptions, ConnectorError> {
    match &conn.connection.spec.options {
        Options::Sms(o) => Ok(o),
        _ => Err(wrong_family(conn)),
    }
}

impl SmsConnector {
    /// The `account` step: Twilio's Account resource (`GET <provider_url>/Accounts/<sid>.json`)
    /// read with the connection's SID and token.
    async fn check_account(&self, conn: &Resolved, o: &SmsOptions) -> Result<String, String> {
        let token = conn.secret(names::TOKEN).map(|s| s.expose().to_owned()).unwrap_or_default();
        let url = format!(
            "{}/Accounts/{}.json",
            o.provider_url.trim_end_matches('/'),
            url::form_urlencoded::byte_serialize(o.account.as_bytes()).collect::<String>()
        );
        let answer = self
            .http
            .send(self.http.get(&url).basic_auth(&o.account, Some(&token)))
            .await
            .map_err(|e| format!("{url} cannot be reached: {}", why(&e)))?;
        let status = answer.status().as_u16();
        match status {
            200 => {
                let body = answer.bytes().await.map_err(|e| format!("{url}: {}", transport(&e)))?;
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let text = |k: &str| body.get(k).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
                let (name, state) = (text("friendly_name"), text("status"));
                let about = if name.is_empty() { String::new() } else { format!(" ({})", echo(&name)) };
                if state.is_empty() || state == "active" {
                    Ok(format!("account {}{about} answered with the token: it can send", o.account))
                } else {
                    Err(format!("account {}{about} is {}: it cannot send", o.account, echo(&state)))
                }
            }
            401 | 403 => {
                Err(format!("{url} refused the account SID and the token (HTTP {status}): check account and token"))
            }
            404 => Err(format!("{url} answered HTTP 404: there is no such account (check account and provider_url)")),
            _ => Err(format!("{url} answered HTTP {status}")),
        }
    }

    /// The `webhook` step: the webhook answers (any answer but an outage).
    async fn check_webhook(&self, o: &SmsOptions) -> Result<String, String> {
        let url = &o.provider_url;
        let answer =
            self.http.send(self.http.get(url)).await.map_err(|e| format!("{url} cannot be reached: {}", why(&e)))?;
        let status = answer.status().as_u16();
        if status >= 500 {
            return Err(format!("{url} answered HTTP {status}"));
        }
        Ok(format!(
            "{url} answered a GET with HTTP {status}; a signed message is not tried, since the webhook would deliver it"
        ))
    }
}

/// A transport failure in words, with its causes (reqwest's own message names only the URL).
fn transport(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "the connection failed"
    } else {
        "the exchange failed"
    };
    let why = std::error::Error::source(e).map(postern_common::error::with_causes).unwrap_or_default();
    let text = if why.is_empty() { what.to_owned() } else { format!("{what}: {why}") };
    text.chars().filter(|c| !c.is_control()).take(300).collect()
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
        let answer = self.http.send(request).await.map_err(|e| match e {
            SendError::Refused(refused) => refused.connector_error(format_args!(
                "connection {:?}: the SMS provider cannot be called",
                conn.connection.spec.name
            )),
            SendError::Transport(e) => delivery_failed(conn, &e),
        })?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        // The provider's explanation, shortened, for the log only.
        let text = answer.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        Err(delivery_failed(conn, &format!("the provider answered {status}: {text}")))
    }

    /// Tries the connection without sending a message: `template` (the message renders),
    /// then for Twilio's API `account` (the account, read with the SID and the token: the
    /// credentials are right and the account is active), for a webhook `webhook` (it
    /// answers; a signed message is not tried, since the webhook would deliver it).
    async fn test(&self, _tenant: &str, conn: &Resolved) -> Result<TestReport, ConnectorError> {
        let o = options(conn)?;
        let started = Instant::now();
        let sample = CodeMessage {
            recipient: "+15550000000",
            secret: CodeSecret::Code("123456"),
            application: "Test application",
            tenant_name: "Test tenant",
            lifetime_seconds: o.code_lifetime_seconds,
        };
        let rendered = template::text(&o.template, &Vars::of(&sample))
            .map(|text| format!("the message renders ({} characters with a 6-digit code)", text.chars().count()))
            .map_err(|e| format!("the template cannot be used: {e}"));
        let mut steps = vec![TestStep::of("template", started, rendered)];
        if steps[0].ok {
            let started = Instant::now();
            let step = match o.provider {
                SmsProvider::Twilio => TestStep::of("account", started, self.check_account(conn, o).await),
                SmsProvider::Webhook => TestStep::of("webhook", started, self.check_webhook(o).await),
            };
            steps.push(step);
        }
        Ok(TestReport::of(steps))
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
