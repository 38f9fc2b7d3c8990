//! The hosted page's passwordless steps: `POST /<tenant>/passwordless/start` (the email or
//! phone form: sends a code, or a magic link), `POST /<tenant>/passwordless/verify` (the
//! code form) and `GET /<tenant>/passwordless/verify_redirect?token=…` (a magic link opened:
//! it completes the authorization request that sent it). The forms carry the transaction and
//! its CSRF token like the login form; a magic link carries only its token, and the browser's
//! CSRF cookies go along so that a connection binding links to the browser can check them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::Response;
use postern_proto::authn::v1 as pb;
use serde::Deserialize;
use tonic::Code;

use crate::Provider;
use crate::browser::{
    CSRF_COOKIE_PREFIX, Shown, SignupState, address, csrf_cookie_name, csrf_ok, csrf_refused, logged_in, render_login,
};

/// The fields of the address form.
#[derive(Deserialize)]
pub(crate) struct StartForm {
    #[serde(default)]
    tx: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    connection: String,
    #[serde(default)]
    recipient: String,
    /// `code` or `link`.
    #[serde(default)]
    send: String,
}

/// The fields of the code form.
#[derive(Deserialize)]
pub(crate) struct CodeForm {
    #[serde(default)]
    tx: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    connection: String,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    code: String,
}

/// The page after a start: the code form, or "check your email".
struct Sent<'a> {
    tenant: &'a str,
    tx: &'a str,
    csrf: &'a str,
    connection: &'a str,
    recipient: &'a str,
    link: bool,
    minutes: i64,
    error: &'a str,
}

fn sent_page(provider: &Provider, status: StatusCode, s: &Sent<'_>) -> Response {
    provider.pages.render(
        status,
        "passwordless.html",
        minijinja::context! {
            tenant => s.tenant,
            tx => s.tx,
            csrf => s.csrf,
            connection => s.connection,
            recipient => s.recipient,
            link => s.link,
            minutes => s.minutes,
            error => s.error,
        },
    )
}

fn http_status(code: Code) -> Option<StatusCode> {
    Some(match code {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::PermissionDenied | Code::FailedPrecondition => StatusCode::FORBIDDEN,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        _ => return None,
    })
}

/// The message a refused form shows: the first field violation's, else the status's.
fn problem(s: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    let details = s.get_error_details();
    details
        .bad_request()
        .and_then(|b| b.field_violations.first().map(|v| format!("{}: {}", v.field, v.description)))
        .unwrap_or_else(|| s.message().to_owned())
}

/// `POST /<tenant>/passwordless/start`.
pub(crate) async fn start(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(f): Form<StartForm>,
) -> Response {
    if !csrf_ok(&headers, &f.tx, &f.csrf) {
        return csrf_refused(&provider);
    }
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let link = f.send == "link";
    let request = pb::SubmitPasswordlessStartRequest {
        tenant: tenant.clone(),
        transaction: f.tx.clone(),
        csrf_token: f.csrf.clone(),
        connection: f.connection.clone(),
        recipient: f.recipient.clone(),
        link,
        address: address(&extensions),
    };
    match oauth.submit_passwordless_start(request).await {
        Ok(r) => {
            let r = r.into_inner();
            let minutes = (r.expires_in + 59) / 60;
            let sent = Sent {
                tenant: &tenant,
                tx: &f.tx,
                csrf: &f.csrf,
                connection: &f.connection,
                recipient: f.recipient.trim(),
                link,
                minutes,
                error: "",
            };
            let mut response = sent_page(&provider, StatusCode::OK, &sent);
            // The code form (and a link bound to this browser) needs the CSRF cookie as long
            // as the code lives, which may be longer than the page was first given.
            if r.transaction_expires_in > 0 {
                let name = csrf_cookie_name(&f.tx);
                provider.set_cookie(&mut response, &tenant, &name, &f.csrf, r.transaction_expires_in);
            }
            response
        }
        Err(s) => {
            let Some(status) = http_status(s.code()) else { return provider.status_page(&s) };
            let message = problem(&s);
            let shown = Shown {
                status,
                error: &message,
                username: Some(&f.recipient),
                signup: SignupState::default(),
                email: "",
            };
            render_login(&provider, &tenant, &f.tx, &f.csrf, shown).await
        }
    }
}

/// `POST /<tenant>/passwordless/verify`.
pub(crate) async fn verify(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(f): Form<CodeForm>,
) -> Response {
    if !csrf_ok(&headers, &f.tx, &f.csrf) {
        return csrf_refused(&provider);
    }
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let request = pb::SubmitPasswordlessCodeRequest {
        tenant: tenant.clone(),
        transaction: f.tx.clone(),
        csrf_token: f.csrf.clone(),
        connection: f.connection.clone(),
        recipient: f.recipient.clone(),
        code: f.code,
        address: address(&extensions),
    };
    match oauth.submit_passwordless_code(request).await {
        Ok(r) => logged_in(&provider, &tenant, &f.tx, r.into_inner().logged_in),
        Err(s) => {
            let Some(status) = http_status(s.code()) else { return provider.status_page(&s) };
            let message = problem(&s);
            let sent = Sent {
                tenant: &tenant,
                tx: &f.tx,
                csrf: &f.csrf,
                connection: &f.connection,
                recipient: &f.recipient,
                link: false,
                minutes: 0,
                error: &message,
            };
            sent_page(&provider, status, &sent)
        }
    }
}

/// `GET /<tenant>/passwordless/verify_redirect?token=…`: a magic link opened.
pub(crate) async fn verify_redirect(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let csrf_cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| k.starts_with(CSRF_COOKIE_PREFIX))
        .map(|(_, v)| v.trim().to_owned())
        .collect();
    let request = pb::CompleteMagicLinkRequest {
        tenant: tenant.clone(),
        token: q.get("token").cloned().unwrap_or_default(),
        csrf_cookies,
        address: address(&extensions),
    };
    match oauth.complete_magic_link(request).await {
        Ok(r) => logged_in(&provider, &tenant, "", r.into_inner().logged_in),
        Err(s) if matches!(s.code(), Code::Unauthenticated | Code::FailedPrecondition | Code::NotFound) => {
            provider.error_page(StatusCode::BAD_REQUEST, s.message())
        }
        Err(s) => provider.status_page(&s),
    }
}
