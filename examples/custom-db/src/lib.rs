//! A small custom database: the service a customer runs in front of its own user store so
//! that a Postern database connection keeps its users there (`postern.customdb.v1`).
//!
//! The store is one SQLite table of users with Argon2id password hashes. Every RPC of the
//! contract is implemented with the outcomes the contract asks for: UNAUTHENTICATED for
//! wrong credentials and unknown users alike, NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT.
//! It serves any tenant and connection: a real deployment would check `context`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::str::FromStr;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use postern_proto::customdb::v1 as pb;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tonic::{Request, Response, Status};

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user with that email or username exists.
    #[error("a user with that email or username exists")]
    Exists,
    /// Hashing failed.
    #[error("password hashing failed")]
    Hash,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A user to add.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    /// The email address (required).
    pub email: String,
    /// The username, if any.
    pub username: String,
    /// The password, hashed before it is stored.
    pub password: String,
    /// The full name.
    pub name: String,
}

/// The user store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating) the SQLite file at `path`.
    pub async fn open(path: &std::path::Path) -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE COLLATE NOCASE, \
             username TEXT UNIQUE COLLATE NOCASE, password_hash TEXT NOT NULL, email_verified INTEGER NOT NULL DEFAULT 0, \
             name TEXT NOT NULL DEFAULT '', given_name TEXT NOT NULL DEFAULT '', family_name TEXT NOT NULL DEFAULT '', \
             nickname TEXT NOT NULL DEFAULT '', picture TEXT NOT NULL DEFAULT '')",
        )
        .execute(&pool)
        .await?;
        Ok(Self { pool })
    }

    /// Adds a user and answers its id.
    pub async fn add_user(&self, user: &NewUser) -> Result<String, Error> {
        let password = user.password.clone();
        let hash = tokio::task::spawn_blocking(move || hash(&password)).await.map_err(|_| Error::Hash)??;
        let id = format!("cdb-{}", uuid::Uuid::now_v7().simple());
        let username = Some(user.username.as_str()).filter(|u| !u.is_empty());
        let done = sqlx::query("INSERT INTO users (id, email, username, password_hash, name) VALUES (?, ?, ?, ?, ?)")
            .bind(&id)
            .bind(&user.email)
            .bind(username)
            .bind(&hash)
            .bind(&user.name)
            .execute(&self.pool)
            .await;
        match done {
            Ok(_) => Ok(id),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::Exists),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes a user's name and picture (to show profile sync in action).
    pub async fn set_profile(&self, email: &str, name: &str, picture: &str) -> Result<bool, Error> {
        let done = sqlx::query("UPDATE users SET name = ?, picture = ? WHERE email = ?")
            .bind(name)
            .bind(picture)
            .bind(email)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// How many users the store holds.
    pub async fn count(&self) -> Result<i64, Error> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(&self.pool).await?.try_get("n")?)
    }

    async fn find(&self, name: &str) -> Result<Option<(pb::Profile, String)>, Error> {
        let row = sqlx::query(
            "SELECT id, email, username, password_hash, email_verified, name, given_name, family_name, nickname, picture \
             FROM users WHERE email = ?1 OR username = ?1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let profile = pb::Profile {
            user_id: r.try_get("id")?,
            email: r.try_get("email")?,
            email_verified: r.try_get::<i64, _>("email_verified")? != 0,
            username: r.try_get::<Option<String>, _>("username")?.unwrap_or_default(),
            name: r.try_get("name")?,
            given_name: r.try_get("given_name")?,
            family_name: r.try_get("family_name")?,
            nickname: r.try_get("nickname")?,
            picture: r.try_get("picture")?,
            user_metadata: None,
            app_metadata: None,
        };
        Ok(Some((profile, r.try_get("password_hash")?)))
    }
}

fn hash(password: &str) -> Result<String, Error> {
    argon2::Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|_| Error::Hash)
}

fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

fn internal(e: Error) -> Status {
    eprintln!("custom-db-example: store error: {e}");
    Status::internal("the user store failed")
}

/// The gRPC service over a [`Store`].
#[derive(Debug, Clone)]
pub struct CustomDb {
    store: Store,
    token: Option<String>,
}

impl CustomDb {
    /// The service; with `token`, calls must carry `authorization: Bearer <token>`.
    pub fn new(store: Store, token: Option<String>) -> Self {
        Self { store, token }
    }

    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match &self.token {
            None => Ok(()),
            Some(t) => {
                let sent = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                if sent.strip_prefix("Bearer ") == Some(t.as_str()) {
                    Ok(())
                } else {
                    Err(Status::permission_denied("this custom database serves only its Postern"))
                }
            }
        }
    }
}

#[tonic::async_trait]
impl pb::custom_database_service_server::CustomDatabaseService for CustomDb {
    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        let found = self.store.find(&req.username).await.map_err(internal)?;
        let wrong = || Status::unauthenticated("wrong username or password");
        let (profile, phc) = found.ok_or_else(wrong)?;
        let password = req.password;
        let ok = tokio::task::spawn_blocking(move || verify(&password, &phc)).await.unwrap_or(false);
        if !ok {
            return Err(wrong());
        }
        Ok(Response::new(pb::LoginResponse { profile: Some(profile) }))
    }

    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        self.check(&req)?;
        let found = self.store.find(&req.into_inner().username).await.map_err(internal)?;
        let (profile, _) = found.ok_or_else(|| Status::not_found("no such user"))?;
        Ok(Response::new(pb::GetUserResponse { profile: Some(profile) }))
    }

    async fn create(&self, req: Request<pb::CreateRequest>) -> Result<Response<pb::CreateResponse>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        if req.password.len() < 4 {
            return Err(Status::invalid_argument("this store needs passwords of at least 4 characters"));
        }
        let user =
            NewUser { email: req.email.clone(), username: req.username, password: req.password, name: String::new() };
        match self.store.add_user(&user).await {
            Ok(_) => {}
            Err(Error::Exists) => return Err(Status::already_exists("a user with that email or username exists")),
            Err(e) => return Err(internal(e)),
        }
        let (profile, _) = self
            .store
            .find(&req.email)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::internal("created user vanished"))?;
        Ok(Response::new(pb::CreateResponse { profile: Some(profile) }))
    }

    async fn verify(&self, req: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        self.check(&req)?;
        let done = sqlx::query("UPDATE users SET email_verified = 1 WHERE email = ?")
            .bind(req.into_inner().email)
            .execute(&self.store.pool)
            .await
            .map_err(|e| internal(e.into()))?;
        if done.rows_affected() == 0 {
            return Err(Status::not_found("no such user"));
        }
        Ok(Response::new(pb::VerifyResponse {}))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        let password = req.new_password;
        let phc = tokio::task::spawn_blocking(move || hash(&password))
            .await
            .map_err(|_| Status::internal("hashing failed"))?
            .map_err(internal)?;
        let done = sqlx::query("UPDATE users SET password_hash = ? WHERE email = ?")
            .bind(phc)
            .bind(req.email)
            .execute(&self.store.pool)
            .await
            .map_err(|e| internal(e.into()))?;
        if done.rows_affected() == 0 {
            return Err(Status::not_found("no such user"));
        }
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        self.check(&req)?;
        let done = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(req.into_inner().user_id)
            .execute(&self.store.pool)
            .await
            .map_err(|e| internal(e.into()))?;
        if done.rows_affected() == 0 {
            return Err(Status::not_found("no such user"));
        }
        Ok(Response::new(pb::DeleteResponse {}))
    }
}

/// Serves the custom database in plaintext (for `http://` endpoints) on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with_tls(listener, store, token, None, shutdown).await
}

/// A server certificate (chain) and its private key, both PEM, to serve TLS with.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first (`-----BEGIN CERTIFICATE-----` …).
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_pem: Vec<u8>,
}

impl TlsIdentity {
    /// Checks that the certificate and key are PEM that TLS can serve with, without serving.
    pub fn check(&self) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder().tls_config(self.config()).map(|_| ())
    }

    fn config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        tonic::transport::ServerTlsConfig::new().identity(identity)
    }
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("cert_pem", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

/// Serves the custom database on `listener` until `shutdown` resolves: over TLS with `tls`
/// (for `https://` endpoints, HTTP/2 negotiated by ALPN), in plaintext without.
pub async fn serve_with_tls(
    listener: tokio::net::TcpListener,
    store: Store,
    token: Option<String>,
    tls: Option<TlsIdentity>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.config())?;
    }
    builder
        .add_service(pb::custom_database_service_server::CustomDatabaseServiceServer::new(CustomDb::new(store, token)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
