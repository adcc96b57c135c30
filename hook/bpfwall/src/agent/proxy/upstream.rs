//! The proxy's side towards the server: an allowed request written to the
//! server's connection in normal form (its head once, its body by its
//! framing), the answer's head read with httparse and its body streamed
//! back by its framing, all on the client connection's own task: no
//! second HTTP stack, no channel and no task between the two sides. The
//! connection is kept for the next request when both ends allow it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// An error of either side's body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most an answer's head may take.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The most headers an answer may have.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Room made for a read of an answer's head.
const READ_CHUNK: usize = 16 * 1024;
/// Room made for a read of a body (larger: fewer reads and writes for a
/// large body; given back once the answer is read whole).
const BODY_CHUNK: usize = 256 * 1024;

/// Why a request could not be carried to the server and back.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Writing the request, or reading the answer, failed.
    #[error("{what} the server")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server closed before a whole answer head.
    #[error("the server closed the connection before it answered")]
    Closed,
    /// The answer is not HTTP/1.x, or its head is above the bound.
    #[error("the server's answer is not valid HTTP/1.x: {0}")]
    BadResponse(&'static str),
    /// The client's request body failed.
    #[error("reading the request body")]
    RequestBody(#[source] hyper::Error),
}

/// A connection to the server and what was read from it ahead.
#[derive(Debug)]
pub struct Upstream {
    stream: TcpStream,
    buf: BytesMut,
    /// It carried an earlier exchange (a failure before any answer byte
    /// may be a close the server made while it was idle).
    pub reused: bool,
}

impl Upstream {
    /// A new connection.
    pub fn new(stream: TcpStream) -> Upstream {
        Upstream {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            reused: false,
        }
    }

    /// Is an idle connection still usable (not closed by the server, and
    /// nothing unasked for waiting on it)?
    pub fn idle_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }

    async fn fill(&mut self) -> Result<usize, ExchangeError> {
        self.fill_up_to(READ_CHUNK).await
    }

    async fn fill_up_to(&mut self, room: usize) -> Result<usize, ExchangeError> {
        self.buf.reserve(room);
        self.stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|source| ExchangeError::Io {
                what: "reading from",
                source,
            })
    }
}

/// Where an upstream connection goes back when its answer is read whole.
pub type Slot = Arc<Mutex<Option<Upstream>>>;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes a request head in normal form: the request line and headers as
/// given (hop-by-hop ones already taken out), the body's framing.
fn request_head(method: &Method, target: &str, headers: &HeaderMap, chunked: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + headers.len() * 32);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if chunked && name == header::CONTENT_LENGTH {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends a request (its body streamed by its framing) and reads the
/// answer's head. Returns the answer with its body to stream, or, for 101,
/// the connection itself (now the new protocol's).
pub async fn exchange(
    mut upstream: Upstream,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &mut Incoming,
) -> Result<(Response<()>, Answer), (ExchangeError, bool)> {
    use hyper::body::Body as _;
    // A body of known length keeps its Content-Length header; one of
    // unknown length (it came chunked) goes chunked.
    let has_body = !body.is_end_stream();
    let chunked = has_body && body.size_hint().exact().is_none();
    let head = request_head(method, target, headers, chunked);
    let reused = upstream.reused;
    let io = |source| ExchangeError::Io {
        what: "writing to",
        source,
    };
    if let Err(e) = upstream.stream.write_all(&head).await {
        return Err((io(e), reused));
    }
    if has_body {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| (ExchangeError::RequestBody(e), false))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers are not forwarded
            };
            if data.is_empty() {
                continue;
            }
            let written = if chunked {
                let size = format!("{:x}\r\n", data.len());
                let mut bufs = [
                    std::io::IoSlice::new(size.as_bytes()),
                    std::io::IoSlice::new(&data),
                    std::io::IoSlice::new(b"\r\n"),
                ];
                write_all_vectored(&mut upstream.stream, &mut bufs).await
            } else {
                upstream.stream.write_all(&data).await
            };
            written.map_err(|e| (io(e), false))?;
        }
        if chunked {
            upstream
                .stream
                .write_all(b"0\r\n\r\n")
                .await
                .map_err(|e| (io(e), false))?;
        }
    }
    let retry = reused && !has_body;
    loop {
        let (response, framing, close) = match read_head(&mut upstream, method).await {
            Ok(r) => r,
            Err(ExchangeError::Closed) => return Err((ExchangeError::Closed, retry)),
            Err(e) => return Err((e, false)),
        };
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((response, Answer::Upgraded(upstream)));
        }
        if status.is_informational() {
            continue; // 100 Continue and the like: this hop's only
        }
        return Ok((
            response,
            Answer::Body {
                upstream,
                framing,
                keep: !close,
            },
        ));
    }
}

/// What follows an answer's head.
#[derive(Debug)]
pub enum Answer {
    /// A body to stream (then the connection goes back when `keep`).
    Body {
        /// The connection.
        upstream: Upstream,
        /// How the body is delimited.
        framing: FramingOf,
        /// The connection may carry the next request.
        keep: bool,
    },
    /// 101: the connection now carries another protocol.
    Upgraded(Upstream),
}

/// How an answer's body is delimited (opaque).
#[derive(Debug, Clone, Copy)]
pub struct FramingOf(Framing);

async fn write_all_vectored(
    stream: &mut TcpStream,
    bufs: &mut [std::io::IoSlice<'_>],
) -> std::io::Result<()> {
    let mut bufs: &mut [std::io::IoSlice<'_>] = bufs;
    while !bufs.is_empty() {
        let n = stream.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Reads and parses an answer's head; its framing, and whether the
/// connection closes after it.
async fn read_head(
    upstream: &mut Upstream,
    method: &Method,
) -> Result<(Response<()>, FramingOf, bool), ExchangeError> {
    loop {
        if !upstream.buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&upstream.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let out = build_head(&parsed, method)?;
                    upstream.buf.advance(len);
                    return Ok(out);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(ExchangeError::BadResponse("unparsable head")),
            }
            if upstream.buf.len() > MAX_RESPONSE_HEAD {
                return Err(ExchangeError::BadResponse("head above 64 KiB"));
            }
        }
        if upstream.fill().await? == 0 {
            return Err(if upstream.buf.is_empty() {
                ExchangeError::Closed
            } else {
                ExchangeError::BadResponse("closed within the head")
            });
        }
    }
}

fn build_head(
    parsed: &httparse::Response<'_, '_>,
    method: &Method,
) -> Result<(Response<()>, FramingOf, bool), ExchangeError> {
    let code = parsed.code.ok_or(ExchangeError::BadResponse("no status"))?;
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::BadResponse("bad status"))?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ExchangeError::BadResponse("bad header name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| ExchangeError::BadResponse("bad header value"))?;
        headers.append(name, value);
    }
    let tokens = |name: HeaderName| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    };
    let connection = tokens(header::CONNECTION);
    let http10 = parsed.version == Some(0);
    let close = connection.iter().any(|t| t == "close")
        || (http10 && !connection.iter().any(|t| t == "keep-alive"));
    let te = tokens(header::TRANSFER_ENCODING);
    let framing = if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if !te.is_empty() {
        if te.last().map(String::as_str) != Some("chunked") {
            Framing::UntilClose
        } else {
            Framing::Chunked
        }
    } else if let Some(v) = headers.get(header::CONTENT_LENGTH) {
        let n = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or(ExchangeError::BadResponse("bad content-length"))?;
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if matches!(framing, Framing::Chunked | Framing::UntilClose) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    let close = close || framing == Framing::UntilClose;
    Ok((response, FramingOf(framing), close))
}

/// The answer's body, read from the server by its framing; at its end
/// the connection goes back to `slot` (when it may be kept).
pub fn body(
    upstream: Upstream,
    framing: FramingOf,
    keep: bool,
    slot: Slot,
) -> impl hyper::body::Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static {
    let state = BodyState {
        upstream: Some(upstream),
        framing: framing.0,
        chunk_left: 0,
        crlf_due: false,
        keep,
        slot,
        pending: VecDeque::new(),
    };
    StreamBody::new(futures_util::stream::unfold(state, |mut s| async move {
        match s.next().await {
            Ok(Some(data)) => Some((Ok(Frame::data(data)), s)),
            Ok(None) => None,
            Err(e) => Some((Err(Box::new(e) as BoxError), s.failed())),
        }
    }))
}

struct BodyState {
    upstream: Option<Upstream>,
    framing: Framing,
    /// Chunked: bytes left of the current chunk.
    chunk_left: u64,
    /// Chunked: the CRLF after a chunk's data is still to be read.
    crlf_due: bool,
    keep: bool,
    slot: Slot,
    pending: VecDeque<Bytes>,
}

impl BodyState {
    fn failed(mut self) -> BodyState {
        self.upstream = None;
        self.framing = Framing::Empty;
        self
    }

    fn finish(&mut self) {
        self.framing = Framing::Empty;
        if let Some(mut up) = self.upstream.take() {
            if self.keep {
                up.reused = true;
                if up.buf.is_empty() && up.buf.capacity() > READ_CHUNK {
                    // An idle connection keeps no large buffer.
                    up.buf = BytesMut::new();
                }
                if let Ok(mut slot) = self.slot.lock() {
                    *slot = Some(up);
                }
            }
        }
    }

    /// The next piece of the body, or None at its end.
    async fn next(&mut self) -> Result<Option<Bytes>, ExchangeError> {
        if let Some(b) = self.pending.pop_front() {
            return Ok(Some(b));
        }
        let Some(up) = self.upstream.as_mut() else {
            return Ok(None);
        };
        match self.framing {
            Framing::Empty => {
                self.finish();
                Ok(None)
            }
            Framing::Length(0) => {
                self.finish();
                Ok(None)
            }
            Framing::Length(left) => {
                let room = usize::try_from(left).unwrap_or(BODY_CHUNK).min(BODY_CHUNK);
                if up.buf.is_empty() && up.fill_up_to(room).await? == 0 {
                    return Err(ExchangeError::Closed);
                }
                let n = (up.buf.len() as u64).min(left) as usize;
                let data = up.buf.split_to(n).freeze();
                self.framing = Framing::Length(left - n as u64);
                if left == n as u64 {
                    self.finish();
                }
                Ok(Some(data))
            }
            Framing::UntilClose => {
                if up.buf.is_empty() && up.fill_up_to(BODY_CHUNK).await? == 0 {
                    self.upstream = None;
                    self.framing = Framing::Empty;
                    return Ok(None);
                }
                Ok(Some(up.buf.split().freeze()))
            }
            Framing::Chunked => self.next_chunked().await,
        }
    }

    async fn next_chunked(&mut self) -> Result<Option<Bytes>, ExchangeError> {
        loop {
            let Some(up) = self.upstream.as_mut() else {
                return Ok(None);
            };
            if self.chunk_left > 0 {
                let room = usize::try_from(self.chunk_left)
                    .unwrap_or(BODY_CHUNK)
                    .min(BODY_CHUNK);
                if up.buf.is_empty() && up.fill_up_to(room).await? == 0 {
                    return Err(ExchangeError::Closed);
                }
                let n = (up.buf.len() as u64).min(self.chunk_left) as usize;
                self.chunk_left -= n as u64;
                let data = up.buf.split_to(n).freeze();
                // Its CRLF is read with the next size line.
                self.crlf_due = self.chunk_left == 0;
                return Ok(Some(data));
            }
            // A size line (after the previous chunk's CRLF, if any).
            let skip_crlf = self.crlf_due;
            let Some(line_end) = find_crlf(&up.buf, if skip_crlf { 2 } else { 0 }) else {
                if up.buf.len() > 4096 {
                    return Err(ExchangeError::BadResponse("chunk size line too long"));
                }
                if up.fill().await? == 0 {
                    return Err(ExchangeError::Closed);
                }
                continue;
            };
            if skip_crlf && &up.buf[..2] != b"\r\n" {
                return Err(ExchangeError::BadResponse("no CRLF after a chunk"));
            }
            let start = if skip_crlf { 2 } else { 0 };
            let line = &up.buf[start..line_end];
            let hex_end = line
                .iter()
                .position(|b| !b.is_ascii_hexdigit())
                .unwrap_or(line.len());
            let size = std::str::from_utf8(&line[..hex_end])
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 15)
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or(ExchangeError::BadResponse("bad chunk size"))?;
            up.buf.advance(line_end + 2);
            self.crlf_due = false;
            if size > 0 {
                self.chunk_left = size;
                continue;
            }
            // The last chunk: trailers until an empty line.
            loop {
                let Some(up) = self.upstream.as_mut() else {
                    return Ok(None);
                };
                match find_crlf(&up.buf, 0) {
                    Some(0) => {
                        up.buf.advance(2);
                        self.chunk_left = 0;
                        self.finish();
                        return Ok(None);
                    }
                    Some(end) => up.buf.advance(end + 2),
                    None => {
                        if up.buf.len() > 16 * 1024 {
                            return Err(ExchangeError::BadResponse("trailers too long"));
                        }
                        if up.fill().await? == 0 {
                            return Err(ExchangeError::Closed);
                        }
                    }
                }
            }
        }
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

/// The bytes read ahead on an upgraded connection (the new protocol's
/// first bytes), and the connection.
pub fn into_upgraded(upstream: Upstream) -> (TcpStream, Bytes) {
    (upstream.stream, upstream.buf.freeze())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// A server that answers `answer` to whatever comes; the proxy's body
    /// of it, collected, and whether the connection went back.
    async fn through(answer: &'static [u8], method: Method) -> (StatusCode, Bytes, bool) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            // In pieces, to cross reads.
            for piece in answer.chunks(7) {
                s.write_all(piece).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        });
        let mut up = Upstream::new(TcpStream::connect(addr).await.unwrap());
        up.stream
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let (resp, framing, close) = read_head(&mut up, &method).await.unwrap();
        let slot: Slot = Arc::default();
        let body = body(up, framing, !close, Arc::clone(&slot));
        let bytes = body.collect().await.unwrap().to_bytes();
        let kept = slot.lock().unwrap().is_some();
        (resp.status(), bytes, kept)
    }

    #[tokio::test]
    async fn answers_are_read_by_their_framing() {
        let (s, b, kept) = through(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
            Method::GET,
        )
        .await;
        assert_eq!(
            (s, &b[..], kept),
            (StatusCode::OK, &b"hello world"[..], true)
        );
        let (s, b, kept) = through(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
            Method::GET,
        )
        .await;
        assert_eq!(
            (s, &b[..], kept),
            (StatusCode::OK, &b"hello world"[..], true)
        );
        let (s, b, kept) = through(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end",
            Method::GET,
        )
        .await;
        assert_eq!(
            (s, &b[..], kept),
            (StatusCode::OK, &b"to the end"[..], false)
        );
        let (s, b, kept) = through(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
            Method::HEAD,
        )
        .await;
        assert_eq!((s, &b[..], kept), (StatusCode::OK, &b""[..], true));
        let (s, b, kept) = through(b"HTTP/1.0 204 No Content\r\n\r\n", Method::GET).await;
        assert_eq!((s, &b[..], kept), (StatusCode::NO_CONTENT, &b""[..], false));
    }

    #[test]
    fn a_request_head_in_normal_form() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("app1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let head = request_head(&Method::POST, "/a?b", &h, true);
        assert_eq!(
            std::str::from_utf8(&head).unwrap(),
            "POST /a?b HTTP/1.1\r\nhost: app1\r\nx-forwarded-for: 10.0.0.2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }
}
