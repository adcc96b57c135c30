//! HTTP requests as policy sees them: the parts an HTTP rule reads, the
//! request target in the one normal form both the proxy and `policy check`
//! use, and whether a rule matches a request.
//!
//! The semantics (docs/labels.md, "HTTP rules"):
//!
//! - method: the request's method token, case-sensitive;
//! - path: the request target in normal form (path, then `?query` if sent),
//!   matched whole, as Cilium's proxy matches `:path`; a deny's path
//!   pattern also fires when it matches the path without the query (a deny
//!   must not be dodged by appending `?`);
//! - host: the Host header (or the authority of an absolute-form target),
//!   lower-cased, port included if sent; "" when there is none;
//! - headers: names without regard to case; a value rule compares with the
//!   values of every occurrence joined by ", " (leading and trailing white
//!   space removed); a deny's value rule also fires on any one occurrence.
//!
//! The normal form of a target refuses what a server could read otherwise
//! than the rule did: dot segments (`.`, `..`, also percent-encoded), an
//! encoded `/` or `\`, a backslash, control or non-ASCII bytes, a fragment;
//! it decodes percent-encoded unreserved characters (`%41` is `A`), writes
//! other escapes in upper case and merges repeated slashes. The proxy
//! forwards the normal form, so the server sees what was matched.
//!
//! Imports: [`crate::model`].

use std::fmt;

use crate::model::{HttpRule, Verdict};

/// One request, as an HTTP rule reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method token, as sent.
    pub method: String,
    /// The request target in normal form: path, then `?query` if any.
    pub target: String,
    /// The host, lower-cased ("" when none was sent).
    pub host: String,
    /// Every header, name lower-cased, value trimmed, in the order sent.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// The path: the target without its query.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(p, _)| p)
    }

    /// The values of every occurrence of a header (name in lower case).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads a request from its parts: the method, the request target as
    /// sent, and the headers as sent (any case). The target is put in
    /// normal form; an absolute-form target gives the host, and a Host
    /// header beside it must name the same one.
    pub fn from_parts<'a>(
        method: &str,
        target: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<HttpRequest, RequestError> {
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            return Err(RequestError::Method);
        }
        let mut out = HttpRequest {
            method: method.to_string(),
            ..HttpRequest::default()
        };
        let mut host_header: Option<String> = None;
        for (name, value) in headers {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(RequestError::HeaderName(name.to_string()));
            }
            let value = std::str::from_utf8(value)
                .ok()
                .filter(|v| v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
                .ok_or_else(|| RequestError::HeaderValue(name.to_string()))?;
            let name = name.to_ascii_lowercase();
            let value = value.trim_matches([' ', '\t']).to_string();
            if name == "host" {
                if host_header.is_some() {
                    return Err(RequestError::TwoHosts);
                }
                host_header = Some(value.to_ascii_lowercase());
            }
            out.headers.push((name, value));
        }
        let (authority, target) = split_absolute(target)?;
        out.target = normalize_target(target)?;
        out.host = match (authority, host_header) {
            (Some(a), Some(h)) if a.to_ascii_lowercase() != h => {
                return Err(RequestError::HostMismatch)
            }
            (Some(a), _) => a.to_ascii_lowercase(),
            (None, h) => h.unwrap_or_default(),
        };
        if out.target == "*" && out.method != "OPTIONS" {
            return Err(RequestError::Target(TargetError::NotOriginForm));
        }
        Ok(out)
    }
}

/// Why a request cannot be read as policy reads it (the proxy answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The method is not a token.
    #[error("the method is not an HTTP token")]
    Method,
    /// A header name is not a token.
    #[error("header name {0:?} is not an HTTP token")]
    HeaderName(String),
    /// A header value holds control or non-ASCII bytes.
    #[error("header {0:?} has a value with control or non-ASCII bytes")]
    HeaderValue(String),
    /// Two Host headers.
    #[error("the request has two Host headers")]
    TwoHosts,
    /// An absolute-form target and a Host header that names another host.
    #[error("the Host header names another host than the request target")]
    HostMismatch,
    /// The target.
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// Why a request target has no normal form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Neither `/...`, `*` nor `http://host/...`.
    #[error("the request target is neither a path, '*' nor an http:// URL")]
    NotOriginForm,
    /// A `.` or `..` segment.
    #[error("the path has a '.' or '..' segment")]
    DotSegment,
    /// `%2F` or `%5C`.
    #[error("the path has an encoded '/' or '\\'")]
    EncodedSeparator,
    /// A byte that is not visible ASCII, a backslash, or an escape of a
    /// control byte.
    #[error("the request target has a byte it may not have ({0:#04x})")]
    Byte(u8),
    /// `%` not followed by two hex digits.
    #[error("the request target has a '%' without two hex digits")]
    BadEscape,
    /// A `#fragment`.
    #[error("the request target has a fragment")]
    Fragment,
}

impl fmt::Display for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.target)
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// An absolute-form target (`http://host[:port]/path`) as its authority and
/// its path; any other target unchanged.
fn split_absolute(target: &str) -> Result<(Option<&str>, &str), TargetError> {
    let lower = target.get(..7).map(str::to_ascii_lowercase);
    if lower.as_deref() != Some("http://") {
        return Ok((None, target));
    }
    let rest = &target[7..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') {
        return Err(TargetError::NotOriginForm);
    }
    let path = &rest[end..];
    Ok((Some(authority), if path.is_empty() { "/" } else { path }))
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The normal form of an origin-form target (`/path[?query]`) or `*`.
pub fn normalize_target(target: &str) -> Result<String, TargetError> {
    if target == "*" {
        return Ok(target.to_string());
    }
    if !target.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    if let Some(b) = target.bytes().find(|b| !(0x21..0x7f).contains(b)) {
        return Err(TargetError::Byte(b));
    }
    if target.contains('#') {
        return Err(TargetError::Fragment);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    // Decode what may be decoded, keep (upper-cased) what may not.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(TargetError::Byte(b)),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(TargetError::BadEscape);
                };
                let c = hi * 16 + lo;
                if c == b'/' || c == b'\\' {
                    return Err(TargetError::EncodedSeparator);
                }
                if !(0x20..0x7f).contains(&c) {
                    return Err(TargetError::Byte(c));
                }
                if is_unreserved(c) {
                    decoded.push(char::from(c));
                } else {
                    decoded.push('%');
                    decoded.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                    decoded.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                }
                i += 3;
            }
            _ => {
                decoded.push(char::from(b));
                i += 1;
            }
        }
    }
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let mut out = String::with_capacity(target.len());
    for (i, segment) in segments.iter().enumerate() {
        if *segment == "." || *segment == ".." {
            return Err(TargetError::DotSegment);
        }
        if segment.is_empty() {
            // A repeated slash merges; a trailing one stays.
            if i + 1 == segments.len() {
                out.push('/');
            }
            continue;
        }
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Does one HTTP rule match a request? `verdict` is the rule's: a deny
/// also fires on the path without its query and on any one occurrence of a
/// header (see the module's documentation).
pub fn rule_matches(rule: &HttpRule, request: &HttpRequest, verdict: Verdict) -> bool {
    let deny = verdict == Verdict::Deny;
    if let Some(m) = &rule.method {
        if !m.is_match(&request.method) {
            return false;
        }
    }
    if let Some(p) = &rule.path {
        if !(p.is_match(&request.target) || (deny && p.is_match(request.path()))) {
            return false;
        }
    }
    if let Some(h) = &rule.host {
        if !h.is_match(&request.host) {
            return false;
        }
    }
    rule.headers.iter().all(|h| {
        let values: Vec<&str> = request.header_values(&h.name).collect();
        match &h.value {
            None => !values.is_empty(),
            Some(want) => {
                !values.is_empty()
                    && (values.join(", ") == *want || (deny && values.iter().any(|v| v == want)))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::model::{HeaderMatch, HttpPattern};

    #[test]
    fn targets_in_normal_form() {
        let n = |t: &str| normalize_target(t);
        assert_eq!(n("/public/").unwrap(), "/public/");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("//a///b").unwrap(), "/a/b");
        assert_eq!(n("/%72estricted/x").unwrap(), "/restricted/x");
        assert_eq!(n("/a%2db").unwrap(), "/a-b");
        assert_eq!(n("/a%3fb?q=%2e").unwrap(), "/a%3Fb?q=%2e");
        assert_eq!(n("/a?x=1&y=/..").unwrap(), "/a?x=1&y=/..");
        assert_eq!(n("/public/../restricted"), Err(TargetError::DotSegment));
        assert_eq!(n("/public/%2e%2E/restricted"), Err(TargetError::DotSegment));
        assert_eq!(n("/./x"), Err(TargetError::DotSegment));
        assert_eq!(n("/a%2fb"), Err(TargetError::EncodedSeparator));
        assert_eq!(n("/a%5Cb"), Err(TargetError::EncodedSeparator));
        assert_eq!(n("/a\\b"), Err(TargetError::Byte(b'\\')));
        assert_eq!(n("/a%00"), Err(TargetError::Byte(0)));
        assert_eq!(n("/a%zz"), Err(TargetError::BadEscape));
        assert_eq!(n("/a%2"), Err(TargetError::BadEscape));
        assert_eq!(n("/a#b"), Err(TargetError::Fragment));
        assert_eq!(n("a"), Err(TargetError::NotOriginForm));
        assert_eq!(n("/é"), Err(TargetError::Byte(0xc3)));
        assert_eq!(n("*").unwrap(), "*");
    }

    #[test]
    fn requests_from_their_parts() {
        let r = HttpRequest::from_parts(
            "GET",
            "http://App1:80/x",
            [("Host", &b"app1:80"[..]), ("X-A", b" 1 ")],
        )
        .unwrap();
        assert_eq!(r.host, "app1:80");
        assert_eq!(r.target, "/x");
        assert_eq!(r.headers[1], ("x-a".into(), "1".into()));
        assert_eq!(
            HttpRequest::from_parts("GET", "http://a/x", [("Host", &b"b"[..])]),
            Err(RequestError::HostMismatch)
        );
        assert_eq!(
            HttpRequest::from_parts("GET", "/", [("Host", &b"a"[..]), ("host", b"b")]),
            Err(RequestError::TwoHosts)
        );
        assert_eq!(
            HttpRequest::from_parts("G T", "/", []),
            Err(RequestError::Method)
        );
        assert_eq!(
            HttpRequest::from_parts("GET", "*", []),
            Err(RequestError::Target(TargetError::NotOriginForm))
        );
        assert!(HttpRequest::from_parts("OPTIONS", "*", []).is_ok());
    }

    fn rule(method: &str, path: &str) -> HttpRule {
        HttpRule {
            method: (method != "*").then(|| HttpPattern::new(method).unwrap()),
            path: (path != "*").then(|| HttpPattern::new(path).unwrap()),
            ..HttpRule::default()
        }
    }

    fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest::from_parts(
            method,
            target,
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
        )
        .unwrap()
    }

    #[test]
    fn rules_match_whole_strings() {
        let r = rule("GET", "/public(/.*)?");
        assert!(rule_matches(
            &r,
            &req("GET", "/public", &[]),
            Verdict::Allow
        ));
        assert!(rule_matches(
            &r,
            &req("GET", "/public/a/b", &[]),
            Verdict::Allow
        ));
        assert!(!rule_matches(
            &r,
            &req("GET", "/publicity", &[]),
            Verdict::Allow
        ));
        assert!(!rule_matches(
            &r,
            &req("GET", "/x/public", &[]),
            Verdict::Allow
        ));
        assert!(!rule_matches(
            &r,
            &req("POST", "/public", &[]),
            Verdict::Allow
        ));
        assert!(!rule_matches(
            &r,
            &req("GETX", "/public", &[]),
            Verdict::Allow
        ));
        // The query is part of the target for an allow; a deny fires without it too.
        let d = rule("*", "/restricted");
        assert!(!rule_matches(
            &d,
            &req("GET", "/restricted?x", &[]),
            Verdict::Allow
        ));
        assert!(rule_matches(
            &d,
            &req("GET", "/restricted?x", &[]),
            Verdict::Deny
        ));
    }

    #[test]
    fn headers_and_hosts() {
        let mut r = rule("*", "*");
        r.headers.push(HeaderMatch {
            name: "x-token".into(),
            value: Some("good".into()),
        });
        r.host = Some(HttpPattern::new(r"api\.example").unwrap());
        let host = ("Host", "API.example");
        assert!(rule_matches(
            &r,
            &req("GET", "/", &[host, ("X-Token", "good")]),
            Verdict::Allow
        ));
        assert!(!rule_matches(
            &r,
            &req("GET", "/", &[("X-Token", "good")]),
            Verdict::Allow
        ));
        let twice = req(
            "GET",
            "/",
            &[host, ("X-Token", "good"), ("x-token", "evil")],
        );
        assert!(!rule_matches(&r, &twice, Verdict::Allow));
        assert!(rule_matches(&r, &twice, Verdict::Deny));
        r.headers[0].value = None;
        assert!(rule_matches(&r, &twice, Verdict::Allow));
    }
}
