//! API key scopes, for every method that reflection lists (so a new method is covered
//! without editing this test): each method is in its service's scope table; a key without
//! the scope a method needs is refused with `API_KEY_SCOPE_MISSING` naming it, and a key
//! with it gets past the check; a key created without scopes (as every key made before
//! scopes existed) has them all; a key reaches no other tenant and hands on no more than
//! it holds.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use postern_common::scope::{Need, Scope, Scopes};
use postern_proto::tenant::v1 as tenant_pb;
use postern_testkit::{Suite, reason};
use prost::Message;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;

/// Every method of Postern's own services, with whether it streams its answer.
fn reflected_methods() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(postern_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut methods = Vec::new();
    for file in set.file {
        let package = file.package().to_owned();
        if !["postern.tenant.v1", "postern.connections.v1", "postern.authn.v1"].contains(&package.as_str()) {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                methods.push((format!("/{package}.{}/{}", service.name(), method.name()), method.server_streaming()));
            }
        }
    }
    assert!(methods.len() > 30, "reflection lists Postern's methods: {methods:?}");
    methods
}

fn tables() -> BTreeMap<&'static str, Need> {
    [postern_tenant::METHOD_SCOPES, postern_registry::METHOD_SCOPES, postern_authn::METHOD_SCOPES]
        .into_iter()
        .flatten()
        .map(|(m, n)| (*m, *n))
        .collect()
}

#[test]
fn every_method_has_an_entry_in_its_scope_table() {
    let tables = tables();
    let reflected = reflected_methods();
    let missing: Vec<_> = reflected.iter().filter(|(m, _)| !tables.contains_key(m.as_str())).collect();
    assert!(missing.is_empty(), "methods without an entry in their service's METHOD_SCOPES: {missing:?}");
    let stale: Vec<_> = tables.keys().filter(|m| !reflected.iter().any(|(r, _)| r == *m)).collect();
    assert!(stale.is_empty(), "METHOD_SCOPES entries for methods that do not exist: {stale:?}");
    // What is open without a key or internal needs no scope; everything else needs one.
    for (method, need) in &tables {
        let open = postern_authn::PUBLIC_METHODS.contains(method)
            || [postern_tenant::INTERNAL_METHODS, postern_registry::INTERNAL_METHODS, postern_authn::INTERNAL_METHODS]
                .iter()
                .any(|list| list.contains(method));
        let exempt = open && !method.starts_with("/postern.authn.v1.AuthenticationService/");
        assert_eq!(exempt, *need == Need::Nothing, "{method}: {need:?}");
    }
}

/// Calls `path` with an empty message and `key`: the status, or OK when the call went
/// through (a stream that opened counts as through).
async fn call(channel: &tonic::transport::Channel, key: &str, path: &str, streaming: bool) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let path = PathAndQuery::try_from(path.to_owned()).expect("path");
    let mut request = tonic::Request::new(());
    let bearer: MetadataValue<_> = format!("Bearer {key}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", bearer);
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let answer = if streaming {
        let call = grpc.server_streaming(request, path, codec);
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(_)) | Err(_) => Ok(()),
            Ok(Err(status)) => Err(status),
        }
    } else {
        grpc.unary(request, path, codec).await.map(|_| ())
    };
    answer.err().unwrap_or_else(|| tonic::Status::ok(""))
}

#[tokio::test]
async fn every_method_checks_the_key_scopes() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant("scope-a").await.expect("tenant a");
    admin.create_tenant("scope-b").await.expect("tenant b");
    let channel = suite.channel().await;
    let mut keys: HashMap<Scopes, String> = HashMap::new();
    let mut keymaker = suite.admin().await;
    let mut key_with = async |scopes: Scopes| -> String {
        if let Some(k) = keys.get(&scopes) {
            return k.clone();
        }
        let listed = if scopes.is_full() { Vec::new() } else { scopes.iter().map(|s| s.to_proto() as i32).collect() };
        let created = keymaker
            .keys
            .create_api_key(tenant_pb::CreateApiKeyRequest {
                tenant: "scope-a".into(),
                api_key: Some(tenant_pb::ApiKey {
                    description: format!("{scopes:?}"),
                    scopes: listed,
                    ..Default::default()
                }),
            })
            .await
            .expect("create a key")
            .into_inner()
            .api_key
            .expect("key");
        keys.insert(scopes, created.key.clone());
        created.key
    };
    let tables = tables();
    let mut checked = 0;
    for (method, streaming) in reflected_methods() {
        let area = match tables[method.as_str()] {
            Need::Nothing => continue,
            Need::Read(area) | Need::Write(area) => area,
        };
        let read = matches!(tables[method.as_str()], Need::Read(_));
        // Every scope but the ones that would do.
        let lacking: Scopes =
            Scope::ALL.into_iter().filter(|s| *s != area && !(read && *s == Scope::ReadOnly)).collect();
        let status = call(&channel, &key_with(lacking).await, &method, streaming).await;
        assert_eq!(status.code(), Code::PermissionDenied, "{method} with {lacking:?}: {status:?}");
        assert_eq!(reason(&status).as_deref(), Some("API_KEY_SCOPE_MISSING"), "{method}: {status:?}");
        let details = tonic_types::StatusExt::get_error_details(&status);
        let info = details.error_info().expect("error info");
        assert_eq!(info.metadata.get("scope").map(String::as_str), Some(area.name()), "{method}");

        let mut enough = vec![Scopes::from_iter([area]), Scopes::full()];
        if read {
            enough.push(Scopes::from_iter([Scope::ReadOnly]));
        }
        for scopes in enough {
            let status = call(&channel, &key_with(scopes).await, &method, streaming).await;
            assert_ne!(
                reason(&status).as_deref(),
                Some("API_KEY_SCOPE_MISSING"),
                "{method} with {scopes:?}: {status:?}"
            );
        }
        checked += 1;
    }
    assert!(checked > 25, "only {checked} methods need a scope");

    // Describe: a restricted key shows its scopes, a full one none (every scope).
    let listed = admin
        .keys
        .list_api_keys(tenant_pb::ListApiKeysRequest { tenant: "scope-a".into(), page_size: 100, ..Default::default() })
        .await
        .expect("list keys")
        .into_inner()
        .api_keys;
    let users_only = listed.iter().find(|k| k.description == format!("{:?}", Scopes::from_iter([Scope::Users])));
    assert_eq!(users_only.expect("the USERS key").scopes, [tenant_pb::ApiKeyScope::Users as i32]);
    let full = listed.iter().find(|k| k.description == "full").expect("the full key");
    assert!(full.scopes.is_empty());

    // A key reaches no other tenant, whatever its scopes.
    let mut full_a = suite.clients(&key_with(Scopes::full()).await).await;
    let err = full_a.tenants.get_tenant(tenant_pb::GetTenantRequest { name: "scope-b".into() }).await.expect_err("b");
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::PermissionDenied, Some("TENANT_NOT_ALLOWED")));
    full_a.tenants.get_tenant(tenant_pb::GetTenantRequest { name: "scope-a".into() }).await.expect("own tenant");

    // A key hands on no more than it holds.
    let mut tenant_only = suite.clients(&key_with(Scopes::from_iter([Scope::Tenant])).await).await;
    let create = |scopes: Vec<tenant_pb::ApiKeyScope>| tenant_pb::CreateApiKeyRequest {
        tenant: "scope-a".into(),
        api_key: Some(tenant_pb::ApiKey {
            scopes: scopes.into_iter().map(|s| s as i32).collect(),
            ..Default::default()
        }),
    };
    for wider in [vec![tenant_pb::ApiKeyScope::Users], vec![]] {
        let err = tenant_only.keys.create_api_key(create(wider.clone())).await.expect_err("wider");
        assert_eq!((err.code(), reason(&err).as_deref()), (Code::PermissionDenied, Some("API_KEY_SCOPE_MISSING")));
    }
    tenant_only.keys.create_api_key(create(vec![tenant_pb::ApiKeyScope::Tenant])).await.expect("as narrow");
    let err = admin.keys.create_api_key(create(vec![tenant_pb::ApiKeyScope::Unspecified])).await.expect_err("bad");
    assert_eq!(err.code(), Code::InvalidArgument);
    suite.stop().await.expect("stop");
}
