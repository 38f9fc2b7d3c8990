//! Building `tonic::Status` values the house way: the right code, a message that says what
//! was wrong and what is allowed, a stable `google.rpc.ErrorInfo` reason, and for bad input
//! a `google.rpc.BadRequest` naming every bad field.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Postern error.
pub const ERROR_DOMAIN: &str = "postern";

/// One bad field: its path in the request (`tenant.name`) and what is allowed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path, dotted from the request message (`client.callbacks[2]`).
    pub field: String,
    /// What is wrong and what is allowed.
    pub description: String,
}

/// Collects every problem of a request so that the caller learns all of them at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.into(), description: description.into() });
    }

    /// Records the outcome of a check: an `Err(description)` becomes a violation of `field`.
    pub fn check(&mut self, field: impl Into<String>, outcome: Result<(), String>) {
        if let Err(description) = outcome {
            self.add(field, description);
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The recorded violations.
    pub fn as_slice(&self) -> &[FieldViolation] {
        &self.0
    }

    /// Moves the violations of `other` into this collection, with `prefix.` before each field.
    pub fn extend_prefixed(&mut self, prefix: &str, other: Violations) {
        for v in other.0 {
            self.add(format!("{prefix}.{}", v.field), v.description);
        }
    }

    /// `Ok(())` when empty, otherwise the INVALID_ARGUMENT status that lists them all.
    pub fn into_result(self) -> Result<(), Status> {
        if self.is_empty() { Ok(()) } else { Err(self.into_status()) }
    }

    /// The INVALID_ARGUMENT status listing the violations: every one up to
    /// [`MAX_DETAILED_VIOLATIONS`] in the details (the message names the first
    /// [`MAX_MESSAGE_VIOLATIONS`]), then how many more there are; fields and descriptions
    /// are cut to a few hundred characters. So the answer stays well within the 16 KiB of
    /// metadata a usual gRPC client accepts, however many problems a request has (10,000
    /// bad update-mask paths of a megabyte each answer a few kilobytes).
    pub fn into_status(self) -> Status {
        let total = self.0.len();
        let shown: Vec<(String, String)> = self
            .0
            .iter()
            .take(MAX_DETAILED_VIOLATIONS)
            .map(|v| (cut(&v.field, MAX_FIELD_CHARS), cut(&v.description, MAX_DESCRIPTION_CHARS)))
            .collect();
        let more = |shown: usize| match total - shown {
            0 => String::new(),
            n => format!("; and {n} more"),
        };
        let in_message = shown.len().min(MAX_MESSAGE_VIOLATIONS);
        let message = shown[..in_message].iter().map(|(f, d)| format!("{f}: {d}")).collect::<Vec<_>>().join("; ");
        let mut details = ErrorDetails::new();
        for (field, description) in &shown {
            details.add_bad_request_violation(field.clone(), description.clone());
        }
        if total > shown.len() {
            details.add_bad_request_violation("", format!("and {} more violations", total - shown.len()));
        }
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("violations".to_owned(), total.to_string());
        details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, metadata);
        Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {message}{}", more(in_message)),
            details,
        )
    }
}

/// The violations an INVALID_ARGUMENT status details at most; the rest are counted.
pub const MAX_DETAILED_VIOLATIONS: usize = 20;
/// The violations its message names at most.
pub const MAX_MESSAGE_VIOLATIONS: usize = 5;
/// The characters of a violation's field path kept.
pub const MAX_FIELD_CHARS: usize = 120;
/// The characters of a violation's description kept.
pub const MAX_DESCRIPTION_CHARS: usize = 240;

/// `text` cut to `max` characters, with "…" when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// INVALID_ARGUMENT for a single field.
pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Status {
    let mut v = Violations::new();
    v.add(field, description);
    v.into_status()
}

/// A status with `code`, `message` and an `ErrorInfo` carrying `reason`.
pub fn status(code: Code, reason: &str, message: impl Into<String>) -> Status {
    status_with_metadata(code, reason, message, [])
}

/// A status with `code`, `message` and an `ErrorInfo` carrying `reason` and `metadata`
/// (`{"service": "postern.tenant.v1.TenantService"}`), for what a program reacting to the
/// error needs besides its reason.
pub fn status_with_metadata<const N: usize>(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: [(&str, &str); N],
) -> Status {
    let mut details = ErrorDetails::new();
    let metadata: std::collections::HashMap<String, String> =
        metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message.into(), details)
}

/// NOT_FOUND with reason `reason` (`TENANT_NOT_FOUND`).
pub fn not_found(reason: &str, message: impl Into<String>) -> Status {
    status(Code::NotFound, reason, message)
}

/// ALREADY_EXISTS with reason `reason`.
pub fn already_exists(reason: &str, message: impl Into<String>) -> Status {
    status(Code::AlreadyExists, reason, message)
}

/// FAILED_PRECONDITION with reason `reason`.
pub fn failed_precondition(reason: &str, message: impl Into<String>) -> Status {
    status(Code::FailedPrecondition, reason, message)
}

/// PERMISSION_DENIED with reason `reason`.
pub fn permission_denied(reason: &str, message: impl Into<String>) -> Status {
    status(Code::PermissionDenied, reason, message)
}

/// UNAUTHENTICATED with reason `reason`.
pub fn unauthenticated(reason: &str, message: impl Into<String>) -> Status {
    status(Code::Unauthenticated, reason, message)
}

/// UNAVAILABLE with reason `reason` (`TENANT_SERVICE_UNAVAILABLE`): something this call
/// needs is down, and the caller may retry.
pub fn unavailable(reason: &str, message: impl Into<String>) -> Status {
    status(Code::Unavailable, reason, message)
}

/// Whether a status another Postern service answered is about the request itself (the
/// caller's mistake, or a resource that is not there) rather than an outage.
pub fn is_about_the_request(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition | Code::OutOfRange
    )
}

/// What this service answers when a call to another Postern service failed with `s`: a
/// status about the request (INVALID_ARGUMENT, NOT_FOUND, …) passes on as it is, details
/// and all, for the request the caller sent is the same one; anything else is an outage,
/// answered by `outage` (UNAVAILABLE with the service's reason).
pub fn from_upstream(s: &Status, outage: impl FnOnce(&Status) -> Status) -> Status {
    if is_about_the_request(s.code()) { s.clone() } else { outage(s) }
}

/// DEADLINE_EXCEEDED with reason `reason`: the call did not finish in time.
pub fn deadline_exceeded(reason: &str, message: impl Into<String>) -> Status {
    status(Code::DeadlineExceeded, reason, message)
}

/// The `ErrorInfo` reason of a status, if it carries one.
pub fn reason(status: &Status) -> Option<String> {
    status.get_error_details().error_info().map(|i| i.reason.clone())
}

/// `error` followed by its causes (`transport error: tcp connect error: Connection refused`),
/// for logs: a transport error's own message says nothing of why.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let next = c.to_string();
        // Wrappers that display their source's message would repeat it.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// A status another process answered (or the channel made up) for logs: its code, its
/// message and the causes behind it (a channel's `transport error` carries why it could not
/// connect only there).
pub fn status_with_causes(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(cause) = std::error::Error::source(status) {
        let causes = with_causes(cause);
        // A status made from an error carries that error's message as its own.
        let causes = causes.strip_prefix(status.message()).map_or(causes.as_str(), |r| r.trim_start_matches(": "));
        if !causes.is_empty() {
            text.push_str(": ");
            text.push_str(causes);
        }
    }
    text
}

/// The status of a failed database call. UNAVAILABLE with reason `DATABASE_UNAVAILABLE` (the
/// caller may retry) when the service could not have a connection in time, its pool is
/// closing, or the database could not be reached; INTERNAL otherwise. The cause is logged,
/// never sent to the caller.
pub fn database(cause: &sqlx::Error) -> Status {
    match cause {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::error!(error = %cause, "the database is unavailable");
            unavailable(
                "DATABASE_UNAVAILABLE",
                "the service could not reach its database in time; the cause is in the server log; retry",
            )
        }
        cause => internal(cause),
    }
}

/// INTERNAL with a generic message; the cause is logged, never sent to the caller.
pub fn internal(cause: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %cause, "internal error");
    status(Code::Internal, "INTERNAL", "internal error; the cause is in the server log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_told_with_its_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"));
        assert_eq!(with_causes(&e), "transport error: Connection refused");
        let io = std::io::Error::other("reset");
        assert_eq!(with_causes(&io), "reset");
        let s = Status::from_error(Box::new(e));
        assert_eq!(status_with_causes(&s), "Unknown: transport error: Connection refused");
        assert_eq!(status_with_causes(&Status::unavailable("down")), "Unavailable: down");
    }

    #[test]
    fn a_database_out_of_reach_is_unavailable_and_anything_else_internal() {
        for e in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed, std::io::Error::other("reset").into()] {
            let s = database(&e);
            assert_eq!((s.code(), reason(&s).as_deref()), (Code::Unavailable, Some("DATABASE_UNAVAILABLE")), "{e}");
        }
        let s = database(&sqlx::Error::RowNotFound);
        assert_eq!((s.code(), reason(&s).as_deref()), (Code::Internal, Some("INTERNAL")));
    }

    #[test]
    fn violations_become_bad_request_details() {
        let mut v = Violations::new();
        v.add("tenant.name", "must be 3 to 63 characters");
        v.add("tenant.display_name", "must not be empty");
        let status = v.into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        let fields: Vec<_> = bad.field_violations.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["tenant.name", "tenant.display_name"]);
        assert!(status.message().contains("tenant.name: must be 3 to 63 characters"));
    }

    #[test]
    fn many_or_long_violations_stay_small() {
        let mut v = Violations::new();
        for i in 0..10_000 {
            v.add(format!("update_mask.paths[{i}]"), format!("{} is not a field", "x".repeat(1000)));
        }
        v.add("x".repeat(100_000), "long");
        let status = v.into_status();
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations.len(), MAX_DETAILED_VIOLATIONS + 1);
        assert_eq!(bad.field_violations[0].field, "update_mask.paths[0]");
        assert_eq!(bad.field_violations[MAX_DETAILED_VIOLATIONS].description, "and 9981 more violations");
        assert!(bad.field_violations[0].description.chars().count() <= MAX_DESCRIPTION_CHARS + 1);
        assert!(status.message().ends_with("; and 9996 more"), "{}", status.message());
        let info = details.error_info().expect("info");
        assert_eq!(info.metadata.get("violations").map(String::as_str), Some("10001"));
        // Everything a client receives in the trailers.
        let headers = status.clone().into_http::<tonic::body::Body>().into_parts().0.headers;
        let size: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
        assert!(size < 12 * 1024, "{size} bytes of trailers");
        assert_eq!(cut("héllo", 2), "hé…");
        assert_eq!(cut("hé", 2), "hé");
    }

    #[test]
    fn outages_carry_a_reason() {
        let s = unavailable("REGISTRY_UNAVAILABLE", "down");
        assert_eq!((s.code(), reason(&s).as_deref()), (Code::Unavailable, Some("REGISTRY_UNAVAILABLE")));
        let s = deadline_exceeded("BACKEND_DEADLINE_EXCEEDED", "slow");
        assert_eq!((s.code(), reason(&s).as_deref()), (Code::DeadlineExceeded, Some("BACKEND_DEADLINE_EXCEEDED")));
        let s = status_with_metadata(Code::PermissionDenied, "X", "m", [("scope", "USERS")]);
        let info = s.get_error_details().error_info().cloned().expect("info");
        assert_eq!(info.metadata.get("scope").map(String::as_str), Some("USERS"));
        assert_eq!(reason(&Status::unavailable("bare")), None);
    }
}
