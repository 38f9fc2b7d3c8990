//! SAML 2.0 logins (`samlp`) against a real identity provider: pysaml2, signing through
//! `xmlsec1` (`postern_testkit::saml`, one per test binary). The IdP learns each connection's
//! service provider from the SP metadata Postern publishes at
//! `/<tenant>/samlp/metadata?connection=`; `/authorize?connection=` sends the browser there
//! with an `AuthnRequest` (HTTP-Redirect, signed when the connection says so, and then checked
//! by the IdP); the IdP's auto-submitting form posts the `SAMLResponse` to the tenant's
//! `/login/callback`; the application gets its code, whose ID token names
//! `samlp|<connection>|<NameID>`.
//!
//! Refused, with `error=access_denied` and nothing stored: an unsigned response, one signed by
//! another key, an expired assertion (on the controllable clock), another audience, the
//! answer to another login (`InResponseTo`), a replayed assertion id, and the XML signature
//! wrapping variants (an unsigned assertion beside the signed one, or around it). A real
//! headless Chromium clicks "Continue with …" and lands at the application. A connection
//! configured by the IdP's metadata document alone (`metadata_url`) logs in, and follows the
//! IdP's signing key when it rolls over. A request signed by HTTP-POST carries an enveloped
//! signature that the IdP checks.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postern_common::time::Clock;
use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::saml::SamlIdp;
use postern_testkit::web::{Agent, Answer, Form};
use postern_testkit::{Clients, Suite};
use serde_json::{Value, json};

const CALLBACK: &str = "https://app.example.com/callback";
const STATE: &str = "app-state";
const CONNECTION: &str = "fabrikam-idp";
const ALICE: &str = "samlp|fabrikam-idp|alice@fabrikam.example";

fn base(suite: &Suite) -> String {
    format!("http://{}", suite.http)
}

/// A suite whose SAML time rules (and the authenticator's) read `clock`.
async fn suite_on(clock: &Clock) -> Suite {
    let clock = clock.clone();
    Suite::start_with(move |s| {
        s.connectors =
            Some(postern_connector_saml::register(postern::connectors(), clock.clone(), &Default::default()));
        s.clock = Some(clock);
    })
    .await
    .expect("suite")
}

/// A tenant with a confidential web application.
async fn app(admin: &mut Clients, t: &str) -> tenant::Client {
    admin.create_tenant(t).await.expect("tenant");
    let c = tenant::Client {
        name: "Fabrikam Employee Timesheets".into(),
        app_type: tenant::AppType::RegularWeb as i32,
        callbacks: vec![CALLBACK.into()],
        ..Default::default()
    };
    admin
        .clients
        .create_client(tenant::CreateClientRequest { tenant: t.into(), client: Some(c) })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client")
}

fn saml_options(idp: &SamlIdp) -> conn::SamlOptions {
    conn::SamlOptions {
        sign_in_url: idp.sso_url(),
        signing_certificates: vec![idp.certificate.clone()],
        entity_id: idp.entity_id.clone(),
        ..Default::default()
    }
}

/// Creates the `samlp` connection `name` with `options` in tenant `t`, enables it for
/// `client`, and registers its SP (by the metadata Postern publishes) with the IdP under
/// `mode`: the metadata document.
async fn connect(
    idp: &SamlIdp,
    suite: &Suite,
    admin: &mut Clients,
    (t, client): (&str, &tenant::Client),
    name: &str,
    options: conn::SamlOptions,
    mode: Value,
) -> String {
    let connection = conn::Connection {
        name: name.into(),
        display_name: "Fabrikam IdP".into(),
        strategy: "samlp".into(),
        options: Some(conn::connection::Options::Saml(options)),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: t.into(), connection: Some(connection) })
        .await
        .expect("connection");
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: t.into(),
            connection: name.into(),
            client_id: client.client_id.clone(),
        })
        .await
        .expect("enable");
    let metadata = metadata(suite, t, name).await;
    assert_eq!(metadata.status, 200, "{metadata:?}");
    idp.register_sp(&metadata.body, mode).await.expect("SP registered");
    metadata.body
}

async fn metadata(suite: &Suite, t: &str, name: &str) -> Answer {
    Agent::new().get(&format!("{}/{t}/samlp/metadata?connection={name}", base(suite))).await.expect("metadata")
}

fn authorize_url(suite: &Suite, t: &str, client_id: &str, connection: &str) -> String {
    let mut url = url::Url::parse(&format!("{}/{t}/authorize", base(suite))).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", CALLBACK)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid profile email")
        .append_pair("state", STATE)
        .append_pair("nonce", "app-nonce")
        .append_pair("connection", connection)
        .append_pair("prompt", "login");
    url.into()
}

/// The query of the redirect to the application.
fn app_query(answer: &Answer) -> HashMap<String, String> {
    assert_eq!(answer.status, 303, "{answer:?}");
    let location = answer.location().expect("location");
    assert!(location.starts_with(&format!("{CALLBACK}?")), "{location}");
    url::Url::parse(location).expect("url").query_pairs().into_owned().collect()
}

/// Starts a login at `connection`: the 303 to the IdP (with the binding cookie) and the
/// redirect's query (`SAMLRequest`, `RelayState`, …).
async fn start(
    idp: &SamlIdp,
    suite: &Suite,
    agent: &mut Agent,
    t: &str,
    client: &tenant::Client,
    connection: &str,
) -> (String, HashMap<String, String>) {
    let answer = agent.get(&authorize_url(suite, t, &client.client_id, connection)).await.expect("authorize");
    assert_eq!(answer.status, 303, "{answer:?}");
    let location = answer.location().expect("to the IdP").to_owned();
    assert!(location.starts_with(&idp.sso_url()), "{location}");
    assert!(
        answer.headers("set-cookie").iter().any(|c| c.starts_with("postern_up_") && c.contains("HttpOnly")),
        "the binding cookie: {answer:?}"
    );
    let q = url::Url::parse(&location).expect("url").query_pairs().into_owned().collect();
    (location, q)
}

/// The IdP's auto-submitting form for the request at `location`.
async fn idp_form(agent: &mut Agent, location: &str) -> Form {
    let page = agent.get(location).await.expect("IdP");
    assert_eq!(page.status, 200, "the IdP took the request: {}", page.body);
    page.forms().into_iter().find(|f| f.has("SAMLResponse")).expect("the IdP's form")
}

/// A whole login: `/authorize?connection=` to the application's answer.
async fn login(
    idp: &SamlIdp,
    suite: &Suite,
    t: &str,
    client: &tenant::Client,
    connection: &str,
) -> HashMap<String, String> {
    let mut agent = Agent::new();
    let (location, _) = start(idp, suite, &mut agent, t, client, connection).await;
    let form = idp_form(&mut agent, &location).await;
    let back = agent.submit(&location, &form).await.expect("callback");
    app_query(&back)
}

fn claims_of(jwt: &str) -> Value {
    let body = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).expect("base64url")).expect("JSON")
}

async fn exchange(suite: &Suite, t: &str, client: &tenant::Client, code: &str) -> Value {
    let fields: Vec<(String, String)> = [
        ("grant_type", "authorization_code"),
        ("client_id", client.client_id.as_str()),
        ("client_secret", client.client_secret.as_str()),
        ("code", code),
        ("redirect_uri", CALLBACK),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let answer = Agent::new().post_form(&format!("{}/{t}/oauth/token", base(suite)), &fields).await.expect("token");
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).expect("JSON")
}

async fn user(admin: &mut Clients, t: &str, user_id: &str) -> Option<authn::User> {
    match admin.users.get_user(authn::GetUserRequest { tenant: t.into(), user_id: user_id.into() }).await {
        Ok(r) => r.into_inner().user,
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("GetUser: {s:?}"),
    }
}

async fn user_count(admin: &mut Clients, t: &str) -> usize {
    admin
        .users
        .list_users(authn::ListUsersRequest { tenant: t.into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner()
        .users
        .len()
}

#[track_caller]
fn assert_refused(answer: &HashMap<String, String>, why: &str, case: &str) {
    assert_eq!(answer.get("error").map(String::as_str), Some("access_denied"), "{case}: {answer:?}");
    assert_eq!(answer.get("state").map(String::as_str), Some(STATE), "{case}: {answer:?}");
    let description = answer.get("error_description").cloned().unwrap_or_default();
    assert!(description.contains(why), "{case}: {description:?} should say {why:?}");
    assert!(!answer.contains_key("code"), "{case}: {answer:?}");
}

#[tokio::test]
async fn a_samlp_login_end_to_end_through_the_metadata_the_redirect_and_the_post_back() {
    let Some(idp) = SamlIdp::shared("a_samlp_login_end_to_end_through_the_metadata_the_redirect_and_the_post_back")
    else {
        return;
    };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-e2e";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let md = connect(idp, &suite, &mut admin, (t, &portal), CONNECTION, saml_options(idp), json!({})).await;

    // The SP metadata: entity id, the tenant's callback as ACS, unsigned requests.
    let acs = format!("{}/{t}/login/callback", base(&suite));
    assert!(md.contains(&format!("entityID=\"urn:postern:{t}:{CONNECTION}\"")), "{md}");
    assert!(md.contains(&format!("Location=\"{acs}\"")), "{md}");
    assert!(md.contains("AuthnRequestsSigned=\"false\"") && !md.contains("KeyDescriptor"), "{md}");
    assert_eq!(metadata(&suite, t, "nobody").await.status, 404);
    let no_name = Agent::new().get(&format!("{}/{t}/samlp/metadata", base(&suite))).await.expect("metadata");
    assert_eq!(no_name.status, 400, "{no_name:?}");
    assert!(no_name.body.contains("connection"), "{no_name:?}");

    // TestConnection: the certificate's dates, the sign-in URL reached.
    let tested = admin
        .authn
        .test_connection(authn::TestConnectionRequest { tenant: t.into(), connection: CONNECTION.into() })
        .await
        .expect("test")
        .into_inner();
    assert!(tested.ok, "{tested:?}");
    assert_eq!(tested.strategy, "samlp");
    let names: Vec<&str> = tested.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["certificates", "sign_in_url"]);
    assert!(tested.steps[0].detail.contains("Fabrikam test IdP"), "{tested:?}");

    // The login: the AuthnRequest, the IdP's form, the callback, the application's code.
    let mut agent = Agent::new();
    let (location, q) = start(idp, &suite, &mut agent, t, &portal, CONNECTION).await;
    assert!(q.contains_key("SAMLRequest") && !q.contains_key("Signature"), "{q:?}");
    let form = idp_form(&mut agent, &location).await;
    assert_eq!(form.action, acs, "the IdP posts to the ACS of the metadata");
    assert_eq!(form.value("RelayState"), q.get("RelayState").map(String::as_str));
    let back = agent.submit(&location, &form).await.expect("callback");
    assert!(back.headers("set-cookie").iter().any(|c| c.starts_with("postern_session=")), "an SSO session: {back:?}");
    let answer = app_query(&back);
    assert_eq!(answer["state"], STATE);
    let tokens = exchange(&suite, t, &portal, &answer["code"]).await;
    let id = claims_of(tokens["id_token"].as_str().expect("id_token"));
    assert_eq!(id["sub"], ALICE);
    assert_eq!(id["email"], "alice@fabrikam.example");
    assert_eq!(id["name"], "Alice Example");
    assert_eq!(id["given_name"], "Alice");
    assert_eq!(id["family_name"], "Example");
    let alice = user(&mut admin, t, ALICE).await.expect("the user is stored");
    assert_eq!(alice.identities.len(), 1);
    let identity = &alice.identities[0];
    assert_eq!((identity.connection.as_str(), identity.strategy.as_str()), (CONNECTION, "samlp"));
    let data = identity.profile_data.as_ref().map(prost_struct).expect("profile data");
    assert_eq!(data["groups"], json!(["timesheets-users", "engineering"]), "multi-valued kept as a list: {data}");
    assert_eq!(data["nameid"], "alice@fabrikam.example");

    // The same response posted again: its login is used up.
    let again = agent.submit(&location, &form).await.expect("again");
    assert_eq!(again.status, 400, "{again:?}");

    // A response signed on the whole Response (not the assertion), and on both: accepted.
    for sign in ["response", "both"] {
        idp.register_sp(&md, json!({"sign": sign})).await.expect("mode");
        let answer = login(idp, &suite, t, &portal, CONNECTION).await;
        assert!(answer.contains_key("code"), "signed {sign}: {answer:?}");
    }
    assert_eq!(user_count(&mut admin, t).await, 1, "the same user each time");
    suite.stop().await.expect("stop");
}

async fn test_connection(admin: &mut Clients, t: &str, connection: &str) -> authn::TestConnectionResponse {
    admin
        .authn
        .test_connection(authn::TestConnectionRequest { tenant: t.into(), connection: connection.into() })
        .await
        .expect("test")
        .into_inner()
}

#[tokio::test]
async fn a_connection_reads_the_idp_metadata_document_and_follows_its_key_rollover() {
    let test = "a_connection_reads_the_idp_metadata_document_and_follows_its_key_rollover";
    let Some(idp) = SamlIdp::shared(test) else { return };
    let clock = Clock::manual(postern_common::time::now_micros());
    let suite = suite_on(&clock).await;
    let t = "fabrikam-metadata";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    // The IdP publishes its metadata (under this test's name) with its signing key "idp".
    idp.publish(t, "idp", Some("public, max-age=7200")).await.expect("publish");
    // Neither sign-in URL nor certificate nor entity id: all from the document.
    let options = conn::SamlOptions { metadata_url: idp.metadata_url(t), ..Default::default() };
    let md = connect(idp, &suite, &mut admin, (t, &portal), CONNECTION, options, json!({})).await;

    // TestConnection reads the document: its entity, its certificate, its sign-on URL.
    let tested = test_connection(&mut admin, t, CONNECTION).await;
    assert!(tested.ok, "{tested:?}");
    let names: Vec<&str> = tested.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["metadata", "certificates", "sign_in_url"], "{tested:?}");
    let read = &tested.steps[0].detail;
    assert!(read.contains(&idp.entity_id) && read.contains("1 signing certificate(s)"), "{read}");
    assert!(read.contains(&idp.sso_url()) && read.contains("kept 120 minutes"), "{read}");
    assert!(tested.steps[1].detail.contains("Fabrikam test IdP"), "{tested:?}");
    assert!(tested.steps[2].detail.contains(&idp.sso_url()), "{tested:?}");

    // A login: the request goes to the document's sign-on URL (checked by `start`), the
    // response is checked against its certificate and its entity id.
    let answer = login(idp, &suite, t, &portal, CONNECTION).await;
    let tokens = exchange(&suite, t, &portal, &answer["code"]).await;
    assert_eq!(claims_of(tokens["id_token"].as_str().expect("id_token"))["sub"], ALICE);

    // The IdP rolls its signing key over: it signs with the new key and publishes it. The
    // document kept names the old certificate, so the first response fails its signature.
    idp.publish(t, "other", Some("public, max-age=7200")).await.expect("publish");
    idp.register_sp(&md, json!({"key": "other"})).await.expect("mode");
    // Fetched (by TestConnection) less than 10 seconds ago on the clock: not fetched again.
    let answer = login(idp, &suite, t, &portal, CONNECTION).await;
    assert_refused(&answer, "no valid signature", "the new key, the document fetched a moment ago");
    // Later, the failed signature fetches the document again, and the new key is trusted.
    clock.advance(std::time::Duration::from_secs(11));
    let answer = login(idp, &suite, t, &portal, CONNECTION).await;
    assert!(answer.contains_key("code"), "after the rollover: {answer:?}");
    // The retired key is trusted no more (and its failure fetches nothing within 10 s).
    idp.register_sp(&md, json!({"key": "idp"})).await.expect("mode");
    let answer = login(idp, &suite, t, &portal, CONNECTION).await;
    assert_refused(&answer, "no valid signature", "the retired key");
    assert_eq!(user_count(&mut admin, t).await, 1);

    // A document that cannot be had: TestConnection says why, a login goes back to the
    // application, nothing stored.
    let down = "http://127.0.0.1:9/metadata";
    let broken = conn::SamlOptions { metadata_url: down.into(), ..Default::default() };
    connect(idp, &suite, &mut admin, (t, &portal), "unreachable", broken, json!({})).await;
    let tested = test_connection(&mut admin, t, "unreachable").await;
    assert!(!tested.ok, "{tested:?}");
    assert_eq!(tested.steps[0].name, "metadata");
    assert!(tested.steps[0].detail.contains(&format!("the IdP metadata at {down} cannot be read")), "{tested:?}");
    let answer =
        Agent::new().get(&authorize_url(&suite, t, &portal.client_id, "unreachable")).await.expect("authorize");
    assert_ne!(answer.status, 500, "{answer:?}");
    let said = format!("{} {}", answer.location().unwrap_or_default(), answer.body);
    assert!(said.contains("cannot") && said.contains("metadata"), "{answer:?}");
    // A document that describes another entity than the connection's entity_id.
    let other = conn::SamlOptions {
        metadata_url: idp.metadata_url(t),
        entity_id: "https://someone-else.example".into(),
        ..Default::default()
    };
    connect(idp, &suite, &mut admin, (t, &portal), "another-entity", other, json!({})).await;
    let tested = test_connection(&mut admin, t, "another-entity").await;
    assert!(
        tested.steps[0].detail.contains("describes no identity provider \"https://someone-else.example\""),
        "{tested:?}"
    );
    assert_eq!(user_count(&mut admin, t).await, 1, "nothing stored");

    // Without metadata_url, the sign-in URL and a certificate stay required.
    let err = admin
        .connections
        .create_connection(conn::CreateConnectionRequest {
            tenant: t.into(),
            connection: Some(conn::Connection {
                name: "nothing".into(),
                strategy: "samlp".into(),
                options: Some(conn::connection::Options::Saml(conn::SamlOptions::default())),
                ..Default::default()
            }),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("sign_in_url") && err.message().contains("metadata_url"), "{err:?}");
    suite.stop().await.expect("stop");
}

/// A protobuf Struct as JSON.
fn prost_struct(s: &prost_types::Struct) -> Value {
    fn value(v: &prost_types::Value) -> Value {
        use prost_types::value::Kind;
        match &v.kind {
            Some(Kind::StringValue(s)) => json!(s),
            Some(Kind::BoolValue(b)) => json!(b),
            Some(Kind::NumberValue(n)) => json!(n),
            Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
            Some(Kind::StructValue(s)) => prost_struct(s),
            Some(Kind::NullValue(_)) | None => Value::Null,
        }
    }
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect())
}

#[tokio::test]
async fn forged_and_broken_responses_are_refused_and_nothing_is_stored() {
    let Some(idp) = SamlIdp::shared("forged_and_broken_responses_are_refused_and_nothing_is_stored") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-forged";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let md = connect(idp, &suite, &mut admin, (t, &portal), CONNECTION, saml_options(idp), json!({})).await;

    let cases = [
        ("unsigned", json!({"sign": "none"}), "no valid signature"),
        ("signed by another key", json!({"key": "other"}), "no valid signature"),
        ("another audience", json!({"audience": "urn:postern:someone-else"}), "Audience"),
        ("InResponseTo of no request of ours", json!({"in_response_to": "_not-ours"}), "InResponseTo"),
        ("wrapped: an unsigned assertion beside the signed one", json!({"wrap": "sibling"}), "exactly one assertion"),
        ("wrapped: an unsigned assertion around the signed one", json!({"wrap": "inside"}), "exactly one assertion"),
    ];
    for (case, mode, why) in cases {
        idp.register_sp(&md, mode).await.expect("mode");
        let answer = login(idp, &suite, t, &portal, CONNECTION).await;
        assert_refused(&answer, why, case);
        assert_eq!(user_count(&mut admin, t).await, 0, "{case}: nothing stored");
    }

    // The answer to another login of the same browser: its InResponseTo is not this login's.
    idp.register_sp(&md, json!({})).await.expect("mode");
    let mut agent = Agent::new();
    let (first, _) = start(idp, &suite, &mut agent, t, &portal, CONNECTION).await;
    let (_, second) = start(idp, &suite, &mut agent, t, &portal, CONNECTION).await;
    let mut form = idp_form(&mut agent, &first).await;
    form.set("RelayState", &second["RelayState"]);
    let answer = app_query(&agent.submit(&first, &form).await.expect("callback"));
    assert_refused(&answer, "InResponseTo", "the answer to another login");
    assert_eq!(user_count(&mut admin, t).await, 0, "nothing stored");

    // The wrapped forms are not a forgery's only shape: the signed original still logs in.
    let answer = login(idp, &suite, t, &portal, CONNECTION).await;
    assert!(answer.contains_key("code"), "{answer:?}");
    assert!(user(&mut admin, t, ALICE).await.is_some());
    assert!(user(&mut admin, t, "samlp|fabrikam-idp|mallory@fabrikam.example").await.is_none());
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn an_assertion_id_is_accepted_once_across_logins() {
    let Some(idp) = SamlIdp::shared("an_assertion_id_is_accepted_once_across_logins") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-replay";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let mode = json!({"assertion_id": "_the-same-assertion"});
    connect(idp, &suite, &mut admin, (t, &portal), CONNECTION, saml_options(idp), mode).await;

    // Each login answers its own request (InResponseTo holds), but the IdP reuses the
    // assertion's id: the second is a replay.
    let first = login(idp, &suite, t, &portal, CONNECTION).await;
    assert!(first.contains_key("code"), "{first:?}");
    let second = login(idp, &suite, t, &portal, CONNECTION).await;
    assert_refused(&second, "already used", "a replayed assertion id");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn an_expired_assertion_is_refused_on_the_clock() {
    let Some(idp) = SamlIdp::shared("an_expired_assertion_is_refused_on_the_clock") else { return };
    let clock = Clock::manual(postern_common::time::now_micros());
    let suite = suite_on(&clock).await;
    let t = "fabrikam-clock";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let mode = json!({"lifetime_seconds": 60});
    connect(idp, &suite, &mut admin, (t, &portal), CONNECTION, saml_options(idp), mode).await;

    // In time, an assertion that lives one minute logs in.
    let answer = login(idp, &suite, t, &portal, CONNECTION).await;
    assert!(answer.contains_key("code"), "{answer:?}");
    assert_eq!(user_count(&mut admin, t).await, 1);

    // Two minutes and a half pass before the next one arrives (less than the login
    // transaction's lifetime, more than the assertion's and the skew).
    let mut agent = Agent::new();
    let (location, _) = start(idp, &suite, &mut agent, t, &portal, CONNECTION).await;
    let form = idp_form(&mut agent, &location).await;
    clock.advance(std::time::Duration::from_secs(150));
    let answer = app_query(&agent.submit(&location, &form).await.expect("callback"));
    assert_refused(&answer, "expired", "an expired assertion");
    let alice = user(&mut admin, t, ALICE).await.expect("alice");
    assert_eq!(alice.logins_count, 1, "the refused login is not counted");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn signed_requests_are_checked_by_the_idp_and_their_certificate_published() {
    let Some(idp) = SamlIdp::shared("signed_requests_are_checked_by_the_idp_and_their_certificate_published") else {
        return;
    };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-signed";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let cert = rcgen::CertificateParams::new(vec!["postern-sp".into()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let options = conn::SamlOptions {
        sign_request: true,
        request_signing_key: key.serialize_pem(),
        request_signing_certificate: cert.pem(),
        ..saml_options(idp)
    };
    let md =
        connect(idp, &suite, &mut admin, (t, &portal), CONNECTION, options, json!({"require_signed_request": true}))
            .await;
    assert!(md.contains("AuthnRequestsSigned=\"true\"") && md.contains("<md:KeyDescriptor use=\"signing\">"), "{md}");

    let mut agent = Agent::new();
    let (location, q) = start(idp, &suite, &mut agent, t, &portal, CONNECTION).await;
    assert_eq!(q["SigAlg"], "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256");
    // Tampered with, the request's signature no longer verifies at the IdP.
    let tampered = location.replace("RelayState=", "RelayState=x");
    assert_eq!(agent.get(&tampered).await.expect("IdP").status, 400, "the IdP checks the signature");
    let form = idp_form(&mut agent, &location).await;
    let answer = app_query(&agent.submit(&location, &form).await.expect("callback"));
    assert!(answer.contains_key("code"), "{answer:?}");

    let tested = admin
        .authn
        .test_connection(authn::TestConnectionRequest { tenant: t.into(), connection: CONNECTION.into() })
        .await
        .expect("test")
        .into_inner();
    assert!(tested.ok, "{tested:?}");
    assert!(tested.steps.iter().any(|s| s.name == "request_signing_key" && s.ok), "{tested:?}");
    assert!(!format!("{tested:?}").contains("PRIVATE KEY"), "never a secret");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn signed_requests_by_http_post_carry_an_enveloped_signature_the_idp_checks() {
    let test = "signed_requests_by_http_post_carry_an_enveloped_signature_the_idp_checks";
    let Some(idp) = SamlIdp::shared(test) else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-signed-post";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let (key, cert) = rsa_pair("postern-sp");
    // The HTTP-POST sign-on URL comes from the IdP's metadata document.
    let options = conn::SamlOptions {
        metadata_url: format!("{}/metadata", idp.url),
        binding: conn::SamlBinding::HttpPost as i32,
        sign_request: true,
        request_signing_key: key,
        request_signing_certificate: cert.clone(),
        ..Default::default()
    };
    let md =
        connect(idp, &suite, &mut admin, (t, &portal), CONNECTION, options, json!({"require_signed_request": true}))
            .await;
    assert!(md.contains("AuthnRequestsSigned=\"true\"") && md.contains(&pem_body(&cert)), "{md}");

    // `/authorize` answers the page whose form posts the signed request to the IdP.
    let mut agent = Agent::new();
    let authorize = authorize_url(&suite, t, &portal.client_id, CONNECTION);
    let page = agent.get(&authorize).await.expect("authorize");
    assert_eq!(page.status, 200, "{page:?}");
    let form = page.forms().into_iter().find(|f| f.has("SAMLRequest")).expect("the form to the IdP");
    assert_eq!(form.action, format!("{}/sso/post", idp.url));
    let request = String::from_utf8(
        base64::engine::general_purpose::STANDARD.decode(form.value("SAMLRequest").expect("request")).expect("base64"),
    )
    .expect("XML");
    assert!(request.contains("#rsa-sha256") && request.contains("SignatureValue"), "{request}");
    let compact: String = request.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(compact.contains(&pem_body(&cert)), "the certificate in KeyInfo: {request}");
    // Tampered with, the request's signature no longer verifies at the IdP.
    let mut tampered = form.clone();
    // One millisecond later: a request the IdP would take, were it not for its signature.
    let at = request.find("IssueInstant=\"").expect("IssueInstant") + "IssueInstant=\"".len();
    let end = at + request[at..].find('"').expect("end");
    let digit = request.as_bytes()[end - 2];
    let changed = format!(
        "{}{}{}",
        &request[..end - 2],
        if digit == b'9' { '8' } else { char::from(digit + 1) },
        &request[end - 1..]
    );
    assert_ne!(changed, request);
    tampered.set("SAMLRequest", &base64::engine::general_purpose::STANDARD.encode(changed));
    let refused = agent.submit(&authorize, &tampered).await.expect("IdP");
    assert_eq!(refused.status, 400, "the IdP checks the signature: {refused:?}");
    // Unsigned, the IdP (which requires signed requests here) refuses it too.
    let mut unsigned = form.clone();
    let bare = request.split("<ds:Signature").next().expect("head").to_owned()
        + request.split("</ds:Signature>").nth(1).expect("tail");
    unsigned.set("SAMLRequest", &base64::engine::general_purpose::STANDARD.encode(bare));
    assert_eq!(agent.submit(&authorize, &unsigned).await.expect("IdP").status, 400, "an unsigned request");
    // As sent, it logs the user in.
    let idp_page = agent.submit(&authorize, &form).await.expect("IdP");
    assert_eq!(idp_page.status, 200, "the IdP took the signed request: {}", idp_page.body);
    let back_form = idp_page.forms().into_iter().find(|f| f.has("SAMLResponse")).expect("the IdP's form");
    let answer = app_query(&agent.submit(&form.action, &back_form).await.expect("callback"));
    assert!(answer.contains_key("code"), "{answer:?}");

    let tested = test_connection(&mut admin, t, CONNECTION).await;
    assert!(tested.ok, "{tested:?}");
    let step = tested.steps.iter().find(|s| s.name == "request_signing_key").expect("the key's step");
    assert!(step.detail.contains("signs an HTTP-POST request"), "{tested:?}");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn a_samlp_connection_without_an_idp_certificate_cannot_be_created() {
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-nocert";
    let mut admin = suite.admin().await;
    admin.create_tenant(t).await.expect("tenant");
    let connection = conn::Connection {
        name: "no-certificate".into(),
        strategy: "samlp".into(),
        options: Some(conn::connection::Options::Saml(conn::SamlOptions {
            sign_in_url: "https://idp.fabrikam.example/sso".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let e = admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: t.into(), connection: Some(connection) })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let fields = postern_testkit::violated_fields(&e);
    assert!(fields.iter().any(|f| f.ends_with("saml.signing_certificates")), "{fields:?}");
    suite.stop().await.expect("stop");
}

/// A loopback application that answers every request with a small page.
async fn loopback_app() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = stream.read(&mut buf).await;
                let page = "<html><body><h1 id=app>The application</h1></body></html>";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_logs_in_through_the_idp_and_lands_at_the_application() {
    let test = "a_real_browser_logs_in_through_the_idp_and_lands_at_the_application";
    let Some(idp) = SamlIdp::shared(test) else { return };
    let Some(browser) = postern_testkit::browser::Browser::open(test).await else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-browser";
    let mut admin = suite.admin().await;
    let (app_addr, app_task) = loopback_app().await;
    let callback = format!("http://{app_addr}/callback");
    admin.create_tenant(t).await.expect("tenant");
    let timesheets = admin
        .clients
        .create_client(tenant::CreateClientRequest {
            tenant: t.into(),
            client: Some(tenant::Client {
                name: "Fabrikam Employee Timesheets".into(),
                app_type: tenant::AppType::RegularWeb as i32,
                callbacks: vec![callback.clone()],
                ..Default::default()
            }),
        })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client");
    connect(idp, &suite, &mut admin, (t, &timesheets), CONNECTION, saml_options(idp), json!({})).await;

    // The hosted page's "Continue with …" button, the IdP's auto-submitting form, the
    // callback: the browser does it all.
    let mut url = url::Url::parse(&format!("{}/{t}/authorize", base(&suite))).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", &timesheets.client_id)
        .append_pair("redirect_uri", &callback)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid profile email")
        .append_pair("state", "browser-state")
        .append_pair("nonce", "browser-nonce");
    browser.goto(url.as_str()).await.expect("authorize");
    browser.click(&format!("button[data-connection={CONNECTION}]")).await.expect("Continue with …");
    let landed = browser
        .wait_for_url("the application", |u| u.host_str() == Some("127.0.0.1") && u.port() == Some(app_addr.port()))
        .await
        .expect("back at the application");
    let q: HashMap<String, String> = landed.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some("browser-state"), "{landed}");
    let fields: Vec<(String, String)> = [
        ("grant_type", "authorization_code"),
        ("client_id", timesheets.client_id.as_str()),
        ("client_secret", timesheets.client_secret.as_str()),
        ("code", q["code"].as_str()),
        ("redirect_uri", callback.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let answer = Agent::new().post_form(&format!("{}/{t}/oauth/token", base(&suite)), &fields).await.expect("token");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let tokens: Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(claims_of(tokens["id_token"].as_str().expect("id_token"))["sub"], ALICE);
    browser.close().await.expect("close");
    app_task.abort();
    suite.stop().await.expect("stop");
}

/// An RSA key (PEM) and its self-signed certificate (PEM), for an SP's decryption key.
fn rsa_pair(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let cert = rcgen::CertificateParams::new(vec![name.into()]).expect("params").self_signed(&key).expect("cert");
    (key.serialize_pem(), cert.pem())
}

/// The base64 body of a PEM certificate, as metadata carries it.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

async fn get_saml(admin: &mut Clients, t: &str, name: &str) -> conn::SamlOptions {
    let c = admin
        .connections
        .get_connection(conn::GetConnectionRequest { tenant: t.into(), connection: name.into() })
        .await
        .expect("get")
        .into_inner()
        .connection
        .expect("connection");
    match c.options {
        Some(conn::connection::Options::Saml(o)) => o,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn encrypted_assertions_are_decrypted_and_their_signatures_checked_like_plain_ones() {
    let test = "encrypted_assertions_are_decrypted_and_their_signatures_checked_like_plain_ones";
    let Some(idp) = SamlIdp::shared(test) else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-encrypted";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let (key, cert) = rsa_pair("postern-sp-encryption");
    let options =
        conn::SamlOptions { decryption_key: key.clone(), decryption_certificate: cert.clone(), ..saml_options(idp) };
    let md = connect(idp, &suite, &mut admin, (t, &portal), CONNECTION, options, json!({})).await;

    // The metadata publishes the certificate for encryption; reads never show the key.
    assert!(md.contains("<md:KeyDescriptor use=\"encryption\">"), "{md}");
    assert!(md.contains(&pem_body(&cert)), "{md}");
    assert!(md.contains("http://www.w3.org/2009/xmlenc11#aes256-gcm"), "{md}");
    let read = get_saml(&mut admin, t, CONNECTION).await;
    assert!(read.decryption_key.is_empty() && read.decryption_key_set, "{read:?}");
    assert_eq!(read.decryption_certificate, cert);

    // Every content encryption with both names of RSA-OAEP, the assertion signed inside;
    // then a signed response around an encrypted unsigned assertion, and both signed.
    let accepted = [
        json!({"encrypt": {"content": "aes128-gcm", "transport": "rsa-oaep-mgf1p"}}),
        json!({"encrypt": {"content": "aes256-gcm", "transport": "rsa-oaep"}}),
        json!({"encrypt": {"content": "aes128-cbc", "transport": "rsa-oaep-mgf1p"}}),
        json!({"encrypt": {"content": "aes256-cbc", "transport": "rsa-oaep"}}),
        json!({"encrypt": {"content": "aes256-gcm"}, "sign": "response"}),
        json!({"encrypt": {"content": "aes128-cbc"}, "sign": "both"}),
    ];
    for mode in accepted {
        idp.register_sp(&md, mode.clone()).await.expect("mode");
        let answer = login(idp, &suite, t, &portal, CONNECTION).await;
        assert!(answer.contains_key("code"), "{mode}: {answer:?}");
    }
    let tokens = {
        idp.register_sp(&md, json!({"encrypt": {"content": "aes256-gcm"}})).await.expect("mode");
        let answer = login(idp, &suite, t, &portal, CONNECTION).await;
        exchange(&suite, t, &portal, &answer["code"]).await
    };
    let id = claims_of(tokens["id_token"].as_str().expect("id_token"));
    assert_eq!((id["sub"].as_str(), id["email"].as_str()), (Some(ALICE), Some("alice@fabrikam.example")));
    assert_eq!(user_count(&mut admin, t).await, 1);

    // Refused: encrypted to another key; encrypted but signed by no one or by another key
    // (the decrypted assertion's signature is checked as a plain one's); the signed-response
    // form signed by another key. A plain signed assertion is still accepted here.
    let refused = [
        ("encrypted to another certificate", json!({"encrypt": {"to": "other"}}), "another certificate"),
        ("encrypted, unsigned", json!({"encrypt": {}, "sign": "none"}), "no valid signature"),
        ("encrypted, signed by another key", json!({"encrypt": {}, "key": "other"}), "no valid signature"),
        (
            "encrypted, the response signed by another key",
            json!({"encrypt": {}, "sign": "response", "key": "other"}),
            "not a valid signature",
        ),
    ];
    for (case, mode, why) in refused {
        idp.register_sp(&md, mode).await.expect("mode");
        let answer = login(idp, &suite, t, &portal, CONNECTION).await;
        assert_refused(&answer, why, case);
    }
    assert_eq!(user_count(&mut admin, t).await, 1, "nothing more stored");
    idp.register_sp(&md, json!({})).await.expect("mode");
    assert!(login(idp, &suite, t, &portal, CONNECTION).await.contains_key("code"), "plain, not required");

    // A connection that requires encryption refuses a plain assertion and takes an
    // encrypted one.
    let required = "fabrikam-encrypted-only";
    let options = conn::SamlOptions {
        decryption_key: key.clone(),
        decryption_certificate: cert.clone(),
        require_encrypted_assertions: true,
        ..saml_options(idp)
    };
    let md_required = connect(idp, &suite, &mut admin, (t, &portal), required, options, json!({})).await;
    let answer = login(idp, &suite, t, &portal, required).await;
    assert_refused(&answer, "requires encrypted assertions", "a plain assertion where encryption is required");
    idp.register_sp(&md_required, json!({"encrypt": {"content": "aes256-gcm"}})).await.expect("mode");
    assert!(login(idp, &suite, t, &portal, required).await.contains_key("code"));

    // A connection without a decryption key says so.
    let keyless = "fabrikam-no-key";
    connect(idp, &suite, &mut admin, (t, &portal), keyless, saml_options(idp), json!({})).await;
    // The IdP encrypts to the first connection's certificate: nothing this one can open.
    let md_keyless = metadata(&suite, t, keyless).await.body;
    let with_cert = md_keyless.replace(
        "<md:NameIDFormat>",
        &format!(
            "<md:KeyDescriptor use=\"encryption\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor><md:NameIDFormat>",
            pem_body(&cert)
        ),
    );
    idp.register_sp(&with_cert, json!({"encrypt": {}})).await.expect("mode");
    let answer = login(idp, &suite, t, &portal, keyless).await;
    assert_refused(&answer, "holds no decryption_key", "an encrypted assertion without a key");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn a_decryption_key_must_match_its_certificate_when_written() {
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-key-pairs";
    let mut admin = suite.admin().await;
    admin.create_tenant(t).await.expect("tenant");
    let (key, cert) = rsa_pair("sp");
    let (_, other_cert) = rsa_pair("someone-else");
    let options = |o: conn::SamlOptions| conn::SamlOptions {
        sign_in_url: "https://idp.fabrikam.example/sso".into(),
        signing_certificates: vec![cert.clone()],
        ..o
    };
    let create = |name: &str, o: conn::SamlOptions| conn::CreateConnectionRequest {
        tenant: t.into(),
        connection: Some(conn::Connection {
            name: name.into(),
            strategy: "samlp".into(),
            options: Some(conn::connection::Options::Saml(o)),
            ..Default::default()
        }),
    };
    let cases = [
        (
            "a key of another certificate",
            options(conn::SamlOptions {
                decryption_key: key.clone(),
                decryption_certificate: other_cert.clone(),
                ..Default::default()
            }),
            "connection.options.saml.decryption_key",
            "not the private key of decryption_certificate",
        ),
        (
            "a key without its certificate",
            options(conn::SamlOptions { decryption_key: key.clone(), ..Default::default() }),
            "connection.options.saml.decryption_certificate",
            "required with decryption_key",
        ),
        (
            "a certificate without its key",
            options(conn::SamlOptions { decryption_certificate: cert.clone(), ..Default::default() }),
            "connection.options.saml.decryption_key",
            "required with decryption_certificate",
        ),
        (
            "encryption required without a certificate",
            options(conn::SamlOptions { require_encrypted_assertions: true, ..Default::default() }),
            "connection.options.saml.decryption_certificate",
            "required with require_encrypted_assertions",
        ),
    ];
    for (case, o, field, why) in cases {
        let e = admin.connections.create_connection(create("refused", o)).await.expect_err(case);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{case}: {e:?}");
        assert!(postern_testkit::violated_fields(&e).iter().any(|f| f == field), "{case}: {e:?}");
        assert!(e.message().contains(why), "{case}: {}", e.message());
        assert!(!e.message().contains("PRIVATE KEY"), "{case}: never the key");
    }
    let good = options(conn::SamlOptions {
        decryption_key: key.clone(),
        decryption_certificate: cert.clone(),
        ..Default::default()
    });
    admin.connections.create_connection(create("paired", good)).await.expect("a matching pair");

    // An update that changes the certificate alone is checked against the stored key.
    let update = |o: conn::SamlOptions, path: &str| conn::UpdateConnectionRequest {
        tenant: t.into(),
        connection: Some(conn::Connection {
            name: "paired".into(),
            options: Some(conn::connection::Options::Saml(o)),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec![path.into()] }),
    };
    let e = admin
        .connections
        .update_connection(update(
            conn::SamlOptions { decryption_certificate: other_cert.clone(), ..Default::default() },
            "options.saml.decryption_certificate",
        ))
        .await
        .expect_err("the stored key is not this certificate's");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        postern_testkit::violated_fields(&e).iter().any(|f| f == "connection.options.saml.decryption_key"),
        "{e:?}"
    );
    admin
        .connections
        .update_connection(update(
            conn::SamlOptions { require_encrypted_assertions: true, ..Default::default() },
            "options.saml.require_encrypted_assertions",
        ))
        .await
        .expect("requiring encryption with a key and its certificate");
    let read = get_saml(&mut admin, t, "paired").await;
    assert!(read.require_encrypted_assertions && read.decryption_key_set && read.decryption_key.is_empty());

    // TestConnection tries the pair: the sealed key opens and decrypts what is encrypted to
    // the certificate, and the certificate is within its dates (an expired one is said so).
    let step = |tested: &authn::TestConnectionResponse| {
        assert!(!format!("{tested:?}").contains("PRIVATE KEY"), "never the key: {tested:?}");
        tested.steps.iter().find(|s| s.name == "decryption_key").cloned().expect("a decryption_key step")
    };
    let test = |name: &str| authn::TestConnectionRequest { tenant: t.into(), connection: name.into() };
    let tested = admin.authn.test_connection(test("paired")).await.expect("test").into_inner();
    let paired = step(&tested);
    assert!(paired.ok && paired.detail.contains("decrypts") && paired.detail.contains("valid until"), "{paired:?}");
    let expired_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let mut params = rcgen::CertificateParams::new(vec!["sp-2020".into()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired_cert = params.self_signed(&expired_key).expect("cert").pem();
    let expired = options(conn::SamlOptions {
        decryption_key: expired_key.serialize_pem(),
        decryption_certificate: expired_cert,
        ..Default::default()
    });
    admin.connections.create_connection(create("expired", expired)).await.expect("an expired pair is stored");
    let tested = admin.authn.test_connection(test("expired")).await.expect("test").into_inner();
    let expired = step(&tested);
    assert!(!tested.ok && !expired.ok && expired.detail.contains("expired on"), "{tested:?}");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn a_request_signing_key_must_match_its_certificate_when_written() {
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-signing-pairs";
    let mut admin = suite.admin().await;
    admin.create_tenant(t).await.expect("tenant");
    let (key, cert) = rsa_pair("sp-signing");
    let (other_key, other_cert) = rsa_pair("someone-else");
    let options = |key: &str, cert: &str| conn::SamlOptions {
        sign_in_url: "https://idp.fabrikam.example/sso".into(),
        signing_certificates: vec![other_cert.clone()],
        sign_request: true,
        request_signing_key: key.into(),
        request_signing_certificate: cert.into(),
        ..Default::default()
    };
    let create = |name: &str, o: conn::SamlOptions| conn::CreateConnectionRequest {
        tenant: t.into(),
        connection: Some(conn::Connection {
            name: name.into(),
            strategy: "samlp".into(),
            options: Some(conn::connection::Options::Saml(o)),
            ..Default::default()
        }),
    };
    let refused = |e: tonic::Status, case: &str| {
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{case}: {e:?}");
        assert!(
            postern_testkit::violated_fields(&e).iter().any(|f| f == "connection.options.saml.request_signing_key"),
            "{case}: {e:?}"
        );
        assert!(e.message().contains("not the private key of request_signing_certificate"), "{case}: {}", e.message());
        assert!(!e.message().contains("PRIVATE KEY"), "{case}: never the key");
    };
    let e = admin.connections.create_connection(create("refused", options(&key, &other_cert))).await.expect_err("pair");
    refused(e, "a key of another certificate");
    admin.connections.create_connection(create("paired", options(&key, &cert))).await.expect("a matching pair");

    // An update of either half alone is checked against the other, stored, half.
    let update = |o: conn::SamlOptions, path: &str| conn::UpdateConnectionRequest {
        tenant: t.into(),
        connection: Some(conn::Connection {
            name: "paired".into(),
            options: Some(conn::connection::Options::Saml(o)),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: path.split(',').map(Into::into).collect() }),
    };
    let e = admin
        .connections
        .update_connection(update(
            conn::SamlOptions { request_signing_certificate: other_cert.clone(), ..Default::default() },
            "options.saml.request_signing_certificate",
        ))
        .await
        .expect_err("the stored key is not this certificate's");
    refused(e, "a certificate of another key");
    let e = admin
        .connections
        .update_connection(update(
            conn::SamlOptions { request_signing_key: other_key.clone(), ..Default::default() },
            "options.saml.request_signing_key",
        ))
        .await
        .expect_err("this key is not the stored certificate's");
    refused(e, "a key of another certificate, stored");
    admin
        .connections
        .update_connection(update(
            conn::SamlOptions {
                request_signing_key: other_key.clone(),
                request_signing_certificate: other_cert.clone(),
                ..Default::default()
            },
            "options.saml.request_signing_key,options.saml.request_signing_certificate",
        ))
        .await
        .expect("both halves replaced together");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn sha1_signatures_are_refused_unless_the_connection_allows_them() {
    let Some(idp) = SamlIdp::shared("sha1_signatures_are_refused_unless_the_connection_allows_them") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-sha1";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let sha1 = json!({"sha1": true});
    connect(idp, &suite, &mut admin, (t, &portal), CONNECTION, saml_options(idp), sha1.clone()).await;
    let answer = login(idp, &suite, t, &portal, CONNECTION).await;
    assert_refused(&answer, "allow_sha1", "RSA-SHA1 without allow_sha1");
    assert_eq!(user_count(&mut admin, t).await, 0);

    let allowing = "fabrikam-sha1-allowed";
    let options = conn::SamlOptions { allow_sha1: true, ..saml_options(idp) };
    let md = connect(idp, &suite, &mut admin, (t, &portal), allowing, options, sha1).await;
    assert!(get_saml(&mut admin, t, allowing).await.allow_sha1);
    for mode in [json!({"sha1": true}), json!({"sha1": true, "sign": "response"}), json!({})] {
        idp.register_sp(&md, mode.clone()).await.expect("mode");
        let answer = login(idp, &suite, t, &portal, allowing).await;
        assert!(answer.contains_key("code"), "{mode}: {answer:?}");
    }
    // Allowing SHA-1 lets no other key sign.
    idp.register_sp(&md, json!({"sha1": true, "key": "other"})).await.expect("mode");
    let answer = login(idp, &suite, t, &portal, allowing).await;
    assert_refused(&answer, "no valid signature", "RSA-SHA1 by another key");
    suite.stop().await.expect("stop");
}

/// Posts an IdP's `SAMLResponse` to `url` as its auto-submitting form would.
async fn post_response(url: &str, response: &str) -> Answer {
    Agent::new().post_form(url, &[("SAMLResponse".to_owned(), response.to_owned())]).await.expect("callback")
}

#[tokio::test]
async fn idp_initiated_logins_only_where_the_connection_turns_them_on() {
    let Some(idp) = SamlIdp::shared("idp_initiated_logins_only_where_the_connection_turns_them_on") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-idp-initiated";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let acs = format!("{}/{t}/login/callback", base(&suite));
    let unsolicited = "fabrikam-unsolicited";
    let options = conn::SamlOptions {
        idp_initiated: Some(conn::SamlIdpInitiated {
            enabled: true,
            client_id: portal.client_id.clone(),
            client_authorize_query: "response_type=code&scope=openid profile email".into(),
        }),
        ..saml_options(idp)
    };
    let md = connect(idp, &suite, &mut admin, (t, &portal), unsolicited, options, json!({})).await;
    let at = format!("{acs}?connection={unsolicited}");
    assert!(
        md.contains(&format!(
            "index=\"1\" Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" Location=\"{at}\""
        )),
        "{md}"
    );
    let sp = format!("urn:postern:{t}:{unsolicited}");

    // The IdP posts an unsolicited response to the callback naming the connection: the
    // application gets a code at its first callback, without state.
    let response = idp.unsolicited(&sp, &at, json!({})).await.expect("minted");
    let answer = post_response(&at, &response).await;
    let q = app_query(&answer);
    assert!(!q.contains_key("state"), "{q:?}");
    let tokens = exchange(&suite, t, &portal, &q["code"]).await;
    let id = claims_of(tokens["id_token"].as_str().expect("id_token"));
    assert_eq!(id["sub"], "samlp|fabrikam-unsolicited|alice@fabrikam.example");
    assert_eq!(id["email"], "alice@fabrikam.example", "scope profile email from the query: {id}");
    assert!(answer.headers("set-cookie").iter().any(|c| c.starts_with("postern_session=")), "an SSO session");
    // Audited as a login by the IdP-initiated method (waiting on the audit stream itself).
    let watch = tenant::WatchAuditEventsRequest { tenant: t.into(), ..Default::default() };
    let mut events = admin.audit.watch_audit_events(watch).await.expect("watch").into_inner();
    let audited = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(e) = futures_util::StreamExt::next(&mut events).await {
            let e = e.expect("event").event.unwrap_or_default();
            let method = e.details.get("method").map(String::as_str);
            if e.r#type == tenant::AuditEventType::Login as i32 && method == Some("idp_initiated") {
                return e;
            }
        }
        panic!("the audit stream ended");
    })
    .await
    .expect("the IdP-initiated login audited within 20 s");
    assert_eq!(
        (audited.outcome, audited.user_id.as_str(), audited.client_id.as_str()),
        (
            tenant::AuditOutcome::Success as i32,
            "samlp|fabrikam-unsolicited|alice@fabrikam.example",
            portal.client_id.as_str()
        )
    );

    // Posted again: the assertion id is used up.
    assert_refused_unsolicited(&app_query(&post_response(&at, &response).await), "already used", "a replay");
    // The same at the plain callback (the IdP's default ACS) logs in too.
    let response = idp.unsolicited(&sp, &acs, json!({})).await.expect("minted");
    assert!(app_query(&post_response(&at, &response).await).contains_key("code"), "destination: the plain callback");

    // Every check still applies.
    let refused = [
        ("signed by another key", json!({"key": "other"}), "no valid signature"),
        ("unsigned", json!({"sign": "none"}), "no valid signature"),
        ("another audience", json!({"audience": "urn:postern:someone-else"}), "udience"),
        ("an answer to a request", json!({"in_response_to": "_a-request-of-someone"}), "InResponseTo"),
    ];
    for (case, mode, why) in refused {
        let response = idp.unsolicited(&sp, &at, mode).await.expect("minted");
        assert_refused_unsolicited(&app_query(&post_response(&at, &response).await), why, case);
    }
    let to_elsewhere = idp.unsolicited(&sp, "https://elsewhere.example/acs", json!({})).await.expect("minted");
    assert_refused_unsolicited(&app_query(&post_response(&at, &to_elsewhere).await), "elsewhere.example", "elsewhere");
    assert_eq!(user_count(&mut admin, t).await, 1);

    // Off (the default): refused with a clear reason, nothing stored; and without
    // `?connection=` an unsolicited response finds no login, as before.
    let off = "fabrikam-solicited-only";
    connect(idp, &suite, &mut admin, (t, &portal), off, saml_options(idp), json!({})).await;
    let off_at = format!("{acs}?connection={off}");
    let response = idp.unsolicited(&format!("urn:postern:{t}:{off}"), &off_at, json!({})).await.expect("minted");
    let page = post_response(&off_at, &response).await;
    assert_eq!(page.status, 400, "{page:?}");
    assert!(page.body.contains("accepts no IdP-initiated logins"), "{}", page.body);
    let page = post_response(&acs, &response).await;
    assert_eq!(page.status, 400, "{page:?}");
    assert!(page.body.contains("expired or was already completed"), "{}", page.body);
    assert_eq!(user_count(&mut admin, t).await, 1);

    // The application must have the connection enabled.
    let other_app = "fabrikam-unsolicited-elsewhere";
    let stranger = admin
        .clients
        .create_client(tenant::CreateClientRequest {
            tenant: t.into(),
            client: Some(tenant::Client {
                name: "Not enabled".into(),
                app_type: tenant::AppType::RegularWeb as i32,
                callbacks: vec![CALLBACK.into()],
                ..Default::default()
            }),
        })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client");
    let options = conn::SamlOptions {
        idp_initiated: Some(conn::SamlIdpInitiated {
            enabled: true,
            client_id: stranger.client_id.clone(),
            client_authorize_query: String::new(),
        }),
        ..saml_options(idp)
    };
    connect(idp, &suite, &mut admin, (t, &portal), other_app, options, json!({})).await;
    let other_at = format!("{acs}?connection={other_app}");
    let response = idp.unsolicited(&format!("urn:postern:{t}:{other_app}"), &other_at, json!({})).await.expect("mint");
    let q = app_query(&post_response(&other_at, &response).await);
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"), "{q:?}");
    assert!(!q.contains_key("code"), "{q:?}");
    assert_eq!(user_count(&mut admin, t).await, 1);
    suite.stop().await.expect("stop");
}

#[track_caller]
fn assert_refused_unsolicited(answer: &HashMap<String, String>, why: &str, case: &str) {
    assert_eq!(answer.get("error").map(String::as_str), Some("access_denied"), "{case}: {answer:?}");
    let description = answer.get("error_description").cloned().unwrap_or_default();
    assert!(description.contains(why), "{case}: {description:?} should say {why:?}");
    assert!(!answer.contains_key("code"), "{case}: {answer:?}");
}

#[tokio::test]
async fn a_federated_logout_sends_a_signed_logout_request_and_returns_through_the_callback() {
    let test = "a_federated_logout_sends_a_signed_logout_request_and_returns_through_the_callback";
    let Some(idp) = SamlIdp::shared(test) else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-slo";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    const BYE: &str = "https://app.example.com/bye";
    admin.allow_logout_urls(t, &portal.client_id, &[BYE]).await.expect("logout URL");
    let (key, cert) = rsa_pair("postern-sp");
    let options = conn::SamlOptions {
        sign_out_url: idp.slo_url(),
        sign_request: true,
        request_signing_key: key,
        request_signing_certificate: cert,
        ..saml_options(idp)
    };
    let md = connect(idp, &suite, &mut admin, (t, &portal), CONNECTION, options, json!({})).await;
    let slo = format!("{}/{t}/logout/callback", base(&suite));
    let redirect = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
    assert!(md.contains(&format!("<md:SingleLogoutService Binding=\"{redirect}\" Location=\"{slo}\"/>")), "{md}");

    let mut agent = Agent::new();
    let (location, _) = start(idp, &suite, &mut agent, t, &portal, CONNECTION).await;
    let form = idp_form(&mut agent, &location).await;
    assert!(app_query(&agent.submit(&location, &form).await.expect("callback")).contains_key("code"));
    let before = idp.logouts().await.expect("logouts").len();

    // /v2/logout?federated: Postern's session ends, and a signed LogoutRequest for the
    // login's subject and session goes to the IdP by redirect.
    let mut logout = url::Url::parse(&format!("{}/{t}/v2/logout", base(&suite))).expect("url");
    logout
        .query_pairs_mut()
        .append_key_only("federated")
        .append_pair("client_id", &portal.client_id)
        .append_pair("returnTo", BYE)
        .append_pair("state", "bye-state");
    let out = agent.get(logout.as_str()).await.expect("logout");
    assert_eq!(out.status, 303, "{out:?}");
    let to = out.location().expect("to the IdP").to_owned();
    assert!(to.starts_with(&idp.slo_url()), "{to}");
    let q: HashMap<String, String> = url::Url::parse(&to).expect("url").query_pairs().into_owned().collect();
    assert_eq!(q["SigAlg"], "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256");
    assert!(!q["RelayState"].contains("bye"), "the relay state is sealed: {q:?}");
    // Tampered with, the request's signature no longer verifies at the IdP.
    assert_eq!(agent.get(&to.replace("RelayState=", "RelayState=x")).await.expect("IdP").status, 400);
    let answer = agent.get(&to).await.expect("IdP logout");
    assert_eq!(answer.status, 303, "{answer:?}");
    let back = answer.location().expect("back to Postern").to_owned();
    assert!(back.starts_with(&format!("{slo}?")) && back.contains("SAMLResponse="), "{back}");
    let logouts = idp.logouts().await.expect("logouts");
    let request = &logouts[before];
    assert_eq!(request["name_id"], "alice@fabrikam.example", "{request}");
    assert_eq!(request["signed"], true, "{request}");
    assert_eq!(request["destination"], idp.slo_url().as_str(), "{request}");
    assert!(request["session_index"].as_array().is_some_and(|i| i.len() == 1), "the login's session: {request}");

    // The IdP's answer at the logout callback sends the browser on to the application.
    let done = agent.get(&back).await.expect("logout callback");
    assert_eq!((done.status, done.location()), (303, Some(format!("{BYE}?state=bye-state").as_str())), "{done:?}");
    // An altered relay state goes nowhere but the logged-out page.
    let forged = agent.get(&format!("{slo}?RelayState=AAAA{}", &q["RelayState"][4..])).await.expect("forged");
    assert_eq!((forged.status, forged.location()), (200, None), "{forged:?}");
    // An IdP's own LogoutRequest ends nothing here, and says so.
    let unsolicited = agent.get(&format!("{slo}?SAMLRequest=x&RelayState=y")).await.expect("IdP-initiated");
    assert!((400..500).contains(&unsolicited.status) && unsolicited.body.contains("not supported"), "{unsolicited:?}");
    suite.stop().await.expect("stop");
}
