//! Active Directory's rules for `ad` connections: the user id from `objectGUID`, and
//! accounts that are disabled, locked, expired or whose password has expired refused with a
//! clear reason (from `userAccountControl`, `msDS-User-Account-Control-Computed`,
//! `lockoutTime`, `accountExpires` and `pwdLastSet`, and from the sub-codes of a refused bind,
//! which is how Active Directory itself says it).
//!
//! A lock-out ends by itself: Active Directory unlocks an account once the domain's lockout
//! duration has passed, but leaves `lockoutTime` set until the next successful logon, and
//! never keeps the lock-out bit of `userAccountControl` up to date. Whether an account is
//! locked *now* is what the constructed attribute `msDS-User-Account-Control-Computed` says
//! (Windows Server 2003 and later compute it with the domain's policy); only a directory that
//! does not have it is judged by `lockoutTime`, as locked for [`LOCKOUT_FALLBACK`] after it
//! (Active Directory's default lockout duration).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ldap3::SearchEntry;
use postern_connection::Resolved;
use postern_connector::ConnectorError;

use crate::{first, first_bytes, name};

/// The attributes read for Active Directory's rules.
pub const ATTRIBUTES: &[&str] =
    &["objectGUID", "userAccountControl", COMPUTED_UAC, "lockoutTime", "accountExpires", "pwdLastSet"];

/// The constructed attribute that says whether an account is locked out or its password has
/// expired now, under the domain's policy (only returned when asked for by name).
pub const COMPUTED_UAC: &str = "msDS-User-Account-Control-Computed";

/// How long after `lockoutTime` an account counts as locked in a directory without
/// [`COMPUTED_UAC`]: Active Directory's default lockout duration.
pub const LOCKOUT_FALLBACK: Duration = Duration::from_secs(30 * 60);

/// `userAccountControl`: the account is disabled.
pub const ACCOUNTDISABLE: u32 = 0x0002;
/// `userAccountControl`: the account is locked out.
pub const LOCKOUT: u32 = 0x0010;
/// `userAccountControl`: the password never expires (`pwdLastSet` 0 then means nothing).
pub const DONT_EXPIRE_PASSWORD: u32 = 0x1_0000;
/// `userAccountControl`: the password has expired.
pub const PASSWORD_EXPIRED: u32 = 0x80_0000;

/// Seconds from 1601-01-01 (Windows' FILETIME epoch) to 1970-01-01.
const FILETIME_UNIX_OFFSET_SECS: u64 = 11_644_473_600;

/// The `objectGUID` as Active Directory shows it (`{…}` without braces, lowercase): its
/// first three fields are little-endian.
pub fn object_guid(entry: &SearchEntry) -> Option<String> {
    let bytes: [u8; 16] = first_bytes(entry, "objectGUID")?.try_into().ok()?;
    Some(uuid::Uuid::from_bytes_le(bytes).hyphenated().to_string())
}

/// A FILETIME (100 ns ticks since 1601) as a time; `None` for 0 and the maximum ("never").
pub fn filetime(value: &str) -> Option<SystemTime> {
    let ticks: i64 = value.trim().parse().ok()?;
    if ticks <= 0 || ticks == i64::MAX {
        return None;
    }
    let ticks = u64::try_from(ticks).ok()?;
    let since_1601 = Duration::from_secs(ticks / 10_000_000) + Duration::from_nanos((ticks % 10_000_000) * 100);
    let unix = since_1601.checked_sub(Duration::from_secs(FILETIME_UNIX_OFFSET_SECS))?;
    UNIX_EPOCH.checked_add(unix)
}

fn refused(reason: &'static str, conn: &Resolved, what: &str) -> ConnectorError {
    ConnectorError::PermissionDenied {
        reason,
        message: format!("the account {what} in the directory of connection {:?}", name(conn)),
    }
}

fn disabled(conn: &Resolved) -> ConnectorError {
    refused("ACCOUNT_DISABLED", conn, "is disabled; an administrator of the directory can enable it")
}

fn locked_out(conn: &Resolved) -> ConnectorError {
    refused(
        "ACCOUNT_LOCKED",
        conn,
        "is locked out after too many failed logins; it unlocks after the directory's lockout duration or by an \
         administrator",
    )
}

fn expired(conn: &Resolved) -> ConnectorError {
    refused("ACCOUNT_EXPIRED", conn, "has expired; an administrator of the directory can extend it")
}

fn password_expired(conn: &Resolved) -> ConnectorError {
    refused(
        "PASSWORD_EXPIRED",
        conn,
        "has an expired password, or one that must be changed: change it at Windows sign-in",
    )
}

/// What a refused bind's diagnostic (`… AcceptSecurityContext error, data 533, …`) says
/// about the account, when it says more than "wrong password".
pub fn bind_refusal(conn: &Resolved, diagnostic: &str) -> Option<ConnectorError> {
    let code = diagnostic.split("data ").nth(1)?.split([',', ' ']).next()?.to_ascii_lowercase();
    match code.as_str() {
        "533" => Some(disabled(conn)),
        "775" => Some(locked_out(conn)),
        "701" => Some(expired(conn)),
        "532" | "773" => Some(password_expired(conn)),
        "530" | "531" => Some(refused(
            "ACCOUNT_RESTRICTED",
            conn,
            "may not log in at this time or from this workstation (the directory's logon restrictions)",
        )),
        // 525 (no such user), 52e (wrong password) and the rest: wrong credentials.
        _ => None,
    }
}

/// Refuses an account that the directory marks disabled, locked, expired or with an
/// expired password (checked after its password was found right).
pub fn check_account(conn: &Resolved, entry: &SearchEntry, now: SystemTime) -> Result<(), ConnectorError> {
    let flags = |attr: &str| first(entry, attr).and_then(|v| v.trim().parse::<i64>().ok()).map(|v| v as u32);
    let uac = flags("userAccountControl").unwrap_or(0);
    if uac & ACCOUNTDISABLE != 0 {
        return Err(disabled(conn));
    }
    let computed = flags(COMPUTED_UAC);
    let locked = match computed {
        Some(now_flags) => now_flags & LOCKOUT != 0,
        None => {
            uac & LOCKOUT != 0
                || first(entry, "lockoutTime")
                    .and_then(filetime)
                    .is_some_and(|since| since.checked_add(LOCKOUT_FALLBACK).is_some_and(|until| now < until))
        }
    };
    if locked {
        return Err(locked_out(conn));
    }
    if first(entry, "accountExpires").and_then(filetime).is_some_and(|t| t <= now) {
        return Err(expired(conn));
    }
    let must_change = first(entry, "pwdLastSet").is_some_and(|v| v.trim() == "0") && uac & DONT_EXPIRE_PASSWORD == 0;
    if (uac | computed.unwrap_or(0)) & PASSWORD_EXPIRED != 0 || must_change {
        return Err(password_expired(conn));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetimes() {
        assert_eq!(filetime("0"), None);
        assert_eq!(filetime("9223372036854775807"), None);
        // 2001-01-01T00:00:00Z.
        let t = filetime("126227808000000000").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 978_307_200);
    }
}
