//! A master-key rotation in the authenticator: every value it keeps sealed for long — the
//! tenants' signing keys and identities' upstream tokens — that a previous master key
//! sealed is sealed again under the current one ([`MasterKey::reseal`]). Short-lived sealed
//! values (opaque access tokens, upstream login transactions) are not rewritten: they open
//! under the previous keys until they expire.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postern_common::seal::MasterKey;

use crate::store::rotation::{SealedBytes, SealedValue};
use crate::store::{Store, StoreError};

/// Values read at once.
const PAGE: usize = 500;

/// What [`reseal`] did, for one kind of value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Sealed under a previous key, now under the current one.
    pub resealed: usize,
    /// Already under the current key.
    pub current: usize,
    /// Opened by no key given (left as they are, and logged).
    pub unreadable: usize,
}

/// What [`reseal`] did: signing keys, then upstream tokens.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The tenants' signing keys.
    pub signing_keys: Resealed,
    /// Identities' upstream tokens.
    pub upstream_tokens: Resealed,
}

/// Re-seals under the current key every signing key and upstream token a previous key of
/// `master` sealed. Nothing is read without previous keys.
pub async fn reseal(store: &Store, master: &MasterKey) -> Result<Rotation, StoreError> {
    let mut done = Rotation::default();
    if master.previous_keys() == 0 {
        return Ok(done);
    }
    let mut after = (String::new(), String::new());
    loop {
        let page = store.sealed_signing_keys_after((&after.0, &after.1), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.owner[0].clone(), last.owner[1].clone());
        for value in &page {
            let SealedBytes::Raw(sealed) = &value.sealed else { continue };
            let (tenant, kid) = (&value.owner[0], &value.owner[1]);
            if let Some(resealed) = reseal_one(master, crate::keys::SEAL_LABEL, value, sealed, &mut done.signing_keys) {
                store.replace_sealed_signing_key(tenant, kid, sealed, &resealed).await?;
            }
        }
    }
    let mut after = (String::new(), String::new(), String::new());
    loop {
        let page = store.sealed_upstream_tokens_after((&after.0, &after.1, &after.2), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.owner[0].clone(), last.owner[1].clone(), last.owner[2].clone());
        for value in &page {
            let SealedBytes::Text(text) = &value.sealed else { continue };
            let Ok(sealed) = URL_SAFE_NO_PAD.decode(text) else {
                tracing::error!(tenant = %value.owner[0], "an identity's upstream tokens are not base64");
                done.upstream_tokens.unreadable += 1;
                continue;
            };
            let label = crate::oauth::federation::TOKENS_LABEL;
            if let Some(resealed) = reseal_one(master, label, value, &sealed, &mut done.upstream_tokens) {
                let owner = (value.owner[0].as_str(), value.owner[1].as_str(), value.owner[2].as_str());
                store.replace_sealed_upstream_tokens(owner, text, &URL_SAFE_NO_PAD.encode(resealed)).await?;
            }
        }
    }
    Ok(done)
}

/// `sealed` under the current key when a previous key sealed it, counting what was found.
fn reseal_one(
    master: &MasterKey,
    label: &[u8],
    value: &SealedValue,
    sealed: &[u8],
    count: &mut Resealed,
) -> Option<Vec<u8>> {
    let parts: Vec<&str> = value.owner.iter().map(String::as_str).collect();
    match master.reseal(label, &parts, sealed) {
        Ok(None) => {
            count.current += 1;
            None
        }
        Ok(Some(resealed)) => {
            count.resealed += 1;
            Some(resealed)
        }
        Err(e) => {
            tracing::error!(tenant = %value.owner[0], error = %e, "a sealed value opens under no master key given");
            count.unreadable += 1;
            None
        }
    }
}
