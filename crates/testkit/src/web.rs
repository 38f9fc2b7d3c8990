//! A browser without a browser: an HTTP/1.1 user agent with a cookie jar that follows no
//! redirect by itself, and the forms of an HTML page, so that tests (and the benchmark) can
//! walk the hosted login page the way a browser without JavaScript does, and look at every
//! step (the `Location` of each redirect, each `Set-Cookie`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer of [`Agent::send`].
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every header named `name` (lower case).
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    /// The `Location` of a redirect, if any.
    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }

    /// The page's forms.
    pub fn forms(&self) -> Vec<Form> {
        forms(&self.body)
    }
}

/// A user agent on plain-`http` loopback addresses, with a cookie jar keyed by host and
/// cookie name (paths and expiry ignored: tests keep agents short-lived).
#[derive(Clone, Debug, Default)]
pub struct Agent {
    /// The cookies it holds: (host:port, name) → value.
    pub cookies: BTreeMap<(String, String), String>,
}

impl Agent {
    /// A new agent with no cookies.
    pub fn new() -> Self {
        Self::default()
    }

    /// `GET url`.
    pub async fn get(&mut self, url: &str) -> anyhow::Result<Answer> {
        self.send("GET", url, &[], None).await
    }

    /// `POST url` with `fields` as `application/x-www-form-urlencoded`.
    pub async fn post_form(&mut self, url: &str, fields: &[(String, String)]) -> anyhow::Result<Answer> {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        self.send("POST", url, &[("content-type", "application/x-www-form-urlencoded")], Some(&body)).await
    }

    /// Submits `form` of a page at `page_url` (its action resolved against the page).
    pub async fn submit(&mut self, page_url: &str, form: &Form) -> anyhow::Result<Answer> {
        let action = url::Url::parse(page_url)?.join(&form.action)?;
        if form.method.eq_ignore_ascii_case("post") {
            self.post_form(action.as_str(), &form.fields()).await
        } else {
            let mut action = action;
            action.query_pairs_mut().extend_pairs(form.fields());
            self.get(action.as_str()).await
        }
    }

    /// Sends a request with the agent's cookies for the host, and keeps the cookies the
    /// answer sets (a cookie set with `Max-Age=0` or an expiry in the past is removed).
    pub async fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let url = url::Url::parse(url)?;
        anyhow::ensure!(url.scheme() == "http", "the agent speaks plain http only: {url}");
        let host = url.host_str().ok_or_else(|| anyhow::anyhow!("no host in {url}"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let authority = format!("{host}:{port}");
        let addr: SocketAddr = tokio::net::lookup_host(&authority)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{authority} does not resolve"))?;
        let mut target = url.path().to_owned();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
        if let Some(cookie) = self.cookie_header(&authority) {
            request.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        if method != "GET" {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let answer = parse(&raw)?;
        for set in answer.headers("set-cookie") {
            self.keep(&authority, set);
        }
        Ok(answer)
    }

    /// The `Cookie` header of a request to `authority` (`host:port`): every cookie held for
    /// it; `None` when there is none.
    pub fn cookie_header(&self, authority: &str) -> Option<String> {
        let cookies: Vec<String> = self
            .cookies
            .iter()
            .filter(|((h, _), _)| *h == authority)
            .map(|((_, name), value)| format!("{name}={value}"))
            .collect();
        (!cookies.is_empty()).then(|| cookies.join("; "))
    }

    /// Keeps the cookie of a `Set-Cookie` header an answer from `authority` carried (one set
    /// with `Max-Age=0` or an expiry in the past is removed).
    pub fn keep(&mut self, authority: &str, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else { return };
        let gone = parts.any(|a| {
            let a = a.trim().to_ascii_lowercase();
            a == "max-age=0" || a.starts_with("expires=thu, 01 jan 1970")
        });
        let key = (authority.to_owned(), name.trim().to_owned());
        if gone {
            self.cookies.remove(&key);
        } else {
            self.cookies.insert(key, value.trim().to_owned());
        }
    }

    /// The value of the cookie `name` held for `url`'s host, if any.
    pub fn cookie(&self, url: &str, name: &str) -> Option<&str> {
        let url = url::Url::parse(url).ok()?;
        let authority = format!("{}:{}", url.host_str()?, url.port_or_known_default()?);
        self.cookies.get(&(authority, name.to_owned())).map(String::as_str)
    }
}

fn parse(raw: &[u8]) -> anyhow::Result<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no end of headers"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap_or_default().split(' ').nth(1).unwrap_or_default().parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { crate::dechunk(body)? } else { body.to_owned() };
    Ok(Answer { status, headers, body })
}

/// A form of an HTML page: where it goes and its named controls.
#[derive(Clone, Debug, Default)]
pub struct Form {
    /// Its `action` (as written; empty means the page itself).
    pub action: String,
    /// Its `method` (`get` when absent).
    pub method: String,
    /// Its `id`, if any.
    pub id: String,
    /// Its controls that have a name: inputs (hidden ones included) and buttons.
    pub controls: Vec<Control>,
}

/// A named control of a form.
#[derive(Clone, Debug, Default)]
pub struct Control {
    /// `input`, `button`, `select` or `textarea`.
    pub tag: String,
    /// Its `type` (`text` for an input without one, `submit` for a button without one).
    pub kind: String,
    /// Its `name`.
    pub name: String,
    /// Its `value` (entities decoded).
    pub value: String,
}

impl Form {
    /// Whether the form has a control named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.controls.iter().any(|c| c.name == name)
    }

    /// The value of the control named `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.controls.iter().find(|c| c.name == name).map(|c| c.value.as_str())
    }

    /// Sets the value of every control named `name` (adding a text input if none is).
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        let mut found = false;
        for c in self.controls.iter_mut().filter(|c| c.name == name) {
            c.value = value.to_owned();
            found = true;
        }
        if !found {
            self.controls.push(Control {
                tag: "input".into(),
                kind: "text".into(),
                name: name.into(),
                value: value.into(),
            });
        }
        self
    }

    /// Removes the controls named `name`.
    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.controls.retain(|c| c.name != name);
        self
    }

    /// The name of the first control of type `kind` (`password`, `email`, …).
    pub fn name_of(&self, kind: &str) -> Option<&str> {
        self.controls.iter().find(|c| c.kind == kind).map(|c| c.name.as_str())
    }

    /// What submitting the form sends: every control but the buttons (a browser sends only
    /// the button clicked; set it explicitly when the server looks at it).
    pub fn fields(&self) -> Vec<(String, String)> {
        self.controls
            .iter()
            .filter(|c| c.tag != "button" && !matches!(c.kind.as_str(), "submit" | "button" | "reset"))
            .map(|c| (c.name.clone(), c.value.clone()))
            .collect()
    }
}

/// The forms of an HTML page (what a browser would find; scripts ignored).
pub fn forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<form").map(|i| at + i) {
        let end = lower[start..].find("</form").map_or(html.len(), |i| start + i);
        let Some(head_end) = lower[start..end].find('>').map(|i| start + i) else { break };
        let attrs = attributes(&html[start + 5..head_end]);
        let mut form = Form {
            action: attrs.get("action").cloned().unwrap_or_default(),
            method: attrs.get("method").cloned().unwrap_or_else(|| "get".into()),
            id: attrs.get("id").cloned().unwrap_or_default(),
            controls: Vec::new(),
        };
        let inner = &html[head_end + 1..end];
        let inner_lower = &lower[head_end + 1..end];
        let mut pos = 0;
        while let Some(i) = inner_lower[pos..].find('<').map(|i| pos + i) {
            let tag: String =
                inner_lower[i + 1..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect::<String>();
            let close = inner_lower[i..].find('>').map_or(inner.len(), |j| i + j);
            if ["input", "button", "select", "textarea"].contains(&tag.as_str()) {
                let a = attributes(&inner[i + 1 + tag.len()..close]);
                if let Some(name) = a.get("name").filter(|n| !n.is_empty()) {
                    let kind = a
                        .get("type")
                        .map(|t| t.to_ascii_lowercase())
                        .unwrap_or_else(|| if tag == "button" { "submit".into() } else { "text".into() });
                    let value = if tag == "textarea" {
                        let text_end = inner_lower[close..].find("</textarea").map_or(inner.len(), |j| close + j);
                        decode(inner.get(close + 1..text_end).unwrap_or_default())
                    } else {
                        a.get("value").cloned().unwrap_or_default()
                    };
                    let checkable = matches!(kind.as_str(), "checkbox" | "radio");
                    if !checkable || a.contains_key("checked") {
                        form.controls.push(Control { tag: tag.clone(), kind, name: name.clone(), value });
                    }
                }
            }
            pos = close.min(inner.len()).max(i + 1);
        }
        out.push(form);
        at = end.max(start + 1);
    }
    out
}

/// The attributes of a tag's inside (`name="x" value='y' hidden`), values decoded.
/// The attributes (their values decoded) of the element of `html` whose `id` is `id`.
pub fn element_by_id(html: &str, id: &str) -> Option<BTreeMap<String, String>> {
    let mut at = 0;
    while let Some(start) = html[at..].find('<').map(|i| at + i) {
        let end = html[start..].find('>').map(|i| start + i)?;
        let tag = &html[start + 1..end];
        let name_end = tag.find(|c: char| c.is_ascii_whitespace()).unwrap_or(tag.len());
        let attrs = attributes(&tag[name_end..]);
        if attrs.get("id").map(String::as_str) == Some(id) {
            return Some(attrs);
        }
        at = end;
    }
    None
}

fn attributes(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        if start == i {
            break;
        }
        let name = s[start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let quote = b[i];
                let v_start = i + 1;
                i = v_start;
                while i < b.len() && b[i] != quote {
                    i += 1;
                }
                value = decode(&s[v_start..i.min(b.len())]);
                i += 1;
            } else {
                let v_start = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = decode(&s[v_start..i]);
            }
        }
        out.entry(name).or_insert(value);
    }
    out
}

/// Decodes the character references a server's escaping writes.
pub fn decode(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_forms_and_their_controls() {
        let html = r#"<html><form id=login method="post" action="/t/login?x=1&amp;y=2">
            <input type="hidden" name="csrf" value="a&quot;b">
            <label>Email <input name='username' type=email autofocus></label>
            <input type="password" name="password">
            <input type="checkbox" name="remember">
            <input type="checkbox" name="terms" checked value="yes">
            <button type="submit" name="action" value="login">Log in</button>
          </form><FORM action=/other><input name=q value=z></FORM>"#;
        let f = forms(html);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].id, "login");
        assert_eq!(f[0].method, "post");
        assert_eq!(f[0].action, "/t/login?x=1&y=2");
        assert_eq!(f[0].value("csrf"), Some("a\"b"));
        assert_eq!(f[0].name_of("email"), Some("username"));
        assert_eq!(f[0].name_of("password"), Some("password"));
        assert!(!f[0].has("remember"), "an unchecked box is not sent");
        assert_eq!(f[0].value("terms"), Some("yes"));
        let names: Vec<String> = f[0].fields().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["csrf", "username", "password", "terms"]);
        assert_eq!(f[1].method, "get");
        assert_eq!(f[1].value("q"), Some("z"));
    }

    #[test]
    fn decodes_character_references() {
        assert_eq!(decode("a &amp; b &lt;c&gt; &#39;d&#x27; &bogus; &"), "a & b <c> 'd' &bogus; &");
    }
}
