//! Redirect logins through an upstream (OIDC, OAuth2 social, SAML), as the provider's
//! internal RPCs: `StartUpstreamLogin` (a button of the hosted page), the
//! `connection=` shortcut of `StartAuthorization`, and `CompleteUpstreamLogin` (the
//! `/login/callback` route).
//!
//! A start makes an upstream login transaction: a fresh `state` (the lookup key, stored as
//! its digest), `nonce` and PKCE verifier (sealed under the master key, bound to the tenant
//! and the state's digest), a browser binding (the digest of a cookie the provider sets),
//! and the application's validated request. A callback reads the transaction, the connector
//! validates the upstream's answer, and only an accepted answer stores anything: the user,
//! its session and the application's code, with the transaction used up, in one write
//! transaction (one fsync on SQLite), of which for two callbacks with the same state only
//! one commits. A refused callback uses the transaction up at once. Either way a replayed
//! callback finds nothing. Whatever goes wrong after the transaction is found goes back to
//! the application as an RFC 6749 error with its `state`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postern_common::error::{internal, not_found};
use postern_common::ids::constant_time_eq;
use postern_common::seal::MasterKey;
use postern_connector::{RedirectTransaction, UpstreamRequest, UpstreamTokens};
use postern_proto::authn::v1 as pb;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use super::{AuthRequest, OAuthApi, micros, new_secret};
use crate::store::oauth::{UsesUp, secret_digest};
use crate::store::upstream::{NewUpstreamTransaction, UpstreamTransaction};

/// The seal label of an upstream transaction's secrets.
const TRANSACTION_LABEL: &[u8] = b"postern upstream transaction";
/// The seal label of an identity's upstream tokens.
pub(crate) const TOKENS_LABEL: &[u8] = b"postern upstream tokens";
/// The sealing label of a federated logout's relay state.
const LOGOUT_RELAY_LABEL: &[u8] = b"postern logout relay";
/// The sealing label of what an upstream's logout needs of a login (an ID token, a SAML
/// subject), kept on the SSO session.
const UPSTREAM_SESSION_LABEL: &[u8] = b"postern upstream session";

/// `plain` (a connector's `Completed::upstream_session`) sealed for the SSO session of
/// `session_hash` at `tenant`, as text for its row.
pub(crate) fn seal_upstream_session(
    master: &MasterKey,
    tenant: &str,
    session_hash: &str,
    plain: &str,
) -> Result<String, Status> {
    let sealed =
        master.seal(UPSTREAM_SESSION_LABEL, &[tenant, session_hash], plain.as_bytes()).map_err(|e| internal(&e))?;
    Ok(URL_SAFE_NO_PAD.encode(sealed))
}

/// What [`seal_upstream_session`] sealed, or empty when nothing was kept or it cannot be
/// opened (a master key since retired: the logout then ends Postern's session alone).
fn open_upstream_session(master: &MasterKey, tenant: &str, session_hash: &str, sealed: &str) -> String {
    if sealed.is_empty() {
        return String::new();
    }
    URL_SAFE_NO_PAD
        .decode(sealed)
        .ok()
        .and_then(|bytes| master.open(UPSTREAM_SESSION_LABEL, &[tenant, session_hash], &bytes).ok())
        .and_then(|plain| String::from_utf8(plain.to_vec()).ok())
        .unwrap_or_default()
}

/// Where a federated logout goes once the upstream has answered at the logout callback,
/// sealed (and so tamper-proof) into the relay state the upstream hands back.
#[derive(Serialize, Deserialize)]
struct LogoutRelay {
    /// The application's `return_to`, checked against its allowed logout URLs (empty: none).
    return_to: String,
    /// The application's `state`.
    state: String,
    /// Until when the relay state is good (unix microseconds).
    until: i64,
}

/// The secret parts of an upstream transaction, sealed at rest.
#[derive(Serialize, Deserialize)]
struct Sealed {
    nonce: String,
    code_verifier: String,
    #[serde(default)]
    data: serde_json::Value,
}

/// Seals an identity's upstream tokens for storage (base64), bound to the identity.
pub(crate) fn seal_tokens(
    master: &MasterKey,
    tenant: &str,
    connection_id: &str,
    source_id: &str,
    tokens: &UpstreamTokens,
) -> Result<String, Status> {
    let json = zeroize::Zeroizing::new(serde_json::to_vec(tokens).map_err(|e| internal(&e))?);
    let sealed = master.seal(TOKENS_LABEL, &[tenant, connection_id, source_id], &json).map_err(|e| internal(&e))?;
    Ok(URL_SAFE_NO_PAD.encode(sealed))
}

/// Opens what [`seal_tokens`] sealed for the same identity.
#[cfg(test)]
pub(crate) fn open_tokens(
    master: &MasterKey,
    tenant: &str,
    connection_id: &str,
    source_id: &str,
    sealed: &str,
) -> Result<UpstreamTokens, Status> {
    let bytes = URL_SAFE_NO_PAD.decode(sealed).map_err(|e| internal(&e))?;
    let json = master.open(TOKENS_LABEL, &[tenant, connection_id, source_id], &bytes).map_err(|e| internal(&e))?;
    serde_json::from_slice(&json).map_err(|e| internal(&e))
}

/// An error for the application, at its redirect URI, with its `state`.
fn app_error(request: &AuthRequest, error: &str, description: &str) -> pb::Redirect {
    let mut parameters = std::collections::HashMap::from([
        ("error".to_owned(), error.to_owned()),
        ("error_description".to_owned(), description.to_owned()),
    ]);
    if !request.state.is_empty() {
        parameters.insert("state".into(), request.state.clone());
    }
    pb::Redirect { uri: request.redirect_uri.clone(), response_mode: request.response_mode.clone(), parameters }
}

/// The RFC 6749 error of a failed upstream step: the upstream or this service unavailable,
/// a failure of this process, or else a refused login.
fn error_of(s: &Status) -> (&'static str, String) {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => {
            ("temporarily_unavailable", format!("the login could not be completed: {}", s.message()))
        }
        Code::Internal | Code::Unknown | Code::DataLoss => {
            ("server_error", "the login could not be completed; try again shortly".to_owned())
        }
        _ => ("access_denied", s.message().to_owned()),
    }
}

impl OAuthApi {
    /// Where a federated logout goes: the session's upstream's logout, when its connection
    /// offers one (see `RedirectConnector::logout`), with a sealed relay state naming the
    /// application's `return_to` and `state` for the upstream that answers at the logout
    /// callback.
    pub(super) async fn upstream_logout(
        &self,
        req: &pb::EndSessionRequest,
        session_hash: &str,
        session: &crate::store::oauth::EndedSession,
    ) -> Result<Option<String>, Status> {
        let relay = LogoutRelay {
            return_to: req.return_to.clone(),
            state: req.state.clone(),
            until: self.now().saturating_add(micros(self.oauth.transaction_lifetime)),
        };
        let json = serde_json::to_vec(&relay).map_err(|e| internal(&e))?;
        let master = &self.authn.config.master_key;
        let sealed = master.seal(LOGOUT_RELAY_LABEL, &[&req.tenant], &json).map_err(|e| internal(&e))?;
        let relay = URL_SAFE_NO_PAD.encode(sealed);
        let callback_url = self.logout_callback_url(&req.tenant);
        let kept = open_upstream_session(master, &req.tenant, session_hash, &session.upstream_session);
        let logout = postern_connector::UpstreamLogout {
            session: &kept,
            return_to: &req.return_to,
            state: &req.state,
            callback_url: &callback_url,
            relay: &relay,
        };
        Ok(self.authn.federated_logout(&req.tenant, &session.connection, &logout).await)
    }

    /// `CompleteUpstreamLogout`: the application's `return_to` and `state` of the relay
    /// state, when it is this tenant's, unaltered and not too old.
    pub(super) fn finish_upstream_logout(
        &self,
        req: &pb::CompleteUpstreamLogoutRequest,
    ) -> Result<pb::CompleteUpstreamLogoutResponse, Status> {
        let tenant = req.tenant.as_str();
        if req.parameters.contains_key("SAMLRequest") {
            // An IdP-initiated logout: not served, and not pretended to be.
            return Err(postern_common::error::failed_precondition(
                "IDP_INITIATED_LOGOUT_UNSUPPORTED",
                "an identity provider's own LogoutRequest (IdP-initiated single logout) is not supported: no session \
                 here was ended; log out at the application (/v2/logout)",
            ));
        }
        let relay = req.parameters.get("RelayState").filter(|r| !r.is_empty() && r.len() <= 4096);
        let opened = relay.and_then(|r| URL_SAFE_NO_PAD.decode(r).ok()).and_then(|sealed| {
            let json = self.authn.config.master_key.open(LOGOUT_RELAY_LABEL, &[tenant], &sealed).ok()?;
            serde_json::from_slice::<LogoutRelay>(&json).ok()
        });
        let answered = if req.parameters.contains_key("SAMLResponse") { "a SAML LogoutResponse" } else { "no answer" };
        let Some(relay) = opened.filter(|r| r.until > self.now()) else {
            tracing::info!(tenant, answered, "upstream logout callback without a live relay state of this tenant");
            return Ok(pb::CompleteUpstreamLogoutResponse { redirect: None });
        };
        tracing::info!(tenant, answered, "upstream logout completed");
        if relay.return_to.is_empty() {
            return Ok(pb::CompleteUpstreamLogoutResponse { redirect: None });
        }
        let mut parameters = std::collections::HashMap::new();
        if !relay.state.is_empty() {
            parameters.insert("state".to_owned(), relay.state);
        }
        Ok(pb::CompleteUpstreamLogoutResponse {
            redirect: Some(pb::Redirect { uri: relay.return_to, response_mode: "query".into(), parameters }),
        })
    }

    /// The tenant's logout callback (`/<tenant>/logout/callback`): where an upstream answers
    /// a federated logout.
    pub(super) fn logout_callback_url(&self, tenant: &str) -> String {
        format!("{}logout/callback", self.issuer(tenant))
    }

    /// The tenant's login callback (`/<tenant>/login/callback`), where upstreams answer.
    pub(super) fn callback_url(&self, tenant: &str) -> String {
        format!("{}login/callback", self.issuer(tenant))
    }

    /// Starts a login at `connection`'s upstream for the application's `request`: stores
    /// the transaction and answers where the browser goes.
    pub(super) async fn begin_upstream(
        &self,
        tenant: &str,
        request: &AuthRequest,
        connection: &str,
    ) -> Result<pb::UpstreamLogin, Status> {
        let (state, binding) = (new_secret(), new_secret());
        let mut tx = RedirectTransaction {
            state: state.clone(),
            nonce: new_secret(),
            code_verifier: new_secret(),
            callback_url: self.callback_url(tenant),
            login_hint: request.login_hint.clone(),
            upstream_params: Vec::new(),
            extra_scopes: Vec::new(),
            data: serde_json::Value::Null,
        };
        let begun =
            self.authn.begin_redirect(tenant, &request.client_id, connection, &tx, &request.forwardable()).await?;
        tx.data = begun.data;
        let state_hash = secret_digest(&state);
        let secrets = Sealed { nonce: tx.nonce, code_verifier: tx.code_verifier, data: tx.data };
        let json = zeroize::Zeroizing::new(serde_json::to_vec(&secrets).map_err(|e| internal(&e))?);
        let master = &self.authn.config.master_key;
        let sealed = master.seal(TRANSACTION_LABEL, &[tenant, &state_hash], &json).map_err(|e| internal(&e))?;
        let now = self.now();
        let lifetime = self.oauth.transaction_lifetime;
        self.store()
            .create_upstream_transaction(&NewUpstreamTransaction {
                tenant,
                state_hash: &state_hash,
                binding_hash: &secret_digest(&binding),
                client_id: &request.client_id,
                connection,
                request: &serde_json::to_string(request).map_err(|e| internal(&e))?,
                sealed: &URL_SAFE_NO_PAD.encode(sealed),
                now,
                expire_time: now.saturating_add(micros(lifetime)),
            })
            .await?;
        let (url, form_fields) = match begun.request {
            UpstreamRequest::Redirect(url) => (url, Vec::new()),
            UpstreamRequest::FormPost { url, fields } => {
                (url, fields.into_iter().map(|(name, value)| pb::FormField { name, value }).collect())
            }
        };
        tracing::info!(tenant = %tenant, client_id = %request.client_id, connection = %connection, "upstream login started");
        Ok(pb::UpstreamLogin {
            url,
            form_fields,
            binding,
            state,
            expires_in: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX),
        })
    }

    /// `StartAuthorization` naming a redirect connection: straight to its upstream, or back
    /// to the application when the upstream cannot be reached.
    pub(super) async fn authorize_upstream(
        &self,
        tenant: &str,
        request: &AuthRequest,
    ) -> Result<pb::start_authorization_response::Outcome, Status> {
        use pb::start_authorization_response::Outcome;
        match self.begin_upstream(tenant, request, &request.connection).await {
            Ok(upstream) => Ok(Outcome::Upstream(upstream)),
            Err(s) => {
                let (error, description) = error_of(&s);
                if error == "server_error" {
                    tracing::warn!(code = ?s.code(), message = s.message(), "upstream login could not start");
                }
                Ok(Outcome::Redirect(app_error(request, error, &description)))
            }
        }
    }

    /// `StartUpstreamLogin`.
    pub(super) async fn start_upstream(
        &self,
        req: &pb::StartUpstreamLoginRequest,
    ) -> Result<pb::StartUpstreamLoginResponse, Status> {
        let request = self.transaction(&req.tenant, &req.transaction, Some(&req.csrf_token)).await?;
        Self::check_connection(&request, &req.connection)?;
        let upstream = self.begin_upstream(&req.tenant, &request, &req.connection).await?;
        Ok(pb::StartUpstreamLoginResponse { upstream: Some(upstream) })
    }

    /// `CompleteUpstreamLogin`. The transaction is read, not used up yet: the login's one
    /// write uses it up with the user's record, the session and the code (of two callbacks
    /// with the same state, exactly one completes); any refusal uses it up at once. Either
    /// way a replayed callback finds nothing.
    pub(super) async fn complete_upstream(
        &self,
        req: &pb::CompleteUpstreamLoginRequest,
    ) -> Result<pb::CompleteUpstreamLoginResponse, Status> {
        use pb::complete_upstream_login_response::Outcome;
        let gone = || {
            not_found(
                "UPSTREAM_LOGIN_NOT_FOUND",
                "this login has expired or was already completed; go back to the application and sign in again",
            )
        };
        let tenant = req.tenant.as_str();
        let state = req.parameters.get("state").or_else(|| req.parameters.get("RelayState"));
        let state = state.filter(|s| !s.is_empty() && s.len() <= 128);
        let found = match state {
            Some(state) => self.store().upstream_transaction(tenant, &secret_digest(state)).await?,
            None => None,
        };
        let (Some(state), Some(found)) = (state, found) else {
            // No login of ours: an unsolicited answer (an IdP-initiated login) when the
            // callback names its connection (`/login/callback?connection=`).
            return match req.parameters.get("connection").filter(|c| !c.is_empty()) {
                Some(connection) => self.complete_unsolicited(req, connection).await,
                None => Err(gone()),
            };
        };
        let state_hash = secret_digest(state);
        let request: AuthRequest = match serde_json::from_str(&found.request) {
            Ok(r) => r,
            Err(e) => {
                self.store().take_upstream_transaction(tenant, &state_hash).await?;
                return Err(internal(&e));
            }
        };
        match self.finish_upstream(req, state, &state_hash, &found, &request).await {
            Ok(logged_in) => Ok(pb::CompleteUpstreamLoginResponse { outcome: Some(Outcome::LoggedIn(logged_in)) }),
            Err(s) => {
                self.store().take_upstream_transaction(tenant, &state_hash).await?;
                let (error, description) = error_of(&s);
                if error == "server_error" {
                    tracing::warn!(code = ?s.code(), message = s.message(), "upstream login failed");
                }
                tracing::info!(tenant = %tenant, client_id = %request.client_id, connection = %found.connection, error, description, "upstream login refused");
                Ok(pb::CompleteUpstreamLoginResponse {
                    outcome: Some(Outcome::Redirect(app_error(&request, error, &description))),
                })
            }
        }
    }

    /// An unsolicited answer at `connection` (an IdP-initiated login): logs the user in to
    /// the application the connection names, as if it had called `/authorize` with the
    /// connection's query (validated as `/authorize` validates it, the code sent to the
    /// client's first callback URL). Before the application is known a refusal is an error
    /// page (the connection accepts no such logins, the client is gone); after, it goes to
    /// the application as `access_denied`, and stores nothing.
    async fn complete_unsolicited(
        &self,
        req: &pb::CompleteUpstreamLoginRequest,
        connection: &str,
    ) -> Result<pb::CompleteUpstreamLoginResponse, Status> {
        use pb::complete_upstream_login_response::Outcome;
        let tenant = req.tenant.as_str();
        let target = self.authn.unsolicited_client(tenant, connection).await?;
        let client = self.client(tenant, &target.client_id).await?;
        let Some(redirect_uri) = client.callbacks.first() else {
            return Err(postern_common::error::failed_precondition(
                "CLIENT_HAS_NO_CALLBACK",
                format!(
                    "connection {connection:?} logs IdP-initiated logins in to client {:?}, which has no callback URL",
                    target.client_id
                ),
            ));
        };
        let query = &target.authorize_params;
        let param = |k: &str, default: &'static str| query.get(k).map_or(default, String::as_str).to_owned();
        let (response_type, scope, audience) =
            (param("response_type", "code"), param("scope", "openid"), param("audience", ""));
        let params = super::AuthParams {
            tenant,
            redirect_uri,
            response_type: &response_type,
            response_mode: "",
            scope: &scope,
            state: "",
            nonce: "",
            code_challenge: "",
            code_challenge_method: "",
            connection,
            login_hint: "",
            prompt: "",
            max_age: None,
            audience: &audience,
            other: super::OtherParams::default(),
        };
        let request = match self.authorization_request(&client, &params).await? {
            Ok(request) => request,
            Err(refusal) => {
                return Err(postern_common::error::failed_precondition(
                    "UNSOLICITED_LOGIN_MISCONFIGURED",
                    format!(
                        "connection {connection:?}: the IdP-initiated login's request for client {:?} is refused \
                         ({}: {})",
                        target.client_id, refusal.parameter, refusal.description
                    ),
                ));
            }
        };
        let login = self.new_login();
        let grant = crate::store::oauth::LoginGrant { connection, ..self.login_grant(&login, &request, None) };
        let callback = crate::login::UnsolicitedCallback {
            params: &req.parameters,
            callback_url: &self.callback_url(tenant),
            address: &req.address,
        };
        match self.authn.complete_unsolicited(tenant, &request.client_id, connection, callback, &grant).await {
            Ok(user) => {
                tracing::info!(tenant = %tenant, client_id = %request.client_id, connection = %connection, "IdP-initiated login");
                Ok(pb::CompleteUpstreamLoginResponse {
                    outcome: Some(Outcome::LoggedIn(self.login_answer(tenant, &request, &user.user_id, login))),
                })
            }
            Err(s) => {
                let (error, description) = error_of(&s);
                if error == "server_error" {
                    tracing::warn!(code = ?s.code(), message = s.message(), "IdP-initiated login failed");
                }
                tracing::info!(tenant = %tenant, client_id = %request.client_id, connection = %connection, error, description, "IdP-initiated login refused");
                Ok(pb::CompleteUpstreamLoginResponse {
                    outcome: Some(Outcome::Redirect(app_error(&request, error, &description))),
                })
            }
        }
    }

    /// Checks the callback against its transaction `found`, lets the connector validate the
    /// upstream's answer, and stores the login: the user, its session and code, the
    /// transaction used up, in one write. An error is a refusal for the application.
    async fn finish_upstream(
        &self,
        req: &pb::CompleteUpstreamLoginRequest,
        state: &str,
        state_hash: &str,
        found: &UpstreamTransaction,
        request: &AuthRequest,
    ) -> Result<pb::LoggedIn, Status> {
        let tenant = req.tenant.as_str();
        if found.expire_time <= self.now() {
            return Err(Status::permission_denied("the login at the upstream took too long; sign in again"));
        }
        if req.binding.is_empty()
            || !constant_time_eq(secret_digest(&req.binding).as_bytes(), found.binding_hash.as_bytes())
        {
            return Err(Status::permission_denied("the login was not completed in the browser that started it"));
        }
        let bytes = URL_SAFE_NO_PAD.decode(&found.sealed).map_err(|e| internal(&e))?;
        let json = self
            .authn
            .config
            .master_key
            .open(TRANSACTION_LABEL, &[tenant, state_hash], &bytes)
            .map_err(|e| internal(&e))?;
        let secrets: Sealed = serde_json::from_slice(&json).map_err(|e| internal(&e))?;
        let tx = RedirectTransaction {
            state: state.to_owned(),
            nonce: secrets.nonce,
            code_verifier: secrets.code_verifier,
            callback_url: self.callback_url(tenant),
            login_hint: request.login_hint.clone(),
            upstream_params: Vec::new(),
            extra_scopes: Vec::new(),
            data: secrets.data,
        };
        let login = self.new_login();
        let grant = crate::store::oauth::LoginGrant {
            connection: &found.connection,
            ..self.login_grant(&login, request, Some(UsesUp::Upstream(state_hash)))
        };
        let user = self
            .authn
            .complete_redirect(
                tenant,
                &request.client_id,
                &found.connection,
                crate::login::Callback { params: &req.parameters, transaction: &tx, address: &req.address },
                &grant,
            )
            .await?;
        Ok(self.login_answer(tenant, request, &user.user_id, login))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_session_is_sealed_and_opens_only_for_its_session() {
        let master = MasterKey::generate().expect("key");
        let plain = r#"{"id_token":"eyJhbGciOi.payload.signature"}"#;
        let sealed = seal_upstream_session(&master, "t", "session-hash", plain).expect("sealed");
        assert!(!sealed.contains("eyJ") && !sealed.contains("id_token"), "{sealed}");
        assert_eq!(open_upstream_session(&master, "t", "session-hash", &sealed), plain);
        assert_eq!(open_upstream_session(&master, "t", "another-session", &sealed), "");
        assert_eq!(open_upstream_session(&master, "u", "session-hash", &sealed), "");
        assert_eq!(open_upstream_session(&master, "t", "session-hash", ""), "");
    }

    #[test]
    fn tokens_open_only_for_their_identity() {
        let master = MasterKey::generate().expect("key");
        let tokens = UpstreamTokens {
            access_token: "upstream-access-token".into(),
            refresh_token: "upstream-refresh-token".into(),
            ..Default::default()
        };
        let sealed = seal_tokens(&master, "t", "con_1", "u1", &tokens).expect("sealed");
        assert!(!sealed.contains("upstream-access-token"), "not in clear");
        assert_eq!(open_tokens(&master, "t", "con_1", "u1", &sealed).expect("opens"), tokens);
        assert!(open_tokens(&master, "t", "con_1", "u2", &sealed).is_err(), "bound to the identity");
        assert!(open_tokens(&master, "other", "con_1", "u1", &sealed).is_err(), "bound to the tenant");
    }

    #[test]
    fn failures_map_to_rfc6749_errors() {
        assert_eq!(error_of(&Status::unavailable("down")).0, "temporarily_unavailable");
        assert_eq!(error_of(&Status::internal("x")).0, "server_error");
        assert_eq!(error_of(&Status::permission_denied("bad token")).0, "access_denied");
        assert_eq!(error_of(&Status::permission_denied("bad token")).1, "bad token");
    }
}
