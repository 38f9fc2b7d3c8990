//! Passwords: Argon2id hashing and verification, and the password policy of a database
//! connection (after Auth0's).
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) at OWASP's
//! parameters. Verification also accepts bcrypt hashes (`$2a$`, `$2b$`, `$2y$`) imported
//! from a custom database; [`needs_rehash`] tells the caller to replace those after a
//! successful login. Hashing costs tens of milliseconds of CPU on purpose, so the async
//! wrappers run it on the blocking pool.
//!
//! The policy ([`PasswordPolicy`]) is checked on signup and password change. Each unmet rule
//! is one field violation saying what is required, so that a user learns every rule at once.

use std::collections::HashSet;
use std::sync::LazyLock;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Params, Version};
use postern_common::error::Violations;

use crate::argon2_memory;

/// Argon2 memory cost in KiB (OWASP: 19 MiB).
pub const ARGON2_M_COST: u32 = 19_456;
/// Argon2 iterations (OWASP: 2).
pub const ARGON2_T_COST: u32 = 2;
/// Argon2 parallelism (OWASP: 1).
pub const ARGON2_P_COST: u32 = 1;

/// The most characters a password may have, at every policy level: a bound on the work a
/// single request can cause, far above what any person or password manager uses.
pub const MAX_PASSWORD_LENGTH: usize = 256;

/// The most past passwords a connection may remember (Auth0's limit).
pub const MAX_HISTORY_SIZE: usize = 24;

/// The range of a connection's minimum length override (Auth0's limits).
pub const MIN_LENGTH_RANGE: std::ops::RangeInclusive<u32> = 1..=128;

const PARAMS: Params = match Params::new(ARGON2_M_COST, ARGON2_T_COST, ARGON2_P_COST, None) {
    Ok(params) => params,
    // Evaluated at compile time: valid constants cannot reach this arm at run time.
    Err(_) => panic!("invalid Argon2 parameters"),
};

/// The hash verified when the user does not exist, so that a login for an unknown user
/// costs the same as one with a wrong password. It hashes a random string nobody knows;
/// `dummy_hash_matches_the_parameters` checks it uses the current parameters.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$qKbQ0MVt6OSSvpg+mGkeTA$Gz0SAbYQhimqSvPoRC1nmkXe04BK6TwS7SyciMGqcg0";

/// What can go wrong while hashing or verifying. A wrong password is not an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stored hash is not a PHC string of a supported scheme (Argon2 or bcrypt).
    #[error("the stored password hash is malformed or of an unsupported scheme")]
    MalformedHash,
    /// The hashing library failed (out of memory, no randomness).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// The blocking task running the hash was cancelled or panicked.
    #[error("the password hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, PARAMS)
}

/// Hashes a password with Argon2id at the configured parameters and a random salt, as a
/// PHC string. Blocking: tens of milliseconds of CPU; prefer [`hash_async`] in async code.
pub fn hash(password: &str) -> Result<String, Error> {
    let random = argon2::password_hash::try_generate_salt().map_err(|e| Error::Hashing(e.to_string()))?;
    let salt = Salt::new(&random).map_err(|e| Error::Hashing(e.to_string()))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2_into(&hasher(), password.as_bytes(), &salt, &mut out)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&PARAMS).map_err(|e| Error::Hashing(e.to_string()))?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(|e| Error::Hashing(e.to_string()))?),
    };
    Ok(phc.to_string())
}

/// Argon2 of `password` and `salt` into `out`, in working memory kept between hashes (see
/// [`crate::argon2_memory`]).
fn argon2_into(argon: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), Error> {
    let blocks = argon.params().block_count();
    argon2_memory::AREAS
        .with_area(blocks, PARAMS.block_count(), hashing_turns(), |area| {
            argon.hash_password_into_with_memory(password, salt, out, area)
        })
        .map_err(|e| match e {
            argon2::Error::OutOfMemory => Error::Hashing(e.to_string()),
            _ => Error::MalformedHash,
        })
}

/// Whether `password` matches the PHC string `phc` (Argon2 of any variant and parameters,
/// or bcrypt). Blocking; prefer [`verify_async`].
pub fn verify(password: &str, phc: &str) -> Result<bool, Error> {
    if phc.starts_with("$argon2") {
        let parsed = PasswordHash::new(phc).map_err(|_| Error::MalformedHash)?;
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return Err(Error::MalformedHash);
        };
        // The parameters come from the hash itself, not from `hasher()`.
        let params = Params::try_from(&parsed).map_err(|_| Error::MalformedHash)?;
        let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(|_| Error::MalformedHash)?;
        let version = match parsed.version {
            Some(v) => Version::try_from(v).map_err(|_| Error::MalformedHash)?,
            None => Version::default(),
        };
        let mut buffer = [0u8; Output::MAX_LENGTH];
        let out = buffer.get_mut(..expected.len()).ok_or(Error::MalformedHash)?;
        argon2_into(&Argon2::new(algorithm, version, params), password.as_bytes(), salt, out)?;
        // `Output` compares in constant time.
        Ok(Output::new(out).is_ok_and(|computed| computed == *expected))
    } else if is_bcrypt(phc) {
        bcrypt::verify(password.as_bytes(), phc).map_err(|_| Error::MalformedHash)
    } else {
        Err(Error::MalformedHash)
    }
}

fn is_bcrypt(phc: &str) -> bool {
    ["$2a$", "$2b$", "$2x$", "$2y$"].iter().any(|p| phc.starts_with(p))
}

/// Verifies `password` against the user's hash, or, when there is no user (`None`), spends
/// the same time on a dummy hash and answers `false`: the caller cannot tell the two apart
/// by the answer nor by the time it took.
pub fn verify_user(password: &str, phc: Option<&str>) -> Result<bool, Error> {
    match phc {
        Some(phc) => verify(password, phc),
        None => {
            // The outcome is ignored: the dummy hash matches no password anyone knows.
            let _ = verify(password, DUMMY_HASH);
            Ok(false)
        }
    }
}

/// Whether a stored hash should be replaced by a fresh [`hash`] of the password once it has
/// been verified: true for bcrypt and for Argon2 hashes of another variant or parameters.
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return true;
    };
    let current = || -> Option<bool> {
        let params = Params::try_from(&parsed).ok()?;
        Some(
            parsed.algorithm.as_str() == argon2::ARGON2ID_IDENT.as_str()
                && parsed.version == Some(Version::V0x13.into())
                && params.m_cost() == ARGON2_M_COST
                && params.t_cost() == ARGON2_T_COST
                && params.p_cost() == ARGON2_P_COST,
        )
    };
    !current().unwrap_or(false)
}

/// [`hash`] on the blocking pool.
pub async fn hash_async(password: String) -> Result<String, Error> {
    let _permit = hashing_permit().await;
    let hashed = tokio::task::spawn_blocking(move || hash(&password)).await?;
    argon2_memory::AREAS.free_when_idle();
    hashed
}

/// How many hashes run at once: one per core.
fn hashing_turns() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// A turn to hash. Argon2id at these parameters is memory-hard (19 MiB a hash): running
/// more hashes at once than there are cores only thrashes caches and memory, lowering the
/// rate for everyone (on 2 cores, 8 at once verify about a fifth fewer per second than 2).
/// So hashes take turns, one per core, and the callers beyond that wait their turn in
/// order, without holding a thread or memory.
async fn hashing_permit() -> Option<tokio::sync::SemaphorePermit<'static>> {
    static TURNS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let turns = TURNS.get_or_init(|| tokio::sync::Semaphore::new(hashing_turns()));
    // The semaphore is never closed, so acquiring cannot fail.
    turns.acquire().await.ok()
}

/// [`verify_user`] on the blocking pool: `None` for an unknown user.
pub async fn verify_async(password: String, phc: Option<String>) -> Result<bool, Error> {
    let _permit = hashing_permit().await;
    let verified = tokio::task::spawn_blocking(move || verify_user(&password, phc.as_deref())).await?;
    argon2_memory::AREAS.free_when_idle();
    verified
}

/// The strength levels of Auth0's password policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strength {
    /// At least 1 character.
    None,
    /// At least 6 characters.
    Low,
    /// At least 8 characters, with a lowercase letter, an uppercase letter and a number.
    Fair,
    /// At least 8 characters, with 3 of the 4 kinds: lowercase, uppercase, numbers, special.
    Good,
    /// At least 10 characters, 3 of the 4 kinds, no more than 2 identical characters in a row.
    Excellent,
}

impl Strength {
    /// The minimum length the level asks for when the connection does not override it.
    pub fn default_min_length(self) -> u32 {
        match self {
            Strength::None => 1,
            Strength::Low => 6,
            Strength::Fair | Strength::Good => 8,
            Strength::Excellent => 10,
        }
    }
}

/// A database connection's password policy. Checked on signup and password change, never
/// on login (a password that met an older policy still logs in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// The strength level.
    pub strength: Strength,
    /// Overrides the level's minimum length when set (1 to 128, Auth0's range): the
    /// password must have at least this many characters, whatever the level says.
    pub min_length: Option<u32>,
    /// How many previous passwords a new one must differ from (0 to 24; 0 turns the rule
    /// off). The caller passes the stored hashes to [`PasswordPolicy::check_with_history`].
    pub history_size: u32,
    /// Refuse passwords that contain the user's email local part, username, nickname or
    /// name parts.
    pub no_personal_info: bool,
    /// Refuse the most common passwords (a built-in list of 10,000) and `dictionary_words`.
    pub dictionary: bool,
    /// The connection's own forbidden passwords, compared case-insensitively with the whole
    /// password; used only when `dictionary` is on.
    pub dictionary_words: Vec<String>,
}

impl PasswordPolicy {
    /// The policy of a connection that sets nothing: Auth0's default level `none`, no other
    /// rule.
    pub fn none() -> Self {
        PasswordPolicy {
            strength: Strength::None,
            min_length: None,
            history_size: 0,
            no_personal_info: false,
            dictionary: false,
            dictionary_words: Vec::new(),
        }
    }

    /// Checks the policy's own settings (for the registry or whoever accepts a policy):
    /// the minimum length and history size ranges, as violations of `field.<setting>`.
    pub fn validate(&self, field: &str, violations: &mut Violations) {
        if let Some(min) = self.min_length
            && !MIN_LENGTH_RANGE.contains(&min)
        {
            violations.add(
                format!("{field}.min_length"),
                format!("must be between {} and {}", MIN_LENGTH_RANGE.start(), MIN_LENGTH_RANGE.end()),
            );
        }
        if self.history_size as usize > MAX_HISTORY_SIZE {
            violations.add(format!("{field}.history_size"), format!("must be between 0 and {MAX_HISTORY_SIZE}"));
        }
    }

    /// The minimum length in force: the override, or the level's own.
    pub fn effective_min_length(&self) -> u32 {
        self.min_length.unwrap_or_else(|| self.strength.default_min_length())
    }

    /// Checks every rule but the history (which needs the stored hashes), adding one
    /// violation of `field` per unmet rule.
    pub fn check(&self, password: &str, user: &PersonalInfo<'_>, field: &str, violations: &mut Violations) {
        let length = password.chars().count();
        let min = self.effective_min_length() as usize;
        if length < min {
            let unit = if min == 1 { "character" } else { "characters" };
            violations.add(field, format!("must be at least {min} {unit} long"));
        }
        if length > MAX_PASSWORD_LENGTH {
            violations.add(field, format!("must be at most {MAX_PASSWORD_LENGTH} characters long"));
        }

        let kinds = Kinds::of(password);
        match self.strength {
            Strength::None | Strength::Low => {}
            Strength::Fair => {
                if !(kinds.lower && kinds.upper && kinds.number) {
                    violations.add(
                        field,
                        format!(
                            "must contain a lowercase letter, an uppercase letter and a number; \
                             missing: {}",
                            kinds.missing_of_fair().join(", ")
                        ),
                    );
                }
            }
            Strength::Good | Strength::Excellent => {
                if kinds.count() < 3 {
                    violations.add(
                        field,
                        "must contain at least 3 of these 4 kinds of character: lowercase \
                         letters, uppercase letters, numbers, special characters (such as !@#$%^&*)",
                    );
                }
            }
        }
        if self.strength == Strength::Excellent && has_run_longer_than(password, 2) {
            violations.add(field, "must not contain more than 2 identical characters in a row (such as 111 or aaa)");
        }

        if self.no_personal_info && contains_personal_info(password, user) {
            violations.add(
                field,
                "must not contain personal information: the email address's name, the username, \
                 the nickname or the user's name",
            );
        }

        if self.dictionary && self.in_dictionary(password) {
            violations.add(field, "is too common: choose a password that is not in the dictionary of common passwords");
        }
    }

    /// [`check`](Self::check) plus the history rule: the new password must differ from each
    /// of the newest `history_size` hashes of `history` (PHC strings, newest first). The
    /// verifications run on the blocking pool.
    pub async fn check_with_history(
        &self,
        password: &str,
        user: &PersonalInfo<'_>,
        history: &[String],
        field: &str,
        violations: &mut Violations,
    ) -> Result<(), Error> {
        self.check(password, user, field, violations);
        let size = (self.history_size as usize).min(MAX_HISTORY_SIZE);
        if size == 0 || history.is_empty() {
            return Ok(());
        }
        let recent: Vec<String> = history.iter().take(size).cloned().collect();
        let candidate = password.to_owned();
        let _permit = hashing_permit().await;
        let reused = tokio::task::spawn_blocking(move || -> Result<bool, Error> {
            for phc in &recent {
                if verify(&candidate, phc)? {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await??;
        if reused {
            let what = if size == 1 {
                "the previous password".to_owned()
            } else {
                format!("each of the last {size} passwords")
            };
            violations.add(field, format!("must differ from {what}"));
        }
        Ok(())
    }

    fn in_dictionary(&self, password: &str) -> bool {
        let lower = password.to_lowercase();
        COMMON_PASSWORDS.contains(lower.as_str()) || self.dictionary_words.iter().any(|w| w.to_lowercase() == lower)
    }
}

/// What the personal-information rule compares a password with. Empty fields are skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersonalInfo<'a> {
    /// The user's email address; its local part (before `@`) is used.
    pub email: &'a str,
    /// The user's username.
    pub username: &'a str,
    /// The user's nickname.
    pub nickname: &'a str,
    /// The user's full name; each of its words is used too.
    pub name: &'a str,
    /// The user's given name.
    pub given_name: &'a str,
    /// The user's family name.
    pub family_name: &'a str,
    /// Other personal values to refuse: Auth0 also checks `user_metadata.name`,
    /// `user_metadata.first` and `user_metadata.last`.
    pub other: &'a [&'a str],
}

/// Personal values shorter than this are ignored: a two-letter nickname would otherwise
/// forbid every password containing those two letters.
const MIN_PERSONAL_LENGTH: usize = 3;

fn contains_personal_info(password: &str, user: &PersonalInfo<'_>) -> bool {
    let password = password.to_lowercase();
    let local = user.email.split('@').next().unwrap_or_default();
    let mut values = vec![local, user.username, user.nickname, user.name, user.given_name, user.family_name];
    values.extend(user.name.split_whitespace());
    values.extend(user.other.iter().copied());
    values
        .into_iter()
        .map(|v| v.trim().to_lowercase())
        .filter(|v| v.chars().count() >= MIN_PERSONAL_LENGTH)
        .any(|v| password.contains(&v))
}

fn has_run_longer_than(password: &str, max_run: usize) -> bool {
    let mut previous = None;
    let mut run = 0;
    for c in password.chars() {
        run = if previous == Some(c) { run + 1 } else { 1 };
        if run > max_run {
            return true;
        }
        previous = Some(c);
    }
    false
}

/// Which kinds of character a password contains. Letters count by Unicode case, numbers
/// are any Unicode digit, and every other character (punctuation, symbols, spaces, letters
/// without case) is special.
#[derive(Debug, Default)]
struct Kinds {
    lower: bool,
    upper: bool,
    number: bool,
    special: bool,
}

impl Kinds {
    fn of(password: &str) -> Self {
        let mut kinds = Kinds::default();
        for c in password.chars() {
            if c.is_lowercase() {
                kinds.lower = true;
            } else if c.is_uppercase() {
                kinds.upper = true;
            } else if c.is_numeric() {
                kinds.number = true;
            } else {
                kinds.special = true;
            }
        }
        kinds
    }

    fn count(&self) -> usize {
        [self.lower, self.upper, self.number, self.special].into_iter().filter(|k| *k).count()
    }

    fn missing_of_fair(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.lower {
            missing.push("a lowercase letter");
        }
        if !self.upper {
            missing.push("an uppercase letter");
        }
        if !self.number {
            missing.push("a number");
        }
        missing
    }
}

/// The built-in dictionary: the 10,000 most common passwords, lowercased (see the file's
/// header for its source).
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordHasher;

    use super::*;

    const ALICE: PersonalInfo<'static> = PersonalInfo {
        email: "alice.liddell@fabrikam.com",
        username: "wonderland",
        nickname: "ally",
        name: "Alice Pleasance Liddell",
        given_name: "Alice",
        family_name: "Liddell",
        other: &["Dinah"],
    };

    fn policy(strength: Strength) -> PasswordPolicy {
        PasswordPolicy { strength, ..PasswordPolicy::none() }
    }

    /// Checks `password` against `policy` and compares the violations' descriptions with
    /// `expected` (each a substring of one description, in order).
    #[track_caller]
    fn check(policy: &PasswordPolicy, password: &str, expected: &[&str]) {
        let mut v = Violations::new();
        policy.check(password, &ALICE, "password", &mut v);
        let got: Vec<&str> = v.as_slice().iter().map(|f| f.description.as_str()).collect();
        assert!(v.as_slice().iter().all(|f| f.field == "password"), "fields: {v:?}");
        assert_eq!(got.len(), expected.len(), "password {password:?}: got {got:?}, expected {expected:?}");
        for (g, e) in got.iter().zip(expected) {
            assert!(g.contains(e), "password {password:?}: {g:?} does not say {e:?}");
        }
    }

    #[test]
    fn strength_levels() {
        let none = policy(Strength::None);
        check(&none, "", &["at least 1 character long"]);
        check(&none, "x", &[]);

        let low = policy(Strength::Low);
        check(&low, "abcde", &["at least 6 characters"]);
        check(&low, "abcdef", &[]);

        let fair = policy(Strength::Fair);
        check(&fair, "Abcdef1", &["at least 8 characters"]);
        check(&fair, "Abcdefg1", &[]);
        check(&fair, "abcdefg1", &["missing: an uppercase letter"]);
        check(&fair, "ABCDEFGH", &["missing: a lowercase letter, a number"]);
        check(&fair, "abc", &["at least 8", "missing: an uppercase letter, a number"]);
        check(&fair, "Ünïcödé9", &[]);

        let good = policy(Strength::Good);
        check(&good, "abcdefg1", &["at least 3 of these 4 kinds"]);
        check(&good, "abcdef1!", &[]);
        check(&good, "ABCDEF1!", &[]);
        check(&good, "Abcdefgh", &["at least 3 of these 4 kinds"]);
        check(&good, "Abcdefg!", &[]);
        check(&good, "Ab1!", &["at least 8 characters"]);
        check(&good, "correct horse", &["at least 3 of these 4 kinds"]);

        let excellent = policy(Strength::Excellent);
        check(&excellent, "Abcdef1!x", &["at least 10 characters"]);
        check(&excellent, "Abcdef1!xy", &[]);
        check(&excellent, "Abcdef1!xx", &[]);
        check(&excellent, "Abc111!xyz", &["more than 2 identical characters in a row"]);
        check(&excellent, "aaa", &["at least 10", "at least 3 of these 4", "more than 2 identical"]);
    }

    #[test]
    fn min_length_overrides_the_level() {
        let longer = PasswordPolicy { min_length: Some(12), ..policy(Strength::Good) };
        check(&longer, "Abcdefgh1!x", &["at least 12 characters"]);
        check(&longer, "Abcdefgh1!xy", &[]);
        let shorter = PasswordPolicy { min_length: Some(4), ..policy(Strength::Good) };
        check(&shorter, "Ab1!", &[]);
        check(&shorter, &"a".repeat(MAX_PASSWORD_LENGTH + 1), &["at most 256", "at least 3 of these 4"]);
    }

    #[test]
    fn personal_information() {
        let p = PasswordPolicy { no_personal_info: true, ..policy(Strength::None) };
        check(&p, "x-ALICE.LIDDELL-9", &["personal information"]); // email local part
        check(&p, "myWonderland!", &["personal information"]); // username
        check(&p, "pleasance2024", &["personal information"]); // a word of the name
        check(&p, "liddell", &["personal information"]); // family name
        check(&p, "rally-car", &["personal information"]); // nickname
        check(&p, "dinah-the-cat", &["personal information"]); // other values
        check(&p, "fabrikam", &[]); // the email's domain is not personal
        check(&p, "xyz-unrelated", &[]);
        let off = policy(Strength::None);
        check(&off, "alice", &[]);
    }

    #[test]
    fn short_personal_values_are_ignored() {
        let p = PasswordPolicy { no_personal_info: true, ..policy(Strength::None) };
        let mut v = Violations::new();
        let bo = PersonalInfo { email: "bo@x.io", name: "Bo Li", ..PersonalInfo::default() };
        p.check("bolivia", &bo, "password", &mut v);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn dictionary() {
        let p = PasswordPolicy {
            dictionary: true,
            dictionary_words: vec!["Fabrikam2026".to_owned()],
            ..policy(Strength::None)
        };
        check(&p, "password", &["too common"]);
        check(&p, "PASSWORD", &["too common"]);
        check(&p, "123456", &["too common"]);
        check(&p, "qwerty", &["too common"]);
        check(&p, "fabrikam2026", &["too common"]);
        check(&p, "fabrikam2026x", &[]);
        check(&p, "j7#Vq9!mZ2", &[]);
        assert!(COMMON_PASSWORDS.len() >= 9_900, "{}", COMMON_PASSWORDS.len());
        let off = PasswordPolicy { dictionary: false, ..p };
        check(&off, "password", &[]);
    }

    #[test]
    fn every_rule_is_reported_at_once() {
        let p = PasswordPolicy {
            strength: Strength::Excellent,
            min_length: None,
            history_size: 0,
            no_personal_info: true,
            dictionary: true,
            dictionary_words: vec![],
        };
        check(&p, "alice", &["at least 10", "at least 3 of these 4", "personal information", "too common"]);
    }

    #[test]
    fn policy_settings_are_validated() {
        let mut v = Violations::new();
        PasswordPolicy { min_length: Some(0), history_size: 25, ..PasswordPolicy::none() }
            .validate("password_policy", &mut v);
        let fields: Vec<_> = v.as_slice().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["password_policy.min_length", "password_policy.history_size"]);
        let mut v = Violations::new();
        PasswordPolicy { min_length: Some(128), history_size: 24, ..PasswordPolicy::none() }
            .validate("password_policy", &mut v);
        assert!(v.is_empty());
    }

    #[test]
    fn hash_and_verify() {
        let phc = hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("correct horse", &phc).unwrap());
        assert!(!verify("correct horsE", &phc).unwrap());
        assert!(!needs_rehash(&phc));
        // Each hash has its own salt.
        assert_ne!(phc, hash("correct horse").unwrap());
        // The library's own verifier agrees, both ways.
        use argon2::password_hash::PasswordVerifier;
        assert!(hasher().verify_password(b"correct horse", phc.as_str()).is_ok());
        assert!(hasher().verify_password(b"correct horsE", phc.as_str()).is_err());
        let theirs = hasher().hash_password(b"correct horse").unwrap().to_string();
        assert!(verify("correct horse", &theirs).unwrap());
        assert!(!verify("correct horsE", &theirs).unwrap());
    }

    #[test]
    fn malformed_hashes_are_errors_not_mismatches() {
        for bad in ["", "plain", "$argon2id$garbage", "$5$rounds=5000$salt$hash", "$2b$04$short"] {
            assert!(matches!(verify("x", bad), Err(Error::MalformedHash)), "{bad:?}");
        }
    }

    #[test]
    fn other_argon2_parameters_verify_and_need_a_rehash() {
        let weak = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::new(64, 1, 1, None).unwrap())
            .hash_password(b"secret")
            .unwrap()
            .to_string();
        assert!(verify("secret", &weak).unwrap());
        assert!(!verify("Secret", &weak).unwrap());
        assert!(needs_rehash(&weak));
    }

    #[test]
    fn legacy_bcrypt_hashes_verify_and_need_a_rehash() {
        let legacy = bcrypt::hash("hunter2", 4).unwrap();
        assert!(verify("hunter2", &legacy).unwrap());
        assert!(!verify("hunter3", &legacy).unwrap());
        assert!(needs_rehash(&legacy));
    }

    #[test]
    fn dummy_hash_matches_the_parameters() {
        assert!(!needs_rehash(DUMMY_HASH), "regenerate DUMMY_HASH with the current parameters");
        assert!(!verify_user("anything", None).unwrap());
    }

    #[test]
    fn unknown_user_costs_about_as_much_as_a_wrong_password() {
        let phc = hash("right").unwrap();
        let time = |phc: Option<&str>| {
            let start = std::time::Instant::now();
            assert!(!verify_user("wrong", phc).unwrap());
            start.elapsed()
        };
        // Interleaved, so that load from other tests weighs on both sides alike.
        let (mut known, mut unknown) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        for _ in 0..5 {
            known += time(Some(&phc));
            unknown += time(None);
        }
        let ratio = unknown.as_secs_f64() / known.as_secs_f64();
        assert!((0.33..3.0).contains(&ratio), "known {known:?}, unknown {unknown:?}");
    }

    #[tokio::test]
    async fn async_wrappers() {
        let phc = hash_async("s3cret".to_owned()).await.unwrap();
        assert!(verify_async("s3cret".to_owned(), Some(phc.clone())).await.unwrap());
        assert!(!verify_async("nope".to_owned(), Some(phc)).await.unwrap());
        assert!(!verify_async("s3cret".to_owned(), None).await.unwrap());
    }

    #[tokio::test]
    async fn history() {
        let old: Vec<String> = ["newest-1", "older-2", "oldest-3"].iter().map(|p| hash(p).unwrap()).collect();
        let p = PasswordPolicy { history_size: 2, ..policy(Strength::None) };
        let run = |password: &'static str| {
            let p = p.clone();
            let old = old.clone();
            async move {
                let mut v = Violations::new();
                p.check_with_history(password, &ALICE, &old, "new_password", &mut v).await.unwrap();
                v
            }
        };
        let v = run("newest-1").await;
        assert_eq!(v.as_slice().len(), 1);
        assert_eq!(v.as_slice()[0].field, "new_password");
        assert!(v.as_slice()[0].description.contains("each of the last 2 passwords"));
        assert_eq!(run("older-2").await.as_slice().len(), 1);
        // Beyond the history size: allowed again.
        assert!(run("oldest-3").await.is_empty());
        assert!(run("brand-new").await.is_empty());

        let off = PasswordPolicy { history_size: 0, ..p.clone() };
        let mut v = Violations::new();
        off.check_with_history("newest-1", &ALICE, &old, "new_password", &mut v).await.unwrap();
        assert!(v.is_empty());
    }
}
