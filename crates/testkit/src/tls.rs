//! A throwaway certificate authority for tests that turn TLS on: it issues certificates for
//! loopback (`127.0.0.1` and `localhost`) and writes them, with their keys, as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A test CA whose files live in a directory of the test's.
pub struct Ca {
    name: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's PEM file.
    pub cert: PathBuf,
    dir: PathBuf,
}

/// A certificate the [`Ca`] issued.
pub struct Issued {
    /// The certificate's PEM file.
    pub cert: PathBuf,
    /// Its private key's PEM file.
    pub key: PathBuf,
    /// The certificate, DER-encoded.
    pub der: Vec<u8>,
}

impl Ca {
    /// A new CA named `name`, its certificate written as `<name>-ca.pem` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).expect("write the CA certificate");
        Self { name: name.to_owned(), issuer: Issuer::new(params, key), cert: path, dir: dir.to_owned() }
    }

    /// A certificate for 127.0.0.1 and localhost, good for servers and clients alike,
    /// written as `<file>.pem` and `<file>.key` in the CA's directory.
    pub fn issue(&self, file: &str) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, format!("{file} ({})", self.name));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let (cert_path, key_path) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        Issued { cert: cert_path, key: key_path, der: cert.der().to_vec() }
    }
}
