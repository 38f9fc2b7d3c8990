//! Account linking (`UserService/LinkUserAccount` and `UnlinkUserAccount`), as Auth0 does it:
//! a secondary user's identities move to a primary user, who then logs in through any of
//! them; unlinking gives an identity back as a user of its own. Never automatic, never on an
//! unverified email unless the caller vouches, never across tenants. The same scenario runs
//! on SQLite and on PostgreSQL.
//!
//! The second source of users is a directory behind the `ldap` strategy (a test connector,
//! as in `tests/connectors.rs`): its users come from outside Postern with a verified email,
//! as a social or enterprise login's do.

use std::sync::Arc;

use postern_connection::{Resolved, Strategy};
use postern_connector::{
    ConnectorError, ExternalProfile, PasswordChange, PasswordChanged, PasswordConnector, Profile, SignedUp, Signup,
    Verified, async_trait,
};
use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_testkit::{Clients, Suite, reason, violated_fields};
use tonic::Code;

const PASSWORD: &str = "Rabbit-Hole-7";

/// A directory of two people, each with a verified email address.
struct Directory;

#[async_trait]
impl PasswordConnector for Directory {
    fn brute_force_protection(&self, _: &Resolved) -> bool {
        false
    }

    async fn verify(
        &self,
        _tenant: &str,
        _conn: &Resolved,
        login: &str,
        password: &str,
        _local_hash: Option<&str>,
    ) -> Result<Verified, ConnectorError> {
        let given_name = match login {
            "alice" => "Alice",
            "carol" => "Carol",
            _ => return Err(ConnectorError::WrongCredentials),
        };
        if password != PASSWORD {
            return Err(ConnectorError::WrongCredentials);
        }
        let profile = Profile {
            email: format!("{login}@fabrikam.example"),
            email_verified: true,
            given_name: given_name.into(),
            username: login.into(),
            ..Profile::default()
        };
        Ok(Verified::External {
            profile: Box::new(ExternalProfile {
                source_id: login.into(),
                raw: profile.to_json(),
                profile,
                user_metadata: serde_json::Map::new(),
                app_metadata: serde_json::Map::new(),
            }),
            import_hash: None,
        })
    }

    async fn sign_up(&self, _: &str, _: &Resolved, _: &Signup<'_>) -> Result<SignedUp, ConnectorError> {
        Err(ConnectorError::PermissionDenied { reason: "SIGNUP_DISABLED", message: "no signups".into() })
    }

    async fn change_password(
        &self,
        _: &str,
        _: &Resolved,
        _: &PasswordChange<'_>,
        _: &str,
    ) -> Result<PasswordChanged, ConnectorError> {
        Err(ConnectorError::FailedPrecondition { reason: "NO_PASSWORD", message: "change it in the directory".into() })
    }

    async fn delete(&self, _: &str, _: &Resolved, _: &str) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// A tenant with a database connection (`customers`) and a directory (`corp`), both enabled
/// for one client.
struct World {
    admin: Clients,
    tenant: &'static str,
    client: postern_proto::tenant::v1::Client,
}

impl World {
    async fn new(suite: &Suite, tenant: &'static str) -> World {
        let mut admin = suite.admin().await;
        admin.create_tenant(tenant).await.expect("tenant");
        let client = admin.create_client(tenant, "Fabrikam Customer Portal").await.expect("client");
        admin.create_database_connection(tenant, "customers", &client.client_id).await.expect("database");
        let corp = conn::Connection {
            name: "corp".into(),
            strategy: "ldap".into(),
            options: Some(conn::connection::Options::Ldap(conn::LdapOptions {
                url: "ldaps://dc1.fabrikam.example".into(),
                bind_dn: "cn=postern,dc=fabrikam,dc=example".into(),
                bind_password: "bind-secret".into(),
                base_dn: "ou=people,dc=fabrikam,dc=example".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        admin
            .connections
            .create_connection(conn::CreateConnectionRequest { tenant: tenant.into(), connection: Some(corp) })
            .await
            .expect("directory");
        admin
            .connections
            .enable_client(conn::EnableClientRequest {
                tenant: tenant.into(),
                connection: "corp".into(),
                client_id: client.client_id.clone(),
            })
            .await
            .expect("enable");
        World { admin, tenant, client }
    }

    async fn signup(&mut self, email: &str) -> authn::User {
        let r = self
            .admin
            .authn
            .signup(authn::SignupRequest {
                tenant: self.tenant.into(),
                client_id: self.client.client_id.clone(),
                connection: "customers".into(),
                email: email.into(),
                password: "Wonder-Land-42!".into(),
                ..Default::default()
            })
            .await
            .expect("signup");
        r.into_inner().user.expect("user")
    }

    async fn login(&mut self, connection: &str, username: &str, password: &str) -> Result<authn::User, tonic::Status> {
        let r = self
            .admin
            .authn
            .login(authn::LoginRequest {
                tenant: self.tenant.into(),
                client_id: self.client.client_id.clone(),
                client_secret: self.client.client_secret.clone(),
                connection: connection.into(),
                username: username.into(),
                password: password.into(),
                ip: "198.51.100.4".into(),
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().user.expect("user"))
    }

    async fn get(&mut self, user_id: &str) -> Result<authn::User, tonic::Status> {
        let r = self
            .admin
            .users
            .get_user(authn::GetUserRequest { tenant: self.tenant.into(), user_id: user_id.into() })
            .await?;
        Ok(r.into_inner().user.expect("user"))
    }

    async fn link(
        &mut self,
        primary: &str,
        secondary: &str,
        check: authn::LinkCheck,
    ) -> Result<authn::User, tonic::Status> {
        let r = self
            .admin
            .users
            .link_user_account(authn::LinkUserAccountRequest {
                tenant: self.tenant.into(),
                user_id: primary.into(),
                secondary_user_id: secondary.into(),
                check: check as i32,
            })
            .await?;
        Ok(r.into_inner().user.expect("user"))
    }

    async fn unlink(
        &mut self,
        user_id: &str,
        connection: &str,
        identity: &str,
    ) -> Result<(authn::User, authn::User), tonic::Status> {
        let r = self
            .admin
            .users
            .unlink_user_account(authn::UnlinkUserAccountRequest {
                tenant: self.tenant.into(),
                user_id: user_id.into(),
                connection: connection.into(),
                identity_user_id: identity.into(),
            })
            .await?
            .into_inner();
        Ok((r.user.expect("user"), r.unlinked_user.expect("unlinked user")))
    }

    async fn set_verified(&mut self, user_id: &str, verified: bool) {
        self.admin
            .users
            .update_user(authn::UpdateUserRequest {
                tenant: self.tenant.into(),
                user: Some(authn::User { user_id: user_id.into(), email_verified: verified, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["email_verified".into()] }),
            })
            .await
            .expect("update");
    }
}

#[track_caller]
fn refused(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, why: &str) {
    let s = r.expect_err("refused");
    assert_eq!((s.code(), reason(&s).as_deref()), (code, Some(why)), "{s:?}");
}

async fn suite_with_directory(database_url: Option<String>) -> Suite {
    Suite::start_with(|s| {
        s.database_url = database_url;
        s.connectors = Some(postern::connectors().with_password(Strategy::Ldap, Arc::new(Directory)));
    })
    .await
    .expect("suite")
}

/// Linking and unlinking, with every refusal, on one backend.
async fn link_and_unlink(database_url: Option<String>) {
    let suite = suite_with_directory(database_url).await;
    let mut w = World::new(&suite, "fabrikam-public").await;
    let jane = w.signup("alice@fabrikam.example").await;
    assert!(!jane.email_verified);
    let alice = w.login("corp", "alice", PASSWORD).await.expect("directory login");
    assert_eq!(alice.user_id, "ldap|alice");
    assert!(alice.email_verified);

    // Never on an unverified email: the database user's is not verified yet. Nothing moves.
    refused(
        w.link(&jane.user_id, "ldap|alice", authn::LinkCheck::Unspecified).await,
        Code::FailedPrecondition,
        "EMAIL_NOT_VERIFIED",
    );
    refused(
        w.link("ldap|alice", &jane.user_id, authn::LinkCheck::VerifiedEmail).await,
        Code::FailedPrecondition,
        "EMAIL_NOT_VERIFIED",
    );
    assert_eq!(w.get("ldap|alice").await.expect("still there").identities.len(), 1);
    assert_eq!(w.get(&jane.user_id).await.expect("still there").identities.len(), 1);

    // Verified and equal: linked. The secondary user is gone; its identity is the primary's.
    w.set_verified(&jane.user_id, true).await;
    let linked = w.link(&jane.user_id, "ldap|alice", authn::LinkCheck::VerifiedEmail).await.expect("linked");
    assert_eq!(linked.user_id, jane.user_id);
    let ids: Vec<(&str, &str)> =
        linked.identities.iter().map(|i| (i.connection.as_str(), i.user_id.as_str())).collect();
    assert_eq!(ids[0].0, "customers", "the primary identity comes first: {ids:?}");
    assert_eq!(ids[1], ("corp", "alice"));
    refused(w.get("ldap|alice").await, Code::NotFound, "USER_NOT_FOUND");
    assert_eq!(linked.given_name, "", "the primary user keeps its own profile");

    // A login through the moved identity is the primary user's, and leaves its root profile
    // alone (the directory's given name stays on the identity).
    let again = w.login("corp", "alice", PASSWORD).await.expect("login through the linked identity");
    assert_eq!(again.user_id, jane.user_id);
    assert_eq!(again.given_name, "");
    assert_eq!(again.logins_count, linked.logins_count + 1);
    let by_password = w.login("customers", "alice@fabrikam.example", "Wonder-Land-42!").await.expect("password login");
    assert_eq!(by_password.user_id, jane.user_id);
    // A linked user is found by either connection.
    for connection in ["corp", "customers"] {
        let listed = w
            .admin
            .users
            .list_users(authn::ListUsersRequest {
                tenant: w.tenant.into(),
                connection: connection.into(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        let listed: Vec<&str> = listed.users.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(listed, [jane.user_id.as_str()], "{connection}");
    }

    // The primary identity stays; an unknown identity is NOT_FOUND.
    let primary_source = jane.user_id.trim_start_matches("auth0|");
    refused(w.unlink(&jane.user_id, "customers", primary_source).await, Code::FailedPrecondition, "PRIMARY_IDENTITY");
    refused(w.unlink(&jane.user_id, "corp", "bob").await, Code::NotFound, "IDENTITY_NOT_FOUND");

    // Unlinked: the identity is a user of its own again, with the profile its source sent.
    let (left, back) = w.unlink(&jane.user_id, "corp", "alice").await.expect("unlinked");
    assert_eq!(left.identities.len(), 1);
    assert_eq!(back.user_id, "ldap|alice");
    assert_eq!(
        (back.email.as_str(), back.email_verified, back.given_name.as_str()),
        ("alice@fabrikam.example", true, "Alice")
    );
    assert_eq!(back.identities.len(), 1);
    let own = w.login("corp", "alice", PASSWORD).await.expect("login as the unlinked user");
    assert_eq!(own.user_id, "ldap|alice");
    refused(w.unlink(&jane.user_id, "corp", "alice").await, Code::NotFound, "IDENTITY_NOT_FOUND");

    // Verified but different addresses: refused by default, linked when the caller vouches.
    let carol = w.login("corp", "carol", PASSWORD).await.expect("carol");
    refused(
        w.link(&jane.user_id, &carol.user_id, authn::LinkCheck::VerifiedEmail).await,
        Code::FailedPrecondition,
        "EMAIL_MISMATCH",
    );
    // Two identities in one connection cannot share a user.
    refused(
        w.link(&carol.user_id, "ldap|alice", authn::LinkCheck::CallerVerified).await,
        Code::FailedPrecondition,
        "SAME_CONNECTION",
    );
    // A blocked user is not linked (that would lift the block).
    w.admin
        .users
        .update_user(authn::UpdateUserRequest {
            tenant: w.tenant.into(),
            user: Some(authn::User { user_id: carol.user_id.clone(), blocked: true, ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["blocked".into()] }),
        })
        .await
        .expect("block");
    refused(
        w.link(&jane.user_id, &carol.user_id, authn::LinkCheck::CallerVerified).await,
        Code::FailedPrecondition,
        "USER_BLOCKED",
    );

    // Bad input names its field.
    let same = w.link(&jane.user_id, &jane.user_id, authn::LinkCheck::CallerVerified).await.expect_err("self");
    assert_eq!((same.code(), violated_fields(&same)), (Code::InvalidArgument, vec!["secondary_user_id".to_owned()]));
    let bad = w
        .admin
        .users
        .link_user_account(authn::LinkUserAccountRequest {
            tenant: w.tenant.into(),
            user_id: jane.user_id.clone(),
            secondary_user_id: String::new(),
            check: 42,
        })
        .await
        .expect_err("bad input");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&bad);
    fields.sort();
    assert_eq!(fields, ["check", "secondary_user_id"]);
    refused(
        w.link(&jane.user_id, "ldap|nobody", authn::LinkCheck::CallerVerified).await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );

    // Another tenant's users are not found, and another tenant's key may not ask.
    let mut other = World::new(&suite, "fabrikam-internal").await;
    let dave = other.signup("dave@fabrikam.example").await;
    refused(
        w.link(&jane.user_id, &dave.user_id, authn::LinkCheck::CallerVerified).await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let key = other.admin.create_api_key("fabrikam-internal").await.expect("key");
    let mut foreign = suite.clients(&key).await;
    let denied = foreign
        .users
        .link_user_account(authn::LinkUserAccountRequest {
            tenant: "fabrikam-public".into(),
            user_id: jane.user_id.clone(),
            secondary_user_id: "ldap|alice".into(),
            check: authn::LinkCheck::CallerVerified as i32,
        })
        .await
        .expect_err("cross-tenant");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = foreign
        .users
        .unlink_user_account(authn::UnlinkUserAccountRequest {
            tenant: "fabrikam-public".into(),
            user_id: jane.user_id.clone(),
            connection: "customers".into(),
            identity_user_id: primary_source.into(),
        })
        .await
        .expect_err("cross-tenant");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(w.get("ldap|alice").await.expect("untouched").identities.len(), 1);
    suite.stop().await.expect("stop");
}

/// Two links of one secondary user into two primaries at once: exactly one wins, and the
/// identity ends with one user.
async fn concurrent_links(database_url: Option<String>) {
    let suite = suite_with_directory(database_url).await;
    let mut w = World::new(&suite, "fabrikam-public").await;
    let first = w.signup("first@fabrikam.example").await;
    let second = {
        // A second primary in the same tenant: another database connection.
        w.admin.create_database_connection(w.tenant, "partners", &w.client.client_id).await.expect("partners");
        let r = w
            .admin
            .authn
            .signup(authn::SignupRequest {
                tenant: w.tenant.into(),
                client_id: w.client.client_id.clone(),
                connection: "partners".into(),
                email: "second@fabrikam.example".into(),
                password: "Wonder-Land-42!".into(),
                ..Default::default()
            })
            .await
            .expect("signup");
        r.into_inner().user.expect("user")
    };
    for round in 0..5 {
        let alice = w.login("corp", "alice", PASSWORD).await.expect("alice");
        assert_eq!(alice.user_id, "ldap|alice", "round {round}");
        let (mut a, mut b) = (w.admin.users.clone(), w.admin.users.clone());
        let req = |primary: &str| authn::LinkUserAccountRequest {
            tenant: "fabrikam-public".into(),
            user_id: primary.into(),
            secondary_user_id: "ldap|alice".into(),
            check: authn::LinkCheck::CallerVerified as i32,
        };
        let (ra, rb) =
            tokio::join!(a.link_user_account(req(&first.user_id)), b.link_user_account(req(&second.user_id)));
        let (winner, loser) = match (ra, rb) {
            (Ok(_), Err(e)) => (&first.user_id, e),
            (Err(e), Ok(_)) => (&second.user_id, e),
            (ra, rb) => panic!("round {round}: exactly one link must win: {ra:?} / {rb:?}"),
        };
        assert_eq!((loser.code(), reason(&loser).as_deref()), (Code::NotFound, Some("USER_NOT_FOUND")), "{loser:?}");
        let mut count = 0;
        for u in [&first.user_id, &second.user_id] {
            let user = w.get(u).await.expect("primary");
            count += user.identities.iter().filter(|i| i.connection == "corp").count();
        }
        assert_eq!(count, 1, "round {round}: the identity has exactly one user");
        w.unlink(winner, "corp", "alice").await.expect("unlink for the next round");
    }
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn link_and_unlink_on_sqlite() {
    link_and_unlink(None).await;
}

#[tokio::test]
async fn link_and_unlink_on_postgres() {
    let Some(base) = postern_testkit::peers::postgres("link_and_unlink_on_postgres") else { return };
    let db = postern_testkit::peers::TestDatabase::create(&base).await.expect("database");
    link_and_unlink(Some(db.url.clone())).await;
}

#[tokio::test]
async fn concurrent_links_on_sqlite() {
    concurrent_links(None).await;
}

#[tokio::test]
async fn concurrent_links_on_postgres() {
    let Some(base) = postern_testkit::peers::postgres("concurrent_links_on_postgres") else { return };
    let db = postern_testkit::peers::TestDatabase::create(&base).await.expect("database");
    concurrent_links(Some(db.url.clone())).await;
}
