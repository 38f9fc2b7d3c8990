//! OpenID Connect Back-Channel Logout 1.0, the sending side: Postern, as its tenants'
//! OpenID provider, POSTs the logout tokens the authenticator signed to the clients'
//! back-channel logout URIs, under the egress policy (a tenant names those URIs).

use std::time::Duration;

use postern_connector::egress::{Egress, HttpClient, SendError};
use postern_connector::{LogoutNotifier, async_trait};

/// How long a client's back-channel logout endpoint may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends logout tokens over HTTP.
#[derive(Debug, Clone)]
pub struct HttpLogoutNotifier {
    http: HttpClient,
}

impl HttpLogoutNotifier {
    /// A sender whose requests the egress policy `egress` checks, each within [`TIMEOUT`].
    pub fn new(egress: &Egress) -> Self {
        Self { http: egress.http_client(TIMEOUT) }
    }
}

#[async_trait]
impl LogoutNotifier for HttpLogoutNotifier {
    async fn notify(&self, uri: &str, logout_token: &str) -> Result<(), String> {
        let request = self.http.post(uri).form(&[("logout_token", logout_token)]);
        let answer = self.http.send(request).await.map_err(|e| match e {
            SendError::Refused(r) => r.to_string(),
            SendError::Transport(e) => format!("cannot reach it: {e}"),
        })?;
        // The specification's success answers; a redirect is not followed.
        match answer.status().as_u16() {
            200 | 204 => Ok(()),
            code => Err(format!("it answered HTTP {code}")),
        }
    }
}
