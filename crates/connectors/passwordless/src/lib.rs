//! The passwordless connectors (strategies `email` and `sms`), behind [`CodeConnector`]: they
//! render a one-time code or magic link into the connection's templates and deliver it, by
//! email over SMTP or by SMS through an HTTP API. The code itself (drawn, stored hashed,
//! counted, expired, replaced) is the authenticator's: its state must be shared by every
//! replica, while delivery is protocol work that never enters the authenticator.
//!
//! # Layout
//!
//! - [`template`]: the message templates (minijinja; the HTML part of an email escaped).
//! - [`email`]: SMTP with `lettre`: implicit TLS, required STARTTLS (always with a user
//!   name), opportunistic STARTTLS for a credential-less relay; one pooled transport per
//!   connection, rebuilt when its settings change.
//! - [`sms`]: Twilio's Messages API shape (Basic authentication, a form body), or a webhook
//!   signed with HMAC-SHA256.
//!
//! A failed delivery is `UNAVAILABLE` naming the connection (reason
//! `PASSWORDLESS_DELIVERY_FAILED`); its cause is logged, never the code or link.
//!
//! `TestConnection` renders the templates and opens what a delivery opens without sending:
//! the SMTP session up to the sender (then RSET), Twilio's account read with the
//! credentials, or a request to the webhook that carries no message.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod email;
pub mod sms;
pub mod template;

use std::sync::Arc;

use postern_connection::{Resolved, Strategy};
use postern_connector::{ConnectorError, Connectors, Egress};

pub use email::EmailConnector;
pub use sms::SmsConnector;

/// Registers the passwordless connectors for their strategies (`email`, `sms`), connecting
/// only where `egress` allows.
pub fn register(connectors: Connectors, egress: &Egress) -> Connectors {
    connectors
        .with_code(Strategy::Email, Arc::new(EmailConnector::with_egress(egress)))
        .with_code(Strategy::Sms, Arc::new(SmsConnector::with_egress(egress)))
}

/// The `ErrorInfo` reason of a failed delivery.
pub const DELIVERY_FAILED: &str = "PASSWORDLESS_DELIVERY_FAILED";

/// A delivery that failed: `UNAVAILABLE` naming the connection; `cause` goes to the log.
pub(crate) fn delivery_failed(conn: &Resolved, cause: &dyn std::fmt::Display) -> ConnectorError {
    let name = &conn.connection.spec.name;
    tracing::warn!(connection = %name, error = %cause, "passwordless delivery failed");
    ConnectorError::Unavailable {
        reason: DELIVERY_FAILED,
        message: format!(
            "connection {name:?} could not deliver the message (its {} server failed or refused it); no code was \
             issued, try again shortly",
            conn.connection.spec.strategy.as_str()
        ),
    }
}

/// A connection whose settings cannot work (a template that does not render, a sender that
/// does not parse): `FAILED_PRECONDITION` naming the connection and the field.
pub(crate) fn misconfigured(conn: &Resolved, field: &str, problem: &dyn std::fmt::Display) -> ConnectorError {
    ConnectorError::FailedPrecondition {
        reason: "PASSWORDLESS_CONNECTION_MISCONFIGURED",
        message: format!("connection {:?}: its {field} cannot be used: {problem}", conn.connection.spec.name),
    }
}

/// The options family did not match the strategy (the registry guarantees it does).
pub(crate) fn wrong_family(conn: &Resolved) -> ConnectorError {
    ConnectorError::Internal(format!(
        "connection {:?} of strategy {:?} has options of another family",
        conn.connection.spec.name,
        conn.connection.spec.strategy.as_str()
    ))
}

/// A server's or provider's text echoed in a test's detail: at most 100 characters, no
/// control characters.
pub(crate) fn echo(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}
