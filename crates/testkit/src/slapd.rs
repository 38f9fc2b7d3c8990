//! A throwaway OpenLDAP `slapd` for the directory tests (Debian's `slapd` and `ldap-utils`,
//! installed by `.ci/run`): started once per test binary on free loopback ports, plain
//! `ldap://` (StartTLS offered) and `ldaps://`, with a certificate from a test CA, an Active
//! Directory shaped schema ([`AD_SCHEMA`]) and the users and groups of [`DIRECTORY`]. It is
//! stopped when the test binary exits (its shell's standard input closes).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::peers::missing;

/// The directory's suffix.
pub const BASE: &str = "dc=fabrikam,dc=example";
/// Where users live.
pub const PEOPLE: &str = "ou=people,dc=fabrikam,dc=example";
/// Where groups live.
pub const GROUPS: &str = "ou=groups,dc=fabrikam,dc=example";
/// The service account Postern binds as.
pub const SERVICE_DN: &str = "cn=postern,ou=service,dc=fabrikam,dc=example";
/// Its password.
pub const SERVICE_PASSWORD: &str = "Service-Account-9";
/// The password of every user of [`DIRECTORY`].
pub const USER_PASSWORD: &str = "Directory-Pass-7";
/// The `objectGUID` of the `ad` user `carol`, as Active Directory shows it.
pub const CAROL_GUID: &str = "6f9619ff-8b86-d011-b42d-00c04fc964ff";

/// An Active Directory shaped schema for OpenLDAP: AD's own OIDs for `sAMAccountName`,
/// `userPrincipalName`, `userAccountControl`, `objectGUID`, `memberOf`, `lockoutTime`,
/// `accountExpires`, `pwdLastSet` and `msDS-User-Account-Control-Computed` (constructed by a
/// real Active Directory; stored here), the structural class `user` (an `inetOrgPerson` with
/// them) and `group`.
pub const AD_SCHEMA: &str = r"
attributetype ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.656 NAME 'userPrincipalName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.2 NAME 'objectGUID'
  EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.2.102 NAME 'memberOf'
  EQUALITY distinguishedNameMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.12 )
attributetype ( 1.2.840.113556.1.4.662 NAME 'lockoutTime'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.1460 NAME 'msDS-User-Account-Control-Computed'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.159 NAME 'accountExpires'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.96 NAME 'pwdLastSet'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
objectclass ( 1.2.840.113556.1.5.9 NAME 'user' SUP inetOrgPerson STRUCTURAL
  MAY ( sAMAccountName $ userPrincipalName $ userAccountControl $ objectGUID $ memberOf $
        lockoutTime $ accountExpires $ pwdLastSet $ msDS-User-Account-Control-Computed ) )
objectclass ( 1.2.840.113556.1.5.8 NAME 'group' SUP top STRUCTURAL
  MUST cn MAY ( member $ sAMAccountName $ objectGUID $ memberOf $ description ) )
";

/// The directory's content (LDIF): the service account; `ldap` users (`inetOrgPerson`:
/// alice, bob) in nested groups (engineering ⊂ staff ⊂ everyone, and a loop); `ad` users
/// (`user`: carol enabled, dave disabled, erin locked, frank expired, gina who must change
/// her password; and the lock-out's end, [`LOCKOUTS`]) and an `ad` group. Every user's
/// password is [`USER_PASSWORD`].
pub fn directory() -> String {
    let p = USER_PASSWORD;
    let s = SERVICE_PASSWORD;
    // carol's objectGUID bytes: CAROL_GUID with its first three fields little-endian.
    let carol_guid = base64_encode(&[
        0xff, 0x19, 0x96, 0x6f, 0x86, 0x8b, 0x11, 0xd0, 0xb4, 0x2d, 0x00, 0xc0, 0x4f, 0xc9, 0x64, 0xff,
    ]);
    let guid = |n: u8| base64_encode(&[n, 0, 0, 0, 0, 0, 0, 0x10, 0x80, 0, 0, 0, 0, 0, 0, n]);
    format!(
        "dn: {BASE}
objectClass: dcObject
objectClass: organization
dc: fabrikam
o: Fabrikam

dn: ou=service,{BASE}
objectClass: organizationalUnit
ou: service

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people

dn: {GROUPS}
objectClass: organizationalUnit
ou: groups

dn: {SERVICE_DN}
objectClass: person
cn: postern
sn: Postern
userPassword: {s}

dn: uid=alice,{PEOPLE}
objectClass: inetOrgPerson
uid: alice
cn: Alice Anders
givenName: Alice
sn: Anders
mail: Alice@Fabrikam.Example
userPassword: {p}

dn: uid=bob,{PEOPLE}
objectClass: inetOrgPerson
uid: bob
cn: Bob Brown
sn: Brown
mail: bob@fabrikam.example
userPassword: {p}

dn: uid=bob*)(uid=*,{PEOPLE}
objectClass: inetOrgPerson
uid: bob*)(uid=*
cn: Trap
sn: Trap
userPassword: {p}

dn: cn=engineering,{GROUPS}
objectClass: groupOfNames
cn: engineering
member: uid=alice,{PEOPLE}

dn: cn=staff,{GROUPS}
objectClass: groupOfNames
cn: staff
member: cn=engineering,{GROUPS}
member: uid=bob,{PEOPLE}

dn: cn=everyone,{GROUPS}
objectClass: groupOfNames
cn: everyone
member: cn=staff,{GROUPS}

dn: cn=loop-a,{GROUPS}
objectClass: groupOfNames
cn: loop-a
member: uid=alice,{PEOPLE}
member: cn=loop-b,{GROUPS}

dn: cn=loop-b,{GROUPS}
objectClass: groupOfNames
cn: loop-b
member: cn=loop-a,{GROUPS}

dn: cn=Carol Chen,{PEOPLE}
objectClass: user
cn: Carol Chen
givenName: Carol
sn: Chen
displayName: Carol Chen
mail: carol@fabrikam.example
sAMAccountName: carol
userPrincipalName: carol@fabrikam.example
userAccountControl: 512
objectGUID:: {carol_guid}
pwdLastSet: 133000000000000000
accountExpires: 9223372036854775807
memberOf: cn=Timesheet Users,{GROUPS}
userPassword: {p}

dn: cn=Dave Disabled,{PEOPLE}
objectClass: user
cn: Dave Disabled
sn: Disabled
mail: dave@fabrikam.example
sAMAccountName: dave
userPrincipalName: dave@fabrikam.example
userAccountControl: 514
objectGUID:: {g2}
userPassword: {p}

dn: cn=Erin Locked,{PEOPLE}
objectClass: user
cn: Erin Locked
sn: Locked
mail: erin@fabrikam.example
sAMAccountName: erin
userPrincipalName: erin@fabrikam.example
userAccountControl: 512
lockoutTime: 133000000000000000
msDS-User-Account-Control-Computed: 16
objectGUID:: {g3}
userPassword: {p}

dn: cn=Hank Unlocked,{PEOPLE}
objectClass: user
cn: Hank Unlocked
sn: Unlocked
sAMAccountName: hank
userAccountControl: 512
lockoutTime: 133000000000000000
objectGUID:: {g6}
userPassword: {p}

dn: cn=Ivy Locked,{PEOPLE}
objectClass: user
cn: Ivy Locked
sn: Locked
sAMAccountName: ivy
userAccountControl: 512
lockoutTime: {just_now}
objectGUID:: {g7}
userPassword: {p}

dn: cn=Jules Unlocked,{PEOPLE}
objectClass: user
cn: Jules Unlocked
sn: Unlocked
sAMAccountName: jules
userAccountControl: 512
lockoutTime: {just_now}
msDS-User-Account-Control-Computed: 0
objectGUID:: {g8}
userPassword: {p}

dn: cn=Frank Expired,{PEOPLE}
objectClass: user
cn: Frank Expired
sn: Expired
mail: frank@fabrikam.example
sAMAccountName: frank
userPrincipalName: frank@fabrikam.example
userAccountControl: 512
accountExpires: 126227808000000000
objectGUID:: {g4}
userPassword: {p}

dn: cn=Gina Change,{PEOPLE}
objectClass: user
cn: Gina Change
sn: Change
mail: gina@fabrikam.example
sAMAccountName: gina
userPrincipalName: gina@fabrikam.example
userAccountControl: 512
pwdLastSet: 0
objectGUID:: {g5}
userPassword: {p}

dn: cn=Timesheet Users,{GROUPS}
objectClass: group
cn: Timesheet Users
member: cn=Carol Chen,{PEOPLE}
",
        g2 = guid(2),
        g3 = guid(3),
        g4 = guid(4),
        g5 = guid(5),
        g6 = guid(6),
        g7 = guid(7),
        g8 = guid(8),
        just_now = filetime_now(),
    )
}

/// The `ad` users of [`directory`] whose lock-out has ended or not, with whether each is
/// locked now: erin (the constructed attribute says locked), hank (locked in 2022, so the
/// lock-out has long ended; no constructed attribute), ivy (locked a moment ago, no
/// constructed attribute: locked for Active Directory's default 30 minutes), jules (locked
/// a moment ago, but the constructed attribute, the domain's policy, says no longer).
pub const LOCKOUTS: &[(&str, bool)] = &[("erin", true), ("hank", false), ("ivy", true), ("jules", false)];

/// Now as a FILETIME (100 ns ticks since 1601-01-01).
fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (unix.as_secs() + 11_644_473_600) * 10_000_000
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A running throwaway directory.
pub struct Slapd {
    /// `ldap://127.0.0.1:<port>` (StartTLS offered).
    pub ldap_url: String,
    /// `ldaps://127.0.0.1:<port>`.
    pub ldaps_url: String,
    /// The test CA that issued the server's certificate (PEM).
    pub ca_pem: String,
    /// Another CA, which did not (PEM): trusting it alone must fail.
    pub other_ca_pem: String,
    /// The temporary directory holding the configuration and the database.
    pub dir: PathBuf,
    _child: Mutex<Child>,
    _lifeline: Mutex<ChildStdin>,
    _tmp: tempfile::TempDir,
}

static SLAPD: OnceLock<Result<Slapd, String>> = OnceLock::new();

/// Where Debian installs slapd (`POSTERN_SLAPD` overrides it).
fn slapd_path() -> String {
    std::env::var("POSTERN_SLAPD").unwrap_or_else(|_| "/usr/sbin/slapd".to_owned())
}

impl Slapd {
    /// The directory of this test binary (started on first use), or `None` after reporting
    /// why it cannot run (slapd or ldapadd missing). `test` names the test in the report.
    pub fn shared(test: &str) -> Option<&'static Slapd> {
        match SLAPD.get_or_init(start) {
            Ok(s) => Some(s),
            Err(why) => {
                missing(test, why);
                None
            }
        }
    }

    /// The port of [`Slapd::ldap_url`].
    pub fn ldap_port(&self) -> u16 {
        self.ldap_url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_default()
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A throwaway CA and a certificate it issued for 127.0.0.1 and localhost: `(ca, cert, key)`.
pub(crate) fn issue() -> Result<(String, String, String), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Fabrikam test directory CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(e)?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).map_err(e)?;
    leaf.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = leaf.signed_by(&key, &issuer).map_err(e)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn start() -> Result<Slapd, String> {
    let slapd = slapd_path();
    if !Path::new(&slapd).exists() {
        return Err(format!("{slapd} is not installed (apt-get install slapd ldap-utils)"));
    }
    if Command::new("ldapadd").arg("-VV").output().is_err() {
        return Err("ldapadd is not installed (apt-get install ldap-utils)".into());
    }
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(dir.join("db")).map_err(|e| e.to_string())?;
    let (ca, cert, key) = issue()?;
    let (other_ca, _, _) = issue()?;
    write(&dir.join("ca.pem"), &ca)?;
    write(&dir.join("server.pem"), &cert)?;
    write(&dir.join("server.key"), &key)?;
    write(&dir.join("ad.schema"), AD_SCHEMA)?;
    let admin_password = "Directory-Admin-5";
    let d = dir.display();
    let conf = format!(
        "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {d}/ad.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {d}/slapd.pid
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key
database mdb
maxsize 104857600
suffix \"{BASE}\"
rootdn \"cn=admin,{BASE}\"
rootpw {admin_password}
directory {d}/db
index objectClass,uid,sAMAccountName,userPrincipalName,member eq
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"
    );
    write(&dir.join("slapd.conf"), &conf)?;
    let ldap_port = free_port().map_err(|e| e.to_string())?;
    let ldaps_port = free_port().map_err(|e| e.to_string())?;
    let urls = format!("ldap://127.0.0.1:{ldap_port}/ ldaps://127.0.0.1:{ldaps_port}/");
    // slapd stays in the foreground (`-d 0`); the shell stops it when its standard input
    // ends, that is when the test binary exits.
    let script = r#""$0" -d 0 -f "$1" -h "$2" 2>"$3" & pid=$!; cat >/dev/null; kill -TERM $pid 2>/dev/null; wait $pid"#;
    let log = dir.join("slapd.log");
    let mut child = Command::new("sh")
        .args(["-c", script, &slapd, &dir.join("slapd.conf").display().to_string(), &urls, &log.display().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start {slapd}: {e}"))?;
    let lifeline = child.stdin.take().ok_or("no pipe to slapd's shell")?;
    let ldap_url = format!("ldap://127.0.0.1:{ldap_port}");
    wait_listening(ldap_port, &mut child, &log)?;
    wait_listening(ldaps_port, &mut child, &log)?;
    let mut add = Command::new("ldapadd")
        .args(["-x", "-H", &ldap_url, "-D", &format!("cn=admin,{BASE}"), "-w", admin_password])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ldapadd: {e}"))?;
    add.stdin
        .take()
        .ok_or("no pipe to ldapadd")?
        .write_all(directory().as_bytes())
        .map_err(|e| format!("ldapadd: {e}"))?;
    let out = add.wait_with_output().map_err(|e| format!("ldapadd: {e}"))?;
    if !out.status.success() {
        return Err(format!("ldapadd failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(Slapd {
        ldap_url,
        ldaps_url: format!("ldaps://127.0.0.1:{ldaps_port}"),
        ca_pem: ca,
        other_ca_pem: other_ca,
        dir,
        _child: Mutex::new(child),
        _lifeline: Mutex::new(lifeline),
        _tmp: tmp,
    })
}

/// Waits until `port` accepts connections, or slapd exits.
fn wait_listening(port: u16, child: &mut Child, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let printed = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("slapd exited ({status}) before listening: {printed}"));
        }
        if Instant::now() > deadline {
            return Err(format!("slapd did not listen on {addr} within 30 s"));
        }
        // Polling the port, as `eventually` polls a condition.
        std::thread::sleep(Duration::from_millis(20));
    }
}
