//! The directory connectors (`ldap`, `ad`) against a real OpenLDAP `slapd` (the test kit's,
//! with TLS from a test CA and an Active Directory shaped schema): logins over gRPC and
//! through the hosted page (directly and by home realm discovery), wrong, empty and unknown
//! credentials, LDAP injection in the username, nested groups and their loops, Active
//! Directory's disabled, locked, expired accounts, a directory that is down, StartTLS with a
//! CA that did not issue the directory's certificate, plaintext refused unless allowed, and
//! TestConnection's steps.

use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::slapd::{self, Slapd};
use postern_testkit::web::Agent;
use postern_testkit::{Clients, Suite, reason};
use tonic::Code;

const CALLBACK: &str = "https://timesheets.fabrikam.example/callback";

/// Options of a directory connection to `dir` over StartTLS trusting its CA.
fn options(dir: &Slapd) -> conn::LdapOptions {
    conn::LdapOptions {
        url: dir.ldap_url.clone(),
        start_tls: true,
        bind_dn: slapd::SERVICE_DN.into(),
        bind_password: slapd::SERVICE_PASSWORD.into(),
        base_dn: slapd::PEOPLE.into(),
        ca_certificates: dir.ca_pem.clone(),
        ..Default::default()
    }
}

/// Creates connection `name` of `strategy` and enables it for `client_id`.
async fn connection(
    admin: &mut Clients,
    t: &str,
    client_id: &str,
    name: &str,
    strategy: &str,
    o: conn::LdapOptions,
    domains: &[&str],
) {
    let c = conn::Connection {
        name: name.into(),
        strategy: strategy.into(),
        domain_aliases: domains.iter().map(|d| (*d).to_owned()).collect(),
        options: Some(conn::connection::Options::Ldap(o)),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: t.into(), connection: Some(c) })
        .await
        .expect("create connection");
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: t.into(),
            connection: name.into(),
            client_id: client_id.into(),
        })
        .await
        .expect("enable");
}

async fn setup(suite: &Suite, t: &str) -> (Clients, tenant::Client) {
    let mut admin = suite.admin().await;
    admin.create_tenant(t).await.expect("tenant");
    let c = tenant::Client {
        name: "Fabrikam Employee Timesheets".into(),
        app_type: tenant::AppType::RegularWeb as i32,
        callbacks: vec![CALLBACK.into()],
        ..Default::default()
    };
    let client = admin
        .clients
        .create_client(tenant::CreateClientRequest { tenant: t.into(), client: Some(c) })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client");
    (admin, client)
}

fn login(t: &str, client: &tenant::Client, connection: &str, username: &str, password: &str) -> authn::LoginRequest {
    authn::LoginRequest {
        tenant: t.into(),
        client_id: client.client_id.clone(),
        client_secret: client.client_secret.clone(),
        connection: connection.into(),
        username: username.into(),
        password: password.into(),
        ip: "198.51.100.7".into(),
        ..Default::default()
    }
}

fn groups_of(user: &authn::User) -> Vec<String> {
    let data = user.identities[0].profile_data.as_ref().expect("profile data");
    let Some(prost_types::value::Kind::ListValue(list)) = data.fields.get("groups").and_then(|v| v.kind.clone()) else {
        return Vec::new();
    };
    list.values
        .iter()
        .filter_map(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// The claims of a JWT, unverified (its signature is checked by the provider's tests).
fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64"))
        .expect("json")
}

#[tokio::test]
async fn ldap_logins_groups_and_injection() {
    let Some(dir) = Slapd::shared("ldap_logins_groups_and_injection") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-ldap";
    let (mut admin, client) = setup(&suite, t).await;
    let mut o = options(dir);
    o.groups = Some(conn::LdapGroups { enabled: true, base_dn: slapd::GROUPS.into(), ..Default::default() });
    connection(&mut admin, t, &client.client_id, "corp", "ldap", o, &[]).await;

    let ok = admin.authn.login(login(t, &client, "corp", "alice", slapd::USER_PASSWORD)).await.expect("login");
    let ok = ok.into_inner();
    let user = ok.user.expect("user");
    assert_eq!(user.user_id, "ldap|corp|alice");
    assert_eq!(
        (user.email.as_str(), user.given_name.as_str(), user.family_name.as_str(), user.name.as_str()),
        ("alice@fabrikam.example", "Alice", "Anders", "Alice Anders")
    );
    assert!(!user.email_verified, "nobody proved the directory's address by mail");
    // Nested groups: engineering ⊂ staff ⊂ everyone; loop-a ⊂ loop-b ⊂ loop-a ends.
    assert_eq!(groups_of(&user), ["engineering", "everyone", "loop-a", "loop-b", "staff"]);
    let id = claims(&ok.id_token);
    assert_eq!(id["groups"], serde_json::json!(["engineering", "everyone", "loop-a", "loop-b", "staff"]), "{id}");
    // The second login finds the same user.
    let again = admin.authn.login(login(t, &client, "corp", "Alice", slapd::USER_PASSWORD)).await.expect("again");
    let again = again.into_inner().user.expect("user");
    assert_eq!((again.user_id.as_str(), again.logins_count), ("ldap|corp|alice", 2));
    // bob is in staff directly, hence in everyone.
    let bob = admin.authn.login(login(t, &client, "corp", "bob", slapd::USER_PASSWORD)).await.expect("bob");
    assert_eq!(groups_of(&bob.into_inner().user.expect("user")), ["everyone", "staff"]);

    let wrong = admin.authn.login(login(t, &client, "corp", "alice", "Directory-Pass-8")).await.expect_err("wrong");
    assert_eq!((wrong.code(), reason(&wrong).as_deref()), (Code::Unauthenticated, Some("INVALID_CREDENTIALS")));
    let unknown =
        admin.authn.login(login(t, &client, "corp", "mallory", slapd::USER_PASSWORD)).await.expect_err("unknown");
    assert_eq!((unknown.code(), unknown.message()), (wrong.code(), wrong.message()), "one answer for both");
    // An empty password would be an unauthenticated bind, which the directory accepts.
    let empty = admin.authn.login(login(t, &client, "corp", "alice", "")).await.expect_err("empty");
    assert_eq!(empty.code(), Code::Unauthenticated, "{empty:?}");

    // Injection: unescaped, `al*` would find alice and her password would log in as her.
    let star = admin.authn.login(login(t, &client, "corp", "al*", slapd::USER_PASSWORD)).await.expect_err("al*");
    assert_eq!(star.code(), Code::Unauthenticated, "{star:?}");
    let all = admin.authn.login(login(t, &client, "corp", "*", slapd::USER_PASSWORD)).await.expect_err("*");
    assert_eq!(all.code(), Code::Unauthenticated, "{all:?}");
    // Escaped, a name made of filter syntax finds only the entry of that very name.
    let trap = admin
        .authn
        .login(login(t, &client, "corp", "bob*)(uid=*", slapd::USER_PASSWORD))
        .await
        .expect("the literal name");
    assert_eq!(trap.into_inner().user.expect("user").user_id, "ldap|corp|bob*)(uid=*");

    // By name over LDAPS: the name resolved and checked once, the socket connected to the
    // address checked, the certificate checked against the name.
    let by_name =
        conn::LdapOptions { url: dir.ldaps_url.replace("127.0.0.1", "localhost"), start_tls: false, ..options(dir) };
    connection(&mut admin, t, &client.client_id, "corp-by-name", "ldap", by_name, &[]).await;
    let named =
        admin.authn.login(login(t, &client, "corp-by-name", "bob", slapd::USER_PASSWORD)).await.expect("by name");
    assert_eq!(named.into_inner().user.expect("user").user_id, "ldap|corp-by-name|bob");

    // A directory takes no signups and keeps its passwords.
    let signup = authn::SignupRequest {
        tenant: t.into(),
        client_id: client.client_id.clone(),
        connection: "corp".into(),
        email: "zed@fabrikam.example".into(),
        password: slapd::USER_PASSWORD.into(),
        ..Default::default()
    };
    let refused = admin.authn.signup(signup).await.expect_err("no signups");
    assert_eq!((refused.code(), reason(&refused).as_deref()), (Code::PermissionDenied, Some("SIGNUP_NOT_SUPPORTED")));

    // Brute-force protection applies: after 10 failures the right password is refused too.
    for _ in 0..10 {
        let e = admin.authn.login(login(t, &client, "corp", "bob", "nope-nope-1")).await.expect_err("wrong");
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let blocked = admin.authn.login(login(t, &client, "corp", "bob", slapd::USER_PASSWORD)).await.expect_err("block");
    assert_eq!(blocked.code(), Code::ResourceExhausted, "{blocked:?}");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn active_directory_rules_and_the_hosted_page() {
    let Some(dir) = Slapd::shared("active_directory_rules_and_the_hosted_page") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-ad";
    let (mut admin, client) = setup(&suite, t).await;
    // LDAPS this time. slapd has no in-chain matching rule, so the group filter names
    // direct membership (the default, `member:1.2.840.113556.1.4.1941:=`, needs a real AD).
    let mut o = options(dir);
    o.url = dir.ldaps_url.clone();
    o.start_tls = false;
    o.groups = Some(conn::LdapGroups {
        enabled: true,
        base_dn: slapd::GROUPS.into(),
        filter: "(&(objectClass=group)(member={dn}))".into(),
        ..Default::default()
    });
    connection(&mut admin, t, &client.client_id, "fabrikam-ad", "ad", o, &["fabrikam.example"]).await;

    let guid_id = format!("ad|fabrikam-ad|{}", slapd::CAROL_GUID);
    let by_sam = admin.authn.login(login(t, &client, "fabrikam-ad", "carol", slapd::USER_PASSWORD)).await;
    let user = by_sam.expect("sAMAccountName").into_inner().user.expect("user");
    assert_eq!((user.user_id.as_str(), user.name.as_str()), (guid_id.as_str(), "Carol Chen"));
    assert_eq!(groups_of(&user), ["Timesheet Users"]);
    let by_upn =
        admin.authn.login(login(t, &client, "fabrikam-ad", "carol@fabrikam.example", slapd::USER_PASSWORD)).await;
    let user = by_upn.expect("userPrincipalName").into_inner().user.expect("user");
    assert_eq!((user.user_id.as_str(), user.logins_count), (guid_id.as_str(), 2), "the same user by objectGUID");

    for (who, why) in [("dave", "ACCOUNT_DISABLED"), ("frank", "ACCOUNT_EXPIRED"), ("gina", "PASSWORD_EXPIRED")] {
        let e = admin
            .authn
            .login(login(t, &client, "fabrikam-ad", who, slapd::USER_PASSWORD))
            .await
            .expect_err("refused account");
        assert_eq!((e.code(), reason(&e).as_deref()), (Code::PermissionDenied, Some(why)), "{who}: {e:?}");
        assert!(e.message().contains("fabrikam-ad"), "{e:?}");
        // With a wrong password nothing about the account is revealed.
        let e = admin.authn.login(login(t, &client, "fabrikam-ad", who, "Wrong-Pass-1")).await.expect_err("wrong");
        assert_eq!(e.code(), Code::Unauthenticated, "{who}: {e:?}");
    }
    // A lock-out ends when the directory's policy says so, though `lockoutTime` stays set.
    for &(who, locked) in slapd::LOCKOUTS {
        let answer = admin.authn.login(login(t, &client, "fabrikam-ad", who, slapd::USER_PASSWORD)).await;
        match (answer, locked) {
            (Err(e), true) => {
                assert_eq!((e.code(), reason(&e).as_deref()), (Code::PermissionDenied, Some("ACCOUNT_LOCKED")), "{who}")
            }
            (Ok(_), false) => {}
            (answer, _) => panic!("{who}: locked now: {locked}, but the login answered {answer:?}"),
        }
    }

    // The hosted page: the connection's form, reached directly and by the email's domain.
    let base = format!("http://{}", suite.http);
    for (extra, username) in [(vec![("connection", "fabrikam-ad")], "carol"), (vec![], "carol@fabrikam.example")] {
        let mut agent = Agent::new();
        let mut url = url::Url::parse(&format!("{base}/{t}/authorize")).expect("url");
        url.query_pairs_mut()
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", CALLBACK)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid profile email")
            .append_pair("state", "s1")
            .extend_pairs(extra.iter());
        let start = agent.get(url.as_str()).await.expect("authorize");
        assert_eq!(start.status, 303, "{start:?}");
        let mut page_url = format!("{base}{}", start.location().expect("login page"));
        let mut page = agent.get(&page_url).await.expect("page");
        if extra.is_empty() {
            // Home realm discovery: the work email finds the directory.
            let hrd = page.forms().into_iter().find(|f| f.method == "get").expect("email box");
            let mut hrd = hrd.clone();
            hrd.set("email", "carol@fabrikam.example");
            let q = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(hrd.fields()).finish();
            page_url = format!("{base}/{t}/login?{q}");
            page = agent.get(&page_url).await.expect("discovered");
            assert!(page.body.contains("logs in with fabrikam-ad"), "{}", page.body);
        }
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains(">Username<"), "a directory asks for its username: {}", page.body);
        let mut form =
            page.forms().into_iter().find(|f| f.action.ends_with("/login") && f.method == "post").expect("login form");
        assert_eq!(form.value("connection"), Some("fabrikam-ad"));
        form.set("username", username).set("password", "Wrong-Pass-1");
        let wrong = agent.submit(&page_url, &form).await.expect("submit");
        assert_eq!(wrong.status, 401, "{}", wrong.body);
        form.set("password", slapd::USER_PASSWORD);
        let done = agent.submit(&page_url, &form).await.expect("submit");
        assert_eq!(done.status, 303, "{}", done.body);
        let location = done.location().expect("callback");
        assert!(location.starts_with(CALLBACK) && location.contains("code="), "{location}");
    }
    suite.stop().await.expect("stop");
}

fn step<'a>(r: &'a authn::TestConnectionResponse, name: &str) -> &'a authn::TestConnectionStep {
    r.steps.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no step {name}: {r:?}"))
}

#[tokio::test]
async fn failures_and_test_connection() {
    let Some(dir) = Slapd::shared("failures_and_test_connection") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-failures";
    let (mut admin, client) = setup(&suite, t).await;
    // Nothing listens on the discard port (a port found free and let go could be taken by
    // another test's server before the login tries it).
    let down = "ldap://127.0.0.1:9".to_owned();
    let cases: Vec<(&str, conn::LdapOptions)> = vec![
        ("good", options(dir)),
        ("down", conn::LdapOptions { url: down, ..options(dir) }),
        ("wrong-ca", conn::LdapOptions { ca_certificates: dir.other_ca_pem.clone(), ..options(dir) }),
        ("wrong-bind", conn::LdapOptions { bind_password: "not-the-password".into(), ..options(dir) }),
        ("no-base", conn::LdapOptions { base_dn: "ou=nobody,dc=fabrikam,dc=example".into(), ..options(dir) }),
        ("plaintext", conn::LdapOptions { start_tls: false, ..options(dir) }),
        ("plaintext-allowed", conn::LdapOptions { start_tls: false, allow_plaintext: true, ..options(dir) }),
    ];
    for (name, o) in cases {
        connection(&mut admin, t, &client.client_id, name, "ldap", o, &[]).await;
    }
    let try_login = |name: &str| login(t, &client, name, "alice", slapd::USER_PASSWORD);

    admin.authn.login(try_login("good")).await.expect("good");
    admin.authn.login(try_login("plaintext-allowed")).await.expect("plaintext allowed by the connection");
    for (name, code, why) in [
        ("down", Code::Unavailable, "DIRECTORY_UNAVAILABLE"),
        ("wrong-ca", Code::Unavailable, "DIRECTORY_TLS_FAILED"),
        ("wrong-bind", Code::FailedPrecondition, "DIRECTORY_SERVICE_BIND_REFUSED"),
        ("plaintext", Code::FailedPrecondition, "DIRECTORY_PLAINTEXT_NOT_ALLOWED"),
        ("no-base", Code::Unauthenticated, "INVALID_CREDENTIALS"),
    ] {
        let e = admin.authn.login(try_login(name)).await.expect_err(name);
        assert_eq!((e.code(), reason(&e).as_deref()), (code, Some(why)), "{name}: {e:?}");
        if code != Code::Unauthenticated {
            assert!(e.message().contains(&format!("{name:?}")), "names the connection: {e:?}");
        }
    }

    let test = |connection: &str| authn::TestConnectionRequest { tenant: t.into(), connection: connection.into() };
    let good = admin.authn.test_connection(test("good")).await.expect("test").into_inner();
    assert!(good.ok, "{good:?}");
    assert_eq!(good.strategy, "ldap");
    let names: Vec<&str> = good.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["transport", "connect", "start_tls", "service_bind", "search"]);
    assert!(good.steps.iter().all(|s| s.ok));

    let failing = [
        ("down", "connect"),
        ("wrong-ca", "start_tls"),
        ("wrong-bind", "service_bind"),
        ("no-base", "search"),
        ("plaintext", "transport"),
    ];
    for (name, failed) in failing {
        let r = admin.authn.test_connection(test(name)).await.expect("test").into_inner();
        assert!(!r.ok, "{name}: {r:?}");
        let last = r.steps.last().expect("steps");
        assert_eq!((last.name.as_str(), last.ok), (failed, false), "{name}: {r:?}");
        assert!(!last.detail.is_empty());
        let text = format!("{r:?}");
        assert!(!text.contains(slapd::SERVICE_PASSWORD) && !text.contains("not-the-password"), "{text}");
    }
    let plain = admin.authn.test_connection(test("plaintext-allowed")).await.expect("test").into_inner();
    assert!(plain.ok && step(&plain, "transport").detail.contains("clear text"), "{plain:?}");
    assert_eq!(step(&plain, "ldap").name, "ldap");

    // A database connection has nothing to reach; a strategy that cannot be tested (yet) says
    // so; a connection that does not exist is not found.
    admin.create_database_connection(t, "users", &client.client_id).await.expect("database connection");
    let db = admin.authn.test_connection(test("users")).await.expect("database").into_inner();
    assert!(db.ok && db.steps[0].name == "store", "{db:?}");
    let github = conn::Connection {
        name: "github".into(),
        strategy: "github".into(),
        options: Some(conn::connection::Options::Oauth2(conn::OAuth2Options {
            client_id: "gh".into(),
            client_secret: "gh-secret".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: t.into(), connection: Some(github) })
        .await
        .expect("github");
    match admin.authn.test_connection(test("github")).await {
        // Once the social connectors can test their connections, an answer is fine too.
        Ok(r) => assert!(!format!("{r:?}").contains("gh-secret"), "{r:?}"),
        Err(e) => {
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            let why = reason(&e).unwrap_or_default();
            assert!(["TEST_NOT_SUPPORTED", "STRATEGY_NOT_SUPPORTED"].contains(&why.as_str()), "{e:?}");
        }
    }
    let e = admin.authn.test_connection(test("nowhere")).await.expect_err("no such connection");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = admin.authn.test_connection(test("")).await.expect_err("no name");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    suite.stop().await.expect("stop");
}
