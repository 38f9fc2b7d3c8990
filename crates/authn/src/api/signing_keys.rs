//! `SigningKeyService`: the tenants' signing keys, and the public documents the gateway
//! serves over HTTP (the key set, discovery, userinfo).

use std::sync::Arc;
use std::time::SystemTime;

use postern_common::error::{Violations, failed_precondition, internal, invalid_field, not_found};
use postern_common::principal::{Principal, principal};
use postern_proto::authn::v1 as pb;
use tonic::{Request, Response, Status};

use super::AuthnApi;
use super::convert::key_to_pb;
use crate::keys::{KeyError, PUBLISH_LEAD};
use crate::login::claims_of;
use crate::status::{invalid_access_token, jwt_refusal};
use crate::tokens::{self, Algorithm, ProfileClaims};
use crate::validate::{check_tenant, tenant_only};

/// How long an HTTP cache may keep the key set and discovery documents.
const DOCUMENT_MAX_AGE_SECS: i32 = 60;

impl AuthnApi {
    /// The tenant's published keys, making its first keys when it has none (and exists),
    /// and a next key when its keys predate next keys.
    async fn published_keys(&self, tenant: &str) -> Result<Arc<Vec<tokens::SigningKey>>, Status> {
        let keys = self.keys.keys(tenant).await?;
        if keys.iter().any(tokens::SigningKey::is_next) {
            return Ok(keys);
        }
        self.tenant_exists(tenant).await?;
        self.keys.current(tenant).await?;
        self.keys.ensure_next(tenant).await?;
        Ok(self.keys.keys(tenant).await?)
    }

    /// The keys as the contract shows them: current, scheduled, next, then retired.
    fn keys_to_pb(&self, keys: &[tokens::SigningKey]) -> Vec<pb::SigningKey> {
        let now = self.keys.now();
        let max = self.keys.published_after_retirement();
        let rank = |k: &tokens::SigningKey| {
            if k.is_current(now) {
                0
            } else if k.is_scheduled(now) {
                1
            } else if k.is_next() {
                2
            } else {
                3
            }
        };
        let mut keys: Vec<&tokens::SigningKey> = keys.iter().collect();
        keys.sort_by_key(|k| (rank(k), std::cmp::Reverse(k.created)));
        keys.into_iter().map(|k| key_to_pb(k, now, max)).collect()
    }
}

#[tonic::async_trait]
impl pb::signing_key_service_server::SigningKeyService for AuthnApi {
    async fn list_signing_keys(
        &self,
        req: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_only(&p, &req.tenant)?;
        let keys = self.published_keys(&req.tenant).await?;
        Ok(Response::new(pb::ListSigningKeysResponse { signing_keys: self.keys_to_pb(&keys) }))
    }

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        tenant_only(&p, &req.tenant)?;
        let alg = match pb::SigningAlgorithm::try_from(req.algorithm) {
            Ok(pb::SigningAlgorithm::Unspecified | pb::SigningAlgorithm::Rs256) => Algorithm::Rs256,
            Ok(pb::SigningAlgorithm::Eddsa) => Algorithm::EdDsa,
            Err(_) => {
                return Err(invalid_field(
                    "algorithm",
                    "must be SIGNING_ALGORITHM_RS256 or SIGNING_ALGORITHM_EDDSA (unspecified means RS256)",
                ));
            }
        };
        self.tenant_exists(&req.tenant).await?;
        let rotation = self.keys.rotate(&req.tenant, alg).await.map_err(|e| match e {
            KeyError::RotationPending(at) => failed_precondition(
                "SIGNING_KEY_ROTATION_PENDING",
                format!(
                    "an earlier rotation's key signs from {}, once it has been published for {} s; rotate again after then",
                    humantime_utc(at),
                    PUBLISH_LEAD.as_secs()
                ),
            ),
            e => e.into(),
        })?;
        let now = self.keys.now();
        let max = self.keys.published_after_retirement();
        let activates = rotation.promoted.activates.map(humantime_utc).unwrap_or_default();
        tracing::info!(tenant = %req.tenant, kid = %rotation.promoted.kid, alg = %rotation.promoted.alg, activates = %activates, "signing key rotated");
        Ok(Response::new(pb::RotateSigningKeyResponse {
            signing_key: Some(key_to_pb(&rotation.promoted, now, max)),
            retired_signing_key: rotation.retired.as_ref().map(|k| key_to_pb(k, now, max)),
            next_signing_key: Some(key_to_pb(&rotation.next, now, max)),
        }))
    }

    async fn get_jwks(&self, req: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        // Public: any authenticated caller (the gateway's HTTP port) may read it.
        principal(&req)?;
        let tenant = req.into_inner().tenant;
        tenant_only(&Principal::Admin, &tenant)?;
        let keys = self.published_keys(&tenant).await?;
        let json = tokens::jwks_json(&keys, self.keys.now(), self.keys.published_after_retirement());
        Ok(Response::new(pb::GetJwksResponse { jwks_json: json, max_age_seconds: DOCUMENT_MAX_AGE_SECS }))
    }

    async fn get_open_id_configuration(
        &self,
        req: Request<pb::GetOpenIdConfigurationRequest>,
    ) -> Result<Response<pb::GetOpenIdConfigurationResponse>, Status> {
        principal(&req)?;
        let tenant = req.into_inner().tenant;
        tenant_only(&Principal::Admin, &tenant)?;
        let keys = self.published_keys(&tenant).await?;
        let algs: Vec<Algorithm> = keys.iter().map(|k| k.alg).collect();
        let doc = tokens::openid_configuration(&self.issuer(&tenant), &algs);
        Ok(Response::new(pb::GetOpenIdConfigurationResponse {
            openid_configuration_json: doc.to_string(),
            max_age_seconds: DOCUMENT_MAX_AGE_SECS,
        }))
    }

    async fn get_user_info(
        &self,
        req: Request<pb::GetUserInfoRequest>,
    ) -> Result<Response<pb::GetUserInfoResponse>, Status> {
        // Public like the documents: the access token is the credential.
        principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        v.into_result()?;
        let (user_id, scope) = self.access_token_subject(&req.tenant, &req.access_token).await?;
        // The tenant as it is now, asked of its owner (this service removes a deleted
        // tenant's users a moment after the deletion is acknowledged): a deleted tenant's
        // tokens serve nothing, nor does a user left over from it serve a later tenant of
        // the same name.
        let created = match self.tenant_created(&req.tenant).await {
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(invalid_access_token(format!("tenant {:?} no longer exists", req.tenant)));
            }
            other => other?,
        };
        let user = self
            .store
            .get_user(&req.tenant, &user_id)
            .await?
            .ok_or_else(|| not_found("USER_NOT_FOUND", "the access token's user no longer exists"))?;
        if user.create_time < created {
            return Err(invalid_access_token(format!(
                "the access token's user belongs to an earlier tenant named {:?}, since deleted",
                req.tenant
            )));
        }
        if user.blocked {
            // As at login: a blocked user's tokens serve nothing until the block is lifted.
            return Err(invalid_access_token("the access token's user is blocked"));
        }
        let info = UserInfo { sub: user.user_id.clone(), profile: claims_of(&user).for_scope(&scope) };
        let claims_json = serde_json::to_string(&info).map_err(|e| internal(&e))?;
        Ok(Response::new(pb::GetUserInfoResponse { claims_json }))
    }
}

/// The answer of the userinfo endpoint: the subject, then the claims the scope grants.
#[derive(serde::Serialize)]
struct UserInfo {
    sub: String,
    #[serde(flatten)]
    profile: ProfileClaims,
}

impl AuthnApi {
    /// Checks an access token presented at `tenant`'s userinfo endpoint and answers its
    /// subject and scope: an opaque token must open under the master key for this tenant,
    /// a JWT must verify against the tenant's key set with the tenant's issuer and the
    /// userinfo endpoint among its audiences. Both must be unexpired. Answers the subject
    /// and the scope.
    async fn access_token_subject(&self, tenant: &str, token: &str) -> Result<(String, String), Status> {
        let token = token.trim();
        if token.is_empty() {
            return Err(invalid_access_token(
                "no access token: present the access token of a login as `Authorization: Bearer <access token>`",
            ));
        }
        if tokens::is_opaque_access_token(token) {
            let claims =
                tokens::open_access_token(&self.config.master_key, tenant, token, SystemTime::now()).map_err(|e| {
                    match e {
                        tokens::Error::Expired => invalid_access_token("the access token has expired; log in again"),
                        _ => invalid_access_token(format!(
                            "the access token is malformed, altered, or was not issued by tenant {tenant:?}"
                        )),
                    }
                })?;
            // Issued under a key the tenant still publishes: not by an earlier namesake.
            if !self.keys.keys(tenant).await?.iter().any(|k| k.kid == claims.kid) {
                return Err(invalid_access_token(format!(
                    "the access token was not issued by tenant {tenant:?}, or its signing key has left the key set"
                )));
            }
            return Ok((claims.sub, claims.scope));
        }
        let issuer = self.issuer(tenant);
        let audience = tokens::userinfo_endpoint(&issuer);
        // The published keys only: checking a token never creates a tenant's first key.
        let keys = self.keys.keys(tenant).await?;
        let set = tokens::jwks(&keys, self.keys.now(), self.keys.published_after_retirement());
        let claims: tokens::AccessTokenClaims =
            tokens::verify(token, &set, &issuer, &audience).map_err(|e| jwt_refusal(tenant, &audience, &e))?;
        Ok((claims.sub, claims.scope))
    }
}

/// A time as RFC 3339 UTC, to the second.
fn humantime_utc(t: SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let ts = prost_types::Timestamp { seconds: i64::try_from(secs).unwrap_or(i64::MAX), nanos: 0 };
    ts.to_string()
}
