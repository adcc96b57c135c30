//! The label language (docs/labels.md):
//!
//! ```text
//! value    = rule *( ";" rule ) [ ";" ]
//! rule     = ( "allow" / "deny" ) ( "from" / "to" ) peer [ "port" ports ]
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
//! This module reads one label's value; which labels are read, and by which
//! language, is decided in [`crate::syntax`].
//!
//! Imports: [`crate::model`] and the leaf `syntax::prefix`.

use std::fmt;

use ipnet::IpNet;

use crate::model::{Direction, Peer, PortSpec, Protocol, Rule, RuleOrigin, Selector, Verdict};
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
    let tokens = lex(value);
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
}

fn lex(value: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut word_col = 0;
    for (i, c) in value.chars().enumerate() {
        let column = i + 1;
        let separator = match c {
            ',' => Some(Tok::Comma),
            ';' => Some(Tok::Semicolon),
            c if c.is_whitespace() => None,
            c => {
                if word.is_empty() {
                    word_col = column;
                }
                word.push(c);
                continue;
            }
        };
        if !word.is_empty() {
            out.push(Token {
                tok: Tok::Word(std::mem::take(&mut word)),
                column: word_col,
            });
        }
        if let Some(tok) = separator {
            out.push(Token { tok, column });
        }
    }
    if !word.is_empty() {
        out.push(Token {
            tok: Tok::Word(word),
            column: word_col,
        });
    }
    out
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
            Err(self.error_here("';' between rules, 'port', or the end of the label"))
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
        Ok(Rule {
            direction: self.direction,
            verdict,
            peers: vec![peer],
            ports,
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

    fn ports(&mut self) -> Result<Vec<PortSpec>, LabelError> {
        let mut out = Vec::new();
        loop {
            let (word, column) =
                self.word("a port such as 80/tcp, 8000-8100/tcp, any/udp or icmp")?;
            out.push(parse_port(&word).map_err(|(offset, expected)| {
                self.error_at(column + offset, expected, format!("'{word}'"))
            })?);
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        Ok(out)
    }
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
