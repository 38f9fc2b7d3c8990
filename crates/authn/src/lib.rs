//! The authenticator: the users of each tenant, the login through a connection, and the
//! tokens a successful login issues.
//!
//! A login checks the client, resolves the connection (cached, kept fresh by the connection
//! registry's watch stream), runs the connection's strategy, creates or updates the user
//! and its identity under the connection's profile-sync rule, and signs an ID token and an
//! access token with the tenant's current key. The database strategy keeps Argon2id hashes
//! in this service's own store, or asks the customer's store through the custom database
//! contract (`postern.customdb.v1`).
//!
//! # Layout
//!
//! - [`password`]: Argon2id hashing and verification (and legacy bcrypt), and the password
//!   policy of a database connection (strength levels, minimum length, history, personal
//!   information, dictionary).
//! - [`tokens`]: the tenant's signing keys (RS256, EdDSA), their JSON Web Key Set, and the
//!   signing and verification of ID and access tokens.
//! - [`bruteforce`]: the counting rule of brute-force protection, as a pure state machine
//!   that the store applies atomically.

#![forbid(unsafe_code)]

pub mod bruteforce;
pub mod password;
pub mod tokens;
