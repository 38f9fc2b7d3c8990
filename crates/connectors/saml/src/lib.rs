//! The SAML 2.0 redirect connector (strategy `samlp`): Postern as a service provider (SP),
//! one per connection.
//!
//! - **Metadata** ([`SamlConnector`]'s `metadata`): the SP's entity id (the connection's
//!   `audience`, else `urn:postern:<tenant>:<connection>`), its assertion consumer service
//!   (the tenant's `/login/callback`, HTTP-POST), when requests are signed the certificate
//!   of the request signing key, and when the connection decrypts assertions its
//!   `decryption_certificate` (`use="encryption"`, with the algorithms accepted).
//! - **begin**: an `AuthnRequest` by HTTP-Redirect (deflated, base64, with the transaction's
//!   `state` as `RelayState`), signed over the query (`SigAlg`, `Signature`) with the
//!   connection's request signing key when it says so; by HTTP-POST (an auto-submitted form)
//!   when the connection asks for that binding, signed then in the document (an enveloped
//!   XML signature by libxmlsec1, [`signed_request`]). The request's id is kept
//!   with the transaction ([`Begun::data`]) for `InResponseTo`.
//! - **complete**: the `SAMLResponse` posted back is read before any signature check only
//!   to refuse what no honest IdP sends (a document type, not exactly one assertion — the
//!   XML signature wrapping attacks move a signed assertion beside or inside an unsigned
//!   one) and to read an error status (a cancelled login: [`ConnectorError::Denied`]). An
//!   `EncryptedAssertion` (the connection's `decryption_key`; [`decrypt`]: RSA-OAEP key
//!   transport, AES-GCM or AES-CBC content) is decrypted in its place — after the response's
//!   own signature, when it has one, is verified over the encrypted form — and the document
//!   is read again as a whole; a plain assertion is refused when the connection requires
//!   encryption. Every signature's algorithms are checked first (the connection's signature
//!   method and digest; RSA-SHA1 and SHA-1 digests only with `allow_sha1`). Then `samael`
//!   (libxmlsec1) checks the signature of the assertion or of the whole response against the
//!   connection's IdP certificates (`allowed_signature_algorithms` set to the connection's
//!   algorithm unless SHA-1 is allowed, and a connection cannot be saved without a
//!   certificate, without which samael would check nothing), and works on the signed part
//!   only. A decrypted assertion is checked by its own signature when it has one, exactly
//!   as a plain one; an unsigned one only inside a verified response. Its checks (destination, recipient, audience, issuer, the
//!   transaction's request id as `InResponseTo`) run on the system clock; this connector
//!   checks the time rules again on the controllable clock ([`Clock`]), requires an
//!   `AudienceRestriction` naming this SP (samael lets an assertion without one through),
//!   and answers the assertion's id for the authenticator's replay cache
//!   ([`Completed::one_time_id`]). Any failure is [`ConnectorError::Rejected`]; nothing is
//!   stored.
//! - The user's id at the source is `<connection>|<NameID>` (the user id
//!   `samlp|<connection>|<NameID>`, as Auth0's); the profile's root attributes come from the
//!   connection's attribute mapping (an attribute's `Name` or `FriendlyName`); every
//!   attribute is kept in the raw profile by name, a multi-valued one as a list, and group
//!   attributes (`groups`, `memberOf`, Microsoft's group claims) also as the list `groups`.
//! - **The IdP's metadata** ([`idp`], a connection's `metadata_url`): the IdP's entity id,
//!   single sign-on URL and signing certificates read from its metadata document at login,
//!   the connection's own settings first and its certificates trusted beside the
//!   document's; kept by the document's HTTP lifetime, and fetched again (at most every 10
//!   seconds) when a response's signature fails under the certificates kept, so that the
//!   connection follows the IdP's key rollover.
//! - **test**: the metadata document read (with `metadata_url`), the IdP certificates'
//!   validity dates on the clock, the sign-in URL reachable,
//!   the request signing key usable, the decryption key opened, the key of
//!   `decryption_certificate` (a round trip through RSA-OAEP) and that certificate in its
//!   validity dates; never a secret in a step.
//!
//! - **IdP-initiated logins** (`complete_unsolicited`, off unless the connection's
//!   `idp_initiated.enabled`): a response that answers no request (no `InResponseTo`, at
//!   the response or in the bearer confirmation) posted to `/login/callback?connection=`,
//!   checked as any other (signature, audience, recipient and destination — the callback,
//!   or the callback naming the connection, which the metadata then lists as a second ACS —,
//!   time, one-time use); `unsolicited_client` names the application and its `/authorize`
//!   parameters, which the authenticator validates and logs the user in to.
//!

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decrypt;
mod idp;
mod xml;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use postern_common::time::Clock;
use postern_connection::secret::names;
use postern_connection::{Options, Resolved, SamlBinding, SamlOptions, SamlSignatureAlgorithm, Strategy};
use postern_connector::egress::{HttpClient, SendError};
use postern_connector::{
    Begun, Completed, ConnectorError, Connectors, Egress, ExternalProfile, OneTimeId, RedirectConnector,
    RedirectTransaction, ServiceMetadata, TestReport, TestStep, UnsolicitedClient, UpstreamLogout, UpstreamRequest,
    async_trait,
};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use samael::crypto::{AllowedSignatureAlgorithm, CertificateDer, Crypto, CryptoProvider as _, ReduceMode};
use samael::metadata::{EntityDescriptor, IdpSsoDescriptor, KeyDescriptor};
use samael::schema::{Assertion, AuthnRequest, Issuer, NameIdPolicy};
use samael::service_provider::ServiceProvider;
use samael::traits::ToXml as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Registers the SAML connector for `samlp`, its time rules on `clock`.
pub fn register(connectors: Connectors, clock: Clock, egress: &Egress) -> Connectors {
    connectors.with_redirect(Strategy::Samlp, Arc::new(SamlConnector::with_egress(clock, egress)))
}

/// The clock skew allowed on every time rule.
const SKEW: Duration = Duration::from_secs(60);
/// The oldest `IssueInstant` accepted: a response is posted right after it is made.
const MAX_ISSUE_AGE: Duration = Duration::from_secs(5 * 60);
/// How long an assertion id is remembered when the assertion names no end of validity.
const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(10 * 60);
/// The largest `SAMLResponse` read (base64).
const MAX_RESPONSE: usize = 512 * 1024;

const PROTOCOL_NS: &[u8] = b"urn:oasis:names:tc:SAML:2.0:protocol";
const ASSERTION_NS: &[u8] = b"urn:oasis:names:tc:SAML:2.0:assertion";
const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const HTTP_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
const HTTP_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
/// The reason of a response whose signature does not verify under the IdP's certificates.
const SIGNATURE_INVALID: &str = "SAML_SIGNATURE_INVALID";
const EMAIL_FORMAT: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress";

/// Attribute names read as the user's groups, whatever the mapping.
const GROUP_ATTRIBUTES: &[&str] = &[
    "groups",
    "memberOf",
    "http://schemas.xmlsoap.org/claims/Group",
    "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
    "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
];

/// The SAML service provider behind `samlp`.
pub struct SamlConnector {
    clock: Clock,
    /// Fetches IdP metadata documents and tries a sign-in URL, under the egress policy.
    http: HttpClient,
    /// The IdP metadata documents of the connections that name one, by URL.
    documents: idp::Documents,
}

impl std::fmt::Debug for SamlConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamlConnector").finish_non_exhaustive()
    }
}

/// What the connector keeps with the transaction.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    request_id: String,
}

/// One connection's SP settings.
struct Sp<'a> {
    connection: &'a str,
    entity_id: String,
    options: &'a SamlOptions,
    /// What this SP trusts of the IdP.
    idp: Idp,
}

/// What the SP trusts of the identity provider: the connection's own settings, completed by
/// the IdP's metadata document when the connection names one (`metadata_url`).
#[derive(Debug, Clone, Default)]
struct Idp {
    /// Where requests go; empty when neither the connection nor the document names one.
    sign_in_url: String,
    /// The issuer every response must name; empty for any (then only the signature ties a
    /// response to the IdP).
    entity_id: String,
    /// The signing certificates, base64 DER.
    certificates: Vec<String>,
    /// The document read, if any.
    metadata: Option<Arc<idp::IdpMetadata>>,
}

impl Idp {
    /// The connection's own settings.
    fn configured(o: &SamlOptions) -> Self {
        let mut certificates: Vec<String> = Vec::new();
        for body in o.signing_certificates.iter().flat_map(|c| pem_bodies(c)) {
            if !certificates.contains(&body) {
                certificates.push(body);
            }
        }
        Self { sign_in_url: o.sign_in_url.clone(), entity_id: o.entity_id.clone(), certificates, metadata: None }
    }

    /// The connection's settings where it has them, else the document's; the certificates of
    /// both.
    fn with_metadata(o: &SamlOptions, m: Arc<idp::IdpMetadata>) -> Self {
        let mut idp = Self::configured(o);
        if idp.sign_in_url.is_empty() {
            idp.sign_in_url = m.sso(binding_uri(o.binding)).unwrap_or_default().to_owned();
        }
        if idp.entity_id.is_empty() {
            idp.entity_id.clone_from(&m.entity_id);
        }
        for c in &m.certificates {
            if !idp.certificates.contains(c) {
                idp.certificates.push(c.clone());
            }
        }
        idp.metadata = Some(m);
        idp
    }
}

/// The URI of a binding.
fn binding_uri(b: SamlBinding) -> &'static str {
    match b {
        SamlBinding::HttpPost => HTTP_POST,
        SamlBinding::HttpRedirect => HTTP_REDIRECT,
    }
}

fn rejected(sp: &Sp<'_>, reason: &'static str, message: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Rejected { reason, message: format!("connection {:?}: {message}", sp.connection) }
}

fn misconfigured(connection: &str, message: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::FailedPrecondition {
        reason: "CONNECTION_MISCONFIGURED",
        message: format!("connection {connection:?}: {message}"),
    }
}

/// The first `max` printable characters of an upstream's text, for a message.
pub(crate) fn short(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The SP entity id of a connection: its `audience`, else `urn:postern:<tenant>:<name>`.
pub fn entity_id(tenant: &str, conn: &Resolved) -> String {
    match &conn.connection.spec.options {
        Options::Saml(o) if !o.audience.is_empty() => o.audience.clone(),
        _ => format!("urn:postern:{tenant}:{}", conn.connection.spec.name),
    }
}

fn sp<'a>(tenant: &str, conn: &'a Resolved) -> Result<Sp<'a>, ConnectorError> {
    let spec = &conn.connection.spec;
    let Options::Saml(options) = &spec.options else {
        return Err(misconfigured(&spec.name, "holds no SAML options"));
    };
    Ok(Sp { connection: &spec.name, entity_id: entity_id(tenant, conn), options, idp: Idp::configured(options) })
}

/// The base64 DER bodies of every certificate in PEM text.
fn pem_bodies(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        if line.starts_with("-----BEGIN CERTIFICATE") {
            current = Some(String::new());
        } else if line.starts_with("-----END CERTIFICATE") {
            if let Some(body) = current.take() {
                out.push(body);
            }
        } else if let Some(body) = current.as_mut() {
            body.push_str(line);
        }
    }
    out
}

fn algorithm(a: SamlSignatureAlgorithm) -> AllowedSignatureAlgorithm {
    match a {
        SamlSignatureAlgorithm::RsaSha256 => AllowedSignatureAlgorithm::RsaSha256,
        SamlSignatureAlgorithm::RsaSha512 => AllowedSignatureAlgorithm::RsaSha512,
    }
}

/// What samael lets through: the connection's algorithm only; with `allow_sha1` every
/// algorithm xmlsec verifies (samael has no SHA-1 entry to list), narrowed beforehand by
/// [`check_signature_algorithms`] to the connection's algorithm and SHA-1.
fn samael_algorithms(o: &SamlOptions) -> Option<Vec<AllowedSignatureAlgorithm>> {
    if o.allow_sha1 { None } else { Some(vec![algorithm(o.signature_algorithm)]) }
}

const RSA_SHA1: &str = "http://www.w3.org/2000/09/xmldsig#rsa-sha1";
const SHA1: &str = "http://www.w3.org/2000/09/xmldsig#sha1";

/// Every signature in `root` (at any depth) must use the connection's signature method
/// with its digest on every reference, or (with `allow_sha1`) RSA-SHA1 and SHA-1 digests:
/// refused with `SAML_SIGNATURE_ALGORITHM_NOT_ALLOWED`, saying what was found. What is
/// signed, and whether it verifies, is samael's to check.
fn check_signature_algorithms(sp: &Sp<'_>, root: &xml::Element) -> Result<(), ConnectorError> {
    let o = sp.options;
    let wanted = algorithm(o.signature_algorithm);
    let mut methods = vec![wanted.signature_uri()];
    let mut digests = vec![wanted.digest_uri()];
    if o.allow_sha1 {
        methods.push(RSA_SHA1);
        digests.push(SHA1);
    }
    let mut signatures = Vec::new();
    if root.is(xml::DSIG_NS, "Signature") {
        signatures.push(root);
    }
    root.descendants(xml::DSIG_NS, "Signature", &mut signatures);
    let accepted = || {
        let mut a = format!("{} with {} digests", wanted.signature_uri(), wanted.digest_uri());
        if o.allow_sha1 {
            a.push_str(&format!(", or {RSA_SHA1} and {SHA1}"));
        }
        a
    };
    let sha1_hint = if o.allow_sha1 { "" } else { " (SHA-1 is accepted only when the connection sets allow_sha1)" };
    for signature in signatures {
        let Some(info) = signature.child(xml::DSIG_NS, "SignedInfo") else { continue };
        let method = info.child(xml::DSIG_NS, "SignatureMethod").and_then(|m| m.attribute("Algorithm"));
        if !method.is_some_and(|m| methods.contains(&m)) {
            return Err(rejected(
                sp,
                "SAML_SIGNATURE_ALGORITHM_NOT_ALLOWED",
                format!(
                    "the response is signed with {:?}, which this connection does not accept{sha1_hint}; accepted: {}",
                    short(method.unwrap_or("no SignatureMethod"), 100),
                    accepted()
                ),
            ));
        }
        for reference in info.children.iter().filter(|c| c.is(xml::DSIG_NS, "Reference")) {
            let digest = reference.child(xml::DSIG_NS, "DigestMethod").and_then(|m| m.attribute("Algorithm"));
            if !digest.is_some_and(|d| digests.contains(&d)) {
                return Err(rejected(
                    sp,
                    "SAML_SIGNATURE_ALGORITHM_NOT_ALLOWED",
                    format!(
                        "the response's signature digests with {:?}, which this connection does not \
                         accept{sha1_hint}; accepted: {}",
                        short(digest.unwrap_or("no DigestMethod"), 100),
                        accepted()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The DER of every IdP certificate trusted.
fn certificates_der(idp: &Idp) -> Vec<CertificateDer> {
    idp.certificates.iter().filter_map(|b| STANDARD.decode(b).ok()).map(CertificateDer::from).collect()
}

/// Builds `source` again with each span replaced by its text (spans sorted, disjoint).
fn splice(source: &str, mut edits: Vec<((usize, usize), String)>) -> Option<String> {
    edits.sort_by_key(|e| e.0.0);
    let mut out = String::with_capacity(source.len());
    let mut at = 0;
    for ((start, end), text) in edits {
        if start < at || end < start {
            return None;
        }
        out.push_str(source.get(at..start)?);
        out.push_str(&text);
        at = end;
    }
    out.push_str(source.get(at..)?);
    Some(out)
}

fn to_chrono(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

fn to_system(t: DateTime<Utc>) -> SystemTime {
    SystemTime::from(t)
}

/// What the unverified document says, read before the signature check: only to refuse
/// early and to tell an IdP's error from a forgery.
#[derive(Debug, Default)]
struct Shape {
    /// `Assertion` and `EncryptedAssertion` elements, at any depth.
    assertions: usize,
    encrypted: usize,
    /// The response's top-level status code, if any.
    status: Option<String>,
    /// The response's status message, if any.
    status_message: Option<String>,
    /// The first `Issuer` met.
    issuer: Option<String>,
    /// Whether the root is a protocol `Response`.
    response_root: bool,
    /// The root's `InResponseTo`, if any.
    in_response_to: Option<String>,
    /// The root's `Destination`, if any.
    destination: Option<String>,
}

fn shape(xml: &str) -> Result<Shape, String> {
    let mut reader = quick_xml::reader::NsReader::from_str(xml);
    let mut s = Shape::default();
    let mut depth = 0usize;
    let mut in_status_message = false;
    let mut in_issuer = false;
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(|e| format!("the response is not XML: {e}"))?;
        let is = |ns: &ResolveResult<'_>, want: &[u8]| matches!(ns, ResolveResult::Bound(n) if n.as_ref() == want);
        match event {
            Event::DocType(_) => return Err("the response carries a document type (DTD), which SAML forbids".into()),
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = e.local_name();
                let name = local.as_ref();
                let empty = matches!(event, Event::Empty(_));
                if depth == 0 {
                    s.response_root = is(&ns, PROTOCOL_NS) && name == b"Response";
                    for a in e.attributes().flatten() {
                        let value = || Some(String::from_utf8_lossy(&a.value).into_owned());
                        match a.key.as_ref() {
                            b"InResponseTo" => s.in_response_to = value(),
                            b"Destination" => s.destination = value(),
                            _ => {}
                        }
                    }
                }
                if is(&ns, ASSERTION_NS) && name == b"Assertion" {
                    s.assertions += 1;
                }
                if is(&ns, ASSERTION_NS) && name == b"EncryptedAssertion" {
                    s.encrypted += 1;
                }
                if is(&ns, PROTOCOL_NS) && name == b"StatusCode" && depth == 2 && s.status.is_none() {
                    for a in e.attributes().flatten() {
                        if a.key.as_ref() == b"Value" {
                            s.status = Some(String::from_utf8_lossy(&a.value).into_owned());
                        }
                    }
                }
                if !empty {
                    in_status_message = is(&ns, PROTOCOL_NS) && name == b"StatusMessage";
                    in_issuer = s.issuer.is_none() && is(&ns, ASSERTION_NS) && name == b"Issuer";
                    depth += 1;
                }
            }
            Event::Text(t) => {
                let text = t.decode().map(|c| c.trim().to_owned()).unwrap_or_default();
                if in_status_message && !text.is_empty() {
                    s.status_message = Some(text.clone());
                }
                if in_issuer && !text.is_empty() {
                    s.issuer = Some(text);
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                in_status_message = false;
                in_issuer = false;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(s)
}

impl SamlConnector {
    /// A connector whose time rules read `clock`, under the built-in egress policy.
    pub fn new(clock: Clock) -> Self {
        Self::with_egress(clock, &Egress::default())
    }

    /// A connector whose time rules read `clock`, connecting (to try a sign-in URL) only
    /// where `egress` allows.
    pub fn with_egress(clock: Clock, egress: &Egress) -> Self {
        Self { clock, http: egress.http_client(Duration::from_secs(10)), documents: idp::Documents::default() }
    }

    /// The SP of `conn` with what it trusts of the IdP: with `metadata_url`, the document
    /// kept or fetched now ([`idp::Documents::current`]). Refused when no certificate is
    /// trusted: samael would then check no signature at all.
    async fn trusted<'a>(&self, tenant: &str, conn: &'a Resolved) -> Result<Sp<'a>, ConnectorError> {
        let mut sp = sp(tenant, conn)?;
        let o = sp.options;
        if !o.metadata_url.is_empty() {
            let m = self
                .documents
                .current(&self.http, sp.connection, &o.metadata_url, &o.entity_id, self.clock.now())
                .await?;
            sp.idp = Idp::with_metadata(o, m);
        }
        if sp.idp.certificates.is_empty() {
            // The registry refuses this without metadata_url; the document reader refuses a
            // document without one.
            return Err(misconfigured(sp.connection, "has no IdP signing certificate; no response can be trusted"));
        }
        Ok(sp)
    }

    /// `answer` once more with the IdP's metadata document fetched again, when its first
    /// try failed on the signature and the document now holds other certificates (the IdP
    /// rolled its signing key over); else the first answer.
    async fn after_rollover<'a>(
        &self,
        sp: &Sp<'a>,
        first: Result<Completed, ConnectorError>,
        answer: impl FnOnce(&Sp<'a>) -> Result<Completed, ConnectorError>,
    ) -> Result<Completed, ConnectorError> {
        let signature_failed =
            matches!(&first, Err(ConnectorError::Rejected { reason, .. }) if *reason == SIGNATURE_INVALID);
        let Some(held) = sp.idp.metadata.as_ref().filter(|_| signature_failed) else { return first };
        let o = sp.options;
        let now = self.clock.now();
        let Some(m) = self.documents.renewed(&self.http, sp.connection, &o.metadata_url, &o.entity_id, held, now).await
        else {
            return first;
        };
        tracing::info!(
            connection = sp.connection,
            "the IdP metadata holds other signing certificates now: the response is checked against them"
        );
        let renewed = Sp {
            connection: sp.connection,
            entity_id: sp.entity_id.clone(),
            options: o,
            idp: Idp::with_metadata(o, m),
        };
        answer(&renewed)
    }

    /// The signed part of the response, checked: the assertion, as samael verified it, then
    /// the rules this connector adds on the controllable clock.
    ///
    /// `signed_response`: the response's own signature was verified already, over its
    /// encrypted form, and `xml` (the decrypted response) no longer carries it; the
    /// assertion is then checked by its own signature when it carries one, else trusted as
    /// part of the verified response.
    fn verify(
        &self,
        sp: &Sp<'_>,
        xml: &str,
        acs: &str,
        request_id: Option<&str>,
        issuer_seen: Option<&str>,
        signed_response: bool,
    ) -> Result<Assertion, ConnectorError> {
        let o = sp.options;
        let certificates = sp.idp.certificates.clone();
        if certificates.is_empty() {
            return Err(misconfigured(sp.connection, "its IdP signing certificates hold no certificate"));
        }
        let assertion_signed = xml::parse(xml).is_ok_and(|root| {
            root.child(xml::ASSERTION_NS, "Assertion").is_some_and(|a| a.child(xml::DSIG_NS, "Signature").is_some())
        });
        // samael checks no signature when the IdP metadata holds no certificate: only ever
        // left out when the response's signature, which covers the assertion, was verified.
        let key_descriptors = if signed_response && !assertion_signed {
            vec![]
        } else {
            vec![KeyDescriptor {
                key_use: Some("signing".into()),
                key_info: samael::key_info::KeyInfo {
                    id: None,
                    x509_data: Some(samael::key_info::X509Data { certificates }),
                },
                encryption_methods: None,
            }]
        };
        // The issuer samael compares against: the connection's, or (when it names none) the
        // one the response claims — then only the signature ties the response to the IdP.
        let idp_entity =
            if sp.idp.entity_id.is_empty() { issuer_seen.map(str::to_owned) } else { Some(sp.idp.entity_id.clone()) };
        let idp = EntityDescriptor {
            entity_id: idp_entity.clone(),
            idp_sso_descriptors: Some(vec![IdpSsoDescriptor {
                id: None,
                valid_until: None,
                cache_duration: None,
                protocol_support_enumeration: Some(String::from_utf8_lossy(PROTOCOL_NS).into_owned()),
                error_url: None,
                signature: None,
                key_descriptors,
                organization: None,
                contact_people: vec![],
                artifact_resolution_service: vec![],
                single_logout_services: vec![],
                manage_name_id_services: vec![],
                name_id_formats: vec![],
                want_authn_requests_signed: None,
                single_sign_on_services: vec![],
                name_id_mapping_services: vec![],
                assertion_id_request_services: vec![],
                attribute_profiles: vec![],
                attributes: vec![],
            }]),
            ..EntityDescriptor::default()
        };
        let service = ServiceProvider {
            entity_id: Some(sp.entity_id.clone()),
            acs_url: Some(acs.to_owned()),
            metadata_url: None,
            slo_url: None,
            idp_metadata: idp,
            // Unsolicited (no request id): `check` then requires that no InResponseTo is set.
            allow_idp_initiated: request_id.is_none(),
            max_issue_delay: chrono::Duration::from_std(MAX_ISSUE_AGE).unwrap_or_default(),
            max_clock_skew: chrono::Duration::from_std(SKEW).unwrap_or_default(),
            allowed_signature_algorithms: samael_algorithms(o),
            ..ServiceProvider::default()
        };
        let request_ids = request_id.map(|r| [r]);
        let assertion = service.parse_xml_response(xml, request_ids.as_ref().map(|r| &r[..])).map_err(|e| match e {
            samael::service_provider::Error::FailedToValidateSignature => rejected(
                sp,
                SIGNATURE_INVALID,
                format!(
                    "the response carries no valid signature by the connection's IdP certificates with {}{} over \
                         its assertion or the whole response",
                    o.signature_algorithm.as_str(),
                    if o.allow_sha1 { " or rsa-sha1" } else { "" }
                ),
            ),
            e => rejected(
                sp,
                "SAML_RESPONSE_INVALID",
                format!("the response was refused: {}", short(&e.to_string(), 300)),
            ),
        })?;
        self.check(sp, &assertion, acs, request_id, idp_entity.as_deref())?;
        Ok(assertion)
    }

    /// The rules checked again (or only) here, on the controllable clock.
    fn check(
        &self,
        sp: &Sp<'_>,
        a: &Assertion,
        acs: &str,
        request_id: Option<&str>,
        idp_entity: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let now = self.clock.now();
        let bad = |m: String| Err(rejected(sp, "SAML_ASSERTION_INVALID", m));
        if let Some(issuer) = idp_entity
            && a.issuer.value.as_deref() != Some(issuer)
        {
            return bad(format!("the assertion's issuer is not {issuer:?}"));
        }
        let issued = to_system(a.issue_instant);
        if issued > now + SKEW {
            return bad("the assertion was issued in the future (IssueInstant)".into());
        }
        if issued + MAX_ISSUE_AGE + SKEW < now {
            return bad("the assertion was issued too long ago (IssueInstant)".into());
        }
        let Some(c) = &a.conditions else { return bad("the assertion has no Conditions (audience)".into()) };
        if let Some(nb) = c.not_before
            && to_system(nb) > now + SKEW
        {
            return bad("the assertion is not valid yet (NotBefore)".into());
        }
        if let Some(na) = c.not_on_or_after
            && to_system(na) + SKEW <= now
        {
            return bad("the assertion has expired (NotOnOrAfter)".into());
        }
        let restrictions = c.audience_restrictions.as_deref().unwrap_or_default();
        if restrictions.is_empty() || !restrictions.iter().all(|r| r.audience.iter().any(|x| x == &sp.entity_id)) {
            return bad(format!("the assertion's audience is not this service provider ({:?})", sp.entity_id));
        }
        let confirmed = a
            .subject
            .as_ref()
            .and_then(|s| s.subject_confirmations.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.method.as_deref() == Some(BEARER))
            .filter_map(|c| c.subject_confirmation_data.as_ref())
            .any(|d| {
                d.recipient.as_deref() == Some(acs)
                    && d.in_response_to.as_deref() == request_id
                    && d.not_on_or_after.is_some_and(|t| to_system(t) + SKEW > now)
                    && d.not_before.is_none_or(|t| to_system(t) <= now + SKEW)
            });
        if !confirmed {
            return bad(if request_id.is_some() {
                "the assertion's bearer confirmation does not hold (recipient, InResponseTo of this login, or \
                 NotOnOrAfter)"
                    .into()
            } else {
                "the assertion's bearer confirmation does not hold (recipient, no InResponseTo for an IdP-initiated \
                 login, or NotOnOrAfter)"
                    .into()
            });
        }
        Ok(())
    }

    /// Reads a posted `SAMLResponse` into the user it logs in: the answer to the request
    /// `request_id`, or (`None`) an unsolicited one, which must then answer no request. Its
    /// destination and recipient are the tenant's `callback_url`, or that URL with
    /// `?connection=<name>` (where an IdP posts IdP-initiated logins).
    fn answer(
        &self,
        sp: &Sp<'_>,
        conn: &Resolved,
        params: &HashMap<String, String>,
        callback_url: &str,
        request_id: Option<&str>,
    ) -> Result<Completed, ConnectorError> {
        let Some(encoded) = params.get("SAMLResponse").filter(|r| !r.is_empty()) else {
            return Err(rejected(sp, "SAML_RESPONSE_MISSING", "the identity provider posted no SAMLResponse"));
        };
        if encoded.len() > MAX_RESPONSE {
            return Err(rejected(sp, "SAML_RESPONSE_INVALID", "the SAMLResponse is too large"));
        }
        let compact: String = encoded.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = STANDARD
            .decode(compact)
            .map_err(|_| rejected(sp, "SAML_RESPONSE_INVALID", "the SAMLResponse is not base64"))?;
        let xml = String::from_utf8(bytes)
            .map_err(|_| rejected(sp, "SAML_RESPONSE_INVALID", "the SAMLResponse is not UTF-8 XML"))?;
        let outer = shape(&xml).map_err(|m| rejected(sp, "SAML_RESPONSE_INVALID", m))?;
        if !outer.response_root {
            return Err(rejected(sp, "SAML_RESPONSE_INVALID", "the document is not a SAML protocol Response"));
        }
        if let Some(status) = outer.status.as_deref().filter(|s| *s != STATUS_SUCCESS) {
            let message = outer.status_message.as_deref().map(|m| format!(": {}", short(m, 200))).unwrap_or_default();
            return Err(ConnectorError::Denied {
                message: format!(
                    "connection {:?}: the identity provider answered {}{message}",
                    sp.connection,
                    short(status, 120)
                ),
            });
        }
        let one_assertion = |s: &Shape| {
            if s.assertions + s.encrypted == 1 {
                Ok(())
            } else {
                Err(rejected(
                    sp,
                    "SAML_RESPONSE_INVALID",
                    format!(
                        "a response must carry exactly one assertion; this one carries {}",
                        s.assertions + s.encrypted
                    ),
                ))
            }
        };
        one_assertion(&outer)?;
        let (xml, signed_response) = if outer.encrypted > 0 {
            let Some(key) = conn.secret(names::DECRYPTION_KEY) else {
                return Err(rejected(
                    sp,
                    "SAML_ENCRYPTION_NOT_CONFIGURED",
                    "the response carries an encrypted assertion, and the connection holds no decryption_key: set \
                     decryption_key and decryption_certificate, and give the identity provider the SP metadata \
                     again (or turn assertion encryption off there)",
                ));
            };
            self.decrypted(sp, &xml, key.expose())?
        } else if sp.options.require_encrypted_assertions {
            return Err(rejected(
                sp,
                "SAML_ASSERTION_NOT_ENCRYPTED",
                "the response carries a plain assertion, and the connection requires encrypted assertions \
                 (require_encrypted_assertions): turn assertion encryption on at the identity provider with the \
                 certificate of the SP metadata",
            ));
        } else {
            (xml, false)
        };
        // The decrypted document is read again as a whole: exactly one assertion, no
        // other one hidden inside the encrypted one.
        let decrypted_shape = shape(&xml).map_err(|m| rejected(sp, "SAML_RESPONSE_INVALID", m))?;
        if decrypted_shape.encrypted > 0 {
            return Err(rejected(sp, "SAML_RESPONSE_INVALID", "the decrypted assertion holds an encrypted one"));
        }
        one_assertion(&decrypted_shape)?;
        let root = xml::parse(&xml).map_err(|m| rejected(sp, "SAML_RESPONSE_INVALID", m))?;
        check_signature_algorithms(sp, &root)?;
        if request_id.is_none() && outer.in_response_to.is_some() {
            return Err(rejected(
                sp,
                "SAML_RESPONSE_INVALID",
                "the response answers a request (InResponseTo) that no login here is waiting for: an IdP-initiated \
                 login carries no InResponseTo",
            ));
        }
        let with_connection = acs_with_connection(callback_url, sp.connection);
        let acs = if outer.destination.as_deref() == Some(with_connection.as_str()) {
            with_connection.as_str()
        } else {
            callback_url
        };
        let assertion = self.verify(sp, &xml, acs, request_id, outer.issuer.as_deref(), signed_response)?;
        let profile = external_profile(sp, &assertion)?;
        // Remembered until the assertion could no longer be accepted anyway.
        let until = [
            assertion.conditions.as_ref().and_then(|c| c.not_on_or_after),
            assertion
                .subject
                .as_ref()
                .and_then(|s| s.subject_confirmations.as_ref())
                .and_then(|c| c.iter().filter_map(|c| c.subject_confirmation_data.as_ref()?.not_on_or_after).max()),
        ]
        .into_iter()
        .flatten()
        .map(to_system)
        .max()
        .unwrap_or_else(|| self.clock.now() + DEFAULT_REPLAY_WINDOW);
        let issuer = assertion.issuer.value.clone().unwrap_or_default();
        let key = hex::encode(Sha256::digest(format!("{issuer}\n{}", assertion.id).as_bytes()));
        Ok(Completed {
            profile,
            tokens: None,
            partial_profile: false,
            one_time_id: Some(OneTimeId { key, until: until.max(self.clock.now()) + SKEW }),
            upstream_session: LoginSession::of(&assertion).and_then(|s| serde_json::to_string(&s).ok()),
        })
    }

    /// The response with its encrypted assertion decrypted in place, and whether the
    /// response's own signature was verified (over the encrypted form, which the decrypted
    /// document no longer matches: that signature is left out of it).
    fn decrypted(&self, sp: &Sp<'_>, xml: &str, key_pem: &str) -> Result<(String, bool), ConnectorError> {
        let invalid = |m: String| rejected(sp, "SAML_RESPONSE_INVALID", m);
        let root = xml::parse(xml).map_err(invalid)?;
        let signed = root.child(xml::DSIG_NS, "Signature").is_some();
        let (source, root) = if signed {
            check_signature_algorithms(sp, &root)?;
            let allowed = samael_algorithms(sp.options);
            let reduced = Crypto::reduce_xml_to_signed_with_allowed_algorithms(
                xml,
                &certificates_der(&sp.idp),
                ReduceMode::ValidateAndMarkNoAncestors,
                allowed.as_deref(),
            )
            .map_err(|_| {
                rejected(
                    sp,
                    SIGNATURE_INVALID,
                    format!(
                        "the response's signature is not a valid signature by the connection's IdP certificates \
                         with {}",
                        sp.options.signature_algorithm.as_str()
                    ),
                )
            })?;
            let reduced_root = xml::parse(&reduced).map_err(invalid)?;
            if !reduced_root.is(xml::PROTOCOL_NS, "Response") {
                return Err(invalid("the response's signature does not cover the whole response".into()));
            }
            (reduced, reduced_root)
        } else {
            (xml.to_owned(), root)
        };
        let Some(encrypted) = root.child(xml::ASSERTION_NS, "EncryptedAssertion") else {
            return Err(invalid("the encrypted assertion is not a child of the response".into()));
        };
        let assertion = decrypt::decrypt_assertion(encrypted, key_pem).map_err(|e| {
            rejected(
                sp,
                match e {
                    decrypt::DecryptError::Failed => "SAML_DECRYPTION_FAILED",
                    decrypt::DecryptError::Unsupported(_) => "SAML_ENCRYPTION_NOT_SUPPORTED",
                },
                e,
            )
        })?;
        let mut edits = vec![(encrypted.span, assertion)];
        edits.extend(root.children.iter().filter(|c| c.is(xml::DSIG_NS, "Signature")).map(|c| (c.span, String::new())));
        let plain = splice(&source, edits)
            .ok_or_else(|| invalid("the response cannot be rebuilt with its assertion decrypted".into()))?;
        Ok((plain, signed))
    }

    fn request_url(
        &self,
        sp: &Sp<'_>,
        conn: &Resolved,
        tx: &RedirectTransaction,
        id: &str,
    ) -> Result<String, ConnectorError> {
        let o = sp.options;
        let request = AuthnRequest {
            id: id.to_owned(),
            version: "2.0".into(),
            issue_instant: to_chrono(self.clock.now()),
            destination: Some(sp.idp.sign_in_url.clone()),
            issuer: Some(Issuer { value: Some(sp.entity_id.clone()), ..Issuer::default() }),
            assertion_consumer_service_url: Some(tx.callback_url.clone()),
            protocol_binding: Some(HTTP_POST.into()),
            name_id_policy: Some(NameIdPolicy { allow_create: Some(true), ..NameIdPolicy::default() }),
            ..AuthnRequest::default()
        };
        let fail = |e: &dyn std::fmt::Display| misconfigured(sp.connection, format!("the request cannot be made: {e}"));
        if o.binding == SamlBinding::HttpPost {
            // Handled by the caller.
            return Err(fail(&"HTTP-POST"));
        }
        let url = request.redirect(&tx.state).map_err(|e| fail(&e))?.ok_or_else(|| fail(&"no sign-in URL"))?;
        if !o.sign_request {
            return Ok(url.to_string());
        }
        let key = conn
            .secret(names::REQUEST_SIGNING_KEY)
            .ok_or_else(|| misconfigured(sp.connection, "signs requests but has no request_signing_key"))?;
        sign_query(url, key.expose(), o.signature_algorithm)
            .map_err(|e| misconfigured(sp.connection, format!("the request signing key cannot sign: {e}")))
    }
}

/// Signs an HTTP-Redirect query (SAML bindings 3.4.4.1): `SigAlg`, then the signature of the
/// encoded query so far as `Signature`.
fn sign_query(mut url: url::Url, key_pem: &str, algorithm: SamlSignatureAlgorithm) -> Result<String, String> {
    let (uri, digest) = match algorithm {
        SamlSignatureAlgorithm::RsaSha256 => {
            ("http://www.w3.org/2001/04/xmldsig-more#rsa-sha256", openssl::hash::MessageDigest::sha256())
        }
        SamlSignatureAlgorithm::RsaSha512 => {
            ("http://www.w3.org/2001/04/xmldsig-more#rsa-sha512", openssl::hash::MessageDigest::sha512())
        }
    };
    let key = openssl::pkey::PKey::private_key_from_pem(key_pem.as_bytes()).map_err(|_| "not a PEM private key")?;
    if key.rsa().is_err() {
        return Err("not an RSA key".into());
    }
    url.query_pairs_mut().append_pair("SigAlg", uri);
    let signed = url.query().unwrap_or_default().to_owned();
    let mut signer = openssl::sign::Signer::new(digest, &key).map_err(|e| e.to_string())?;
    signer.update(signed.as_bytes()).map_err(|e| e.to_string())?;
    let signature = signer.sign_to_vec().map_err(|e| e.to_string())?;
    url.query_pairs_mut().append_pair("Signature", &STANDARD.encode(signature));
    Ok(url.to_string())
}

/// An `AuthnRequest` for the HTTP-POST binding, signed in the document (an enveloped XML
/// signature after its `Issuer`, exclusive canonicalization, RSA with SHA-256 or SHA-512 and
/// the same digest) by `key_pem`, with `certificate_pem`'s certificate in its `KeyInfo` when
/// there is one.
fn signed_request(
    mut request: AuthnRequest,
    key_pem: &str,
    certificate_pem: &str,
    algorithm: SamlSignatureAlgorithm,
) -> Result<String, String> {
    use samael::signature::{DigestAlgorithm, Signature, SignatureAlgorithm};
    let key = openssl::pkey::PKey::private_key_from_pem(key_pem.as_bytes()).map_err(|_| "not a PEM private key")?;
    if key.rsa().is_err() {
        return Err("not an RSA key".into());
    }
    let key_der = key.private_key_to_pkcs8().map_err(|e| e.to_string())?;
    let certificate = pem_bodies(certificate_pem).first().and_then(|b| STANDARD.decode(b).ok());
    let in_key_info = certificate.is_some();
    let mut signature = Signature::template(&request.id, &CertificateDer::from(certificate.unwrap_or_default()));
    if !in_key_info {
        signature.key_info = None;
    }
    let wanted = self::algorithm(algorithm);
    signature.signed_info.signature_method.algorithm = SignatureAlgorithm::Unsupported(wanted.signature_uri().into());
    for reference in &mut signature.signed_info.reference {
        reference.digest_method.algorithm = DigestAlgorithm::Unsupported(wanted.digest_uri().into());
    }
    request.signature = Some(signature);
    request.to_signed_xml(&key_der).map_err(|e| e.to_string())
}

/// Whether the certificate the metadata publishes is the signing key's.
fn key_matches_certificate(key_pem: &str, certificate_pem: &str) -> Result<(), String> {
    if certificate_pem.is_empty() {
        return Err("request_signing_certificate is empty: the IdP cannot learn the key from the SP metadata".into());
    }
    let key = openssl::pkey::PKey::private_key_from_pem(key_pem.as_bytes()).map_err(|_| "not a PEM private key")?;
    let cert = openssl::x509::X509::from_pem(certificate_pem.as_bytes())
        .map_err(|_| "request_signing_certificate is not a PEM certificate")?;
    let public = cert.public_key().map_err(|e| e.to_string())?;
    if public.public_eq(&key) {
        Ok(())
    } else {
        Err("request_signing_certificate is not the certificate of request_signing_key".into())
    }
}

/// What a Single Logout needs of a login, kept on its SSO session: the assertion's subject
/// as the IdP wrote it, and the IdP's session index.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LoginSession {
    name_id: String,
    #[serde(default)]
    format: String,
    #[serde(default)]
    session_index: String,
}

impl LoginSession {
    fn of(a: &Assertion) -> Option<Self> {
        let name_id = a.subject.as_ref()?.name_id.as_ref()?;
        let session_index =
            a.authn_statements.iter().flatten().find_map(|s| s.session_index.clone()).unwrap_or_default();
        Some(Self { name_id: name_id.value.clone(), format: name_id.format.clone().unwrap_or_default(), session_index })
    }
}

/// A `LogoutRequest` (SAML core 3.7.1) from `issuer` to `destination` for `session`.
fn logout_request(id: &str, instant: &str, issuer: &str, destination: &str, session: &LoginSession) -> String {
    let format =
        if session.format.is_empty() { String::new() } else { format!(" Format=\"{}\"", xml_escape(&session.format)) };
    let index = if session.session_index.is_empty() {
        String::new()
    } else {
        format!("<samlp:SessionIndex>{}</samlp:SessionIndex>", xml_escape(&session.session_index))
    };
    format!(
        "<samlp:LogoutRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" \
         xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"{id}\" Version=\"2.0\" \
         IssueInstant=\"{instant}\" Destination=\"{destination}\"><saml:Issuer>{issuer}</saml:Issuer>\
         <saml:NameID{format}>{name_id}</saml:NameID>{index}</samlp:LogoutRequest>",
        destination = xml_escape(destination),
        issuer = xml_escape(issuer),
        name_id = xml_escape(&session.name_id),
    )
}

/// `message` for the HTTP-Redirect binding (SAML bindings 3.4.4.1): raw DEFLATE, then base64.
fn deflated(message: &str) -> Result<String, std::io::Error> {
    use std::io::Write as _;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(message.as_bytes())?;
    Ok(STANDARD.encode(encoder.finish()?))
}

/// Postern's logout callback beside the login callback `callback_url`
/// (`/<tenant>/login/callback` → `/<tenant>/logout/callback`): the SP's single logout
/// service, where the IdP answers a `LogoutRequest`.
fn logout_callback_of(callback_url: &str) -> String {
    match callback_url.strip_suffix("/login/callback") {
        Some(base) => format!("{base}/logout/callback"),
        None => callback_url.to_owned(),
    }
}

/// The request id of a transaction: unpredictable (from its sealed nonce), an NCName.
fn request_id(tx: &RedirectTransaction) -> String {
    let digest = Sha256::digest(format!("postern saml request id\n{}", tx.nonce).as_bytes());
    format!("_{}", hex::encode(&digest[..20]))
}

/// Escapes text for an XML attribute or element.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// The callback URL naming the connection, where an IdP posts IdP-initiated logins.
fn acs_with_connection(callback_url: &str, connection: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new()).append_pair("connection", connection).finish();
    format!("{callback_url}?{query}")
}

/// The SP metadata document of a connection.
fn metadata_document(sp: &Sp<'_>, acs: &str) -> String {
    let o = sp.options;
    let mut keys = String::new();
    if o.sign_request {
        for body in pem_bodies(&o.request_signing_certificate) {
            keys.push_str(&format!(
                "    <md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>\n",
                xml_escape(&body)
            ));
        }
    }
    // The certificate the IdP encrypts assertions to, with what this side decrypts.
    for body in pem_bodies(&o.decryption_certificate) {
        let methods: String =
            decrypt::ENCRYPTION_METHODS.iter().map(|m| format!("<md:EncryptionMethod Algorithm=\"{m}\"/>")).collect();
        keys.push_str(&format!(
            "    <md:KeyDescriptor use=\"encryption\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>{methods}</md:KeyDescriptor>\n",
            xml_escape(&body)
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\" entityID=\"{entity}\">\n\
         \x20 <md:SPSSODescriptor AuthnRequestsSigned=\"{signed}\" WantAssertionsSigned=\"true\" protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">\n\
         {keys}\
         \x20   <md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified</md:NameIDFormat>\n\
         \x20   <md:NameIDFormat>{email}</md:NameIDFormat>\n\
         \x20   <md:NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:persistent</md:NameIDFormat>\n\
         \x20   <md:SingleLogoutService Binding=\"{redirect}\" Location=\"{slo}\"/>\n\
         \x20   <md:AssertionConsumerService index=\"0\" isDefault=\"true\" Binding=\"{post}\" Location=\"{acs}\"/>\n\
         {unsolicited}\
         \x20 </md:SPSSODescriptor>\n\
         </md:EntityDescriptor>\n",
        entity = xml_escape(&sp.entity_id),
        signed = o.sign_request,
        email = EMAIL_FORMAT,
        post = HTTP_POST,
        redirect = HTTP_REDIRECT,
        slo = xml_escape(&logout_callback_of(acs)),
        acs = xml_escape(acs),
        unsolicited = if o.idp_initiated.enabled {
            format!(
                "    <md:AssertionConsumerService index=\"1\" Binding=\"{HTTP_POST}\" Location=\"{}\"/>\n",
                xml_escape(&acs_with_connection(acs, sp.connection))
            )
        } else {
            String::new()
        },
    )
}

/// The user an assertion describes.
fn external_profile(sp: &Sp<'_>, a: &Assertion) -> Result<ExternalProfile, ConnectorError> {
    let name_id = a.subject.as_ref().and_then(|s| s.name_id.as_ref());
    let Some(name_id) = name_id.filter(|n| !n.value.trim().is_empty() && n.value.len() <= 255) else {
        return Err(rejected(sp, "SAML_ASSERTION_INVALID", "the assertion names no usable subject (NameID)"));
    };
    let nameid = name_id.value.trim().to_owned();
    let mut raw = Map::new();
    let mut by_any_name: HashMap<String, Vec<String>> = HashMap::new();
    let mut groups: Vec<Value> = Vec::new();
    for statement in a.attribute_statements.iter().flatten() {
        for attr in &statement.attributes {
            let values: Vec<String> = attr.values.iter().filter_map(|v| v.value.clone()).collect();
            let Some(name) = attr.name.clone().filter(|n| !n.is_empty()) else { continue };
            if GROUP_ATTRIBUTES.iter().any(|g| *g == name || attr.friendly_name.as_deref() == Some(*g)) {
                groups.extend(values.iter().cloned().map(Value::String));
            }
            let value = match values.as_slice() {
                [one] => Value::String(one.clone()),
                many => Value::Array(many.iter().cloned().map(Value::String).collect()),
            };
            raw.insert(name.clone(), value);
            by_any_name.entry(name).or_default().extend(values.iter().cloned());
            if let Some(friendly) = attr.friendly_name.clone().filter(|f| !f.is_empty()) {
                by_any_name.entry(friendly).or_default().extend(values);
            }
        }
    }
    let first = |names: &[&str]| -> String {
        names.iter().find_map(|n| by_any_name.get(*n).and_then(|v| v.first()).cloned()).unwrap_or_default()
    };
    let m = &sp.options.attributes;
    let mut email = first(&[m.email.as_str(), "mail", "email", "urn:oid:0.9.2342.19200300.100.1.3"]);
    if email.is_empty() && name_id.format.as_deref() == Some(EMAIL_FORMAT) {
        email.clone_from(&nameid);
    }
    let profile = postern_connector::Profile {
        email: email.to_lowercase(),
        email_verified: false,
        name: first(&[m.name.as_str(), "displayName", "cn"]),
        given_name: first(&[m.given_name.as_str(), "givenName"]),
        family_name: first(&[m.family_name.as_str(), "sn", "surname"]),
        ..postern_connector::Profile::default()
    };
    if !groups.is_empty() {
        raw.insert("groups".into(), Value::Array(groups));
    }
    raw.insert("nameid".into(), Value::String(nameid.clone()));
    if let Some(f) = &name_id.format {
        raw.insert("nameid_format".into(), Value::String(f.clone()));
    }
    if let Some(i) = &a.issuer.value {
        raw.insert("issuer".into(), Value::String(i.clone()));
    }
    Ok(ExternalProfile {
        source_id: format!("{}|{nameid}", sp.connection),
        profile,
        raw: Value::Object(raw),
        user_metadata: Map::new(),
        app_metadata: Map::new(),
    })
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// A certificate's subject, for messages.
fn subject(cert: &openssl::x509::X509Ref) -> String {
    cert.subject_name().entries().map(|e| e.data().to_string().unwrap_or_default()).collect::<Vec<_>>().join(", ")
}

/// Whether `cert` is valid on `now`: `Ok` with its end date, else why not.
fn valid_on(cert: &openssl::x509::X509Ref, now: &openssl::asn1::Asn1TimeRef) -> Result<String, String> {
    let subject = subject(cert);
    let (nb, na) = (cert.not_before(), cert.not_after());
    if nb > now {
        return Err(format!("the certificate of {subject:?} is not valid before {nb}"));
    }
    if na < now {
        return Err(format!("the certificate of {subject:?} expired on {na}"));
    }
    Ok(format!("{subject:?} valid until {na}"))
}

/// The validity of each IdP certificate trusted on `now`.
fn check_certificates(idp: &Idp, now: SystemTime) -> Result<String, String> {
    let now = openssl::asn1::Asn1Time::from_unix(unix(now)).map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    for body in &idp.certificates {
        let der = STANDARD.decode(body).map_err(|_| "a certificate is not base64 DER".to_owned())?;
        let cert = openssl::x509::X509::from_der(&der).map_err(|_| "a certificate is not X.509".to_owned())?;
        found.push(valid_on(&cert, &now)?);
    }
    if found.is_empty() {
        return Err("the connection holds no IdP certificate".into());
    }
    Ok(format!("{} certificate(s): {}", found.len(), found.join("; ")))
}

/// The decryption key against the certificate the metadata publishes for encryption: the
/// sealed key opened (it is here and parses as an RSA key), the certificate valid on `now`,
/// and a value encrypted to the certificate with RSA-OAEP (as an IdP encrypts the content
/// key) decrypted by the key. Says nothing of the key but that it works.
fn check_decryption(o: &SamlOptions, key: Option<&str>, now: SystemTime) -> Result<String, String> {
    use openssl::pkey::PKey;
    use openssl::rsa::Padding;
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Err("decryption_key is not set: encrypted assertions cannot be decrypted; set decryption_key (the \
                    PEM RSA private key of decryption_certificate)"
            .into());
    };
    if o.decryption_certificate.is_empty() {
        return Err("decryption_certificate is empty: the SP metadata publishes no certificate for the identity \
                    provider to encrypt to"
            .into());
    }
    let key = PKey::private_key_from_pem(key.as_bytes())
        .map_err(|_| "the sealed decryption_key opened but does not parse as a PEM private key".to_owned())?;
    let rsa = key.rsa().map_err(|_| "decryption_key is not an RSA key (RSA-OAEP key transport)".to_owned())?;
    let cert = openssl::x509::X509::from_pem(o.decryption_certificate.as_bytes())
        .map_err(|_| "decryption_certificate does not parse as a PEM certificate".to_owned())?;
    let public = cert.public_key().map_err(|_| "decryption_certificate holds no usable public key".to_owned())?;
    if !public.public_eq(&key) {
        return Err("decryption_key is not the key of decryption_certificate: the identity provider would encrypt \
                    to a key this side does not hold"
            .into());
    }
    let now = openssl::asn1::Asn1Time::from_unix(unix(now)).map_err(|e| e.to_string())?;
    let valid = valid_on(&cert, &now)?;
    // A content key's round trip, as an IdP's EncryptedKey would carry it.
    let mut probe = [0u8; 32];
    openssl::rand::rand_bytes(&mut probe).map_err(|e| e.to_string())?;
    let public = public.rsa().map_err(|_| "decryption_certificate's key is not an RSA key".to_owned())?;
    let mut sealed = vec![0; public.size() as usize];
    let n = public.public_encrypt(&probe, &mut sealed, Padding::PKCS1_OAEP).map_err(|e| e.to_string())?;
    let mut opened = vec![0; rsa.size() as usize];
    let m = rsa
        .private_decrypt(&sealed[..n], &mut opened, Padding::PKCS1_OAEP)
        .map_err(|_| "decryption_key cannot decrypt what is encrypted to decryption_certificate".to_owned())?;
    if opened[..m] != probe {
        return Err("decryption_key cannot decrypt what is encrypted to decryption_certificate".into());
    }
    Ok(format!(
        "the sealed decryption_key opens and decrypts what is encrypted to decryption_certificate (RSA-OAEP); \
         certificate {valid}"
    ))
}

#[async_trait]
impl RedirectConnector for SamlConnector {
    /// SAML Single Logout, SP-initiated by HTTP-Redirect: a `LogoutRequest` for the login's
    /// `NameID` and `SessionIndex` to the IdP's `sign_out_url`, signed as the connection signs
    /// its requests (`sign_request`), whose `RelayState` brings the browser back through
    /// Postern's logout callback (the SP metadata's `SingleLogoutService`) to the
    /// application. `None` without a `sign_out_url`, or for a session that kept no subject.
    async fn logout(
        &self,
        tenant: &str,
        conn: &Resolved,
        logout: &UpstreamLogout<'_>,
    ) -> Result<Option<String>, ConnectorError> {
        let sp = sp(tenant, conn)?;
        let o = sp.options;
        if o.sign_out_url.is_empty() {
            return Ok(None);
        }
        let Ok(session) = serde_json::from_str::<LoginSession>(logout.session) else { return Ok(None) };
        let digest = Sha256::digest(format!("postern saml logout request id\n{}", logout.relay).as_bytes());
        let id = format!("_{}", hex::encode(&digest[..20]));
        let instant = to_chrono(self.clock.now()).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let xml = logout_request(&id, &instant, &sp.entity_id, &o.sign_out_url, &session);
        let fail =
            |e: &dyn std::fmt::Display| misconfigured(sp.connection, format!("the logout request cannot be made: {e}"));
        let mut url = url::Url::parse(&o.sign_out_url).map_err(|e| fail(&e))?;
        url.query_pairs_mut().append_pair("SAMLRequest", &deflated(&xml).map_err(|e| fail(&e))?);
        if !logout.relay.is_empty() {
            url.query_pairs_mut().append_pair("RelayState", logout.relay);
        }
        if !o.sign_request {
            return Ok(Some(url.to_string()));
        }
        let key = conn
            .secret(names::REQUEST_SIGNING_KEY)
            .ok_or_else(|| misconfigured(sp.connection, "signs requests but has no request_signing_key"))?;
        sign_query(url, key.expose(), o.signature_algorithm)
            .map(Some)
            .map_err(|e| misconfigured(sp.connection, format!("the request signing key cannot sign: {e}")))
    }

    async fn begin(&self, tenant: &str, conn: &Resolved, tx: &RedirectTransaction) -> Result<Begun, ConnectorError> {
        let sp = self.trusted(tenant, conn).await?;
        if sp.idp.sign_in_url.is_empty() {
            let offered: Vec<&str> =
                sp.idp.metadata.iter().flat_map(|m| m.sso.iter().map(|(b, _)| b.as_str())).collect();
            return Err(misconfigured(
                sp.connection,
                format!(
                    "the IdP metadata names no single sign-on service for {} (it offers [{}]): set sign_in_url, or \
                     the binding it offers",
                    binding_uri(sp.options.binding),
                    offered.join(", ")
                ),
            ));
        }
        let id = request_id(tx);
        let data = serde_json::to_value(Kept { request_id: id.clone() }).unwrap_or(Value::Null);
        if sp.options.binding == SamlBinding::HttpPost {
            let request = AuthnRequest {
                id: id.clone(),
                version: "2.0".into(),
                issue_instant: to_chrono(self.clock.now()),
                destination: Some(sp.idp.sign_in_url.clone()),
                issuer: Some(Issuer { value: Some(sp.entity_id.clone()), ..Issuer::default() }),
                assertion_consumer_service_url: Some(tx.callback_url.clone()),
                protocol_binding: Some(HTTP_POST.into()),
                name_id_policy: Some(NameIdPolicy { allow_create: Some(true), ..NameIdPolicy::default() }),
                ..AuthnRequest::default()
            };
            let o = sp.options;
            let xml = if o.sign_request {
                let key = conn
                    .secret(names::REQUEST_SIGNING_KEY)
                    .ok_or_else(|| misconfigured(sp.connection, "signs requests but has no request_signing_key"))?;
                signed_request(request, key.expose(), &o.request_signing_certificate, o.signature_algorithm)
                    .map_err(|e| misconfigured(sp.connection, format!("the request signing key cannot sign: {e}")))?
            } else {
                request
                    .to_string()
                    .map_err(|e| misconfigured(sp.connection, format!("the request cannot be made: {e}")))?
            };
            return Ok(Begun {
                request: UpstreamRequest::FormPost {
                    url: sp.idp.sign_in_url.clone(),
                    fields: vec![("SAMLRequest".into(), STANDARD.encode(xml)), ("RelayState".into(), tx.state.clone())],
                },
                data,
            });
        }
        let url = self.request_url(&sp, conn, tx, &id)?;
        Ok(Begun { request: UpstreamRequest::Redirect(url), data })
    }

    async fn complete(
        &self,
        tenant: &str,
        conn: &Resolved,
        params: &HashMap<String, String>,
        tx: &RedirectTransaction,
    ) -> Result<Completed, ConnectorError> {
        let sp = self.trusted(tenant, conn).await?;
        let kept: Kept = serde_json::from_value(tx.data.clone())
            .map_err(|_| rejected(&sp, "SAML_RESPONSE_INVALID", "this login was not started as a SAML login"))?;
        let answer = |sp: &Sp<'_>| self.answer(sp, conn, params, &tx.callback_url, Some(&kept.request_id));
        self.after_rollover(&sp, answer(&sp), answer).await
    }

    fn unsolicited_client(&self, conn: &Resolved) -> Option<UnsolicitedClient> {
        let Options::Saml(o) = &conn.connection.spec.options else { return None };
        let i = &o.idp_initiated;
        i.enabled.then(|| UnsolicitedClient {
            client_id: i.client_id.clone(),
            authorize_params: url::form_urlencoded::parse(i.client_authorize_query.as_bytes()).into_owned().collect(),
        })
    }

    async fn complete_unsolicited(
        &self,
        tenant: &str,
        conn: &Resolved,
        params: &HashMap<String, String>,
        callback_url: &str,
    ) -> Result<Completed, ConnectorError> {
        if let Options::Saml(o) = &conn.connection.spec.options
            && !o.idp_initiated.enabled
        {
            return Err(rejected(
                &sp(tenant, conn)?,
                "SAML_IDP_INITIATED_DISABLED",
                "IdP-initiated logins are off for this connection (idp_initiated.enabled)",
            ));
        }
        let sp = self.trusted(tenant, conn).await?;
        let answer = |sp: &Sp<'_>| self.answer(sp, conn, params, callback_url, None);
        self.after_rollover(&sp, answer(&sp), answer).await
    }

    async fn metadata(
        &self,
        tenant: &str,
        conn: &Resolved,
        callback_url: &str,
    ) -> Result<ServiceMetadata, ConnectorError> {
        let sp = sp(tenant, conn)?;
        Ok(ServiceMetadata {
            content_type: "application/samlmetadata+xml".into(),
            document: metadata_document(&sp, callback_url),
        })
    }

    async fn test(&self, tenant: &str, conn: &Resolved) -> Result<TestReport, ConnectorError> {
        let mut sp = sp(tenant, conn)?;
        let o = sp.options;
        let mut steps = Vec::new();
        if !o.metadata_url.is_empty() {
            let started = Instant::now();
            let fetched =
                self.documents.fresh(&self.http, sp.connection, &o.metadata_url, &o.entity_id, self.clock.now()).await;
            let result = match fetched {
                Ok(f) => {
                    let m = &f.metadata;
                    let sso = m.sso(binding_uri(o.binding)).map_or_else(
                        || format!("no single sign-on service for {}", binding_uri(o.binding)),
                        |l| format!("single sign-on at {l}"),
                    );
                    let detail = format!(
                        "entity {:?}: {} signing certificate(s), {sso}; kept {} minutes",
                        m.entity_id,
                        m.certificates.len(),
                        f.lifetime.as_secs() / 60
                    );
                    sp.idp = Idp::with_metadata(o, f.metadata);
                    Ok(detail)
                }
                Err(e) => Err(e.to_string()),
            };
            steps.push(TestStep::of("metadata", started, result));
        }
        let started = Instant::now();
        steps.push(TestStep::of("certificates", started, check_certificates(&sp.idp, self.clock.now())));
        if o.sign_request {
            let started = Instant::now();
            let result = match conn.secret(names::REQUEST_SIGNING_KEY) {
                None => Err("sign_request is set but request_signing_key is not".to_owned()),
                Some(key) => {
                    // Signed as the connection's binding signs: over the query, or in the document.
                    let signed = if o.binding == SamlBinding::HttpPost {
                        let request = AuthnRequest { id: "_test".into(), ..AuthnRequest::default() };
                        signed_request(request, key.expose(), &o.request_signing_certificate, o.signature_algorithm)
                            .map(|_| "an HTTP-POST request")
                    } else {
                        url::Url::parse("https://idp.invalid/sso?SAMLRequest=test")
                            .map_err(|e| e.to_string())
                            .and_then(|u| sign_query(u, key.expose(), o.signature_algorithm))
                            .map(|_| "an HTTP-Redirect query")
                    };
                    signed
                        .and_then(|what| {
                            key_matches_certificate(key.expose(), &o.request_signing_certificate).map(|()| what)
                        })
                        .map(|what| {
                            format!(
                                "the request signing key signs {what} with {} and matches request_signing_certificate",
                                o.signature_algorithm.as_str()
                            )
                        })
                }
            };
            steps.push(TestStep::of("request_signing_key", started, result));
        }
        let decryption_key = conn.secret(names::DECRYPTION_KEY).map(|k| k.expose());
        if decryption_key.is_some() || !o.decryption_certificate.is_empty() || o.require_encrypted_assertions {
            let started = Instant::now();
            steps.push(TestStep::of("decryption_key", started, check_decryption(o, decryption_key, self.clock.now())));
        }
        let started = Instant::now();
        let sign_in_url = &sp.idp.sign_in_url;
        let sent = if sign_in_url.is_empty() { None } else { Some(self.http.send(self.http.get(sign_in_url)).await) };
        let result = match sent {
            None => Err(format!(
                "no sign-in URL: the connection sets none, and the IdP metadata names none for {}",
                binding_uri(o.binding)
            )),
            Some(Ok(r)) => Ok(format!("the sign-in URL {sign_in_url} answered HTTP {}", r.status().as_u16())),
            Some(Err(e)) => {
                // reqwest's own message names only the URL: the refusal or the causes say why.
                let why = match e {
                    SendError::Refused(refused) => refused.to_string(),
                    SendError::Transport(e) => {
                        std::error::Error::source(&e).map_or_else(|| e.to_string(), postern_common::error::with_causes)
                    }
                };
                Err(format!("the sign-in URL {sign_in_url} cannot be reached: {}", short(&why, 300)))
            }
        };
        steps.push(TestStep::of("sign_in_url", started, result));
        Ok(TestReport::of(steps))
    }
}

/// The unverified shape of a response, for tests of the pre-checks.
#[doc(hidden)]
pub fn assertion_count(xml: &str) -> Result<usize, String> {
    shape(xml).map(|s| s.assertions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let one = r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion"><saml:Issuer>idp</saml:Issuer><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status><saml:Assertion ID="a"><saml:Issuer>idp</saml:Issuer></saml:Assertion></samlp:Response>"#;
        let s = shape(one).expect("xml");
        assert!(s.response_root);
        assert_eq!(s.assertions, 1);
        assert_eq!(s.status.as_deref(), Some(STATUS_SUCCESS));
        assert_eq!(s.issuer.as_deref(), Some("idp"));
        let wrapped = one.replace(
            r#"<saml:Assertion ID="a">"#,
            r#"<saml:Assertion ID="evil"><saml:Subject><saml:Assertion ID="a"></saml:Assertion></saml:Subject></saml:Assertion><saml:Assertion ID="a">"#,
        );
        assert_eq!(shape(&wrapped).expect("xml").assertions, 3);
        let dtd = format!("<!DOCTYPE r [<!ENTITY x \"y\">]>{one}");
        assert!(shape(&dtd).is_err());
        let denied = one.replace("status:Success", "status:Responder");
        assert_eq!(
            shape(&denied).expect("xml").status.as_deref(),
            Some("urn:oasis:names:tc:SAML:2.0:status:Responder")
        );
    }

    #[test]
    fn a_post_request_is_signed_in_the_document_with_the_connection_algorithm() {
        let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa")).expect("key");
        let (key_pem, cert_pem) = pair(key);
        let der = STANDARD.decode(&pem_bodies(&cert_pem)[0]).expect("der");
        for (algorithm, method, digest) in [
            (SamlSignatureAlgorithm::RsaSha256, "xmldsig-more#rsa-sha256", "xmlenc#sha256"),
            (SamlSignatureAlgorithm::RsaSha512, "xmldsig-more#rsa-sha512", "xmlenc#sha512"),
        ] {
            let request = AuthnRequest {
                id: "_r1".into(),
                issuer: Some(Issuer { value: Some("urn:sp".into()), ..Issuer::default() }),
                ..AuthnRequest::default()
            };
            let xml = signed_request(request, &key_pem, &cert_pem, algorithm).expect("signed");
            assert!(xml.contains(method) && xml.contains(digest) && xml.contains("URI=\"#_r1\""), "{xml}");
            let allowed = [self::algorithm(algorithm)];
            let check = |xml: &str| {
                Crypto::reduce_xml_to_signed_with_allowed_algorithms(
                    xml,
                    &[CertificateDer::from(der.clone())],
                    ReduceMode::ValidateAndMarkNoAncestors,
                    Some(&allowed[..]),
                )
            };
            assert!(check(&xml).is_ok(), "the signature verifies: {xml}");
            assert!(check(&xml.replace("urn:sp", "urn:evil")).is_err(), "a changed request does not");
        }
        assert!(
            signed_request(AuthnRequest::default(), "not a key", &cert_pem, SamlSignatureAlgorithm::RsaSha256).is_err()
        );
    }

    #[test]
    fn pem_bodies_split_every_certificate() {
        let pem = "-----BEGIN CERTIFICATE-----\nQUJD\nREVG\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nR0hJ\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_bodies(pem), vec!["QUJDREVG".to_owned(), "R0hJ".to_owned()]);
    }

    /// A PEM private key and a self-signed PEM certificate of it, valid from now for a day.
    pub(crate) fn pair(key: openssl::pkey::PKey<openssl::pkey::Private>) -> (String, String) {
        let mut name = openssl::x509::X509NameBuilder::new().expect("name");
        name.append_entry_by_text("CN", "sp").expect("cn");
        let name = name.build();
        let mut b = openssl::x509::X509Builder::new().expect("builder");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(&name).expect("issuer");
        b.set_pubkey(&key).expect("key");
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).expect("t")).expect("nb");
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).expect("t")).expect("na");
        b.sign(&key, openssl::hash::MessageDigest::sha256()).expect("sign");
        let pem = |v: Vec<u8>| String::from_utf8(v).expect("utf8");
        (pem(key.private_key_to_pem_pkcs8().expect("pem")), pem(b.build().to_pem().expect("pem")))
    }

    #[test]
    fn the_decryption_step_opens_the_key_and_checks_its_certificate() {
        let rsa = || openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa")).expect("pkey");
        let (key, cert) = pair(rsa());
        let (other_key, _) = pair(rsa());
        let options = |cert: &str| SamlOptions { decryption_certificate: cert.into(), ..options() };
        let now = SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        #[track_caller]
        fn check(r: Result<String, String>, expected: Result<&str, &str>) {
            match (&r, expected) {
                (Ok(d), Ok(part)) | (Err(d), Err(part)) => assert!(d.contains(part), "{d:?} lacks {part:?}"),
                _ => panic!("{r:?}, expected {expected:?}"),
            }
            let d = r.unwrap_or_else(|e| e);
            assert!(!d.contains("PRIVATE KEY"), "never the key: {d}");
        }
        check(check_decryption(&options(&cert), Some(&key), now), Ok("decrypts what is encrypted"));
        check(check_decryption(&options(&cert), Some(&other_key), now), Err("not the key of decryption_certificate"));
        check(check_decryption(&options(&cert), None, now), Err("decryption_key is not set"));
        check(check_decryption(&options(""), Some(&key), now), Err("decryption_certificate is empty"));
        check(check_decryption(&options(&cert), Some("garbage"), now), Err("does not parse"));
        check(check_decryption(&options(&cert), Some(&key), now + 2 * day), Err("expired on"));
        check(check_decryption(&options(&cert), Some(&key), now - 2 * day), Err("not valid before"));
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).expect("curve"),
        )
        .expect("ec");
        let (ec_key, ec_cert) = pair(openssl::pkey::PKey::from_ec_key(ec).expect("pkey"));
        check(check_decryption(&options(&ec_cert), Some(&ec_key), now), Err("not an RSA key"));
    }

    fn options() -> SamlOptions {
        SamlOptions {
            sign_in_url: "https://idp/sso".into(),
            sign_out_url: String::new(),
            signing_certificates: vec!["x".into()],
            entity_id: String::new(),
            audience: String::new(),
            sign_request: false,
            signature_algorithm: SamlSignatureAlgorithm::RsaSha256,
            request_signing_certificate: String::new(),
            binding: SamlBinding::HttpRedirect,
            attributes: postern_connection::SamlAttributes {
                email: String::new(),
                name: String::new(),
                given_name: String::new(),
                family_name: String::new(),
            },
            decryption_certificate: String::new(),
            require_encrypted_assertions: false,
            allow_sha1: false,
            idp_initiated: postern_connection::SamlIdpInitiated::default(),
            metadata_url: String::new(),
        }
    }

    #[test]
    fn metadata_escapes() {
        let o = SamlOptions {
            sign_in_url: "https://idp/sso".into(),
            sign_out_url: String::new(),
            signing_certificates: vec!["x".into()],
            entity_id: String::new(),
            audience: String::new(),
            sign_request: false,
            signature_algorithm: SamlSignatureAlgorithm::RsaSha256,
            request_signing_certificate: String::new(),
            binding: SamlBinding::HttpRedirect,
            attributes: postern_connection::SamlAttributes {
                email: String::new(),
                name: String::new(),
                given_name: String::new(),
                family_name: String::new(),
            },
            decryption_certificate: String::new(),
            require_encrypted_assertions: false,
            allow_sha1: false,
            idp_initiated: postern_connection::SamlIdpInitiated::default(),
            metadata_url: String::new(),
        };
        let sp = Sp { connection: "c", entity_id: "urn:a&b".into(), options: &o, idp: Idp::configured(&o) };
        let doc = metadata_document(&sp, "https://p/t/login/callback?x=\"1\"");
        assert!(doc.contains("entityID=\"urn:a&amp;b\""));
        assert!(doc.contains("Location=\"https://p/t/login/callback?x=&quot;1&quot;\""));
        assert!(doc.contains("AuthnRequestsSigned=\"false\""));
        assert!(!doc.contains("KeyDescriptor"));
    }
}
