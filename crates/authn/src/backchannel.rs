//! OpenID Connect Back-Channel Logout 1.0, Postern as the provider: when SSO sessions end
//! by a logout or with their user's deletion, each client that got a code in one of them
//! and has a `backchannel_logout_uri` is sent a logout token, which the
//! [`LogoutNotifier`](postern_connector::LogoutNotifier) the binary registered delivers.

use serde::Serialize;

use crate::AuthnApi;
use crate::oauth::{seconds, session_id};

/// A back-channel logout token (§2.4): `sub` and `sid` name the user and the session; it
/// carries no `nonce`, so that it passes for no ID token, and its header's `typ` is
/// `logout+jwt`.
#[derive(Serialize)]
struct LogoutToken<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    sid: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
    events: serde_json::Value,
}

/// How long a logout token is valid: enough for a receiver's clock to differ.
const LIFETIME_SECS: u64 = 120;

impl AuthnApi {
    /// Sends a logout token to each client of the ended sessions `sessions` of `user_id`
    /// (each the digest of its cookie, and the clients that got a code in it) that has a
    /// back-channel logout URI, each delivery in a task of its own so that the caller (a
    /// browser's logout, a user's deletion) waits for none: a receiver that is slow, down
    /// or refusing is logged, and the caller goes on (Auth0 sends them the same way).
    pub(crate) async fn notify_backchannel(&self, tenant: &str, user_id: &str, sessions: &[(&str, &[String])]) {
        if sessions.iter().all(|(_, clients)| clients.is_empty()) {
            return;
        }
        let Some(notifier) = self.config.connectors.logout_notifier().cloned() else { return };
        let mut receivers = Vec::new();
        for (session_hash, clients) in sessions {
            for client_id in clients.iter() {
                // A client deleted since has nobody to tell.
                match self.resolve_client(tenant, client_id).await {
                    Ok(c) if !c.backchannel_logout_uri.is_empty() => {
                        receivers.push((session_id(session_hash), client_id.clone(), c.backchannel_logout_uri.clone()));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(tenant, client_id, error = %e.message(), "no back-channel logout"),
                }
            }
        }
        if receivers.is_empty() {
            return;
        }
        let key = match self.keys.current(tenant).await {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(tenant, error = %e, "cannot sign back-channel logout tokens");
                return;
            }
        };
        let issuer = self.issuer(tenant);
        let iat = seconds(self.config.clock.now_micros());
        for (sid, client_id, uri) in receivers {
            let claims = LogoutToken {
                iss: &issuer,
                aud: &client_id,
                sub: user_id,
                sid: &sid,
                iat,
                exp: iat + LIFETIME_SECS,
                jti: postern_common::ids::random_alphanumeric(32),
                events: serde_json::json!({ "http://schemas.openid.net/event/backchannel-logout": {} }),
            };
            let token = match key.sign_typed(&claims, "logout+jwt") {
                Ok(token) => token,
                Err(e) => {
                    tracing::warn!(tenant, client_id, error = %e, "cannot sign a back-channel logout token");
                    continue;
                }
            };
            let notifier = notifier.clone();
            let tenant = tenant.to_owned();
            tokio::spawn(async move {
                let result = notifier.notify(&uri, &token).await;
                let outcome = if result.is_ok() { "delivered" } else { "failed" };
                metrics::counter!("postern_authn_backchannel_logouts_total", "result" => outcome).increment(1);
                match result {
                    Ok(()) => tracing::info!(tenant, client_id, "back-channel logout delivered"),
                    Err(why) => tracing::warn!(tenant, client_id, uri, why, "back-channel logout not delivered"),
                }
            });
        }
    }
}
