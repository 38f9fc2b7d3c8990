//! Who is calling. The gateway authenticates a caller's bearer key and hands the backend a
//! *principal* in the `x-postern-principal` header, signed with the internal key that only
//! Postern's own processes hold, and bound to the called method and a short expiry. A backend
//! trusts nothing else: a header a caller made up fails the signature check, so a backend
//! reached directly is as safe as one reached through the gateway. Service-to-service calls
//! sign a [`Principal::Service`] the same way, which is how internal-only RPCs stay internal.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hmac::{Hmac, Mac};
use http::HeaderValue;
use sha2::Sha256;
use tonic::Status;

use crate::error::{permission_denied, status_with_metadata, unauthenticated};
use crate::scope::{MethodScopes, Need, Scopes};

/// The header that carries the signed principal from the gateway to a backend.
pub const PRINCIPAL_HEADER: &str = "x-postern-principal";

/// The header carrying the end caller's IP address from the gateway to a backend. A backend
/// believes it only on a request whose principal verified (only Postern's own processes can
/// send one), and the gateway always replaces what a caller sent.
pub const PEER_HEADER: &str = "x-postern-peer";

/// The end caller's address as the gateway saw it, in a request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::IpAddr);

/// The end caller's address: the one the gateway vouched for, else the connection's peer.
pub fn peer_addr<T>(request: &tonic::Request<T>) -> Option<std::net::IpAddr> {
    request.extensions().get::<PeerAddr>().map(|p| p.0).or_else(|| request.remote_addr().map(|a| a.ip()))
}

/// How long a signed principal stays valid, in seconds (covers clock skew between hosts).
const PRINCIPAL_LIFETIME_SECS: u64 = 120;

/// The caller of an RPC, as established by the gateway or a calling service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin key: every tenant.
    Admin,
    /// A tenant's API key: that tenant only, within its scopes.
    Tenant {
        /// The tenant's name.
        tenant: String,
        /// The API key's id.
        key_id: String,
        /// What the key may do there; [`Scopes::full`] for keys without scopes.
        scopes: Scopes,
    },
    /// Another Postern service (`gateway`, `registry`, `authn`).
    Service(String),
    /// A caller that presented no key, let through by the gateway to a method that its
    /// service lists as public (the key set, discovery, userinfo; a login or signup in which
    /// the application presents its own credentials). The gateway signs it like any other
    /// principal, and [`PrincipalLayer`] refuses it on every method not listed, so neither
    /// an unsigned call nor an anonymous one reaches anything else.
    Anonymous,
}

impl Principal {
    /// Allows the admin key and internal callers; refuses tenant keys.
    pub fn require_admin(&self) -> Result<(), Status> {
        match self {
            Principal::Admin | Principal::Service(_) => Ok(()),
            Principal::Tenant { .. } => Err(permission_denied(
                "ADMIN_KEY_REQUIRED",
                "this operation needs the admin key; a tenant API key cannot do it",
            )),
            Principal::Anonymous => Err(key_missing()),
        }
    }

    /// Allows callers that may act on tenant `tenant`.
    pub fn require_tenant(&self, tenant: &str) -> Result<(), Status> {
        match self {
            Principal::Admin | Principal::Service(_) => Ok(()),
            Principal::Tenant { tenant: own, .. } if own == tenant => Ok(()),
            Principal::Tenant { .. } => Err(permission_denied(
                "TENANT_NOT_ALLOWED",
                format!("this API key does not reach tenant {:?}", crate::validate::truncate(tenant, 63)),
            )),
            Principal::Anonymous => Err(key_missing()),
        }
    }

    /// Allows only other Postern services (internal-only RPCs).
    pub fn require_internal(&self) -> Result<(), Status> {
        match self {
            Principal::Service(_) => Ok(()),
            _ => Err(permission_denied(
                "INTERNAL_ONLY",
                "this RPC is internal to Postern and cannot be called from outside",
            )),
        }
    }

    /// Allows every caller whose key the gateway authenticated, and services; refuses an
    /// anonymous caller. For methods that are public only to callers presenting their own
    /// credentials in the request, which the handler then checks.
    pub fn require_key(&self) -> Result<(), Status> {
        match self {
            Principal::Anonymous => Err(key_missing()),
            _ => Ok(()),
        }
    }

    /// The tenant a tenant key is limited to; `None` for the admin key and services (and an
    /// anonymous caller, which reaches only public methods).
    pub fn tenant_scope(&self) -> Option<&str> {
        match self {
            Principal::Tenant { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    fn encode(&self) -> String {
        match self {
            Principal::Admin => "admin".to_owned(),
            // Full keys keep the first form of v1 headers; restricted ones add their scopes.
            Principal::Tenant { tenant, key_id, scopes } if scopes.is_full() => format!("tenant:{tenant}:{key_id}"),
            Principal::Tenant { tenant, key_id, scopes } => format!("tenant:{tenant}:{key_id}:{}", scopes.encode()),
            Principal::Service(name) => format!("service:{name}"),
            Principal::Anonymous => "anonymous".to_owned(),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split(':');
        let p = match (parts.next()?, parts.next(), parts.next()) {
            ("admin", None, None) => Principal::Admin,
            ("tenant", Some(t), Some(k)) => {
                let scopes = match parts.next() {
                    None => Scopes::full(),
                    Some("") => return None,
                    Some(text) => Scopes::decode(text)?,
                };
                Principal::Tenant { tenant: t.to_owned(), key_id: k.to_owned(), scopes }
            }
            ("service", Some(n), None) => Principal::Service(n.to_owned()),
            ("anonymous", None, None) => Principal::Anonymous,
            _ => return None,
        };
        parts.next().is_none().then_some(p)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Admin => f.write_str("admin"),
            Principal::Tenant { tenant, key_id, scopes } if scopes.is_full() => {
                write!(f, "tenant {tenant} (key {key_id})")
            }
            Principal::Tenant { tenant, key_id, scopes } => write!(f, "tenant {tenant} (key {key_id}, {scopes:?})"),
            Principal::Service(n) => write!(f, "service {n}"),
            Principal::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// The secret shared by Postern's processes to sign principals. Never printed.
#[derive(Clone)]
pub struct InternalKey(Arc<[u8; 32]>);

impl fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InternalKey(<redacted>)")
    }
}

impl InternalKey {
    /// A fresh random key (the all-in-one mode needs no shared one).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        Self(Arc::new(bytes))
    }

    /// Parses a key written as 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let bytes = hex::decode(s.trim()).map_err(|_| "the internal key must be 64 hex digits".to_owned())?;
        let bytes: [u8; 32] =
            bytes.try_into().map_err(|_| "the internal key must be 64 hex digits (32 bytes)".to_owned())?;
        Ok(Self(Arc::new(bytes)))
    }

    /// The key as 64 hex digits, for writing it where other processes can read it.
    pub fn to_hex(&self) -> String {
        hex::encode(*self.0)
    }

    fn mac(&self, payload: &str, path: &str) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..]).unwrap_or_else(|_| unreachable!());
        mac.update(payload.as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The key's id: the first 12 hex digits of its SHA-256, which tells two keys apart in a
    /// log line and tells nothing of the key.
    pub fn key_id(&self) -> String {
        let digest = <Sha256 as sha2::Digest>::digest(&self.0[..]);
        hex::encode(&digest[..6])
    }

    /// The header value that vouches for `principal` calling `path` (`/pkg.Service/Method`),
    /// naming the signing key by its [`key_id`](Self::key_id) so that a process holding
    /// another key can say so.
    pub fn sign(&self, principal: &Principal, path: &str) -> HeaderValue {
        let expires = unix_now() + PRINCIPAL_LIFETIME_SECS;
        let payload = format!("v1|{}|{expires}|{}", principal.encode(), self.key_id());
        let sig = hex::encode(self.mac(&payload, path));
        // Tenant names, key ids and service names are ASCII, so this is a valid header.
        HeaderValue::from_str(&format!("{payload}|{sig}")).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }

    /// Checks a header value for `path`; `None` if it is forged, expired or malformed.
    pub fn verify(&self, value: &[u8], path: &str) -> Option<Principal> {
        self.check(value, path).ok()
    }

    /// Checks a header value for `path`, saying why it is refused.
    pub fn check(&self, value: &[u8], path: &str) -> Result<Principal, Invalid> {
        let value = std::str::from_utf8(value).map_err(|_| Invalid::Malformed)?;
        let (payload, sig) = value.rsplit_once('|').ok_or(Invalid::Malformed)?;
        let sig = hex::decode(sig).map_err(|_| Invalid::Malformed)?;
        let mut parts = payload.split('|');
        let (Some(version), Some(principal), Some(expires), Some(key_id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid::Malformed);
        };
        if !crate::ids::constant_time_eq(&sig, &self.mac(payload, path)) {
            let own = self.key_id();
            return Err(if key_id == own {
                Invalid::Signature
            } else {
                // Unverified, so only a hint; but the likely case is a misconfiguration.
                Invalid::OtherKey { signed_with: key_id.chars().take(12).collect(), expected: own }
            });
        }
        if version != "v1" {
            return Err(Invalid::Malformed);
        }
        if expires.parse::<u64>().map_err(|_| Invalid::Malformed)? < unix_now() {
            return Err(Invalid::Expired);
        }
        Principal::decode(principal).ok_or(Invalid::Malformed)
    }
}

/// Why a principal header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not a principal header at all.
    Malformed,
    /// Signed with another internal key: the processes do not share `POSTERN_INTERNAL_KEY`.
    OtherKey {
        /// The key id the header names (unverified).
        signed_with: String,
        /// This process's key id.
        expected: String,
    },
    /// It names this process's key but its signature does not match (altered, or bound to
    /// another method).
    Signature,
    /// Signed correctly, but its short lifetime is over (clocks apart, or a replay).
    Expired,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Malformed => f.write_str("the header is malformed"),
            Invalid::OtherKey { signed_with, expected } => write!(
                f,
                "signed with internal key id {signed_with}, but this process holds internal key id {expected}: \
                 the processes do not share POSTERN_INTERNAL_KEY"
            ),
            Invalid::Signature => f.write_str("the signature does not match (altered, or made for another method)"),
            Invalid::Expired => f.write_str("expired (are the processes' clocks apart?)"),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// UNAUTHENTICATED for a call that needs a key and came without one.
fn key_missing() -> Status {
    unauthenticated(
        "API_KEY_MISSING",
        "missing credentials: send `authorization: Bearer <key>` with the admin key or a tenant API key",
    )
}

/// The principal of a request, as [`PrincipalLayer`] established it; UNAUTHENTICATED when
/// the request came without one (straight to a backend, without the gateway).
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, Status> {
    request.extensions().get::<Principal>().cloned().ok_or_else(|| {
        unauthenticated(
            "PRINCIPAL_MISSING",
            "no caller identity: call Postern through its gateway with `authorization: Bearer <key>`",
        )
    })
}

/// A layer for a backend's routes: verifies the signed principal header and puts the
/// [`Principal`] into the request's extensions. A request with a forged or expired header is
/// refused with UNAUTHENTICATED; one with none gets no principal, which handlers refuse; an
/// [`Principal::Anonymous`] one is refused unless its method is one of the service's public
/// methods.
#[derive(Clone, Debug)]
pub struct PrincipalLayer {
    key: InternalKey,
    public: &'static [&'static str],
    scopes: MethodScopes,
}

impl PrincipalLayer {
    /// A layer that trusts principals signed with `key`, and no anonymous caller.
    pub fn new(key: InternalKey) -> Self {
        Self { key, public: &[], scopes: &[] }
    }

    /// Checks a tenant key's scopes against `table` (the service's `METHOD_SCOPES`) before
    /// any handler runs. A key without every scope is refused a method missing from the
    /// table, so a new method is closed to restricted keys until it is listed.
    pub fn scopes(mut self, table: MethodScopes) -> Self {
        self.scopes = table;
        self
    }

    /// Lets an anonymous caller (signed as such by the gateway) reach `methods`
    /// (`/pkg.Service/Method`): the service's `PUBLIC_METHODS`.
    pub fn public(mut self, methods: &'static [&'static str]) -> Self {
        self.public = methods;
        self
    }
}

impl<S> tower::Layer<S> for PrincipalLayer {
    type Service = PrincipalService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PrincipalService { inner, key: self.key.clone(), public: self.public, scopes: self.scopes }
    }
}

/// The service of [`PrincipalLayer`].
#[derive(Clone, Debug)]
pub struct PrincipalService<S> {
    inner: S,
    key: InternalKey,
    public: &'static [&'static str],
    scopes: MethodScopes,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for PrincipalService<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for PrincipalService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.extensions_mut().remove::<Principal>();
        req.extensions_mut().remove::<PeerAddr>();
        let peer = req.headers_mut().remove(PEER_HEADER);
        if let Some(value) = req.headers_mut().remove(PRINCIPAL_HEADER) {
            match self.key.check(value.as_bytes(), req.uri().path()) {
                Ok(Principal::Anonymous) if !self.public.contains(&req.uri().path()) => {
                    let status = key_missing();
                    return Box::pin(async move { Ok(status.into_http()) });
                }
                Ok(p) => {
                    if let Err(status) = check_scopes(&p, self.scopes, req.uri().path()) {
                        return Box::pin(async move { Ok(status.into_http()) });
                    }
                    req.extensions_mut().insert(p);
                    if let Some(ip) = peer.as_ref().and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
                        req.extensions_mut().insert(PeerAddr(ip));
                    }
                }
                Err(why) => {
                    crate::telemetry::refused("PRINCIPAL_INVALID");
                    tracing::warn!(
                        reason = "PRINCIPAL_INVALID",
                        method = %req.uri().path(),
                        "call refused: its caller identity header is not valid: {why}"
                    );
                    let status = unauthenticated("PRINCIPAL_INVALID", "the caller identity header is not valid");
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(req).await })
    }
}

/// Refuses a tenant key the scope `path` needs according to `table`:
/// PERMISSION_DENIED with reason `API_KEY_SCOPE_MISSING` and the scope in the metadata.
pub fn check_scopes(principal: &Principal, table: MethodScopes, path: &str) -> Result<(), Status> {
    let Principal::Tenant { scopes, .. } = principal else { return Ok(()) };
    if scopes.is_full() {
        return Ok(());
    }
    let missing = match need(table, path) {
        Some(need) => scopes.missing(need).map(|s| s.name()),
        // Not in the table: only a key with every scope may call it.
        None => Some("ALL"),
    };
    match missing {
        None => Ok(()),
        Some(scope) => Err(status_with_metadata(
            tonic::Code::PermissionDenied,
            "API_KEY_SCOPE_MISSING",
            format!("this API key lacks the scope {scope} that {path} needs"),
            [("scope", scope), ("method", path)],
        )),
    }
}

/// What `path` needs according to `table`, if it is listed.
pub fn need(table: MethodScopes, path: &str) -> Option<Need> {
    table.iter().find(|(method, _)| *method == path).map(|(_, need)| *need)
}

/// A layer for clients of other services: signs each request as `principal` (a service, or
/// the principal the gateway established), and passes the current span on as the call's
/// `traceparent` when spans are exported.
#[derive(Clone, Debug)]
pub struct SignLayer {
    key: InternalKey,
    principal: Principal,
}

impl SignLayer {
    /// Signs requests as `principal` with `key`.
    pub fn new(key: InternalKey, principal: Principal) -> Self {
        Self { key, principal }
    }
}

impl<S> tower::Layer<S> for SignLayer {
    type Service = SignService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SignService { inner, layer: self.clone() }
    }
}

/// The service of [`SignLayer`].
#[derive(Clone, Debug)]
pub struct SignService<S> {
    inner: S,
    layer: SignLayer,
}

impl<S, B> tower::Service<http::Request<B>> for SignService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let value = self.layer.key.sign(&self.layer.principal, req.uri().path());
        req.headers_mut().insert(PRINCIPAL_HEADER, value);
        // The call is part of the trace of the span it is made in (exported over OTLP).
        if !req.headers().contains_key(crate::server::TRACEPARENT_HEADER)
            && let Some(traceparent) = crate::trace::traceparent_of(&tracing::Span::current())
            && let Ok(value) = http::HeaderValue::from_str(&traceparent)
        {
            req.headers_mut().insert(crate::server::TRACEPARENT_HEADER, value);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let key = InternalKey::generate();
        let p = Principal::Tenant { tenant: "fabrikam-public".into(), key_id: "key_1".into(), scopes: Scopes::full() };
        let v = key.sign(&p, "/postern.tenant.v1.TenantService/GetTenant");
        assert_eq!(key.verify(v.as_bytes(), "/postern.tenant.v1.TenantService/GetTenant"), Some(p));
        // Bound to the method.
        assert_eq!(key.verify(v.as_bytes(), "/postern.tenant.v1.TenantService/DeleteTenant"), None);
        // Another key does not verify it, and says which key it expected.
        let other = InternalKey::generate();
        assert_eq!(
            other.check(v.as_bytes(), "/postern.tenant.v1.TenantService/GetTenant"),
            Err(Invalid::OtherKey { signed_with: key.key_id(), expected: other.key_id() })
        );
        assert_eq!(key.check(v.as_bytes(), "/postern.tenant.v1.TenantService/DeleteTenant"), Err(Invalid::Signature));
        assert_ne!(key.key_id(), other.key_id());
        assert!(!key.key_id().is_empty() && !key.to_hex().contains(&key.key_id()));
        // A caller cannot promote itself.
        let forged = String::from_utf8_lossy(v.as_bytes()).replace("tenant:fabrikam-public:key_1", "admin");
        assert_eq!(key.verify(forged.as_bytes(), "/postern.tenant.v1.TenantService/GetTenant"), None);
        assert_eq!(key.verify(b"admin", "/x"), None);
    }

    #[test]
    fn scopes() {
        let t = Principal::Tenant { tenant: "a-b".into(), key_id: "k".into(), scopes: Scopes::full() };
        assert!(t.require_tenant("a-b").is_ok());
        assert_eq!(t.require_tenant("c-d").map_err(|s| s.code()), Err(tonic::Code::PermissionDenied));
        assert!(t.require_admin().is_err());
        assert!(t.require_internal().is_err());
        assert!(Principal::Admin.require_tenant("x").is_ok());
        assert!(Principal::Admin.require_internal().is_err());
        assert!(Principal::Service("registry".into()).require_internal().is_ok());
        // An anonymous caller reaches no tenant, no admin operation, nothing internal.
        let a = Principal::Anonymous;
        assert_eq!(a.require_tenant("a-b").map_err(|s| s.code()), Err(tonic::Code::Unauthenticated));
        assert!(a.require_admin().is_err() && a.require_internal().is_err() && a.require_key().is_err());
        assert_eq!(a.tenant_scope(), None);
        assert!(t.require_key().is_ok());
    }

    /// Calls `path` through a [`PrincipalLayer`] with public `/s/Open`, signed as `who`;
    /// the answer's `grpc-status`, or 0 when the inner service was reached.
    async fn through_layer(key: &InternalKey, who: Option<&Principal>, path: &str) -> i32 {
        use tower::{Layer, ServiceExt};
        let inner = tower::service_fn(|_: http::Request<()>| async move {
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let svc = PrincipalLayer::new(key.clone()).public(&["/s/Open"]).layer(inner);
        let mut req = http::Request::builder().uri(path).body(()).expect("request");
        if let Some(p) = who {
            req.headers_mut().insert(PRINCIPAL_HEADER, key.sign(p, path));
        }
        let response = svc.oneshot(req).await.expect("infallible");
        response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0)
    }

    #[tokio::test]
    async fn anonymous_callers_reach_public_methods_only() {
        let key = InternalKey::generate();
        let anonymous = Principal::Anonymous;
        assert_eq!(through_layer(&key, Some(&anonymous), "/s/Open").await, 0);
        assert_eq!(through_layer(&key, Some(&anonymous), "/s/Closed").await, tonic::Code::Unauthenticated as i32);
        assert_eq!(through_layer(&key, Some(&Principal::Admin), "/s/Closed").await, 0);
        // Unsigned, a call reaches the handler without a principal, which handlers refuse.
        assert_eq!(through_layer(&key, None, "/s/Open").await, 0);
        // Anonymous signed by another key: refused.
        let forged = InternalKey::generate().sign(&anonymous, "/s/Open");
        assert_eq!(key.verify(forged.as_bytes(), "/s/Open"), None);
        assert_eq!(key.verify(key.sign(&anonymous, "/s/Open").as_bytes(), "/s/Open"), Some(Principal::Anonymous));
    }

    #[test]
    fn scoped_principals_round_trip() {
        use crate::scope::Scope;
        let key = InternalKey::generate();
        let p = Principal::Tenant {
            tenant: "a-b".into(),
            key_id: "key_1".into(),
            scopes: Scopes::from_iter([Scope::ReadOnly, Scope::Users]),
        };
        let v = key.sign(&p, "/a");
        assert!(String::from_utf8_lossy(v.as_bytes()).contains("tenant:a-b:key_1:READ_ONLY,USERS|"));
        assert_eq!(key.verify(v.as_bytes(), "/a"), Some(p));
        // A header of a full key reads as before scopes existed.
        let full = Principal::Tenant { tenant: "a-b".into(), key_id: "key_1".into(), scopes: Scopes::full() };
        assert_eq!(full.encode(), "tenant:a-b:key_1");
        assert_eq!(Principal::decode("tenant:a-b:key_1"), Some(full));
        assert_eq!(Principal::decode("tenant:a-b:key_1:"), None);
        assert_eq!(Principal::decode("tenant:a-b:key_1:ROOT"), None);
    }

    #[test]
    fn scope_checks() {
        use crate::scope::Scope;
        const TABLE: MethodScopes = &[("/s/Get", Need::Read(Scope::Users)), ("/s/Delete", Need::Write(Scope::Users))];
        let key = |scopes| Principal::Tenant { tenant: "a-b".into(), key_id: "k".into(), scopes };
        let read_only = key(Scopes::from_iter([Scope::ReadOnly]));
        assert!(check_scopes(&read_only, TABLE, "/s/Get").is_ok());
        let refused = check_scopes(&read_only, TABLE, "/s/Delete").expect_err("write");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let info = tonic_types::StatusExt::get_error_details(&refused).error_info().cloned().expect("info");
        assert_eq!(info.reason, "API_KEY_SCOPE_MISSING");
        assert_eq!(info.metadata.get("scope").map(String::as_str), Some("USERS"));
        assert!(check_scopes(&read_only, TABLE, "/s/Unlisted").is_err());
        assert!(check_scopes(&key(Scopes::full()), TABLE, "/s/Unlisted").is_ok());
        assert!(check_scopes(&Principal::Admin, TABLE, "/s/Delete").is_ok());
    }

    #[test]
    fn hex_round_trip() {
        let k = InternalKey::generate();
        let k2 = InternalKey::from_hex(&k.to_hex()).expect("hex");
        let v = k.sign(&Principal::Admin, "/a");
        assert_eq!(k2.verify(v.as_bytes(), "/a"), Some(Principal::Admin));
        assert!(format!("{k:?}").contains("redacted"));
        assert!(InternalKey::from_hex("abc").is_err());
    }
}
