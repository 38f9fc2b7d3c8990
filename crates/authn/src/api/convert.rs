//! The authenticator's types in the contract's terms: the one place that builds the
//! `postern.authn.v1` messages the handlers answer.

use std::time::SystemTime;

use postern_common::time::to_timestamp;
use postern_proto::authn::v1 as pb;

use crate::domain::User;
use crate::tokens::{self, Algorithm};

/// The user in the contract's terms.
pub fn user_to_pb(u: &User) -> pb::User {
    let p = &u.profile;
    pb::User {
        user_id: u.user_id.clone(),
        email: p.email.clone(),
        email_verified: p.email_verified,
        username: p.username.clone(),
        name: p.name.clone(),
        given_name: p.given_name.clone(),
        family_name: p.family_name.clone(),
        nickname: p.nickname.clone(),
        picture: p.picture.clone(),
        phone_number: p.phone_number.clone(),
        phone_verified: p.phone_verified,
        identities: u
            .identities
            .iter()
            .map(|i| pb::Identity {
                connection: i.connection.clone(),
                strategy: i.strategy.clone(),
                user_id: i.source_id.clone(),
                is_social: i.is_social,
                profile_data: match &i.profile_data {
                    serde_json::Value::Object(m) if !m.is_empty() => Some(postern_common::json::to_struct(m)),
                    _ => None,
                },
            })
            .collect(),
        user_metadata: Some(postern_common::json::to_struct(&u.user_metadata)),
        app_metadata: Some(postern_common::json::to_struct(&u.app_metadata)),
        blocked: u.blocked,
        last_login: u.last_login.map(to_timestamp),
        last_ip: u.last_ip.clone(),
        logins_count: u.logins_count,
        create_time: Some(to_timestamp(u.create_time)),
        update_time: Some(to_timestamp(u.update_time)),
    }
}

/// The answer of a login: its tokens and its user.
pub fn login_to_pb(issued: tokens::Issued, user: &User) -> pb::LoginResponse {
    pb::LoginResponse {
        id_token: issued.id_token,
        access_token: issued.access_token,
        token_type: issued.token_type.to_owned(),
        expires_in: i64::try_from(issued.expires_in).unwrap_or(i64::MAX),
        user: Some(user_to_pb(user)),
        scope: issued.scope,
    }
}

/// A signing key in the contract's terms; `max_lifetime` (the longest token lifetime)
/// decides when a retired key expires.
pub fn key_to_pb(k: &tokens::SigningKey, now: SystemTime, max_lifetime: std::time::Duration) -> pb::SigningKey {
    let ts = |t: SystemTime| {
        let micros = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        to_timestamp(i64::try_from(micros).unwrap_or(i64::MAX))
    };
    pb::SigningKey {
        kid: k.kid.clone(),
        algorithm: match k.alg {
            Algorithm::Rs256 => pb::SigningAlgorithm::Rs256 as i32,
            Algorithm::EdDsa => pb::SigningAlgorithm::Eddsa as i32,
        },
        public_jwk: k.public_jwk_json(),
        current: k.is_current(now),
        create_time: Some(ts(k.created)),
        retire_time: k.retired_at.map(ts),
        expire_time: k.expire_time(max_lifetime).map(ts),
        activate_time: k.activates.map(ts),
        next: k.is_next(),
    }
}
