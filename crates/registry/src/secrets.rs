//! Encryption at rest of connection secrets, with the master key of
//! [`postern_common::seal`] (XChaCha20-Poly1305, `POSTERN_MASTER_KEY`).
//!
//! A connection's secrets are sealed as one value under the label
//! `postern.connections.v1/secrets`, bound to the tenant and the connection id, so a sealed
//! value copied onto another connection (or another tenant's) fails to open instead of lending
//! its secrets there.

pub use postern_common::seal::{MasterKey, SealError};

use crate::domain::{Secrets, SecretsFormatError};

/// What connection secrets are sealed for: the label bound into the associated data.
pub const LABEL: &[u8] = b"postern.connections.v1/secrets";

/// Why connection secrets could not be sealed or opened. No variant carries key material or
/// plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Sealing or opening failed (wrong master key, wrong connection, altered data, …).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The decrypted plaintext is not a set of secrets.
    #[error(transparent)]
    Format(#[from] SecretsFormatError),
}

/// Sealing and opening connection secrets with the master key.
pub trait ConnectionSeal {
    /// Encrypts `plaintext` for connection `connection_id` of `tenant`.
    fn seal_for(&self, tenant: &str, connection_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, SecretsError>;
    /// Decrypts what [`ConnectionSeal::seal_for`] wrote for the same connection.
    fn open_for(
        &self,
        tenant: &str,
        connection_id: &str,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, SecretsError>;
    /// Encrypts a connection's secrets as one value, for the store.
    fn seal_secrets(&self, tenant: &str, connection_id: &str, secrets: &Secrets) -> Result<Vec<u8>, SecretsError> {
        self.seal_for(tenant, connection_id, &secrets.to_bytes())
    }
    /// Decrypts what [`ConnectionSeal::seal_secrets`] wrote.
    fn open_secrets(&self, tenant: &str, connection_id: &str, sealed: &[u8]) -> Result<Secrets, SecretsError> {
        let plaintext = self.open_for(tenant, connection_id, sealed)?;
        Ok(Secrets::from_bytes(&plaintext)?)
    }
}

impl ConnectionSeal for MasterKey {
    fn seal_for(&self, tenant: &str, connection_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
        Ok(self.seal(LABEL, &[tenant, connection_id], plaintext)?)
    }

    fn open_for(
        &self,
        tenant: &str,
        connection_id: &str,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, SecretsError> {
        Ok(self.open(LABEL, &[tenant, connection_id], sealed)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Secret, secret::names};

    fn key() -> MasterKey {
        MasterKey::generate().unwrap()
    }

    #[test]
    fn secrets_round_trip_and_stay_bound_to_their_connection() {
        let k = key();
        let mut s = Secrets::new();
        s.insert(names::BIND_PASSWORD, Secret::new("p@ss-w0rd"));
        let sealed = k.seal_secrets("fabrikam-internal", "con_abc", &s).unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"p@ss-w0rd"));
        assert_eq!(k.open_secrets("fabrikam-internal", "con_abc", &sealed).unwrap(), s);
        for (tenant, conn) in
            [("fabrikam-public", "con_abc"), ("fabrikam-internal", "con_abd"), ("fabrikam-internalcon_", "abc")]
        {
            assert!(
                matches!(k.open_secrets(tenant, conn, &sealed), Err(SecretsError::Seal(SealError::Decrypt))),
                "{tenant} {conn}"
            );
        }
        assert!(matches!(key().open_secrets("fabrikam-internal", "con_abc", &sealed), Err(SecretsError::Seal(_))));
    }

    #[test]
    fn sealed_with_another_label_does_not_open() {
        let k = key();
        let sealed = k.seal(b"postern.authn.v1/signing-key", &["t", "con_1"], b"x").unwrap();
        assert!(k.open_for("t", "con_1", &sealed).is_err());
    }
}
