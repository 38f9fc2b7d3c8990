//! Tenants, clients and API keys through the gateway, as a user drives them: auth and tenant
//! scoping, validation with field violations, paging, secrets shown once, rate limits.

use postern_proto::tenant::v1 as pb;
use postern_testkit::{ADMIN_KEY, Clients, Suite, reason, violated_fields};
use tonic::Code;

fn tenant(name: &str) -> pb::CreateTenantRequest {
    pb::CreateTenantRequest { tenant: Some(pb::Tenant { name: name.into(), ..Default::default() }) }
}

#[tokio::test]
async fn callers_need_a_valid_key() {
    let suite = Suite::start().await.expect("suite");
    let mut anon = suite.clients("").await;
    let err = anon.tenants.list_tenants(pb::ListTenantsRequest::default()).await.expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err).as_deref(), Some("API_KEY_MISSING"));

    let mut wrong = suite.clients("pst_not-a-real-key-at-all").await;
    let err = wrong.tenants.list_tenants(pb::ListTenantsRequest::default()).await.expect_err("wrong key");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err).as_deref(), Some("API_KEY_INVALID"));

    // A caller cannot make itself admin with the internal header.
    let mut req = tonic::Request::new(tenant("forged"));
    req.metadata_mut().insert("x-postern-principal", "v1|admin|99999999999|00".parse().expect("ascii"));
    let err = anon.tenants.create_tenant(req).await.expect_err("forged principal");
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut admin = suite.admin().await;
    admin.create_tenant("fabrikam-public").await.expect("create");
    let key = admin.create_api_key("fabrikam-public").await.expect("key");
    let mut scoped = suite.clients(&key).await;
    let mut req = tonic::Request::new(tenant("forged-two"));
    let forged = format!("v1|admin|99999999999|{}", "0".repeat(64));
    req.metadata_mut().insert("x-postern-principal", forged.parse().expect("ascii"));
    let err = scoped.tenants.create_tenant(req).await.expect_err("tenant key cannot create tenants");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Internal RPCs are never routed from outside, even for the admin.
    let err = admin.keys.authenticate_key(pb::AuthenticateKeyRequest { key: key.clone() }).await.expect_err("internal");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err).as_deref(), Some("INTERNAL_ONLY"));
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn tenant_keys_reach_only_their_tenant() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    for name in ["fabrikam-internal", "fabrikam-public"] {
        admin.create_tenant(name).await.expect("create tenant");
    }
    let internal_client =
        admin.create_client("fabrikam-internal", "Fabrikam Employee Timesheets").await.expect("client");
    admin.create_client("fabrikam-public", "Fabrikam Customer Portal").await.expect("client");
    let internal_key = admin.create_api_key("fabrikam-internal").await.expect("key");
    let public_key = admin.create_api_key("fabrikam-public").await.expect("key");
    let mut public = suite.clients(&public_key).await;
    let mut internal = suite.clients(&internal_key).await;

    // Its own tenant: visible; ListTenants shows only it.
    let own = public.tenants.get_tenant(pb::GetTenantRequest { name: "fabrikam-public".into() }).await.expect("own");
    assert_eq!(own.into_inner().tenant.map(|t| t.name).as_deref(), Some("fabrikam-public"));
    let list = public.tenants.list_tenants(pb::ListTenantsRequest::default()).await.expect("list").into_inner();
    assert_eq!(list.tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["fabrikam-public"]);
    let all = admin.tenants.list_tenants(pb::ListTenantsRequest::default()).await.expect("list").into_inner();
    assert_eq!(all.tenants.len(), 2);

    // The other tenant: refused on every RPC.
    let denied = |r: Result<_, tonic::Status>| {
        let code = r.map(|_| ()).expect_err("must be refused").code();
        assert_eq!(code, Code::PermissionDenied);
    };
    denied(public.tenants.get_tenant(pb::GetTenantRequest { name: "fabrikam-internal".into() }).await.map(|_| ()));
    denied(
        public
            .tenants
            .update_tenant(pb::UpdateTenantRequest {
                tenant: Some(pb::Tenant {
                    name: "fabrikam-internal".into(),
                    display_name: "pwned".into(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .map(|_| ()),
    );
    denied(public.tenants.delete_tenant(pb::DeleteTenantRequest { name: "fabrikam-public".into() }).await.map(|_| ()));
    denied(
        public
            .clients
            .list_clients(pb::ListClientsRequest { tenant: "fabrikam-internal".into(), ..Default::default() })
            .await
            .map(|_| ()),
    );
    denied(
        public
            .clients
            .get_client(pb::GetClientRequest {
                tenant: "fabrikam-internal".into(),
                client_id: internal_client.client_id.clone(),
            })
            .await
            .map(|_| ()),
    );
    denied(
        public
            .clients
            .delete_client(pb::DeleteClientRequest {
                tenant: "fabrikam-internal".into(),
                client_id: internal_client.client_id.clone(),
            })
            .await
            .map(|_| ()),
    );
    denied(public.create_client("fabrikam-internal", "Intruder").await.map(|_| ()));
    denied(public.create_api_key("fabrikam-internal").await.map(|_| ()));
    denied(
        public
            .keys
            .list_api_keys(pb::ListApiKeysRequest { tenant: "fabrikam-internal".into(), ..Default::default() })
            .await
            .map(|_| ()),
    );
    denied(public.tenants.create_tenant(tenant("another")).await.map(|_| ()));
    // A client id of another tenant is not found under one's own tenant.
    let err = public
        .clients
        .get_client(pb::GetClientRequest {
            tenant: "fabrikam-public".into(),
            client_id: internal_client.client_id.clone(),
        })
        .await
        .expect_err("not found");
    assert_eq!(err.code(), Code::NotFound);

    // The internal key manages its own tenant.
    internal.create_client("fabrikam-internal", "Second App").await.expect("own client");
    let clients = internal
        .clients
        .list_clients(pb::ListClientsRequest { tenant: "fabrikam-internal".into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(clients.clients.len(), 2);
    assert!(clients.clients.iter().all(|c| c.client_secret.is_empty()), "reads never show secrets");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn bad_input_names_each_field() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    for (name, display) in [("Fabrikam", ""), ("ab", ""), ("-abc", ""), ("good-name", "bad\u{7}name")] {
        let err = admin
            .tenants
            .create_tenant(pb::CreateTenantRequest {
                tenant: Some(pb::Tenant { name: name.into(), display_name: display.into(), ..Default::default() }),
            })
            .await
            .expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}");
        let expected = if display.is_empty() { "tenant.name" } else { "tenant.display_name" };
        assert_eq!(violated_fields(&err), [expected], "{name:?}");
    }
    let err = admin.tenants.create_tenant(pb::CreateTenantRequest { tenant: None }).await.expect_err("missing");
    assert_eq!(violated_fields(&err), ["tenant"]);

    admin.create_tenant("fabrikam-internal").await.expect("create");
    let err = admin.create_tenant("fabrikam-internal").await.expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);

    let err = admin
        .clients
        .create_client(pb::CreateClientRequest {
            tenant: "fabrikam-internal".into(),
            client: Some(pb::Client {
                name: String::new(),
                app_type: 0,
                callbacks: vec!["https://ok.example/cb".into(), "http://not-local.example/cb".into()],
                allowed_logout_urls: vec!["relative/path".into()],
                ..Default::default()
            }),
        })
        .await
        .expect_err("invalid client");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&err),
        ["client.name", "client.app_type", "client.callbacks[1]", "client.allowed_logout_urls[0]"]
    );
    assert!(err.message().contains("http, which is allowed only for localhost"), "{}", err.message());

    let err = admin.create_client("no-such-tenant", "App").await.expect_err("missing tenant");
    assert_eq!(err.code(), Code::NotFound);
    let err = admin
        .tenants
        .list_tenants(pb::ListTenantsRequest { page_size: 1001, ..Default::default() })
        .await
        .expect_err("page size");
    assert_eq!(violated_fields(&err), ["page_size"]);
    let err = admin
        .tenants
        .list_tenants(pb::ListTenantsRequest { page_token: "bogus".into(), ..Default::default() })
        .await
        .expect_err("page token");
    assert_eq!(violated_fields(&err), ["page_token"]);
    let err = admin
        .tenants
        .update_tenant(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant { name: "fabrikam-internal".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
        })
        .await
        .expect_err("immutable");
    assert_eq!(violated_fields(&err), ["update_mask.paths[0]"]);
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn pages_stay_correct_while_rows_change() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    for i in 0..7 {
        admin.create_tenant(&format!("tenant-{i}")).await.expect("create");
    }
    let page = |token: String| pb::ListTenantsRequest { page_size: 3, page_token: token };
    let first = admin.tenants.list_tenants(page(String::new())).await.expect("page 1").into_inner();
    let names = |p: &pb::ListTenantsResponse| p.tenants.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&first), ["tenant-0", "tenant-1", "tenant-2"]);
    assert!(!first.next_page_token.is_empty());

    // Rows change between pages: one already read is deleted, one before the cursor is
    // added, one after it is added.
    admin.tenants.delete_tenant(pb::DeleteTenantRequest { name: "tenant-1".into() }).await.expect("delete");
    admin.create_tenant("tenant-00").await.expect("create before");
    admin.create_tenant("tenant-9").await.expect("create after");

    let second = admin.tenants.list_tenants(page(first.next_page_token)).await.expect("page 2").into_inner();
    assert_eq!(names(&second), ["tenant-3", "tenant-4", "tenant-5"]);
    let third = admin.tenants.list_tenants(page(second.next_page_token)).await.expect("page 3").into_inner();
    assert_eq!(names(&third), ["tenant-6", "tenant-9"]);
    assert!(third.next_page_token.is_empty());

    // Client pages, oldest first.
    for i in 0..5 {
        admin.create_client("tenant-0", &format!("App {i}")).await.expect("client");
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let p = admin
            .clients
            .list_clients(pb::ListClientsRequest { tenant: "tenant-0".into(), page_size: 2, page_token: token })
            .await
            .expect("clients")
            .into_inner();
        seen.extend(p.clients.into_iter().map(|c| c.name));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(seen, ["App 0", "App 1", "App 2", "App 3", "App 4"]);
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn client_secrets_are_shown_once_and_rotate() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant("fabrikam-public").await.expect("tenant");
    let created = admin.create_client("fabrikam-public", "Fabrikam Customer Portal").await.expect("client");
    assert_eq!(created.client_id.len(), 32);
    assert_eq!(created.client_secret.len(), 64);
    assert!(created.confidential);
    let got = admin
        .clients
        .get_client(pb::GetClientRequest { tenant: "fabrikam-public".into(), client_id: created.client_id.clone() })
        .await
        .expect("get")
        .into_inner()
        .client
        .expect("client");
    assert!(got.client_secret.is_empty());
    let rotated = admin
        .clients
        .rotate_client_secret(pb::RotateClientSecretRequest {
            tenant: "fabrikam-public".into(),
            client_id: created.client_id.clone(),
        })
        .await
        .expect("rotate")
        .into_inner()
        .client
        .expect("client");
    assert_eq!(rotated.client_secret.len(), 64);
    assert_ne!(rotated.client_secret, created.client_secret);

    // Update through a mask leaves other fields alone.
    let updated = admin
        .clients
        .update_client(pb::UpdateClientRequest {
            tenant: "fabrikam-public".into(),
            client: Some(pb::Client {
                client_id: created.client_id.clone(),
                name: "Portal".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
        })
        .await
        .expect("update")
        .into_inner()
        .client
        .expect("client");
    assert_eq!(updated.name, "Portal");
    assert_eq!(updated.callbacks, created.callbacks);
    assert_eq!(updated.app_type, created.app_type);

    admin
        .clients
        .delete_client(pb::DeleteClientRequest {
            tenant: "fabrikam-public".into(),
            client_id: created.client_id.clone(),
        })
        .await
        .expect("delete");
    let err = admin
        .clients
        .get_client(pb::GetClientRequest { tenant: "fabrikam-public".into(), client_id: created.client_id.clone() })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn revoked_and_expired_keys_stop_working() {
    // No key cache, so that revocation shows at once.
    let suite = Suite::start_with(|s| s.key_cache_secs = 0).await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant("fabrikam-public").await.expect("tenant");
    let created = admin
        .keys
        .create_api_key(pb::CreateApiKeyRequest {
            tenant: "fabrikam-public".into(),
            api_key: Some(pb::ApiKey { description: "ci".into(), ..Default::default() }),
        })
        .await
        .expect("key")
        .into_inner()
        .api_key
        .expect("key");
    assert!(created.key.starts_with("pst_"));
    let mut scoped = suite.clients(&created.key).await;
    scoped.tenants.get_tenant(pb::GetTenantRequest { name: "fabrikam-public".into() }).await.expect("works");
    let listed = admin
        .keys
        .list_api_keys(pb::ListApiKeysRequest { tenant: "fabrikam-public".into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.api_keys.len(), 1);
    assert!(listed.api_keys[0].key.is_empty(), "the key is shown only once");
    admin
        .keys
        .revoke_api_key(pb::RevokeApiKeyRequest { tenant: "fabrikam-public".into(), id: created.id.clone() })
        .await
        .expect("revoke");
    let err =
        scoped.tenants.get_tenant(pb::GetTenantRequest { name: "fabrikam-public".into() }).await.expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);

    let past = prost_types::Timestamp { seconds: 1, nanos: 0 };
    let err = admin
        .keys
        .create_api_key(pb::CreateApiKeyRequest {
            tenant: "fabrikam-public".into(),
            api_key: Some(pb::ApiKey { expire_time: Some(past), ..Default::default() }),
        })
        .await
        .expect_err("past expiry");
    assert_eq!(violated_fields(&err), ["api_key.expire_time"]);

    // Deleting the tenant takes its keys along.
    let key = admin.create_api_key("fabrikam-public").await.expect("key");
    admin.tenants.delete_tenant(pb::DeleteTenantRequest { name: "fabrikam-public".into() }).await.expect("delete");
    let mut gone = suite.clients(&key).await;
    let err = gone.tenants.list_tenants(pb::ListTenantsRequest::default()).await.expect_err("key of a deleted tenant");
    assert_eq!(err.code(), Code::Unauthenticated);
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn rate_limit_answers_resource_exhausted() {
    let suite = Suite::start_with(|s| {
        s.rate_limit = 1;
        s.rate_burst = 5;
    })
    .await
    .expect("suite");
    let mut admin: Clients = suite.clients(ADMIN_KEY).await;
    let mut limited = None;
    for _ in 0..20 {
        if let Err(e) = admin.tenants.list_tenants(pb::ListTenantsRequest::default()).await {
            limited = Some(e);
            break;
        }
    }
    let err = limited.expect("the limit must bite within 20 calls");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(reason(&err).as_deref(), Some("RATE_LIMITED"));
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn reflection_and_health_need_no_key() {
    let suite = Suite::start().await.expect("suite");
    let mut health = tonic_health::pb::health_client::HealthClient::new(suite.channel().await);
    for service in ["", "postern.tenant.v1.TenantService", "postern.tenant.v1.ClientService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service:?}");
    }
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn the_suite_runs_on_postgres() {
    let Some(base) = postern_testkit::peers::postgres("the_suite_runs_on_postgres") else { return };
    let db = postern_testkit::peers::TestDatabase::create(&base).await.expect("database");
    let url = db.url.clone();
    let suite = Suite::start_with(|s| s.database_url = Some(url.clone())).await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant("fabrikam-internal").await.expect("tenant");
    let client = admin.create_client("fabrikam-internal", "Fabrikam Employee Timesheets").await.expect("client");
    let key = admin.create_api_key("fabrikam-internal").await.expect("key");
    suite.stop().await.expect("stop");

    // A second start on the same database sees everything.
    let suite = Suite::start_with(|s| s.database_url = Some(url.clone())).await.expect("suite");
    let mut scoped = suite.clients(&key).await;
    let got = scoped
        .clients
        .get_client(pb::GetClientRequest { tenant: "fabrikam-internal".into(), client_id: client.client_id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.client.map(|c| c.name).as_deref(), Some("Fabrikam Employee Timesheets"));
    suite.stop().await.expect("stop");
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn unknown_services_are_unimplemented() {
    let suite = Suite::start().await.expect("suite");
    // A service that is not routed is UNIMPLEMENTED, naming it.
    let mut health_as_unknown = tonic::client::Grpc::new(suite.channel().await);
    health_as_unknown.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/postern.nowhere.v1.NoService/Call");
    let err = health_as_unknown
        .unary::<_, pb::ListTenantsResponse, _>(
            tonic::Request::new(pb::ListTenantsRequest::default()),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("postern.nowhere.v1.NoService"), "{}", err.message());
    suite.stop().await.expect("stop");
}
