//! The pages: templates rendered by minijinja with HTML escaping on (every `.html`
//! template), and the headers every page carries — a `Content-Security-Policy` allowing only
//! this response's own style and script (by nonce) and no framing, `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer`, `Cache-Control: no-store`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("form_post.html", include_str!("templates/form_post.html")),
    ("logged_out.html", include_str!("templates/logged_out.html")),
    ("passwordless.html", include_str!("templates/passwordless.html")),
    ("web_message.html", include_str!("templates/web_message.html")),
];

/// The compiled templates.
pub(crate) struct Pages(Environment<'static>);

impl Pages {
    /// Compiles the templates. They are part of the binary: a template that does not
    /// compile fails the crate's tests, never a user's request.
    pub(crate) fn new() -> Self {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "a page template does not compile");
            }
        }
        Self(env)
    }

    /// Renders `template` with `context` (plus a fresh CSP nonce) as a page answered with
    /// `status` and the security headers.
    pub(crate) fn render<C: Serialize>(&self, status: StatusCode, template: &str, context: C) -> Response {
        // A fresh nonce per page: only this page's own style and script run.
        self.render_framed(status, template, context, None)
    }

    /// Renders `template` as [`Pages::render`] does, a page that `frame_ancestor` (an
    /// origin) may frame when given: its CSP's `frame-ancestors` names that origin alone,
    /// and it has no `X-Frame-Options` (whose `DENY` would win in some browsers). Only the
    /// answer of `response_mode=web_message` is framed: silent authentication's iframe.
    pub(crate) fn render_framed<C: Serialize>(
        &self,
        status: StatusCode,
        template: &str,
        context: C,
        frame_ancestor: Option<&str>,
    ) -> Response {
        // A fresh nonce per page: only this page's own style and script run.
        let nonce = postern_common::ids::random_alphanumeric(22);
        match self.render_string(template, &nonce, context) {
            Ok(body) => page(status, body, &nonce, frame_ancestor),
            Err(e) => {
                tracing::error!(template, error = %e, "cannot render a page");
                page(StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned(), &nonce, None)
            }
        }
    }

    fn render_string<C: Serialize>(&self, template: &str, nonce: &str, context: C) -> Result<String, minijinja::Error> {
        let ctx = minijinja::context! { nonce => nonce, ..minijinja::Value::from_serialize(&context) };
        self.0.get_template(template).and_then(|t| t.render(ctx))
    }

    /// An error page: `title`, then `message`.
    pub(crate) fn error(&self, status: StatusCode, title: &str, message: &str) -> Response {
        self.render(status, "error.html", minijinja::context! { title => title, message => message })
    }
}

/// A page with the security headers; framed by `frame_ancestor` alone when given.
fn page(status: StatusCode, body: String, nonce: &str, frame_ancestor: Option<&str>) -> Response {
    let framed = frame_ancestor.filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_graphic() && b != b';'));
    let ancestors = framed.unwrap_or("'none'");
    let csp = format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; img-src https: data:; \
         frame-ancestors {ancestors}; base-uri 'none'"
    );
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    security_headers(headers);
    if framed.is_some() {
        headers.remove(header::X_FRAME_OPTIONS);
    }
    response
}

/// The headers of every answer of the browser routes, pages and redirects alike.
pub(crate) fn security_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_escapes() {
        let pages = Pages::new();
        for (name, _) in TEMPLATES {
            assert!(pages.0.get_template(name).is_ok(), "{name} does not compile");
        }
        let body = pages
            .render_string(
                "error.html",
                "n0nce",
                minijinja::context! { title => "Oops", message => "<script>x</script>" },
            )
            .expect("renders");
        assert!(body.contains("&lt;script&gt;x"), "{body}");
        assert!(!body.contains("<script>x"), "{body}");
        assert!(body.contains("nonce=\"n0nce\""), "{body}");
        let posted = pages
            .render_string(
                "form_post.html",
                "n",
                minijinja::context! { action => "https://app/cb", parameters => std::collections::BTreeMap::from([("code", "c\"1")]) },
            )
            .expect("renders");
        assert!(posted.contains("name=\"code\" value=\"c&quot;1\""), "{posted}");
        let response = pages.error(StatusCode::BAD_REQUEST, "Oops", "<script>alert(1)</script>");
        let csp = response.headers().get(header::CONTENT_SECURITY_POLICY).expect("CSP").to_str().expect("ascii");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(response.headers().get(header::X_FRAME_OPTIONS).expect("XFO"), "DENY");
    }
}
