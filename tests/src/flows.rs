//! Flow events, metrics and advise: a running monitor, Prometheus scrapes.

use super::*;

// ---- Flow events, metrics, advise (the flows issue) --------------------

/// A running `bpfwall monitor --json` whose records are collected on a
/// thread of their own. Dropping it kills the monitor.
#[derive(Debug)]
pub struct Monitor {
    child: Child,
    records: Arc<Mutex<Vec<Value>>>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Every JSON record so far (the first line, the daemon's answer, left out).
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    /// Every line printed so far (human output).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits up to `limit` for a record that satisfies `cond`; returns it.
    pub fn wait_for(&self, limit: Duration, cond: impl Fn(&Value) -> bool) -> Option<Value> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(r) = self.records().into_iter().find(&cond) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl TestEnv {
    /// Starts `bpfwall monitor ARGS --socket <this env's>` and waits until it
    /// streams (its first record or a moment after it connected).
    pub fn monitor(&self, args: &[&str]) -> Monitor {
        use std::io::BufRead as _;
        let mut child = Command::new(bpfwall_bin())
            .arg("monitor")
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bpfwall monitor");
        let stdout = child.stdout.take().unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (r, l) = (records.clone(), lines.clone());
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    r.lock().unwrap().push(v);
                }
                l.lock().unwrap().push(line);
            }
        });
        // The daemon subscribes the monitor before it answers; give the
        // connection a moment.
        std::thread::sleep(Duration::from_millis(300));
        Monitor {
            child,
            records,
            lines,
            reader: Some(reader),
        }
    }
}

/// `GET /metrics` over plain HTTP/1.1 from `addr`; the body.
pub fn scrape_metrics(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect to the metrics address {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Parses the Prometheus (OpenMetrics) text format strictly enough for a
/// test: every line is a comment (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`)
/// or `name{label="value",...} number`; the text ends with `# EOF`.
/// Returns each sample's `name{labels}` (as written) and value.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last().copied(),
        Some("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    for line in lines {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split_whitespace().next().unwrap_or("");
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "unknown comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in: {line}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.ends_with('}'), "labels not closed: {line}");
            for pair in labels[1..labels.len() - 1]
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label in {line}"));
                assert!(
                    !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                    "bad label in {line}"
                );
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        out.insert(series.to_string(), v);
    }
    out
}

/// A free TCP port on loopback (bound and released).
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
