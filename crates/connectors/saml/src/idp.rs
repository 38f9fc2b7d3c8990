//! The identity provider's metadata document (a connection's `metadata_url`): fetched under
//! the egress policy, read for what this SP trusts of the IdP (its entity id, its single
//! sign-on URLs and its signing certificates), and kept per URL for its HTTP lifetime.
//!
//! The document is read namespace by namespace ([`crate::xml`], no DTD): an
//! `md:EntityDescriptor`, or an `md:EntitiesDescriptor` holding one identity provider (or the
//! one the connection's `entity_id` names). A document past its `validUntil` is refused, and
//! so is one whose signing certificates do not parse: a login never goes on with less than
//! the IdP published. Its own XML signature is not checked; the URL's TLS is what it is
//! trusted by.
//!
//! When a response's signature does not verify under the certificates kept, [`Documents::renewed`]
//! fetches the document again (at most every [`MIN_REFETCH`] per URL): that is how a
//! connection follows the IdP's certificate rollover, as a relying party refetches a key set
//! on an unknown `kid`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use postern_connector::ConnectorError;
use postern_connector::egress::{HttpClient, SendError};

use crate::{short, xml};

/// The SAML 2.0 metadata namespace.
const MD_NS: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
/// The largest document read.
pub const MAX_DOCUMENT: usize = 1024 * 1024;
/// The shortest time a document is kept, whatever its `Cache-Control` says.
pub const MIN_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// The longest time a document is kept, whatever its `Cache-Control` says.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a document without `Cache-Control: max-age` is kept.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// How long after a fetch a failed signature may fetch the document again.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long a document outlives its lifetime when the IdP cannot serve it again (an outage of
/// its metadata endpoint must not stop every login).
pub const MAX_STALE: Duration = Duration::from_secs(24 * 3600);

/// What the document says of the identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdpMetadata {
    /// Its entity id (the issuer of its responses).
    pub entity_id: String,
    /// Its single sign-on services: (binding URI, location).
    pub sso: Vec<(String, String)>,
    /// Its signing certificates, base64 DER, in document order, without repeats.
    pub certificates: Vec<String>,
    /// The earliest `validUntil` of the document, the entity and its IdP descriptor.
    pub valid_until: Option<SystemTime>,
}

impl IdpMetadata {
    /// The location of the single sign-on service for `binding`.
    pub fn sso(&self, binding: &str) -> Option<&str> {
        self.sso.iter().find(|(b, _)| b == binding).map(|(_, l)| l.as_str())
    }
}

/// An `xs:dateTime`, UTC when it names no zone.
fn date_time(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Some(t.with_timezone(&chrono::Utc).into());
    }
    chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc().into())
}

/// The `validUntil` of `e`: `Ok(None)` without one, an error when it is not a date.
fn valid_until(e: &xml::Element) -> Result<Option<SystemTime>, String> {
    match e.attribute("validUntil") {
        None => Ok(None),
        Some(v) => date_time(v).map(Some).ok_or_else(|| format!("its validUntil {:?} is not a date", short(v, 40))),
    }
}

fn is_saml2_idp(e: &xml::Element) -> bool {
    e.child(MD_NS, "IDPSSODescriptor").is_some_and(|d| {
        d.attribute("protocolSupportEnumeration")
            .is_some_and(|p| p.split_whitespace().any(|p| p == "urn:oasis:names:tc:SAML:2.0:protocol"))
    })
}

/// Reads a metadata document: the identity provider it describes (the one named `entity_id`
/// when that is not empty), as of `now`.
pub(crate) fn read(document: &str, entity_id: &str, now: SystemTime) -> Result<IdpMetadata, String> {
    let root = xml::parse(document)?;
    let mut entities = Vec::new();
    if root.is(MD_NS, "EntityDescriptor") {
        entities.push(&root);
    } else if root.is(MD_NS, "EntitiesDescriptor") {
        root.descendants(MD_NS, "EntityDescriptor", &mut entities);
    } else {
        return Err(format!(
            "it is not SAML 2.0 metadata: its root is {:?}, not an md:EntityDescriptor or md:EntitiesDescriptor",
            short(&root.name, 60)
        ));
    }
    let idps: Vec<&xml::Element> = entities.into_iter().filter(|e| is_saml2_idp(e)).collect();
    let names = || {
        idps.iter()
            .take(5)
            .map(|e| format!("{:?}", short(e.attribute("entityID").unwrap_or(""), 120)))
            .collect::<Vec<_>>()
    };
    let entity = if entity_id.is_empty() {
        match idps.as_slice() {
            [one] => *one,
            [] => return Err("it describes no SAML 2.0 identity provider (an IDPSSODescriptor)".into()),
            _ => {
                return Err(format!(
                    "it describes {} identity providers ({}…): set entity_id to the one to trust",
                    idps.len(),
                    names().join(", ")
                ));
            }
        }
    } else {
        let found = idps.iter().find(|e| e.attribute("entityID") == Some(entity_id));
        *found.ok_or_else(|| {
            format!(
                "it describes no identity provider {:?} (the connection's entity_id); it describes [{}]",
                short(entity_id, 120),
                names().join(", ")
            )
        })?
    };
    let descriptor = entity.child(MD_NS, "IDPSSODescriptor").ok_or("it has no IDPSSODescriptor")?;
    let mut until: Option<SystemTime> = None;
    for e in [&root, entity, descriptor] {
        if let Some(t) = valid_until(e)? {
            until = Some(until.map_or(t, |u| u.min(t)));
        }
    }
    if let Some(t) = until
        && t <= now
    {
        return Err(format!(
            "it expired on {} (validUntil): the identity provider must publish it again",
            chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()
        ));
    }
    let mut certificates = Vec::new();
    for key in descriptor.children.iter().filter(|c| c.is(MD_NS, "KeyDescriptor")) {
        if key.attribute("use").is_some_and(|u| u != "signing") {
            continue;
        }
        let mut found = Vec::new();
        key.descendants(xml::DSIG_NS, "X509Certificate", &mut found);
        for cert in found {
            let body: String = cert.text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let der = STANDARD.decode(&body).map_err(|_| "a signing certificate (X509Certificate) is not base64")?;
            openssl::x509::X509::from_der(&der).map_err(|_| "a signing certificate (X509Certificate) is not X.509")?;
            if !certificates.contains(&body) {
                certificates.push(body);
            }
        }
    }
    if certificates.is_empty() {
        return Err(
            "its IDPSSODescriptor holds no signing certificate (a KeyDescriptor with an X509Certificate)".into()
        );
    }
    let mut sso = Vec::new();
    for service in descriptor.children.iter().filter(|c| c.is(MD_NS, "SingleSignOnService")) {
        let (Some(binding), Some(location)) = (service.attribute("Binding"), service.attribute("Location")) else {
            continue;
        };
        postern_common::validate::service_url(location).map_err(|e| format!("a SingleSignOnService location {e}"))?;
        sso.push((binding.to_owned(), location.to_owned()));
    }
    Ok(IdpMetadata {
        entity_id: entity.attribute("entityID").unwrap_or_default().to_owned(),
        sso,
        certificates,
        valid_until: until,
    })
}

/// How long an answer may be kept, by its `Cache-Control` (`max-age`; `no-store` and
/// `no-cache` mean the shortest time), within [`MIN_LIFETIME`] and [`MAX_LIFETIME`].
pub(crate) fn lifetime(cache_control: Option<&str>) -> Duration {
    postern_connector::egress::max_age(cache_control).unwrap_or(DEFAULT_LIFETIME).clamp(MIN_LIFETIME, MAX_LIFETIME)
}

/// Why a document could not be had.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Not fetched (refused by the egress policy, unreachable, an HTTP error, too large).
    Unreachable(ConnectorError),
    /// Fetched, and not usable.
    Invalid(String),
}

impl Failure {
    /// The connector's error, naming `connection` and `url`.
    pub fn into_error(self, connection: &str, url: &str) -> ConnectorError {
        match self {
            Failure::Unreachable(e) => e,
            Failure::Invalid(why) => ConnectorError::FailedPrecondition {
                reason: "SAML_METADATA_INVALID",
                message: format!("connection {connection:?}: the IdP metadata at {url} cannot be used: {why}"),
            },
        }
    }
}

/// A fetched document, read.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    /// What it says.
    pub metadata: Arc<IdpMetadata>,
    /// How long it may be kept.
    pub lifetime: Duration,
}

/// Fetches and reads the document at `url`.
pub(crate) async fn fetch(
    http: &HttpClient,
    connection: &str,
    url: &str,
    entity_id: &str,
    now: SystemTime,
) -> Result<Fetched, Failure> {
    let unreachable = |why: String| {
        Failure::Unreachable(ConnectorError::Unavailable {
            reason: "SAML_METADATA_UNAVAILABLE",
            message: format!("connection {connection:?}: the IdP metadata at {url} cannot be read: {why}"),
        })
    };
    let request = http.get(url).header(
        reqwest::header::ACCEPT,
        "application/samlmetadata+xml, application/xml;q=0.9, text/xml;q=0.8, */*;q=0.1",
    );
    let mut response = match http.send(request).await {
        Ok(r) => r,
        Err(SendError::Refused(refused)) => {
            return Err(Failure::Unreachable(
                refused.connector_error(format!("connection {connection:?}: the IdP metadata at {url} cannot be read")),
            ));
        }
        Err(SendError::Transport(e)) => {
            let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), postern_common::error::with_causes);
            return Err(unreachable(short(&why, 300)));
        }
    };
    if !response.status().is_success() {
        return Err(unreachable(format!("it answered HTTP {}", response.status().as_u16())));
    }
    if response.content_length().is_some_and(|n| n > MAX_DOCUMENT as u64) {
        return Err(unreachable(format!("it is larger than {} KiB", MAX_DOCUMENT / 1024)));
    }
    let lifetime = lifetime(response.headers().get(reqwest::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()));
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_DOCUMENT {
                    return Err(unreachable(format!("it is larger than {} KiB", MAX_DOCUMENT / 1024)));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(unreachable(format!("its body was cut off: {}", short(&e.to_string(), 200)))),
        }
    }
    let text = String::from_utf8(body).map_err(|_| Failure::Invalid("it is not UTF-8 text".into()))?;
    let metadata = read(&text, entity_id, now).map_err(Failure::Invalid)?;
    Ok(Fetched { metadata: Arc::new(metadata), lifetime })
}

/// A document kept.
#[derive(Debug, Clone)]
struct Kept {
    metadata: Arc<IdpMetadata>,
    /// The connection's `entity_id` it was read for.
    entity_id: String,
    fetched: SystemTime,
    fresh_until: SystemTime,
}

impl Kept {
    /// Whether it may still be used at `now`, `grace` after its lifetime.
    fn usable(&self, now: SystemTime, grace: Duration) -> bool {
        now < self.fresh_until + grace && self.metadata.valid_until.is_none_or(|t| now < t)
    }
}

/// The documents kept, by URL.
#[derive(Debug, Default)]
pub(crate) struct Documents(Mutex<HashMap<String, Kept>>);

/// Documents kept at most; past it, the stale ones go first, then all.
const MAX_KEPT: usize = 1024;

impl Documents {
    fn kept(&self, url: &str, entity_id: &str) -> Option<Kept> {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(url).filter(|k| k.entity_id == entity_id).cloned()
    }

    fn keep(&self, url: &str, entity_id: &str, fetched: &Fetched, now: SystemTime) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_KEPT && !map.contains_key(url) {
            map.retain(|_, k| k.usable(now, Duration::ZERO));
            if map.len() >= MAX_KEPT {
                map.clear();
            }
        }
        map.insert(
            url.to_owned(),
            Kept {
                metadata: fetched.metadata.clone(),
                entity_id: entity_id.to_owned(),
                fetched: now,
                fresh_until: now + fetched.lifetime,
            },
        );
    }

    /// The document at `url` for a login at `now`: the one kept while it is fresh, else
    /// fetched again; when that fails, the one kept for up to [`MAX_STALE`] more.
    pub async fn current(
        &self,
        http: &HttpClient,
        connection: &str,
        url: &str,
        entity_id: &str,
        now: SystemTime,
    ) -> Result<Arc<IdpMetadata>, ConnectorError> {
        let kept = self.kept(url, entity_id);
        if let Some(k) = kept.as_ref().filter(|k| k.usable(now, Duration::ZERO)) {
            return Ok(k.metadata.clone());
        }
        match fetch(http, connection, url, entity_id, now).await {
            Ok(fetched) => {
                self.keep(url, entity_id, &fetched, now);
                Ok(fetched.metadata)
            }
            Err(failure) => {
                let error = failure.into_error(connection, url);
                match kept.filter(|k| k.usable(now, MAX_STALE)) {
                    Some(k) => {
                        tracing::warn!(connection, %error, "the IdP metadata could not be fetched again; the one fetched before is used");
                        Ok(k.metadata)
                    }
                    None => Err(error),
                }
            }
        }
    }

    /// The document at `url` fetched anew after a response's signature did not verify under
    /// `held`'s certificates: `Some` when it now holds other certificates; `None` when it
    /// was fetched less than [`MIN_REFETCH`] ago, cannot be had, or holds the same ones.
    pub async fn renewed(
        &self,
        http: &HttpClient,
        connection: &str,
        url: &str,
        entity_id: &str,
        held: &IdpMetadata,
        now: SystemTime,
    ) -> Option<Arc<IdpMetadata>> {
        if self.kept(url, entity_id).is_some_and(|k| now < k.fetched + MIN_REFETCH) {
            return None;
        }
        match fetch(http, connection, url, entity_id, now).await {
            Ok(fetched) => {
                self.keep(url, entity_id, &fetched, now);
                (fetched.metadata.certificates != held.certificates).then_some(fetched.metadata)
            }
            Err(failure) => {
                let error = failure.into_error(connection, url);
                tracing::warn!(connection, %error, "the IdP metadata could not be fetched again after a signature failed");
                None
            }
        }
    }

    /// The document at `url` fetched now (TestConnection), kept for the logins after it.
    pub async fn fresh(
        &self,
        http: &HttpClient,
        connection: &str,
        url: &str,
        entity_id: &str,
        now: SystemTime,
    ) -> Result<Fetched, ConnectorError> {
        let fetched = fetch(http, connection, url, entity_id, now).await.map_err(|f| f.into_error(connection, url))?;
        self.keep(url, entity_id, &fetched, now);
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh self-signed certificate, base64 DER (as metadata carries it).
    fn certificate() -> String {
        let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa")).expect("key");
        let (_, pem) = crate::tests::pair(key);
        crate::pem_bodies(&pem).remove(0)
    }

    fn entity(id: &str, cert: &str, extra: &str) -> String {
        format!(
            r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{id}" {extra}>
  <md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="encryption"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data><ds:X509Certificate>bm90IHJlYWQ=</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    <md:KeyDescriptor><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data><ds:X509Certificate>
{cert}
</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.example/sso"/>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="https://idp.example/sso/post"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>"#
        )
    }

    #[test]
    fn an_entity_descriptor_gives_its_signing_certificates_and_sign_on_urls() {
        let cert = certificate();
        let now = SystemTime::now();
        let m = read(&entity("https://idp.example", &cert, ""), "", now).expect("read");
        assert_eq!(m.entity_id, "https://idp.example");
        assert_eq!(m.certificates, vec![cert.clone()], "the encryption key is not a signing key");
        assert_eq!(m.sso("urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"), Some("https://idp.example/sso"));
        assert_eq!(m.sso("urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"), Some("https://idp.example/sso/post"));
        assert!(read(&entity("https://idp.example", &cert, ""), "https://other.example", now).is_err());

        let expired = entity("https://idp.example", &cert, r#"validUntil="2020-01-01T00:00:00Z""#);
        assert!(read(&expired, "", now).expect_err("expired").contains("expired"));
        let later = entity("https://idp.example", &cert, r#"validUntil="2999-01-01T00:00:00""#);
        assert!(read(&later, "", now).expect("valid").valid_until.is_some());

        let broken = entity("https://idp.example", "bm90IGEgY2VydA==", "");
        assert!(read(&broken, "", now).expect_err("broken").contains("not X.509"));
        let no_key = entity("https://idp.example", &cert, "")
            .replace("<md:KeyDescriptor>", "<md:KeyDescriptor use=\"encryption\">");
        assert!(read(&no_key, "", now).expect_err("no key").contains("no signing certificate"));
        assert!(read("<!DOCTYPE x><x/>", "", now).is_err());
        assert!(read(r#"<x xmlns="urn:x"/>"#, "", now).expect_err("other").contains("not SAML 2.0 metadata"));
    }

    #[test]
    fn an_aggregate_needs_the_entity_id_when_it_holds_several_providers() {
        let (a, b) = (certificate(), certificate());
        let doc = format!(
            r#"<md:EntitiesDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata">{}{}</md:EntitiesDescriptor>"#,
            entity("https://a.example", &a, ""),
            entity("https://b.example", &b, "")
        );
        let now = SystemTime::now();
        assert!(read(&doc, "", now).expect_err("two").contains("2 identity providers"));
        assert_eq!(read(&doc, "https://b.example", now).expect("b").certificates, vec![b]);
    }

    #[test]
    fn cache_control_sets_the_lifetime_within_bounds() {
        assert_eq!(lifetime(None), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some("public, max-age=7200")), Duration::from_secs(7200));
        assert_eq!(lifetime(Some("max-age=1")), MIN_LIFETIME);
        assert_eq!(lifetime(Some("max-age=99999999")), MAX_LIFETIME);
        assert_eq!(lifetime(Some("no-cache")), MIN_LIFETIME);
        assert_eq!(lifetime(Some("private")), DEFAULT_LIFETIME);
    }
}
