//! Each provider's profile, read with the login's access token into the external profile:
//! Facebook's Graph API `me` (with `appsecret_proof`), GitHub's `/user` and `/user/emails`,
//! and a generic provider's profile endpoint through the connection's mapping.
//!
//! `email_verified` is set only where the provider asserts it: GitHub's primary address
//! marked `verified`, a generic provider's mapped value `true`. Facebook's `me` does not
//! say whether its `email` was verified, so it is never set for Facebook.

use std::time::Duration;

use hmac::{Hmac, Mac};
use postern_connection::{MappedAttribute, ProfileMapping};
use postern_connector::{ExternalProfile, Profile};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::Provider;
use crate::flow::Endpoints;
use crate::http::{Answer, Call, Failure, echo, oauth_error, send};

/// The longest upstream user id kept (the user's id is `<strategy>|<upstream id>`).
pub const MAX_SOURCE_ID_CHARS: usize = 255;
/// The longest profile attribute kept; longer ones are cut.
pub const MAX_ATTRIBUTE_CHARS: usize = 300;

/// What a profile read needs.
pub struct Read<'a> {
    /// The connector's client.
    pub http: &'a crate::http::Http,
    /// Its time limit per call.
    pub timeout: Duration,
    /// The connection's name.
    pub connection: &'a str,
    /// The connection's endpoints.
    pub endpoints: &'a Endpoints,
    /// The login's access token.
    pub access_token: &'a str,
}

impl Read<'_> {
    fn call(&self, provider: Provider, endpoint: &'static str) -> Call<'_> {
        Call { connection: self.connection, provider: provider.display_name(), endpoint }
    }

    /// GETs `url` with the access token and reads a JSON answer.
    async fn get_json(
        &self,
        call: Call<'_>,
        url: &str,
        query: &[(&str, &str)],
        accept: &str,
    ) -> Result<(u16, Value), Failure> {
        let mut request =
            self.http.get(url).query(query).bearer_auth(self.access_token).header(reqwest::header::ACCEPT, accept);
        if call.provider == Provider::Github.display_name() {
            // The REST API version the answers' shapes are read in.
            request = request.header("X-GitHub-Api-Version", "2022-11-28");
        }
        let answer = send(self.http, call, request, self.timeout).await?;
        let body = json_answer(call, &answer)?;
        Ok((answer.status, body))
    }
}

/// A profile endpoint's answer as JSON: a refusal (4xx) is [`Failure::Denied`], anything
/// else that is not JSON [`Failure::Rejected`].
fn json_answer(call: Call<'_>, answer: &Answer) -> Result<Value, Failure> {
    let body = answer.json();
    if !(200..300).contains(&answer.status) {
        let said = body
            .as_ref()
            .and_then(oauth_error)
            .or_else(|| {
                // GitHub: {"message": "Bad credentials", ...}.
                body.as_ref()
                    .and_then(|b| b.get("message"))
                    .and_then(Value::as_str)
                    .map(|m| (m.to_owned(), String::new()))
            })
            .map(
                |(e, d)| if d.is_empty() { format!(": {}", echo(&e)) } else { format!(": {}: {}", echo(&e), echo(&d)) },
            )
            .unwrap_or_default();
        return Err(Failure::Denied(format!(
            "{} refused the access token (HTTP {}){said}",
            call.describe(),
            answer.status
        )));
    }
    body.ok_or_else(|| {
        Failure::Rejected(
            "UPSTREAM_ANSWER_INVALID",
            format!("{} answered HTTP {} without JSON", call.describe(), answer.status),
        )
    })
}

/// Facebook: the Graph API's `me` with the connection's fields and the `appsecret_proof`
/// (the HMAC-SHA256 of the access token under the app secret), which Facebook requires
/// when the app has "Require App Secret" on and checks whenever it is sent.
pub async fn facebook(read: &Read<'_>, fields: &[String], app_secret: &str) -> Result<ExternalProfile, Failure> {
    let call = read.call(Provider::Facebook, "Graph API `me`");
    let mut asked: Vec<&str> = vec!["id"];
    let configured: Vec<&str> = if fields.is_empty() {
        postern_connection::OAuth2Options::DEFAULT_FACEBOOK_FIELDS.to_vec()
    } else {
        fields.iter().map(String::as_str).collect()
    };
    for f in configured {
        if !asked.contains(&f) {
            asked.push(f);
        }
    }
    let proof = appsecret_proof(app_secret, read.access_token)?;
    let query = [("fields", asked.join(",")), ("appsecret_proof", proof)];
    let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, me) = read.get_json(call, &read.endpoints.userinfo, &query, "application/json").await?;
    let source_id = id_of(call, &me, &["id"])?;
    let picture = match me.get("picture") {
        // `picture` is an object (`{"data": {"url": …}}`), or a URL with `fields=picture.type(…)`
        // on older versions.
        Some(Value::Object(_)) => text_at(&me, "picture.data.url"),
        _ => text_at(&me, "picture"),
    };
    let profile = Profile {
        email: email(&text_at(&me, "email")),
        email_verified: false,
        username: String::new(),
        name: attribute(&text_at(&me, "name")),
        given_name: attribute(&text_at(&me, "first_name")),
        family_name: attribute(&text_at(&me, "last_name")),
        nickname: String::new(),
        picture: attribute(&picture),
        ..Profile::default()
    };
    Ok(external(source_id, profile, me))
}

/// The `appsecret_proof` of the Graph API: hex HMAC-SHA256 of the access token, keyed by the
/// app secret.
pub fn appsecret_proof(app_secret: &str, access_token: &str) -> Result<String, Failure> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(app_secret.as_bytes())
        .map_err(|e| Failure::Internal(format!("HMAC key: {e}")))?;
    mac.update(access_token.as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// GitHub: `/user`, then `/user/emails` for the primary address and whether it is verified
/// (the `email` of `/user` is only the public one, and says nothing of verification).
pub async fn github(read: &Read<'_>) -> Result<ExternalProfile, Failure> {
    const ACCEPT: &str = "application/vnd.github+json";
    let call = read.call(Provider::Github, "`/user` endpoint");
    let (_, user) = read.get_json(call, &read.endpoints.userinfo, &[], ACCEPT).await?;
    let source_id = id_of(call, &user, &["id"])?;
    let emails_call = read.call(Provider::Github, "`/user/emails` endpoint");
    let listed = match read.get_json(emails_call, &read.endpoints.emails, &[], ACCEPT).await {
        Ok((_, Value::Array(list))) => list,
        Ok(_) => {
            return Err(Failure::Rejected(
                "UPSTREAM_ANSWER_INVALID",
                format!("{} did not answer a list", emails_call.describe()),
            ));
        }
        // Without the `user:email` scope GitHub refuses the list: the login goes on with
        // the public address, unverified.
        Err(Failure::Denied(why)) => {
            tracing::info!(connection = read.connection, %why, "GitHub email addresses not readable");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let flag = |e: &Value, k: &str| e.get(k).and_then(Value::as_bool).unwrap_or(false);
    let primary = listed.iter().find(|e| flag(e, "primary"));
    let (address, verified) = match primary {
        Some(p) if flag(p, "verified") => (text_at(p, "email"), true),
        Some(p) => (text_at(p, "email"), false),
        None => (text_at(&user, "email"), false),
    };
    let address = email(&address);
    let profile = Profile {
        email_verified: verified && !address.is_empty(),
        email: address,
        username: String::new(),
        name: attribute(&text_at(&user, "name")),
        given_name: String::new(),
        family_name: String::new(),
        nickname: attribute(&text_at(&user, "login")),
        picture: attribute(&text_at(&user, "avatar_url")),
        ..Profile::default()
    };
    Ok(external(source_id, profile, user))
}

/// A generic provider: its profile endpoint, read through the connection's mapping.
pub async fn generic(read: &Read<'_>, mapping: Option<&ProfileMapping>) -> Result<ExternalProfile, Failure> {
    let call = read.call(Provider::Generic, "profile endpoint");
    let (_, body) = read.get_json(call, &read.endpoints.userinfo, &[], "application/json").await?;
    if !body.is_object() {
        return Err(Failure::Rejected(
            "UPSTREAM_ANSWER_INVALID",
            format!("{} did not answer a JSON object", call.describe()),
        ));
    }
    let default = ProfileMapping::default();
    let m = mapping.unwrap_or(&default);
    let source_id = id_of(call, &body, &m.user_id_paths())?;
    let get = |a: MappedAttribute| text_at(&body, m.path(a));
    let verified = matches!(at(&body, m.path(MappedAttribute::EmailVerified)), Some(Value::Bool(true)))
        || matches!(at(&body, m.path(MappedAttribute::EmailVerified)), Some(Value::String(s)) if s == "true");
    let address = email(&get(MappedAttribute::Email));
    let profile = Profile {
        email_verified: verified && !address.is_empty(),
        email: address,
        username: attribute(&get(MappedAttribute::Username)),
        name: attribute(&get(MappedAttribute::Name)),
        given_name: attribute(&get(MappedAttribute::GivenName)),
        family_name: attribute(&get(MappedAttribute::FamilyName)),
        nickname: attribute(&get(MappedAttribute::Nickname)),
        picture: attribute(&get(MappedAttribute::Picture)),
        ..Profile::default()
    };
    Ok(external(source_id, profile, body))
}

/// The external profile: the provider's answer as the identity's raw profile, with the
/// normalized attributes written over it (as Auth0 keeps a social identity's profile).
fn external(source_id: String, profile: Profile, upstream: Value) -> ExternalProfile {
    let mut raw = match upstream {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Value::Object(normalized) = profile.to_json() {
        raw.extend(normalized);
    }
    ExternalProfile { source_id, profile, raw: Value::Object(raw), user_metadata: Map::new(), app_metadata: Map::new() }
}

/// The user's id at the first of `paths` that holds a string or an integer; a profile
/// without one is refused.
fn id_of(call: Call<'_>, body: &Value, paths: &[&str]) -> Result<String, Failure> {
    let found = paths.iter().find_map(|p| match at(body, p) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    });
    match found {
        Some(id) if id.chars().count() <= MAX_SOURCE_ID_CHARS && !id.chars().any(char::is_control) => Ok(id),
        Some(_) => Err(Failure::Rejected(
            "PROFILE_INVALID",
            format!(
                "{} answered a user id longer than {MAX_SOURCE_ID_CHARS} characters or with control characters",
                call.describe()
            ),
        )),
        None => Err(Failure::Rejected(
            "PROFILE_INVALID",
            format!("{} answered no user id (looked for `{}`)", call.describe(), paths.join("`, `")),
        )),
    }
}

/// The value at a dotted path: member names, and array indexes as numbers.
pub fn at<'a>(body: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(body, |v, segment| match v {
        Value::Object(m) => m.get(segment),
        Value::Array(a) => segment.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// The string (or number, as text) at a dotted path; empty otherwise.
fn text_at(body: &Value, path: &str) -> String {
    match at(body, path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A profile attribute as kept: control characters dropped, at most
/// [`MAX_ATTRIBUTE_CHARS`].
fn attribute(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(MAX_ATTRIBUTE_CHARS).collect()
}

/// An email address as kept: what looks like one (`local@domain`, at most 254 characters,
/// no spaces), else nothing.
fn email(s: &str) -> String {
    let s = s.trim();
    let plausible = s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && s.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if plausible { s.to_owned() } else { String::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths() {
        let v = json!({"data": {"emails": [{"value": "a@b.example"}], "id": 7}, "sub": ""});
        assert_eq!(at(&v, "data.emails.0.value"), Some(&json!("a@b.example")));
        assert_eq!(at(&v, "data.emails.1.value"), None);
        assert_eq!(at(&v, "data.emails.x"), None);
        assert_eq!(text_at(&v, "data.id"), "7");
        let call = Call { connection: "c", provider: "p", endpoint: "e" };
        // An empty `sub` is no id: the next path is tried.
        assert_eq!(id_of(call, &v, &["sub", "data.id"]).unwrap(), "7");
        assert!(matches!(id_of(call, &v, &["sub", "id"]), Err(Failure::Rejected("PROFILE_INVALID", _))));
        assert!(matches!(id_of(call, &json!({"id": 1.5}), &["id"]), Err(Failure::Rejected(..))));
    }

    #[test]
    fn the_appsecret_proof_is_facebooks_hmac() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), RFC 4231 style.
        assert_eq!(
            appsecret_proof("key", "The quick brown fox jumps over the lazy dog").unwrap(),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn attributes_are_bounded_and_emails_plausible() {
        assert_eq!(email(" jane@fabrikam.example "), "jane@fabrikam.example");
        assert_eq!(email("not an email"), "");
        assert_eq!(email("jane@localhost"), "");
        assert_eq!(attribute(&"x".repeat(400)).len(), MAX_ATTRIBUTE_CHARS);
        assert_eq!(attribute("Jane\u{0}Doe"), "JaneDoe");
    }

    #[test]
    fn the_raw_profile_keeps_the_providers_answer_under_the_normalized_attributes() {
        let p = Profile { email: "jane@fabrikam.example".into(), email_verified: true, ..Profile::default() };
        let e = external("9".into(), p, json!({"login": "jdoe", "email": null, "email_verified": "yes"}));
        assert_eq!(e.raw["login"], "jdoe");
        assert_eq!(e.raw["email"], "jane@fabrikam.example");
        assert_eq!(e.raw["email_verified"], true);
    }
}
