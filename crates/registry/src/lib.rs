//! The connection registry: the sources of users (connections) that a tenant configures once
//! and shares among its clients, their enablement per client, and their secrets, encrypted
//! at rest.
//!
//! A connection has a `strategy` in Auth0's wire names (`auth0`, `google-oauth2`, `ldap`,
//! `samlp`, `email`, …) that fixes its category and the family of its options. Secrets
//! (client secrets, bind passwords, private keys, SMTP and SMS credentials) never leave the
//! registry except through the internal `ResolveConnection`: reads show only that each is set.
//!
//! # Layout
//!
//! - [`domain`]: connections as Rust types, the catalogue of strategies, the validation of
//!   every field, the conversions from and to the `postern.connections.v1` contract, and the
//!   update-mask rules. Pure: no I/O.
//! - [`secrets`]: encryption at rest of a connection's secrets (XChaCha20-Poly1305 under the
//!   master key, bound to the tenant and the connection).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod domain;
pub mod secrets;
