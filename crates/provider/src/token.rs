//! `POST /<tenant>/oauth/token` (RFC 6749 4.1.3, 4.4, 6) and `POST /<tenant>/oauth/revoke`
//! (RFC 7009): the form's fields become `OAuthService/ExchangeToken` and `RevokeToken`, the
//! same code path as the gRPC twins. The client authenticates with `client_secret_basic`
//! (`Authorization: Basic`) or `client_secret_post` (`client_id` and `client_secret` in the
//! form), not both; a public client sends only its `client_id` (and its PKCE verifier).
//! The body is a form, or a JSON object as Auth0 also takes ([`Fields`]).
//! Errors are RFC 6749 5.2 JSON (`error`, `error_description`); a failed client
//! authentication is a 401 with `WWW-Authenticate: Basic`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use postern_proto::authn::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::Provider;

/// An RFC 6749 5.2 error answer.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": error, "error_description": description }).to_string();
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"postern\""));
    }
    response
}

/// A status of the authenticator as an RFC 6749 5.2 error: the `ErrorInfo` reason names it.
fn refusal(s: &tonic::Status) -> Response {
    let reason = s.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default();
    let (status, error) = match reason.as_str() {
        "INVALID_CLIENT" => (StatusCode::UNAUTHORIZED, "invalid_client"),
        "INVALID_GRANT" => (StatusCode::BAD_REQUEST, "invalid_grant"),
        "UNAUTHORIZED_CLIENT" => (StatusCode::BAD_REQUEST, "unauthorized_client"),
        "UNSUPPORTED_GRANT_TYPE" => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        "INVALID_SCOPE" => (StatusCode::BAD_REQUEST, "invalid_scope"),
        // No client grant for the API, or a scope not granted (Auth0 answers 403).
        "ACCESS_DENIED" => (StatusCode::FORBIDDEN, "access_denied"),
        _ => match s.code() {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_request"),
            Code::Unavailable | Code::DeadlineExceeded => {
                return oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", s.message());
            }
            _ => {
                tracing::warn!(code = ?s.code(), message = s.message(), "token endpoint failed");
                return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error");
            }
        },
    };
    oauth_error(status, error, s.message())
}

/// The fields of a token or revocation request: a form (RFC 6749's encoding), or a JSON
/// object, which Auth0 takes too and its own examples send
/// (`{"grant_type":"client_credentials","client_id":…}`). Strings, numbers and booleans are
/// read as text; a body in any other type is an `invalid_request`, as JSON.
pub(crate) struct Fields(HashMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let unreadable = |why: String| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &why);
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-www-form-urlencoded" => {
                match Form::<HashMap<String, String>>::from_request(req, state).await {
                    Ok(Form(fields)) => Ok(Fields(fields)),
                    Err(e) => Err(unreadable(e.body_text())),
                }
            }
            "application/json" => {
                let object = match Json::<serde_json::Map<String, serde_json::Value>>::from_request(req, state).await {
                    Ok(Json(object)) => object,
                    Err(e) => return Err(unreadable(e.body_text())),
                };
                let mut fields = HashMap::new();
                for (name, value) in object {
                    let text = match value {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        serde_json::Value::Null => continue,
                        _ => {
                            let name: String = name.chars().take(64).collect();
                            return Err(unreadable(format!("{name:?} must be a string, not an array or an object")));
                        }
                    };
                    fields.insert(name, text);
                }
                Ok(Fields(fields))
            }
            _ => Err(unreadable(format!(
                "the body must be application/x-www-form-urlencoded (RFC 6749) or application/json, not {:?}",
                content_type.chars().take(100).collect::<String>()
            ))),
        }
    }
}

/// Why client credentials could not be read: the answer's status, the error and its
/// description.
type Unreadable = (StatusCode, &'static str, &'static str);

/// The client's credentials: from `Authorization: Basic` (RFC 6749 2.3.1: each part
/// form-urlencoded) or the form, never both.
fn client_credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> Result<(String, String), Unreadable> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, value)| value.trim().to_owned());
    let posted_secret = form.get("client_secret").filter(|s| !s.is_empty());
    match basic {
        Some(value) => {
            if posted_secret.is_some() {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "use one client authentication method: Authorization: Basic or client_secret in the form",
                ));
            }
            let bad = || (StatusCode::UNAUTHORIZED, "invalid_client", "malformed Basic credentials");
            let decoded = STANDARD.decode(value).map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
            let decode =
                |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
            let id = decode(id).ok_or_else(bad)?;
            let secret = decode(secret).ok_or_else(bad)?;
            if form.get("client_id").is_some_and(|c| !c.is_empty() && *c != id) {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_id differs from the Basic credentials",
                ));
            }
            Ok((id, secret))
        }
        None => Ok((form.get("client_id").cloned().unwrap_or_default(), posted_secret.cloned().unwrap_or_default())),
    }
}

/// The request's `Origin` (a browser's), empty when it sent none or one that is not text.
fn origin(headers: &HeaderMap) -> String {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

fn field(form: &HashMap<String, String>, name: &str) -> String {
    form.get(name).cloned().unwrap_or_default()
}

/// `POST /<tenant>/oauth/token`.
pub(crate) async fn token(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Fields(form): Fields,
) -> Response {
    let (client_id, client_secret) = match client_credentials(&headers, &form) {
        Ok(c) => c,
        Err((status, error, description)) => return oauth_error(status, error, description),
    };
    let Some(mut oauth) = provider.oauth() else { return crate::documents::unavailable() };
    let request = pb::ExchangeTokenRequest {
        tenant,
        grant_type: field(&form, "grant_type"),
        client_id,
        client_secret,
        code: field(&form, "code"),
        redirect_uri: field(&form, "redirect_uri"),
        code_verifier: field(&form, "code_verifier"),
        refresh_token: field(&form, "refresh_token"),
        scope: field(&form, "scope"),
        audience: field(&form, "audience"),
        // The passwordless grant (`http://auth0.com/oauth/grant-type/passwordless/otp`).
        realm: field(&form, "realm"),
        username: field(&form, "username"),
        otp: field(&form, "otp"),
        origin: origin(&headers),
    };
    match oauth.exchange_token(request).await {
        Ok(r) => {
            let r = r.into_inner();
            let mut body = serde_json::json!({
                "access_token": r.access_token,
                "token_type": r.token_type,
                "expires_in": r.expires_in,
                "scope": r.scope,
            });
            if !r.id_token.is_empty() {
                body["id_token"] = r.id_token.into();
            }
            if !r.refresh_token.is_empty() {
                body["refresh_token"] = r.refresh_token.into();
            }
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                    (header::PRAGMA, "no-cache"),
                ],
                body.to_string(),
            )
                .into_response()
        }
        Err(s) => refusal(&s),
    }
}

/// `POST /<tenant>/oauth/revoke`.
pub(crate) async fn revoke(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Fields(form): Fields,
) -> Response {
    let (client_id, client_secret) = match client_credentials(&headers, &form) {
        Ok(c) => c,
        Err((status, error, description)) => return oauth_error(status, error, description),
    };
    let Some(mut oauth) = provider.oauth() else { return crate::documents::unavailable() };
    let request = pb::RevokeTokenRequest {
        tenant,
        client_id,
        client_secret,
        token: field(&form, "token"),
        token_type_hint: field(&form, "token_type_hint"),
        origin: origin(&headers),
    };
    match oauth.revoke_token(request).await {
        Ok(_) => (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response(),
        Err(s) => refusal(&s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode("my%3Aclient:s3cr%2Bt"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&value).expect("header"));
        let (id, secret) = client_credentials(&headers, &HashMap::new()).map_err(|_| ()).expect("credentials");
        assert_eq!((id.as_str(), secret.as_str()), ("my:client", "s3cr+t"));
        let both = HashMap::from([("client_secret".to_owned(), "x".to_owned())]);
        assert!(client_credentials(&headers, &both).is_err(), "two methods at once");
        let posted =
            HashMap::from([("client_id".to_owned(), "c".to_owned()), ("client_secret".to_owned(), "s".to_owned())]);
        let (id, secret) = client_credentials(&HeaderMap::new(), &posted).map_err(|_| ()).expect("posted");
        assert_eq!((id.as_str(), secret.as_str()), ("c", "s"));
    }
}
