//! Where Postern may connect on a tenant's behalf (the egress policy).
//!
//! A tenant's connections name the hosts Postern connects to: an OpenID issuer and its
//! endpoints, a SAML sign-in URL, a directory, a custom database, an SMTP relay, an SMS
//! gateway. Whoever holds a tenant key with the connections scope could otherwise point one
//! at an address only the server can reach (server-side request forgery): above all the
//! cloud's instance metadata service at `169.254.169.254`, which hands out the machine's
//! credentials. Every connector checks each address it is about to connect to against the
//! operator's policy, after name resolution, so that a name resolving to a refused address is
//! refused as well.
//!
//! The policy: the built-in ranges ([`BUILT_IN_DENY`]: link-local, where the metadata
//! services live, and the unspecified and multicast ranges) plus the operator's
//! (`POSTERN_EGRESS_DENY`, for example the loopback and private ranges on a server whose
//! tenants are not its operators) are refused, except the operator's allowed ranges
//! (`POSTERN_EGRESS_ALLOW`), which win over both. Loopback and private ranges stay reachable by
//! default: directories, custom databases and test peers live there. Zitadel refuses private
//! ranges by default and has no allow list; its users must empty the deny list to reach a
//! local peer.
//!
//! The HTTP clients resolve names through the policy ([`Egress::http_client`]). Where the
//! connection is made by a library of its own (LDAP, SMTP, the custom database's gRPC
//! channel), the connector resolves and checks the name once ([`Egress::check`]) and hands the
//! library a connection to (or the address of) an address checked, keeping the name for TLS:
//! no second lookup, so a name whose records change in between (DNS rebinding) cannot lead
//! elsewhere.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The `ErrorInfo` reason of a connection the egress policy refused (`FAILED_PRECONDITION`:
/// the connection's configuration, or the server's policy, must change).
pub const REFUSED: &str = "EGRESS_REFUSED";

/// The ranges refused whatever the operator configures, unless allowed: IPv4 and IPv6
/// link-local (the instance metadata services of AWS, GCP, Azure, OpenStack at
/// `169.254.169.254`; AWS's IPv6 one is `fd00:ec2::254`), the unspecified addresses ("this
/// host"), Alibaba Cloud's metadata address, and multicast and broadcast.
pub const BUILT_IN_DENY: &[&str] = &[
    "0.0.0.0/8",
    "169.254.0.0/16",
    "100.100.100.200/32",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "fe80::/10",
    "fd00:ec2::254/128",
    "ff00::/8",
];

/// The policy: which addresses a connector may connect to.
#[derive(Debug, Clone)]
pub struct Egress {
    deny: Arc<[IpNet]>,
    allow: Arc<[IpNet]>,
}

impl Default for Egress {
    /// The built-in ranges refused, nothing allowed beyond the rest.
    fn default() -> Self {
        Self::new(&[], &[]).unwrap_or_else(|e| unreachable!("the built-in ranges parse: {e}"))
    }
}

/// An address the policy refuses, or a name that resolved to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The host as the connection names it.
    pub host: String,
    /// The address refused.
    pub address: IpAddr,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            write!(f, "{} is an address this server's egress policy refuses", self.address)?;
        } else {
            write!(f, "{} resolves to {}, an address this server's egress policy refuses", self.host, self.address)?;
        }
        write!(
            f,
            " (POSTERN_EGRESS_DENY and the built-in link-local and metadata ranges; POSTERN_EGRESS_ALLOW admits a range)"
        )
    }
}

impl std::error::Error for Refused {}

/// Why a host could not be checked: refused, or its name did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The host is, or resolves to, a refused address.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The name did not resolve.
    #[error("{host} cannot be resolved: {cause}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        cause: std::io::Error,
    },
}

impl Egress {
    /// The built-in ranges and `deny` refused, `allow` admitted over both. Each entry is an
    /// address or a range in CIDR notation (`10.0.0.0/8`, `::1`, `fd00::/8`); the error names
    /// the first that is neither.
    pub fn new(deny: &[String], allow: &[String]) -> Result<Self, String> {
        let parse = |entries: &mut dyn Iterator<Item = &str>| -> Result<Vec<IpNet>, String> {
            entries
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|e| {
                    e.parse::<IpNet>().or_else(|_| e.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                        format!("{e:?} is neither an IP address nor a range in CIDR notation (10.0.0.0/8, fd00::/8)")
                    })
                })
                .collect()
        };
        let mut denied = parse(&mut BUILT_IN_DENY.iter().copied())?;
        denied.extend(parse(&mut deny.iter().map(String::as_str))?);
        let allowed = parse(&mut allow.iter().map(String::as_str))?;
        Ok(Self { deny: denied.into(), allow: allowed.into() })
    }

    /// Whether a connection to `address` is allowed. An IPv4 address written in IPv6
    /// (`::ffff:169.254.169.254`) is judged as the IPv4 address it is.
    pub fn permits(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.allow.iter().any(|n| n.contains(&address)) || !self.deny.iter().any(|n| n.contains(&address))
    }

    /// Checks `address`, reached as `host`.
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        if self.permits(address) { Ok(()) } else { Err(Refused { host: host.to_owned(), address }) }
    }

    /// Checks the host of `url` when it is an address literal (a name passes here, to be
    /// checked when it is resolved: [`Egress::resolver`], [`Egress::check`]). The URL as parsed
    /// (WHATWG rules, as the HTTP client parses it): `http://2852039166/` and
    /// `http://0xa9.0xfe.0xa9.0xfe/` are `169.254.169.254`.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(a)) => self.check_address(&a.to_string(), IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => self.check_address(&a.to_string(), IpAddr::V6(a)),
            _ => Ok(()),
        }
    }

    /// Resolves `host` and checks every address it resolves to: refused when any of them is
    /// (a name answering one good and one refused address would reach the refused one on a
    /// retry). Answers the addresses.
    pub async fn check(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(address) = bare.parse::<IpAddr>() {
            self.check_address(host, address)?;
            return Ok(vec![SocketAddr::new(address, port)]);
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|cause| EgressError::Resolve { host: host.to_owned(), cause })?
            .collect();
        for a in &found {
            self.check_address(host, a.ip())?;
        }
        Ok(found)
    }

    /// The HTTP client's resolver under this policy: a name resolving to a refused address
    /// fails to connect with [`Refused`] among the error's causes ([`refusal_in`]). Address
    /// literals do not go through a resolver: [`HttpClient::send`] checks them.
    #[cfg(feature = "http")]
    pub fn resolver(&self) -> Arc<dyn reqwest::dns::Resolve> {
        Arc::new(Resolver(self.clone()))
    }

    /// The HTTP client of a connector's calls: names resolved under this policy
    /// ([`Egress::resolver`]), no redirect followed (an upstream endpoint that redirects is
    /// misconfigured, and following it would carry credentials elsewhere, to an address
    /// unchecked), each request bounded by `timeout` and its connect by 5 s at most, Postern's
    /// user agent; its [`HttpClient::send`] checks address literals.
    ///
    /// Building fails only when the TLS backend cannot start; the client then trusts no
    /// certificate (every HTTPS call fails, naming the TLS error) rather than skip the policy.
    #[cfg(feature = "http")]
    pub fn http_client(&self, timeout: std::time::Duration) -> HttpClient {
        let builder = || {
            reqwest::Client::builder()
                .dns_resolver(self.resolver())
                .redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
                .user_agent(concat!("Postern/", env!("CARGO_PKG_VERSION")))
        };
        let client = builder().build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot build the connectors' HTTP client; HTTPS calls will fail");
            builder().tls_certs_only([]).build().unwrap_or_else(|e| {
                // Nothing left that could fail; a client without the policy is never built.
                panic!("cannot build an HTTP client even without TLS roots: {e}")
            })
        });
        HttpClient { client, egress: self.clone() }
    }
}

/// A connector's HTTP client under the egress policy ([`Egress::http_client`]). It
/// dereferences to the `reqwest` client that builds the requests; [`HttpClient::send`] sends
/// them.
#[cfg(feature = "http")]
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    egress: Egress,
}

#[cfg(feature = "http")]
impl std::ops::Deref for HttpClient {
    type Target = reqwest::Client;

    fn deref(&self) -> &reqwest::Client {
        &self.client
    }
}

#[cfg(feature = "http")]
impl HttpClient {
    /// Sends `request`, built with this client: the URL's address literal is checked as the
    /// client parsed it, a name when the client resolves it. A refused address sends nothing
    /// and answers [`SendError::Refused`].
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, SendError> {
        let (client, request) = request.build_split();
        let request = request.map_err(SendError::Transport)?;
        self.egress.check_url(request.url()).map_err(SendError::Refused)?;
        client.execute(request).await.map_err(|e| match refusal_in(&e) {
            Some(refused) => SendError::Refused(refused.clone()),
            None => SendError::Transport(e),
        })
    }
}

impl Refused {
    /// A connector's error for this refusal: `FAILED_PRECONDITION`, reason [`REFUSED`], the
    /// message `<cannot>: <the refusal>` (`cannot` says what could not be reached, naming the
    /// connection).
    pub fn connector_error(&self, cannot: impl fmt::Display) -> crate::ConnectorError {
        crate::ConnectorError::FailedPrecondition { reason: REFUSED, message: format!("{cannot}: {self}") }
    }
}

impl EgressError {
    /// The error as a connector's transport reports it, the [`Refused`] itself (not wrapped)
    /// so that [`refusal_in`] finds it among the causes.
    pub fn into_cause(self) -> Box<dyn std::error::Error + Send + Sync> {
        match self {
            EgressError::Refused(r) => Box::new(r),
            e => Box::new(e),
        }
    }
}

/// Why [`HttpClient::send`] has no answer.
#[cfg(feature = "http")]
#[derive(Debug)]
pub enum SendError {
    /// The policy refuses the address: nothing was sent.
    Refused(Refused),
    /// The request could not be built or sent, or no answer came (connection refused,
    /// timeout, TLS).
    Transport(reqwest::Error),
}

/// The [`Refused`] among an error's causes, if there is one (an HTTP request refused by
/// [`Egress::resolver`]).
pub fn refusal_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(refused) = c.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = c.source();
    }
    None
}

/// [`Egress::resolver`].
#[cfg(feature = "http")]
struct Resolver(Egress);

#[cfg(feature = "http")]
impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in.
            let found = egress.check(name.as_str(), 0).await.map_err(EgressError::into_cause)?;
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// How long an HTTP answer may be kept by its `Cache-Control` header: its `max-age`, zero
/// for `no-store` or `no-cache`, `None` when it says neither. Each cache of an upstream
/// document (OpenID discovery and key sets, SAML metadata) applies its own default and bounds.
pub fn max_age(cache_control: Option<&str>) -> Option<std::time::Duration> {
    let mut found = None;
    for directive in cache_control?.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(std::time::Duration::ZERO);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            found = seconds.trim_matches('"').parse::<u64>().ok().map(std::time::Duration::from_secs);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_reads_cache_control() {
        use std::time::Duration;
        assert_eq!(max_age(None), None);
        assert_eq!(max_age(Some("public, max-age=300")), Some(Duration::from_secs(300)));
        assert_eq!(max_age(Some("max-age=\"60\"")), Some(Duration::from_secs(60)));
        assert_eq!(max_age(Some("private, no-cache, max-age=60")), Some(Duration::ZERO));
        assert_eq!(max_age(Some("No-Store")), Some(Duration::ZERO));
        assert_eq!(max_age(Some("public")), None);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_built_in_ranges_refuse_metadata_and_link_local_and_keep_private_and_loopback() {
        let e = Egress::default();
        for refused in [
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "fe80::1",
            "fd00:ec2::254",
            "::",
            "224.0.0.1",
            "::ffff:169.254.169.254",
            "100.100.100.200",
        ] {
            assert!(!e.permits(ip(refused)), "{refused} is refused");
        }
        for allowed in
            ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "8.8.8.8", "2001:db8::1", "::ffff:127.0.0.1"]
        {
            assert!(e.permits(ip(allowed)), "{allowed} is allowed");
        }
    }

    #[test]
    fn the_operators_ranges_add_to_the_built_in_ones_and_its_allowed_ranges_win() {
        let e = Egress::new(
            &["127.0.0.0/8".into(), "::1".into(), " 10.0.0.0/8 ".into(), String::new()],
            &["10.9.0.0/16".into(), "169.254.170.2".into()],
        )
        .unwrap();
        assert!(!e.permits(ip("127.0.0.1")));
        assert!(!e.permits(ip("::1")));
        assert!(!e.permits(ip("::ffff:127.0.0.1")), "IPv4 written in IPv6 is judged as IPv4");
        assert!(!e.permits(ip("10.1.2.3")));
        assert!(e.permits(ip("10.9.1.1")), "allowed over the operator's deny");
        assert!(e.permits(ip("169.254.170.2")), "allowed over the built-in deny");
        assert!(!e.permits(ip("169.254.169.254")));
        assert!(e.permits(ip("192.168.1.1")));
    }

    #[test]
    fn a_bad_entry_is_named() {
        let err = Egress::new(&["10.0.0.0/33".into()], &[]).unwrap_err();
        assert!(err.contains("\"10.0.0.0/33\"") && err.contains("CIDR"), "{err}");
        let err = Egress::new(&[], &["localhost".into()]).unwrap_err();
        assert!(err.contains("\"localhost\""), "{err}");
    }

    #[test]
    fn address_literals_in_urls_are_checked_as_parsed_and_names_left_to_resolution() {
        let e = Egress::default();
        let refused = e.check_url(&"http://169.254.169.254/latest/meta-data/".parse().unwrap()).unwrap_err();
        assert_eq!(refused.address, ip("169.254.169.254"));
        assert!(refused.to_string().contains("169.254.169.254 is an address this server's egress policy refuses"));
        assert!(e.check_url(&"http://[fe80::1]:8080/".parse().unwrap()).is_err());
        assert!(e.check_url(&"http://metadata.google.internal/".parse().unwrap()).is_ok(), "left to resolution");
        for disguised in ["http://2852039166/", "http://0xa9.0xfe.0xa9.0xfe/", "http://0251.0376.0251.0376/"] {
            assert!(e.check_url(&disguised.parse().unwrap()).is_err(), "{disguised} is 169.254.169.254");
        }
        assert!(e.check_url(&"http://[::ffff:a9fe:a9fe]/".parse().unwrap()).is_err(), "169.254.169.254 in IPv6");
        assert!(e.check_url(&"https://accounts.google.com/".parse().unwrap()).is_ok());
        assert!(e.check_url(&"http://127.0.0.1:8080/".parse().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn a_name_is_refused_when_it_resolves_to_a_refused_address() {
        let strict = Egress::new(&["127.0.0.0/8".into(), "::1".into()], &[]).unwrap();
        let err = strict.check("localhost", 389).await.unwrap_err();
        let EgressError::Refused(r) = err else { panic!("refused, not {err}") };
        assert!(r.to_string().starts_with("localhost resolves to "), "{r}");
        assert!(Egress::default().check("localhost", 389).await.is_ok());
        // A host written as a number is resolved by the system as the address it encodes.
        let EgressError::Refused(r) = Egress::default().check("2852039166", 389).await.unwrap_err() else {
            panic!("2852039166 is 169.254.169.254")
        };
        assert_eq!(r.address, ip("169.254.169.254"));
        assert_eq!(
            Egress::default().check("127.0.0.1", 389).await.unwrap(),
            vec![SocketAddr::new(ip("127.0.0.1"), 389)]
        );
    }

    #[cfg(feature = "http")]
    #[tokio::test]
    async fn the_http_resolver_refuses_a_name_and_says_why() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let strict = Egress::new(&["127.0.0.0/8".into(), "::1".into()], &[]).unwrap();
        let client = reqwest::Client::builder().dns_resolver(strict.resolver()).build().unwrap();
        let err = client.get(format!("http://localhost:{port}/")).send().await.unwrap_err();
        let refused = refusal_in(&err).expect("the refusal among the causes");
        assert_eq!(refused.host, "localhost");
        // Through send: the name as above, and a literal before anything is sent.
        let http = strict.http_client(std::time::Duration::from_secs(5));
        let Err(SendError::Refused(r)) = http.send(http.get(format!("http://localhost:{port}/"))).await else {
            panic!("refused")
        };
        assert_eq!(r.host, "localhost");
        let Err(SendError::Refused(r)) = http.send(http.get(format!("http://127.0.0.1:{port}/"))).await else {
            panic!("refused")
        };
        assert_eq!(r.address, ip("127.0.0.1"));
    }
}
