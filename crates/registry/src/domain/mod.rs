//! The registry's domain: the typed connection model, shared with the authenticator
//! ([`postern_connection`], re-exported here whole), and the registry's own update rule
//! ([`update`]).

pub use postern_connection::*;

pub mod update;

#[cfg(test)]
mod tests;

pub use update::{UPDATABLE_PATHS, Update, apply_update};
