//! APIs (resource servers) and client grants: a machine-to-machine client gets a
//! `client_credentials` token only for an API it was granted, with only granted scopes, as in
//! Auth0 (no grant: HTTP 403 `access_denied`, "Client is not authorized to access …"; a scope
//! not granted: 403 "Client has not been granted scopes: …"; no scope asked: every granted
//! one). A grant revoked or narrowed, a scope taken from the API, the API or the client
//! deleted: the next token request after the event log reached the authenticator is refused
//! (waited for by calling, never by sleeping, and bounded to a second). CRUD with its
//! validation, and tenants kept apart. On SQLite and on PostgreSQL.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postern_proto::authn::v1 as authn;
use postern_proto::tenant::v1 as pb;
use postern_testkit::web::Agent;
use postern_testkit::{Clients, Suite, reason};
use tonic::Code;
use tonic_types::StatusExt as _;

const ORDERS: &str = "https://api.acme.example/orders";
/// The most an event may take to reach the authenticator's cache.
const WITHIN: Duration = Duration::from_secs(1);

/// The fields an INVALID_ARGUMENT names, in order.
fn fields(s: &tonic::Status) -> Vec<String> {
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    s.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[track_caller]
fn refused_with(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, why: &str) -> tonic::Status {
    let s = r.expect_err(why);
    assert_eq!(s.code(), code, "{why}: {s:?}");
    s
}

fn scope(value: &str) -> pb::ResourceServerScope {
    pb::ResourceServerScope { value: value.into(), description: format!("{value} things") }
}

fn api(identifier: &str, scopes: &[&str]) -> pb::ResourceServer {
    pb::ResourceServer {
        identifier: identifier.into(),
        name: "Orders API".into(),
        scopes: scopes.iter().map(|s| scope(s)).collect(),
        ..Default::default()
    }
}

async fn create_api(c: &mut Clients, tenant: &str, r: pb::ResourceServer) -> Result<pb::ResourceServer, tonic::Status> {
    let req = pb::CreateResourceServerRequest { tenant: tenant.into(), resource_server: Some(r) };
    Ok(c.apis.create_resource_server(req).await?.into_inner().resource_server.expect("API"))
}

async fn create_grant(
    c: &mut Clients,
    tenant: &str,
    client_id: &str,
    audience: &str,
    scopes: &[&str],
) -> Result<pb::ClientGrant, tonic::Status> {
    let grant = pb::ClientGrant {
        client_id: client_id.into(),
        audience: audience.into(),
        scopes: scopes.iter().map(|s| (*s).into()).collect(),
        ..Default::default()
    };
    let req = pb::CreateClientGrantRequest { tenant: tenant.into(), client_grant: Some(grant) };
    Ok(c.grants.create_client_grant(req).await?.into_inner().client_grant.expect("grant"))
}

async fn list_grants(c: &mut Clients, tenant: &str, client_id: &str, audience: &str) -> Vec<pb::ClientGrant> {
    let req = pb::ListClientGrantsRequest {
        tenant: tenant.into(),
        client_id: client_id.into(),
        audience: audience.into(),
        ..Default::default()
    };
    c.grants.list_client_grants(req).await.expect("list grants").into_inner().client_grants
}

async fn create_client(c: &mut Clients, tenant: &str, app_type: pb::AppType) -> pb::Client {
    let client = pb::Client { name: format!("{app_type:?}"), app_type: app_type as i32, ..Default::default() };
    let req = pb::CreateClientRequest { tenant: tenant.into(), client: Some(client) };
    c.clients.create_client(req).await.expect("client").into_inner().client.expect("client")
}

/// The token endpoint's answer to `client`'s `client_credentials` request: status and JSON.
async fn http_token(
    suite: &Suite,
    tenant: &str,
    client: &pb::Client,
    audience: &str,
    scope: &str,
) -> (u16, serde_json::Value) {
    let mut fields = vec![
        ("grant_type".to_owned(), "client_credentials".to_owned()),
        ("client_id".to_owned(), client.client_id.clone()),
        ("client_secret".to_owned(), client.client_secret.clone()),
        ("audience".to_owned(), audience.to_owned()),
    ];
    if !scope.is_empty() {
        fields.push(("scope".to_owned(), scope.to_owned()));
    }
    let answer = Agent::new()
        .post_form(&format!("http://{}/{tenant}/oauth/token", suite.http), &fields)
        .await
        .expect("token endpoint");
    (answer.status, serde_json::from_str(&answer.body).unwrap_or(serde_json::Value::Null))
}

/// The gRPC twin.
async fn grpc_token(
    c: &mut Clients,
    tenant: &str,
    client: &pb::Client,
    audience: &str,
    scope: &str,
) -> Result<authn::ExchangeTokenResponse, tonic::Status> {
    let req = authn::ExchangeTokenRequest {
        tenant: tenant.into(),
        grant_type: "client_credentials".into(),
        client_id: client.client_id.clone(),
        client_secret: client.client_secret.clone(),
        audience: audience.into(),
        scope: scope.into(),
        ..Default::default()
    };
    c.oauth.exchange_token(req).await.map(tonic::Response::into_inner)
}

/// The claims of a JWT (its signature is checked in tests/oauth.rs).
fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

fn not_authorized(audience: &str) -> String {
    format!(
        "Client is not authorized to access \"{audience}\". You need to create a client-grant associated to this API."
    )
}

/// Calls the token endpoint until `refused` says the change took effect: fails after
/// [`WITHIN`]; answers how many requests were still served after the change was acknowledged.
async fn refused_within<F, Fut>(what: &str, mut refused: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut served = 0;
    while !refused().await {
        served += 1;
        assert!(start.elapsed() < WITHIN, "{what}: still served {WITHIN:?} after the change was acknowledged");
        tokio::task::yield_now().await;
    }
    println!("{what}: refused after {:?}, {served} request(s) served in between", start.elapsed());
    served
}

/// Calls until `served` says a new grant took effect (the client was remembered without it
/// until the event log said it changed): fails after [`WITHIN`].
async fn served_within<F, Fut>(what: &str, mut served: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !served().await {
        assert!(start.elapsed() < WITHIN, "{what}: still refused {WITHIN:?} after the grant was acknowledged");
        tokio::task::yield_now().await;
    }
}

async fn apis_and_grants_on(database_url: Option<String>) {
    let suite = Suite::start_with(|s| s.database_url = database_url).await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant("acme").await.expect("acme");
    admin.create_tenant("evil").await.expect("evil");

    // ---- APIs: validation names every bad field at once ----
    let bad = pb::ResourceServer {
        identifier: "has space".into(),
        name: String::new(),
        scopes: vec![
            scope(""),
            scope("a b"),
            scope("read"),
            scope("read"),
            pb::ResourceServerScope { value: "x".into(), description: "d".repeat(501) },
        ],
        ..Default::default()
    };
    let e = refused_with(create_api(&mut admin, "acme", bad).await, Code::InvalidArgument, "bad API");
    assert_eq!(
        fields(&e),
        [
            "resource_server.identifier",
            "resource_server.name",
            "resource_server.scopes[0].value",
            "resource_server.scopes[1].value",
            "resource_server.scopes[3].value",
            "resource_server.scopes[4].description"
        ]
    );
    let e =
        refused_with(create_api(&mut admin, "acme", api(&"a".repeat(513), &[])).await, Code::InvalidArgument, "long");
    assert_eq!(fields(&e), ["resource_server.identifier"]);

    let orders = create_api(&mut admin, "acme", api(ORDERS, &["read:orders", "write:orders", "delete:orders"]))
        .await
        .expect("API");
    assert_eq!(orders.identifier, ORDERS);
    assert!(orders.create_time.is_some());
    let e = refused_with(create_api(&mut admin, "acme", api(ORDERS, &[])).await, Code::AlreadyExists, "twice");
    assert_eq!(reason(&e).as_deref(), Some("RESOURCE_SERVER_ALREADY_EXISTS"));
    // The same identifier in another tenant is another API.
    create_api(&mut admin, "evil", api(ORDERS, &["read:orders"])).await.expect("evil's namesake");

    let got = admin
        .apis
        .get_resource_server(pb::GetResourceServerRequest { tenant: "acme".into(), identifier: ORDERS.into() })
        .await
        .expect("get")
        .into_inner()
        .resource_server
        .expect("API");
    assert_eq!(got, orders);
    let e = refused_with(
        admin
            .apis
            .get_resource_server(pb::GetResourceServerRequest { tenant: "acme".into(), identifier: "urn:none".into() })
            .await,
        Code::NotFound,
        "missing API",
    );
    assert_eq!(reason(&e).as_deref(), Some("RESOURCE_SERVER_NOT_FOUND"));

    // Paging.
    for i in 0..2 {
        create_api(&mut admin, "acme", api(&format!("urn:acme:extra{i}"), &[])).await.expect("extra API");
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .apis
            .list_resource_servers(pb::ListResourceServersRequest {
                tenant: "acme".into(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.resource_servers.len() <= 2);
        seen.extend(page.resource_servers.into_iter().map(|r| r.identifier));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, [ORDERS, "urn:acme:extra0", "urn:acme:extra1"], "oldest first, each once");

    // Updates: the name by mask; the identifier is immutable.
    let update = |r: pb::ResourceServer, paths: &[&str]| pb::UpdateResourceServerRequest {
        tenant: "acme".into(),
        resource_server: Some(r),
        update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).into()).collect() }),
    };
    let renamed = admin
        .apis
        .update_resource_server(update(pb::ResourceServer { name: "Orders".into(), ..api(ORDERS, &[]) }, &["name"]))
        .await
        .expect("rename")
        .into_inner()
        .resource_server
        .expect("API");
    assert_eq!(renamed.name, "Orders");
    assert_eq!(renamed.scopes, orders.scopes, "scopes untouched when not in the mask");
    let e = refused_with(
        admin.apis.update_resource_server(update(api(ORDERS, &[]), &["identifier", "bogus"])).await,
        Code::InvalidArgument,
        "identifier in the mask",
    );
    assert_eq!(fields(&e), ["update_mask.paths[0]", "update_mask.paths[1]"]);
    let e = refused_with(
        admin.apis.update_resource_server(update(api("urn:none", &[]), &["name"])).await,
        Code::NotFound,
        "update a missing API",
    );
    assert_eq!(reason(&e).as_deref(), Some("RESOURCE_SERVER_NOT_FOUND"));

    // ---- grants: only for machine-to-machine clients, only the API's scopes ----
    let m2m = create_client(&mut admin, "acme", pb::AppType::MachineToMachine).await;
    let web = create_client(&mut admin, "acme", pb::AppType::RegularWeb).await;
    let e = refused_with(
        create_grant(&mut admin, "acme", &web.client_id, ORDERS, &[]).await,
        Code::FailedPrecondition,
        "a web application",
    );
    assert_eq!(reason(&e).as_deref(), Some("CLIENT_NOT_MACHINE_TO_MACHINE"));
    let e = refused_with(
        create_grant(&mut admin, "acme", &m2m.client_id, ORDERS, &["read:orders", "fly:planes"]).await,
        Code::InvalidArgument,
        "a scope the API lacks",
    );
    assert_eq!(fields(&e), ["client_grant.scopes[1]"]);
    assert!(e.message().contains("fly:planes"), "{e:?}");
    let e = refused_with(
        create_grant(&mut admin, "acme", "", "has space", &["read:orders", "read:orders", ""]).await,
        Code::InvalidArgument,
        "bad grant",
    );
    assert_eq!(
        fields(&e),
        ["client_grant.client_id", "client_grant.audience", "client_grant.scopes[1]", "client_grant.scopes[2]"]
    );
    let e = refused_with(
        create_grant(&mut admin, "acme", &m2m.client_id, "urn:none", &[]).await,
        Code::NotFound,
        "unknown API",
    );
    assert_eq!(reason(&e).as_deref(), Some("RESOURCE_SERVER_NOT_FOUND"));
    let e =
        refused_with(create_grant(&mut admin, "acme", "nosuchclient", ORDERS, &[]).await, Code::NotFound, "no client");
    assert_eq!(reason(&e).as_deref(), Some("CLIENT_NOT_FOUND"));

    // ---- no grant: refused, over HTTP and gRPC, for a real API and for an unknown one ----
    for audience in [ORDERS, "https://unknown.example"] {
        let (status, body) = http_token(&suite, "acme", &m2m, audience, "").await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"], "access_denied", "{body}");
        assert_eq!(body["error_description"], not_authorized(audience));
        let e = refused_with(
            grpc_token(&mut admin, "acme", &m2m, audience, "").await,
            Code::PermissionDenied,
            "no grant over gRPC",
        );
        assert_eq!(reason(&e).as_deref(), Some("ACCESS_DENIED"));
        assert_eq!(e.message(), not_authorized(audience));
    }

    // ---- granted: scopes intersected, all when none asked ----
    let grant = create_grant(&mut admin, "acme", &m2m.client_id, ORDERS, &["read:orders", "write:orders"])
        .await
        .expect("grant");
    assert!(grant.id.starts_with("cgr_"), "{grant:?}");
    assert_eq!((grant.client_id.as_str(), grant.audience.as_str()), (m2m.client_id.as_str(), ORDERS));
    let e = refused_with(
        create_grant(&mut admin, "acme", &m2m.client_id, ORDERS, &[]).await,
        Code::AlreadyExists,
        "a second grant for the API",
    );
    assert_eq!(reason(&e).as_deref(), Some("CLIENT_GRANT_ALREADY_EXISTS"));
    let got = admin
        .grants
        .get_client_grant(pb::GetClientGrantRequest { tenant: "acme".into(), id: grant.id.clone() })
        .await
        .expect("get grant")
        .into_inner()
        .client_grant
        .expect("grant");
    assert_eq!(got, grant);
    assert_eq!(list_grants(&mut admin, "acme", &m2m.client_id, "").await, std::slice::from_ref(&grant));
    assert_eq!(list_grants(&mut admin, "acme", "", ORDERS).await, std::slice::from_ref(&grant));
    assert!(list_grants(&mut admin, "acme", &web.client_id, "").await.is_empty());
    assert!(list_grants(&mut admin, "acme", "", "urn:acme:extra0").await.is_empty());

    // The refusals above were remembered with the client; the grant's event retires them.
    served_within("the new grant", || {
        let m2m = m2m.clone();
        let suite = &suite;
        async move { http_token(suite, "acme", &m2m, ORDERS, "").await.0 == 200 }
    })
    .await;
    let (status, body) = http_token(&suite, "acme", &m2m, ORDERS, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read:orders write:orders", "every granted scope when none is asked");
    let jwt = claims(body["access_token"].as_str().expect("token"));
    assert_eq!(jwt["aud"], ORDERS);
    assert_eq!(jwt["scope"], "read:orders write:orders");
    let answer = grpc_token(&mut admin, "acme", &m2m, ORDERS, "write:orders write:orders").await.expect("token");
    assert_eq!(answer.scope, "write:orders");
    assert_eq!(claims(&answer.access_token)["scope"], "write:orders");
    // A scope of the API that the grant lacks, and one the API lacks.
    let (status, body) = http_token(&suite, "acme", &m2m, ORDERS, "read:orders delete:orders fly:planes").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "access_denied");
    assert_eq!(body["error_description"], "Client has not been granted scopes: delete:orders, fly:planes");
    let e = refused_with(
        grpc_token(&mut admin, "acme", &m2m, ORDERS, "delete:orders").await,
        Code::PermissionDenied,
        "a scope not granted over gRPC",
    );
    assert_eq!(reason(&e).as_deref(), Some("ACCESS_DENIED"));
    assert_eq!(e.message(), "Client has not been granted scopes: delete:orders");

    // ---- changes take effect at once (the token requests above warmed the cache) ----
    let set_scopes = |id: &str, scopes: &[&str]| pb::UpdateClientGrantRequest {
        tenant: "acme".into(),
        client_grant: Some(pb::ClientGrant {
            id: id.into(),
            scopes: scopes.iter().map(|s| (*s).into()).collect(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["scopes".into()] }),
    };
    let e = refused_with(
        admin.grants.update_client_grant(set_scopes(&grant.id, &["fly:planes"])).await,
        Code::InvalidArgument,
        "a scope the API lacks",
    );
    assert_eq!(fields(&e), ["client_grant.scopes[0]"]);
    let narrowed =
        admin.grants.update_client_grant(set_scopes(&grant.id, &["read:orders"])).await.expect("narrow").into_inner();
    assert_eq!(narrowed.client_grant.expect("grant").scopes, ["read:orders"]);
    let mut c = admin.clone();
    refused_within("write:orders after it was taken from the grant", || {
        let (mut c, m2m) = (c.clone(), m2m.clone());
        async move { grpc_token(&mut c, "acme", &m2m, ORDERS, "write:orders").await.is_err() }
    })
    .await;
    assert_eq!(grpc_token(&mut c, "acme", &m2m, ORDERS, "").await.expect("token").scope, "read:orders");

    // A scope taken from the API goes from its grants too.
    admin
        .apis
        .update_resource_server(update(api(ORDERS, &["write:orders", "delete:orders"]), &["scopes"]))
        .await
        .expect("take read:orders from the API");
    let pruned = list_grants(&mut admin, "acme", &m2m.client_id, "").await;
    assert_eq!(pruned.len(), 1);
    assert!(pruned[0].scopes.is_empty(), "{pruned:?}");
    refused_within("read:orders after it was taken from the API", || {
        let (mut c, m2m) = (c.clone(), m2m.clone());
        async move { grpc_token(&mut c, "acme", &m2m, ORDERS, "read:orders").await.is_err() }
    })
    .await;
    assert_eq!(grpc_token(&mut c, "acme", &m2m, ORDERS, "").await.expect("a token without scopes").scope, "");

    // A deleted grant.
    admin
        .grants
        .delete_client_grant(pb::DeleteClientGrantRequest { tenant: "acme".into(), id: grant.id.clone() })
        .await
        .expect("delete grant");
    refused_within("a token after the grant was deleted", || {
        let m2m = m2m.clone();
        let suite = &suite;
        async move { http_token(suite, "acme", &m2m, ORDERS, "").await.0 == 403 }
    })
    .await;
    let e = refused_with(
        admin
            .grants
            .delete_client_grant(pb::DeleteClientGrantRequest { tenant: "acme".into(), id: grant.id.clone() })
            .await,
        Code::NotFound,
        "deleted twice",
    );
    assert_eq!(reason(&e).as_deref(), Some("CLIENT_GRANT_NOT_FOUND"));

    // A deleted API takes its grants.
    let regrant = create_grant(&mut admin, "acme", &m2m.client_id, ORDERS, &["write:orders"]).await.expect("grant");
    served_within("the grant made again", || {
        let (mut c, m2m) = (c.clone(), m2m.clone());
        async move { grpc_token(&mut c, "acme", &m2m, ORDERS, "").await.is_ok() }
    })
    .await;
    admin
        .apis
        .delete_resource_server(pb::DeleteResourceServerRequest { tenant: "acme".into(), identifier: ORDERS.into() })
        .await
        .expect("delete API");
    assert!(list_grants(&mut admin, "acme", &m2m.client_id, "").await.is_empty(), "the grant went with the API");
    let e = refused_with(
        admin.grants.get_client_grant(pb::GetClientGrantRequest { tenant: "acme".into(), id: regrant.id }).await,
        Code::NotFound,
        "the API's grant",
    );
    assert_eq!(reason(&e).as_deref(), Some("CLIENT_GRANT_NOT_FOUND"));
    refused_within("a token after the API was deleted", || {
        let (mut c, m2m) = (c.clone(), m2m.clone());
        async move { grpc_token(&mut c, "acme", &m2m, ORDERS, "").await.is_err_and(|e| e.code() == Code::PermissionDenied) }
    })
    .await;

    // A deleted client takes its grants.
    create_api(&mut admin, "acme", api(ORDERS, &["read:orders"])).await.expect("API again");
    create_grant(&mut admin, "acme", &m2m.client_id, ORDERS, &["read:orders"]).await.expect("grant");
    admin
        .clients
        .delete_client(pb::DeleteClientRequest { tenant: "acme".into(), client_id: m2m.client_id.clone() })
        .await
        .expect("delete client");
    assert!(list_grants(&mut admin, "acme", "", ORDERS).await.is_empty(), "the grant went with the client");

    // ---- tenants apart ----
    let worker = create_client(&mut admin, "acme", pb::AppType::MachineToMachine).await;
    create_grant(&mut admin, "acme", &worker.client_id, ORDERS, &["read:orders"]).await.expect("acme's grant");
    let intruder = create_client(&mut admin, "evil", pb::AppType::MachineToMachine).await;
    // A client of evil cannot be granted acme's API, nor acme's client evil's.
    let e = refused_with(
        create_grant(&mut admin, "acme", &intruder.client_id, ORDERS, &[]).await,
        Code::NotFound,
        "evil's client at acme",
    );
    assert_eq!(reason(&e).as_deref(), Some("CLIENT_NOT_FOUND"));
    let e = refused_with(
        create_grant(&mut admin, "evil", &worker.client_id, ORDERS, &[]).await,
        Code::NotFound,
        "acme's client at evil",
    );
    assert_eq!(reason(&e).as_deref(), Some("CLIENT_NOT_FOUND"));
    // evil's client asks for acme's API, at evil (evil's namesake API, not granted) and at acme.
    let (status, body) = http_token(&suite, "evil", &intruder, ORDERS, "").await;
    assert_eq!((status, body["error"].as_str()), (403, Some("access_denied")), "{body}");
    let (status, body) = http_token(&suite, "acme", &intruder, ORDERS, "").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    // acme's worker asks at evil: unknown there.
    let (status, body) = http_token(&suite, "evil", &worker, ORDERS, "").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    assert_eq!(http_token(&suite, "acme", &worker, ORDERS, "").await.0, 200);

    // evil's API key sees and changes nothing of acme's.
    let evil_key = admin.create_api_key("evil").await.expect("key");
    let mut evil = suite.clients(&evil_key).await;
    let acme_grant = list_grants(&mut admin, "acme", &worker.client_id, "").await.remove(0);
    for (what, r) in [
        (
            "get acme's API",
            evil.apis
                .get_resource_server(pb::GetResourceServerRequest { tenant: "acme".into(), identifier: ORDERS.into() })
                .await
                .map(|_| ()),
        ),
        (
            "list acme's APIs",
            evil.apis
                .list_resource_servers(pb::ListResourceServersRequest { tenant: "acme".into(), ..Default::default() })
                .await
                .map(|_| ()),
        ),
        (
            "delete acme's API",
            evil.apis
                .delete_resource_server(pb::DeleteResourceServerRequest {
                    tenant: "acme".into(),
                    identifier: ORDERS.into(),
                })
                .await
                .map(|_| ()),
        ),
        (
            "list acme's grants",
            evil.grants
                .list_client_grants(pb::ListClientGrantsRequest { tenant: "acme".into(), ..Default::default() })
                .await
                .map(|_| ()),
        ),
        (
            "get acme's grant",
            evil.grants
                .get_client_grant(pb::GetClientGrantRequest { tenant: "acme".into(), id: acme_grant.id.clone() })
                .await
                .map(|_| ()),
        ),
        (
            "delete acme's grant",
            evil.grants
                .delete_client_grant(pb::DeleteClientGrantRequest { tenant: "acme".into(), id: acme_grant.id.clone() })
                .await
                .map(|_| ()),
        ),
        (
            "grant acme's API to acme's worker",
            create_grant(&mut evil, "acme", &worker.client_id, ORDERS, &[]).await.map(|_| ()),
        ),
    ] {
        let e = refused_with(r, Code::PermissionDenied, what);
        assert_eq!(reason(&e).as_deref(), Some("TENANT_NOT_ALLOWED"), "{what}");
    }
    // At its own tenant, acme's grant id is unknown.
    let e = refused_with(
        evil.grants
            .get_client_grant(pb::GetClientGrantRequest { tenant: "evil".into(), id: acme_grant.id.clone() })
            .await,
        Code::NotFound,
        "acme's grant at evil",
    );
    assert_eq!(reason(&e).as_deref(), Some("CLIENT_GRANT_NOT_FOUND"));
    let e = refused_with(
        evil.grants
            .delete_client_grant(pb::DeleteClientGrantRequest { tenant: "evil".into(), id: acme_grant.id.clone() })
            .await,
        Code::NotFound,
        "acme's grant deleted at evil",
    );
    assert_eq!(reason(&e).as_deref(), Some("CLIENT_GRANT_NOT_FOUND"));
    let mine = list_grants(&mut evil, "evil", "", "").await;
    assert!(mine.is_empty(), "evil lists none of acme's grants: {mine:?}");
    // Nothing of acme's was touched.
    assert_eq!(list_grants(&mut admin, "acme", &worker.client_id, "").await, [acme_grant]);
    assert_eq!(http_token(&suite, "acme", &worker, ORDERS, "").await.0, 200);

    // A key without the clients scope: reads with READ_ONLY, changes nothing.
    let read_only = admin
        .keys
        .create_api_key(pb::CreateApiKeyRequest {
            tenant: "acme".into(),
            api_key: Some(pb::ApiKey { scopes: vec![pb::ApiKeyScope::ReadOnly as i32], ..Default::default() }),
        })
        .await
        .expect("read-only key")
        .into_inner()
        .api_key
        .expect("key");
    let mut reader = suite.clients(&read_only.key).await;
    assert_eq!(list_grants(&mut reader, "acme", "", ORDERS).await.len(), 1);
    let e = refused_with(
        create_api(&mut reader, "acme", api("urn:acme:reader", &[])).await,
        Code::PermissionDenied,
        "a read-only key creating an API",
    );
    assert_eq!(reason(&e).as_deref(), Some("API_KEY_SCOPE_MISSING"));
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn apis_and_grants_on_sqlite() {
    apis_and_grants_on(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn apis_and_grants_on_postgres() {
    let Some(base) = postern_testkit::peers::postgres("apis_and_grants_on_postgres") else { return };
    let db = postern_testkit::peers::TestDatabase::create(&base).await.expect("database");
    apis_and_grants_on(Some(db.url.clone())).await;
    db.drop_db().await.expect("drop");
}
