//! The label language (docs/labels.md):
//!
//! ```text
//! value    = rule *( ";" rule ) [ ";" ]
//! rule     = ( "allow" / "deny" ) ( "from" / "to" ) peer [ "port" ports [ http ] ]
//! http     = "http" METHOD PATH *( "host" HOST / "header" NAME [ "=" VALUE ] )
//! peer     = "any" / "host" / "world" / cidr / selector
//! cidr     = "cidr" PREFIX [ "except" PREFIX *( "," PREFIX ) ]
//! selector = KEY "=" VALUE *( "," KEY "=" VALUE )
//! ports    = port *( "," port )
//! port     = ( N / N "-" M / "any" ) "/" PROTO / "icmp" / "any"
//! PROTO    = "tcp" / "udp" / "icmp" / "any"
//! ```
//!
//! `from` belongs to ingress labels and `to` to egress labels. Columns in
//! errors count characters of the label's value from 1.
//!
//! After `http`, words are separated by white space only (a `,` is part of
//! a word) and a `;` ends the rule; a word in double quotes (`\"` and `\\`
//! inside) may hold white space and `;`. METHOD, PATH and HOST are regular
//! expressions matched against the whole string (`*` for METHOD or PATH:
//! any); an `http` rule's ports must be single TCP ports.
//!
//! This module reads one label's value; which labels are read, and by which
//! language, is decided in [`crate::syntax`].
//!
//! Imports: [`crate::model`] and the leaf `syntax::prefix`.

use std::fmt;

use ipnet::IpNet;

use crate::model::{
    Direction, HeaderMatch, HttpPattern, HttpRule, Peer, PortSpec, Protocol, Rule, RuleOrigin,
    Selector, Verdict,
};
use crate::syntax::prefix::parse_prefix;

/// A label value bpfwall cannot read, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label '{label}' column {column}: {message}")]
pub struct LabelError {
    /// The label key.
    pub label: String,
    /// 1-based character column in the label's value (1 for key errors).
    pub column: usize,
    /// What is wrong, usually "expected X, found Y".
    pub message: String,
    /// The directions this error closes.
    pub closes: Vec<Direction>,
}

/// Parses one label value of the given direction.
pub fn parse_rules(
    label: &str,
    direction: Direction,
    value: &str,
) -> Result<Vec<Rule>, LabelError> {
    let tokens = lex(value).map_err(|(column, message)| LabelError {
        label: label.to_string(),
        column,
        message,
        closes: vec![direction],
    })?;
    let mut parser = Parser {
        label,
        direction,
        tokens: &tokens,
        pos: 0,
        end_column: value.chars().count() + 1,
    };
    let mut rules = Vec::new();
    loop {
        while parser.eat(&Tok::Semicolon) {}
        if parser.at_end() {
            break;
        }
        let rule = parser.rule(rules.len())?;
        rules.push(rule);
        if parser.at_end() {
            break;
        }
        parser.expect_semicolon()?;
    }
    if rules.is_empty() {
        return Err(parser.error_here("a rule such as 'allow from id=web port 80/tcp'"));
    }
    Ok(rules)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Comma,
    Semicolon,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    column: usize,
    /// For a word: the column of each of its characters (a quoted word's
    /// characters sit after its quote and escapes).
    columns: Vec<usize>,
}

/// The word that starts an HTTP clause, after which words are separated by
/// white space only.
const HTTP_WORD: &str = "http";

/// Splits a value into words, `,` and `;`. Fails (column, message) only on
/// an unterminated quoted word of an HTTP clause.
fn lex(value: &str) -> Result<Vec<Token>, (usize, String)> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut columns = Vec::new();
    let mut http = false;
    let chars: Vec<char> = value.chars().collect();
    let mut i = 0;
    let flush = |word: &mut String, columns: &mut Vec<usize>, out: &mut Vec<Token>| {
        if !word.is_empty() {
            let columns = std::mem::take(columns);
            out.push(Token {
                tok: Tok::Word(std::mem::take(word)),
                column: columns[0],
                columns,
            });
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        i += 1;
        if http && c == '"' && word.is_empty() {
            // A quoted word: up to the next unescaped quote.
            let start = column;
            let mut closed = false;
            while i < chars.len() {
                let d = chars[i];
                i += 1;
                match d {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' if i < chars.len() && matches!(chars[i], '"' | '\\') => {
                        word.push(chars[i]);
                        columns.push(i + 1);
                        i += 1;
                    }
                    d => {
                        word.push(d);
                        columns.push(i);
                    }
                }
            }
            if !closed {
                return Err((
                    start,
                    "expected a closing '\"' for the quoted word, found the end of the label"
                        .into(),
                ));
            }
            if word.is_empty() {
                return Err((
                    start,
                    "expected a word inside the quotes, found '\"\"'".into(),
                ));
            }
            let columns_taken = std::mem::take(&mut columns);
            out.push(Token {
                tok: Tok::Word(std::mem::take(&mut word)),
                column: start,
                columns: columns_taken,
            });
            continue;
        }
        let separator = match c {
            ',' if !http => Some(Tok::Comma),
            ';' => Some(Tok::Semicolon),
            c if c.is_whitespace() => None,
            c => {
                word.push(c);
                columns.push(column);
                continue;
            }
        };
        let was_http_word = !http && word == HTTP_WORD;
        flush(&mut word, &mut columns, &mut out);
        if was_http_word {
            http = true;
        }
        if let Some(tok) = separator {
            if tok == Tok::Semicolon {
                http = false;
            }
            out.push(Token {
                tok,
                column,
                columns: Vec::new(),
            });
        }
    }
    flush(&mut word, &mut columns, &mut out);
    Ok(out)
}

struct Parser<'a> {
    label: &'a str,
    direction: Direction,
    tokens: &'a [Token],
    pos: usize,
    end_column: usize,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "'{w}'"),
            Tok::Comma => f.write_str("','"),
            Tok::Semicolon => f.write_str("';'"),
        }
    }
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_word(&self) -> Option<&str> {
        match self.peek() {
            Some(Token {
                tok: Tok::Word(w), ..
            }) => Some(w),
            _ => None,
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek().is_some_and(|t| &t.tok == tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn error_at(
        &self,
        column: usize,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> LabelError {
        LabelError {
            label: self.label.to_string(),
            column,
            message: format!("expected {}, found {}", expected.into(), found.into()),
            closes: vec![self.direction],
        }
    }

    fn error_here(&self, expected: impl Into<String>) -> LabelError {
        match self.peek() {
            Some(t) => self.error_at(t.column, expected, t.tok.to_string()),
            None => self.error_at(self.end_column, expected, "the end of the label"),
        }
    }

    /// Takes the next word, or fails naming what was expected.
    fn word(&mut self, expected: &str) -> Result<(String, usize), LabelError> {
        match self.peek() {
            Some(Token {
                tok: Tok::Word(w),
                column,
                ..
            }) => {
                let out = (w.clone(), *column);
                self.pos += 1;
                Ok(out)
            }
            _ => Err(self.error_here(expected)),
        }
    }

    fn expect_semicolon(&mut self) -> Result<(), LabelError> {
        if self.eat(&Tok::Semicolon) {
            Ok(())
        } else {
            Err(self.error_here("';' between rules, 'port', 'http', or the end of the label"))
        }
    }

    fn rule(&mut self, index: usize) -> Result<Rule, LabelError> {
        let (verdict_word, column) = self.word("'allow' or 'deny'")?;
        let verdict = match verdict_word.as_str() {
            "allow" => Verdict::Allow,
            "deny" => Verdict::Deny,
            other => return Err(self.error_at(column, "'allow' or 'deny'", format!("'{other}'"))),
        };
        let want = match self.direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let (dir_word, column) = self.word(&format!("'{want}'"))?;
        if dir_word != want {
            let hint = if dir_word == "from" || dir_word == "to" {
                format!("'{want}' (this is an {} label)", self.direction)
            } else {
                format!("'{want}'")
            };
            return Err(self.error_at(column, hint, format!("'{dir_word}'")));
        }
        let peer = self.peer()?;
        let mut ports = Vec::new();
        if self.peek_word() == Some("port") {
            self.pos += 1;
            ports = self.ports()?;
        }
        let mut http = Vec::new();
        if self.peek_word() == Some(HTTP_WORD) {
            let column = self.peek().map_or(self.end_column, |t| t.column);
            self.pos += 1;
            if ports.is_empty() {
                return Err(self.error_at(
                    column,
                    "'port PORT/tcp' before 'http' (http rules apply to TCP ports)",
                    "'http'",
                ));
            }
            if let Some((spec, column)) = ports
                .iter()
                .find(|(spec, _)| spec.protocol != Protocol::Tcp || spec.first != spec.last)
            {
                return Err(self.error_at(
                    *column,
                    "single TCP ports such as 80/tcp before 'http'",
                    format!("'{spec}'"),
                ));
            }
            http.push(self.http_rule()?);
        }
        Ok(Rule {
            direction: self.direction,
            verdict,
            peers: vec![peer],
            ports: ports.into_iter().map(|(spec, _)| spec).collect(),
            http,
            origin: RuleOrigin {
                source: self.label.to_string(),
                index,
            },
        })
    }

    fn peer(&mut self) -> Result<Peer, LabelError> {
        const EXPECTED: &str =
            "a peer: 'any', 'host', 'world', 'cidr PREFIX' or a selector key=value";
        let (word, column) = self.word(EXPECTED)?;
        match word.as_str() {
            "any" => Ok(Peer::Any),
            "host" => Ok(Peer::Host),
            "world" => Ok(Peer::World),
            "cidr" => self.cidr(),
            "port" | "allow" | "deny" => Err(self.error_at(column, EXPECTED, format!("'{word}'"))),
            _ => {
                let mut selector = Selector::default();
                self.selector_pair(&word, column, &mut selector)?;
                while self.eat(&Tok::Comma) {
                    let (word, column) = self.word("another key=value after ','")?;
                    self.selector_pair(&word, column, &mut selector)?;
                }
                Ok(Peer::Endpoints(selector))
            }
        }
    }

    fn selector_pair(
        &self,
        word: &str,
        column: usize,
        selector: &mut Selector,
    ) -> Result<(), LabelError> {
        let Some((key, value)) = word.split_once('=') else {
            return Err(self.error_at(
                column,
                "a peer: 'any', 'host', 'world', 'cidr PREFIX' or a selector key=value",
                format!("'{word}'"),
            ));
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        {
            return Err(self.error_at(
                column,
                "a label key of letters, digits, '.', '_', '-' or '/'",
                format!("'{key}'"),
            ));
        }
        if value.contains('=') {
            let at = column
                + key.chars().count()
                + 1
                + value.find('=').map_or(0, |i| value[..i].chars().count());
            return Err(self.error_at(at, "',' between key=value pairs", "'='"));
        }
        if let Some(previous) = selector.match_labels.get(key) {
            if previous != value {
                return Err(self.error_at(
                    column,
                    format!("one value for key '{key}' (a container has one)"),
                    format!("'{key}={value}' after '{key}={previous}'"),
                ));
            }
        }
        selector
            .match_labels
            .insert(key.to_string(), value.to_string());
        Ok(())
    }

    fn prefix(&mut self) -> Result<IpNet, LabelError> {
        let (word, column) = self.word("an address prefix such as 10.0.0.0/8 or fd00::/64")?;
        parse_prefix(&word).map_err(|expected| self.error_at(column, expected, format!("'{word}'")))
    }

    fn cidr(&mut self) -> Result<Peer, LabelError> {
        let prefix = self.prefix()?;
        let mut except = Vec::new();
        if self.peek_word() == Some("except") {
            self.pos += 1;
            loop {
                let column = self.peek().map_or(self.end_column, |t| t.column);
                let sub = self.prefix()?;
                if !prefix.contains(&sub) {
                    return Err(self.error_at(
                        column,
                        format!("an except prefix inside {prefix}"),
                        format!("'{sub}'"),
                    ));
                }
                except.push(sub);
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        Ok(Peer::Cidr { prefix, except })
    }

    fn ports(&mut self) -> Result<Vec<(PortSpec, usize)>, LabelError> {
        let mut out = Vec::new();
        loop {
            let (word, column) =
                self.word("a port such as 80/tcp, 8000-8100/tcp, any/udp or icmp")?;
            let spec = parse_port(&word).map_err(|(offset, expected)| {
                self.error_at(column + offset, expected, format!("'{word}'"))
            })?;
            out.push((spec, column));
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        Ok(out)
    }
}

impl Parser<'_> {
    /// Takes the next word with the column of each of its characters.
    fn word_token(&mut self, expected: &str) -> Result<(String, Vec<usize>), LabelError> {
        match self.peek() {
            Some(Token {
                tok: Tok::Word(w),
                columns,
                ..
            }) => {
                let out = (w.clone(), columns.clone());
                self.pos += 1;
                Ok(out)
            }
            _ => Err(self.error_here(expected)),
        }
    }

    /// A regular expression of an HTTP clause (`*` is any when `star` is).
    fn pattern(&mut self, what: &str, star: bool) -> Result<Option<HttpPattern>, LabelError> {
        let expected = if star {
            format!("{what} (a regular expression, or '*' for any)")
        } else {
            format!("{what} (a regular expression)")
        };
        let (word, columns) = self.word_token(&expected)?;
        if star && word == "*" {
            return Ok(None);
        }
        HttpPattern::new(&word).map(Some).map_err(|e| {
            let column = columns
                .get(e.offset)
                .copied()
                .unwrap_or_else(|| columns.last().map_or(self.end_column, |c| c + 1));
            LabelError {
                label: self.label.to_string(),
                column,
                message: format!("expected {expected}, found '{word}': {}", e.message),
                closes: vec![self.direction],
            }
        })
    }

    /// `http METHOD PATH [host HOST] [header NAME[=VALUE]]...`, after `http`.
    fn http_rule(&mut self) -> Result<HttpRule, LabelError> {
        let method = self.pattern("an HTTP method such as GET", true)?;
        let path = self.pattern("a path such as /public(/.*)?", true)?;
        let mut rule = HttpRule {
            method,
            path,
            ..HttpRule::default()
        };
        loop {
            match self.peek_word() {
                Some("host") => {
                    let column = self.peek().map_or(self.end_column, |t| t.column);
                    self.pos += 1;
                    if rule.host.is_some() {
                        return Err(self.error_at(
                            column,
                            "one 'host' per http rule",
                            "a second 'host'",
                        ));
                    }
                    rule.host = self.pattern("a host such as api\\.example\\.com", false)?;
                }
                Some("header") => {
                    self.pos += 1;
                    let (word, columns) =
                        self.word_token("a header NAME or NAME=VALUE after 'header'")?;
                    let (name, value) = match word.split_once('=') {
                        Some((n, v)) => (n, Some(v.to_string())),
                        None => (word.as_str(), None),
                    };
                    let column = columns.first().copied().unwrap_or(self.end_column);
                    if name.is_empty() || !name.bytes().all(is_header_name_byte) {
                        return Err(self.error_at(
                            column,
                            "a header name of letters, digits and !#$%&'*+-.^_`|~",
                            format!("'{name}'"),
                        ));
                    }
                    if let Some(v) = &value {
                        if let Some(i) = v.chars().position(|c| c.is_control()) {
                            let at = columns
                                .get(name.chars().count() + 1 + i)
                                .copied()
                                .unwrap_or(column);
                            return Err(self.error_at(
                                at,
                                "a header value without control characters",
                                format!("'{word}'"),
                            ));
                        }
                    }
                    rule.headers.push(HeaderMatch {
                        name: name.to_ascii_lowercase(),
                        value,
                    });
                }
                _ => break,
            }
        }
        if !self.at_end() && self.peek().is_some_and(|t| t.tok != Tok::Semicolon) {
            return Err(
                self.error_here("'host', 'header', ';' between rules, or the end of the label")
            );
        }
        Ok(rule)
    }
}

/// RFC 9110 `tchar`: what a header name is made of.
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses one port word. On error returns the character offset within the
/// word and what was expected there.
pub fn parse_port(word: &str) -> Result<PortSpec, (usize, String)> {
    match word {
        "icmp" => return Ok(PortSpec::all_ports(Protocol::Icmp)),
        "any" => return Ok(PortSpec::all_ports(Protocol::Any)),
        _ => {}
    }
    let Some((range, proto)) = word.split_once('/') else {
        return Err((0, "PORT/PROTO such as 80/tcp (or icmp, or any)".into()));
    };
    let proto_offset = range.chars().count() + 1;
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        "any" => Protocol::Any,
        _ => return Err((proto_offset, "a protocol: tcp, udp, icmp or any".into())),
    };
    if range == "any" {
        return Ok(PortSpec::all_ports(protocol));
    }
    if protocol == Protocol::Icmp {
        return Err((0, "icmp without a port ('icmp' or 'any/icmp')".into()));
    }
    let number = |text: &str, offset: usize| -> Result<u16, (usize, String)> {
        match text.parse::<u16>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err((offset, "a port number from 1 to 65535".into())),
        }
    };
    let (first, last) = match range.split_once('-') {
        Some((a, b)) => {
            let first = number(a, 0)?;
            let last = number(b, a.chars().count() + 1)?;
            if last < first {
                return Err((
                    0,
                    format!("a range whose end is not below its start ({first}-{last})"),
                ));
            }
            (first, last)
        }
        None => {
            let n = number(range, 0)?;
            (n, n)
        }
    };
    Ok(PortSpec {
        protocol,
        first,
        last,
    })
}
