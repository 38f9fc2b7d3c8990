//! Tenant isolation on every method (issue 10's suite): a tenant's API key, aimed at another
//! tenant's real resources, gets nothing — no success, no effect, and no answer that tells
//! the other tenant's existing resources from missing ones.
//!
//! For each method reflection lists, three calls: `evil`'s key at `acme`'s real resources
//! (tenant name, client id, connection, user ids, key id: what an outsider can learn; never
//! acme's secrets); no key at all at the same resources; and `evil`'s key at resources that
//! do not exist. Either the key changes nothing (the method is public, and its answer is the
//! same with no key), or the call is refused, and refused exactly as for the missing
//! resources (same code, same reason). Afterwards acme's resources are all there and
//! unchanged. The methods come from the descriptor set, so a new method is covered without
//! editing this file.

use std::time::Duration;

use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as connections;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::raw::{self, Answer, Resources};

/// Whether an encoded answer holds any of `r`'s names or ids.
fn mentions(message: &[u8], r: &Resources) -> bool {
    let needles = [&r.tenant, &r.client_id, &r.connection, &r.email, &r.user_id, &r.other_user_id, &r.key_id];
    needles.iter().any(|n| !n.is_empty() && message.windows(n.len()).any(|w| w == n.as_bytes()))
}

async fn foreign_keys_get_nothing(database_url: Option<String>) {
    let suite = postern_testkit::Suite::start_with(|s| s.database_url = database_url).await.expect("suite");
    let ch = suite.channel().await;
    let mut admin = suite.admin().await;
    let acme = Resources::create(&mut admin, "acme").await.expect("acme");
    let evil = Resources::create(&mut admin, "evil").await.expect("evil");
    let ghost = acme.missing("ghost");
    let within = Duration::from_secs(5);

    let mut leaks = Vec::new();
    let mut refused = 0;
    let mut public = 0;
    let methods = raw::methods();
    assert!(methods.len() > 50, "{} methods", methods.len());
    for method in methods {
        let at_acme = acme.request(&method.input, None, false);
        let foreign = raw::call(&ch, &method.path, at_acme.clone(), Some(&evil.key), within).await;
        let anonymous = raw::call(&ch, &method.path, at_acme, None, within).await;
        if foreign.shape() == anonymous.shape() {
            public += 1;
            continue; // the key changed nothing
        }
        let missing = raw::call(&ch, &method.path, ghost.request(&method.input, None, false), Some(&evil.key), within);
        let missing = missing.await;
        let verdict = match (&foreign, &missing) {
            // A success must say nothing of acme's, and must not depend on acme existing.
            (Answer::Ok(message), _) if mentions(message, &acme) => Some("answered with acme's data"),
            (Answer::Ok(_), Answer::Ok(_)) => None,
            (Answer::Ok(_), _) => Some("succeeds at acme only"),
            (Answer::Status(_), Answer::Status(_)) if foreign.shape() == missing.shape() => {
                refused += 1;
                None
            }
            _ => Some("refused otherwise than for missing resources"),
        };
        if let Some(verdict) = verdict {
            leaks.push(format!(
                "{}: {verdict}: at acme {:?}; with no key {}; at missing resources {}",
                method.path,
                foreign,
                anonymous.shape(),
                missing.shape()
            ));
        }
    }
    println!("{} methods: {refused} refused alike, {public} public (no key the same)", methods.len());
    assert!(leaks.is_empty(), "{} methods leak across tenants:\n{}", leaks.len(), leaks.join("\n"));
    // The test can fail: most methods are keyed, and the key works on its own tenant.
    assert!(refused > 30, "only {refused} methods refused a foreign key");
    let mut own = postern_testkit::Clients::new(ch.clone(), &evil.key);
    own.tenants.get_tenant(tenant::GetTenantRequest { name: "evil".into() }).await.expect("a key works at home");

    // Nothing of acme's was touched.
    let got = admin.tenants.get_tenant(tenant::GetTenantRequest { name: "acme".into() }).await.expect("tenant");
    assert_eq!(got.into_inner().tenant.expect("tenant").display_name, "acme");
    let client = admin
        .clients
        .get_client(tenant::GetClientRequest { tenant: "acme".into(), client_id: acme.client_id.clone() })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client");
    assert_eq!(client.name, "Portal");
    let enabled = admin
        .connections
        .list_connection_clients(connections::ListConnectionClientsRequest {
            tenant: "acme".into(),
            connection: acme.connection.clone(),
            ..Default::default()
        })
        .await
        .expect("enabled clients")
        .into_inner();
    assert_eq!(enabled.client_ids, std::slice::from_ref(&acme.client_id));
    for user_id in [&acme.user_id, &acme.other_user_id] {
        let user = admin
            .users
            .get_user(authn::GetUserRequest { tenant: "acme".into(), user_id: user_id.clone() })
            .await
            .expect("user")
            .into_inner()
            .user
            .expect("user");
        assert!(!user.blocked, "{user:?}");
    }
    let keys = admin
        .keys
        .list_api_keys(tenant::ListApiKeysRequest { tenant: "acme".into(), ..Default::default() })
        .await
        .expect("keys")
        .into_inner();
    assert!(keys.api_keys.iter().any(|k| k.id == acme.key_id), "acme's key is still there");
    let mut acme_key = postern_testkit::Clients::new(ch, &acme.key);
    acme_key.tenants.get_tenant(tenant::GetTenantRequest { name: "acme".into() }).await.expect("acme's key works");
    suite.stop().await.expect("stop");
}

/// On SQLite.
#[tokio::test(flavor = "multi_thread")]
async fn foreign_keys_get_nothing_on_sqlite() {
    foreign_keys_get_nothing(None).await;
}

/// On PostgreSQL.
#[tokio::test(flavor = "multi_thread")]
async fn foreign_keys_get_nothing_on_postgres() {
    let Some(base) = postern_testkit::peers::postgres("foreign_keys_get_nothing_on_postgres") else { return };
    let db = postern_testkit::peers::TestDatabase::create(&base).await.expect("database");
    foreign_keys_get_nothing(Some(db.url.clone())).await;
    db.drop_db().await.expect("drop");
}
