//! Validation rules shared by several services: slugs, display names, URLs.
//! Each returns `Err(description)` saying what is allowed, ready for [`crate::error::Violations`].

/// A tenant name: 3 to 63 lowercase ASCII letters, digits and hyphens, starting and ending
/// with a letter or digit.
pub fn tenant_name(name: &str) -> Result<(), String> {
    const RULE: &str =
        "must be 3 to 63 lowercase letters, digits and hyphens, starting and ending with a letter or digit";
    if name.is_empty() {
        return Err(format!("is required; it {RULE}"));
    }
    let ok_len = (3..=63).contains(&name.len());
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok_len && ok_chars && edge(name.as_bytes().first()) && edge(name.as_bytes().last()) {
        Ok(())
    } else {
        Err(format!("{:?} is not a valid name: it {RULE}", truncate(name, 80)))
    }
}

/// A human-readable name: `min` to `max` characters (Unicode scalar values), no control
/// characters, not only whitespace when `min > 0`.
pub fn display_text(value: &str, min: usize, max: usize) -> Result<(), String> {
    let len = value.chars().count();
    if len < min || len > max || (min > 0 && value.trim().is_empty()) {
        return Err(format!("must be {min} to {max} characters (got {len})"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// A redirect URL (login callback or logout URL): absolute, `https`, or `http` only for
/// localhost, no fragment, no user info.
pub fn redirect_url(value: &str) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("{:?} is not an absolute URL ({e})", truncate(value, 200)))?;
    let local = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if local => {}
        "http" => {
            return Err(format!(
                "{:?} uses http, which is allowed only for localhost; use https",
                truncate(value, 200)
            ));
        }
        other => {
            return Err(format!(
                "{:?} has scheme {other:?}; only https (and http for localhost) is allowed",
                truncate(value, 200)
            ));
        }
    }
    if url.host().is_none() {
        return Err(format!("{:?} has no host", truncate(value, 200)));
    }
    if url.fragment().is_some() {
        return Err(format!("{:?} must not contain a fragment (#…)", truncate(value, 200)));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{:?} must not contain user information", truncate(value, 200)));
    }
    Ok(())
}

/// An origin a browser application runs at (`https://app.example.com`, for CORS): the rules
/// of [`redirect_url`], written as the origin itself, `scheme://host[:port]`, with no path
/// (not even `/`), query or fragment, the host in lower case and no default port.
pub fn origin(value: &str) -> Result<(), String> {
    redirect_url(value)?;
    let serialized = url::Url::parse(value).map(|u| u.origin().ascii_serialization()).unwrap_or_default();
    if serialized != value {
        return Err(format!(
            "{:?} is not an origin: write scheme://host[:port], no path, query or trailing slash ({serialized:?})",
            truncate(value, 200)
        ));
    }
    Ok(())
}

/// An allowed origin of a client: an origin ([`origin`]), or a subdomain wildcard
/// `https://*.example.com[:port]` (Auth0's): `*` as the whole first label, followed by a
/// domain of at least two labels, over `https` only. It admits an origin one label deeper
/// ([`origin_allowed`]).
pub fn origin_pattern(value: &str) -> Result<(), String> {
    let Some(rest) = value.strip_prefix("https://*.") else {
        if value.contains('*') {
            return Err(format!(
                "{:?} is not an origin pattern: a wildcard is allowed only as the first label of an https origin \
                 (https://*.example.com)",
                truncate(value, 200)
            ));
        }
        return origin(value);
    };
    let host = rest.rsplit_once(':').map_or(rest, |(host, _)| host);
    if rest.contains('*') || !host.contains('.') || host.starts_with('.') || host.ends_with('.') {
        return Err(format!(
            "{:?} is not an origin pattern: after https://*. comes a domain of at least two labels \
             (https://*.example.com), with no other wildcard",
            truncate(value, 200)
        ));
    }
    // The pattern is an origin once its wildcard stands for a label.
    origin(&format!("https://x.{rest}")).map_err(|e| e.replacen("https://x.", "https://*.", 1))
}

/// Whether `origin` (a browser's `Origin`) is admitted by `allowed` (an origin, or a pattern
/// of [`origin_pattern`]): equal, or, for `https://*.example.com`, an https origin on the
/// same port whose host is one label (letters, digits, hyphens) followed by `.example.com`.
pub fn origin_allowed(allowed: &str, origin: &str) -> bool {
    let Some(suffix) = allowed.strip_prefix("https://*") else {
        return allowed == origin;
    };
    let Some(label) = origin.strip_prefix("https://").and_then(|o| o.strip_suffix(suffix)) else {
        return false;
    };
    !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The origin of `url` (`https://app.example.com` of `https://app.example.com/callback`), if
/// it has one.
pub fn origin_of(url: &str) -> Option<String> {
    let origin = url::Url::parse(url).ok()?.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

/// The most characters an image URL (a tenant's logo) may have.
pub const MAX_IMAGE_URL: usize = 2048;

/// The URL of an image a browser loads from a page Postern serves (a tenant's logo): an
/// absolute `https` URL with a host, no user information, no fragment, at most
/// [`MAX_IMAGE_URL`] characters. Plain `http` would be blocked as mixed content on an https
/// page, and leak the page's visits on the network.
pub fn image_url(value: &str) -> Result<(), String> {
    if value.chars().count() > MAX_IMAGE_URL {
        return Err(format!("must be at most {MAX_IMAGE_URL} characters, got {}", value.chars().count()));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    let url = url::Url::parse(value).map_err(|e| format!("{:?} is not an absolute URL ({e})", truncate(value, 200)))?;
    if url.scheme() != "https" {
        return Err(format!("{:?} has scheme {:?}; only https is allowed", truncate(value, 200), url.scheme()));
    }
    if url.host().is_none() {
        return Err(format!("{:?} has no host", truncate(value, 200)));
    }
    if url.fragment().is_some() {
        return Err(format!("{:?} must not contain a fragment (#…)", truncate(value, 200)));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{:?} must not contain user information", truncate(value, 200)));
    }
    Ok(())
}

/// An absolute `http(s)` URL of a server Postern calls (an endpoint, an issuer). `http` is
/// allowed anywhere: deployments often reach internal services that way.
pub fn service_url(value: &str) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("{:?} is not an absolute URL ({e})", truncate(value, 200)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("{:?} must be an absolute http or https URL", truncate(value, 200)));
    }
    Ok(())
}

/// Cuts `s` to at most `max` characters, for echoing bad input in messages.
pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(result: Result<(), String>, ok: bool) {
        assert_eq!(result.is_ok(), ok, "{result:?}");
    }

    #[test]
    fn tenant_names() {
        for good in ["abc", "fabrikam-internal", "a1b", "0-0", &"a".repeat(63)] {
            check(tenant_name(good), true);
        }
        for bad in ["", "ab", "-abc", "abc-", "Abc", "ab_c", "ab c", "abé", &"a".repeat(64)] {
            check(tenant_name(bad), false);
        }
    }

    #[test]
    fn display_texts() {
        check(display_text("Fabrikam-Internal", 1, 128), true);
        check(display_text("Ünïcödé ✓", 1, 128), true);
        check(display_text("", 1, 128), false);
        check(display_text("   ", 1, 128), false);
        check(display_text("a\nb", 1, 128), false);
        check(display_text(&"é".repeat(128), 1, 128), true);
        check(display_text(&"é".repeat(129), 1, 128), false);
    }

    #[test]
    fn origins() {
        for good in [
            "https://app.example.com",
            "https://app.example.com:8443",
            "http://localhost:3000",
            "http://127.0.0.1:5173",
        ] {
            check(origin(good), true);
        }
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/spa",
            "https://App.Example.com",
            "https://app.example.com:443",
            "https://app.example.com?x=1",
            "http://app.example.com",
            "https://user@app.example.com",
            "*",
            "null",
            "",
        ] {
            check(origin(bad), false);
        }
        assert_eq!(origin_of("https://App.example.com:443/cb?x=1").as_deref(), Some("https://app.example.com"));
        assert_eq!(origin_of("http://localhost:3000/callback").as_deref(), Some("http://localhost:3000"));
        assert_eq!(origin_of("not a url"), None);
    }

    #[test]
    fn origin_patterns_and_what_they_admit() {
        for good in ["https://app.example.com", "https://*.preview.example.com", "https://*.example.com:8443"] {
            check(origin_pattern(good), true);
        }
        for bad in [
            "https://*.com",
            "https://*",
            "https://*.",
            "https://*.example.com/",
            "https://*.Example.com",
            "https://*.example.com:443",
            "https://a.*.example.com",
            "https://*.*.example.com",
            "https://*example.com",
            "https://*.example.com.",
            "http://*.example.com",
            "*",
        ] {
            check(origin_pattern(bad), false);
        }
        let pattern = "https://*.preview.example.com";
        for (origin, admitted) in [
            ("https://pr-42.preview.example.com", true),
            ("https://preview.example.com", false),
            ("https://a.b.preview.example.com", false),
            ("https://.preview.example.com", false),
            ("http://pr-42.preview.example.com", false),
            ("https://pr-42.preview.example.com:8443", false),
            ("https://pr-42.preview.example.com.evil.example", false),
            ("https://evilpreview.example.com", false),
            ("https://x_y.preview.example.com", false),
        ] {
            assert_eq!(origin_allowed(pattern, origin), admitted, "{origin}");
        }
        assert!(origin_allowed("https://*.example.com:8443", "https://a.example.com:8443"));
        assert!(!origin_allowed("https://*.example.com:8443", "https://a.example.com"));
        assert!(origin_allowed("https://app.example.com", "https://app.example.com"));
        assert!(!origin_allowed("https://app.example.com", "https://x.app.example.com"));
    }

    #[test]
    fn redirect_urls() {
        for good in [
            "https://app.fabrikam.example/callback",
            "http://localhost:3000/cb",
            "http://127.0.0.1/cb",
            "http://[::1]:8080/",
        ] {
            check(redirect_url(good), true);
        }
        for bad in [
            "/callback",
            "http://app.fabrikam.example/cb",
            "ftp://x.example/",
            "https://x.example/#frag",
            "https://u:p@x.example/",
            "javascript:alert(1)",
            "not a url",
        ] {
            check(redirect_url(bad), false);
        }
    }

    #[test]
    fn image_urls() {
        for good in ["https://cdn.fabrikam.example/logo.png", "https://x.example/l.svg?v=2"] {
            check(image_url(good), true);
        }
        let long = format!("https://x.example/{}", "a".repeat(MAX_IMAGE_URL));
        for bad in [
            "http://cdn.fabrikam.example/logo.png",
            "http://localhost/logo.png",
            "data:image/png;base64,AAAA",
            "javascript:alert(1)",
            "https://u:p@x.example/logo.png",
            "https://x.example/logo.png#x",
            "https://x.example/\u{7}",
            "//x.example/logo.png",
            long.as_str(),
        ] {
            check(image_url(bad), false);
        }
    }
}
