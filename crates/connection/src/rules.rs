//! The registry's field rules. Each says what is wrong and what is allowed; none echoes a
//! secret (the rules that see secrets describe the value, never quote it).

use postern_common::error::Violations;
use postern_common::validate::{self, truncate};

/// A connection name: 1 to 128 ASCII letters, digits and hyphens, starting and ending with a
/// letter or digit.
pub fn connection_name(name: &str) -> Result<(), String> {
    const RULE: &str = "must be 1 to 128 ASCII letters, digits and hyphens, starting and ending with a letter or digit";
    if name.is_empty() {
        return Err(format!("is required; it {RULE}"));
    }
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    if name.len() <= 128 && ok_chars && edge(name.as_bytes().first()) && edge(name.as_bytes().last()) {
        Ok(())
    } else {
        Err(format!("{:?} is not a valid connection name: it {RULE}", truncate(name, 80)))
    }
}

/// A number where 0 means `default`; otherwise it must lie in `min..=max`. Answers the value
/// in force (the default after a violation).
pub fn int_or_default(v: &mut Violations, path: &str, value: i32, default: u32, min: u32, max: u32) -> u32 {
    if value == 0 {
        return default;
    }
    match u32::try_from(value) {
        Ok(n) if (min..=max).contains(&n) => n,
        _ => {
            let default_note =
                if default == 0 { "or 0 for none".to_owned() } else { format!("or 0 for the default ({default})") };
            v.add(path, format!("must be {min} to {max}, {default_note}; got {value}"));
            default
        }
    }
}

/// An `http(s)` URL of a server Postern calls; `what` describes it when it is required and
/// missing.
pub fn url(v: &mut Violations, path: &str, value: &str, required: bool, what: &str) {
    if value.is_empty() {
        if required {
            v.add(path, format!("is required: {what}, an absolute http or https URL"));
        }
        return;
    }
    v.check(path, validate::service_url(value));
}

/// A client id registered with a provider: required, 1 to 255 characters without spaces or
/// control characters.
pub fn client_id(v: &mut Violations, path: &str, value: &str) {
    if value.is_empty() {
        v.add(path, "is required: the client id registered with the provider");
    } else if value.chars().count() > 255 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        v.add(path, "must be 1 to 255 characters without spaces or control characters");
    }
}

/// OAuth scopes: at most 50, each an RFC 6749 scope token of 1 to 128 characters.
pub fn scopes(v: &mut Violations, path: &str, scopes: &[String]) {
    if scopes.len() > 50 {
        v.add(path, format!("holds at most 50 scopes; got {}", scopes.len()));
    }
    for (i, s) in scopes.iter().enumerate() {
        let ok = (1..=128).contains(&s.len())
            && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            v.add(
                format!("{path}[{i}]"),
                format!(
                    "{:?} is not a scope: use 1 to 128 printable ASCII characters without spaces, quotes or backslashes",
                    truncate(s, 80)
                ),
            );
        }
    }
}

/// A dotted path into a JSON document (`data.emails.0.value`): 1 to 200 printable
/// characters without spaces, segments separated by single dots.
pub fn json_path(value: &str) -> Result<(), String> {
    let max = crate::options::ProfileMapping::MAX_PATH_CHARS;
    let printable = value.chars().all(|c| !c.is_whitespace() && !c.is_control());
    if value.chars().count() > max || !printable || value.split('.').any(str::is_empty) {
        return Err(format!(
            "{:?} is not a path: use member names and array indexes separated by dots (`data.emails.0.value`), 1 to \
             {max} characters without spaces",
            truncate(value, 80)
        ));
    }
    Ok(())
}

/// A lowercase DNS domain name of at least two labels (`fabrikam.example`).
pub fn domain_name(value: &str) -> Result<(), String> {
    let rule = "must be a lowercase domain name of at least two labels (fabrikam.example), each label 1 to 63 letters, digits and hyphens not at its ends";
    let labels: Vec<&str> = value.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let tld_ok = labels.last().is_some_and(|t| !t.bytes().all(|b| b.is_ascii_digit()));
    if value.len() <= 253 && labels.len() >= 2 && labels.iter().all(label_ok) && tld_ok {
        Ok(())
    } else {
        Err(format!("{:?} {rule}", truncate(value, 80)))
    }
}

/// A list of domain names (lowercased): at most 100, no duplicates.
pub fn domain_list(v: &mut Violations, path: &str, domains: Vec<String>) -> Vec<String> {
    if domains.len() > 100 {
        v.add(path, format!("holds at most 100 domains; got {}", domains.len()));
    }
    let domains: Vec<String> = domains.into_iter().map(|d| d.to_ascii_lowercase()).collect();
    for (i, d) in domains.iter().enumerate() {
        v.check(format!("{path}[{i}]"), domain_name(d));
        if domains[..i].contains(d) {
            v.add(format!("{path}[{i}]"), format!("{:?} is listed twice", truncate(d, 80)));
        }
    }
    domains
}

/// The domain of an email address, lowercased (for home realm discovery).
pub fn email_domain(email: &str) -> Result<String, String> {
    let (local, domain) = email
        .rsplit_once('@')
        .ok_or_else(|| format!("{:?} is not an email address (local@domain)", truncate(email, 120)))?;
    let domain = domain.to_ascii_lowercase();
    if local.is_empty() || local.len() > 64 || local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{:?} is not an email address (local@domain)", truncate(email, 120)));
    }
    domain_name(&domain).map_err(|e| format!("the domain of the email address {e}"))?;
    Ok(domain)
}

/// An LDAP URL: `ldap://host[:port]` or `ldaps://host[:port]`. Answers whether it is `ldaps`.
pub fn ldap_url(value: &str) -> Result<bool, String> {
    const RULE: &str = "must be ldap://host[:port] or ldaps://host[:port]";
    if value.is_empty() {
        return Err(format!("is required: the directory's URL; it {RULE}"));
    }
    let url =
        url::Url::parse(value).map_err(|e| format!("{:?} is not a URL ({e}); it {RULE}", truncate(value, 200)))?;
    let secure = match url.scheme() {
        "ldap" => false,
        "ldaps" => true,
        other => {
            return Err(format!("{:?} has scheme {other:?}; it {RULE}", truncate(value, 200)));
        }
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{:?} has no host; it {RULE}", truncate(value, 200)));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{:?} must not hold credentials: use bind_dn and bind_password", truncate(value, 200)));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{:?} must not have a path or query: put the DN in base_dn; it {RULE}",
            truncate(value, 200)
        ));
    }
    Ok(secure)
}

/// A distinguished name (`OU=People,DC=fabrikam,DC=example`); `what` says what it is for.
pub fn dn(value: &str, what: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("is required: {what} (CN=…,DC=…)"));
    }
    if value.chars().count() > 1024 || value.chars().any(char::is_control) || !value.contains('=') {
        return Err(format!(
            "{:?} is not a distinguished name: attribute=value pairs separated by commas (OU=People,DC=fabrikam,DC=example), at most 1024 characters",
            truncate(value, 120)
        ));
    }
    Ok(())
}

/// An LDAP search filter holding the `{username}` placeholder.
pub fn ldap_filter(value: &str) -> Result<(), String> {
    ldap_filter_with(value, "{username}", "the escaped login name")
}

/// An LDAP search filter holding the placeholder `placeholder`, which `what` replaces.
pub fn ldap_filter_with(value: &str, placeholder: &str, what: &str) -> Result<(), String> {
    let mut depth = 0i32;
    let mut balanced = true;
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    balanced = false;
                }
            }
            _ => {}
        }
    }
    let shaped = value.starts_with('(') && value.ends_with(')') && balanced && depth == 0;
    if !shaped || value.chars().count() > 1024 || value.chars().any(char::is_control) {
        return Err(format!(
            "{:?} is not an LDAP filter: a parenthesized expression with balanced parentheses, at most 1024 characters ((&(objectClass=person)(uid={{username}})))",
            truncate(value, 120)
        ));
    }
    if !value.contains(placeholder) {
        return Err(format!(
            "{:?} must hold the {placeholder} placeholder, which {what} replaces",
            truncate(value, 120)
        ));
    }
    Ok(())
}

/// An LDAP attribute description: a name (letter, then letters, digits, hyphens) or an OID.
pub fn ldap_attribute(value: &str) -> Result<(), String> {
    let name = value.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid = value.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if (1..=64).contains(&value.len()) && (name || oid) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not an LDAP attribute name: a letter followed by letters, digits and hyphens (givenName), or an OID, at most 64 characters",
            truncate(value, 80)
        ))
    }
}

/// The DER bodies of the PEM blocks labelled `label` in `text`; anything but whitespace
/// outside the blocks is refused.
fn pem_blocks(text: &str, labels: &[&str]) -> Result<Vec<Vec<u8>>, String> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let label = labels
            .iter()
            .find(|l| rest.starts_with(&format!("-----BEGIN {l}-----")))
            .ok_or_else(|| format!("expected -----BEGIN {}-----", labels.first().copied().unwrap_or_default()))?;
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let body_and_rest = &rest[begin.len()..];
        let stop = body_and_rest.find(&end).ok_or_else(|| format!("missing {end}"))?;
        let body: String = body_and_rest[..stop].chars().filter(|c| !c.is_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| format!("the body of a {label} block is not base64"))?;
        if der.first() != Some(&0x30) || der.len() < 32 {
            return Err(format!("the body of a {label} block is not DER"));
        }
        out.push(der);
        rest = body_and_rest[stop + end.len()..].trim_start();
    }
    Ok(out)
}

/// One or more PEM certificates (`-----BEGIN CERTIFICATE-----`). Answers how many.
pub fn pem_certificates(text: &str) -> Result<usize, String> {
    if text.chars().count() > 65_536 {
        return Err("must be at most 65,536 characters of PEM certificates".into());
    }
    match pem_blocks(text, &["CERTIFICATE"]) {
        Ok(blocks) if !blocks.is_empty() => Ok(blocks.len()),
        Ok(_) => Err("must hold a PEM certificate (-----BEGIN CERTIFICATE----- …)".into()),
        Err(e) => {
            Err(format!("is not PEM certificates ({e}): paste -----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----"))
        }
    }
}

/// One or more PEM certificates that parse as X.509 and can serve as trust anchors (what a
/// TLS client does with a CA certificate). Answers how many.
pub fn pem_trust_anchors(text: &str) -> Result<usize, String> {
    pem_certificates(text)?;
    let blocks = pem_blocks(text, &["CERTIFICATE"])?;
    for (i, der) in blocks.iter().enumerate() {
        let der = rustls_pki_types::CertificateDer::from(der.as_slice());
        if let Err(e) = webpki::anchor_from_trusted_cert(&der) {
            let which = if blocks.len() == 1 { "the certificate".to_owned() } else { format!("certificate {}", i + 1) };
            return Err(format!(
                "is not a usable X.509 CA certificate: {which} does not parse ({e:?}); paste the CA's PEM \
                 certificate (-----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----)"
            ));
        }
    }
    Ok(blocks.len())
}

/// One PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC). Never quotes the value.
pub fn pem_private_key(text: &str) -> Result<(), String> {
    const RULE: &str = "must be one PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)";
    if text.contains("ENCRYPTED PRIVATE KEY") {
        return Err(format!("is an encrypted key, which Postern cannot use; it {RULE}, unencrypted"));
    }
    match pem_blocks(text, &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"]) {
        Ok(blocks) if blocks.len() == 1 => Ok(()),
        _ => Err(RULE.into()),
    }
}

/// A key that signs JWT client assertions: one unencrypted PKCS#8 PEM private key
/// (`-----BEGIN PRIVATE KEY-----`), RSA of 2048 bits or more, or EC on P-256. Never quotes
/// the key.
pub fn assertion_signing_key(text: &str) -> Result<(), String> {
    const RULE: &str = "must be one unencrypted PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----, as `openssl \
                        genpkey` writes it): RSA of 2048 bits or more (RS256), or EC P-256 (ES256)";
    match pem_blocks(text, &["PRIVATE KEY"]) {
        Ok(blocks) if blocks.len() == 1 => {}
        _ => return Err(RULE.into()),
    }
    let key = openssl::pkey::PKey::private_key_from_pem(text.as_bytes()).map_err(|_| RULE.to_owned())?;
    if let Ok(rsa) = key.rsa() {
        if rsa.size() * 8 < 2048 {
            return Err(format!("is an RSA key of {} bits; it {RULE}", rsa.size() * 8));
        }
        return Ok(());
    }
    match key.ec_key() {
        Ok(ec) if ec.group().curve_name() == Some(openssl::nid::Nid::X9_62_PRIME256V1) => Ok(()),
        Ok(_) => Err(format!("is an EC key on another curve than P-256; it {RULE}")),
        Err(_) => Err(RULE.into()),
    }
}

/// An RSA private key (PEM) and the certificate (PEM) of its public key: the pair a SAML
/// service provider decrypts with (`certificate_field` `decryption_certificate`) or signs its
/// requests with (`request_signing_certificate`); `why_rsa` says why the key must be RSA.
/// Never quotes the key.
pub fn key_pair(key_pem: &str, certificate_pem: &str, certificate_field: &str, why_rsa: &str) -> Result<(), String> {
    let key = openssl::pkey::PKey::private_key_from_pem(key_pem.as_bytes())
        .map_err(|_| "does not parse as a PEM private key".to_owned())?;
    if key.rsa().is_err() {
        return Err(format!("must be an RSA private key: {why_rsa}"));
    }
    let cert = openssl::x509::X509::from_pem(certificate_pem.as_bytes())
        .map_err(|_| format!("cannot be checked: {certificate_field} does not parse as X.509"))?;
    let public =
        cert.public_key().map_err(|_| format!("cannot be checked: {certificate_field} holds no usable public key"))?;
    if public.public_eq(&key) {
        Ok(())
    } else {
        Err(format!(
            "is not the private key of {certificate_field}: give the key of that certificate, or the certificate \
             of this key"
        ))
    }
}

/// Text that may be empty; otherwise 1 to `max` characters without control characters.
pub fn optional_text(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() { Ok(()) } else { validate::display_text(value, 1, max) }
}

/// A GUID in its hyphenated form (`00000000-0000-0000-0000-000000000000`).
pub fn guid(value: &str, what: &str) -> Result<(), String> {
    if value.len() == 36 && uuid::Uuid::parse_str(value).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a GUID: {what} looks like 8-4-4-4-12 hex digits (7f9c1a2b-0000-4c3d-9e8f-123456789abc)",
            truncate(value, 80)
        ))
    }
}

/// A sender mailbox: `addr@domain` or `Name <addr@domain>`.
pub fn mailbox(value: &str) -> Result<(), String> {
    const RULE: &str = "must be addr@domain or Name <addr@domain>";
    if value.is_empty() {
        return Err(format!("is required: the sender; it {RULE}"));
    }
    if value.chars().count() > 320 || value.chars().any(char::is_control) {
        return Err(format!("{RULE}, at most 320 characters"));
    }
    let addr = match value.rsplit_once('<') {
        Some((_, tail)) => tail.strip_suffix('>').ok_or_else(|| format!("{:?} {RULE}", truncate(value, 120)))?,
        None => value,
    };
    let ok = addr.split_once('@').is_some_and(|(l, d)| {
        !l.is_empty() && !l.contains(['<', '>', ' ', '@']) && domain_name(&d.to_ascii_lowercase()).is_ok()
    });
    if ok { Ok(()) } else { Err(format!("{:?} {RULE}", truncate(value, 120))) }
}

/// `value`, or `default` when empty.
pub fn or_default(value: String, default: &str) -> String {
    if value.is_empty() { default.to_owned() } else { value }
}

/// A message template holding `placeholder`, at most `max` characters; line breaks and tabs
/// are the only control characters allowed.
pub fn template(value: &str, placeholder: &str, max: usize) -> Result<(), String> {
    let len = value.chars().count();
    if len > max {
        return Err(format!("must be at most {max} characters (got {len})"));
    }
    if value.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err("must not contain control characters other than line breaks and tabs".into());
    }
    // Spaces inside the braces are the template language's own (`{{ code }}`).
    let squeezed = value.replace("{{ ", "{{").replace(" }}", "}}");
    if !squeezed.contains(placeholder) {
        return Err(format!("must hold the {placeholder} placeholder"));
    }
    Ok(())
}

/// A host name (`smtp.fabrikam.example`, `localhost`) or an IP address.
pub fn host(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is required: the server's host name or IP address".into());
    }
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = value.len() <= 253
        && value.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{:?} is not a host name (smtp.fabrikam.example) or an IP address", truncate(value, 120)))
    }
}

/// An SMS sender: an E.164 number (`+15551234567`) or an alphanumeric id of 1 to 11 letters,
/// digits and spaces with at least one letter.
pub fn sms_sender(value: &str) -> Result<(), String> {
    const RULE: &str = "must be an E.164 phone number (+15551234567) or an alphanumeric sender id of 1 to 11 letters, digits and spaces";
    if value.is_empty() {
        return Err(format!("is required: the sender; it {RULE}"));
    }
    let e164 = value
        .strip_prefix('+')
        .is_some_and(|d| (6..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'));
    let alnum = (1..=11).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && value.bytes().any(|b| b.is_ascii_alphabetic());
    if e164 || alnum { Ok(()) } else { Err(format!("{:?} {RULE}", truncate(value, 80))) }
}

/// A connection's `upstream_params` (Auth0's): at most [`UpstreamParam::MAX`] entries, each
/// named by 1 to 64 letters, digits, `_`, `-` and `.`, none of the protocol's own
/// parameters ([`UpstreamParam::RESERVED`]), each with exactly one of a fixed `value` (1 to
/// 1024 characters, no control characters) and an `alias` of the application's request
/// ([`UpstreamParam::ALIASES`]).
pub fn upstream_params(
    v: &mut Violations,
    path: &str,
    given: std::collections::HashMap<String, postern_proto::connections::v1::UpstreamParam>,
) -> crate::options::UpstreamParams {
    use crate::options::UpstreamParam;
    use postern_proto::connections::v1::upstream_param::Source;
    if given.len() > UpstreamParam::MAX {
        v.add(path, format!("holds at most {} parameters; got {}", UpstreamParam::MAX, given.len()));
    }
    let mut kept = crate::options::UpstreamParams::new();
    for (name, param) in given {
        let at = format!("{path}[{:?}]", truncate(&name, 64));
        let well_formed = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !well_formed {
            v.add(&at, "is not a parameter name: use 1 to 64 letters, digits, _ - and .");
            continue;
        }
        if UpstreamParam::RESERVED.contains(&name.as_str()) {
            v.add(&at, format!("Postern sets it for the protocol; reserved: {}", UpstreamParam::RESERVED.join(", ")));
            continue;
        }
        let param = match param.source {
            Some(Source::Value(value)) => match validate::display_text(&value, 1, 1024) {
                Ok(()) => UpstreamParam::Value(value),
                Err(e) => {
                    v.add(format!("{at}.value"), e);
                    continue;
                }
            },
            Some(Source::Alias(alias)) if UpstreamParam::ALIASES.contains(&alias.as_str()) => {
                UpstreamParam::Alias(alias)
            }
            Some(Source::Alias(alias)) => {
                v.add(
                    format!("{at}.alias"),
                    format!(
                        "{:?} is not a parameter of the application's request that can be passed on; use one of: {}",
                        truncate(&alias, 64),
                        UpstreamParam::ALIASES.join(", ")
                    ),
                );
                continue;
            }
            None => {
                v.add(
                    &at,
                    "needs exactly one of value (a fixed value) and alias (a parameter of the application's request)",
                );
                continue;
            }
        };
        kept.insert(name, param);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(result: Result<impl std::fmt::Debug, String>, ok: bool) {
        assert_eq!(result.is_ok(), ok, "{result:?}");
    }

    /// `key` (PEM) and a self-signed certificate of it (PEM).
    fn pair(key: openssl::pkey::PKey<openssl::pkey::Private>) -> (String, String) {
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
    fn key_pairs() {
        let rsa = || openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa")).expect("pkey");
        let (key, cert) = pair(rsa());
        let (other_key, other_cert) = pair(rsa());
        let key_pair = |k: &str, c: &str| key_pair(k, c, "decryption_certificate", "RSA-OAEP");
        check(key_pair(&key, &cert), true);
        check(key_pair(&other_key, &other_cert), true);
        let e = key_pair(&key, &other_cert).expect_err("another certificate");
        assert!(e.contains("not the private key of decryption_certificate") && !e.contains("PRIVATE"), "{e}");
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).expect("curve"),
        )
        .expect("ec");
        let (ec_key, ec_cert) = pair(openssl::pkey::PKey::from_ec_key(ec).expect("pkey"));
        assert!(key_pair(&ec_key, &ec_cert).expect_err("EC").contains("RSA"));
        check(key_pair("not a key", &cert), false);
        check(key_pair(&key, "not a certificate"), false);
    }

    #[test]
    fn connection_names() {
        for good in ["a", "Username-Password-Authentication", "fabrikam-ad", "0", &"a".repeat(128)] {
            check(connection_name(good), true);
        }
        for bad in ["", "-a", "a-", "a_b", "a b", "é", &"a".repeat(129)] {
            check(connection_name(bad), false);
        }
    }

    #[test]
    fn domains_and_emails() {
        for good in ["fabrikam.example", "a.b.c", "xn--bcher-kva.example", "a-b.example"] {
            check(domain_name(good), true);
        }
        for bad in ["", "fabrikam", "Fabrikam.example", "-a.example", "a..example", "1.2.3.4", "a_b.example"] {
            check(domain_name(bad), false);
        }
        assert_eq!(email_domain("Ann@Fabrikam.Example").unwrap(), "fabrikam.example");
        check(email_domain("ann"), false);
        check(email_domain("@fabrikam.example"), false);
        check(email_domain("ann@localhost"), false);
    }

    #[test]
    fn ldap_rules() {
        assert!(!ldap_url("ldap://dc1.fabrikam.example").unwrap());
        assert!(ldap_url("ldaps://127.0.0.1:636").unwrap());
        for bad in ["", "http://dc1", "ldap://", "ldap://u:p@dc1", "ldap://dc1/dc=x", "not a url"] {
            check(ldap_url(bad), false);
        }
        check(ldap_filter("(&(objectClass=person)(uid={username}))"), true);
        for bad in ["(uid=x)", "uid={username}", "((uid={username})", "(uid={username}))("] {
            check(ldap_filter(bad), false);
        }
        for good in ["mail", "givenName", "msDS-x", "2.5.4.3"] {
            check(ldap_attribute(good), true);
        }
        for bad in ["", "1abc", "a b", "a;b", "2..5"] {
            check(ldap_attribute(bad), false);
        }
    }

    #[test]
    fn pem() {
        let body = "MII".to_owned() + &"A".repeat(61);
        let cert = format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n");
        assert_eq!(pem_certificates(&format!("{cert}\n{cert}")).unwrap(), 2);
        check(pem_certificates("hello"), false);
        check(pem_certificates("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----"), false);
        check(pem_certificates("-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----"), false);
        check(pem_certificates(&format!("{cert}garbage")), false);
        let key = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----");
        check(pem_private_key(&key), true);
        check(pem_private_key(&cert), false);
        let err = pem_private_key("-----BEGIN PRIVATE KEY-----\nsecret-material\n").unwrap_err();
        assert!(!err.contains("secret-material"), "{err}");
    }

    #[test]
    fn trust_anchors() {
        let ca = include_str!("test-ca.pem");
        assert_eq!(pem_trust_anchors(ca).unwrap(), 1);
        assert_eq!(pem_trust_anchors(&format!("{ca}\n{ca}")).unwrap(), 2);
        // PEM of the right shape whose body is not a certificate.
        let body = "MII".to_owned() + &"A".repeat(61);
        let fake = format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n");
        let err = pem_trust_anchors(&fake).unwrap_err();
        assert!(err.contains("X.509"), "{err}");
        let err = pem_trust_anchors(&format!("{ca}{fake}")).unwrap_err();
        assert!(err.contains("certificate 2"), "{err}");
        check(pem_trust_anchors("hello"), false);
        check(pem_trust_anchors(""), false);
    }

    #[test]
    fn senders_hosts_guids() {
        for good in ["no-reply@fabrikam.example", "Fabrikam <no-reply@fabrikam.example>"] {
            check(mailbox(good), true);
        }
        for bad in ["", "fabrikam", "Fabrikam <no-reply@fabrikam.example", "a@b"] {
            check(mailbox(bad), false);
        }
        for good in ["+15551234567", "Fabrikam", "FABRIKAM 1"] {
            check(sms_sender(good), true);
        }
        for bad in ["", "+0123", "15551234567", "Fabrikam Corp", "+1555abc"] {
            check(sms_sender(bad), false);
        }
        for good in ["localhost", "smtp.fabrikam.example", "127.0.0.1", "::1"] {
            check(host(good), true);
        }
        for bad in ["", "smtp fabrikam", "-a", "a..b"] {
            check(host(bad), false);
        }
        check(guid("7f9c1a2b-0000-4c3d-9e8f-123456789abc", "x"), true);
        check(guid("7f9c1a2b00004c3d9e8f123456789abc", "x"), false);
    }
}
