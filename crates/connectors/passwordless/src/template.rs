//! The templates of passwordless messages, rendered with minijinja. A template sees `code`,
//! `link` (empty for a code message), `application` (the application's name), `tenant` (the
//! tenant's display name) and `minutes` (how long the code stays valid). The plain text of a
//! message is rendered as written; the HTML part of an email is rendered with HTML escaping,
//! so that an application or tenant name can never inject markup, and the link is made
//! clickable.

use minijinja::{Environment, UndefinedBehavior, Value, context};
use postern_connector::{CodeMessage, CodeSecret};

/// What a message's templates may show.
#[derive(Debug, Clone)]
pub struct Vars {
    code: String,
    link: String,
    application: String,
    tenant: String,
    minutes: u32,
}

impl Vars {
    /// The variables of `message`.
    pub fn of(message: &CodeMessage<'_>) -> Self {
        let (code, link) = match message.secret {
            CodeSecret::Code(c) => (c, ""),
            CodeSecret::Link { link, code } => (code, link),
        };
        Self {
            code: code.to_owned(),
            link: link.to_owned(),
            application: message.application.to_owned(),
            tenant: message.tenant_name.to_owned(),
            minutes: message.lifetime_seconds.div_ceil(60),
        }
    }
}

/// A template that does not render: its message says where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A typo in a template is an error, not an empty string in a user's mailbox.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

fn render(name: &str, source: &str, ctx: Value) -> Result<String, TemplateError> {
    let mut env = environment();
    env.add_template(name, source).map_err(|e| TemplateError(e.to_string()))?;
    let t = env.get_template(name).map_err(|e| TemplateError(e.to_string()))?;
    t.render(ctx).map_err(|e| TemplateError(e.to_string()))
}

fn plain_context(v: &Vars) -> Value {
    context! { code => v.code, link => v.link, application => v.application, tenant => v.tenant, minutes => v.minutes }
}

/// Renders `source` as plain text (an SMS, an email's text part).
pub fn text(source: &str, v: &Vars) -> Result<String, TemplateError> {
    render("message.txt", source, plain_context(v))
}

/// Renders `source` as a one-line header (an email's subject): line breaks become spaces.
pub fn subject(source: &str, v: &Vars) -> Result<String, TemplateError> {
    let s = render("subject.txt", source, plain_context(v))?;
    Ok(s.split(['\r', '\n']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
}

/// Renders `source` as the HTML part of an email: every value escaped (autoescape by the
/// template's `.html` name), the link an anchor, blank lines separating paragraphs.
pub fn html(source: &str, v: &Vars) -> Result<String, TemplateError> {
    let link = if v.link.is_empty() {
        Value::from("")
    } else {
        let escaped = escape(&v.link);
        Value::from_safe_string(format!("<a href=\"{escaped}\">{escaped}</a>"))
    };
    let ctx = context! { code => v.code, link => link, application => v.application, tenant => v.tenant, minutes => v.minutes };
    let body = render("message.html", source, ctx)?;
    let paragraphs: Vec<String> = body
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| format!("<p>{}</p>", p.replace('\n', "<br>\n")))
        .collect();
    Ok(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"></head><body>\n{}\n</body></html>\n",
        paragraphs.join("\n")
    ))
}

/// HTML escaping of a value placed by this module (not by a template).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(link: &str) -> Vars {
        Vars {
            code: "123456".into(),
            link: link.into(),
            application: "<script>alert(1)</script> & Co".into(),
            tenant: "Fabrikam".into(),
            minutes: 3,
        }
    }

    #[test]
    fn text_shows_values_as_written() {
        let out = text("{{ application }}: {{code}} ({{ minutes }} min)", &vars("")).unwrap();
        assert_eq!(out, "<script>alert(1)</script> & Co: 123456 (3 min)");
    }

    #[test]
    fn html_escapes_every_value_and_links_the_link() {
        let out =
            html("Log in to {{ application }}:\n\n{{ link }}", &vars("https://id.example/x?a=1&b=\"2\"")).unwrap();
        assert!(out.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; Co"), "{out}");
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("<a href=\"https://id.example/x?a=1&amp;b=&quot;2&quot;\">"), "{out}");
        assert_eq!(out.matches("<p>").count(), 2, "{out}");
    }

    #[test]
    fn subject_is_one_line() {
        assert_eq!(subject("Code for\r\n{{ tenant }}\n", &vars("")).unwrap(), "Code for Fabrikam");
    }

    #[test]
    fn unknown_variables_and_bad_syntax_are_errors() {
        assert!(text("{{ cod }}", &vars("")).is_err());
        assert!(text("{{ code ", &vars("")).is_err());
    }
}
