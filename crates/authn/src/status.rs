//! The statuses the authenticator answers: every error a login, a user call or a key call
//! can meet becomes a gRPC status here, with its `ErrorInfo` reason.

use postern_common::error::{
    already_exists, failed_precondition, internal, invalid_field, not_found, permission_denied, status, unauthenticated,
};
use postern_common::validate::truncate;
use tonic::{Code, Status};

use crate::keys::KeyError;
use crate::store::StoreError;
use crate::tokens;
use postern_connector::ConnectorError;

/// The one message of wrong credentials, whether the user exists or not.
const WRONG_CREDENTIALS: &str = "wrong email, username or password";

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists => already_exists("ALREADY_EXISTS", "a user with that email or username exists"),
            StoreError::Used => failed_precondition(
                "LOGIN_TRANSACTION_USED",
                "this login was already completed (in another tab?); go back to the application and sign in again",
            ),
            StoreError::Db(e) => postern_common::error::database(&e),
            e => internal(&e),
        }
    }
}

impl From<KeyError> for Status {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Settling => postern_common::error::unavailable("SIGNING_KEYS_SETTLING", e.to_string()),
            e => internal(&e),
        }
    }
}

/// Wrong credentials, the same whether the user exists or not.
pub(crate) fn wrong_credentials() -> Status {
    unauthenticated("INVALID_CREDENTIALS", WRONG_CREDENTIALS)
}

/// The tenant has no such user.
pub(crate) fn user_not_found(tenant: &str, user_id: &str) -> Status {
    not_found("USER_NOT_FOUND", format!("tenant {tenant:?} has no user {:?}", truncate(user_id, 128)))
}

/// The user is blocked by an administrator.
pub(crate) fn blocked() -> Status {
    permission_denied("USER_BLOCKED", "the user is blocked by an administrator")
}

/// The user is blocked from this address by brute-force protection.
pub(crate) fn too_many_attempts() -> Status {
    status(
        Code::ResourceExhausted,
        "TOO_MANY_ATTEMPTS",
        "this user is blocked from this address after too many failed logins; an administrator can lift the block \
         with UserService/UnblockUser, or the password can be changed",
    )
}

/// What a connector's refusal or failure means to the caller.
pub(crate) fn connector_status(e: ConnectorError) -> Status {
    match e {
        ConnectorError::WrongCredentials => wrong_credentials(),
        ConnectorError::Invalid(v) => v.into_status(),
        ConnectorError::Refused { field, message } => invalid_field(field, message),
        ConnectorError::NotFound { reason, message } => not_found(reason, message),
        ConnectorError::AlreadyExists { reason, message } => already_exists(reason, message),
        ConnectorError::PermissionDenied { reason, message } => permission_denied(reason, message),
        ConnectorError::FailedPrecondition { reason, message } => failed_precondition(reason, message),
        ConnectorError::Unavailable { reason, message } => status(Code::Unavailable, reason, message),
        ConnectorError::Denied { message } => permission_denied("UPSTREAM_ACCESS_DENIED", message),
        ConnectorError::Rejected { reason, message } => permission_denied(reason, message),
        e @ ConnectorError::Internal(_) => internal(&e),
    }
}

/// The tenant service refused a client check, or could not answer it.
pub(crate) fn client_refusal(tenant: &str, client_id: &str, s: &Status) -> Status {
    match s.code() {
        Code::NotFound => {
            not_found("CLIENT_NOT_FOUND", format!("tenant {tenant:?} has no client {:?}", truncate(client_id, 64)))
        }
        Code::Unauthenticated => unauthenticated(
            "CLIENT_SECRET_INVALID",
            "the client secret is wrong or missing: a confidential client must present its secret, and a \
             secret that is sent (by any client) must be the client's",
        ),
        Code::InvalidArgument => invalid_field("client_id", "is not a valid client id"),
        _ => tenant_service_unavailable(s),
    }
}

/// The tenant service did not serve the call: its refusal of the request passed on as it is
/// (INVALID_ARGUMENT, NOT_FOUND, …), UNAVAILABLE for an outage.
pub(crate) fn tenant_service_unavailable(s: &Status) -> Status {
    postern_common::error::from_upstream(s, |s| {
        tracing::warn!(code = ?s.code(), message = s.message(), "tenant service call failed");
        postern_common::error::unavailable(
            "TENANT_SERVICE_UNAVAILABLE",
            "the tenant service is unavailable; retry shortly",
        )
    })
}

/// A user login asked tokens for an API (`audience`) the tenant does not have: Auth0's
/// "Service not found", PERMISSION_DENIED with reason ACCESS_DENIED (the token endpoint's
/// 403 `access_denied`, an error redirect's `error=access_denied`).
pub(crate) fn service_not_found(audience: &str) -> Status {
    let audience = postern_common::validate::truncate(audience, 512);
    postern_common::error::status_with_metadata(
        tonic::Code::PermissionDenied,
        "ACCESS_DENIED",
        format!("Service not found: {audience} (the audience must be the identifier of one of the tenant's APIs)"),
        [("audience", audience)],
    )
}

/// An access token the userinfo endpoint refuses.
pub(crate) fn invalid_access_token(message: impl Into<String>) -> Status {
    unauthenticated("INVALID_ACCESS_TOKEN", message)
}

/// Why a JWT access token was refused at `tenant`'s userinfo endpoint (`audience`).
pub(crate) fn jwt_refusal(tenant: &str, audience: &str, e: &tokens::Error) -> Status {
    use jsonwebtoken::errors::ErrorKind;
    let message = match e {
        tokens::Error::UnknownKey => {
            format!("the access token was not signed by a key of tenant {tenant:?} (another tenant's, or no token)")
        }
        tokens::Error::InvalidToken(e) => match e.kind() {
            ErrorKind::ExpiredSignature => "the access token has expired; log in again".to_owned(),
            ErrorKind::InvalidIssuer => format!("the access token was not issued by tenant {tenant:?}"),
            ErrorKind::InvalidAudience => format!(
                "the token is not an access token for this endpoint: its `aud` does not include {audience:?} (an ID \
                 token is not an access token)"
            ),
            ErrorKind::InvalidSignature => "the access token's signature does not verify".to_owned(),
            _ => "the access token is malformed: neither an opaque access token nor a valid JWT".to_owned(),
        },
        _ => "the access token is malformed: neither an opaque access token nor a valid JWT".to_owned(),
    };
    invalid_access_token(message)
}
