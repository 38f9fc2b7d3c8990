//! The test kit's throwaway directory, for trying an `ad` or `ldap` connection by hand (the
//! README's walk-through): starts OpenLDAP's `slapd` on free loopback ports with the users and
//! groups of the tests, writes its test CA to the file given (default `ca.pem`), prints its
//! URLs, the service account and the users' password, and runs until interrupted (Ctrl-C),
//! which stops the directory too.
//!
//! `cargo run -p postern-testkit --example slapd -- ca.pem`

use postern_testkit::slapd::{self, Slapd};

fn main() -> std::io::Result<()> {
    let ca = std::env::args().nth(1).unwrap_or_else(|| "ca.pem".to_owned());
    let Some(dir) = Slapd::shared("the slapd example") else {
        std::process::exit(1);
    };
    std::fs::write(&ca, &dir.ca_pem)?;
    println!("{}", dir.ldaps_url);
    println!("{} (StartTLS)", dir.ldap_url);
    println!("CA certificate: {ca}");
    println!("bind_dn {} bind_password {}", slapd::SERVICE_DN, slapd::SERVICE_PASSWORD);
    println!("users under {}: alice, bob, carol (ad), … password {}", slapd::PEOPLE, slapd::USER_PASSWORD);
    println!("Ctrl-C stops it");
    loop {
        std::thread::park();
    }
}
