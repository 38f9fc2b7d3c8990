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

    /// The INVALID_ARGUMENT status listing every violation.
    pub fn into_status(self) -> Status {
        let message = self.0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
        let mut details = ErrorDetails::new();
        for v in &self.0 {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
        details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, std::collections::HashMap::new());
        Status::with_error_details(Code::InvalidArgument, format!("invalid request: {message}"), details)
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

/// DEADLINE_EXCEEDED with reason `reason`: the call did not finish in time.
pub fn deadline_exceeded(reason: &str, message: impl Into<String>) -> Status {
    status(Code::DeadlineExceeded, reason, message)
}

/// The `ErrorInfo` reason of a status, if it carries one.
pub fn reason(status: &Status) -> Option<String> {
    status.get_error_details().error_info().map(|i| i.reason.clone())
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
