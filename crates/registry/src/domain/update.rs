//! UpdateConnection's rules: which `update_mask` paths may change, how the named fields of a
//! patch are laid over the stored connection, and how secrets merge (a secret left empty
//! keeps the stored value; one named explicitly in the mask and left empty is removed).
//!
//! The update is applied on the contract's types and the result goes through the same
//! validation as a creation, so that no combination of masked fields can store what a
//! creation would refuse.

use postern_common::error::Violations;
use postern_common::validate::truncate;
use postern_proto::connections::v1 as pb;

use super::catalogue::OptionsFamily;
use super::options::{Options, empty_proto};
use super::secret::Secrets;
use super::{CONNECTION, Connection, ConnectionSpec, parse_connection};

/// The top-level paths an update mask may name. `options.<family>` and
/// `options.<family>.<field>` are allowed too, for the connection's own family.
pub const UPDATABLE_PATHS: &[&str] =
    &["display_name", "domain_aliases", "show_as_button", "metadata", "user_profile_sync", "options"];

/// A validated update: the connection's new spec and its secrets after the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The new spec (same name and strategy as before).
    pub spec: ConnectionSpec,
    /// Every secret of the connection after the update.
    pub secrets: Secrets,
}

/// Applies the fields of `patch` named by `paths` (the `update_mask`) to `current`, whose
/// secrets are `stored`, and validates the result as a whole. Violations name the request's
/// fields (`update_mask.paths[1]`, `connection.options.ldap.url`).
///
/// A named field absent from the patch takes its zero value, which for options means the
/// default (`options` or `options.<family>` without options in the patch resets them all).
/// Secrets left empty keep their stored values unless the mask names them explicitly
/// (`options.email.smtp_password`, `options.database.custom_database.token`), which removes
/// them.
pub fn apply_update(
    current: &Connection,
    stored: &Secrets,
    patch: pb::Connection,
    paths: &[String],
) -> Result<Update, Violations> {
    let mut v = Violations::new();
    if paths.is_empty() {
        v.add(
            "update_mask",
            format!(
                "is required: name the fields to change, among {} and options.<family>.<field>",
                UPDATABLE_PATHS.join(", ")
            ),
        );
        return Err(v);
    }
    let family = current.spec.strategy.family();
    let mut merged = current.to_proto(&Secrets::new());
    // Secrets named explicitly: left empty, they are removed rather than kept.
    let mut cleared: Vec<&'static str> = Vec::new();

    for (i, path) in paths.iter().enumerate() {
        let at = format!("update_mask.paths[{i}]");
        match path.as_str() {
            "display_name" => merged.display_name.clone_from(&patch.display_name),
            "domain_aliases" => merged.domain_aliases.clone_from(&patch.domain_aliases),
            "show_as_button" => merged.show_as_button = patch.show_as_button,
            "metadata" => merged.metadata.clone_from(&patch.metadata),
            "user_profile_sync" => merged.user_profile_sync = patch.user_profile_sync,
            "options" => merged.options.clone_from(&patch.options),
            "name" => v.add(at, "`name` cannot change: create a new connection and delete this one"),
            "strategy" => {
                v.add(at, "`strategy` cannot change: it fixes the category and the options; create a new connection")
            }
            "id" | "category" | "create_time" | "update_time" => v.add(at, format!("`{path}` is output only")),
            other => match other.strip_prefix("options.") {
                Some(rest) => {
                    let (fam, field) = match rest.split_once('.') {
                        Some((f, x)) => (f, Some(x)),
                        None => (rest, None),
                    };
                    match OptionsFamily::from_field_name(fam) {
                        None => v.add(
                            at,
                            format!(
                                "{:?} is not an options family; use one of: {}",
                                truncate(fam, 40),
                                OptionsFamily::ALL.map(OptionsFamily::field_name).join(", ")
                            ),
                        ),
                        Some(f) if f != family => v.add(
                            at,
                            format!(
                                "strategy {:?} takes `{}` options, not `{fam}`",
                                current.spec.strategy.as_str(),
                                family.field_name()
                            ),
                        ),
                        Some(_) => {
                            let src = match &patch.options {
                                Some(o) if OptionsFamily::of_proto(o) == family => o.clone(),
                                None => empty_proto(family),
                                Some(o) => {
                                    v.add(
                                        format!("{CONNECTION}.options"),
                                        format!(
                                            "strategy {:?} takes `{}` options, not `{}`",
                                            current.spec.strategy.as_str(),
                                            family.field_name(),
                                            OptionsFamily::of_proto(o).field_name()
                                        ),
                                    );
                                    continue;
                                }
                            };
                            match field {
                                None => merged.options = Some(src),
                                Some(field) => {
                                    let dst = merged.options.get_or_insert_with(|| empty_proto(family));
                                    match copy_option_field(dst, &src, field) {
                                        Ok(()) => {
                                            if let Some(name) =
                                                Options::secret_names(family).iter().find(|n| **n == field)
                                            {
                                                cleared.push(name);
                                            }
                                        }
                                        Err(e) => v.add(at, e),
                                    }
                                }
                            }
                        }
                    }
                }
                None => v.add(
                    at,
                    format!(
                        "{:?} cannot be updated; use {} or options.<family>.<field>",
                        truncate(other, 80),
                        UPDATABLE_PATHS.join(", ")
                    ),
                ),
            },
        }
    }
    if !v.is_empty() {
        return Err(v);
    }

    let Some((spec, given)) = parse_connection(merged, &mut v) else {
        return Err(v);
    };
    let mut secrets = stored.merged(&given);
    for name in cleared {
        if !given.is_set(name) {
            secrets.remove(name);
        }
    }
    spec.options.check_required_secrets(&secrets, &format!("{CONNECTION}.options"), &mut v);
    if v.is_empty() { Ok(Update { spec, secrets }) } else { Err(v) }
}

/// Copies one field of an options message from `src` to `dst` (both of the same family).
pub(super) fn copy_option_field(
    dst: &mut pb::connection::Options,
    src: &pb::connection::Options,
    field: &str,
) -> Result<(), String> {
    use pb::connection::Options as O;
    // The one nested secret: its own path, so that it can be replaced or removed alone.
    if field == "custom_database.token" {
        return match (dst, src) {
            (O::Database(d), O::Database(s)) => {
                let token = s.custom_database.as_ref().map(|c| c.token.clone()).unwrap_or_default();
                d.custom_database.get_or_insert_with(Default::default).token = token;
                Ok(())
            }
            _ => Err("`custom_database.token` is a field of `database` options only".into()),
        };
    }
    macro_rules! fields {
        ($d:ident, $s:ident, $family:literal, [$($f:ident),* $(,)?], [$($out:ident),* $(,)?]) => {
            match field {
                $(stringify!($f) => {
                    $d.$f.clone_from(&$s.$f);
                    Ok(())
                })*
                $(stringify!($out) => Err(format!("`{field}` is output only")),)*
                _ => Err(format!(
                    "{:?} is not a field of `{}` options; use one of: {}",
                    truncate(field, 60),
                    $family,
                    [$(stringify!($f)),*].join(", ")
                )),
            }
        };
    }
    match (dst, src) {
        (O::Database(d), O::Database(s)) => fields!(
            d,
            s,
            "database",
            [
                requires_username,
                username_min_length,
                username_max_length,
                password_policy,
                password_min_length,
                password_history_size,
                password_no_personal_info,
                password_dictionary,
                brute_force_protection,
                disable_signup,
                custom_database,
            ],
            []
        ),
        (O::Oauth2(d), O::Oauth2(s)) => fields!(
            d,
            s,
            "oauth2",
            [
                client_id,
                client_secret,
                scopes,
                authorization_endpoint,
                token_endpoint,
                userinfo_endpoint,
                profile_fields,
                emails_endpoint,
                profile_mapping,
                issuer,
                discovery_url,
                jwks_uri,
                store_tokens,
                apple_team_id,
                apple_key_id,
                upstream_params,
            ],
            [client_secret_set]
        ),
        (O::Oidc(d), O::Oidc(s)) => fields!(
            d,
            s,
            "oidc",
            [
                issuer,
                discovery_url,
                client_id,
                client_secret,
                scopes,
                channel,
                authorization_endpoint,
                token_endpoint,
                userinfo_endpoint,
                jwks_uri,
                store_tokens,
                fetch_userinfo,
                client_auth,
                client_assertion_key,
                client_assertion_key_id,
                upstream_params,
            ],
            [client_secret_set, client_assertion_key_set]
        ),
        (O::GoogleApps(d), O::GoogleApps(s)) => {
            fields!(
                d,
                s,
                "google_apps",
                [
                    domain,
                    client_id,
                    client_secret,
                    allowed_domains,
                    issuer,
                    discovery_url,
                    store_tokens,
                    upstream_params
                ],
                [client_secret_set]
            )
        }
        (O::Ldap(d), O::Ldap(s)) => fields!(
            d,
            s,
            "ldap",
            [
                url,
                start_tls,
                bind_dn,
                bind_password,
                base_dn,
                user_filter,
                attributes,
                timeout_seconds,
                ca_certificates,
                allow_plaintext,
                groups,
            ],
            [bind_password_set]
        ),
        (O::Saml(d), O::Saml(s)) => fields!(
            d,
            s,
            "saml",
            [
                sign_in_url,
                sign_out_url,
                signing_certificates,
                entity_id,
                audience,
                sign_request,
                signature_algorithm,
                request_signing_key,
                request_signing_certificate,
                binding,
                attributes,
                decryption_key,
                decryption_certificate,
                require_encrypted_assertions,
                allow_sha1,
                idp_initiated,
                metadata_url,
            ],
            [request_signing_key_set, decryption_key_set]
        ),
        (O::AzureAd(d), O::AzureAd(s)) => {
            fields!(
                d,
                s,
                "azure_ad",
                [
                    domain,
                    tenant_id,
                    client_id,
                    client_secret,
                    discovery_url,
                    allowed_tenant_ids,
                    store_tokens,
                    upstream_params,
                ],
                [client_secret_set]
            )
        }
        (O::Email(d), O::Email(s)) => fields!(
            d,
            s,
            "email",
            [
                from,
                subject,
                code_template,
                link_template,
                code_length,
                code_lifetime_seconds,
                max_attempts,
                smtp_host,
                smtp_port,
                smtp_username,
                smtp_password,
                smtp_tls,
                magic_link,
                disable_signup,
                magic_link_same_browser,
                smtp_ca_certificate,
            ],
            [smtp_password_set]
        ),
        (O::Sms(d), O::Sms(s)) => fields!(
            d,
            s,
            "sms",
            [
                from,
                template,
                provider_url,
                account,
                token,
                code_length,
                code_lifetime_seconds,
                max_attempts,
                provider,
                disable_signup
            ],
            [token_set]
        ),
        // Both sides are of the connection's family by construction.
        _ => Err("the options family does not match the connection's".into()),
    }
}
