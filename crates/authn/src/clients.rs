//! Client checks remembered between logins, so that a warm login or token request asks the
//! tenant service nothing, as it asks the registry nothing.
//!
//! A login checks that the client belongs to the tenant and, for a confidential client, its
//! secret (the tenant service's internal `VerifyClientSecret`). What passed is remembered:
//! the tenant, the client and a SHA-256 digest of the secret presented (never the secret).
//! Only passes are remembered; a refusal is asked again each time. The client itself as
//! the internal `ResolveClient` answered it (its type, whether it is confidential, its
//! callback and logout URLs, and its client grants: the APIs it may get `client_credentials`
//! tokens for and the scopes granted for each; never a secret) is remembered the same way,
//! so that the token endpoint and the authorization request do not ask for it on every call.
//! Every change to a client's grants is a `TENANT_EVENT_TYPE_CLIENT_CHANGED` of the client
//! in the log, so a revoked grant or scope is forgotten like a rotated secret.
//!
//! What is remembered holds exactly as long as the tenant service's event log says nothing
//! of the client. The log's follower ([`tenants`](crate::tenants)) forgets a client when it
//! is updated, its secret rotated or it is deleted (`TENANT_EVENT_TYPE_CLIENT_CHANGED`,
//! `…_CLIENT_DELETED`), and a tenant's clients when the tenant is deleted; so a rotated secret
//! stops working here within the log's delivery time (milliseconds), not at the end of some
//! expiry. While the follower is not connected, nothing is remembered or used: the log could
//! be saying something this process does not hear.
//!
//! A check that was asked before a forget and answered after it is not remembered (a
//! generation counter tells), so an answer about the old secret cannot outlive the event
//! that retired it.
//!
//! The tenant's APIs (resource servers) that user logins asked tokens for (`audience`) are
//! remembered the same way: an API found (its identifier and the scopes it defines) until
//! the log says the tenant's APIs changed (`TENANT_EVENT_TYPE_RESOURCE_SERVERS_CHANGED`);
//! an unknown audience is asked again each time.
//!
//! The tenant itself (its display name and logo, which the hosted login page and the
//! passwordless messages show) is remembered the same way, until the log says the tenant was
//! updated (`TENANT_EVENT_TYPE_TENANT_UPDATED`) or deleted. Whether a tenant of that name
//! exists *now*, and since when, is never answered from here
//! ([`AuthnApi::tenant_created`](crate::api::AuthnApi) asks each time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use postern_proto::tenant::v1 as tenant_pb;
use sha2::{Digest, Sha256};

/// At most this many clients are remembered; past it, everything is forgotten and the
/// memory starts over (a tenant cannot grow it without bound by inventing client ids, as
/// only passes are kept, but many real clients can).
const MAX_CLIENTS: usize = 10_000;
/// At most this many secrets are remembered per client (each a digest).
const MAX_SECRETS: usize = 2;

type Secret = [u8; 32];

/// A client as the tenant service's `ResolveClient` answered it: the client (without its
/// secret) and its grants. Reads as the client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolvedClient {
    /// The client.
    pub client: tenant_pb::Client,
    /// What it may get `client_credentials` tokens for: each API's identifier and the scopes
    /// granted (empty for a client that is not machine-to-machine).
    pub grants: Vec<tenant_pb::ResolvedGrant>,
}

impl ResolvedClient {
    /// The grant for the API `audience`, if the client holds one.
    pub fn grant(&self, audience: &str) -> Option<&tenant_pb::ResolvedGrant> {
        self.grants.iter().find(|g| g.audience == audience)
    }
}

impl std::ops::Deref for ResolvedClient {
    type Target = tenant_pb::Client;

    fn deref(&self) -> &tenant_pb::Client {
        &self.client
    }
}

/// What is remembered of one client.
#[derive(Debug, Default)]
struct Known {
    /// The client as the tenant service answered it (no secret in it), with its grants.
    client: Option<Arc<ResolvedClient>>,
    /// Digests of secrets that passed.
    secrets: Vec<Secret>,
}

#[derive(Debug, Default)]
struct State {
    /// The follower of the tenant event log is connected.
    live: bool,
    /// Bumped by every forget.
    generation: u64,
    passed: HashMap<(String, String), Known>,
    /// The APIs found, by tenant and identifier.
    apis: HashMap<(String, String), Arc<tenant_pb::ResourceServer>>,
    /// The tenants found, by name.
    tenants: HashMap<String, Arc<tenant_pb::Tenant>>,
}

/// The client checks that passed, while they hold.
#[derive(Debug, Default)]
pub struct ClientChecks {
    state: Mutex<State>,
}

/// Where a check stood when it was asked of the tenant service: see
/// [`ClientChecks::remember`].
#[derive(Debug, Clone, Copy)]
pub struct Asked(u64);

fn digest(secret: &str) -> Secret {
    Sha256::digest(secret.as_bytes()).into()
}

impl ClientChecks {
    /// Nothing remembered, and not live until the follower connects.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each update is whole under the lock: a poisoned lock holds no half-state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `secret` passed for the client before and still holds.
    pub fn passed(&self, tenant: &str, client_id: &str, secret: &str) -> bool {
        let state = self.state();
        if !state.live {
            return false;
        }
        let key = (tenant.to_owned(), client_id.to_owned());
        state.passed.get(&key).is_some_and(|known| known.secrets.contains(&digest(secret)))
    }

    /// The client as the tenant service answered it, if remembered and still holding.
    pub fn client(&self, tenant: &str, client_id: &str) -> Option<Arc<ResolvedClient>> {
        let state = self.state();
        if !state.live {
            return None;
        }
        state.passed.get(&(tenant.to_owned(), client_id.to_owned())).and_then(|known| known.client.clone())
    }

    /// Remembers the client and its grants as `ResolveClient` answered them (any secret in
    /// it is dropped), unless something was forgotten since it was asked or the follower is
    /// not connected.
    pub fn remember_client(
        &self,
        asked: Asked,
        tenant: &str,
        client: &tenant_pb::Client,
        grants: Vec<tenant_pb::ResolvedGrant>,
    ) -> Arc<ResolvedClient> {
        let client = Arc::new(ResolvedClient {
            client: tenant_pb::Client { client_secret: String::new(), ..client.clone() },
            grants,
        });
        self.update(asked, tenant, &client.client_id, |known| known.client = Some(client.clone()));
        client
    }

    /// Updates what is remembered of a client, unless something was forgotten since it was
    /// asked or the follower is not connected.
    fn update(&self, asked: Asked, tenant: &str, client_id: &str, f: impl FnOnce(&mut Known)) {
        let mut state = self.state();
        if !state.live || state.generation != asked.0 {
            return;
        }
        let key = (tenant.to_owned(), client_id.to_owned());
        if state.passed.len() >= MAX_CLIENTS && !state.passed.contains_key(&key) {
            state.passed.clear();
        }
        f(state.passed.entry(key).or_default());
    }

    /// Marks the moment a check is asked of the tenant service.
    pub fn asking(&self) -> Asked {
        Asked(self.state().generation)
    }

    /// Remembers a check that passed, unless something was forgotten since it was asked or
    /// the follower is not connected.
    pub fn remember(&self, asked: Asked, tenant: &str, client_id: &str, secret: &str) {
        let d = digest(secret);
        self.update(asked, tenant, client_id, |known| {
            let secrets = &mut known.secrets;
            if !secrets.contains(&d) {
                if secrets.len() >= MAX_SECRETS {
                    secrets.remove(0);
                }
                secrets.push(d);
            }
        });
    }

    /// The API `identifier` of `tenant` as the tenant service answered it, if remembered
    /// and still holding.
    pub fn api(&self, tenant: &str, identifier: &str) -> Option<Arc<tenant_pb::ResourceServer>> {
        let state = self.state();
        if !state.live {
            return None;
        }
        state.apis.get(&(tenant.to_owned(), identifier.to_owned())).cloned()
    }

    /// Remembers an API of `tenant` as the tenant service answered it, unless something
    /// was forgotten since it was asked or the follower is not connected.
    pub fn remember_api(
        &self,
        asked: Asked,
        tenant: &str,
        api: tenant_pb::ResourceServer,
    ) -> Arc<tenant_pb::ResourceServer> {
        let api = Arc::new(api);
        let mut state = self.state();
        if state.live && state.generation == asked.0 {
            let key = (tenant.to_owned(), api.identifier.clone());
            if state.apis.len() >= MAX_CLIENTS && !state.apis.contains_key(&key) {
                state.apis.clear();
            }
            state.apis.insert(key, api.clone());
        }
        api
    }

    /// The tenant `name` as the tenant service answered it, if remembered and still holding.
    pub fn tenant(&self, name: &str) -> Option<Arc<tenant_pb::Tenant>> {
        let state = self.state();
        if !state.live {
            return None;
        }
        state.tenants.get(name).cloned()
    }

    /// Remembers the tenant `name` as the tenant service answered it, unless something was
    /// forgotten since it was asked or the follower is not connected.
    pub fn remember_tenant(&self, asked: Asked, name: &str, tenant: tenant_pb::Tenant) -> Arc<tenant_pb::Tenant> {
        let tenant = Arc::new(tenant);
        let mut state = self.state();
        if state.live && state.generation == asked.0 {
            if state.tenants.len() >= MAX_CLIENTS && !state.tenants.contains_key(name) {
                state.tenants.clear();
            }
            state.tenants.insert(name.to_owned(), tenant.clone());
        }
        tenant
    }

    /// Forgets what is remembered of the tenant itself (it was updated).
    pub fn forget_tenant_fields(&self, tenant: &str) {
        let mut state = self.state();
        state.generation += 1;
        state.tenants.remove(tenant);
    }

    /// Forgets a tenant's APIs (one was created, updated or deleted).
    pub fn forget_apis(&self, tenant: &str) {
        let mut state = self.state();
        state.generation += 1;
        state.apis.retain(|(t, _), _| t != tenant);
    }

    /// Forgets a client (updated, its secret rotated, or deleted).
    pub fn forget_client(&self, tenant: &str, client_id: &str) {
        let mut state = self.state();
        state.generation += 1;
        state.passed.remove(&(tenant.to_owned(), client_id.to_owned()));
    }

    /// Forgets a tenant with its clients and APIs (the tenant was deleted).
    pub fn forget_tenant(&self, tenant: &str) {
        let mut state = self.state();
        state.generation += 1;
        state.passed.retain(|(t, _), _| t != tenant);
        state.apis.retain(|(t, _), _| t != tenant);
        state.tenants.remove(tenant);
    }

    /// The follower connected (`true`), or lost the log (`false`: everything is forgotten,
    /// and nothing is remembered until it is back).
    pub fn set_live(&self, live: bool) {
        let mut state = self.state();
        if !live {
            state.generation += 1;
            state.passed.clear();
            state.apis.clear();
            state.tenants.clear();
        }
        state.live = live;
    }

    /// How many clients are remembered.
    pub fn len(&self) -> usize {
        self.state().passed.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_remembered_while_live_and_until_forgotten() {
        let c = ClientChecks::new();
        let asked = c.asking();
        c.remember(asked, "t", "app", "s3cret");
        assert!(!c.passed("t", "app", "s3cret"), "nothing is remembered before the follower is live");

        c.set_live(true);
        let asked = c.asking();
        c.remember(asked, "t", "app", "s3cret");
        assert!(c.passed("t", "app", "s3cret"));
        assert!(!c.passed("t", "app", "other"), "another secret is asked again");
        assert!(!c.passed("u", "app", "s3cret"), "tenants apart");

        c.forget_client("t", "app");
        assert!(!c.passed("t", "app", "s3cret"), "a rotation or update forgets");

        c.remember(c.asking(), "t", "app", "s3cret");
        c.remember(c.asking(), "t", "web", "x");
        c.forget_tenant("t");
        assert!(c.is_empty(), "a deleted tenant's clients go");

        c.remember(c.asking(), "t", "app", "s3cret");
        c.set_live(false);
        assert!(!c.passed("t", "app", "s3cret"));
        c.set_live(true);
        assert!(!c.passed("t", "app", "s3cret"), "what was known before the log was lost stays forgotten");
    }

    #[test]
    fn clients_are_remembered_without_secret_until_forgotten() {
        let c = ClientChecks::new();
        let client = tenant_pb::Client {
            client_id: "app".into(),
            client_secret: "never-kept".into(),
            confidential: true,
            ..Default::default()
        };
        c.remember_client(c.asking(), "t", &client, Vec::new());
        assert!(c.client("t", "app").is_none(), "nothing is remembered before the follower is live");
        c.set_live(true);
        let asked = c.asking();
        let kept = c.remember_client(asked, "t", &client, Vec::new());
        assert!(kept.client_secret.is_empty(), "a secret is never kept");
        assert!(c.client("t", "app").is_some_and(|k| k.confidential && k.client_secret.is_empty()));
        assert!(c.client("u", "app").is_none(), "tenants apart");
        c.remember(c.asking(), "t", "app", "s3cret");
        assert!(c.client("t", "app").is_some() && c.passed("t", "app", "s3cret"), "both kept side by side");
        c.forget_client("t", "app");
        assert!(c.client("t", "app").is_none(), "an update forgets the client");
        // Asked before a forget, answered after: not kept.
        let asked = c.asking();
        c.forget_tenant("t");
        c.remember_client(asked, "t", &client, Vec::new());
        assert!(c.client("t", "app").is_none());
    }

    #[test]
    fn apis_are_remembered_until_the_tenants_apis_change() {
        let c = ClientChecks::new();
        let api = tenant_pb::ResourceServer { identifier: "https://api".into(), ..Default::default() };
        c.remember_api(c.asking(), "t", api.clone());
        assert!(c.api("t", "https://api").is_none(), "nothing is remembered before the follower is live");
        c.set_live(true);
        c.remember_api(c.asking(), "t", api.clone());
        c.remember_api(c.asking(), "u", api.clone());
        assert!(c.api("t", "https://api").is_some());
        assert!(c.api("t", "https://other").is_none());
        c.forget_apis("t");
        assert!(c.api("t", "https://api").is_none(), "a change of the tenant's APIs forgets them");
        assert!(c.api("u", "https://api").is_some(), "tenants apart");
        let asked = c.asking();
        c.forget_apis("u");
        c.remember_api(asked, "u", api.clone());
        assert!(c.api("u", "https://api").is_none(), "asked before a forget, answered after: not kept");
        c.remember_api(c.asking(), "u", api);
        c.forget_tenant("u");
        assert!(c.api("u", "https://api").is_none(), "a deleted tenant's APIs go");
    }

    #[test]
    fn tenants_are_remembered_until_updated_or_deleted() {
        let c = ClientChecks::new();
        let tenant = |name: &str, display: &str| tenant_pb::Tenant {
            name: name.into(),
            display_name: display.into(),
            ..Default::default()
        };
        c.remember_tenant(c.asking(), "t", tenant("t", "T"));
        assert!(c.tenant("t").is_none(), "nothing is remembered before the follower is live");
        c.set_live(true);
        c.remember_tenant(c.asking(), "t", tenant("t", "T"));
        c.remember_tenant(c.asking(), "u", tenant("u", "U"));
        assert_eq!(c.tenant("t").map(|t| t.display_name.clone()).as_deref(), Some("T"));
        c.forget_tenant_fields("t");
        assert!(c.tenant("t").is_none(), "an update forgets the tenant");
        assert!(c.tenant("u").is_some(), "tenants apart");
        let asked = c.asking();
        c.forget_tenant_fields("t");
        c.remember_tenant(asked, "t", tenant("t", "T"));
        assert!(c.tenant("t").is_none(), "asked before an update, answered after: not kept");
        c.forget_tenant("u");
        assert!(c.tenant("u").is_none(), "a deleted tenant goes");
        c.remember_tenant(c.asking(), "t", tenant("t", "T2"));
        c.set_live(false);
        c.set_live(true);
        assert!(c.tenant("t").is_none(), "what was known before the log was lost stays forgotten");
    }

    #[test]
    fn an_answer_older_than_a_forget_is_not_remembered() {
        let c = ClientChecks::new();
        c.set_live(true);
        let asked = c.asking();
        // The secret is rotated while the old one is being checked.
        c.forget_client("t", "app");
        c.remember(asked, "t", "app", "old");
        assert!(!c.passed("t", "app", "old"));
    }

    #[test]
    fn memory_is_bounded() {
        let c = ClientChecks::new();
        c.set_live(true);
        for i in 0..3 {
            c.remember(c.asking(), "t", "app", &format!("s{i}"));
        }
        assert!(!c.passed("t", "app", "s0"), "at most {MAX_SECRETS} secrets a client");
        assert!(c.passed("t", "app", "s2"));
        for i in 0..=MAX_CLIENTS {
            c.remember(c.asking(), "t", &format!("c{i}"), "s");
        }
        assert!(c.len() <= MAX_CLIENTS);
    }
}
