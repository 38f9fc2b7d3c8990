//! Directory connections, kept in a small pool per Postern connection: at most
//! [`MAX_OPEN`] open at once (more logins wait for one), at most [`MAX_IDLE`] kept between
//! logins, none reused after [`MAX_IDLE_TIME`] idle. A pool is replaced when its connection
//! changes (its `update_time`), so new options or a new bind password take effect at the
//! next login.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, StdStream};
use postern_connection::{LdapOptions, Resolved};
use postern_connector::ConnectorError;
use postern_connector::egress::{Egress, EgressError, Refused};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{name, timeout, tls};

/// Directory connections open at once, per Postern connection.
pub const MAX_OPEN: usize = 8;
/// Directory connections kept idle between logins, per Postern connection: as many as may be
/// open, so that a burst of logins as large as the pool finds its connections again instead
/// of closing some and opening them anew (a TCP connect, StartTLS, a service bind) for the
/// next burst. With 4 of 8 kept, logins that finished together (a shared commit answers them
/// at once) opened half their connections again: p99 52 ms against 12 ms with 8 callers.
pub const MAX_IDLE: usize = MAX_OPEN;
/// How long a directory connection may wait idle for the next login before it is closed
/// instead of reused: well below the idle limits directories and the firewalls before them
/// enforce (Active Directory's `MaxConnIdleTime` is 900 s, many firewalls drop an idle flow
/// sooner without a word), so a login rarely meets a connection that died silently.
pub const MAX_IDLE_TIME: Duration = Duration::from_secs(120);

/// The pools, by connection id, and the egress policy their connections are opened under.
#[derive(Debug, Default)]
pub struct Pools(Mutex<HashMap<String, Arc<Pool>>>, Egress);

impl Pools {
    /// No pool yet; connections opened only where `egress` allows.
    pub fn new(egress: &Egress) -> Self {
        Self(Mutex::default(), egress.clone())
    }

    /// The egress policy.
    pub fn egress(&self) -> &Egress {
        &self.1
    }

    /// The pool of `conn`, made (or remade, when the connection changed) on first use.
    pub fn get(&self, conn: &Resolved) -> Arc<Pool> {
        let mut pools = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let version = conn.connection.update_time;
        match pools.get(&conn.connection.id) {
            Some(p) if p.version == version => p.clone(),
            _ => {
                let p = Arc::new(Pool {
                    version,
                    egress: self.1.clone(),
                    idle: Mutex::new(Idle::default()),
                    permits: Arc::new(Semaphore::new(MAX_OPEN)),
                });
                pools.insert(conn.connection.id.clone(), p.clone());
                p
            }
        }
    }
}

/// The directory connections of one Postern connection.
#[derive(Debug)]
pub struct Pool {
    version: i64,
    egress: Egress,
    idle: Mutex<Idle<Ldap>>,
    permits: Arc<Semaphore>,
}

/// A directory connection in use.
pub struct Session {
    /// The LDAP handle.
    pub ldap: Ldap,
    /// Set when an operation failed: the connection is closed, not pooled.
    pub broken: bool,
    /// Whether the connection came from the pool (the directory may have closed it since).
    pub reused: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Pool {
    /// A connection to the directory: an idle one, else a new one.
    pub async fn take(&self, conn: &Resolved, o: &LdapOptions) -> Result<Session, ConnectorError> {
        let permit = tokio::time::timeout(timeout(o), self.permits.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| ConnectorError::Unavailable {
                reason: "DIRECTORY_BUSY",
                message: format!(
                    "every connection to the directory of connection {:?} is busy; retry shortly",
                    name(conn)
                ),
            })?;
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            idle.take(Instant::now(), |ldap| !ldap.is_closed())
        };
        let mut session = match pooled {
            Some(ldap) => Session { ldap, broken: false, reused: true, _permit: None },
            None => open(conn, o, &self.egress).await.map_err(|e| e.into_connector_error(conn))?,
        };
        session._permit = Some(permit);
        Ok(session)
    }

    /// A fresh connection in place of `stale`, a pooled one the directory closed meanwhile.
    pub async fn reopen(&self, stale: Session, conn: &Resolved, o: &LdapOptions) -> Result<Session, ConnectorError> {
        let mut fresh = open(conn, o, &self.egress).await.map_err(|e| e.into_connector_error(conn))?;
        fresh._permit = stale._permit;
        Ok(fresh)
    }

    /// Gives a connection back: kept when it works and the pool has room, else closed.
    pub fn put_back(&self, mut session: Session) {
        if session.broken || session.ldap.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.put(session.ldap, Instant::now());
    }
}

/// Idle connections, the most recently used last, each with the time it was given back.
#[derive(Debug)]
struct Idle<T>(Vec<(T, Instant)>);

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Idle<T> {
    /// The most recently used connection that has been idle at most [`MAX_IDLE_TIME`] and is
    /// `usable`; the others met on the way are dropped (closing them), as are all that have
    /// been idle too long.
    fn take(&mut self, now: Instant, usable: impl Fn(&mut T) -> bool) -> Option<T> {
        self.0.retain(|(_, since)| now.saturating_duration_since(*since) <= MAX_IDLE_TIME);
        while let Some((mut conn, _)) = self.0.pop() {
            if usable(&mut conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn`, given back at `now`, when there is room.
    fn put(&mut self, conn: T, now: Instant) {
        if self.0.len() < MAX_IDLE {
            self.0.push((conn, now));
        }
    }
}

/// Why a directory connection could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The TLS configuration could not be built from the connection's certificates.
    Config(String),
    /// No answer within the timeout.
    Timeout(Duration),
    /// TLS failed: the certificate is not trusted, or the handshake failed.
    Tls(String),
    /// The directory cannot be reached.
    Unreachable(String),
    /// The egress policy refuses the directory's address.
    Refused(Refused),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Config(e) => write!(f, "the TLS configuration cannot be built: {e}"),
            OpenError::Timeout(d) => write!(f, "no answer within {} s", d.as_secs()),
            OpenError::Tls(e) => write!(
                f,
                "TLS with the directory failed ({e}); check that ca_certificates holds the CA of its certificate \
                 and that the URL's host is named in it"
            ),
            OpenError::Unreachable(e) => write!(f, "the directory cannot be reached ({e})"),
            OpenError::Refused(r) => write!(f, "{r}"),
        }
    }
}

impl OpenError {
    /// UNAVAILABLE naming the connection (TLS failures told apart: they need a fix).
    pub fn into_connector_error(self, conn: &Resolved) -> ConnectorError {
        tracing::warn!(connection = %name(conn), error = %self, "directory connection failed");
        match self {
            OpenError::Config(_) | OpenError::Tls(_) => ConnectorError::Unavailable {
                reason: "DIRECTORY_TLS_FAILED",
                message: format!(
                    "TLS with the directory of connection {:?} failed: its certificate is not trusted by the \
                     connection's ca_certificates or does not name its host",
                    name(conn)
                ),
            },
            OpenError::Refused(refused) => {
                refused.connector_error(format_args!("the directory of connection {:?} cannot be reached", name(conn)))
            }
            OpenError::Timeout(_) | OpenError::Unreachable(_) => ConnectorError::Unavailable {
                reason: "DIRECTORY_UNAVAILABLE",
                message: format!("the directory of connection {:?} cannot be reached; retry shortly", name(conn)),
            },
        }
    }
}

/// Whether an LDAP error is a TLS failure.
fn is_tls(e: &LdapError) -> bool {
    match e {
        LdapError::Rustls { .. } | LdapError::DNSName { .. } => true,
        LdapError::Io { source } => source.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()),
        _ => false,
    }
}

/// Opens a connection to the directory (with StartTLS when the connection says so), when
/// `egress` allows its address. The name is resolved once, through the policy, and the
/// connection made to the addresses checked: ldap3 is handed the connected socket, and keeps
/// the URL's host name for TLS (the name the certificate is checked against), so that a name
/// whose records change between a check and a connect (DNS rebinding) cannot lead it
/// elsewhere.
pub async fn open(conn: &Resolved, o: &LdapOptions, egress: &Egress) -> Result<Session, OpenError> {
    let limit = timeout(o);
    let addresses = checked(o, egress, limit).await?;
    let socket = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addresses.as_slice()))
        .await
        .map_err(|_| OpenError::Timeout(limit))?
        .and_then(tokio::net::TcpStream::into_std)
        .map_err(|e| OpenError::Unreachable(e.to_string()))?;
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(limit)
        .set_starttls(o.start_tls)
        .set_std_stream(StdStream::Tcp(socket));
    if o.is_tls() {
        settings = settings.set_config(tls::config(&o.ca_certificates).map_err(OpenError::Config)?);
    }
    let connected = tokio::time::timeout(limit, LdapConnAsync::with_settings(settings, &o.url))
        .await
        .map_err(|_| OpenError::Timeout(limit))?;
    let (driver, ldap) = match connected {
        Ok(c) => c,
        Err(e) if is_tls(&e) => return Err(OpenError::Tls(e.to_string())),
        Err(LdapError::Timeout { .. }) => return Err(OpenError::Timeout(limit)),
        Err(e) => return Err(OpenError::Unreachable(e.to_string())),
    };
    let connection = name(conn).to_owned();
    tokio::spawn(async move {
        if let Err(e) = driver.drive().await {
            tracing::debug!(%connection, error = %e, "directory connection closed");
        }
    });
    Ok(Session { ldap, broken: false, reused: false, _permit: None })
}

/// Resolves the directory's host and checks every address under `egress` (a URL naming no
/// host is refused as unreachable).
async fn checked(o: &LdapOptions, egress: &Egress, limit: Duration) -> Result<Vec<std::net::SocketAddr>, OpenError> {
    let (host, port) =
        url_host_port(&o.url).ok_or_else(|| OpenError::Unreachable(format!("{:?} names no host", o.url)))?;
    match tokio::time::timeout(limit, egress.check(&host, port)).await {
        Ok(Ok(addresses)) => Ok(addresses),
        Ok(Err(EgressError::Refused(r))) => Err(OpenError::Refused(r)),
        Ok(Err(e)) => Err(OpenError::Unreachable(e.to_string())),
        Err(_) => Err(OpenError::Timeout(limit)),
    }
}

/// Whether the directory's port accepts a TCP connection (TestConnection's first step), at
/// an address `egress` allows.
pub async fn reach(o: &LdapOptions, egress: &Egress) -> Result<String, String> {
    let url = url_host_port(&o.url).ok_or_else(|| format!("{:?} names no host", o.url))?;
    let limit = timeout(o);
    let addresses =
        checked(o, egress, limit).await.map_err(|e| format!("{}:{} cannot be reached: {e}", url.0, url.1))?;
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addresses.as_slice())).await {
        Ok(Ok(_)) => Ok(format!("{}:{} accepts connections", url.0, url.1)),
        Ok(Err(e)) => Err(format!("{}:{} cannot be reached: {e}", url.0, url.1)),
        Err(_) => Err(format!("{}:{} did not answer within {} s", url.0, url.1, limit.as_secs())),
    }
}

/// The host and port of an `ldap://` or `ldaps://` URL.
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = if scheme.eq_ignore_ascii_case("ldaps") { 636 } else { 389 };
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after.strip_prefix(':').map_or(Some(default), |p| p.parse().ok())?;
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), default)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_are_reused_newest_first_and_dropped_when_idle_too_long() {
        let start = Instant::now();
        let mut idle = Idle::default();
        for n in 0..MAX_IDLE + 2 {
            idle.put(n, start + Duration::from_secs(n as u64));
        }
        // Only MAX_IDLE kept; the newest comes first; unusable ones are skipped and dropped.
        let just_after = start + Duration::from_secs(10);
        assert_eq!(idle.take(just_after, |_| true), Some(MAX_IDLE - 1));
        assert_eq!(idle.take(just_after, |n| *n != MAX_IDLE - 2), Some(MAX_IDLE - 3));
        // Left: connections 0 to MAX_IDLE - 4, the newest given back at `start` + MAX_IDLE - 4
        // s; a second past the limit after that one, they are all dropped.
        let late = start + Duration::from_secs(MAX_IDLE as u64 - 4) + MAX_IDLE_TIME + Duration::from_secs(1);
        assert_eq!(idle.take(late, |_| true), None);
        idle.put(7, late);
        assert_eq!(idle.take(late + MAX_IDLE_TIME, |_| true), Some(7), "idle exactly the limit is kept");
        idle.put(8, late);
        assert_eq!(idle.take(late + MAX_IDLE_TIME + Duration::from_millis(1), |_| true), None);
    }
}
