//! Secret values of a connection, kept apart from its public options so that the store can
//! encrypt them (see [`crate::secrets`]) and reads can say which are set without showing them.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

/// The names of the secrets, relative to their options message: the name is also the
/// secret's field path under `connection.options.<family>.`.
pub mod names {
    /// `client_secret` of `oauth2`, `oidc`, `google_apps` and `azure_ad`.
    pub const CLIENT_SECRET: &str = "client_secret";
    /// `client_assertion_key` of `oidc` (the key of `private_key_jwt`).
    pub const CLIENT_ASSERTION_KEY: &str = "client_assertion_key";
    /// `bind_password` of `ldap`.
    pub const BIND_PASSWORD: &str = "bind_password";
    /// `request_signing_key` of `saml`.
    pub const REQUEST_SIGNING_KEY: &str = "request_signing_key";
    /// `decryption_key` of `saml`.
    pub const DECRYPTION_KEY: &str = "decryption_key";
    /// `smtp_password` of `email`.
    pub const SMTP_PASSWORD: &str = "smtp_password";
    /// `token` of `sms`.
    pub const TOKEN: &str = "token";
    /// `custom_database.token` of `database`.
    pub const CUSTOM_DATABASE_TOKEN: &str = "custom_database.token";
}

/// A secret value: never printed by `Debug`, wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The value itself. Call only where the value is used (encryption, a provider call),
    /// never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The secrets of one connection, by name (see [`names`]). `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, Secret>);

/// Why stored secrets could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("stored connection secrets are not a JSON object of strings: {0}")]
pub struct SecretsFormatError(#[source] serde_json::Error);

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// The secret called `name`, if set.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }

    /// Whether the secret called `name` is set.
    pub fn is_set(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Sets the secret called `name`, replacing any previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: Secret) {
        self.0.insert(name.into(), value);
    }

    /// Removes the secret called `name`; whether it was set.
    pub fn remove(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }

    /// The names of the secrets that are set, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many secrets are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The secrets after an update: each secret of `update` replaces the stored one, and the
    /// stored secrets that `update` leaves out are kept.
    pub fn merged(&self, update: &Secrets) -> Secrets {
        let mut out = self.clone();
        for (name, value) in &update.0 {
            out.0.insert(name.clone(), value.clone());
        }
        out
    }

    /// The plaintext to encrypt: a JSON object of names to values, wiped when dropped.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let map: BTreeMap<&str, &str> = self.0.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        // Serializing a map of strings cannot fail; fall back to an empty object regardless.
        Zeroizing::new(serde_json::to_vec(&map).unwrap_or_else(|_| b"{}".to_vec()))
    }

    /// Decodes what [`Secrets::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretsFormatError> {
        let map: BTreeMap<String, String> = serde_json::from_slice(bytes).map_err(SecretsFormatError)?;
        Ok(Self(map.into_iter().map(|(k, v)| (k, Secret::new(v))).collect()))
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_names_not_values() {
        let mut s = Secrets::new();
        s.insert(names::CLIENT_SECRET, Secret::new("hunter2"));
        let shown = format!("{s:?} {:?}", s.get(names::CLIENT_SECRET));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("client_secret"), "{shown}");
    }

    #[test]
    fn bytes_round_trip_and_merge_keeps_what_the_update_leaves_out() {
        let mut stored = Secrets::new();
        stored.insert(names::BIND_PASSWORD, Secret::new("old"));
        stored.insert(names::CLIENT_SECRET, Secret::new("keep"));
        let back = Secrets::from_bytes(&stored.to_bytes()).unwrap();
        assert_eq!(back, stored);

        let mut update = Secrets::new();
        update.insert(names::BIND_PASSWORD, Secret::new("new"));
        let merged = stored.merged(&update);
        assert_eq!(merged.get(names::BIND_PASSWORD).unwrap().expose(), "new");
        assert_eq!(merged.get(names::CLIENT_SECRET).unwrap().expose(), "keep");
        assert!(Secrets::from_bytes(b"[1]").is_err());
    }
}
