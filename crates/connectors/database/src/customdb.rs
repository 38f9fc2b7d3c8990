//! The client side of the custom database contract (`postern.customdb.v1`): calls to the
//! customer's endpoint with a deadline and its bearer token, and the mapping of its answers
//! to outcomes the login path understands. An `https` endpoint is called over TLS, its
//! certificate verified against the public roots or the connection's `ca_certificate`. A
//! failure of the customer's store, a failed TLS handshake included, never reaches the end
//! user as anything but UNAVAILABLE; its cause is logged.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use postern_connection::secret::names;
use postern_connection::{CustomDatabase, Resolved};
use postern_proto::customdb::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

use postern_connector::egress::{Egress, EgressError, Refused, refusal_in};
use postern_connector::{ExternalProfile, Profile};

/// The deadline of a call when the connection sets none (`timeout_seconds` = 0).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a call to the custom database ended, when not with an answer.
#[derive(Debug, thiserror::Error)]
pub enum CustomDbError {
    /// Wrong credentials or unknown user (Login).
    #[error("wrong credentials")]
    WrongCredentials,
    /// No such user.
    #[error("no such user")]
    NotFound,
    /// The user exists already (Create).
    #[error("the user already exists")]
    AlreadyExists,
    /// The store refused the input; the message is the store's, meant for the caller.
    #[error("{0}")]
    Invalid(String),
    /// The store failed, timed out or cannot be reached.
    #[error("the custom database is unavailable: {0}")]
    Unavailable(String),
    /// The egress policy refuses the endpoint's address: nothing was sent.
    #[error("the custom database cannot be called: {0}")]
    Refused(Refused),
}

/// Where and how to call one connection's custom database.
#[derive(Debug, Clone)]
pub struct Target {
    /// The endpoint URL.
    pub endpoint: String,
    /// PEM CA certificates trusted for an `https` endpoint instead of the public roots;
    /// empty for the public roots.
    pub ca_certificate: String,
    /// The bearer token, if any.
    pub token: String,
    /// The deadline of each call.
    pub timeout: Duration,
    /// The context sent with each call.
    pub context: pb::Context,
}

impl Target {
    /// The target of a database connection's `custom_database` options, for `tenant`.
    pub fn of(tenant: &str, connection: &Resolved, options: &CustomDatabase) -> Self {
        let token = connection.secret(names::CUSTOM_DATABASE_TOKEN).map(|t| t.expose().to_owned()).unwrap_or_default();
        let secs = u64::from(options.timeout_seconds);
        Target {
            endpoint: options.endpoint.clone(),
            ca_certificate: options.ca_certificate.clone(),
            token,
            timeout: if secs == 0 { DEFAULT_TIMEOUT } else { Duration::from_secs(secs.min(60)) },
            context: pb::Context { tenant: tenant.to_owned(), connection: connection.connection.spec.name.clone() },
        }
    }
}

/// Channels to custom database endpoints, one per endpoint and trusted CA, shared by every
/// call.
#[derive(Debug, Default)]
pub struct CustomDbClient {
    /// By endpoint, then by `ca_certificate`.
    channels: Mutex<HashMap<String, HashMap<String, Channel>>>,
    /// Where the channels may connect.
    egress: Egress,
}

type Client = pb::custom_database_service_client::CustomDatabaseServiceClient<Channel>;

impl CustomDbClient {
    /// A client with no open channel yet, under the built-in egress policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// A client with no open channel yet, whose channels connect only where `egress` allows.
    pub fn with_egress(egress: &Egress) -> Self {
        Self { channels: Mutex::default(), egress: egress.clone() }
    }

    fn client(&self, target: &Target) -> Result<Client, CustomDbError> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = channels.get(&target.endpoint).and_then(|by_ca| by_ca.get(&target.ca_certificate)) {
            return Ok(Client::new(c.clone()));
        }
        let channel = endpoint(target)
            .inspect_err(
                |e| tracing::warn!(endpoint = %target.endpoint, error = %e, "custom database endpoint unusable"),
            )?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(connector(self.egress.clone()));
        channels.entry(target.endpoint.clone()).or_default().insert(target.ca_certificate.clone(), channel.clone());
        Ok(Client::new(channel))
    }

    fn request<T>(target: &Target, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(target.timeout);
        if !target.token.is_empty()
            && let Ok(v) = format!("Bearer {}", target.token).parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    /// Checks credentials.
    pub async fn login(
        &self,
        target: &Target,
        username: &str,
        password: &str,
    ) -> Result<ExternalProfile, CustomDbError> {
        let mut client = self.client(target)?;
        let req = Self::request(
            target,
            pb::LoginRequest {
                context: Some(target.context.clone()),
                username: username.to_owned(),
                password: password.to_owned(),
            },
        );
        let answer = deadline(target, client.login(req)).await?;
        source_user(answer.into_inner().profile)
    }

    /// Looks a user up without credentials; `None` when there is none.
    pub async fn get_user(&self, target: &Target, username: &str) -> Result<Option<ExternalProfile>, CustomDbError> {
        let mut client = self.client(target)?;
        let req = Self::request(
            target,
            pb::GetUserRequest { context: Some(target.context.clone()), username: username.to_owned() },
        );
        match deadline(target, client.get_user(req)).await {
            Ok(r) => source_user(r.into_inner().profile).map(Some),
            Err(CustomDbError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a user.
    pub async fn create(
        &self,
        target: &Target,
        email: &str,
        username: &str,
        password: &str,
        user_metadata: Option<prost_types::Struct>,
    ) -> Result<ExternalProfile, CustomDbError> {
        let mut client = self.client(target)?;
        let req = Self::request(
            target,
            pb::CreateRequest {
                context: Some(target.context.clone()),
                email: email.to_owned(),
                username: username.to_owned(),
                password: password.to_owned(),
                user_metadata,
            },
        );
        let answer = deadline(target, client.create(req)).await?;
        match answer.into_inner().profile.filter(|p| !p.user_id.is_empty()) {
            Some(p) => source_user(Some(p)),
            None => self
                .get_user(target, email)
                .await?
                .ok_or(CustomDbError::Unavailable("the custom database created the user but cannot find it".into())),
        }
    }

    /// Sets a user's password.
    pub async fn change_password(&self, target: &Target, email: &str, password: &str) -> Result<(), CustomDbError> {
        let mut client = self.client(target)?;
        let req = Self::request(
            target,
            pb::ChangePasswordRequest {
                context: Some(target.context.clone()),
                email: email.to_owned(),
                new_password: password.to_owned(),
            },
        );
        deadline(target, client.change_password(req)).await.map(|_| ())
    }

    /// Deletes a user; a user already gone counts as done.
    pub async fn delete(&self, target: &Target, id: &str) -> Result<(), CustomDbError> {
        let mut client = self.client(target)?;
        let req =
            Self::request(target, pb::DeleteRequest { context: Some(target.context.clone()), user_id: id.to_owned() });
        match deadline(target, client.delete(req)).await {
            Ok(_) | Err(CustomDbError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Opens the TCP connections of a channel: the endpoint's name is resolved and every address
/// checked under `egress`, and the checked addresses are the ones connected to (TLS, when the
/// endpoint is https, goes over this connection).
fn connector(
    egress: Egress,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    Error = Box<dyn std::error::Error + Send + Sync>,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: http::Uri| {
        let egress = egress.clone();
        async move {
            let host = uri.host().ok_or("the endpoint names no host")?;
            let https = uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https"));
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let addresses = egress.check(host, port).await.map_err(EgressError::into_cause)?;
            let tcp = tokio::net::TcpStream::connect(addresses.as_slice()).await?;
            tcp.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(tcp))
        }
    })
}

/// The endpoint of `target`: over TLS for `https`, verified against `ca_certificate` when
/// set, else against the public roots.
fn endpoint(target: &Target) -> Result<tonic::transport::Endpoint, CustomDbError> {
    use tonic::transport::{ClientTlsConfig, Endpoint};
    let bad = |e: &dyn std::fmt::Display| CustomDbError::Unavailable(format!("bad endpoint: {e}"));
    let https = target.endpoint.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    // `from_shared` alone would turn TLS on for https with every root enabled; the config
    // below says which roots.
    let endpoint = Endpoint::from_shared(target.endpoint.clone()).map_err(|e| bad(&e))?;
    if !https {
        return Ok(endpoint);
    }
    let tls = if target.ca_certificate.is_empty() {
        ClientTlsConfig::new().with_webpki_roots()
    } else {
        ClientTlsConfig::new().trust_anchors(trust_anchors(&target.ca_certificate)?)
    };
    endpoint.tls_config(tls).map_err(|e| bad(&e))
}

/// The trust anchors of PEM CA certificates (validated by the registry; checked again here).
fn trust_anchors(pem: &str) -> Result<Vec<rustls_pki_types::TrustAnchor<'static>>, CustomDbError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let unusable =
        |why: String| CustomDbError::Unavailable(format!("the connection's ca_certificate is unusable: {why}"));
    let mut anchors = Vec::new();
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|e| unusable(format!("not PEM: {e}")))?;
        let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|e| unusable(format!("not X.509: {e:?}")))?;
        anchors.push(anchor.to_owned());
    }
    if anchors.is_empty() {
        return Err(unusable("no certificate".into()));
    }
    Ok(anchors)
}

/// The cause of a failed call: its message, then its chain of sources (a TLS handshake's
/// verdict, a refused connection), for the log.
fn cause(s: &tonic::Status) -> String {
    let mut out = s.message().to_owned();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(if out.is_empty() { "" } else { ": " });
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

async fn deadline<T>(
    target: &Target,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, CustomDbError> {
    // The grpc-timeout header tells the store; this bounds the wait even if it ignores it.
    match tokio::time::timeout(target.timeout + Duration::from_millis(200), call).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(s)) => Err(map_status(target, &s)),
        Err(_) => {
            tracing::warn!(endpoint = %target.endpoint, timeout = ?target.timeout, "custom database call timed out");
            Err(CustomDbError::Unavailable(format!("no answer within {:?}", target.timeout)))
        }
    }
}

fn map_status(target: &Target, s: &tonic::Status) -> CustomDbError {
    if let Some(refused) = refusal_in(s) {
        tracing::warn!(endpoint = %target.endpoint, %refused, "custom database call refused");
        return CustomDbError::Refused(refused.clone());
    }
    match s.code() {
        Code::Unauthenticated => CustomDbError::WrongCredentials,
        Code::NotFound => CustomDbError::NotFound,
        Code::AlreadyExists => CustomDbError::AlreadyExists,
        Code::InvalidArgument => {
            CustomDbError::Invalid(postern_common::validate::truncate(s.message(), 500).to_owned())
        }
        code => {
            let cause = cause(s);
            tracing::warn!(endpoint = %target.endpoint, ?code, %cause, "custom database call failed");
            CustomDbError::Unavailable(format!("{code:?}: {cause}"))
        }
    }
}

fn source_user(profile: Option<pb::Profile>) -> Result<ExternalProfile, CustomDbError> {
    let p = profile.ok_or_else(|| CustomDbError::Unavailable("the custom database answered no profile".into()))?;
    if p.user_id.is_empty() || p.email.is_empty() {
        return Err(CustomDbError::Unavailable(
            "the custom database answered a profile without user_id or email, which the contract requires".into(),
        ));
    }
    let profile = Profile {
        email: p.email.clone(),
        email_verified: p.email_verified,
        username: p.username.clone(),
        name: p.name.clone(),
        given_name: p.given_name.clone(),
        family_name: p.family_name.clone(),
        nickname: p.nickname.clone(),
        picture: p.picture.clone(),
        ..Profile::default()
    };
    let mut raw = profile.to_json();
    if let serde_json::Value::Object(m) = &mut raw {
        m.insert("user_id".into(), serde_json::Value::String(p.user_id.clone()));
    }
    Ok(ExternalProfile {
        source_id: p.user_id,
        profile,
        raw,
        user_metadata: p.user_metadata.map(|s| postern_common::json::from_struct(&s)).unwrap_or_default(),
        app_metadata: p.app_metadata.map(|s| postern_common::json::from_struct(&s)).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(endpoint: &str, ca_certificate: &str) -> Target {
        Target {
            endpoint: endpoint.into(),
            ca_certificate: ca_certificate.into(),
            token: String::new(),
            timeout: DEFAULT_TIMEOUT,
            context: pb::Context::default(),
        }
    }

    fn ca() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("certificate").pem()
    }

    #[test]
    fn trust_anchors_of_pem() {
        let (a, b) = (ca(), ca());
        assert_eq!(trust_anchors(&a).expect("one").len(), 1);
        assert_eq!(trust_anchors(&format!("{a}{b}")).expect("two").len(), 2);
        for bad in ["", "hello", "-----BEGIN CERTIFICATE-----\nMIIAAAAA\n-----END CERTIFICATE-----\n"] {
            let Err(CustomDbError::Unavailable(why)) = trust_anchors(bad) else { panic!("{bad:?} is no CA") };
            assert!(why.contains("ca_certificate"), "{why}");
        }
    }

    #[test]
    fn endpoints_over_tls_or_not() {
        let ca = ca();
        assert!(endpoint(&target("https://customdb.example:443", "")).is_ok());
        assert!(endpoint(&target("https://127.0.0.1:50061", &ca)).is_ok());
        assert!(endpoint(&target("HTTPS://customdb.example", &ca)).is_ok());
        assert!(endpoint(&target("http://127.0.0.1:50061", "")).is_ok());
        assert!(matches!(endpoint(&target("https://customdb.example", "junk")), Err(CustomDbError::Unavailable(_))));
        assert!(matches!(endpoint(&target("not a url", "")), Err(CustomDbError::Unavailable(_))));
    }
}
