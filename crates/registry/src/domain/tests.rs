//! The table of good and bad connections for every strategy, and the update rules.

use std::collections::HashMap;

use pb::connection::Options as O;
use postern_proto::connections::v1 as pb;

use super::secret::names;
use super::*;

fn cert() -> String {
    format!("-----BEGIN CERTIFICATE-----\nMII{}\n-----END CERTIFICATE-----\n", "A".repeat(61))
}

/// A real CA certificate (self-signed, EC P-256), for fields that parse X.509.
fn test_ca() -> String {
    include_str!("test-ca.pem").to_owned()
}

/// A real EC P-256 private key (PKCS#8), for fields that parse keys; a test fixture only.
fn assertion_key() -> String {
    include_str!("test-assertion-key.pem").to_owned()
}

fn private_key() -> String {
    format!("-----BEGIN PRIVATE KEY-----\nMII{}\n-----END PRIVATE KEY-----\n", "A".repeat(61))
}

/// A connection of `strategy` that creation accepts.
fn good(strategy: &str) -> pb::Connection {
    let oauth2 =
        || pb::OAuth2Options { client_id: "cid".into(), client_secret: "csecret".into(), ..Default::default() };
    let options = match strategy {
        "auth0" => None,
        "google-oauth2" | "facebook" | "linkedin" | "github" | "windowslive" => Some(O::Oauth2(oauth2())),
        "apple" => Some(O::Oauth2(pb::OAuth2Options {
            client_secret: private_key(),
            apple_team_id: "TEAM123456".into(),
            apple_key_id: "KEY1234567".into(),
            ..oauth2()
        })),
        "oauth2" => Some(O::Oauth2(pb::OAuth2Options {
            authorization_endpoint: "https://idp.example/authorize".into(),
            token_endpoint: "https://idp.example/token".into(),
            userinfo_endpoint: "https://idp.example/userinfo".into(),
            ..oauth2()
        })),
        "ad" | "ldap" => Some(O::Ldap(pb::LdapOptions {
            url: "ldaps://dc1.fabrikam.example".into(),
            bind_dn: "CN=postern,OU=Service,DC=fabrikam,DC=example".into(),
            bind_password: "bindpw".into(),
            base_dn: "OU=People,DC=fabrikam,DC=example".into(),
            ..Default::default()
        })),
        "google-apps" => Some(O::GoogleApps(pb::GoogleAppsOptions {
            domain: "fabrikam.example".into(),
            client_id: "gid".into(),
            client_secret: "gsecret".into(),
            ..Default::default()
        })),
        "oidc" => Some(O::Oidc(pb::OidcOptions {
            issuer: "https://login.fabrikam.example".into(),
            client_id: "oid".into(),
            client_secret: "osecret".into(),
            ..Default::default()
        })),
        "samlp" => Some(O::Saml(pb::SamlOptions {
            sign_in_url: "https://idp.fabrikam.example/sso".into(),
            signing_certificates: vec![cert()],
            ..Default::default()
        })),
        "waad" => Some(O::AzureAd(pb::AzureAdOptions {
            domain: "fabrikam.onmicrosoft.com".into(),
            client_id: "7f9c1a2b-0000-4c3d-9e8f-123456789abc".into(),
            client_secret: "asecret".into(),
            ..Default::default()
        })),
        "email" => Some(O::Email(pb::EmailOptions {
            from: "Fabrikam <no-reply@fabrikam.example>".into(),
            smtp_host: "smtp.fabrikam.example".into(),
            ..Default::default()
        })),
        "sms" => Some(O::Sms(pb::SmsOptions {
            from: "+15551234567".into(),
            provider_url: "https://api.twilio.com/2010-04-01".into(),
            account: "AC123".into(),
            token: "smstoken".into(),
            ..Default::default()
        })),
        other => panic!("no fixture for {other}"),
    };
    pb::Connection { name: format!("my-{strategy}"), strategy: strategy.into(), options, ..Default::default() }
}

/// Checks creation of `connection`: `None` expects success, `Some(field)` a violation of
/// exactly that field path (among possibly others).
#[track_caller]
fn check(connection: pb::Connection, expected: Option<&str>) {
    let result = NewConnection::try_from(connection);
    match (expected, result) {
        (None, Ok(_)) => {}
        (None, Err(v)) => panic!("expected success, got {v:?}"),
        (Some(field), Ok(c)) => panic!("expected a violation of {field}, got success: {c:?}"),
        (Some(field), Err(v)) => {
            let fields: Vec<&str> = v.as_slice().iter().map(|x| x.field.as_str()).collect();
            assert!(fields.contains(&field), "expected a violation of {field}, got {v:?}");
            for x in v.as_slice() {
                assert!(!x.description.is_empty());
            }
        }
    }
}

fn opts(c: &mut pb::Connection) -> &mut O {
    c.options.as_mut().expect("fixture has options")
}

macro_rules! family {
    ($fn:ident, $variant:ident, $ty:ty) => {
        fn $fn(c: &mut pb::Connection) -> &mut $ty {
            match opts(c) {
                O::$variant(o) => o,
                _ => panic!("fixture of another family"),
            }
        }
    };
}
family!(oauth2, Oauth2, pb::OAuth2Options);
family!(ldap, Ldap, pb::LdapOptions);
family!(gapps, GoogleApps, pb::GoogleAppsOptions);
family!(oidc, Oidc, pb::OidcOptions);
family!(saml, Saml, pb::SamlOptions);
family!(azure, AzureAd, pb::AzureAdOptions);
family!(email, Email, pb::EmailOptions);
family!(sms, Sms, pb::SmsOptions);

fn db(c: &mut pb::Connection) -> &mut pb::DatabaseOptions {
    let o = c.options.get_or_insert_with(|| O::Database(Default::default()));
    match o {
        O::Database(d) => d,
        _ => panic!("fixture of another family"),
    }
}

type Mutation = fn(&mut pb::Connection);

#[test]
fn every_strategy_has_a_good_fixture() {
    for s in Strategy::ALL {
        check(good(s.as_str()), None);
    }
}

#[test]
fn good_variants() {
    let cases: &[(&str, Mutation)] = &[
        ("auth0", |c| {
            let d = db(c);
            d.requires_username = true;
            d.username_min_length = 3;
            d.username_max_length = 20;
            d.password_policy = pb::PasswordPolicy::Excellent as i32;
            d.password_min_length = 12;
            d.password_history_size = 24;
            d.password_dictionary = Some(pb::PasswordDictionary { enable: true, words: vec!["fabrikam".into()] });
            d.custom_database = Some(pb::CustomDatabase {
                endpoint: "http://customdb.internal:50051".into(),
                import_mode: pb::ImportMode::Lazy as i32,
                timeout_seconds: 5,
                token: "t".into(),
                token_set: false,
                ca_certificate: String::new(),
            });
        }),
        ("auth0", |c| {
            db(c).custom_database = Some(pb::CustomDatabase {
                endpoint: "https://customdb.internal:50051".into(),
                ca_certificate: test_ca(),
                ..Default::default()
            });
        }),
        ("github", |c| oauth2(c).scopes = vec!["repo".into(), "read:org".into()]),
        ("ldap", |c| {
            let l = ldap(c);
            l.url = "ldap://127.0.0.1:389".into();
            l.start_tls = true;
            l.user_filter = "(&(objectClass=inetOrgPerson)(mail={username}))".into();
            l.attributes = Some(pb::LdapAttributeMapping { email: "userPrincipalName".into(), ..Default::default() });
            l.ca_certificates = cert();
        }),
        ("oidc", |c| {
            let o = oidc(c);
            o.issuer.clear();
            o.discovery_url = "https://login.fabrikam.example/custom/.well-known/openid-configuration".into();
        }),
        ("oidc", |c| {
            let o = oidc(c);
            o.client_secret.clear();
            o.channel = pb::OidcChannel::Front as i32;
        }),
        ("samlp", |c| {
            let s = saml(c);
            s.sign_request = true;
            s.request_signing_key = private_key();
            s.signing_certificates = vec![format!("{}{}", cert(), cert())];
            s.signature_algorithm = pb::SamlSignatureAlgorithm::RsaSha512 as i32;
            s.binding = pb::SamlBinding::HttpPost as i32;
        }),
        ("oidc", |c| {
            let o = oidc(c);
            o.client_secret.clear();
            o.client_auth = pb::OidcClientAuth::PrivateKeyJwt as i32;
            o.client_assertion_key = assertion_key();
            o.client_assertion_key_id = "postern-1".into();
        }),
        ("samlp", |c| {
            // The metadata document names the sign-in URL and holds the certificates.
            let s = saml(c);
            s.metadata_url = "https://idp.fabrikam.example/metadata".into();
            s.sign_in_url.clear();
            s.signing_certificates.clear();
        }),
        ("waad", |c| azure(c).tenant_id = "11111111-2222-3333-4444-555555555555".into()),
        ("email", |c| {
            let e = email(c);
            e.smtp_username = "mailer".into();
            e.smtp_password = "pw".into();
            e.smtp_tls = pb::SmtpTls::Implicit as i32;
            e.magic_link = true;
            e.code_length = 8;
        }),
        ("sms", |c| sms(c).from = "Fabrikam".into()),
        ("google-apps", |c| c.domain_aliases = vec!["Fabrikam.Example".into(), "fabrikam.test".into()]),
        ("oidc", |c| {
            oidc(c).upstream_params = upstream(&[("prompt", alias("prompt")), ("kc_idp_hint", value("corp"))])
        }),
        ("github", |c| oauth2(c).upstream_params = upstream(&[("allow_signup", value("false"))])),
        ("google-apps", |c| gapps(c).upstream_params = upstream(&[("hd", value("fabrikam.example"))])),
        ("waad", |c| azure(c).upstream_params = upstream(&[("domain_hint", alias("login_hint"))])),
    ];
    for (strategy, mutate) in cases {
        let mut c = good(strategy);
        mutate(&mut c);
        check(c, None);
    }
}

fn upstream(entries: &[(&str, pb::UpstreamParam)]) -> HashMap<String, pb::UpstreamParam> {
    entries.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn value(v: &str) -> pb::UpstreamParam {
    pb::UpstreamParam { source: Some(pb::upstream_param::Source::Value(v.into())) }
}

fn alias(a: &str) -> pb::UpstreamParam {
    pb::UpstreamParam { source: Some(pb::upstream_param::Source::Alias(a.into())) }
}

#[test]
fn upstream_params_are_kept_read_back_and_replaced_by_an_update() {
    let mut c = good("oidc");
    oidc(&mut c).upstream_params = upstream(&[("prompt", alias("prompt")), ("ui_locales", value("fr-CA"))]);
    let new = NewConnection::try_from(c).expect("valid");
    let Options::Oidc(o) = &new.spec.options else { panic!() };
    assert_eq!(o.upstream_params.len(), 2);
    let back: ConnectionSpec = serde_json::from_str(&serde_json::to_string(&new.spec).unwrap()).unwrap();
    assert_eq!(back, new.spec, "stored and read back");
    let read = new.spec.options.to_proto(&new.secrets, false);
    let O::Oidc(read) = read else { panic!() };
    assert_eq!(read.upstream_params["prompt"], alias("prompt"));
    assert_eq!(read.upstream_params["ui_locales"], value("fr-CA"));
    let request = std::collections::BTreeMap::from([("prompt".to_owned(), "login".to_owned())]);
    assert_eq!(
        postern_connection::options::resolve_upstream_params(&o.upstream_params, &request),
        [("prompt".to_owned(), "login".to_owned()), ("ui_locales".to_owned(), "fr-CA".to_owned())]
    );
    assert_eq!(
        postern_connection::options::resolve_upstream_params(&o.upstream_params, &Default::default()),
        [("ui_locales".to_owned(), "fr-CA".to_owned())],
        "an alias the application left empty sends nothing"
    );

    // An update naming the field replaces the whole map; one that does not keeps it.
    let (current, secrets) = stored("oidc");
    let patch = pb::Connection {
        options: Some(O::Oidc(pb::OidcOptions {
            upstream_params: upstream(&[("acr_values", alias("acr_values"))]),
            ..Default::default()
        })),
        ..Default::default()
    };
    let u = apply_update(&current, &secrets, patch, &["options.oidc.upstream_params".to_owned()]).expect("update");
    let Options::Oidc(o) = &u.spec.options else { panic!() };
    assert_eq!(o.upstream_params.keys().collect::<Vec<_>>(), ["acr_values"]);
    let patch = pb::Connection { display_name: "Corp".into(), ..Default::default() };
    let kept = Connection { spec: u.spec.clone(), ..current };
    let u = apply_update(&kept, &u.secrets, patch, &["display_name".to_owned()]).expect("update");
    let Options::Oidc(o) = &u.spec.options else { panic!() };
    assert_eq!(o.upstream_params.len(), 1, "kept by an update of another field");
}

#[test]
fn bad_variants_name_their_field() {
    let cases: &[(&str, Mutation, &str)] = &[
        // Connection fields.
        ("auth0", |c| c.name = "bad_name".into(), "connection.name"),
        ("auth0", |c| c.name = String::new(), "connection.name"),
        ("auth0", |c| c.name = "a".repeat(129), "connection.name"),
        ("auth0", |c| c.display_name = "a\u{7}b".into(), "connection.display_name"),
        ("auth0", |c| c.strategy = "saml".into(), "connection.strategy"),
        ("auth0", |c| c.strategy = String::new(), "connection.strategy"),
        ("auth0", |c| c.user_profile_sync = 9, "connection.user_profile_sync"),
        ("auth0", |c| c.domain_aliases = vec!["fabrikam.example".into()], "connection.domain_aliases"),
        ("ad", |c| c.domain_aliases = vec!["not a domain".into()], "connection.domain_aliases[0]"),
        ("ad", |c| c.domain_aliases = vec!["a.example".into(), "A.example".into()], "connection.domain_aliases[1]"),
        ("auth0", |c| c.metadata = (0..11).map(|i| (format!("k{i}"), String::new())).collect(), "connection.metadata"),
        ("auth0", |c| c.metadata = HashMap::from([("k".into(), "v".repeat(256))]), "connection.metadata[\"k\"]"),
        ("auth0", |c| c.metadata = HashMap::from([(String::new(), "v".into())]), "connection.metadata[\"\"]"),
        // Options that do not fit the strategy.
        ("auth0", |c| c.options = Some(O::Ldap(Default::default())), "connection.options"),
        ("facebook", |c| c.options = Some(O::Database(Default::default())), "connection.options"),
        ("ldap", |c| c.options = Some(O::Saml(Default::default())), "connection.options"),
        // database
        ("auth0", |c| db(c).username_min_length = 200, "connection.options.database.username_min_length"),
        ("auth0", |c| db(c).username_max_length = -1, "connection.options.database.username_max_length"),
        (
            "auth0",
            |c| {
                db(c).username_min_length = 10;
                db(c).username_max_length = 5;
            },
            "connection.options.database.username_max_length",
        ),
        ("auth0", |c| db(c).password_policy = 42, "connection.options.database.password_policy"),
        ("auth0", |c| db(c).password_min_length = 4, "connection.options.database.password_min_length"),
        ("auth0", |c| db(c).password_min_length = 129, "connection.options.database.password_min_length"),
        ("auth0", |c| db(c).password_history_size = 25, "connection.options.database.password_history_size"),
        (
            "auth0",
            |c| db(c).password_dictionary = Some(pb::PasswordDictionary { enable: true, words: vec![String::new()] }),
            "connection.options.database.password_dictionary.words[0]",
        ),
        (
            "auth0",
            |c| db(c).password_dictionary = Some(pb::PasswordDictionary { enable: true, words: vec!["w".into(); 201] }),
            "connection.options.database.password_dictionary.words",
        ),
        (
            "auth0",
            |c| db(c).custom_database = Some(Default::default()),
            "connection.options.database.custom_database.endpoint",
        ),
        (
            "auth0",
            |c| db(c).custom_database = Some(pb::CustomDatabase { endpoint: "grpc://x".into(), ..Default::default() }),
            "connection.options.database.custom_database.endpoint",
        ),
        (
            "auth0",
            |c| {
                db(c).custom_database =
                    Some(pb::CustomDatabase { endpoint: "http://x".into(), timeout_seconds: 61, ..Default::default() })
            },
            "connection.options.database.custom_database.timeout_seconds",
        ),
        (
            "auth0",
            |c| {
                db(c).custom_database =
                    Some(pb::CustomDatabase { endpoint: "http://x".into(), import_mode: 7, ..Default::default() })
            },
            "connection.options.database.custom_database.import_mode",
        ),
        (
            "auth0",
            |c| {
                db(c).custom_database = Some(pb::CustomDatabase {
                    endpoint: "https://x".into(),
                    ca_certificate: "not a certificate".into(),
                    ..Default::default()
                })
            },
            "connection.options.database.custom_database.ca_certificate",
        ),
        (
            "auth0",
            // PEM of the right shape whose body is not X.509.
            |c| {
                db(c).custom_database = Some(pb::CustomDatabase {
                    endpoint: "https://x".into(),
                    ca_certificate: cert(),
                    ..Default::default()
                })
            },
            "connection.options.database.custom_database.ca_certificate",
        ),
        (
            "auth0",
            |c| {
                db(c).custom_database = Some(pb::CustomDatabase {
                    endpoint: "http://x".into(),
                    ca_certificate: test_ca(),
                    ..Default::default()
                })
            },
            "connection.options.database.custom_database.ca_certificate",
        ),
        // oauth2 (social and generic)
        ("google-oauth2", |c| c.options = None, "connection.options.oauth2.client_id"),
        ("facebook", |c| oauth2(c).client_id.clear(), "connection.options.oauth2.client_id"),
        ("linkedin", |c| oauth2(c).client_id = "a b".into(), "connection.options.oauth2.client_id"),
        ("github", |c| oauth2(c).client_secret.clear(), "connection.options.oauth2.client_secret"),
        ("apple", |c| oauth2(c).scopes = vec!["has space".into()], "connection.options.oauth2.scopes[0]"),
        ("apple", |c| oauth2(c).apple_team_id = String::new(), "connection.options.oauth2.apple_team_id"),
        ("apple", |c| oauth2(c).apple_key_id = "short".into(), "connection.options.oauth2.apple_key_id"),
        ("apple", |c| oauth2(c).client_secret = "not a key".into(), "connection.options.oauth2.client_secret"),
        ("github", |c| oauth2(c).apple_team_id = "TEAM123456".into(), "connection.options.oauth2.apple_team_id"),
        ("oidc", |c| oidc(c).jwks_uri = "ftp://x".into(), "connection.options.oidc.jwks_uri"),
        (
            "waad",
            |c| azure(c).allowed_tenant_ids = vec!["nope".into()],
            "connection.options.azure_ad.allowed_tenant_ids[0]",
        ),
        ("windowslive", |c| oauth2(c).scopes = vec!["s".into(); 51], "connection.options.oauth2.scopes"),
        (
            "google-oauth2",
            |c| oauth2(c).token_endpoint = "not a url".into(),
            "connection.options.oauth2.token_endpoint",
        ),
        ("oauth2", |c| oauth2(c).authorization_endpoint.clear(), "connection.options.oauth2.authorization_endpoint"),
        ("oauth2", |c| oauth2(c).token_endpoint.clear(), "connection.options.oauth2.token_endpoint"),
        ("oauth2", |c| oauth2(c).userinfo_endpoint.clear(), "connection.options.oauth2.userinfo_endpoint"),
        (
            "oauth2",
            |c| oauth2(c).userinfo_endpoint = "ftp://idp.example/u".into(),
            "connection.options.oauth2.userinfo_endpoint",
        ),
        // ldap and ad
        ("ldap", |c| ldap(c).url.clear(), "connection.options.ldap.url"),
        ("ldap", |c| ldap(c).url = "https://dc1".into(), "connection.options.ldap.url"),
        ("ad", |c| ldap(c).start_tls = true, "connection.options.ldap.start_tls"),
        ("ad", |c| ldap(c).bind_dn.clear(), "connection.options.ldap.bind_dn"),
        ("ad", |c| ldap(c).bind_password.clear(), "connection.options.ldap.bind_password"),
        ("ldap", |c| ldap(c).base_dn = "people".into(), "connection.options.ldap.base_dn"),
        ("ldap", |c| ldap(c).user_filter = "(uid=admin)".into(), "connection.options.ldap.user_filter"),
        ("ad", |c| ldap(c).user_filter = "(uid={username}".into(), "connection.options.ldap.user_filter"),
        (
            "ldap",
            |c| ldap(c).attributes = Some(pb::LdapAttributeMapping { email: "e mail".into(), ..Default::default() }),
            "connection.options.ldap.attributes.email",
        ),
        ("ldap", |c| ldap(c).timeout_seconds = 61, "connection.options.ldap.timeout_seconds"),
        ("ldap", |c| ldap(c).ca_certificates = "junk".into(), "connection.options.ldap.ca_certificates"),
        // google-apps
        ("google-apps", |c| gapps(c).domain.clear(), "connection.options.google_apps.domain"),
        ("google-apps", |c| gapps(c).domain = "fabrikam".into(), "connection.options.google_apps.domain"),
        ("google-apps", |c| gapps(c).client_id.clear(), "connection.options.google_apps.client_id"),
        ("google-apps", |c| gapps(c).client_secret.clear(), "connection.options.google_apps.client_secret"),
        (
            "google-apps",
            |c| gapps(c).allowed_domains = vec!["x".into()],
            "connection.options.google_apps.allowed_domains[0]",
        ),
        // oidc
        (
            "oidc",
            |c| {
                oidc(c).issuer.clear();
            },
            "connection.options.oidc.issuer",
        ),
        ("oidc", |c| oidc(c).issuer = "login.fabrikam.example".into(), "connection.options.oidc.issuer"),
        ("oidc", |c| oidc(c).discovery_url = "nope".into(), "connection.options.oidc.discovery_url"),
        ("oidc", |c| oidc(c).client_id.clear(), "connection.options.oidc.client_id"),
        ("oidc", |c| oidc(c).client_secret.clear(), "connection.options.oidc.client_secret"),
        ("oidc", |c| oidc(c).channel = 3, "connection.options.oidc.channel"),
        ("oidc", |c| oidc(c).client_auth = 7, "connection.options.oidc.client_auth"),
        (
            "oidc",
            |c| oidc(c).client_auth = pb::OidcClientAuth::PrivateKeyJwt as i32,
            "connection.options.oidc.client_assertion_key",
        ),
        (
            "oidc",
            |c| {
                oidc(c).client_auth = pb::OidcClientAuth::PrivateKeyJwt as i32;
                oidc(c).client_assertion_key = private_key();
            },
            "connection.options.oidc.client_assertion_key",
        ),
        (
            "oidc",
            |c| {
                oidc(c).client_secret.clear();
                oidc(c).channel = pb::OidcChannel::Front as i32;
                oidc(c).client_auth = pb::OidcClientAuth::PrivateKeyJwt as i32;
                oidc(c).client_assertion_key = assertion_key();
            },
            "connection.options.oidc.client_auth",
        ),
        (
            "oidc",
            |c| {
                oidc(c).channel = pb::OidcChannel::Front as i32;
                oidc(c).fetch_userinfo = true;
            },
            "connection.options.oidc.fetch_userinfo",
        ),
        // samlp
        ("samlp", |c| saml(c).sign_in_url.clear(), "connection.options.saml.sign_in_url"),
        ("samlp", |c| saml(c).sign_out_url = "x".into(), "connection.options.saml.sign_out_url"),
        ("samlp", |c| saml(c).metadata_url = "ftp://idp/metadata".into(), "connection.options.saml.metadata_url"),
        ("samlp", |c| saml(c).signing_certificates.clear(), "connection.options.saml.signing_certificates"),
        (
            "samlp",
            |c| saml(c).signing_certificates = vec!["MIIC...".into()],
            "connection.options.saml.signing_certificates[0]",
        ),
        ("samlp", |c| saml(c).signing_certificates = vec![cert(); 6], "connection.options.saml.signing_certificates"),
        ("samlp", |c| saml(c).sign_request = true, "connection.options.saml.request_signing_key"),
        ("samlp", |c| saml(c).request_signing_key = "not a key".into(), "connection.options.saml.request_signing_key"),
        ("samlp", |c| saml(c).signature_algorithm = 99, "connection.options.saml.signature_algorithm"),
        ("samlp", |c| saml(c).binding = 5, "connection.options.saml.binding"),
        // waad
        ("waad", |c| azure(c).domain.clear(), "connection.options.azure_ad.domain"),
        ("waad", |c| azure(c).client_id = "not-a-guid".into(), "connection.options.azure_ad.client_id"),
        ("waad", |c| azure(c).tenant_id = "fabrikam".into(), "connection.options.azure_ad.tenant_id"),
        ("waad", |c| azure(c).client_secret.clear(), "connection.options.azure_ad.client_secret"),
        // email
        ("email", |c| email(c).from.clear(), "connection.options.email.from"),
        ("email", |c| email(c).from = "no-reply".into(), "connection.options.email.from"),
        ("email", |c| email(c).subject = "a".repeat(256), "connection.options.email.subject"),
        ("email", |c| email(c).code_template = "Your code".into(), "connection.options.email.code_template"),
        ("email", |c| email(c).link_template = "Click {{code}}".into(), "connection.options.email.link_template"),
        ("email", |c| email(c).code_length = 3, "connection.options.email.code_length"),
        ("email", |c| email(c).code_lifetime_seconds = 86_401, "connection.options.email.code_lifetime_seconds"),
        ("email", |c| email(c).max_attempts = 11, "connection.options.email.max_attempts"),
        ("email", |c| email(c).smtp_host.clear(), "connection.options.email.smtp_host"),
        ("email", |c| email(c).smtp_port = 70_000, "connection.options.email.smtp_port"),
        ("email", |c| email(c).smtp_username = "mailer".into(), "connection.options.email.smtp_password"),
        ("email", |c| email(c).smtp_tls = 5, "connection.options.email.smtp_tls"),
        (
            "email",
            |c| {
                let e = email(c);
                e.smtp_username = "mailer".into();
                e.smtp_password = "pw".into();
                e.smtp_tls = pb::SmtpTls::None as i32;
            },
            "connection.options.email.smtp_tls",
        ),
        // sms
        ("sms", |c| sms(c).from = "5551234567".into(), "connection.options.sms.from"),
        ("sms", |c| sms(c).template = "no placeholder".into(), "connection.options.sms.template"),
        ("sms", |c| sms(c).provider_url.clear(), "connection.options.sms.provider_url"),
        ("sms", |c| sms(c).account.clear(), "connection.options.sms.account"),
        ("sms", |c| sms(c).token.clear(), "connection.options.sms.token"),
        ("sms", |c| sms(c).code_length = 11, "connection.options.sms.code_length"),
        ("sms", |c| sms(c).code_lifetime_seconds = 29, "connection.options.sms.code_lifetime_seconds"),
        ("sms", |c| sms(c).max_attempts = -1, "connection.options.sms.max_attempts"),
        // upstream_params
        (
            "oidc",
            |c| oidc(c).upstream_params = upstream(&[("state", value("x"))]),
            "connection.options.oidc.upstream_params[\"state\"]",
        ),
        (
            "facebook",
            |c| oauth2(c).upstream_params = upstream(&[("redirect_uri", alias("login_hint"))]),
            "connection.options.oauth2.upstream_params[\"redirect_uri\"]",
        ),
        (
            "oidc",
            |c| oidc(c).upstream_params = upstream(&[("bad name", value("x"))]),
            "connection.options.oidc.upstream_params[\"bad name\"]",
        ),
        (
            "google-apps",
            |c| gapps(c).upstream_params = upstream(&[("x", alias("password"))]),
            "connection.options.google_apps.upstream_params[\"x\"].alias",
        ),
        (
            "waad",
            |c| azure(c).upstream_params = upstream(&[("x", value(""))]),
            "connection.options.azure_ad.upstream_params[\"x\"].value",
        ),
        (
            "waad",
            |c| azure(c).upstream_params = upstream(&[("x", value(&"v".repeat(1025)))]),
            "connection.options.azure_ad.upstream_params[\"x\"].value",
        ),
        (
            "oidc",
            |c| oidc(c).upstream_params = upstream(&[("x", pb::UpstreamParam { source: None })]),
            "connection.options.oidc.upstream_params[\"x\"]",
        ),
        (
            "oidc",
            |c| oidc(c).upstream_params = (0..21).map(|i| (format!("p{i}"), value("v"))).collect(),
            "connection.options.oidc.upstream_params",
        ),
    ];
    for (strategy, mutate, field) in cases {
        let mut c = good(strategy);
        mutate(&mut c);
        check(c, Some(field));
    }
}

#[test]
fn unknown_strategy_lists_the_known_ones() {
    let mut c = good("auth0");
    c.strategy = "myspace".into();
    let v = NewConnection::try_from(c).unwrap_err();
    let d = &v.as_slice()[0].description;
    for s in Strategy::ALL {
        assert!(d.contains(s.as_str()), "{d}");
    }
}

#[test]
fn defaults_follow_auth0() {
    let email_conn = NewConnection::try_from(good("email")).unwrap();
    let Options::Email(e) = &email_conn.spec.options else { panic!() };
    assert_eq!((e.code_length, e.code_lifetime_seconds, e.max_attempts), (6, 180, 3));
    assert_eq!(e.effective_smtp_port(), 587);
    let db_conn = NewConnection::try_from(good("auth0")).unwrap();
    let Options::Database(d) = &db_conn.spec.options else { panic!() };
    assert_eq!(d.password_policy, PasswordStrength::Good);
    assert_eq!(d.effective_password_min_length(), 8);
    assert!(d.brute_force_protection);
    assert_eq!((d.username_min_length, d.username_max_length), (1, 15));
    assert_eq!(db_conn.spec.display_name, "my-auth0");
    assert_eq!(db_conn.spec.user_profile_sync, UserProfileSync::OnEachLogin);
    let ad = NewConnection::try_from(good("ad")).unwrap();
    let Options::Ldap(l) = &ad.spec.options else { panic!() };
    assert_eq!(l.user_filter, "(&(objectClass=user)(|(sAMAccountName={username})(userPrincipalName={username})))");
    assert_eq!(l.attributes.username, "sAMAccountName");
    let ga = {
        let mut c = good("google-apps");
        c.domain_aliases = vec!["Fabrikam.Example".into()];
        NewConnection::try_from(c).unwrap()
    };
    assert_eq!(ga.spec.domain_aliases, ["fabrikam.example"]);
}

#[test]
fn password_policies() {
    // The policy a database connection's options set is the one the authenticator checks.
    let policy_of = |f: fn(&mut pb::DatabaseOptions)| {
        let mut c = good("auth0");
        let mut d = pb::DatabaseOptions::default();
        f(&mut d);
        c.options = Some(O::Database(d));
        let conn = NewConnection::try_from(c).unwrap();
        let Options::Database(d) = &conn.spec.options else { panic!() };
        d.password_rules()
    };
    #[track_caller]
    fn check_pw(policy: &PasswordPolicy, pw: &str, ok: bool) {
        let mut v = postern_common::error::Violations::new();
        policy.check(pw, &PersonalInfo { email: "alice@fabrikam.example", ..PersonalInfo::default() }, "p", &mut v);
        assert_eq!(v.is_empty(), ok, "{policy:?} {pw:?}: {v:?}");
    }
    let level = |p: pb::PasswordPolicy| {
        policy_of(match p {
            pb::PasswordPolicy::None => |d| d.password_policy = pb::PasswordPolicy::None as i32,
            pb::PasswordPolicy::Low => |d| d.password_policy = pb::PasswordPolicy::Low as i32,
            pb::PasswordPolicy::Fair => |d| d.password_policy = pb::PasswordPolicy::Fair as i32,
            pb::PasswordPolicy::Excellent => |d| d.password_policy = pb::PasswordPolicy::Excellent as i32,
            _ => |_| {},
        })
    };
    check_pw(&level(pb::PasswordPolicy::None), "a", true);
    check_pw(&level(pb::PasswordPolicy::None), "", false);
    check_pw(&level(pb::PasswordPolicy::Low), "abcdef", true);
    check_pw(&level(pb::PasswordPolicy::Low), "abcde", false);
    check_pw(&level(pb::PasswordPolicy::Fair), "abcDEF12", true);
    check_pw(&level(pb::PasswordPolicy::Fair), "abcdef12", false);
    // Unspecified is `good`.
    check_pw(&level(pb::PasswordPolicy::Unspecified), "abcdef1!", true);
    check_pw(&level(pb::PasswordPolicy::Unspecified), "abcdefg1", false);
    check_pw(&level(pb::PasswordPolicy::Excellent), "abcDEF12!x", true);
    check_pw(&level(pb::PasswordPolicy::Excellent), "aaaDEF12!x", false);
    check_pw(&level(pb::PasswordPolicy::Excellent), "abcDEF12!", false);
    let longer = policy_of(|d| {
        d.password_policy = pb::PasswordPolicy::Low as i32;
        d.password_min_length = 10;
    });
    check_pw(&longer, "abcdef", false);
    check_pw(&longer, "abcdefghij", true);
    let rules = policy_of(|d| {
        d.password_history_size = 5;
        d.password_no_personal_info = true;
        d.password_dictionary = Some(pb::PasswordDictionary { enable: true, words: vec!["Fabrikam-2026!".into()] });
    });
    assert_eq!(rules.history_size, 5);
    check_pw(&rules, "Alice-2026!", false);
    check_pw(&rules, "fabrikam-2026!", false);
    check_pw(&rules, "Qz7-rainbow!", true);
}

#[test]
fn reads_hide_secrets_and_say_they_are_set() {
    let new = NewConnection::try_from(good("ldap")).unwrap();
    assert!(new.secrets.is_set(names::BIND_PASSWORD));
    assert!(!format!("{:?}", new.spec).contains("bindpw"));
    let conn = Connection { id: Connection::new_id(), spec: new.spec, create_time: 1, update_time: 2 };
    assert!(conn.id.starts_with("con_") && conn.id.len() == 28);
    let read = conn.to_proto(&new.secrets);
    let Some(O::Ldap(l)) = &read.options else { panic!() };
    assert!(l.bind_password.is_empty() && l.bind_password_set);
    assert_eq!(read.category, pb::Category::Enterprise as i32);
    let resolved = conn.to_proto_with_secrets(&new.secrets);
    let Some(O::Ldap(l)) = &resolved.options else { panic!() };
    assert_eq!(l.bind_password, "bindpw");
    // A read fed back as a creation is accepted once the secret is given again.
    let mut again = read.clone();
    ldap(&mut again).bind_password = "x".into();
    check(again, None);
}

#[test]
fn spec_survives_json() {
    for s in Strategy::ALL {
        let new = NewConnection::try_from(good(s.as_str())).unwrap();
        let json = serde_json::to_string(&new.spec).unwrap();
        assert!(!json.contains("secret") || s == Strategy::Auth0, "{json}");
        let back: ConnectionSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, new.spec);
    }
}

#[test]
fn connection_refs() {
    assert_eq!(ConnectionRef::parse("con_abc123").unwrap(), ConnectionRef::Id("con_abc123".into()));
    assert_eq!(ConnectionRef::parse("fabrikam-ad").unwrap(), ConnectionRef::Name("fabrikam-ad".into()));
    for bad in ["", "con_", "con_a-b", "a_b"] {
        assert!(ConnectionRef::parse(bad).is_err(), "{bad}");
    }
}

fn stored(strategy: &str) -> (Connection, Secrets) {
    let new = NewConnection::try_from(good(strategy)).unwrap();
    (Connection { id: "con_x".into(), spec: new.spec, create_time: 0, update_time: 0 }, new.secrets)
}

#[track_caller]
fn check_update(
    strategy: &str,
    patch: pb::Connection,
    paths: &[&str],
    expected: Result<(), &str>,
) -> Option<update::Update> {
    let (current, secrets) = stored(strategy);
    let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    match (apply_update(&current, &secrets, patch, &paths), expected) {
        (Ok(u), Ok(())) => Some(u),
        (Err(v), Err(field)) => {
            assert!(v.as_slice().iter().any(|x| x.field == field), "expected {field}, got {v:?}");
            None
        }
        (got, want) => panic!("expected {want:?}, got {got:?}"),
    }
}

#[test]
fn updates_keep_secrets_left_empty() {
    // Replacing all options without the secret keeps the stored one.
    let (current, _) = stored("ldap");
    let mut patch = current.to_proto(&Secrets::new());
    ldap(&mut patch).url = "ldap://dc2.fabrikam.example".into();
    let u = check_update("ldap", patch.clone(), &["options"], Ok(())).unwrap();
    assert_eq!(u.secrets.get(names::BIND_PASSWORD).unwrap().expose(), "bindpw");
    let Options::Ldap(l) = &u.spec.options else { panic!() };
    assert_eq!(l.url, "ldap://dc2.fabrikam.example");

    // One field only.
    let patch = pb::Connection {
        options: Some(O::Ldap(pb::LdapOptions { url: "ldap://dc3".into(), ..Default::default() })),
        ..Default::default()
    };
    let u = check_update("ldap", patch, &["options.ldap.url"], Ok(())).unwrap();
    let Options::Ldap(l) = &u.spec.options else { panic!() };
    assert_eq!((l.url.as_str(), l.bind_dn.starts_with("CN=postern")), ("ldap://dc3", true));
    assert!(u.secrets.is_set(names::BIND_PASSWORD));

    // A new secret replaces the stored one.
    let patch = pb::Connection {
        options: Some(O::Ldap(pb::LdapOptions { bind_password: "new".into(), ..Default::default() })),
        ..Default::default()
    };
    let u = check_update("ldap", patch, &["options.ldap.bind_password"], Ok(())).unwrap();
    assert_eq!(u.secrets.get(names::BIND_PASSWORD).unwrap().expose(), "new");

    // Naming a required secret and leaving it empty removes it, which the rules refuse.
    check_update(
        "ldap",
        pb::Connection::default(),
        &["options.ldap.bind_password"],
        Err("connection.options.ldap.bind_password"),
    );

    // Naming an optional secret and leaving it empty removes it.
    let (mut current, mut secrets) = stored("email");
    if let Options::Email(e) = &mut current.spec.options {
        e.smtp_username = "mailer".into();
    }
    secrets.insert(names::SMTP_PASSWORD, Secret::new("pw"));
    let paths = ["options.email.smtp_username".to_owned(), "options.email.smtp_password".to_owned()];
    let u = apply_update(&current, &secrets, pb::Connection::default(), &paths).unwrap();
    assert!(!u.secrets.is_set(names::SMTP_PASSWORD));
}

#[test]
fn custom_database_ca_certificate_is_kept_and_read_back() {
    let mut c = good("auth0");
    db(&mut c).custom_database = Some(pb::CustomDatabase {
        endpoint: "https://customdb.internal:50051".into(),
        token: "tok".into(),
        ca_certificate: test_ca(),
        ..Default::default()
    });
    let new = NewConnection::try_from(c).unwrap();
    // Stored as the spec's JSON: the field survives it, and a spec stored before the field
    // existed still reads (as no CA).
    let json = serde_json::to_string(&new.spec).unwrap();
    let spec: ConnectionSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(spec, new.spec);
    let stored = Connection { id: "con_x".into(), spec, create_time: 0, update_time: 0 };
    let read = stored.to_proto(&new.secrets);
    let Some(O::Database(d)) = &read.options else { panic!() };
    let cd = d.custom_database.as_ref().unwrap();
    assert_eq!(cd.ca_certificate, test_ca(), "not a secret: returned by reads");
    assert!(cd.token.is_empty() && cd.token_set);
    let old = json.replace(&format!(",\"ca_certificate\":{}", serde_json::to_string(&test_ca()).unwrap()), "");
    assert!(!old.contains("ca_certificate"), "{old}");
    let spec: ConnectionSpec = serde_json::from_str(&old).unwrap();
    let Options::Database(d) = &spec.options else { panic!() };
    assert_eq!(d.custom_database.as_ref().unwrap().ca_certificate, "");

    // On an http endpoint the violation says why.
    let mut c = good("auth0");
    db(&mut c).custom_database =
        Some(pb::CustomDatabase { endpoint: "http://x".into(), ca_certificate: test_ca(), ..Default::default() });
    let v = NewConnection::try_from(c).unwrap_err();
    let x = v.as_slice().iter().find(|x| x.field.ends_with("ca_certificate")).unwrap();
    assert!(x.description.contains("https"), "{}", x.description);
}

#[test]
fn custom_database_token_has_its_own_path() {
    let (mut current, mut secrets) = stored("auth0");
    if let Options::Database(d) = &mut current.spec.options {
        d.custom_database = Some(CustomDatabase {
            endpoint: "http://customdb:50051".into(),
            import_mode: ImportMode::Lazy,
            timeout_seconds: 10,
            ca_certificate: String::new(),
        });
    }
    secrets.insert(names::CUSTOM_DATABASE_TOKEN, Secret::new("tok"));
    let read = current.to_proto(&secrets);
    let Some(O::Database(d)) = &read.options else { panic!() };
    let c = d.custom_database.as_ref().unwrap();
    assert!(c.token.is_empty() && c.token_set);

    let path = ["options.database.custom_database.token".to_owned()];
    let patch = pb::Connection {
        options: Some(O::Database(pb::DatabaseOptions {
            custom_database: Some(pb::CustomDatabase { token: "new".into(), ..Default::default() }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let u = apply_update(&current, &secrets, patch, &path).unwrap();
    assert_eq!(u.secrets.get(names::CUSTOM_DATABASE_TOKEN).unwrap().expose(), "new");
    let Options::Database(d) = &u.spec.options else { panic!() };
    assert_eq!(d.custom_database.as_ref().unwrap().endpoint, "http://customdb:50051");
    let u = apply_update(&current, &secrets, pb::Connection::default(), &path).unwrap();
    assert!(!u.secrets.is_set(names::CUSTOM_DATABASE_TOKEN));
}

#[test]
fn discovery_domains() {
    let mut c = good("google-apps");
    c.domain_aliases = vec!["fabrikam.example".into(), "fabrikam.test".into()];
    gapps(&mut c).allowed_domains = vec!["contoso.example".into()];
    let spec = NewConnection::try_from(c).unwrap().spec;
    assert_eq!(spec.discovery_domains(), ["contoso.example", "fabrikam.example", "fabrikam.test"]);
    let spec = NewConnection::try_from(good("waad")).unwrap().spec;
    assert_eq!(spec.discovery_domains(), ["fabrikam.onmicrosoft.com"]);
    assert!(NewConnection::try_from(good("github")).unwrap().spec.discovery_domains().is_empty());
}

#[test]
fn update_mask_rules() {
    let display = pb::Connection { display_name: "Fabrikam AD".into(), ..Default::default() };
    let u = check_update("ad", display.clone(), &["display_name"], Ok(())).unwrap();
    assert_eq!(u.spec.display_name, "Fabrikam AD");
    assert_eq!(u.spec.name, "my-ad");

    check_update("ad", display.clone(), &[], Err("update_mask"));
    check_update("ad", display.clone(), &["name"], Err("update_mask.paths[0]"));
    check_update("ad", display.clone(), &["display_name", "strategy"], Err("update_mask.paths[1]"));
    check_update("ad", display.clone(), &["create_time"], Err("update_mask.paths[0]"));
    check_update("ad", display.clone(), &["nonsense"], Err("update_mask.paths[0]"));
    check_update("ad", display.clone(), &["options.saml"], Err("update_mask.paths[0]"));
    check_update("ad", display.clone(), &["options.nope.url"], Err("update_mask.paths[0]"));
    check_update("ad", display.clone(), &["options.ldap.nope"], Err("update_mask.paths[0]"));
    check_update("ad", display.clone(), &["options.ldap.bind_password_set"], Err("update_mask.paths[0]"));

    // The merged result is validated like a creation.
    let bad_url = pb::Connection {
        options: Some(O::Ldap(pb::LdapOptions { url: "http://dc1".into(), ..Default::default() })),
        ..Default::default()
    };
    check_update("ad", bad_url, &["options.ldap.url"], Err("connection.options.ldap.url"));
    let wrong_family = pb::Connection { options: Some(O::Saml(Default::default())), ..Default::default() };
    check_update("ad", wrong_family.clone(), &["options"], Err("connection.options"));
    check_update("ad", wrong_family, &["options.ldap.url"], Err("connection.options"));
    let aliases = pb::Connection { domain_aliases: vec!["fabrikam.example".into()], ..Default::default() };
    check_update("ad", aliases.clone(), &["domain_aliases"], Ok(()));
    check_update("facebook", aliases, &["domain_aliases"], Err("connection.domain_aliases"));

    // Clearing the metadata and the options resets them.
    let u = check_update("auth0", pb::Connection::default(), &["metadata", "options"], Ok(())).unwrap();
    assert!(u.spec.metadata.is_empty());
}

/// Every field of every options message of the contract can be named in an update mask
/// (`options.<family>.<field>`), except the output-only ones, which say so: a field added to
/// the contract and forgotten in `copy_option_field` fails here.
#[test]
fn every_options_field_of_the_contract_can_be_named_in_an_update_mask() {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(postern_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let file = set.file.iter().find(|f| f.package() == "postern.connections.v1").expect("the connections contract");
    type Empty = fn() -> O;
    let families: [(&str, Empty); 9] = [
        ("DatabaseOptions", || O::Database(Default::default())),
        ("OAuth2Options", || O::Oauth2(Default::default())),
        ("OidcOptions", || O::Oidc(Default::default())),
        ("GoogleAppsOptions", || O::GoogleApps(Default::default())),
        ("LdapOptions", || O::Ldap(Default::default())),
        ("SamlOptions", || O::Saml(Default::default())),
        ("AzureAdOptions", || O::AzureAd(Default::default())),
        ("EmailOptions", || O::Email(Default::default())),
        ("SmsOptions", || O::Sms(Default::default())),
    ];
    let mut checked = 0;
    for message in file.message_type.iter().filter(|m| m.name().ends_with("Options")) {
        let (_, empty) = families
            .iter()
            .find(|(name, _)| *name == message.name())
            .unwrap_or_else(|| panic!("{} is not among this test's options families: add it", message.name()));
        let family = OptionsFamily::of_proto(&empty()).field_name();
        for field in &message.field {
            let result = super::update::copy_option_field(&mut empty(), &empty(), field.name());
            if field.name().ends_with("_set") {
                assert!(result.is_err_and(|e| e.contains("output only")), "{family}.{}", field.name());
            } else {
                assert_eq!(result, Ok(()), "options.{family}.{} cannot be named in an update mask", field.name());
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} fields checked");
}
