//! A directory user's groups, nested ones included: for `ad` one search with Active
//! Directory's in-chain matching rule (`1.2.840.113556.1.4.1941`, every level at once); for
//! `ldap` a breadth-first search of the groups listing each DN found, level by level up to
//! the connection's depth, each group read once (a loop of groups ends).

use std::collections::HashSet;

use ldap3::{Scope, SearchOptions, ldap_escape};
use postern_connection::{LdapOptions, Resolved, Strategy};
use postern_connector::ConnectorError;

use crate::pool::Session;
use crate::{entries, first, timeout, unavailable};

/// The most groups a user's claim lists.
pub const MAX_GROUPS: usize = 1000;

/// The groups listing `member` (a DN): their DNs and names.
async fn listing(
    conn: &Resolved,
    o: &LdapOptions,
    session: &mut Session,
    member: &str,
) -> Result<Vec<(String, String)>, ConnectorError> {
    let g = &o.groups;
    let filter = g.filter.replace("{dn}", &ldap_escape(member));
    let answer = session
        .ldap
        .with_timeout(timeout(o))
        .with_search_options(SearchOptions::new().sizelimit(i32::try_from(MAX_GROUPS).unwrap_or(i32::MAX)))
        .search(&g.base_dn, Scope::Subtree, &filter, vec![g.name_attribute.as_str()])
        .await;
    let raw = match answer {
        // Size limit reached: the first MAX_GROUPS are kept.
        Ok(r) if r.1.rc == 0 || r.1.rc == 4 => r.0,
        // No such base: no groups.
        Ok(r) if r.1.rc == 32 => Vec::new(),
        Ok(r) => {
            session.broken = true;
            return Err(unavailable(conn, "group search", &ldap3::LdapError::LdapResult { result: r.1 }));
        }
        Err(e) => {
            session.broken = true;
            return Err(unavailable(conn, "group search", &e));
        }
    };
    let found = entries(raw).map_err(|e| unavailable(conn, "group search", &e))?;
    Ok(found
        .into_iter()
        .map(|e| {
            let name = first(&e, &g.name_attribute).map_or_else(|| e.dn.clone(), str::to_owned);
            (e.dn, name)
        })
        .collect())
}

/// The names of the groups `user_dn` belongs to, directly or through other groups, sorted.
pub async fn of(
    conn: &Resolved,
    o: &LdapOptions,
    session: &mut Session,
    user_dn: &str,
) -> Result<Vec<String>, ConnectorError> {
    let mut names = Vec::new();
    if conn.connection.spec.strategy == Strategy::Ad {
        names = listing(conn, o, session, user_dn).await?.into_iter().map(|(_, n)| n).collect();
    } else {
        let mut seen: HashSet<String> = HashSet::from([user_dn.to_ascii_lowercase()]);
        let mut frontier = vec![user_dn.to_owned()];
        for _ in 0..o.groups.max_depth {
            let mut next = Vec::new();
            for member in &frontier {
                for (dn, name) in listing(conn, o, session, member).await? {
                    if names.len() < MAX_GROUPS && seen.insert(dn.to_ascii_lowercase()) {
                        names.push(name);
                        next.push(dn);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}
