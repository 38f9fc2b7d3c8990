//! Statements sent together. On SQLite every statement sqlx runs is a hand-off to the
//! connection's worker thread and back (two thread wake-ups, each a context switch), and in
//! a login those hand-offs, not SQLite's work, are most of what the store costs. SQLite
//! runs a query of several statements (`a; b; c`) in one hand-off, binding one list of
//! parameters across them, so [`Together`] joins its statements into one such query, with
//! each statement's parameters renumbered after those of the statements before it, and
//! reads each statement's outcome from the answers. PostgreSQL prepares one statement at a
//! time, so there they run one after another, as they would have.

use std::fmt::Write as _;

use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::{Any, AnyConnection, Arguments as _, Either, Execute as _, Executor as _};

use super::Backend;

/// Statements to run in order on one connection, each answering how many rows it changed
/// and the rows it returned. See the module's documentation.
#[derive(Default)]
pub struct Together {
    statements: Vec<(sqlx::SqlStr, Option<AnyArguments>)>,
    /// The positions of the statements that must change exactly one row for the statements
    /// after them to run ([`push_expecting_one`](Self::push_expecting_one)), in order.
    expecting_one: Vec<usize>,
}

impl std::fmt::Debug for Together {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.statements.iter().map(|(sql, _)| sql.as_str())).finish()
    }
}

/// What a statement sent together answered.
#[derive(Default)]
pub struct Answer {
    /// The rows it changed, for a write (after a `SELECT`, SQLite repeats the count of the
    /// write before it).
    pub changed: u64,
    /// The rows it returned (a `SELECT`, or a write's `RETURNING`).
    pub rows: Vec<AnyRow>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer").field("changed", &self.changed).field("rows", &self.rows.len()).finish()
    }
}

/// Why statements sent together failed: which one, and its error. The statements before it
/// ran; those after it did not.
#[derive(Debug)]
pub struct Failed {
    /// The failed statement's position.
    pub index: usize,
    /// Its error ([`sqlx::Error::RowNotFound`] when it is [`unmet`](Self::unmet)).
    pub error: sqlx::Error,
    /// The statement ran, but changed other than exactly one row where it was
    /// [expected to](Together::push_expecting_one).
    pub unmet: bool,
}

impl Failed {
    /// Statement `index` failed with `error`.
    pub(super) fn error(index: usize, error: sqlx::Error) -> Self {
        Self { index, error, unmet: false }
    }

    fn unmet(index: usize) -> Self {
        Self { index, error: sqlx::Error::RowNotFound, unmet: true }
    }
}

/// On SQLite, the statement that follows one [expected](Together::push_expecting_one) to
/// change exactly one row: it fails (SQLite's `json()` refuses text that is not JSON, and
/// SQLite has no `RAISE` outside triggers) unless `changes()`, the rows changed by the
/// statement before it, is 1, which stops the statements after it. Its argument depends on
/// `changes()`, so SQLite cannot evaluate it once ahead of the `CASE`.
const EXPECT_ONE: &str = "SELECT json(CASE changes() WHEN 1 THEN '1' ELSE 'postern: expected one row changed' END)";

impl Together {
    /// Adds `query` after the statements already here.
    pub fn push(&mut self, mut query: sqlx::query::Query<'_, Any, AnyArguments>) -> Result<(), sqlx::Error> {
        let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
        self.statements.push((query.sql(), arguments));
        Ok(())
    }

    /// Adds `query`, a write, after the statements already here: the statements after it run
    /// only if it changes exactly one row. If it does not, [`run`](Self::run) fails at it
    /// with [`Failed::unmet`] (on SQLite by a guard statement sent with the others, on
    /// PostgreSQL by looking between statements).
    pub fn push_expecting_one(&mut self, query: sqlx::query::Query<'_, Any, AnyArguments>) -> Result<(), sqlx::Error> {
        self.push(query)?;
        self.expecting_one.push(self.statements.len() - 1);
        Ok(())
    }

    /// Adds a statement without parameters.
    pub fn push_sql(&mut self, sql: &'static str) {
        self.statements.push((sqlx::SqlSafeStr::into_sql_str(sql), None));
    }

    /// Puts a statement without parameters before the others.
    pub(super) fn push_front_sql(&mut self, sql: &'static str) {
        self.statements.insert(0, (sqlx::SqlSafeStr::into_sql_str(sql), None));
        for i in &mut self.expecting_one {
            *i += 1;
        }
    }

    /// How many statements there are.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Runs the statements on `conn`, in order, stopping at the first that fails: what each
    /// answered.
    pub async fn run(mut self, conn: &mut AnyConnection, backend: Backend) -> Result<Vec<Answer>, Failed> {
        use futures_util::StreamExt as _;
        let count = self.statements.len();
        if backend == Backend::Postgres || count < 2 {
            return self.run_apart(conn).await;
        }
        let kinds: Vec<Kind> = self.statements.iter().map(|(sql, _)| kind(sql.as_str())).collect();
        if kinds.contains(&Kind::Mixed) {
            return self.run_apart(conn).await;
        }
        // A guard after each statement expected to change one row; and, for each statement
        // of the joined query, the caller's statement behind it and whether it is a guard.
        let expecting_one = std::mem::take(&mut self.expecting_one);
        let total = count + expecting_one.len();
        let (mut statements, mut joined_kinds, mut origin) =
            (Vec::with_capacity(total), Vec::with_capacity(total), Vec::with_capacity(total));
        for (index, (statement, kind)) in self.statements.into_iter().zip(kinds).enumerate() {
            statements.push(statement);
            joined_kinds.push(kind);
            origin.push((index, false));
            if expecting_one.contains(&index) {
                statements.push((sqlx::SqlSafeStr::into_sql_str(EXPECT_ONE), None));
                joined_kinds.push(Kind::Numbered);
                origin.push((index, true));
            }
        }
        let mut done = Vec::with_capacity(count);
        let mut rows = Vec::new();
        let (sql, arguments) = Self { statements, expecting_one: Vec::new() }.joined(&joined_kinds);
        let mut answered = 0;
        let mut answers = conn.fetch_many(sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments));
        while let Some(answer) = answers.next().await {
            let answer: Result<Either<AnyQueryResult, AnyRow>, sqlx::Error> = answer;
            let (index, guard) = origin.get(answered).copied().unwrap_or((count, false));
            match answer {
                Ok(Either::Left(result)) => {
                    answered += 1;
                    let rows = std::mem::take(&mut rows);
                    if !guard {
                        done.push(Answer { changed: result.rows_affected(), rows });
                    }
                }
                Ok(Either::Right(row)) => rows.push(row),
                Err(_) if guard => return Err(Failed::unmet(index)),
                Err(error) => return Err(Failed::error(index, error)),
            }
        }
        if answered == total {
            Ok(done)
        } else {
            let error = sqlx::Error::Protocol(format!("{total} statements sent together, {answered} answered"));
            Err(Failed::error(origin.get(answered).map_or(count, |o| o.0), error))
        }
    }

    /// Runs the statements one after another.
    async fn run_apart(self, conn: &mut AnyConnection) -> Result<Vec<Answer>, Failed> {
        use futures_util::StreamExt as _;
        let mut done = Vec::with_capacity(self.statements.len());
        for (index, (sql, arguments)) in self.statements.into_iter().enumerate() {
            let mut answer = Answer::default();
            let mut answers = conn.fetch_many(sqlx::query_with(sql, arguments.unwrap_or_default()));
            while let Some(a) = answers.next().await {
                match a {
                    Ok(Either::Left(result)) => answer.changed += result.rows_affected(),
                    Ok(Either::Right(row)) => answer.rows.push(row),
                    Err(error) => return Err(Failed::error(index, error)),
                }
            }
            drop(answers);
            if answer.changed != 1 && self.expecting_one.contains(&index) {
                return Err(Failed::unmet(index));
            }
            done.push(answer);
        }
        Ok(done)
    }

    /// One query of all the statements, and one list of their parameters, given how each
    /// names its parameters (none mixes bare `?` parameters with numbered ones).
    ///
    /// sqlx binds a numbered parameter (`$n`) to the n-th value of the whole list, and the
    /// bare `?` parameters of each statement to the values after those that the bare
    /// parameters of the statements before it took. So the list holds the values of the
    /// statements with bare parameters first, in order, and then those of the numbered
    /// ones, whose numbers are moved past everything before theirs. The bare statements
    /// stay as they were: a numbered parameter costs SQLite a walk of the statement's list of
    /// names each time it is bound, which a batched insert of a thousand values would pay a
    /// million times over.
    fn joined(self, kinds: &[Kind]) -> (String, AnyArguments) {
        let mut bare = AnyArguments::default();
        let mut numbered = AnyArguments::default();
        let bare_values: usize = self
            .statements
            .iter()
            .zip(kinds)
            .filter(|(_, k)| **k == Kind::Bare)
            .map(|((_, a), _)| a.as_ref().map_or(0, |a| a.len()))
            .sum();
        let mut sql = String::new();
        for ((statement, arguments), kind) in self.statements.into_iter().zip(kinds) {
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            let values = arguments.map(|a| a.values.0).unwrap_or_default();
            if *kind == Kind::Bare {
                sql.push_str(statement.as_str());
                bare.values.0.extend(values);
            } else {
                renumber(statement.as_str(), bare_values + numbered.len(), &mut sql);
                // sqlx offers no way to move bound values from one list to another but this
                // buffer (public, if hidden from its documentation).
                numbered.values.0.extend(values);
            }
        }
        bare.values.0.extend(numbered.values.0);
        (sql, bare)
    }
}

/// How a statement names its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Numbered (`$n`, `?n`), or none.
    Numbered,
    /// Bare `?`.
    Bare,
    /// Both.
    Mixed,
}

fn kind(sql: &str) -> Kind {
    let (mut bare, mut numbered) = (false, false);
    walk(sql, |_, mark, digits| {
        if digits.is_empty() {
            bare |= mark == b'?';
        } else {
            numbered = true;
        }
    });
    match (bare, numbered) {
        (true, true) => Kind::Mixed,
        (true, false) => Kind::Bare,
        _ => Kind::Numbered,
    }
}

/// Calls `found` with the position, mark (`$` or `?`) and digits of each parameter-like
/// token of `sql` outside quoted text and comments (a `$` without digits included).
fn walk(sql: &str, mut found: impl FnMut(usize, u8, &str)) {
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            mark @ (b'$' | b'?') => {
                let digits = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
                found(i, mark, &sql[i + 1..i + 1 + digits]);
                i += 1 + digits;
            }
            _ => i += 1,
        }
    }
}

/// Appends `sql`, a statement with numbered parameters, to `out` with its parameters
/// numbered after `base`: `$n` and `?n` become `$<base + n>`. Quoted text (`'…'`, `"…"`)
/// and comments are copied as they are.
fn renumber(sql: &str, base: usize, out: &mut String) {
    let mut copied = 0;
    walk(sql, |at, _, digits| {
        if digits.is_empty() {
            return;
        }
        let n = digits.parse::<usize>().unwrap_or(usize::MAX - base);
        out.push_str(&sql[copied..at]);
        let _ = write!(out, "${}", base + n);
        copied = at + 1 + digits.len();
    });
    out.push_str(&sql[copied..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renumbered(sql: &str, base: usize) -> String {
        let mut out = String::new();
        renumber(sql, base, &mut out);
        out
    }

    #[test]
    fn numbered_parameters_move_past_the_base_and_quoted_text_is_left_alone() {
        assert_eq!(
            renumbered("UPDATE t SET a = $2 WHERE b = $1 AND c = $2", 3),
            "UPDATE t SET a = $5 WHERE b = $4 AND c = $5"
        );
        assert_eq!(renumbered("SELECT ?7", 1), "SELECT $8");
        assert_eq!(
            renumbered("SELECT json_extract(x, '$.a?'), \"q$1\" FROM t -- $1 ?\nWHERE y = $1 /* $2 */", 10),
            "SELECT json_extract(x, '$.a?'), \"q$1\" FROM t -- $1 ?\nWHERE y = $11 /* $2 */"
        );
        assert_eq!(renumbered("SELECT 'it''s $1' || $1", 1), "SELECT 'it''s $1' || $2");
        assert_eq!(renumbered("COMMIT", 4), "COMMIT");
    }

    #[test]
    fn statements_are_told_apart_by_how_they_name_parameters() {
        assert_eq!(kind("INSERT INTO t VALUES (?, ?), (?, ?)"), Kind::Bare);
        assert_eq!(kind("UPDATE t SET a = $1"), Kind::Numbered);
        assert_eq!(kind("COMMIT"), Kind::Numbered);
        assert_eq!(kind("SELECT '?' || $1"), Kind::Numbered);
        assert_eq!(kind("SELECT ? || $1"), Kind::Mixed);
    }
}
