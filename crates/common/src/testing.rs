//! What tests across the workspace share about real peers (enabled by the `testing`
//! feature): whether a missing peer skips (printing why) or fails (`POSTERN_REQUIRE_PEERS=1`),
//! and a fresh PostgreSQL database per test. The test kit re-exports it; the services' own
//! store tests use it directly, since they cannot depend on the test kit.

/// Whether missing peers must fail the run (as in CI) instead of skipping.
pub fn required() -> bool {
    std::env::var("POSTERN_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// Reports a missing peer: panics when peers are required, otherwise prints why the test
/// skips. Returns so that the caller can `return` from the test.
///
/// The line goes to the process's standard error through `std::io::stderr()` itself, not
/// `eprintln!`: libtest captures only the print macros, and shows what it captured only for
/// a failing test, so a skip announced with `eprintln!` would never be seen in `cargo test`.
pub fn missing(test: &str, why: &str) {
    if required() {
        panic!("{test}: {why}, and POSTERN_REQUIRE_PEERS=1 requires it");
    }
    announce(&skip_line(test, why));
}

/// The line a skipped test prints.
pub fn skip_line(test: &str, why: &str) -> String {
    format!("SKIPPED {test}: {why} (set POSTERN_REQUIRE_PEERS=1 to make this a failure)\n")
}

/// Writes `line` to the terminal past libtest's output capture, in one write so that lines
/// of parallel tests do not interleave.
fn announce(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}

/// The base PostgreSQL URL for tests (`POSTERN_TEST_POSTGRES_URL`), or `None` after
/// reporting it missing.
pub fn postgres(test: &str) -> Option<String> {
    match std::env::var("POSTERN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            missing(test, "POSTERN_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A fresh PostgreSQL database, dropped by [`TestDatabase::drop_db`], or when it goes out of
/// scope (as when its test panics).
pub struct TestDatabase {
    /// The URL of the fresh database.
    pub url: String,
    base: String,
    name: String,
    dropped: bool,
}

impl TestDatabase {
    /// Creates `postern_test_<random>` on the server at `base` (a URL to any database).
    pub async fn create(base: &str) -> Result<Self, sqlx::Error> {
        use sqlx::Connection;
        let name = format!("postern_test_{}", crate::ids::random_alphanumeric(16).to_lowercase());
        let mut conn = sqlx::PgConnection::connect(base).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
        conn.close().await?;
        let url = match base.rfind('/') {
            Some(i) if base[..i].contains("://") && i > base.find("://").map_or(0, |p| p + 2) => {
                let (head, tail) = base.split_at(i);
                let query = tail.find('?').map(|q| &tail[q..]).unwrap_or("");
                format!("{head}/{name}{query}")
            }
            _ => format!("{}/{name}", base.trim_end_matches('/')),
        };
        Ok(Self { url, base: base.to_owned(), name, dropped: false })
    }

    /// Drops the database.
    pub async fn drop_db(mut self) -> Result<(), sqlx::Error> {
        drop_database(&self.base, &self.name).await?;
        self.dropped = true;
        Ok(())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Dropped without `drop_db`, most likely while its test panics, maybe inside a
        // runtime that may not block: drop the database from a thread of its own.
        let (base, name) = (self.base.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(drop_database(&base, &name)).map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}: {dropped:?}", self.name);
        }
    }
}

async fn drop_database(base: &str, name: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(base).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}
