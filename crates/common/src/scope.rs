//! What an API key may do in its tenant: its scopes, and what each method needs. Each
//! service crate keeps one table (`METHOD_SCOPES`) from its methods to a [`Need`]; the
//! [`PrincipalLayer`](crate::principal::PrincipalLayer) checks it before any handler runs,
//! so no handler checks scopes itself.

use std::fmt;

use postern_proto::tenant::v1::ApiKeyScope;

/// One scope of an API key (the contract's `ApiKeyScope`, which documents each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every read of the tenant.
    ReadOnly,
    /// `UserService`.
    Users,
    /// `ConnectionService`.
    Connections,
    /// `ClientService`.
    Clients,
    /// `SigningKeyService`'s management methods.
    SigningKeys,
    /// `AuthenticationService` with a key.
    Authentication,
    /// The tenant and its API keys.
    Tenant,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 7] = [
        Scope::ReadOnly,
        Scope::Users,
        Scope::Connections,
        Scope::Clients,
        Scope::SigningKeys,
        Scope::Authentication,
        Scope::Tenant,
    ];

    /// The scope's name, as in the contract without its prefix (`USERS`).
    pub fn name(self) -> &'static str {
        match self {
            Scope::ReadOnly => "READ_ONLY",
            Scope::Users => "USERS",
            Scope::Connections => "CONNECTIONS",
            Scope::Clients => "CLIENTS",
            Scope::SigningKeys => "SIGNING_KEYS",
            Scope::Authentication => "AUTHENTICATION",
            Scope::Tenant => "TENANT",
        }
    }

    /// The scope named `name` (`USERS`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The contract's value of this scope.
    pub fn to_proto(self) -> ApiKeyScope {
        match self {
            Scope::ReadOnly => ApiKeyScope::ReadOnly,
            Scope::Users => ApiKeyScope::Users,
            Scope::Connections => ApiKeyScope::Connections,
            Scope::Clients => ApiKeyScope::Clients,
            Scope::SigningKeys => ApiKeyScope::SigningKeys,
            Scope::Authentication => ApiKeyScope::Authentication,
            Scope::Tenant => ApiKeyScope::Tenant,
        }
    }

    /// The scope of a contract value; `None` for `UNSPECIFIED` and unknown numbers.
    pub fn from_proto(value: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.to_proto() as i32 == value)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The scopes of a key: a set, where holding every scope is full tenant access.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope: full access to the tenant (keys created without scopes, and before
    /// scopes existed).
    pub fn full() -> Self {
        Self::from_iter(Scope::ALL)
    }

    /// No scope at all (a starting point to add to).
    pub fn none() -> Self {
        Self(0)
    }

    /// Whether the set holds `scope`.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether the set holds every scope.
    pub fn is_full(self) -> bool {
        self == Self::full()
    }

    /// Whether every scope of `self` is also in `other`.
    pub fn is_subset_of(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    /// The scopes held, in the contract's order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The scopes as stored and signed: empty when full, else names joined by commas.
    pub fn encode(self) -> String {
        if self.is_full() { String::new() } else { self.iter().map(Scope::name).collect::<Vec<_>>().join(",") }
    }

    /// The scopes of [`Scopes::encode`]'s text: empty is full. `None` if a name is unknown.
    pub fn decode(text: &str) -> Option<Self> {
        if text.is_empty() {
            return Some(Self::full());
        }
        text.split(',').map(Scope::from_name).collect::<Option<Vec<_>>>().map(Self::from_iter)
    }

    /// What a method needing `need` lacks in this set: `None` when it may go ahead, else the
    /// scope to name in the refusal.
    pub fn missing(self, need: Need) -> Option<Scope> {
        match need {
            Need::Nothing => None,
            Need::Read(area) if self.contains(Scope::ReadOnly) || self.contains(area) => None,
            Need::Read(area) | Need::Write(area) if self.contains(area) => None,
            Need::Read(area) | Need::Write(area) => Some(area),
        }
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_full() { f.write_str("full") } else { f.debug_set().entries(self.iter()).finish() }
    }
}

/// What a method needs of a tenant key's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: a public method, or an internal one (which keys never reach).
    Nothing,
    /// A read of the area: the area's scope or [`Scope::ReadOnly`].
    Read(Scope),
    /// A change in the area (or a call acting for the tenant): the area's scope.
    Write(Scope),
}

/// A service's table from each method (`/pkg.Service/Method`) to what it needs.
pub type MethodScopes = &'static [(&'static str, Need)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_needs() {
        let read_only = Scopes::from_iter([Scope::ReadOnly]);
        assert_eq!(read_only.missing(Need::Read(Scope::Users)), None);
        assert_eq!(read_only.missing(Need::Write(Scope::Users)), Some(Scope::Users));
        let users = Scopes::from_iter([Scope::Users]);
        assert_eq!(users.missing(Need::Read(Scope::Users)), None);
        assert_eq!(users.missing(Need::Read(Scope::Clients)), Some(Scope::Clients));
        assert_eq!(users.missing(Need::Write(Scope::Users)), None);
        assert_eq!(Scopes::none().missing(Need::Nothing), None);
        for s in Scope::ALL {
            assert_eq!(Scopes::full().missing(Need::Write(s)), None);
            assert_eq!(Scope::from_name(s.name()), Some(s));
            assert_eq!(Scope::from_proto(s.to_proto() as i32), Some(s));
        }
        assert_eq!(Scope::from_proto(0), None);
        assert!(users.is_subset_of(Scopes::full()) && !Scopes::full().is_subset_of(users));
    }

    #[test]
    fn encoding() {
        assert_eq!(Scopes::full().encode(), "");
        assert_eq!(Scopes::decode(""), Some(Scopes::full()));
        let s = Scopes::from_iter([Scope::Tenant, Scope::ReadOnly]);
        assert_eq!(s.encode(), "READ_ONLY,TENANT");
        assert_eq!(Scopes::decode("READ_ONLY,TENANT"), Some(s));
        assert_eq!(Scopes::decode("READ_ONLY,ROOT"), None);
    }
}
