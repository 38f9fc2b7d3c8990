//! Passwords: Argon2id hashing and verification, and the history rule of a database
//! connection's password policy (the policy itself is `postern_connection::password`).
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) at OWASP's
//! parameters. Verification also accepts bcrypt hashes (`$2a$`, `$2b$`, `$2y$`) imported
//! from a custom database; [`needs_rehash`] tells the caller to replace those after a
//! successful login. Hashing costs tens of milliseconds of CPU and 19 MiB of memory on
//! purpose, so [`Hashing`] runs it on the blocking pool, a bounded number at once.
//!
//! The policy is checked on signup and password change; [`Hashing::check_with_history`] adds the
//! rule that needs the stored hashes.

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Params, Version};
use postern_common::error::Violations;
use postern_connection::password::{PasswordPolicy, PersonalInfo};

use crate::argon2_memory;

/// Argon2 memory cost in KiB (OWASP: 19 MiB).
pub const ARGON2_M_COST: u32 = 19_456;
/// Argon2 iterations (OWASP: 2).
pub const ARGON2_T_COST: u32 = 2;
/// Argon2 parallelism (OWASP: 1).
pub const ARGON2_P_COST: u32 = 1;

pub use postern_connection::password::{MAX_HISTORY_SIZE, MAX_PASSWORD_LENGTH};

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
    /// No turn to hash came within the queue's deadline: more password checks were asked
    /// at once than the process hashes, for longer than the deadline.
    #[error("{queued} password checks are waiting for a turn; none came within {waited:?}")]
    Busy {
        /// How long this check waited.
        waited: std::time::Duration,
        /// How many checks were waiting when it gave up.
        queued: usize,
    },
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, PARAMS)
}

/// Hashes a password with Argon2id at the configured parameters and a random salt, as a
/// PHC string. Blocking: tens of milliseconds of CPU; prefer [`Hashing::hash`] in async code.
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

/// How many working areas are kept between hashes: one per core (more hashes at once, when
/// configured, allocate theirs and free them after).
fn kept_areas() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Argon2 of `password` and `salt` into `out`, in working memory kept between hashes (see
/// [`crate::argon2_memory`]).
fn argon2_into(argon: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), Error> {
    let blocks = argon.params().block_count();
    argon2_memory::AREAS
        .with_area(blocks, PARAMS.block_count(), kept_areas(), |area| {
            argon.hash_password_into_with_memory(password, salt, out, area)
        })
        .map_err(|e| match e {
            argon2::Error::OutOfMemory => Error::Hashing(e.to_string()),
            _ => Error::MalformedHash,
        })
}

/// Whether `password` matches the PHC string `phc` (Argon2 of any variant and parameters,
/// or bcrypt). Blocking; prefer [`Hashing::verify`].
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

/// How many password hashes run at once, and how long a check waits for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashingLimits {
    /// Hashes at once; each holds 19 MiB (Argon2id at OWASP's parameters) and a core.
    pub concurrent: usize,
    /// The longest a check waits for a turn before it is refused as busy.
    pub queue_timeout: std::time::Duration,
}

impl Default for HashingLimits {
    /// One hash per core, a 10 s wait at most.
    fn default() -> Self {
        Self {
            concurrent: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            queue_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Password hashing and verification on the blocking pool, taking turns.
///
/// Argon2id at these parameters is memory-hard (19 MiB a hash): running more hashes at once
/// than there are cores only thrashes caches and memory, lowering the rate for everyone (on
/// 2 cores, 8 at once verify about a fifth fewer per second than 2), and a burst of logins
/// would hold 19 MiB each. So at most [`HashingLimits::concurrent`] hashes run at once (the
/// memory they hold is bounded by that times 19 MiB), and the callers beyond wait their turn
/// in order, without holding a thread or memory, for at most
/// [`HashingLimits::queue_timeout`]; past it a check fails with [`Error::Busy`] (the caller
/// answers UNAVAILABLE: retry shortly) rather than waiting for a turn its caller has given up on.
#[derive(Debug)]
pub struct Hashing {
    turns: tokio::sync::Semaphore,
    limits: HashingLimits,
    queued: std::sync::atomic::AtomicUsize,
}

impl Default for Hashing {
    fn default() -> Self {
        Self::new(HashingLimits::default())
    }
}

impl Hashing {
    /// Hashing within `limits` (at least one hash at once).
    pub fn new(limits: HashingLimits) -> Self {
        let limits = HashingLimits { concurrent: limits.concurrent.max(1), ..limits };
        Self { turns: tokio::sync::Semaphore::new(limits.concurrent), limits, queued: 0.into() }
    }

    /// The limits in force.
    pub fn limits(&self) -> HashingLimits {
        self.limits
    }

    /// A turn to hash, or [`Error::Busy`] when none comes within the queue's deadline.
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        use std::sync::atomic::Ordering;
        if let Ok(permit) = self.turns.try_acquire() {
            return Ok(permit);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        let waited = tokio::time::timeout(self.limits.queue_timeout, self.turns.acquire()).await;
        let queued = self.queued.fetch_sub(1, Ordering::Relaxed);
        match waited {
            // The semaphore is never closed.
            Ok(permit) => permit.map_err(|e| Error::Hashing(e.to_string())),
            Err(_) => Err(Error::Busy { waited: self.limits.queue_timeout, queued }),
        }
    }

    /// [`hash`], in turn.
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        let _turn = self.turn().await?;
        let hashed = tokio::task::spawn_blocking(move || hash(&password)).await?;
        argon2_memory::AREAS.free_when_idle();
        hashed
    }

    /// [`verify_user`], in turn: `phc` `None` for an unknown user.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, Error> {
        let _turn = self.turn().await?;
        let verified = tokio::task::spawn_blocking(move || verify_user(&password, phc.as_deref())).await?;
        argon2_memory::AREAS.free_when_idle();
        verified
    }

    /// [`PasswordPolicy::check`] plus the history rule: the new password must differ from
    /// each of the newest `history_size` hashes of `history` (PHC strings, newest first),
    /// verified in one turn.
    pub async fn check_with_history(
        &self,
        policy: &PasswordPolicy,
        password: &str,
        user: &PersonalInfo<'_>,
        history: &[String],
        field: &str,
        violations: &mut Violations,
    ) -> Result<(), Error> {
        policy.check(password, user, field, violations);
        let size = (policy.history_size as usize).min(MAX_HISTORY_SIZE);
        if size == 0 || history.is_empty() {
            return Ok(());
        }
        let recent: Vec<String> = history.iter().take(size).cloned().collect();
        let candidate = password.to_owned();
        let _turn = self.turn().await?;
        let reused = tokio::task::spawn_blocking(move || -> Result<bool, Error> {
            for phc in &recent {
                if verify(&candidate, phc)? {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await??;
        argon2_memory::AREAS.free_when_idle();
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
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordHasher;
    use postern_connection::options::PasswordStrength;

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

    fn policy(strength: PasswordStrength) -> PasswordPolicy {
        PasswordPolicy { strength, ..PasswordPolicy::none() }
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
    async fn hashing_in_turn() {
        let hashing = Hashing::default();
        let phc = hashing.hash("s3cret".to_owned()).await.unwrap();
        assert!(hashing.verify("s3cret".to_owned(), Some(phc.clone())).await.unwrap());
        assert!(!hashing.verify("nope".to_owned(), Some(phc)).await.unwrap());
        assert!(!hashing.verify("s3cret".to_owned(), None).await.unwrap());
    }

    /// A check waits for its turn while every turn is taken, and is refused as busy when
    /// none comes within the deadline; it is served when one comes in time.
    #[tokio::test(start_paused = true)]
    async fn a_check_waits_its_turn_until_the_deadline() {
        let limits = HashingLimits { concurrent: 1, queue_timeout: std::time::Duration::from_secs(10) };
        let hashing = Hashing::new(limits);
        assert_eq!(Hashing::new(HashingLimits { concurrent: 0, ..limits }).limits().concurrent, 1);
        let held = hashing.turn().await.expect("the only turn");
        let refused = hashing.verify("s3cret".to_owned(), None).await.expect_err("no turn within 10 s");
        assert!(matches!(refused, Error::Busy { waited, queued: 1 } if waited == limits.queue_timeout), "{refused:?}");
        assert!(refused.to_string().contains("1 password checks are waiting"), "{refused}");
        // A turn freed before the deadline serves the waiting check.
        let start = tokio::time::Instant::now();
        let waiting = async { hashing.turn().await.map(|_| start.elapsed()) };
        let freeing = async move {
            tokio::time::sleep(std::time::Duration::from_secs(9)).await;
            drop(held);
        };
        let (served, ()) = tokio::join!(waiting, freeing);
        assert_eq!(served.expect("served once the turn is free"), std::time::Duration::from_secs(9));
    }

    #[tokio::test]
    async fn history() {
        let old: Vec<String> = ["newest-1", "older-2", "oldest-3"].iter().map(|p| hash(p).unwrap()).collect();
        let p = PasswordPolicy { history_size: 2, ..policy(PasswordStrength::None) };
        let run = |password: &'static str| {
            let p = p.clone();
            let old = old.clone();
            async move {
                let mut v = Violations::new();
                Hashing::default()
                    .check_with_history(&p, password, &ALICE, &old, "new_password", &mut v)
                    .await
                    .unwrap();
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
        Hashing::default().check_with_history(&off, "newest-1", &ALICE, &old, "new_password", &mut v).await.unwrap();
        assert!(v.is_empty());
    }
}
