//! The browser's side of the authorization code flow: `GET /<tenant>/authorize`, the hosted
//! login page (`GET|POST /<tenant>/login`, `POST /<tenant>/signup`) and logout
//! (`GET /<tenant>/v2/logout`, Auth0's, and `GET /<tenant>/oidc/logout`, the OpenID
//! `end_session_endpoint`); redirect logins through an upstream (`POST
//! /<tenant>/login/upstream`, a "Continue with …" button, and `GET|POST
//! /<tenant>/login/callback`, where the upstream sends the browser back with its answer,
//! bound to the browser that started the login by a cookie named after its `state`).
//!
//! An authorization request with an unknown client or an unregistered redirect URI gets an
//! error page, never a redirect. A login transaction is carried by the page's URL (`tx`) and
//! its CSRF token by an HttpOnly cookie named after the transaction and by every form; a
//! post whose token is missing or differs from the cookie's is refused before anything is
//! checked. The SSO session is an opaque HttpOnly cookie (`postern_session`) scoped to the
//! tenant's path. Cookies are `Secure` when the public URL is https, and `SameSite=Lax`, but
//! for two that must come back from another site over https: the session's (silent
//! authentication from an application on another site) and an upstream login's binding
//! cookie (an upstream's cross-site form post), which are then `SameSite=None`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use postern_proto::authn::v1 as pb;
use serde::{Deserialize, Serialize};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::Provider;
use crate::html::security_headers;

/// The SSO session cookie.
const SESSION_COOKIE: &str = "postern_session";
/// The CSRF cookie of a transaction: this prefix, then the transaction's first characters.
pub(crate) const CSRF_COOKIE_PREFIX: &str = "postern_csrf_";

pub(crate) fn csrf_cookie_name(tx: &str) -> String {
    let short: String = tx.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
    format!("{CSRF_COOKIE_PREFIX}{short}")
}

/// Appends a `Set-Cookie` header (none when `cookie` is not a valid header value).
fn append_cookie(response: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The value of cookie `name` in the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl Provider {
    /// Sets cookie `name` for the tenant's paths, `SameSite=Lax`: sent when the browser comes
    /// to Postern from another site by a link or a redirect, never with another site's
    /// request in the background or its form post.
    pub(crate) fn set_cookie(&self, response: &mut Response, tenant: &str, name: &str, value: &str, max_age: i64) {
        let secure = if self.config.secure_cookies { "; Secure" } else { "" };
        append_cookie(
            response,
            &format!("{name}={value}; Path=/{tenant}/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"),
        );
    }

    /// Sets (or, with `max_age` 0, clears) the SSO session cookie. Over https it is
    /// `SameSite=None; Secure`, as Auth0's and Keycloak's session cookies are: silent
    /// authentication (`prompt=none` in a hidden iframe, `response_mode=web_message`) then
    /// finds the session from an application on another site too, where the browser still
    /// sends third-party cookies. Nothing else depends on the session cookie's being held
    /// back: every form carries a CSRF token whose cookie stays `Lax`, and every answer the
    /// session gives (a code) goes only to the client's registered redirect URI or its
    /// origin. Over plain http a browser refuses `SameSite=None`, and the cookie is `Lax`.
    pub(crate) fn set_session_cookie(&self, response: &mut Response, tenant: &str, value: &str, max_age: i64) {
        self.set_cross_site_cookie(response, tenant, SESSION_COOKIE, value, max_age);
    }

    /// Sets cookie `name` for the tenant's paths so that it comes back from another site
    /// too: `SameSite=None; Secure` over https, `Lax` over plain http (where browsers refuse
    /// `None`).
    fn set_cross_site_cookie(&self, response: &mut Response, tenant: &str, name: &str, value: &str, max_age: i64) {
        let same_site = if self.config.secure_cookies { "None; Secure" } else { "Lax" };
        append_cookie(
            response,
            &format!("{name}={value}; Path=/{tenant}/; Max-Age={max_age}; HttpOnly; SameSite={same_site}"),
        );
    }

    pub(crate) fn error_page(&self, status: StatusCode, message: &str) -> Response {
        let title = if status.is_server_error() { "Try again later" } else { "This login cannot continue" };
        self.pages.error(status, title, message)
    }

    /// The page of a status the authenticator answered a browser step with.
    pub(crate) fn status_page(&self, s: &tonic::Status) -> Response {
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded => {
                self.error_page(StatusCode::SERVICE_UNAVAILABLE, "The service is unavailable; try again shortly.")
            }
            Code::Internal | Code::Unknown | Code::Unimplemented => {
                tracing::warn!(code = ?s.code(), message = s.message(), "browser step failed");
                self.error_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; try again shortly.")
            }
            _ => self.error_page(StatusCode::BAD_REQUEST, s.message()),
        }
    }

    /// Sends the browser on: a 303 to the URL with the parameters in its query, or a page
    /// whose form posts them (`form_post`).
    fn deliver(&self, r: &pb::Redirect) -> Response {
        let parameters: BTreeMap<&str, &str> = r.parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if r.response_mode == "form_post" {
            return self.pages.render(
                StatusCode::OK,
                "form_post.html",
                minijinja::context! { action => &r.uri, parameters => parameters },
            );
        }
        let Ok(mut url) = url::Url::parse(&r.uri) else {
            return self.error_page(StatusCode::BAD_REQUEST, "The application's URL is not valid.");
        };
        if r.response_mode == "web_message" {
            // Auth0's silent authentication and popup login (auth0-spa-js): the answer is
            // posted to the window that opened or framed this page, at the redirect URI's
            // origin only; that origin alone may frame the page.
            let origin = url.origin().ascii_serialization();
            let message = serde_json::json!({ "type": "authorization_response", "response": parameters });
            return self.pages.render_framed(
                StatusCode::OK,
                "web_message.html",
                minijinja::context! { message => message.to_string(), origin => &origin },
                Some(&origin),
            );
        }
        if !parameters.is_empty() {
            let mut query = url.query_pairs_mut();
            for (k, v) in &parameters {
                query.append_pair(k, v);
            }
        }
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let Ok(v) = HeaderValue::from_str(url.as_str()) {
            response.headers_mut().insert(header::LOCATION, v);
        }
        security_headers(response.headers_mut());
        response
    }
}

fn param(q: &HashMap<String, String>, name: &str) -> String {
    q.get(name).cloned().unwrap_or_default()
}

/// `GET /<tenant>/authorize`.
pub(crate) async fn authorize(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let max_age = match q.get("max_age").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) => Some(n),
            // Out of range for the application too: it sent a malformed request.
            Err(_) => Some(-1),
        },
    };
    let request = pb::StartAuthorizationRequest {
        tenant: tenant.clone(),
        client_id: param(&q, "client_id"),
        redirect_uri: param(&q, "redirect_uri"),
        response_type: param(&q, "response_type"),
        scope: param(&q, "scope"),
        state: param(&q, "state"),
        nonce: param(&q, "nonce"),
        code_challenge: param(&q, "code_challenge"),
        code_challenge_method: param(&q, "code_challenge_method"),
        connection: param(&q, "connection"),
        login_hint: param(&q, "login_hint"),
        prompt: param(&q, "prompt"),
        max_age,
        response_mode: param(&q, "response_mode"),
        audience: param(&q, "audience"),
        session: cookie(&headers, SESSION_COOKIE).unwrap_or_default().to_owned(),
        ui_locales: param(&q, "ui_locales"),
        acr_values: param(&q, "acr_values"),
        display: param(&q, "display"),
        resource: param(&q, "resource"),
        id_token_hint: param(&q, "id_token_hint"),
        connection_scope: param(&q, "connection_scope"),
    };
    match oauth.start_authorization(request).await.map(|r| r.into_inner().outcome) {
        Ok(Some(pb::start_authorization_response::Outcome::Redirect(r))) => provider.deliver(&r),
        Ok(Some(pb::start_authorization_response::Outcome::Upstream(u))) => provider.to_upstream(&tenant, &u),
        Ok(Some(pb::start_authorization_response::Outcome::Login(login))) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            let location = format!("/{tenant}/login?tx={}", login.transaction);
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            security_headers(response.headers_mut());
            provider.set_cookie(
                &mut response,
                &tenant,
                &csrf_cookie_name(&login.transaction),
                &login.csrf_token,
                login.expires_in,
            );
            response
        }
        Ok(None) => provider.error_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; try again shortly."),
        Err(s) => provider.status_page(&s),
    }
}

/// What a signup form said, to show again with its problems.
#[derive(Debug, Default, Serialize)]
pub(crate) struct SignupState {
    connection: String,
    email: String,
    username: String,
    errors: BTreeMap<&'static str, String>,
}

/// A connection as the template sees it.
#[derive(Serialize)]
struct PageConnection {
    name: String,
    display_name: String,
    password: bool,
    signup: bool,
    requires_username: bool,
    password_rules: Vec<String>,
    redirect: bool,
    directory: bool,
    passwordless: String,
    magic_link: bool,
}

/// What the login page shows besides the transaction's connections: the answer's status,
/// a problem of the login form (and the username it had), the signup form's state, the
/// email of the home realm discovery box.
pub(crate) struct Shown<'a> {
    pub(crate) status: StatusCode,
    pub(crate) error: &'a str,
    pub(crate) username: Option<&'a str>,
    pub(crate) signup: SignupState,
    pub(crate) email: &'a str,
}

/// The login page of transaction `tx`.
pub(crate) async fn render_login(
    provider: &Provider,
    tenant: &str,
    tx: &str,
    csrf: &str,
    shown: Shown<'_>,
) -> Response {
    let Shown { status, error, username, signup, email } = shown;
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let page = match oauth
        .get_login_page(pb::GetLoginPageRequest {
            tenant: tenant.to_owned(),
            transaction: tx.to_owned(),
            email: email.to_owned(),
        })
        .await
    {
        Ok(p) => p.into_inner(),
        Err(s) => return provider.status_page(&s),
    };
    let shown = |c: pb::PageConnection| PageConnection {
        name: c.name,
        display_name: c.display_name,
        password: c.password,
        signup: c.signup,
        requires_username: c.requires_username,
        password_rules: c.password_rules,
        redirect: c.redirect,
        directory: c.directory,
        passwordless: c.passwordless,
        magic_link: c.magic_link,
    };
    let discovered = page.discovered.map(shown);
    // Nothing discovered: the email is probably a password login's. A discovered connection
    // with a password form (a directory) is the only form shown, the email as its username.
    let password_discovered = discovered.as_ref().filter(|d| d.password).map(|d| d.name.clone());
    let username =
        username.or((!email.is_empty() && (discovered.is_none() || password_discovered.is_some())).then_some(email));
    let connections: Vec<PageConnection> = page
        .connections
        .into_iter()
        .map(shown)
        .filter(|c| password_discovered.as_ref().is_none_or(|name| *name == c.name))
        .collect();
    let several = connections.iter().filter(|c| c.password).count() > 1;
    provider.pages.render(
        status,
        "login.html",
        minijinja::context! {
            // The forms post to the tenant's absolute paths: the page is also shown at the
            // address of a refused form (`/<tenant>/passwordless/start`,
            // `/<tenant>/login/upstream`), where a relative action would lead elsewhere.
            tenant => tenant,
            tenant_name => page.tenant_display_name,
            // The tenant service accepts only https logos; checked again as the page's own
            // rule (the CSP's `img-src https:` would block anything else anyway).
            logo_url => Some(page.tenant_logo_url).filter(|u| u.starts_with("https://")),
            client_name => page.client_name,
            connections => connections,
            several => several,
            tx => tx,
            csrf => csrf,
            error => error,
            username => username.unwrap_or(&page.login_hint),
            signup => signup,
            home_realm_discovery => page.home_realm_discovery,
            email => email,
            discovered => discovered,
        },
    )
}

/// The query of the login page.
#[derive(Deserialize)]
pub(crate) struct PageQuery {
    #[serde(default)]
    tx: String,
    /// The home realm discovery box's email.
    #[serde(default)]
    email: String,
}

/// `GET /<tenant>/login?tx=…`: the hosted login page.
pub(crate) async fn login_page(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    let Some(csrf) = cookie(&headers, &csrf_cookie_name(&q.tx)).filter(|_| !q.tx.is_empty()) else {
        return provider.error_page(
            StatusCode::BAD_REQUEST,
            "This login page has expired, or your browser did not keep its cookie. Go back to the application and \
             sign in again (cookies must be enabled).",
        );
    };
    let shown =
        Shown { status: StatusCode::OK, error: "", username: None, signup: SignupState::default(), email: &q.email };
    render_login(&provider, &tenant, &q.tx, csrf, shown).await
}

/// The fields of the login form.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    tx: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    connection: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// The fields of the signup form.
#[derive(Deserialize)]
pub(crate) struct SignupForm {
    #[serde(default)]
    tx: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    connection: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Whether the form's CSRF token is the one of the transaction's cookie.
pub(crate) fn csrf_ok(headers: &HeaderMap, tx: &str, posted: &str) -> bool {
    let Some(expected) = cookie(headers, &csrf_cookie_name(tx)) else { return false };
    !posted.is_empty() && postern_common::ids::constant_time_eq(expected.as_bytes(), posted.as_bytes())
}

pub(crate) fn csrf_refused(provider: &Provider) -> Response {
    provider.error_page(
        StatusCode::FORBIDDEN,
        "This form was not sent from its login page, or the page has expired. Go back to the application and sign \
         in again.",
    )
}

/// The browser's address, as the HTTP server saw it.
pub(crate) fn address(extensions: &Extensions) -> String {
    extensions.get::<postern_common::principal::PeerAddr>().map(|p| p.0.to_string()).unwrap_or_default()
}

/// After a successful login or signup: the session cookie, the transaction's CSRF cookie
/// dropped, and the browser sent back to the application with its code.
pub(crate) fn logged_in(provider: &Provider, tenant: &str, tx: &str, l: Option<pb::LoggedIn>) -> Response {
    let Some(l) = l else {
        return provider.error_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; try again shortly.");
    };
    let Some(redirect) = l.redirect.as_ref() else {
        return provider.error_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; try again shortly.");
    };
    let mut response = provider.deliver(redirect);
    provider.set_session_cookie(&mut response, tenant, &l.session, l.session_max_age);
    provider.set_cookie(&mut response, tenant, &csrf_cookie_name(tx), "", 0);
    response
}

/// `POST /<tenant>/login`: the login form.
pub(crate) async fn login(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(f): Form<LoginForm>,
) -> Response {
    if !csrf_ok(&headers, &f.tx, &f.csrf) {
        return csrf_refused(&provider);
    }
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let request = pb::SubmitLoginRequest {
        tenant: tenant.clone(),
        transaction: f.tx.clone(),
        csrf_token: f.csrf.clone(),
        connection: f.connection.clone(),
        username: f.username.clone(),
        password: f.password,
        address: address(&extensions),
    };
    match oauth.submit_login(request).await {
        Ok(r) => logged_in(&provider, &tenant, &f.tx, r.into_inner().logged_in),
        Err(s) => {
            let status = match s.code() {
                Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                Code::PermissionDenied => StatusCode::FORBIDDEN,
                Code::InvalidArgument => StatusCode::BAD_REQUEST,
                _ => return provider.status_page(&s),
            };
            let shown = Shown {
                status,
                error: s.message(),
                username: Some(&f.username),
                signup: SignupState::default(),
                email: "",
            };
            render_login(&provider, &tenant, &f.tx, &f.csrf, shown).await
        }
    }
}

/// `POST /<tenant>/signup`: the signup form.
pub(crate) async fn signup(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(f): Form<SignupForm>,
) -> Response {
    if !csrf_ok(&headers, &f.tx, &f.csrf) {
        return csrf_refused(&provider);
    }
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let request = pb::SubmitSignupRequest {
        tenant: tenant.clone(),
        transaction: f.tx.clone(),
        csrf_token: f.csrf.clone(),
        connection: f.connection.clone(),
        email: f.email.clone(),
        username: f.username.clone(),
        password: f.password,
        address: address(&extensions),
    };
    match oauth.submit_signup(request).await {
        Ok(r) => logged_in(&provider, &tenant, &f.tx, r.into_inner().logged_in),
        Err(s) => {
            let mut state =
                SignupState { connection: f.connection, email: f.email, username: f.username, errors: BTreeMap::new() };
            let status = match s.code() {
                Code::InvalidArgument => {
                    let details = s.get_error_details();
                    for v in details.bad_request().map(|b| b.field_violations.clone()).unwrap_or_default() {
                        let key = match v.field.rsplit('.').next().unwrap_or("") {
                            "email" => "email",
                            "username" => "username",
                            "password" => "password",
                            _ => "other",
                        };
                        let entry = state.errors.entry(key).or_default();
                        if !entry.is_empty() {
                            entry.push_str("; ");
                        }
                        entry.push_str(&v.description);
                    }
                    if state.errors.is_empty() {
                        state.errors.insert("other", s.message().to_owned());
                    }
                    StatusCode::BAD_REQUEST
                }
                Code::AlreadyExists => {
                    state.errors.insert("email", "A user with this email address or username already exists.".into());
                    StatusCode::CONFLICT
                }
                Code::PermissionDenied | Code::FailedPrecondition => {
                    state.errors.insert("other", s.message().to_owned());
                    StatusCode::FORBIDDEN
                }
                _ => return provider.status_page(&s),
            };
            let shown = Shown { status, error: "", username: None, signup: state, email: "" };
            render_login(&provider, &tenant, &f.tx, &f.csrf, shown).await
        }
    }
}

/// The binding cookie of an upstream login: this prefix, then the state's first characters.
const UPSTREAM_COOKIE_PREFIX: &str = "postern_up_";

fn upstream_cookie_name(state: &str) -> String {
    let short: String = state.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
    format!("{UPSTREAM_COOKIE_PREFIX}{short}")
}

impl Provider {
    /// Sends the browser to an upstream (a 303, or a page whose form posts there) with the
    /// login's binding cookie. An upstream may answer with a cross-site form post (Apple's
    /// `form_post`), which a `SameSite=Lax` cookie would miss: over https the cookie is
    /// `SameSite=None; Secure` (it names nothing but this one login, and is useless without
    /// the upstream's answer).
    fn to_upstream(&self, tenant: &str, u: &pb::UpstreamLogin) -> Response {
        let mut response = if u.form_fields.is_empty() {
            let mut response = StatusCode::SEE_OTHER.into_response();
            match HeaderValue::from_str(&u.url) {
                Ok(v) => {
                    response.headers_mut().insert(header::LOCATION, v);
                }
                Err(_) => return self.error_page(StatusCode::BAD_GATEWAY, "The upstream's login URL is not valid."),
            }
            security_headers(response.headers_mut());
            response
        } else {
            let parameters: BTreeMap<&str, &str> =
                u.form_fields.iter().map(|f| (f.name.as_str(), f.value.as_str())).collect();
            self.pages.render(
                StatusCode::OK,
                "form_post.html",
                minijinja::context! { action => &u.url, parameters => parameters },
            )
        };
        self.set_cross_site_cookie(&mut response, tenant, &upstream_cookie_name(&u.state), &u.binding, u.expires_in);
        response
    }
}

/// The fields of a "Continue with …" button.
#[derive(Deserialize)]
pub(crate) struct UpstreamForm {
    #[serde(default)]
    tx: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    connection: String,
}

/// `POST /<tenant>/login/upstream`: a "Continue with …" button of the hosted page.
pub(crate) async fn login_upstream(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(f): Form<UpstreamForm>,
) -> Response {
    if !csrf_ok(&headers, &f.tx, &f.csrf) {
        return csrf_refused(&provider);
    }
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let request = pb::StartUpstreamLoginRequest {
        tenant: tenant.clone(),
        transaction: f.tx,
        csrf_token: f.csrf,
        connection: f.connection,
    };
    match oauth.start_upstream_login(request).await.map(|r| r.into_inner().upstream) {
        Ok(Some(u)) => provider.to_upstream(&tenant, &u),
        Ok(None) => provider.error_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; try again shortly."),
        Err(s) => provider.status_page(&s),
    }
}

/// `GET /<tenant>/login/callback`: an upstream's answer in the query.
pub(crate) async fn callback_get(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    callback(&provider, tenant, &headers, &extensions, q).await
}

/// `POST /<tenant>/login/callback`: an upstream's answer in a form (`form_post`, SAML). The
/// query's `connection` (`/login/callback?connection=<name>`, where an identity provider
/// posts IdP-initiated logins) joins the form's parameters.
pub(crate) async fn callback_post(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
    Query(q): Query<HashMap<String, String>>,
    Form(mut f): Form<HashMap<String, String>>,
) -> Response {
    if let Some(connection) = q.get("connection") {
        f.insert("connection".into(), connection.clone());
    }
    callback(&provider, tenant, &headers, &extensions, f).await
}

/// Completes an upstream login: the application's code (and the session cookie), or the
/// application's error; the login's binding cookie is dropped either way.
async fn callback(
    provider: &Provider,
    tenant: String,
    headers: &HeaderMap,
    extensions: &Extensions,
    parameters: HashMap<String, String>,
) -> Response {
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let state = parameters.get("state").or_else(|| parameters.get("RelayState")).cloned().unwrap_or_default();
    let cookie_name = upstream_cookie_name(&state);
    let request = pb::CompleteUpstreamLoginRequest {
        tenant: tenant.clone(),
        binding: cookie(headers, &cookie_name).unwrap_or_default().to_owned(),
        parameters,
        address: address(extensions),
    };
    let mut response = match oauth.complete_upstream_login(request).await.map(|r| r.into_inner().outcome) {
        Ok(Some(pb::complete_upstream_login_response::Outcome::LoggedIn(l))) => {
            let Some(redirect) = l.redirect.as_ref() else {
                return provider
                    .error_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; try again shortly.");
            };
            let mut response = provider.deliver(redirect);
            provider.set_session_cookie(&mut response, &tenant, &l.session, l.session_max_age);
            response
        }
        Ok(Some(pb::complete_upstream_login_response::Outcome::Redirect(r))) => provider.deliver(&r),
        Ok(None) => {
            return provider.error_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; try again shortly.");
        }
        Err(s) => provider.status_page(&s),
    };
    if !state.is_empty() {
        provider.set_cookie(&mut response, &tenant, &cookie_name, "", 0);
    }
    response
}

/// `GET /<tenant>/v2/logout` (Auth0: `client_id`, `returnTo`) and `GET /<tenant>/oidc/logout`
/// (OpenID: `id_token_hint`, `post_logout_redirect_uri`, `state`, `client_id`).
pub(crate) async fn logout(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let return_to = q.get("returnTo").or_else(|| q.get("post_logout_redirect_uri")).cloned().unwrap_or_default();
    let request = pb::EndSessionRequest {
        tenant: tenant.clone(),
        session: cookie(&headers, SESSION_COOKIE).unwrap_or_default().to_owned(),
        client_id: param(&q, "client_id"),
        return_to,
        id_token_hint: param(&q, "id_token_hint"),
        state: param(&q, "state"),
        // Auth0's `?federated`: present (with no value, or any but `false` or `0`).
        federated: q.get("federated").is_some_and(|v| !matches!(v.as_str(), "false" | "0")),
    };
    match oauth.end_session(request).await {
        Ok(r) => {
            let r = r.into_inner();
            let mut response = match &r.redirect {
                Some(redirect) => provider.deliver(redirect),
                None => provider.pages.render(StatusCode::OK, "logged_out.html", minijinja::context! {}),
            };
            provider.set_session_cookie(&mut response, &tenant, "", 0);
            response
        }
        Err(s) => provider.status_page(&s),
    }
}

/// `GET /<tenant>/logout/callback`: an upstream's answer to a federated logout by
/// HTTP-Redirect (a SAML `LogoutResponse` and its `RelayState` in the query).
pub(crate) async fn logout_callback_get(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    logout_callback(&provider, tenant, q).await
}

/// `POST /<tenant>/logout/callback`: the same answer by HTTP-POST.
pub(crate) async fn logout_callback_post(
    State(provider): State<Arc<Provider>>,
    Path(tenant): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    logout_callback(&provider, tenant, f).await
}

/// Sends the browser back from the upstream's logout to the application's logout URL, or
/// shows the logged-out page.
async fn logout_callback(provider: &Provider, tenant: String, parameters: HashMap<String, String>) -> Response {
    let Some(mut oauth) = provider.oauth() else { return provider.status_page(&tonic::Status::unavailable("")) };
    let request = pb::CompleteUpstreamLogoutRequest { tenant, parameters };
    match oauth.complete_upstream_logout(request).await.map(|r| r.into_inner().redirect) {
        Ok(Some(redirect)) => provider.deliver(&redirect),
        Ok(None) => provider.pages.render(StatusCode::OK, "logged_out.html", minijinja::context! {}),
        Err(s) => provider.status_page(&s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; postern_session=abc; b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "postern"), None);
        assert_eq!(csrf_cookie_name("AbC-_123456789012345678"), "postern_csrf_AbC1234567890123");
    }

    fn provider(secure_cookies: bool) -> Provider {
        let config = crate::ProviderConfig {
            authn: Arc::new(|| None),
            internal_key: postern_common::principal::InternalKey::generate(),
            secure_cookies,
            coherence: Default::default(),
        };
        Provider { config, documents: Default::default(), pages: crate::html::Pages::new() }
    }

    fn set_cookies(response: &Response) -> Vec<String> {
        response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Over https the session cookie may come back from another site's iframe (`None;
    /// Secure`) and the CSRF cookie may not; over http both are `Lax`, since browsers refuse
    /// `None` without `Secure`.
    #[test]
    fn the_session_cookie_crosses_sites_only_over_https() {
        let mut response = StatusCode::OK.into_response();
        let https = provider(true);
        https.set_session_cookie(&mut response, "fabrikam", "abc", 60);
        https.set_cookie(&mut response, "fabrikam", "postern_csrf_x", "def", 60);
        assert_eq!(
            set_cookies(&response),
            [
                "postern_session=abc; Path=/fabrikam/; Max-Age=60; HttpOnly; SameSite=None; Secure",
                "postern_csrf_x=def; Path=/fabrikam/; Max-Age=60; HttpOnly; SameSite=Lax; Secure",
            ]
        );
        let mut response = StatusCode::OK.into_response();
        let http = provider(false);
        http.set_session_cookie(&mut response, "fabrikam", "", 0);
        http.set_cookie(&mut response, "fabrikam", "postern_csrf_x", "def", 60);
        assert_eq!(
            set_cookies(&response),
            [
                "postern_session=; Path=/fabrikam/; Max-Age=0; HttpOnly; SameSite=Lax",
                "postern_csrf_x=def; Path=/fabrikam/; Max-Age=60; HttpOnly; SameSite=Lax",
            ]
        );
    }
}
