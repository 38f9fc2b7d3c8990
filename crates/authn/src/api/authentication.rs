//! `AuthenticationService`: signup, the login, password changes. Each handler validates,
//! checks the caller's right to the tenant, and calls the orchestration ([`crate::login`]).
//! `StartPasswordless` and `VerifyPasswordless` are the passwordless login's two steps.
//! `Login`, `Signup` and the passwordless steps also serve a caller without an API key (the application itself,
//! named by its client id and, for a confidential client, authenticated by its secret).

use postern_common::error::Violations;
use postern_common::principal::{Principal, principal};
use postern_proto::authn::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{login_to_pb, user_to_pb};
use super::{AuthnApi, address, reported_address};
use crate::login::{IssueTokens, PasswordLogin, SignupInput};
use crate::passwordless::{CodeLogin, CodeStart, LinkTarget, Links, RecipientInput, SendKind};
use crate::validate::{check_tenant, required};

#[tonic::async_trait]
impl pb::authentication_service_server::AuthenticationService for AuthnApi {
    async fn signup(&self, req: Request<pb::SignupRequest>) -> Result<Response<pb::SignupResponse>, Status> {
        let p = principal(&req)?;
        let from = address(&req, "")?;
        let req = req.into_inner();
        let input = SignupInput {
            tenant: &req.tenant,
            client_id: &req.client_id,
            connection: &req.connection,
            email: &req.email,
            username: &req.username,
            password: &req.password,
            user_metadata: req.user_metadata.as_ref(),
            address: &from,
        };
        input.validate()?;
        // Without a key, the application itself: the client it names must exist.
        if p != Principal::Anonymous {
            p.require_tenant(&req.tenant)?;
        }
        let user = AuthnApi::signup(self, &input).await?;
        Ok(Response::new(pb::SignupResponse { user: Some(user_to_pb(&user)) }))
    }

    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let p = principal(&req)?;
        let address = reported_address(&req, &p, &req.get_ref().client_secret, &req.get_ref().ip)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        v.check("scope", postern_common::validate::display_text(&req.scope, 0, MAX_SCOPE_CHARS));
        v.check("audience", postern_common::validate::display_text(&req.audience, 0, MAX_AUDIENCE_CHARS));
        v.into_result()?;
        let login = PasswordLogin {
            tenant: &req.tenant,
            client_id: &req.client_id,
            connection: &req.connection,
            username: &req.username,
            password: &req.password,
            address: &address,
            grant: None,
        };
        login.validate()?;
        // Without a key, the application itself, authenticated by its credentials next.
        if p != Principal::Anonymous {
            p.require_tenant(&req.tenant)?;
        }
        // A login refused before its password is looked at is audited too: a wrong client
        // secret (never the secret itself), or an unknown API (no attempt counted).
        let checked = match self.verify_client(&req.tenant, &req.client_id, &req.client_secret).await {
            Ok(()) => self.api_scope(&req.tenant, &req.audience, &req.scope).await,
            Err(s) => Err(s),
        };
        let scope = match checked {
            Ok(scope) => scope,
            Err(s) => {
                self.audit_refused_login(&login, &s).await;
                return Err(s);
            }
        };
        let user = self.password_login(&login).await?;
        let issued = self
            .issue_tokens(&IssueTokens {
                tenant: &req.tenant,
                client_id: &req.client_id,
                user: &user,
                scope: &scope,
                audience: &req.audience,
                nonce: None,
            })
            .await?;
        Ok(Response::new(login_to_pb(issued, &user)))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let p = principal(&req)?;
        let ip = crate::audit::caller_ip(&req);
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "user_id", &req.user_id);
        required(&mut v, "new_password", &req.new_password);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let facts = crate::audit::Facts {
            tenant: &req.tenant,
            user_id: &req.user_id,
            connection: &req.connection,
            address: &ip,
            ..Default::default()
        };
        let kind = crate::audit::Type::PasswordChanged;
        // Written with the new password (or the lifted blocks), in its transaction.
        let changed = crate::audit::event(kind, &facts, None, crate::audit::caller(&p), &[]);
        let result =
            AuthnApi::change_password(self, &req.tenant, &req.user_id, &req.connection, &req.new_password, changed)
                .await;
        if result.is_err() {
            self.audit(kind, &facts, &result, crate::audit::caller(&p), &[]).await;
        }
        Ok(Response::new(pb::ChangePasswordResponse { user: Some(user_to_pb(&result?)) }))
    }

    async fn test_connection(
        &self,
        req: Request<pb::TestConnectionRequest>,
    ) -> Result<Response<pb::TestConnectionResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "connection", &req.connection);
        v.check("connection", postern_common::validate::display_text(&req.connection, 0, 128));
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let (strategy, report) = AuthnApi::test_connection(self, &req.tenant, &req.connection).await?;
        Ok(Response::new(pb::TestConnectionResponse {
            ok: report.ok,
            steps: report
                .steps
                .into_iter()
                .map(|s| pb::TestConnectionStep {
                    name: s.name,
                    ok: s.ok,
                    detail: s.detail,
                    elapsed_ms: u32::try_from(s.elapsed.as_millis()).unwrap_or(u32::MAX),
                })
                .collect(),
            strategy,
        }))
    }

    async fn start_passwordless(
        &self,
        req: Request<pb::StartPasswordlessRequest>,
    ) -> Result<Response<pb::StartPasswordlessResponse>, Status> {
        let p = principal(&req)?;
        let address = reported_address(&req, &p, &req.get_ref().client_secret, &req.get_ref().ip)?;
        let req = req.into_inner();
        let send = match pb::PasswordlessSend::try_from(req.send) {
            Ok(pb::PasswordlessSend::Unspecified) => SendKind::Default,
            Ok(pb::PasswordlessSend::Code) => SendKind::Code,
            Ok(pb::PasswordlessSend::Link) => SendKind::Link,
            Err(_) => {
                return Err(postern_common::error::invalid_field(
                    "send",
                    format!("{} is not allowed; use PASSWORDLESS_SEND_CODE or PASSWORDLESS_SEND_LINK", req.send),
                ));
            }
        };
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "client_id", &req.client_id);
        required(&mut v, "connection", &req.connection);
        v.into_result()?;
        // Without a key, the application itself, authenticated by its credentials next.
        if p != Principal::Anonymous {
            p.require_tenant(&req.tenant)?;
        }
        self.verify_client(&req.tenant, &req.client_id, &req.client_secret).await?;
        let start = CodeStart {
            tenant: &req.tenant,
            client_id: &req.client_id,
            connection: &req.connection,
            recipient: RecipientInput::Split { email: &req.email, phone_number: &req.phone_number },
            send,
            links: if req.auth_params.is_some() { Links::Described } else { Links::None },
            address: &address,
        };
        let plan = self.plan_start(&start).await?;
        let expires_in = if plan.link {
            // The authorization request the link completes, validated as /authorize does.
            let tx = self
                .oauth()
                .link_transaction(
                    &req.tenant,
                    &req.client_id,
                    &req.connection,
                    plan.recipient(),
                    req.auth_params.as_ref(),
                    plan.lifetime(),
                )
                .await?;
            let target = LinkTarget { transaction_hash: &tx.transaction_hash, csrf_hash: &tx.csrf_hash };
            self.send_planned(&start, plan, Some(target)).await?
        } else {
            self.send_planned(&start, plan, None).await?
        };
        Ok(Response::new(pb::StartPasswordlessResponse { expires_in: i64::from(expires_in) }))
    }

    async fn verify_passwordless(
        &self,
        req: Request<pb::VerifyPasswordlessRequest>,
    ) -> Result<Response<pb::VerifyPasswordlessResponse>, Status> {
        let p = principal(&req)?;
        let address = reported_address(&req, &p, &req.get_ref().client_secret, &req.get_ref().ip)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", &req.tenant);
        required(&mut v, "client_id", &req.client_id);
        required(&mut v, "connection", &req.connection);
        v.check("scope", postern_common::validate::display_text(&req.scope, 0, MAX_SCOPE_CHARS));
        v.check("audience", postern_common::validate::display_text(&req.audience, 0, MAX_AUDIENCE_CHARS));
        v.into_result()?;
        if p != Principal::Anonymous {
            p.require_tenant(&req.tenant)?;
        }
        self.verify_client(&req.tenant, &req.client_id, &req.client_secret).await?;
        // An unknown API is refused before the code is tried (no attempt used up).
        let scope = self.api_scope(&req.tenant, &req.audience, &req.scope).await?;
        let user = self
            .code_login(&CodeLogin {
                tenant: &req.tenant,
                client_id: &req.client_id,
                connection: &req.connection,
                recipient: RecipientInput::Split { email: &req.email, phone_number: &req.phone_number },
                code: &req.code,
                address: &address,
            })
            .await?;
        let issued = self
            .issue_tokens(&IssueTokens {
                tenant: &req.tenant,
                client_id: &req.client_id,
                user: &user,
                scope: &scope,
                audience: &req.audience,
                nonce: None,
            })
            .await?;
        let l = login_to_pb(issued, &user);
        Ok(Response::new(pb::VerifyPasswordlessResponse {
            id_token: l.id_token,
            access_token: l.access_token,
            token_type: l.token_type,
            expires_in: l.expires_in,
            user: l.user,
            scope: l.scope,
        }))
    }
}

/// The longest `scope` a login may ask for.
const MAX_SCOPE_CHARS: usize = 1024;
/// The longest `audience` (an API identifier, usually a URL).
const MAX_AUDIENCE_CHARS: usize = 512;
