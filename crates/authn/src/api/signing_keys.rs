//! `SigningKeyService`: the tenants' signing keys, and the public documents the gateway
//! serves over HTTP (the key set, discovery, userinfo).

use std::sync::Arc;
use std::time::SystemTime;

use postern_common::error::{Violations, internal, invalid_field, not_found};
use postern_common::principal::{Principal, principal};
use postern_proto::authn::v1 as pb;
use tonic::{Request, Response, Status};

use super::AuthnApi;
use super::convert::key_to_pb;
use crate::login::claims_of;
use crate::status::{invalid_access_token, jwt_refusal};
use crate::tokens::{self, Algorithm, ProfileClaims};
use crate::validate::{check_tenant, tenant_only};

/// How long an HTTP cache may keep the key set and discovery documents.
const DOCUMENT_MAX_AGE_SECS: i32 = 60;

impl AuthnApi {
    /// The tenant's published keys, making its first key when it has none (and exists).
    async fn published_keys(&self, tenant: &str) -> Result<Arc<Vec<tokens::SigningKey>>, Status> {
        let keys = self.keys.keys(tenant).await?;
        if keys.iter().any(|k| k.is_current()) {
            return Ok(keys);
        }
        self.tenant_exists(tenant).await?;
        self.keys.current(tenant).await?;
        Ok(self.keys.keys(tenant).await?)
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
        let max = self.keys.lifetimes().max();
        Ok(Response::new(pb::ListSigningKeysResponse {
            signing_keys: keys.iter().map(|k| key_to_pb(k, max)).collect(),
        }))
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
        let (new, retired) = self.keys.rotate(&req.tenant, alg).await?;
        let max = self.keys.lifetimes().max();
        tracing::info!(tenant = %req.tenant, kid = %new.kid, alg = %new.alg, "signing key rotated");
        Ok(Response::new(pb::RotateSigningKeyResponse {
            signing_key: Some(key_to_pb(&new, max)),
            retired_signing_key: retired.as_ref().map(|k| key_to_pb(k, max)),
        }))
    }

    async fn get_jwks(&self, req: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        // Public: any authenticated caller (the gateway's HTTP port) may read it.
        principal(&req)?;
        let tenant = req.into_inner().tenant;
        tenant_only(&Principal::Admin, &tenant)?;
        let keys = self.published_keys(&tenant).await?;
        let json = tokens::jwks_json(&keys, SystemTime::now(), self.keys.lifetimes().max());
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
        let user = self
            .store
            .get_user(&req.tenant, &user_id)
            .await?
            .ok_or_else(|| not_found("USER_NOT_FOUND", "the access token's user no longer exists"))?;
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
    /// userinfo endpoint among its audiences. Both must be unexpired.
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
        let set = tokens::jwks(&keys, SystemTime::now(), self.keys.lifetimes().max());
        let claims: tokens::AccessTokenClaims =
            tokens::verify(token, &set, &issuer, &audience).map_err(|e| jwt_refusal(tenant, &audience, &e))?;
        Ok((claims.sub, claims.scope))
    }
}
