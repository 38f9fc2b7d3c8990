//! Account linking, as Auth0 does it: a secondary user's identities move to a primary user,
//! who then logs in through any of them; unlinking gives one identity back as a user of its
//! own. Never automatic: only `UserService/LinkUserAccount` links, and by default only two
//! users whose email addresses are both verified and equal.
//!
//! The rules are checked by the store's transaction on the users as they are under lock
//! ([`crate::store::linking`]), so a concurrent change cannot slip between check and write.

use postern_common::error::{already_exists, failed_precondition, invalid_field, not_found};
use postern_common::validate::truncate;
use serde_json::Value;
use tonic::Status;

use crate::api::AuthnApi;
use crate::domain::{Identity, Profile, User, default_nickname};
use crate::status::user_not_found;
use crate::store::linking::Linked;
use crate::store::{NewUser, StoreError};

/// What must hold before two users are linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCheck {
    /// Both email addresses are verified and equal (case-insensitively).
    VerifiedEmail,
    /// The caller proved by other means that one person owns both accounts.
    CallerVerified,
}

impl AuthnApi {
    /// Links `secondary` to `primary`: the secondary user's identities move to the primary
    /// user and the secondary user is deleted. Answers the primary user as it is now.
    pub async fn link_users(
        &self,
        tenant: &str,
        primary: &str,
        secondary: &str,
        check: LinkCheck,
    ) -> Result<User, Status> {
        if primary == secondary {
            return Err(invalid_field("secondary_user_id", "must name another user than user_id"));
        }
        let linked = self.store.link_users(tenant, primary, secondary, |p, s| link_rule(p, s, check)).await?;
        match linked {
            Linked::Done(user) => {
                tracing::info!(tenant = %tenant, user_id = %primary, secondary = %secondary, "accounts linked");
                Ok(*user)
            }
            Linked::Missing(user_id) => Err(user_not_found(tenant, &user_id)),
            Linked::Refused(status) => Err(status),
        }
    }

    /// Unlinks the identity `source_id` of `connection` (by name) from `user_id`, making it a
    /// user of its own. Answers the user and the new user.
    pub async fn unlink_identity(
        &self,
        tenant: &str,
        user_id: &str,
        connection: &str,
        source_id: &str,
    ) -> Result<(User, User), Status> {
        let user = self.store.get_user(tenant, user_id).await?.ok_or_else(|| user_not_found(tenant, user_id))?;
        let identity = user
            .identities
            .iter()
            .find(|i| i.connection == connection && i.source_id == source_id)
            .ok_or_else(|| identity_not_found(tenant, user_id, connection, source_id))?;
        let new = NewUser {
            user_id: format!("{}|{}", identity.strategy, identity.source_id),
            profile: profile_of_identity(identity),
            user_metadata: Default::default(),
            app_metadata: Default::default(),
        };
        let (connection_id, source_id) = (identity.connection_id.clone(), identity.source_id.clone());
        let outcome = self
            .store
            .unlink_identity(tenant, user_id, &connection_id, &source_id, &new, |u| {
                unlink_rule(u, &connection_id, &source_id)
            })
            .await;
        match outcome {
            Ok(Linked::Done((user, unlinked))) => {
                tracing::info!(tenant = %tenant, user_id = %user_id, unlinked = %unlinked.user_id, "identity unlinked");
                Ok((user, unlinked))
            }
            Ok(Linked::Missing(_)) => Err(identity_not_found(tenant, user_id, connection, &source_id)),
            Ok(Linked::Refused(status)) => Err(status),
            Err(StoreError::AlreadyExists) => Err(already_exists(
                "USER_ALREADY_EXISTS",
                format!(
                    "tenant {tenant:?} already has a user {:?}, the id the unlinked identity would take",
                    truncate(&new.user_id, 128)
                ),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether `secondary` may be linked to `primary` under `check`.
fn link_rule(primary: &User, secondary: &User, check: LinkCheck) -> Result<(), Status> {
    for u in [primary, secondary] {
        if u.blocked {
            return Err(failed_precondition(
                "USER_BLOCKED",
                format!("user {:?} is blocked by an administrator; unblock it (UpdateUser) before linking", u.user_id),
            ));
        }
    }
    if check == LinkCheck::VerifiedEmail {
        for u in [primary, secondary] {
            if !u.profile.email_verified || u.profile.email.is_empty() {
                return Err(failed_precondition(
                    "EMAIL_NOT_VERIFIED",
                    format!(
                        "user {:?} has no verified email address; accounts are linked on verified email addresses only \
                         (check LINK_CHECK_VERIFIED_EMAIL)",
                        u.user_id
                    ),
                ));
            }
        }
        if primary.profile.email.to_lowercase() != secondary.profile.email.to_lowercase() {
            return Err(failed_precondition(
                "EMAIL_MISMATCH",
                "the two users' verified email addresses differ; accounts are linked only when they are the same \
                 (check LINK_CHECK_VERIFIED_EMAIL)",
            ));
        }
    }
    if let Some(shared) =
        secondary.identities.iter().find(|s| primary.identities.iter().any(|p| p.connection_id == s.connection_id))
    {
        return Err(failed_precondition(
            "SAME_CONNECTION",
            format!(
                "both users have an identity in connection {:?}; a user has at most one identity per connection",
                shared.connection
            ),
        ));
    }
    Ok(())
}

/// Whether the identity may leave `user`.
fn unlink_rule(user: &User, connection_id: &str, source_id: &str) -> Result<(), Status> {
    if user.blocked {
        return Err(failed_precondition(
            "USER_BLOCKED",
            format!("user {:?} is blocked by an administrator; unblock it (UpdateUser) before unlinking", user.user_id),
        ));
    }
    let primary = user
        .identities
        .iter()
        .any(|i| i.connection_id == connection_id && i.source_id == source_id && i.is_primary_of(&user.user_id));
    if primary {
        return Err(failed_precondition(
            "PRIMARY_IDENTITY",
            format!(
                "the identity is user {:?}'s primary identity (the one its id names) and cannot be unlinked; delete \
                 the user instead",
                user.user_id
            ),
        ));
    }
    Ok(())
}

fn identity_not_found(tenant: &str, user_id: &str, connection: &str, source_id: &str) -> Status {
    not_found(
        "IDENTITY_NOT_FOUND",
        format!(
            "user {:?} of tenant {tenant:?} has no identity {:?} in connection {:?}",
            truncate(user_id, 128),
            truncate(source_id, 128),
            truncate(connection, 128)
        ),
    )
}

/// The root profile of a user made from an unlinked identity: what its source sent at the
/// last login (`profile_data`, whose standard attributes every connector writes), else the
/// names it logs in with. `email_verified` only where the source asserted it.
pub fn profile_of_identity(identity: &Identity) -> Profile {
    let data = identity.profile_data.as_object();
    let text = |key: &str| data.and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut p = Profile {
        email: text("email"),
        email_verified: data.and_then(|m| m.get("email_verified")).and_then(Value::as_bool).unwrap_or(false),
        username: text("username"),
        name: text("name"),
        given_name: text("given_name"),
        family_name: text("family_name"),
        nickname: text("nickname"),
        picture: text("picture"),
        phone_number: text("phone_number"),
        phone_verified: data.and_then(|m| m.get("phone_verified")).and_then(Value::as_bool).unwrap_or(false),
    };
    if p.email.is_empty() {
        p.email = identity.login_email.clone();
        p.email_verified = false;
    }
    if p.username.is_empty() {
        p.username = identity.login_username.clone();
    }
    if p.nickname.is_empty() {
        p.nickname = default_nickname(&p.email);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProfileSync;
    use serde_json::json;

    fn identity(strategy: &str, source_id: &str, connection_id: &str, data: Value) -> Identity {
        Identity {
            connection_id: connection_id.into(),
            connection: format!("{connection_id}-name"),
            strategy: strategy.into(),
            source_id: source_id.into(),
            is_social: strategy != "auth0",
            login_email: String::new(),
            login_username: String::new(),
            profile_data: data,
            profile_sync: ProfileSync::OnEachLogin,
            external: false,
            password_hash: None,
        }
    }

    fn user(id: &str, email: &str, verified: bool, identities: Vec<Identity>) -> User {
        User {
            user_id: id.into(),
            profile: Profile { email: email.into(), email_verified: verified, ..Profile::default() },
            user_metadata: Default::default(),
            app_metadata: Default::default(),
            blocked: false,
            last_login: None,
            last_ip: String::new(),
            logins_count: 0,
            create_time: 0,
            update_time: 0,
            identities,
        }
    }

    #[track_caller]
    fn refused(r: Result<(), Status>, reason: &str) {
        let s = r.expect_err("refused");
        assert_eq!(postern_common::error::reason(&s).as_deref(), Some(reason), "{s:?}");
    }

    #[test]
    fn link_rules() {
        let p = user("auth0|1", "Jane@Fabrikam.example", true, vec![identity("auth0", "1", "con_db", json!({}))]);
        let s = user("github|9", "jane@fabrikam.example", true, vec![identity("github", "9", "con_gh", json!({}))]);
        assert!(link_rule(&p, &s, LinkCheck::VerifiedEmail).is_ok());

        let unverified = user("github|9", "jane@fabrikam.example", false, s.identities.clone());
        refused(link_rule(&p, &unverified, LinkCheck::VerifiedEmail), "EMAIL_NOT_VERIFIED");
        refused(link_rule(&unverified, &p, LinkCheck::VerifiedEmail), "EMAIL_NOT_VERIFIED");
        assert!(link_rule(&p, &unverified, LinkCheck::CallerVerified).is_ok());

        let other = user("github|9", "john@fabrikam.example", true, s.identities.clone());
        refused(link_rule(&p, &other, LinkCheck::VerifiedEmail), "EMAIL_MISMATCH");

        let same_conn =
            user("auth0|2", "jane@fabrikam.example", true, vec![identity("auth0", "2", "con_db", json!({}))]);
        refused(link_rule(&p, &same_conn, LinkCheck::CallerVerified), "SAME_CONNECTION");

        let mut blocked = s.clone();
        blocked.blocked = true;
        refused(link_rule(&p, &blocked, LinkCheck::CallerVerified), "USER_BLOCKED");
    }

    #[test]
    fn the_primary_identity_stays() {
        let u = user(
            "auth0|1",
            "jane@fabrikam.example",
            true,
            vec![identity("auth0", "1", "con_db", json!({})), identity("github", "9", "con_gh", json!({}))],
        );
        refused(unlink_rule(&u, "con_db", "1"), "PRIMARY_IDENTITY");
        assert!(unlink_rule(&u, "con_gh", "9").is_ok());
        // A source id that merely starts like the user id's tail is not the primary identity.
        assert!(identity("auth0", "1", "c", json!({})).is_primary_of("auth0|1"));
        assert!(!identity("auth0", "1", "c", json!({})).is_primary_of("auth0|12"));
        assert!(!identity("auth", "0|1", "c", json!({})).is_primary_of("auth0|1"));
    }

    #[test]
    fn an_unlinked_identity_gets_the_profile_its_source_sent() {
        let i = identity(
            "github",
            "9",
            "con_gh",
            json!({"email": "jane@fabrikam.example", "email_verified": true, "name": "Jane Doe", "login": "jdoe"}),
        );
        let p = profile_of_identity(&i);
        assert_eq!((p.email.as_str(), p.email_verified, p.name.as_str()), ("jane@fabrikam.example", true, "Jane Doe"));
        assert_eq!(p.nickname, "jane");

        let mut db = identity("auth0", "1", "con_db", json!({}));
        db.login_email = "jane@fabrikam.example".into();
        let p = profile_of_identity(&db);
        assert_eq!((p.email.as_str(), p.email_verified), ("jane@fabrikam.example", false));
    }
}
