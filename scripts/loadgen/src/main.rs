//! bpfwall-loadgen: the load generator of scripts/bench. No dependencies
//! beyond std, so that it links statically and runs inside a busybox
//! container from a bind mount.
//!
//! ```text
//! bpfwall-loadgen server [--port 5201]
//! bpfwall-loadgen client --to IP:PORT --test rr|crr|stream|probe [--seconds S]
//! bpfwall-loadgen synflood --to IP:PORT --rate N [--seconds S] [--ports K]
//! ```
//!
//! `synflood` sends TCP SYNs built by hand on a raw socket (CAP_NET_RAW,
//! which a container has by default) from the container's own address, N a
//! second, from K source ports in turn (default 64: every SYN is a new flow
//! to bpfwall, which decides every SYN, while the host's connection
//! tracking holds only K entries). It prints `sent=` and `per_second=`.
//!
//! The first byte of every connection names the test: `R` (request/response:
//! the server echoes every byte), `C` (connect/request/response: the server
//! answers one byte and closes first, so TIME_WAIT stays on its side and the
//! client never runs out of ports), `S` (stream: the server counts the bytes
//! until EOF and answers the count). A client prints one line of
//! `key=value` pairs; `probe` exits 0 if one transaction succeeds within a
//! second (`--timeout-ms`) and 1 otherwise.
//!
//! A connection whose first byte is `G` is HTTP/1.1: every `GET` gets a
//! 2-byte answer, on the same connection unless it asked `Connection:
//! close`. `--test http` sends small GETs on one kept-alive connection,
//! `--test http-new` one GET per new connection (requests/s, p50, p99);
//! `--test wait-http` tries a GET every 5 ms until one succeeds (at most
//! `--seconds`) and prints when it did (`ok_unix_ns`). A `GET /bytes/N`
//! gets N bytes: `--test http-bulk` asks for 16 MiB at a time on one
//! kept-alive connection (MB/s, and p50/p99 of one answer).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const STREAM_CHUNK: usize = 128 * 1024;

fn usage() -> ExitCode {
    eprintln!(
        "usage: bpfwall-loadgen server [--port P]\n       bpfwall-loadgen client --to IP:PORT --test rr|crr|stream|http|http-new|http-bulk|wait-http|probe [--seconds S] [--timeout-ms T]\n       bpfwall-loadgen synflood --to IP:PORT [--rate N] [--seconds S] [--ports K]"
    );
    ExitCode::from(2)
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => {
            let port = match flag(&args, "--port").unwrap_or("5201").parse::<u16>() {
                Ok(p) => p,
                Err(_) => return usage(),
            };
            server(port)
        }
        Some("synflood") => {
            let Some(to) = flag(&args, "--to").and_then(|s| s.parse::<SocketAddr>().ok()) else {
                return usage();
            };
            let (Ok(rate), Ok(seconds), Ok(ports)) = (
                flag(&args, "--rate").unwrap_or("100000").parse::<u64>(),
                flag(&args, "--seconds").unwrap_or("10").parse::<f64>(),
                flag(&args, "--ports").unwrap_or("64").parse::<u16>(),
            ) else {
                return usage();
            };
            synflood(to, rate, Duration::from_secs_f64(seconds), ports.max(1))
        }
        Some("client") => {
            let Some(to) = flag(&args, "--to").and_then(|s| s.parse::<SocketAddr>().ok()) else {
                return usage();
            };
            let Ok(seconds) = flag(&args, "--seconds").unwrap_or("1").parse::<f64>() else {
                return usage();
            };
            let duration = Duration::from_secs_f64(seconds);
            match flag(&args, "--test") {
                Some("rr") => rr(to, duration),
                Some("crr") => crr(to, duration),
                Some("stream") => stream(to, duration),
                Some("http") => http_keepalive(to, duration),
                Some("http-new") => http_new(to, duration),
                Some("wait-http") => wait_http(to, duration),
                Some("http-bulk") => http_bulk(to, duration),
                Some("probe") => {
                    let Ok(ms) = flag(&args, "--timeout-ms").unwrap_or("1000").parse::<u64>()
                    else {
                        return usage();
                    };
                    return match probe(to, Duration::from_millis(ms)) {
                        Ok(()) => {
                            println!("test=probe connected=1");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            println!("test=probe connected=0 error=\"{e}\"");
                            ExitCode::from(1)
                        }
                    };
                }
                _ => return usage(),
            }
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpfwall-loadgen: {e}");
            ExitCode::from(1)
        }
    }
}

fn server(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_nodelay(true);
        let mut first = [0u8; 1];
        if conn.read_exact(&mut first).is_err() {
            continue;
        }
        match first[0] {
            // Answered inline, as netperf's netserver does for TCP_CRR.
            b'C' => {
                let _ = conn.write_all(b"c");
            }
            b'R' => {
                std::thread::spawn(move || {
                    let mut byte = [0u8; 1];
                    if conn.write_all(b"r").is_err() {
                        return;
                    }
                    while conn.read_exact(&mut byte).is_ok() {
                        if conn.write_all(&byte).is_err() {
                            return;
                        }
                    }
                });
            }
            b'G' => {
                std::thread::spawn(move || http_serve(conn));
            }
            b'S' => {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; STREAM_CHUNK];
                    let mut total: u64 = 0;
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n as u64,
                        }
                    }
                    let _ = conn.write_all(&total.to_be_bytes());
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Median and 99th percentile, in microseconds.
fn percentiles(mut ns: Vec<u32>) -> (f64, f64) {
    if ns.is_empty() {
        return (0.0, 0.0);
    }
    ns.sort_unstable();
    let at = |q: f64| {
        let i = ((ns.len() as f64 * q).ceil() as usize).clamp(1, ns.len()) - 1;
        f64::from(ns[i]) / 1000.0
    };
    (at(0.5), at(0.99))
}

fn elapsed_ns(t: Instant) -> u32 {
    u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX)
}

fn rr(to: SocketAddr, duration: Duration) -> std::io::Result<()> {
    let mut s = connect(to)?;
    let mut byte = [0u8; 1];
    s.write_all(b"R")?;
    s.read_exact(&mut byte)?;
    let mut samples = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut byte)?;
        samples.push(elapsed_ns(t));
    }
    let secs = start.elapsed().as_secs_f64();
    let n = samples.len();
    let (p50, p99) = percentiles(samples);
    println!(
        "test=rr transactions={n} seconds={secs:.3} per_second={:.0} p50_us={p50:.1} p99_us={p99:.1}",
        n as f64 / secs
    );
    Ok(())
}

fn crr(to: SocketAddr, duration: Duration) -> std::io::Result<()> {
    let mut samples = Vec::with_capacity(1 << 18);
    let mut byte = [0u8; 1];
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let mut s = connect(to)?;
        s.write_all(b"C")?;
        s.read_exact(&mut byte)?;
        // The server closes first; wait for its FIN so the connection is done.
        let _ = s.read(&mut byte);
        drop(s);
        samples.push(elapsed_ns(t));
    }
    let secs = start.elapsed().as_secs_f64();
    let n = samples.len();
    let (p50, p99) = percentiles(samples);
    println!(
        "test=crr transactions={n} seconds={secs:.3} per_second={:.0} p50_us={p50:.1} p99_us={p99:.1}",
        n as f64 / secs
    );
    Ok(())
}

fn stream(to: SocketAddr, duration: Duration) -> std::io::Result<()> {
    let mut s = connect(to)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"S")?;
    let buf = vec![0x5au8; STREAM_CHUNK];
    let start = Instant::now();
    while start.elapsed() < duration {
        s.write_all(&buf)?;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)?;
    let secs = start.elapsed().as_secs_f64();
    let bytes = u64::from_be_bytes(count);
    println!(
        "test=stream bytes={bytes} seconds={secs:.3} gbit_per_second={:.3}",
        bytes as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

/// The Internet checksum of `data` (with `sum` carried in).
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn synflood(to: SocketAddr, rate: u64, duration: Duration, ports: u16) -> std::io::Result<()> {
    let SocketAddr::V4(dst) = to else {
        return Err(std::io::Error::other("synflood: IPv4 only"));
    };
    // The address the kernel would use towards dst: the container's own.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
    probe.connect(to)?;
    let std::net::IpAddr::V4(src) = probe.local_addr()?.ip() else {
        return Err(std::io::Error::other("synflood: no IPv4 source"));
    };
    // SAFETY: a plain socket(2) call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
    let mut pkt = [0u8; 40];
    // IPv4: version/IHL, total length, DF, TTL 64, TCP; the kernel fills
    // the id and the header checksum.
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&40u16.to_be_bytes());
    pkt[6] = 0x40;
    pkt[8] = 64;
    pkt[9] = 6;
    pkt[12..16].copy_from_slice(&src.octets());
    pkt[16..20].copy_from_slice(&dst.ip().octets());
    pkt[22..24].copy_from_slice(&dst.port().to_be_bytes());
    pkt[32] = 5 << 4; // data offset
    pkt[33] = 0x02; // SYN
    pkt[34..36].copy_from_slice(&64240u16.to_be_bytes());
    // Pseudo-header sum (addresses, protocol, TCP length).
    let mut pseudo = 0u32;
    for w in [src.octets(), dst.ip().octets()] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]))
            + u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 6 + 20;
    let (mut sent, mut failed) = (0u64, 0u64);
    let start = Instant::now();
    // Paced in slices of a millisecond.
    let per_slice = (rate / 1000).max(1);
    let mut slice = 0u64;
    while start.elapsed() < duration {
        for _ in 0..per_slice {
            let i = sent + failed;
            let sport = 1024 + (i % u64::from(ports)) as u16;
            pkt[20..22].copy_from_slice(&sport.to_be_bytes());
            pkt[24..28].copy_from_slice(&(i as u32).to_be_bytes());
            pkt[36..38].copy_from_slice(&[0, 0]);
            let sum = checksum(pseudo, &pkt[20..40]);
            pkt[36..38].copy_from_slice(&sum.to_be_bytes());
            // SAFETY: pkt and sa outlive the call; lengths are theirs.
            let n = unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n < 0 {
                failed += 1;
            } else {
                sent += 1;
            }
        }
        slice += 1;
        let due = Duration::from_millis(slice);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "test=synflood sent={sent} failed={failed} seconds={secs:.3} per_second={:.0}",
        sent as f64 / secs
    );
    Ok(())
}

fn probe(to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut byte = [0u8; 1];
    s.write_all(b"C")?;
    s.read_exact(&mut byte)?;
    if byte[0] == b'c' {
        Ok(())
    } else {
        Err(std::io::Error::other("unexpected answer"))
    }
}

/// Reads one HTTP head (to its blank line) into `buf`; the head's length.
fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(i + 4);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of a header in a head, by name in lower case.
fn head_value(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn http_serve(mut conn: TcpStream) {
    // The `G` the dispatch read is the first byte of the first head.
    let mut buf = b"G".to_vec();
    loop {
        let Ok(len) = read_head(&mut conn, &mut buf) else {
            return;
        };
        let close =
            head_value(&buf[..len], "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let size = bulk_size(&buf[..len]);
        buf.drain(..len);
        if let Some(size) = size {
            if http_send_bulk(&mut conn, size, close).is_err() || close {
                return;
            }
            continue;
        }
        let answer: &[u8] = if close {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        if conn.write_all(answer).is_err() || close {
            return;
        }
    }
}

/// N of a `GET /bytes/N` head.
fn bulk_size(head: &[u8]) -> Option<u64> {
    let line = head.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("GET /bytes/")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Answers `size` bytes of zeros.
fn http_send_bulk(conn: &mut TcpStream, size: u64, close: bool) -> std::io::Result<()> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    conn.write_all(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n{connection}\r\n").as_bytes(),
    )?;
    let chunk = vec![0u8; STREAM_CHUNK];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(STREAM_CHUNK as u64)).unwrap_or(STREAM_CHUNK);
        conn.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Sends one GET and reads its answer whole.
fn http_exchange(s: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> std::io::Result<()> {
    s.write_all(request)?;
    let len = read_head(s, buf)?;
    let status_ok = buf.starts_with(b"HTTP/1.1 200");
    let body: usize = head_value(&buf[..len], "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut chunk = [0u8; 4096];
    while buf.len() < len + body {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..len + body);
    if !status_ok {
        return Err(std::io::Error::other("not 200 OK"));
    }
    Ok(())
}

fn report(test: &str, samples: Vec<u32>, secs: f64) {
    let n = samples.len();
    let (p50, p99) = percentiles(samples);
    println!(
        "test={test} transactions={n} seconds={secs:.3} per_second={:.0} p50_us={p50:.1} p99_us={p99:.1}",
        n as f64 / secs
    );
}

fn http_keepalive(to: SocketAddr, duration: Duration) -> std::io::Result<()> {
    let request = b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n";
    let mut s = connect(to)?;
    let mut buf = Vec::with_capacity(8192);
    let mut samples = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        http_exchange(&mut s, request, &mut buf)?;
        samples.push(elapsed_ns(t));
    }
    report("http", samples, start.elapsed().as_secs_f64());
    Ok(())
}

fn http_new(to: SocketAddr, duration: Duration) -> std::io::Result<()> {
    let request = b"GET /bench HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let mut buf = Vec::with_capacity(8192);
    let mut samples = Vec::with_capacity(1 << 18);
    let mut byte = [0u8; 1];
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let mut s = connect(to)?;
        buf.clear();
        http_exchange(&mut s, request, &mut buf)?;
        // The server closes first: wait for its FIN.
        let _ = s.read(&mut byte);
        samples.push(elapsed_ns(t));
    }
    report("http-new", samples, start.elapsed().as_secs_f64());
    Ok(())
}

fn wait_http(to: SocketAddr, duration: Duration) -> std::io::Result<()> {
    let request = b"GET /bench HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let start = Instant::now();
    let mut tries = 0u32;
    while start.elapsed() < duration {
        tries += 1;
        let attempt = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(50))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut buf = Vec::new();
            http_exchange(&mut s, request, &mut buf)
        })();
        if attempt.is_ok() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            println!("test=wait-http tries={tries} ok_unix_ns={now}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(std::io::Error::other("no GET succeeded in time"))
}

const BULK: u64 = 16 << 20;

fn http_bulk(to: SocketAddr, duration: Duration) -> std::io::Result<()> {
    let request = format!("GET /bytes/{BULK} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut s = connect(to)?;
    let mut head = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; STREAM_CHUNK];
    let mut samples = Vec::new();
    let mut bytes: u64 = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        s.write_all(request.as_bytes())?;
        head.clear();
        let len = read_head(&mut s, &mut head)?;
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(std::io::Error::other("not 200 OK"));
        }
        // What came after the head is body already.
        let mut got = (head.len() - len) as u64;
        while got < BULK {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got += n as u64;
        }
        if got != BULK {
            return Err(std::io::Error::other("more bytes than asked for"));
        }
        bytes += got;
        samples.push(elapsed_ns(t));
    }
    let secs = start.elapsed().as_secs_f64();
    let n = samples.len();
    let (p50, p99) = percentiles(samples);
    println!(
        "test=http-bulk transactions={n} seconds={secs:.3} per_second={:.1} p50_us={p50:.1} p99_us={p99:.1} mbyte_per_second={:.1}",
        n as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    Ok(())
}
