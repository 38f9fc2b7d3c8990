//! The field checks shared by the gRPC handlers and the login orchestration's inputs.

use postern_common::error::Violations;
use postern_common::principal::Principal;
use tonic::Status;

/// Checks a tenant name.
pub(crate) fn check_tenant(v: &mut Violations, field: &str, tenant: &str) {
    v.check(field, postern_common::validate::tenant_name(tenant));
}

/// Checks that a field is not blank.
pub(crate) fn required(v: &mut Violations, field: &str, value: &str) {
    if value.trim().is_empty() {
        v.add(field, "is required");
    }
}

/// Checks an email address: one `@`, something on each side, a dot in the domain, no
/// spaces, at most 254 characters.
pub(crate) fn check_email(v: &mut Violations, field: &str, email: &str) {
    if email.is_empty() {
        v.add(field, "is required");
        return;
    }
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if !ok {
        v.add(field, "must be an email address such as alice@example.com, at most 254 characters");
    }
}

/// Checks the tenant of a request and the caller's right to it.
pub(crate) fn tenant_only(p: &Principal, tenant: &str) -> Result<(), Status> {
    let mut v = Violations::new();
    check_tenant(&mut v, "tenant", tenant);
    v.into_result()?;
    p.require_tenant(tenant)
}

/// Checks the tenant of a user request and the caller's right to it.
pub(crate) fn user_scope(p: &Principal, tenant: &str, user_id: &str) -> Result<(), Status> {
    let mut v = Violations::new();
    check_tenant(&mut v, "tenant", tenant);
    required(&mut v, "user_id", user_id);
    v.into_result()?;
    p.require_tenant(tenant)
}
