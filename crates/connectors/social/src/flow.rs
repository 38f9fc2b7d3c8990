//! The OAuth 2.0 authorization code flow every strategy here shares (RFC 6749 §4.1, PKCE
//! RFC 7636): the authorization request's URL, and the code exchanged for an access token.
//! Only the details differ per provider ([`Provider`]): the scope separator, and how the
//! client authenticates at the token endpoint.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Provider;
use crate::http::{Answer, Call, Failure, echo, oauth_error, send};

/// A connection's endpoints and client, defaults applied.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Where the browser logs in.
    pub authorization: String,
    /// Where the code is exchanged.
    pub token: String,
    /// Where the profile is read.
    pub userinfo: String,
    /// GitHub: where the email addresses are read.
    pub emails: String,
    /// The scopes asked: the provider's, then the connection's, without repeats.
    pub scopes: Vec<String>,
}

/// The access token of a login, and what else the token endpoint answered.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The access token.
    pub access_token: String,
    /// Its type, as answered (`bearer`); empty when the provider said none.
    pub token_type: String,
    /// A refresh token, if any.
    pub refresh_token: String,
    /// An ID token, if any (a generic provider that also speaks OpenID Connect).
    pub id_token: String,
    /// The scopes granted, as answered.
    pub scope: String,
    /// The access token's lifetime in seconds, if answered.
    pub expires_in: Option<u64>,
}

impl std::fmt::Debug for Tokens {
    // Bearer secrets never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The PKCE S256 challenge of a verifier.
pub fn code_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The URL the browser is sent to: the authorization endpoint with the request in its
/// query (any query the endpoint already has is kept).
pub fn authorization_url(
    provider: Provider,
    endpoints: &Endpoints,
    client_id: &str,
    callback_url: &str,
    tx: &postern_connector::RedirectTransaction,
) -> Result<String, Failure> {
    let (state, code_verifier) = (tx.state.as_str(), tx.code_verifier.as_str());
    let mut url = url::Url::parse(&endpoints.authorization).map_err(|e| {
        Failure::Internal(format!("the authorization endpoint, checked at creation, does not parse: {e}"))
    })?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", callback_url)
            .append_pair("state", state);
        let scopes = postern_connector::with_extra_scopes(&endpoints.scopes, &tx.extra_scopes);
        if !scopes.is_empty() {
            q.append_pair("scope", &scopes.join(provider.scope_separator()));
        }
        if !code_verifier.is_empty() {
            q.append_pair("code_challenge", &code_challenge(code_verifier))
                .append_pair("code_challenge_method", "S256");
        }
    }
    postern_connector::add_upstream_params(&mut url, &tx.upstream_params);
    Ok(url.into())
}

/// What the callback brought: the code, once the provider's error (a user who cancelled)
/// and the state are checked.
pub fn callback_code<'a>(
    connection: &str,
    params: &'a HashMap<String, String>,
    state: &str,
) -> Result<&'a str, Failure> {
    if let Some(error) = params.get("error") {
        let description =
            params.get("error_description").or_else(|| params.get("error_reason")).map(String::as_str).unwrap_or("");
        return Err(Failure::Denied(format!(
            "connection {connection:?}: the provider answered {}{}",
            echo(error),
            if description.is_empty() { String::new() } else { format!(": {}", echo(description)) }
        )));
    }
    // The authenticator found the transaction by its state; a connector called otherwise
    // must not accept another's.
    if params.get("state").map(String::as_str) != Some(state) {
        return Err(Failure::Rejected(
            "STATE_MISMATCH",
            format!("connection {connection:?}: the callback's state is not the login's"),
        ));
    }
    match params.get("code").map(String::as_str) {
        Some(code) if !code.is_empty() => Ok(code),
        _ => Err(Failure::Rejected(
            "CODE_MISSING",
            format!("connection {connection:?}: the provider's callback carries neither a code nor an error"),
        )),
    }
}

/// Exchanges the code at the token endpoint.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    http: &crate::http::Http,
    timeout: Duration,
    provider: Provider,
    connection: &str,
    endpoints: &Endpoints,
    client_id: &str,
    client_secret: &str,
    code: &str,
    callback_url: &str,
    code_verifier: &str,
) -> Result<Tokens, Failure> {
    let call = Call { connection, provider: provider.display_name(), endpoint: "token endpoint" };
    let mut form: Vec<(&str, &str)> =
        vec![("grant_type", "authorization_code"), ("code", code), ("redirect_uri", callback_url)];
    if !code_verifier.is_empty() {
        form.push(("code_verifier", code_verifier));
    }
    let request = token_request(http, provider, &endpoints.token, client_id, client_secret, form);
    let answer = send(http, call, request, timeout).await?;
    read_tokens(call, &answer)
}

/// A request to the token endpoint `url` with `form`, the client authenticated as the
/// provider takes it: the secret in the body (Facebook, GitHub) or HTTP Basic.
pub fn token_request<'a>(
    http: &crate::http::Http,
    provider: Provider,
    url: &str,
    client_id: &'a str,
    client_secret: &'a str,
    mut form: Vec<(&'a str, &'a str)>,
) -> reqwest::RequestBuilder {
    let mut request = http.post(url).header(reqwest::header::ACCEPT, "application/json");
    if provider.secret_in_body() {
        form.push(("client_id", client_id));
        form.push(("client_secret", client_secret));
    } else {
        // RFC 6749 §2.3.1: each part form-encoded, then Basic; what every server supports.
        let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        request = request.basic_auth(encode(client_id), Some(encode(client_secret)));
    }
    request.form(&form)
}

/// A token endpoint's answer as JSON, or as a form (GitHub's default, from a provider that
/// ignores `Accept`); `None` when it is neither.
pub fn token_body(answer: &Answer) -> Option<Value> {
    answer.json().or_else(|| {
        let pairs: serde_json::Map<String, Value> = url::form_urlencoded::parse(&answer.body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        (answer.content_type == "application/x-www-form-urlencoded"
            || pairs.contains_key("access_token")
            || pairs.contains_key("error"))
        .then_some(Value::Object(pairs))
    })
}

/// Reads a token endpoint's answer: tokens, or the provider's refusal.
pub fn read_tokens(call: Call<'_>, answer: &Answer) -> Result<Tokens, Failure> {
    let Some(body) = token_body(answer) else {
        return Err(Failure::Rejected(
            "UPSTREAM_ANSWER_INVALID",
            format!("{} answered HTTP {} without JSON", call.describe(), answer.status),
        ));
    };
    // GitHub answers a refused code with 200 and an `error`.
    if let Some((error, description)) = oauth_error(&body) {
        let hint = if error == "invalid_client" || error == "incorrect_client_credentials" {
            " (check the connection's client_id and client_secret)"
        } else {
            ""
        };
        return Err(Failure::Denied(format!(
            "{} refused the authorization code: {}{}{hint}",
            call.describe(),
            echo(&error),
            if description.is_empty() { String::new() } else { format!(": {}", echo(&description)) }
        )));
    }
    if !(200..300).contains(&answer.status) {
        return Err(Failure::Denied(format!(
            "{} refused the authorization code (HTTP {})",
            call.describe(),
            answer.status
        )));
    }
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let access_token = text("access_token");
    if access_token.is_empty() {
        return Err(Failure::Rejected(
            "UPSTREAM_ANSWER_INVALID",
            format!("{} answered no access_token", call.describe()),
        ));
    }
    let token_type = text("token_type");
    if !token_type.is_empty() && !token_type.eq_ignore_ascii_case("bearer") {
        return Err(Failure::Rejected(
            "UPSTREAM_ANSWER_INVALID",
            format!(
                "{} answered a token of type {:?}; only bearer tokens are used",
                call.describe(),
                echo(&token_type)
            ),
        ));
    }
    let expires_in = match body.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok(Tokens {
        access_token,
        token_type,
        refresh_token: text("refresh_token"),
        id_token: text("id_token"),
        scope: text("scope"),
        expires_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(authorization: &str) -> Endpoints {
        Endpoints {
            authorization: authorization.into(),
            token: "https://idp.example/token".into(),
            userinfo: "https://idp.example/me".into(),
            emails: String::new(),
            scopes: vec!["email".into(), "public_profile".into()],
        }
    }

    #[test]
    fn the_authorization_request_carries_the_client_state_scopes_and_pkce_challenge() {
        let url = authorization_url(
            Provider::Facebook,
            &endpoints("https://www.facebook.com/v23.0/dialog/oauth?display=popup"),
            "fb-app",
            "https://id.example/fabrikam/login/callback",
            &transaction("st&te", "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", &[]),
        )
        .unwrap();
        let url = url::Url::parse(&url).unwrap();
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(url.path(), "/v23.0/dialog/oauth");
        assert_eq!(q["display"], "popup", "the endpoint's own query is kept");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "fb-app");
        assert_eq!(q["redirect_uri"], "https://id.example/fabrikam/login/callback");
        assert_eq!(q["state"], "st&te");
        assert_eq!(q["scope"], "email public_profile");
        // RFC 7636 appendix B's example.
        assert_eq!(q["code_challenge"], "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert_eq!(q["code_challenge_method"], "S256");

        let github = authorization_url(
            Provider::Github,
            &endpoints("https://github.com/login/oauth/authorize"),
            "c",
            "https://cb",
            &transaction("s", "", &[]),
        )
        .unwrap();
        let q: HashMap<String, String> = url::Url::parse(&github).unwrap().query_pairs().into_owned().collect();
        assert_eq!(q["scope"], "email public_profile");
        assert!(!q.contains_key("code_challenge"), "no verifier, no challenge");
    }

    #[test]
    fn upstream_params_and_extra_scopes_join_the_request() {
        let url = authorization_url(
            Provider::Facebook,
            &endpoints("https://www.facebook.com/v23.0/dialog/oauth?display=popup"),
            "fb-app",
            "https://cb",
            &postern_connector::RedirectTransaction {
                extra_scopes: vec!["public_profile".into(), "user_birthday".into()],
                ..transaction("s", "", &[("display", "page"), ("auth_type", "rerequest")])
            },
        )
        .unwrap();
        let pairs: Vec<(String, String)> = url::Url::parse(&url).unwrap().query_pairs().into_owned().collect();
        let named = |n: &str| pairs.iter().filter(|(k, _)| k == n).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(named("display"), ["page"], "the connection's value replaces the endpoint's: {pairs:?}");
        assert_eq!(named("auth_type"), ["rerequest"]);
        assert_eq!(named("state"), ["s"], "the protocol's parameters stay: {pairs:?}");
        assert_eq!(named("client_id"), ["fb-app"]);
        assert_eq!(named("scope"), ["email public_profile user_birthday"], "connection_scope's, once each");
    }

    fn transaction(
        state: &str,
        code_verifier: &str,
        params: &[(&str, &str)],
    ) -> postern_connector::RedirectTransaction {
        postern_connector::RedirectTransaction {
            state: state.into(),
            nonce: String::new(),
            code_verifier: code_verifier.into(),
            callback_url: "https://cb".into(),
            login_hint: String::new(),
            upstream_params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            extra_scopes: Vec::new(),
            data: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_callback_is_checked_before_any_exchange() {
        let p = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let ok = p(&[("code", "abc"), ("state", "s")]);
        assert_eq!(callback_code("c", &ok, "s"), Ok("abc"));
        let cancel = p(&[("error", "access_denied"), ("error_reason", "user_denied"), ("state", "s")]);
        assert_eq!(
            callback_code("fb", &cancel, "s"),
            Err(Failure::Denied("connection \"fb\": the provider answered access_denied: user_denied".into()))
        );
        let other_state = p(&[("code", "abc"), ("state", "x")]);
        assert!(matches!(callback_code("c", &other_state, "s"), Err(Failure::Rejected("STATE_MISMATCH", _))));
        let no_state = p(&[("code", "abc")]);
        assert!(matches!(callback_code("c", &no_state, "s"), Err(Failure::Rejected("STATE_MISMATCH", _))));
        let no_code = p(&[("state", "s")]);
        assert!(matches!(callback_code("c", &no_code, "s"), Err(Failure::Rejected("CODE_MISSING", _))));
    }

    #[track_caller]
    fn tokens(status: u16, content_type: &str, body: &str) -> Result<Tokens, Failure> {
        let call = Call { connection: "gh", provider: "GitHub", endpoint: "token endpoint" };
        read_tokens(call, &Answer { status, content_type: content_type.into(), body: body.as_bytes().to_vec() })
    }

    #[test]
    fn token_answers_and_refusals() {
        let t =
            tokens(200, "application/json", r#"{"access_token":"gho_1","token_type":"bearer","scope":"read:user"}"#)
                .unwrap();
        assert_eq!((t.access_token.as_str(), t.scope.as_str()), ("gho_1", "read:user"));
        assert!(!format!("{t:?}").contains("gho_1"), "a token never reaches Debug");
        let t = tokens(200, "application/x-www-form-urlencoded", "access_token=gho_2&token_type=bearer").unwrap();
        assert_eq!(t.access_token, "gho_2");
        let t =
            tokens(200, "application/json", r#"{"access_token":"EAAB","token_type":"bearer","expires_in":"5183944"}"#)
                .unwrap();
        assert_eq!(t.expires_in, Some(5_183_944));

        // GitHub refuses a code with 200 and an error; RFC 6749 servers with 400.
        let Err(Failure::Denied(m)) = tokens(
            200,
            "application/json",
            r#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired."}"#,
        ) else {
            panic!()
        };
        assert!(m.contains("connection \"gh\"") && m.contains("bad_verification_code"), "{m}");
        let Err(Failure::Denied(m)) = tokens(401, "application/json", r#"{"error":"invalid_client"}"#) else {
            panic!()
        };
        assert!(m.contains("check the connection's client_id and client_secret"), "{m}");
        // The Graph API's error object.
        let Err(Failure::Denied(m)) = tokens(
            400,
            "application/json",
            r#"{"error":{"message":"Invalid verification code format.","type":"OAuthException","code":100}}"#,
        ) else {
            panic!()
        };
        assert!(m.contains("OAuthException 100: Invalid verification code format."), "{m}");
        assert!(matches!(tokens(403, "text/html", "<html>"), Err(Failure::Rejected("UPSTREAM_ANSWER_INVALID", _))));
        assert!(matches!(tokens(200, "application/json", r#"{"token_type":"bearer"}"#), Err(Failure::Rejected(..))));
        assert!(matches!(
            tokens(200, "application/json", r#"{"access_token":"x","token_type":"mac"}"#),
            Err(Failure::Rejected(..))
        ));
    }
}
