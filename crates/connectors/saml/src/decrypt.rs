//! Encrypted assertions (XML Encryption 1.1, as SAML uses it): an `EncryptedAssertion`
//! holds an `EncryptedData` of type Element whose content key is wrapped in an
//! `EncryptedKey` (inside its `KeyInfo`, or beside it) with RSA-OAEP for this SP's
//! decryption key.
//!
//! Accepted: key transport `xmlenc#rsa-oaep-mgf1p` and `xmlenc11#rsa-oaep` (with the
//! `DigestMethod` and `MGF` they name, SHA-1 by default as the specifications say), content
//! encryption AES-128/192/256-GCM and AES-128/192/256-CBC. Refused by name: RSA PKCS#1 v1.5
//! key transport (Bleichenbacher's oracle) and Triple DES.
//!
//! Every cryptographic failure (a key that does not unwrap, a tag that does not verify,
//! padding, text that is not an element) answers the same message, so that the answers
//! cannot serve as a padding or OAEP oracle.
//!
//! samael 0.0.22 decrypts too, but only AES-128 and `rsa-oaep-mgf1p` (and RSA 1.5), and it
//! checks no signature on what it decrypted; here the decrypted assertion goes back into
//! the response in its encrypted form's place and then through the same signature checks as
//! a plain one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Padding;
use openssl::symm::{Cipher, Crypter, Mode};

use crate::xml::{DSIG_NS, Element, XENC_NS, XENC11_NS};

/// Why an assertion was not decrypted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecryptError {
    /// The structure or an algorithm is not one this side accepts: says which.
    Unsupported(String),
    /// Cryptography failed; deliberately one answer for every cause.
    Failed,
}

impl std::fmt::Display for DecryptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecryptError::Unsupported(m) => f.write_str(m),
            DecryptError::Failed => f.write_str(
                "the encrypted assertion does not decrypt with this connection's decryption_key: it was encrypted to \
                 another certificate (publish the SP metadata with decryption_certificate to the identity provider \
                 again), or it is damaged",
            ),
        }
    }
}

const RSA_OAEP_MGF1P: &str = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p";
const RSA_OAEP: &str = "http://www.w3.org/2009/xmlenc11#rsa-oaep";
const RSA_1_5: &str = "http://www.w3.org/2001/04/xmlenc#rsa-1_5";

/// The key transport and content encryption algorithms accepted, for the SP metadata.
pub(crate) const ENCRYPTION_METHODS: &[&str] = &[
    "http://www.w3.org/2009/xmlenc11#aes256-gcm",
    "http://www.w3.org/2009/xmlenc11#aes128-gcm",
    "http://www.w3.org/2001/04/xmlenc#aes256-cbc",
    "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
    RSA_OAEP,
    RSA_OAEP_MGF1P,
];

fn digest(uri: Option<&str>) -> Result<MessageDigest, DecryptError> {
    Ok(match uri {
        None | Some("http://www.w3.org/2000/09/xmldsig#sha1") => MessageDigest::sha1(),
        Some("http://www.w3.org/2001/04/xmldsig-more#sha224") => MessageDigest::sha224(),
        Some("http://www.w3.org/2001/04/xmlenc#sha256") => MessageDigest::sha256(),
        Some("http://www.w3.org/2001/04/xmldsig-more#sha384") => MessageDigest::sha384(),
        Some("http://www.w3.org/2001/04/xmlenc#sha512") => MessageDigest::sha512(),
        Some(other) => {
            return Err(DecryptError::Unsupported(format!(
                "the encrypted key names the digest {:?}, which is not accepted (SHA-1, SHA-224, SHA-256, SHA-384 or \
                 SHA-512)",
                crate::short(other, 100)
            )));
        }
    })
}

fn mgf(uri: Option<&str>) -> Result<MessageDigest, DecryptError> {
    Ok(match uri {
        None | Some("http://www.w3.org/2009/xmlenc11#mgf1sha1") => MessageDigest::sha1(),
        Some("http://www.w3.org/2009/xmlenc11#mgf1sha224") => MessageDigest::sha224(),
        Some("http://www.w3.org/2009/xmlenc11#mgf1sha256") => MessageDigest::sha256(),
        Some("http://www.w3.org/2009/xmlenc11#mgf1sha384") => MessageDigest::sha384(),
        Some("http://www.w3.org/2009/xmlenc11#mgf1sha512") => MessageDigest::sha512(),
        Some(other) => {
            return Err(DecryptError::Unsupported(format!(
                "the encrypted key names the mask generation function {:?}, which is not accepted (MGF1 with SHA-1 \
                 to SHA-512)",
                crate::short(other, 100)
            )));
        }
    })
}

/// The base64 of a `CipherData/CipherValue` (a `CipherReference` is refused).
fn cipher_value(e: &Element) -> Result<Vec<u8>, DecryptError> {
    let data = e
        .child(XENC_NS, "CipherData")
        .ok_or_else(|| DecryptError::Unsupported("an encrypted element has no CipherData".into()))?;
    let value = data.child(XENC_NS, "CipherValue").ok_or_else(|| {
        DecryptError::Unsupported("an encrypted element has no CipherValue (a CipherReference is not followed)".into())
    })?;
    let compact: String = value.text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(compact).map_err(|_| DecryptError::Unsupported("a CipherValue is not base64".into()))
}

/// Unwraps one `EncryptedKey` with `key`.
fn unwrap_key(encrypted_key: &Element, key: &PKey<Private>) -> Result<Vec<u8>, DecryptError> {
    let method = encrypted_key
        .child(XENC_NS, "EncryptionMethod")
        .ok_or_else(|| DecryptError::Unsupported("the encrypted key names no EncryptionMethod".into()))?;
    let algorithm = method.attribute("Algorithm").unwrap_or_default();
    let (md, mgf1) = match algorithm {
        // mgf1p: MGF1 with SHA-1 always; the digest as named, SHA-1 by default.
        RSA_OAEP_MGF1P => (
            digest(method.child(DSIG_NS, "DigestMethod").and_then(|d| d.attribute("Algorithm")))?,
            MessageDigest::sha1(),
        ),
        RSA_OAEP => (
            digest(method.child(DSIG_NS, "DigestMethod").and_then(|d| d.attribute("Algorithm")))?,
            mgf(method.child(XENC11_NS, "MGF").and_then(|d| d.attribute("Algorithm")))?,
        ),
        RSA_1_5 => {
            return Err(DecryptError::Unsupported(
                "the assertion's key is wrapped with RSA PKCS#1 v1.5 (xmlenc#rsa-1_5), which is refused as unsafe; \
                 configure the identity provider for RSA-OAEP"
                    .into(),
            ));
        }
        other => {
            return Err(DecryptError::Unsupported(format!(
                "the assertion's key is wrapped with {:?}; accepted: {RSA_OAEP_MGF1P} and {RSA_OAEP}",
                crate::short(other, 100)
            )));
        }
    };
    let label = match method.child(XENC_NS, "OAEPparams") {
        Some(p) => {
            let compact: String = p.text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            Some(STANDARD.decode(compact).map_err(|_| DecryptError::Unsupported("OAEPparams is not base64".into()))?)
        }
        None => None,
    };
    let wrapped = cipher_value(encrypted_key)?;
    let mut decrypter = openssl::encrypt::Decrypter::new(key).map_err(|_| DecryptError::Failed)?;
    decrypter.set_rsa_padding(Padding::PKCS1_OAEP).map_err(|_| DecryptError::Failed)?;
    decrypter.set_rsa_oaep_md(md).map_err(|_| DecryptError::Failed)?;
    decrypter.set_rsa_mgf1_md(mgf1).map_err(|_| DecryptError::Failed)?;
    if let Some(label) = label {
        decrypter.set_rsa_oaep_label(&label).map_err(|_| DecryptError::Failed)?;
    }
    let mut out = vec![0u8; decrypter.decrypt_len(&wrapped).map_err(|_| DecryptError::Failed)?];
    let n = decrypter.decrypt(&wrapped, &mut out).map_err(|_| DecryptError::Failed)?;
    out.truncate(n);
    Ok(out)
}

/// The content cipher of a URI: the cipher, and whether it is GCM.
fn content_cipher(uri: &str) -> Result<(Cipher, bool), DecryptError> {
    Ok(match uri {
        "http://www.w3.org/2009/xmlenc11#aes128-gcm" => (Cipher::aes_128_gcm(), true),
        "http://www.w3.org/2009/xmlenc11#aes192-gcm" => (Cipher::aes_192_gcm(), true),
        "http://www.w3.org/2009/xmlenc11#aes256-gcm" => (Cipher::aes_256_gcm(), true),
        "http://www.w3.org/2001/04/xmlenc#aes128-cbc" => (Cipher::aes_128_cbc(), false),
        "http://www.w3.org/2001/04/xmlenc#aes192-cbc" => (Cipher::aes_192_cbc(), false),
        "http://www.w3.org/2001/04/xmlenc#aes256-cbc" => (Cipher::aes_256_cbc(), false),
        "http://www.w3.org/2001/04/xmlenc#tripledes-cbc" => {
            return Err(DecryptError::Unsupported(
                "the assertion is encrypted with Triple DES (xmlenc#tripledes-cbc), which is refused; configure the \
                 identity provider for AES-GCM or AES-CBC"
                    .into(),
            ));
        }
        other => {
            return Err(DecryptError::Unsupported(format!(
                "the assertion is encrypted with {:?}; accepted: AES-128/192/256-GCM and AES-128/192/256-CBC",
                crate::short(other, 100)
            )));
        }
    })
}

/// Decrypts AES-GCM (IV 12 bytes first, tag 16 bytes last) or AES-CBC (IV first, XML
/// Encryption's padding: the last byte says how many bytes to drop).
fn decrypt_content(cipher: Cipher, gcm: bool, key: &[u8], data: &[u8]) -> Result<Vec<u8>, DecryptError> {
    if key.len() != cipher.key_len() {
        return Err(DecryptError::Failed);
    }
    let iv_len = if gcm { 12 } else { cipher.iv_len().unwrap_or(16) };
    let tag_len = if gcm { 16 } else { 0 };
    if data.len() < iv_len + tag_len + 1 {
        return Err(DecryptError::Failed);
    }
    let (iv, rest) = data.split_at(iv_len);
    let (body, tag) = rest.split_at(rest.len() - tag_len);
    let mut crypter = Crypter::new(cipher, Mode::Decrypt, key, Some(iv)).map_err(|_| DecryptError::Failed)?;
    crypter.pad(false);
    if gcm {
        crypter.set_tag(tag).map_err(|_| DecryptError::Failed)?;
    } else if body.len() % cipher.block_size() != 0 {
        return Err(DecryptError::Failed);
    }
    let mut out = vec![0u8; body.len() + cipher.block_size()];
    let mut n = crypter.update(body, &mut out).map_err(|_| DecryptError::Failed)?;
    n += crypter.finalize(&mut out[n..]).map_err(|_| DecryptError::Failed)?;
    out.truncate(n);
    if !gcm {
        let pad = usize::from(*out.last().ok_or(DecryptError::Failed)?);
        if pad == 0 || pad > cipher.block_size() || pad > out.len() {
            return Err(DecryptError::Failed);
        }
        out.truncate(out.len() - pad);
    }
    Ok(out)
}

/// The assertion (XML text of one element) that `encrypted` (an `EncryptedAssertion`)
/// holds, decrypted with `key_pem`.
pub(crate) fn decrypt_assertion(encrypted: &Element, key_pem: &str) -> Result<String, DecryptError> {
    let key = PKey::private_key_from_pem(key_pem.as_bytes())
        .map_err(|_| DecryptError::Unsupported("the connection's decryption_key is not a PEM private key".into()))?;
    let data = encrypted.child(XENC_NS, "EncryptedData").ok_or_else(|| {
        DecryptError::Unsupported("the EncryptedAssertion holds no EncryptedData (XML Encryption)".into())
    })?;
    if data.attribute("Type").is_some_and(|t| t != "http://www.w3.org/2001/04/xmlenc#Element") {
        return Err(DecryptError::Unsupported("the EncryptedData does not encrypt an element".into()));
    }
    let method = data
        .child(XENC_NS, "EncryptionMethod")
        .and_then(|m| m.attribute("Algorithm"))
        .ok_or_else(|| DecryptError::Unsupported("the EncryptedData names no EncryptionMethod".into()))?;
    let (cipher, gcm) = content_cipher(method)?;
    let content = cipher_value(data)?;
    // The wrapped key: in the EncryptedData's KeyInfo, or beside it in the EncryptedAssertion
    // (Entra ID, ADFS); with several recipients, the one this key opens.
    let mut keys = Vec::new();
    encrypted.descendants(XENC_NS, "EncryptedKey", &mut keys);
    if keys.is_empty() {
        return Err(DecryptError::Unsupported("the EncryptedAssertion holds no EncryptedKey".into()));
    }
    let mut failure = DecryptError::Failed;
    for k in keys {
        match unwrap_key(k, &key) {
            Ok(content_key) => {
                let plain = decrypt_content(cipher, gcm, &content_key, &content)?;
                let text = String::from_utf8(plain).map_err(|_| DecryptError::Failed)?;
                let trimmed = text.trim();
                if !trimmed.starts_with('<') || !trimmed.ends_with('>') {
                    return Err(DecryptError::Failed);
                }
                return Ok(trimmed.to_owned());
            }
            Err(e @ DecryptError::Unsupported(_)) => failure = e,
            Err(DecryptError::Failed) => {}
        }
    }
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::rsa::Rsa;

    fn encrypt_content(cipher: Cipher, gcm: bool, key: &[u8], plain: &[u8]) -> Vec<u8> {
        let iv_len = if gcm { 12 } else { 16 };
        let mut iv = vec![0u8; iv_len];
        openssl::rand::rand_bytes(&mut iv).expect("rand");
        let mut padded = plain.to_vec();
        if !gcm {
            let pad = 16 - plain.len() % 16;
            padded.extend(std::iter::repeat_n(0xAB, pad - 1));
            padded.push(u8::try_from(pad).expect("pad"));
        }
        let mut c = Crypter::new(cipher, Mode::Encrypt, key, Some(&iv)).expect("crypter");
        c.pad(false);
        let mut out = vec![0u8; padded.len() + 16];
        let mut n = c.update(&padded, &mut out).expect("update");
        n += c.finalize(&mut out[n..]).expect("finalize");
        out.truncate(n);
        let mut all = iv;
        all.extend(out);
        if gcm {
            let mut tag = [0u8; 16];
            c.get_tag(&mut tag).expect("tag");
            all.extend(tag);
        }
        all
    }

    fn document(key: &PKey<Private>, content_uri: &str, key_uri: &str, extra: &str, plain: &str) -> String {
        let (cipher, gcm) = content_cipher(content_uri).expect("cipher");
        let mut ck = vec![0u8; cipher.key_len()];
        openssl::rand::rand_bytes(&mut ck).expect("rand");
        let mut enc = openssl::encrypt::Encrypter::new(key).expect("enc");
        enc.set_rsa_padding(Padding::PKCS1_OAEP).expect("pad");
        if extra.contains("sha256") {
            enc.set_rsa_oaep_md(MessageDigest::sha256()).expect("md");
        }
        if extra.contains("mgf1sha256") {
            enc.set_rsa_mgf1_md(MessageDigest::sha256()).expect("mgf");
        }
        let mut wrapped = vec![0u8; enc.encrypt_len(&ck).expect("len")];
        let n = enc.encrypt(&ck, &mut wrapped).expect("wrap");
        wrapped.truncate(n);
        let content = encrypt_content(cipher, gcm, &ck, plain.as_bytes());
        format!(
            r#"<saml:EncryptedAssertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion"><xenc:EncryptedData xmlns:xenc="{XENC_NS}" Type="http://www.w3.org/2001/04/xmlenc#Element"><xenc:EncryptionMethod Algorithm="{content_uri}"/><ds:KeyInfo xmlns:ds="{DSIG_NS}"><xenc:EncryptedKey><xenc:EncryptionMethod Algorithm="{key_uri}">{extra}</xenc:EncryptionMethod><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedKey></ds:KeyInfo><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedData></saml:EncryptedAssertion>"#,
            STANDARD.encode(wrapped),
            STANDARD.encode(content)
        )
    }

    #[test]
    fn every_accepted_combination_decrypts_and_another_key_fails_alike() {
        let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let other = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let pem = String::from_utf8(key.private_key_to_pem_pkcs8().expect("pem")).expect("utf8");
        let plain = r#"<saml:Assertion ID="a">x</saml:Assertion>"#;
        let sha256 = r#"<ds:DigestMethod xmlns:ds="http://www.w3.org/2000/09/xmldsig#" Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>"#;
        let mgf256 = r#"<xenc11:MGF xmlns:xenc11="http://www.w3.org/2009/xmlenc11#" Algorithm="http://www.w3.org/2009/xmlenc11#mgf1sha256"/>"#;
        for content in [
            "http://www.w3.org/2009/xmlenc11#aes128-gcm",
            "http://www.w3.org/2009/xmlenc11#aes256-gcm",
            "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
            "http://www.w3.org/2001/04/xmlenc#aes256-cbc",
        ] {
            for (transport, extra) in
                [(RSA_OAEP_MGF1P, String::new()), (RSA_OAEP, String::new()), (RSA_OAEP, format!("{sha256}{mgf256}"))]
            {
                let doc = document(&key, content, transport, &extra, plain);
                let root = crate::xml::parse(&doc).expect("xml");
                assert_eq!(decrypt_assertion(&root, &pem).as_deref(), Ok(plain), "{content} {transport} {extra}");
                let foreign = crate::xml::parse(&document(&other, content, transport, &extra, plain)).expect("xml");
                assert_eq!(decrypt_assertion(&foreign, &pem), Err(DecryptError::Failed), "{content} {transport}");
            }
        }
        // A flipped bit in CBC content or a GCM tag: the same answer as another key.
        let doc = document(&key, "http://www.w3.org/2009/xmlenc11#aes128-gcm", RSA_OAEP, "", plain);
        let root = crate::xml::parse(&doc).expect("xml");
        let value = &root.children[0].child(XENC_NS, "CipherData").expect("data").children[0].text;
        let mut bytes = STANDARD.decode(value).expect("b64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = doc.replace(value.as_str(), &STANDARD.encode(bytes));
        let root = crate::xml::parse(&tampered).expect("xml");
        assert_eq!(decrypt_assertion(&root, &pem), Err(DecryptError::Failed));
        // Refused by name.
        for (content, transport, why) in [
            ("http://www.w3.org/2001/04/xmlenc#tripledes-cbc", RSA_OAEP, "Triple DES"),
            ("http://www.w3.org/2009/xmlenc11#aes128-gcm", RSA_1_5, "PKCS#1 v1.5"),
        ] {
            let doc = document(&key, "http://www.w3.org/2009/xmlenc11#aes128-gcm", transport, "", plain)
                .replace("http://www.w3.org/2009/xmlenc11#aes128-gcm", content);
            let root = crate::xml::parse(&doc).expect("xml");
            match decrypt_assertion(&root, &pem) {
                Err(DecryptError::Unsupported(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{why}: {other:?}"),
            }
        }
    }
}
