//! `TestConnection` for the social connectors: what a login would reach, tried without a
//! user and without a browser. The steps, stopping at the first that fails:
//!
//! - `configuration`: the endpoints (the connection's, else the provider's) and the client.
//! - `authorization_endpoint`: the page the browser is sent to answers. Without a redirect
//!   URI it may well answer an error page; only a missing page (404, 410), an outage or no
//!   answer fail.
//! - `client_authentication`: the client id and secret, sent to the token endpoint as a
//!   login sends them. Facebook: an app access token is asked with the client credentials
//!   grant (the app secret is right when one is issued; it is dropped at once). GitHub and a
//!   generic provider: a code no provider issued ([`TEST_CODE`]) is exchanged. A provider
//!   authenticates the client before it looks at the code (RFC 6749 §3.2.1, §4.1.3), so
//!   `invalid_grant` (GitHub: `bad_verification_code`) says the client was accepted and
//!   `invalid_client` (GitHub: `incorrect_client_credentials`) that it was not.
//! - `userinfo_endpoint` (and GitHub's `emails_endpoint`): the API refuses a call without a
//!   token (400, 401 or 403), as a protected API does; any other answer says the URL is not
//!   the API.
//!
//! Nothing is logged in, no token is kept, and no secret reaches a detail.

use std::time::Instant;

use postern_connection::{OAuth2Options, Resolved};
use postern_connector::{TEST_CODE, TestReport, TestStep, test_code_verdict};
use serde_json::Value;

use crate::flow::{Endpoints, token_body, token_request};
use crate::http::{Answer, Call, Failure, echo, oauth_error, send};
use crate::{Provider, SocialConnector};

/// What every step needs.
struct Probe<'a> {
    connector: &'a SocialConnector,
    http: &'a crate::http::Http,
    connection: &'a str,
    options: &'a OAuth2Options,
    endpoints: &'a Endpoints,
    secret: &'a str,
}

/// A failure in words (an outage's without the login's advice to retry).
fn why(f: Failure) -> String {
    match f {
        Failure::Unavailable(m) => m.trim_end_matches("; retry shortly").to_owned(),
        Failure::Denied(m) | Failure::Rejected(_, m) | Failure::Refused(m) | Failure::Internal(m) => m,
    }
}

/// Tries the connection `conn` step by step.
pub async fn run(connector: &SocialConnector, conn: &Resolved) -> TestReport {
    let provider = connector.provider;
    let started = Instant::now();
    let setup = connector.setup(conn).map(|s| (s, &connector.http));
    let configured = setup.as_ref().map_err(|f| why(f.clone())).map(|((o, e, _), _)| {
        let mut detail = format!(
            "client {:?}; authorization {}, token {}, profile {}",
            o.client_id, e.authorization, e.token, e.userinfo
        );
        if provider == Provider::Github {
            detail.push_str(&format!(", emails {}", e.emails));
        }
        detail
    });
    let mut steps = vec![TestStep::of("configuration", started, configured)];
    let Ok(((options, endpoints, secret), http)) = setup else {
        return TestReport::of(steps);
    };
    let probe =
        Probe { connector, http, connection: &conn.connection.spec.name, options, endpoints: &endpoints, secret };

    let started = Instant::now();
    if !TestStep::record(&mut steps, "authorization_endpoint", started, probe.authorization().await) {
        return TestReport::of(steps);
    }
    let started = Instant::now();
    if !TestStep::record(&mut steps, "client_authentication", started, probe.client().await) {
        return TestReport::of(steps);
    }
    let started = Instant::now();
    let profile = probe.protected("profile endpoint", "userinfo_endpoint", &endpoints.userinfo).await;
    if TestStep::record(&mut steps, "userinfo_endpoint", started, profile) && provider == Provider::Github {
        let started = Instant::now();
        let emails = probe.protected("emails endpoint", "emails_endpoint", &endpoints.emails).await;
        steps.push(TestStep::of("emails_endpoint", started, emails));
    }
    TestReport::of(steps)
}

/// What the token endpoint's answer to the `client_authentication` step says of the client's
/// credentials: `Ok` when they were accepted (or the answer cannot tell), `Err` when refused
/// or when the endpoint does not answer as one.
fn client_verdict(provider: Provider, token: &str, client_id: &str, answer: &Answer) -> Result<String, String> {
    let body = token_body(answer);
    let error = body.as_ref().and_then(oauth_error);
    let issued =
        body.as_ref().and_then(|b| b.get("access_token")).and_then(Value::as_str).is_some_and(|t| !t.is_empty());
    let said = |(e, d): &(String, String)| {
        if d.is_empty() { echo(e) } else { format!("{}: {}", echo(e), echo(d)) }
    };
    let credentials_hint = "check the connection's client_id and client_secret";
    if provider == Provider::Facebook {
        return match (&error, issued) {
            (None, true) if (200..300).contains(&answer.status) => Ok(format!(
                "{token} issued an app access token to app {client_id:?}: the app secret is right (the token was \
                 dropped)"
            )),
            (Some(e), _) => Err(format!("{token} refused the app's credentials: {} ({credentials_hint})", said(e))),
            _ => Err(format!(
                "{token} answered HTTP {} with neither a token nor an OAuth 2.0 error: is it the token endpoint?",
                answer.status
            )),
        };
    }
    let Some(e) = error else {
        return Err(if issued {
            format!("{token} issued a token for a code nobody issued ({TEST_CODE:?}): it cannot be trusted")
        } else {
            format!("{token} answered HTTP {} without an OAuth 2.0 error: is it the token endpoint?", answer.status)
        });
    };
    test_code_verdict(token, client_id, &e.0, &said(&e), credentials_hint)
}

impl Probe<'_> {
    fn call(&self, endpoint: &'static str) -> Call<'_> {
        Call { connection: self.connection, provider: self.connector.provider.display_name(), endpoint }
    }

    /// The authorization endpoint answers a request for a code.
    async fn authorization(&self) -> Result<String, String> {
        let mut url = url::Url::parse(&self.endpoints.authorization)
            .map_err(|e| format!("the authorization endpoint {} is not a URL: {e}", self.endpoints.authorization))?;
        url.query_pairs_mut().append_pair("response_type", "code").append_pair("client_id", &self.options.client_id);
        let call = self.call("authorization endpoint");
        let answer = send(self.http, call, self.http.get(url), self.connector.timeout)
            .await
            .map_err(|f| format!("{} ({})", why(f), self.endpoints.authorization))?;
        match answer.status {
            404 | 410 => Err(format!(
                "{} answered HTTP {}: there is no such page (check authorization_endpoint)",
                self.endpoints.authorization, answer.status
            )),
            status => Ok(format!("{} answered HTTP {status}", self.endpoints.authorization)),
        }
    }

    /// The token endpoint accepts the client's id and secret.
    async fn client(&self) -> Result<String, String> {
        let provider = self.connector.provider;
        let token = &self.endpoints.token;
        let client_id = self.options.client_id.as_str();
        let form = if provider == Provider::Facebook {
            vec![("grant_type", "client_credentials")]
        } else {
            vec![("grant_type", "authorization_code"), ("code", TEST_CODE)]
        };
        let request = token_request(self.http, provider, token, client_id, self.secret, form);
        let answer = send(self.http, self.call("token endpoint"), request, self.connector.timeout)
            .await
            .map_err(|f| format!("{} ({token})", why(f)))?;
        client_verdict(provider, token, client_id, &answer)
    }

    /// A protected API of the provider (`field` names its option) refuses a call without a
    /// token.
    async fn protected(&self, endpoint: &'static str, field: &str, url: &str) -> Result<String, String> {
        let request = self.http.get(url).header(reqwest::header::ACCEPT, "application/json");
        let answer = send(self.http, self.call(endpoint), request, self.connector.timeout)
            .await
            .map_err(|f| format!("{} ({url})", why(f)))?;
        match answer.status {
            400 | 401 | 403 => {
                Ok(format!("{url} refused a call without a token (HTTP {}), as the {endpoint} does", answer.status))
            }
            status => Err(format!(
                "{url} answered HTTP {status} to a call without a token, where the {endpoint} refuses one (check \
                 {field})"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn verdict(provider: Provider, status: u16, content_type: &str, body: &str) -> Result<String, String> {
        let answer = Answer { status, content_type: content_type.into(), body: body.as_bytes().to_vec() };
        client_verdict(provider, "https://idp.example/token", "app", &answer)
    }

    #[test]
    fn github_answers_a_made_up_code_with_200_and_an_error() {
        // GitHub's documented answers: 200 with `error`, as JSON (Accept: application/json)
        // or as a form (GitHub's default).
        let json = "application/json";
        let accepted =
            r#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired."}"#;
        let ok = verdict(Provider::Github, 200, json, accepted).expect("the client was accepted");
        assert!(ok.contains("accepted client \"app\"") && ok.contains("bad_verification_code"), "{ok}");
        let refused = r#"{"error":"incorrect_client_credentials","error_description":"The client_id and/or client_secret passed are incorrect."}"#;
        let e = verdict(Provider::Github, 200, json, refused).expect_err("refused");
        assert!(e.contains("incorrect_client_credentials") && e.contains("check the connection's client_id"), "{e}");
        let form = "application/x-www-form-urlencoded";
        assert!(verdict(Provider::Github, 200, form, "error=bad_verification_code&error_description=x").is_ok());
        assert!(verdict(Provider::Github, 200, form, "error=incorrect_client_credentials").is_err());
    }

    #[test]
    fn rfc_6749_answers_and_what_is_not_a_token_endpoint() {
        let json = "application/json";
        assert!(verdict(Provider::Generic, 400, json, r#"{"error":"invalid_grant"}"#).is_ok());
        let e = verdict(Provider::Generic, 401, json, r#"{"error":"invalid_client"}"#).expect_err("refused");
        assert!(e.contains("check the connection's client_id and client_secret"), "{e}");
        let e = verdict(Provider::Generic, 400, json, r#"{"error":"unauthorized_client"}"#).expect_err("refused");
        assert!(e.contains("allow it at the provider"), "{e}");
        assert!(verdict(Provider::Generic, 400, json, r#"{"error":"unsupported_grant_type"}"#).is_err());
        // An error that does not say: the test passes and says so.
        let ok = verdict(Provider::Generic, 400, json, r#"{"error":"invalid_request"}"#).expect("cannot tell");
        assert!(ok.contains("shows at the first login"), "{ok}");
        // A page, not a token endpoint; a token for a made-up code.
        let e = verdict(Provider::Generic, 404, "text/html", "<html>not found</html>").expect_err("not OAuth");
        assert!(e.contains("HTTP 404") && e.contains("is it the token endpoint?"), "{e}");
        let e = verdict(Provider::Generic, 200, json, r#"{"access_token":"x","token_type":"bearer"}"#).expect_err("x");
        assert!(e.contains("cannot be trusted"), "{e}");
    }

    #[test]
    fn facebook_issues_an_app_token_or_refuses_with_a_graph_error() {
        let json = "application/json";
        let ok = verdict(Provider::Facebook, 200, json, r#"{"access_token":"app|secret-token","token_type":"bearer"}"#)
            .expect("issued");
        assert!(ok.contains("issued an app access token") && !ok.contains("secret-token"), "{ok}");
        // The Graph API's error object for a wrong app secret.
        let refused = r#"{"error":{"message":"Error validating client secret.","type":"OAuthException","code":1}}"#;
        let e = verdict(Provider::Facebook, 400, json, refused).expect_err("refused");
        assert!(e.contains("OAuthException 1: Error validating client secret."), "{e}");
        assert!(verdict(Provider::Facebook, 200, "text/html", "<html>").is_err());
    }
}
