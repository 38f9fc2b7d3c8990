//! The public OpenID documents of each tenant on the HTTP port:
//! `GET /<tenant>/.well-known/jwks.json` and `GET /<tenant>/.well-known/openid-configuration`,
//! and the userinfo endpoint `GET|POST /<tenant>/userinfo` (OpenID Connect Core 1.0, 5.3).
//!
//! The provider asks the authenticator's `SigningKeyService` (as `Service("gateway")`, over
//! the same backend as gRPC calls) and keeps each answer briefly, never longer than the
//! `max_age` the authenticator gives, so that a burst of relying parties fetching keys costs
//! the authenticator one call. An unknown tenant is a 404 with a JSON body.
//!
//! `/userinfo` takes the access token from `Authorization: Bearer <token>`, asks the
//! authenticator's `GetUserInfo` on every request (never cached: it answers the user's
//! current profile) and answers the claims as JSON with `Cache-Control: no-store`. A
//! missing, malformed, expired or other tenant's token, or a deleted user, is a 401 with
//! `WWW-Authenticate: Bearer error="invalid_token", error_description="..."` (RFC 6750).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use postern_common::coherence::Stamp;
use postern_proto::authn::v1 as pb;
use tonic::Code;

use crate::Provider;

/// The longest the provider keeps a document, whatever max_age says.
const MAX_CACHE: Duration = Duration::from_secs(10);

/// How long after an event about a tenant its documents are not cached.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Doc {
    Jwks,
    Discovery,
}

/// A cached document: when fetched, how long to keep it, the body, its max_age, and its
/// stamp (it goes as soon as the tenant event log says something about its tenant: a
/// deleted tenant's keys are never served for a later namesake).
type Cached = (Instant, Duration, String, u32, Stamp);

/// The documents fetched lately, per tenant.
#[derive(Default)]
pub(crate) struct Cache(Mutex<HashMap<(String, Doc), Cached>>);

/// `GET /<tenant>/.well-known/jwks.json`.
pub(crate) async fn jwks(s: State<Arc<Provider>>, p: Path<String>) -> Response {
    document(s, p, Doc::Jwks).await
}

/// `GET /<tenant>/.well-known/openid-configuration`.
pub(crate) async fn discovery(s: State<Arc<Provider>>, p: Path<String>) -> Response {
    document(s, p, Doc::Discovery).await
}

/// The bearer token of an `Authorization` header value (`Bearer <token>`, any case).
fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub(crate) fn error(code: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": error, "error_description": description }).to_string();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn document(State(oidc): State<Arc<Provider>>, Path(tenant): Path<String>, doc: Doc) -> Response {
    let key = (tenant.clone(), doc);
    let coherence = &oidc.config.coherence;
    let cached = oidc.documents.0.lock().unwrap_or_else(PoisonError::into_inner).get(&key).cloned();
    let (body, max_age) = match cached {
        Some((at, ttl, body, max_age, stamp)) if at.elapsed() < ttl && coherence.current(&tenant, stamp) => {
            (body, max_age)
        }
        _ => {
            // Not cached in the moments after an event about the tenant: the authenticator
            // hears the same event a little later and may still answer what it replaces.
            let stamp = coherence.stamp(&tenant).filter(|_| coherence.settled(&tenant, SETTLE));
            match fetch(&oidc, &tenant, doc).await {
                Ok((body, max_age)) => {
                    if let Some(stamp) = stamp {
                        let ttl = Duration::from_secs(u64::from(max_age)).min(MAX_CACHE);
                        let mut cache = oidc.documents.0.lock().unwrap_or_else(PoisonError::into_inner);
                        if cache.len() > 10_000 {
                            cache.clear();
                        }
                        cache.insert(key, (Instant::now(), ttl, body.clone(), max_age, stamp));
                    }
                    (body, max_age)
                }
                Err(response) => return response,
            }
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CACHE_CONTROL, format!("public, max-age={max_age}")),
        ],
        body,
    )
        .into_response()
}

/// The 503 when the authenticator cannot be reached.
pub(crate) fn unavailable() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the authenticator is unavailable")
}

async fn fetch(oidc: &Provider, tenant: &str, doc: Doc) -> Result<(String, u32), Response> {
    let not_found = || error(StatusCode::NOT_FOUND, "not_found", "no such tenant");
    if postern_common::validate::tenant_name(tenant).is_err() {
        return Err(not_found());
    }
    let mut client = oidc.signing_keys().ok_or_else(unavailable)?;
    let answer = match doc {
        Doc::Jwks => client
            .get_jwks(pb::GetJwksRequest { tenant: tenant.to_owned() })
            .await
            .map(|r| r.into_inner())
            .map(|r| (r.jwks_json, r.max_age_seconds)),
        Doc::Discovery => client
            .get_open_id_configuration(pb::GetOpenIdConfigurationRequest { tenant: tenant.to_owned() })
            .await
            .map(|r| r.into_inner())
            .map(|r| (r.openid_configuration_json, r.max_age_seconds)),
    };
    match answer {
        Ok((body, max_age)) => Ok((body, u32::try_from(max_age).unwrap_or(0))),
        Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => Err(not_found()),
        Err(s) => {
            tracing::warn!(code = ?s.code(), message = s.message(), "cannot fetch a tenant's OpenID document");
            Err(unavailable())
        }
    }
}

/// A 401 of the userinfo endpoint: `WWW-Authenticate` with `invalid_token` and the reason,
/// and the same in a JSON body.
fn invalid_token(description: &str) -> Response {
    // The description goes into a quoted header parameter: keep printable ASCII without quotes
    // or backslashes (RFC 6750 3: %x20-21 / %x23-5B / %x5D-7E).
    let clean: String = description
        .chars()
        .map(|c| if c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\') { c } else { '\'' })
        .collect();
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{clean}\"");
    let mut response = error(StatusCode::UNAUTHORIZED, "invalid_token", description);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        headers.insert(header::WWW_AUTHENTICATE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET|POST /<tenant>/userinfo`.
pub(crate) async fn userinfo(
    State(oidc): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = bearer_token(authorization) else {
        return invalid_token("no access token: send it as `Authorization: Bearer <access token>`");
    };
    if postern_common::validate::tenant_name(&tenant).is_err() {
        return invalid_token("the access token was not issued by this tenant");
    }
    let Some(mut client) = oidc.signing_keys() else { return unavailable() };
    let answer =
        client.get_user_info(pb::GetUserInfoRequest { tenant: tenant.clone(), access_token: token.to_owned() }).await;
    match answer {
        Ok(r) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
                (header::PRAGMA, "no-cache"),
            ],
            r.into_inner().claims_json,
        )
            .into_response(),
        Err(s) if matches!(s.code(), Code::Unauthenticated | Code::InvalidArgument) => invalid_token(s.message()),
        Err(s) if s.code() == Code::NotFound => invalid_token("the access token's user no longer exists"),
        Err(s) => {
            tracing::warn!(code = ?s.code(), message = s.message(), "cannot answer a userinfo request");
            unavailable()
        }
    }
}

/// `GET /<tenant>/samlp/metadata?connection=<name>`: a `samlp` connection's SAML service
/// provider metadata (XML), for the identity provider's administrator. A plain-text 400
/// without `connection`; 404 for an unknown connection; 400 for one that publishes none.
pub(crate) async fn samlp_metadata(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let text = |code: StatusCode, message: String| {
        (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
    };
    let connection = q.get("connection").cloned().unwrap_or_default();
    if connection.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "the query parameter `connection` is required: the name of a samlp connection\n".into(),
        );
    }
    let Some(mut oauth) = provider.oauth() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the service is unavailable; try again shortly\n".into());
    };
    let request = pb::GetServiceProviderMetadataRequest { tenant, connection };
    match oauth.get_service_provider_metadata(request).await {
        Ok(r) => {
            let r = r.into_inner();
            let content_type = HeaderValue::from_str(&r.content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("application/samlmetadata+xml"));
            (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], r.document).into_response()
        }
        Err(s) => {
            let code = match s.code() {
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
                Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
                _ => {
                    tracing::warn!(code = ?s.code(), message = s.message(), "SAML metadata failed");
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "something went wrong; try again shortly\n".into());
                }
            };
            text(code, format!("{}\n", s.message()))
        }
    }
}
