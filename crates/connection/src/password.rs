//! The password policy of a database connection (after Auth0's), written once: the
//! registry validates its settings ([`crate::DatabaseOptions`]), the authenticator checks
//! new passwords against it on signup and password change, and the login page shows it.
//!
//! Each unmet rule is one field violation saying what is required, so that a user learns
//! every rule at once. The history rule needs the stored hashes and is checked by whoever
//! keeps them; [`MAX_HISTORY_SIZE`] bounds it.

use std::collections::HashSet;
use std::sync::LazyLock;

use postern_common::error::Violations;

use crate::options::{DatabaseOptions, PasswordStrength};

/// The most characters a password may have, at every policy level: a bound on the work a
/// single request can cause, far above what any person or password manager uses.
pub const MAX_PASSWORD_LENGTH: usize = 256;

/// The most past passwords a connection may remember (Auth0's limit).
pub const MAX_HISTORY_SIZE: usize = 24;

/// A database connection's password policy. Checked on signup and password change, never
/// on login (a password that met an older policy still logs in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// The strength level.
    pub strength: PasswordStrength,
    /// Overrides the level's minimum length when set (1 to 128, Auth0's range): the
    /// password must have at least this many characters, whatever the level says.
    pub min_length: Option<u32>,
    /// How many previous passwords a new one must differ from (0 to 24; 0 turns the rule
    /// off). Checking it needs the stored hashes: the holder of the hashes checks it.
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
    /// The most permissive policy: level `none`, no other rule.
    pub fn none() -> Self {
        PasswordPolicy {
            strength: PasswordStrength::None,
            min_length: None,
            history_size: 0,
            no_personal_info: false,
            dictionary: false,
            dictionary_words: Vec::new(),
        }
    }

    /// The minimum length in force: the override, or the level's own.
    pub fn effective_min_length(&self) -> u32 {
        self.min_length.unwrap_or_else(|| self.strength.min_length())
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
            PasswordStrength::None | PasswordStrength::Low => {}
            PasswordStrength::Fair => {
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
            PasswordStrength::Good | PasswordStrength::Excellent => {
                if kinds.count() < 3 {
                    violations.add(
                        field,
                        "must contain at least 3 of these 4 kinds of character: lowercase \
                         letters, uppercase letters, numbers, special characters (such as !@#$%^&*)",
                    );
                }
            }
        }
        if self.strength == PasswordStrength::Excellent && has_run_longer_than(password, 2) {
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

    /// The rules in words, one line each, as a login page shows them next to the password
    /// field of its signup form (the history rule needs no words: it applies to changes).
    pub fn describe(&self) -> Vec<String> {
        let min = self.effective_min_length();
        let unit = if min == 1 { "character" } else { "characters" };
        let mut rules = vec![format!("At least {min} {unit}")];
        match self.strength {
            PasswordStrength::None | PasswordStrength::Low => {}
            PasswordStrength::Fair => rules.push("A lowercase letter, an uppercase letter and a number".to_owned()),
            PasswordStrength::Good | PasswordStrength::Excellent => rules.push(
                "At least 3 of: lowercase letters, uppercase letters, numbers, special characters (such as !@#$%^&*)"
                    .to_owned(),
            ),
        }
        if self.strength == PasswordStrength::Excellent {
            rules.push("No more than 2 identical characters in a row".to_owned());
        }
        if self.no_personal_info {
            rules.push("Not containing your email address's name, your username or your name".to_owned());
        }
        if self.dictionary {
            rules.push("Not a common password".to_owned());
        }
        rules
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

impl DatabaseOptions {
    /// The password policy these options set.
    pub fn password_rules(&self) -> PasswordPolicy {
        PasswordPolicy {
            strength: self.password_policy,
            min_length: Some(self.password_min_length).filter(|n| *n > 0),
            history_size: self.password_history_size,
            no_personal_info: self.password_no_personal_info,
            dictionary: self.password_dictionary.enable,
            dictionary_words: self.password_dictionary.words.clone(),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn described_as_checked() {
        let mut policy = PasswordPolicy::none();
        assert_eq!(policy.describe(), ["At least 1 character"]);
        policy.strength = PasswordStrength::Excellent;
        policy.no_personal_info = true;
        policy.dictionary = true;
        let rules = policy.describe();
        assert_eq!(rules[0], "At least 10 characters");
        assert_eq!(rules.len(), 5, "{rules:?}");
        policy.min_length = Some(14);
        assert_eq!(policy.describe()[0], "At least 14 characters");
        policy.strength = PasswordStrength::Fair;
        assert!(policy.describe()[1].contains("uppercase"));
    }

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
        let none = policy(PasswordStrength::None);
        check(&none, "", &["at least 1 character long"]);
        check(&none, "x", &[]);

        let low = policy(PasswordStrength::Low);
        check(&low, "abcde", &["at least 6 characters"]);
        check(&low, "abcdef", &[]);

        let fair = policy(PasswordStrength::Fair);
        check(&fair, "Abcdef1", &["at least 8 characters"]);
        check(&fair, "Abcdefg1", &[]);
        check(&fair, "abcdefg1", &["missing: an uppercase letter"]);
        check(&fair, "ABCDEFGH", &["missing: a lowercase letter, a number"]);
        check(&fair, "abc", &["at least 8", "missing: an uppercase letter, a number"]);
        check(&fair, "Ünïcödé9", &[]);

        let good = policy(PasswordStrength::Good);
        check(&good, "abcdefg1", &["at least 3 of these 4 kinds"]);
        check(&good, "abcdef1!", &[]);
        check(&good, "ABCDEF1!", &[]);
        check(&good, "Abcdefgh", &["at least 3 of these 4 kinds"]);
        check(&good, "Abcdefg!", &[]);
        check(&good, "Ab1!", &["at least 8 characters"]);
        check(&good, "correct horse", &["at least 3 of these 4 kinds"]);

        let excellent = policy(PasswordStrength::Excellent);
        check(&excellent, "Abcdef1!x", &["at least 10 characters"]);
        check(&excellent, "Abcdef1!xy", &[]);
        check(&excellent, "Abcdef1!xx", &[]);
        check(&excellent, "Abc111!xyz", &["more than 2 identical characters in a row"]);
        check(&excellent, "aaa", &["at least 10", "at least 3 of these 4", "more than 2 identical"]);
    }

    #[test]
    fn min_length_overrides_the_level() {
        let longer = PasswordPolicy { min_length: Some(12), ..policy(PasswordStrength::Good) };
        check(&longer, "Abcdefgh1!x", &["at least 12 characters"]);
        check(&longer, "Abcdefgh1!xy", &[]);
        let shorter = PasswordPolicy { min_length: Some(4), ..policy(PasswordStrength::Good) };
        check(&shorter, "Ab1!", &[]);
        check(&shorter, &"a".repeat(MAX_PASSWORD_LENGTH + 1), &["at most 256", "at least 3 of these 4"]);
    }

    #[test]
    fn personal_information() {
        let p = PasswordPolicy { no_personal_info: true, ..policy(PasswordStrength::None) };
        check(&p, "x-ALICE.LIDDELL-9", &["personal information"]); // email local part
        check(&p, "myWonderland!", &["personal information"]); // username
        check(&p, "pleasance2024", &["personal information"]); // a word of the name
        check(&p, "liddell", &["personal information"]); // family name
        check(&p, "rally-car", &["personal information"]); // nickname
        check(&p, "dinah-the-cat", &["personal information"]); // other values
        check(&p, "fabrikam", &[]); // the email's domain is not personal
        check(&p, "xyz-unrelated", &[]);
        let off = policy(PasswordStrength::None);
        check(&off, "alice", &[]);
    }

    #[test]
    fn short_personal_values_are_ignored() {
        let p = PasswordPolicy { no_personal_info: true, ..policy(PasswordStrength::None) };
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
            ..policy(PasswordStrength::None)
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
            strength: PasswordStrength::Excellent,
            min_length: None,
            history_size: 0,
            no_personal_info: true,
            dictionary: true,
            dictionary_words: vec![],
        };
        check(&p, "alice", &["at least 10", "at least 3 of these 4", "personal information", "too common"]);
    }
}
