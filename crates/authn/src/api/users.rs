//! `UserService`: read, list, update, delete and unblock the users of a tenant, and link and
//! unlink their accounts ([`crate::linking`]).

use postern_common::error::{Violations, already_exists, failed_precondition, invalid_field};
use postern_common::paging::{decode_token, encode_token, page_size};
use postern_common::principal::principal;

use crate::audit::{Facts, Type, caller, caller_ip, event};
use postern_proto::authn::v1 as pb;
use tonic::{Request, Response, Status};

use super::AuthnApi;
use super::convert::user_to_pb;
use crate::bruteforce::MAX_CONSECUTIVE_FAILURES;
use crate::domain::UserPatch;
use crate::linking::LinkCheck;
use crate::status::user_not_found;
use crate::store::StoreError;
use crate::validate::{check_email, check_tenant, required, user_scope};

#[tonic::async_trait]
impl pb::user_service_server::UserService for AuthnApi {
    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        user_scope(&p, &req.tenant, &req.user_id)?;
        let user = self
            .store
            .get_user(&req.tenant, &req.user_id)
            .await?
            .ok_or_else(|| user_not_found(&req.tenant, &req.user_id))?;
        Ok(Response::new(pb::GetUserResponse { user: Some(user_to_pb(&user)) }))
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let limit = page_size(req.page_size)?;
        let scope = format!("users|{}|{}|{}", req.tenant, req.connection, req.email.to_lowercase());
        let after = decode_token(&scope, &req.page_token)?;
        let mut rows = self
            .store
            .list_users(
                &req.tenant,
                Some(req.connection.as_str()).filter(|c| !c.is_empty()),
                Some(req.email.as_str()).filter(|e| !e.is_empty()),
                after.as_deref(),
                limit + 1,
            )
            .await?;
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|(seq, _)| encode_token(&scope, seq)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: rows.iter().map(|(_, u)| user_to_pb(u)).collect(),
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let p = principal(&req)?;
        let ip = caller_ip(&req);
        let req = req.into_inner();
        let user = req.user.ok_or_else(|| invalid_field("user", "is required"))?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "user.user_id", &user.user_id);
        if mask.is_empty() {
            v.add("update_mask", "is required: name the fields to change");
        }
        const MUTABLE: &[&str] = &[
            "email",
            "email_verified",
            "username",
            "name",
            "given_name",
            "family_name",
            "nickname",
            "picture",
            "user_metadata",
            "app_metadata",
            "blocked",
        ];
        const IMMUTABLE: &[&str] = &[
            "user_id",
            "identities",
            "last_login",
            "last_ip",
            "logins_count",
            "create_time",
            "update_time",
            "phone_number",
            "phone_verified",
        ];
        let paths = postern_common::mask::effective_paths(&mut v, &mask, MUTABLE, IMMUTABLE, |_| false);
        let mut patch = UserPatch::default();
        for path in &paths {
            match *path {
                "email" => {
                    check_email(&mut v, "user.email", &user.email);
                    patch.email = Some(user.email.clone());
                }
                "email_verified" => patch.email_verified = Some(user.email_verified),
                "username" => patch.username = Some(user.username.clone()),
                "name" => patch.name = Some(user.name.clone()),
                "given_name" => patch.given_name = Some(user.given_name.clone()),
                "family_name" => patch.family_name = Some(user.family_name.clone()),
                "nickname" => patch.nickname = Some(user.nickname.clone()),
                "picture" => patch.picture = Some(user.picture.clone()),
                "user_metadata" => {
                    if let Some(m) = &user.user_metadata {
                        v.check("user.user_metadata", postern_common::json::check_depth(m));
                    }
                    patch.user_metadata =
                        Some(user.user_metadata.as_ref().map(postern_common::json::from_struct).unwrap_or_default())
                }
                "app_metadata" => {
                    if let Some(m) = &user.app_metadata {
                        v.check("user.app_metadata", postern_common::json::check_depth(m));
                    }
                    patch.app_metadata =
                        Some(user.app_metadata.as_ref().map(postern_common::json::from_struct).unwrap_or_default())
                }
                "blocked" => patch.blocked = Some(user.blocked),
                _ => {}
            }
        }
        for (field, value) in [
            ("user.username", &user.username),
            ("user.name", &user.name),
            ("user.given_name", &user.given_name),
            ("user.family_name", &user.family_name),
            ("user.nickname", &user.nickname),
            ("user.picture", &user.picture),
        ] {
            if paths.contains(&&field[5..]) {
                v.check(field, postern_common::validate::display_text(value, 0, 300));
            }
        }
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let store = &self.store;
        let current = store
            .get_user(&req.tenant, &user.user_id)
            .await?
            .ok_or_else(|| user_not_found(&req.tenant, &user.user_id))?;
        for locking in &current.identities {
            let locked = locking.locked_attributes();
            let synced: Vec<&str> = paths.iter().copied().filter(|p| locked.contains(p)).collect();
            if !synced.is_empty() {
                return Err(failed_precondition(
                    "PROFILE_SYNCED_ON_EACH_LOGIN",
                    format!(
                        "{} cannot be changed: connection {:?} copies the user's profile from its source on each login \
                         (user_profile_sync ON_EACH_LOGIN), so a change here would be undone; change it at the source, \
                         or set the connection's user_profile_sync to ON_FIRST_LOGIN or NEVER_ON_LOGIN",
                        synced.join(", "),
                        locking.connection
                    ),
                ));
            }
        }
        let facts = Facts { tenant: &req.tenant, user_id: &user.user_id, address: &ip, ..Facts::default() };
        let mut events = Vec::new();
        match patch.blocked {
            Some(true) if !current.blocked => events.extend(event(Type::UserBlocked, &facts, None, caller(&p), &[])),
            Some(false) if current.blocked => events.extend(event(Type::UserUnblocked, &facts, None, caller(&p), &[])),
            _ => {}
        }
        let fields = paths.iter().copied().filter(|p| *p != "blocked").collect::<Vec<&str>>().join(",");
        if !fields.is_empty() {
            events.extend(event(Type::UserUpdated, &facts, None, caller(&p), &[("fields", &fields)]));
        }
        let updated = store
            .auditing(events)
            .update_user(&req.tenant, &user.user_id, &patch)
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists => already_exists(
                    "USER_ALREADY_EXISTS",
                    "another user of the same database connection has that email or username",
                ),
                e => e.into(),
            })?
            .ok_or_else(|| user_not_found(&req.tenant, &user.user_id))?;
        Ok(Response::new(pb::UpdateUserResponse { user: Some(user_to_pb(&updated)) }))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let p = principal(&req)?;
        let ip = caller_ip(&req);
        let req = req.into_inner();
        user_scope(&p, &req.tenant, &req.user_id)?;
        let store = &self.store;
        let user = store
            .get_user(&req.tenant, &req.user_id)
            .await?
            .ok_or_else(|| user_not_found(&req.tenant, &req.user_id))?;
        self.delete_external_identities(&req.tenant, &user).await?;
        let facts = Facts { tenant: &req.tenant, user_id: &req.user_id, address: &ip, ..Facts::default() };
        let deleted = event(Type::UserDeleted, &facts, None, caller(&p), &[]);
        let Some(sessions) = store
            .auditing(deleted.into_iter().collect())
            .delete_user_ending_sessions(&req.tenant, &req.user_id)
            .await?
        else {
            return Err(user_not_found(&req.tenant, &req.user_id));
        };
        tracing::info!(tenant = %req.tenant, user_id = %req.user_id, "user deleted");
        // Its applications' own sessions end too (Auth0's "account deleted" initiator).
        let sessions: Vec<(&str, &[String])> = sessions.iter().map(|(s, c)| (s.as_str(), c.as_slice())).collect();
        self.notify_backchannel(&req.tenant, &req.user_id, &sessions).await;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn unblock_user(
        &self,
        req: Request<pb::UnblockUserRequest>,
    ) -> Result<Response<pb::UnblockUserResponse>, Status> {
        let p = principal(&req)?;
        let ip = caller_ip(&req);
        let req = req.into_inner();
        user_scope(&p, &req.tenant, &req.user_id)?;
        let store = &self.store;
        let user = store
            .get_user(&req.tenant, &req.user_id)
            .await?
            .ok_or_else(|| user_not_found(&req.tenant, &req.user_id))?;
        let facts = Facts { tenant: &req.tenant, user_id: &user.user_id, address: &ip, ..Facts::default() };
        let unblocked = event(Type::UserUnblocked, &facts, None, caller(&p), &[]);
        let mut lifted = store
            .auditing(unblocked.into_iter().collect())
            .unblock(&req.tenant, &user.user_id, MAX_CONSECUTIVE_FAILURES)
            .await?;
        // Attempts counted before the user existed locally, under its login names.
        for identity in &user.identities {
            for name in [&identity.login_email, &identity.login_username] {
                if !name.is_empty() {
                    let key = format!("login:{}:{name}", identity.connection_id);
                    lifted += store.unblock(&req.tenant, &key, MAX_CONSECUTIVE_FAILURES).await?;
                }
            }
        }
        Ok(Response::new(pb::UnblockUserResponse { unblocked_addresses: i32::try_from(lifted).unwrap_or(i32::MAX) }))
    }

    async fn link_user_account(
        &self,
        req: Request<pb::LinkUserAccountRequest>,
    ) -> Result<Response<pb::LinkUserAccountResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "user_id", &req.user_id);
        required(&mut v, "secondary_user_id", &req.secondary_user_id);
        let check = match pb::LinkCheck::try_from(req.check) {
            Ok(pb::LinkCheck::Unspecified | pb::LinkCheck::VerifiedEmail) => LinkCheck::VerifiedEmail,
            Ok(pb::LinkCheck::CallerVerified) => LinkCheck::CallerVerified,
            Err(_) => {
                v.add("check", "is not a link check; use LINK_CHECK_VERIFIED_EMAIL or LINK_CHECK_CALLER_VERIFIED");
                LinkCheck::VerifiedEmail
            }
        };
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let user = self.link_users(&req.tenant, &req.user_id, &req.secondary_user_id, check).await?;
        Ok(Response::new(pb::LinkUserAccountResponse { user: Some(user_to_pb(&user)) }))
    }

    async fn unlink_user_account(
        &self,
        req: Request<pb::UnlinkUserAccountRequest>,
    ) -> Result<Response<pb::UnlinkUserAccountResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "user_id", &req.user_id);
        required(&mut v, "connection", &req.connection);
        required(&mut v, "identity_user_id", &req.identity_user_id);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let (user, unlinked) =
            self.unlink_identity(&req.tenant, &req.user_id, &req.connection, &req.identity_user_id).await?;
        Ok(Response::new(pb::UnlinkUserAccountResponse {
            user: Some(user_to_pb(&user)),
            unlinked_user: Some(user_to_pb(&unlinked)),
        }))
    }
}
