//! Authenticating callers: a bearer key is resolved to a [`Principal`] by the tenant
//! service (which owns keys) and the answer is cached, so that a warm call costs the gateway
//! a hash and a map lookup. A cached answer is used only while the tenant event log says
//! nothing new about its tenant ([`Coherence`]): a revoked key, or a deleted tenant's key,
//! stops working as soon as the event reaches this process, never after a time to live; and
//! nothing is cached while the log is not followed. The time to live only bounds how long an
//! unchanged answer is reused, and a key's own expiry is kept too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postern_common::coherence::{Coherence, Stamp};
use postern_common::principal::{InternalKey, Principal, SignLayer};
use postern_common::scope::{Scope, Scopes};
use postern_common::server::HttpService;
use postern_proto::tenant::v1::{AuthenticateKeyRequest, api_key_service_client::ApiKeyServiceClient};
use sha2::{Digest, Sha256};
use tonic::{Code, Status};
use tower::Layer;

/// Most cached keys; past this the cache starts over (a flood of distinct keys must not
/// grow memory without bound).
const MAX_CACHED: usize = 10_000;

/// A remembered answer: the principal, until when it may be used, and its stamp.
type Cached = (Principal, Instant, Stamp);

/// Resolves bearer keys to principals, with a cache.
pub struct KeyAuthenticator {
    tenant_service: HttpService,
    internal_key: InternalKey,
    ttl: Duration,
    coherence: Coherence,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

/// The tenant an answer is about, as [`Coherence`] names it (the admin key's is empty).
fn tenant_of(p: &Principal) -> &str {
    match p {
        Principal::Tenant { tenant, .. } => tenant,
        _ => "",
    }
}

impl KeyAuthenticator {
    /// Asks the tenant service behind `tenant_service`; reuses answers for at most `ttl`,
    /// and only while `coherence` keeps their stamp current.
    pub fn new(tenant_service: HttpService, internal_key: InternalKey, ttl: Duration, coherence: Coherence) -> Self {
        Self { tenant_service, internal_key, ttl, coherence, cache: Mutex::new(HashMap::new()) }
    }

    /// The principal a presented `authorization` header value stands for.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Status> {
        let key = bearer(authorization)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some(p) = self.cached(&digest) {
            return Ok(p);
        }
        let svc = SignLayer::new(self.internal_key.clone(), Principal::Service("gateway".into()))
            .layer(self.tenant_service.clone());
        let mut client = ApiKeyServiceClient::new(svc);
        // Before asking: an event that lands while the answer is on its way retires it.
        let (changes, asked) = (self.coherence.changes(), Instant::now());
        let answer = client.authenticate_key(AuthenticateKeyRequest { key: key.to_owned() }).await.map_err(|s| {
            let reason = tonic_types::StatusExt::get_error_details(&s).error_info().map(|i| i.reason.clone());
            if reason.as_deref() == Some("PRINCIPAL_INVALID") {
                // The tenant service refused the gateway itself, not the caller's key.
                tracing::error!(
                    gateway_key_id = %self.internal_key.key_id(),
                    "the tenant service refused this gateway's signed identity: the processes do not share \
                     POSTERN_INTERNAL_KEY (or their clocks are apart); the tenant service's log says which key it holds"
                );
                postern_common::error::status(
                    Code::Internal,
                    "INTERNAL_KEY_MISMATCH",
                    "cannot check the bearer key: the gateway is misconfigured (its internal key is not the tenant \
                     service's); retry later",
                )
            } else if s.code() == Code::Unauthenticated {
                postern_common::error::unauthenticated(
                    "API_KEY_INVALID",
                    "the bearer key is unknown, revoked or expired",
                )
            } else {
                tracing::warn!(code = ?s.code(), message = s.message(), "key check failed");
                postern_common::error::unavailable(
                    "TENANT_SERVICE_UNAVAILABLE",
                    "cannot check the bearer key now: the tenant service is unavailable; retry",
                )
            }
        })?;
        let answer = answer.into_inner();
        let principal = if answer.admin {
            Principal::Admin
        } else {
            let scopes = if answer.scopes.is_empty() {
                Scopes::full()
            } else {
                // A scope this gateway does not know is left out: it grants nothing here.
                answer.scopes.iter().filter_map(|s| Scope::from_proto(*s)).collect()
            };
            Principal::Tenant { tenant: answer.tenant, key_id: answer.key_id, scopes }
        };
        let stamp = self.coherence.stamp(tenant_of(&principal)).filter(|_| self.coherence.changes() == changes);
        let mut until = asked + self.ttl;
        if let Some(expiry) = answer.expire_time.as_ref().and_then(postern_common::time::from_timestamp) {
            let left = u64::try_from(expiry - postern_common::time::now_micros()).unwrap_or(0);
            until = until.min(asked + Duration::from_micros(left));
        }
        if let Some(stamp) = stamp
            && let Ok(mut cache) = self.cache.lock()
        {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(digest, (principal.clone(), until, stamp));
        }
        Ok(principal)
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Principal> {
        let mut cache = self.cache.lock().ok()?;
        let (p, until, stamp) = cache.get(digest)?;
        if Instant::now() < *until && self.coherence.current(tenant_of(p), *stamp) {
            return Some(p.clone());
        }
        cache.remove(digest);
        None
    }
}

/// The key of an `authorization: Bearer <key>` header.
fn bearer(value: Option<&str>) -> Result<&str, Status> {
    bearer_token(value).ok_or_else(|| {
        postern_common::error::unauthenticated(
            "API_KEY_MISSING",
            "missing credentials: send `authorization: Bearer <key>` with the admin key or a tenant API key",
        )
    })
}

/// The token of an `authorization: Bearer <token>` header value (the scheme in any case),
/// or `None` when there is none.
pub(crate) fn bearer_token(value: Option<&str>) -> Option<&str> {
    let (scheme, token) = value?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")).ok(), Some("abc"));
        assert!(bearer(Some("Basic abc")).is_err());
        assert!(bearer(Some("Bearer ")).is_err());
        assert!(bearer(None).is_err());
    }
}
