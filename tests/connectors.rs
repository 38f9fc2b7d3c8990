//! The connector seam from the outside: a strategy this binary has no connector for logs
//! users in once one connector is registered for it, with no edit to the authenticator's
//! orchestration (ARCHITECTURE.md's invariant). The connector here is a directory of one
//! user behind the `ldap` strategy and its existing options type.

use std::sync::Arc;

use postern_connection::{Options, Resolved, Strategy};
use postern_connector::{
    ConnectorError, ExternalProfile, PasswordChange, PasswordChanged, PasswordConnector, Profile, SignedUp, Signup,
    Verified, async_trait,
};
use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_testkit::{Suite, reason};
use tonic::Code;

const PASSWORD: &str = "Rabbit-Hole-7";

/// A directory that knows one user, `alice`.
struct Directory;

#[async_trait]
impl PasswordConnector for Directory {
    fn brute_force_protection(&self, _: &Resolved) -> bool {
        true
    }

    async fn verify(
        &self,
        _tenant: &str,
        conn: &Resolved,
        login: &str,
        password: &str,
        local_hash: Option<&str>,
    ) -> Result<Verified, ConnectorError> {
        // The connector gets the typed connection: the options of its own family.
        let Options::Ldap(ldap) = &conn.connection.spec.options else {
            return Err(ConnectorError::Internal("not an LDAP connection".into()));
        };
        if login != "alice" || password != PASSWORD || local_hash.is_some() {
            return Err(ConnectorError::WrongCredentials);
        }
        let profile = Profile {
            email: "alice@fabrikam.example".into(),
            email_verified: true,
            given_name: "Alice".into(),
            username: "alice".into(),
            ..Profile::default()
        };
        Ok(Verified::External {
            profile: Box::new(ExternalProfile {
                source_id: "alice".into(),
                raw: serde_json::json!({ "dn": format!("uid=alice,{}", ldap.base_dn) }),
                profile,
                user_metadata: serde_json::Map::new(),
                app_metadata: serde_json::Map::new(),
            }),
            import_hash: None,
        })
    }

    async fn sign_up(&self, _: &str, _: &Resolved, _: &Signup<'_>) -> Result<SignedUp, ConnectorError> {
        Err(ConnectorError::PermissionDenied {
            reason: "SIGNUP_DISABLED",
            message: "a directory takes no signups".into(),
        })
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

#[tokio::test]
async fn a_registered_connector_serves_a_new_strategy() {
    let suite = Suite::start_with(|s| {
        s.connectors = Some(postern::connectors().with_password(Strategy::Ldap, Arc::new(Directory)));
    })
    .await
    .expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "fabrikam-directory";
    admin.create_tenant(tenant).await.expect("tenant");
    let client = admin.create_client(tenant, "Intranet").await.expect("client");
    for (name, strategy, options) in [
        (
            "corp",
            "ldap",
            conn::connection::Options::Ldap(conn::LdapOptions {
                url: "ldaps://dc1.fabrikam.example".into(),
                bind_dn: "cn=postern,dc=fabrikam,dc=example".into(),
                bind_password: "bind-secret".into(),
                base_dn: "ou=people,dc=fabrikam,dc=example".into(),
                ..Default::default()
            }),
        ),
        (
            "github",
            "github",
            conn::connection::Options::Oauth2(conn::OAuth2Options {
                client_id: "gh".into(),
                client_secret: "gh-secret".into(),
                ..Default::default()
            }),
        ),
    ] {
        let connection = conn::Connection {
            name: name.into(),
            strategy: strategy.into(),
            options: Some(options),
            ..Default::default()
        };
        admin
            .connections
            .create_connection(conn::CreateConnectionRequest { tenant: tenant.into(), connection: Some(connection) })
            .await
            .expect("create connection");
        admin
            .connections
            .enable_client(conn::EnableClientRequest {
                tenant: tenant.into(),
                connection: name.into(),
                client_id: client.client_id.clone(),
            })
            .await
            .expect("enable");
    }
    let login = |connection: &str, username: &str, password: &str| authn::LoginRequest {
        tenant: tenant.into(),
        client_id: client.client_id.clone(),
        client_secret: client.client_secret.clone(),
        connection: connection.into(),
        username: username.into(),
        password: password.into(),
        ip: "198.51.100.4".into(),
        ..Default::default()
    };

    let ok = admin.authn.login(login("corp", "Alice", PASSWORD)).await.expect("login").into_inner();
    let user = ok.user.expect("user");
    assert_eq!(user.user_id, "ldap|alice");
    assert_eq!(user.given_name, "Alice");
    assert!(user.email_verified);
    let identity = &user.identities[0];
    assert_eq!((identity.strategy.as_str(), identity.connection.as_str()), ("ldap", "corp"));
    assert!(!ok.id_token.is_empty());
    // The second login finds the same user.
    let again = admin.authn.login(login("corp", "alice", PASSWORD)).await.expect("login").into_inner();
    assert_eq!(again.user.expect("user").logins_count, 2);

    let wrong = admin.authn.login(login("corp", "alice", "Rabbit-Hole-8")).await.expect_err("wrong password");
    assert_eq!((wrong.code(), reason(&wrong).as_deref()), (Code::Unauthenticated, Some("INVALID_CREDENTIALS")));

    let signup = authn::SignupRequest {
        tenant: tenant.into(),
        client_id: client.client_id.clone(),
        connection: "corp".into(),
        email: "bob@fabrikam.example".into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    let refused = admin.authn.signup(signup).await.expect_err("no signups");
    assert_eq!((refused.code(), reason(&refused).as_deref()), (Code::PermissionDenied, Some("SIGNUP_DISABLED")));

    // A strategy with no password connector in this process is refused before any check.
    let social = admin.authn.login(login("github", "alice", PASSWORD)).await.expect_err("not a password strategy");
    assert_eq!(social.code(), Code::FailedPrecondition, "{social:?}");
    suite.stop().await.expect("stop");
}
