//! HTTP from containers (busybox wget) and its outcomes.

use super::*;

// ---- HTTP (L7) helpers ---------------------------------------------------------

/// What an HTTP GET (busybox wget) from a container got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpOutcome {
    /// A 2xx answer, with its body.
    Ok(String),
    /// Another status (wget's "server returned error: HTTP/1.1 403 ...").
    Status(u16),
    /// No answer: refused, reset, timed out.
    Failed(String),
}

impl TestEnv {
    /// An HTTP request with busybox wget from a container (`extra`: more
    /// wget options, such as `--post-file F` or `--header 'N: V'`).
    pub fn http_request(
        &self,
        from: &Container,
        url: &str,
        seconds: u32,
        extra: &[&str],
    ) -> HttpOutcome {
        let secs = seconds.to_string();
        let mut cmd = vec!["timeout", &secs, "wget", "-q", "-O", "-"];
        cmd.extend_from_slice(extra);
        cmd.push(url);
        let out = self.exec(from, &cmd);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            return HttpOutcome::Ok(stdout);
        }
        if let Some(rest) = stderr.split("server returned error: HTTP/1.").nth(1) {
            if let Some(code) = rest.get(2..5).and_then(|c| c.parse().ok()) {
                return HttpOutcome::Status(code);
            }
        }
        HttpOutcome::Failed(stderr)
    }

    /// An HTTP GET from a container.
    pub fn http_get(&self, from: &Container, url: &str) -> HttpOutcome {
        self.http_request(from, url, 6, &[])
    }

    /// Raw bytes to `host:port` from a container with busybox nc; `script`
    /// is a shell command list whose output is sent (sleep in it to pace
    /// the requests; nc stops reading when it ends). What came back.
    pub fn raw_tcp(
        &self,
        from: &Container,
        host: &str,
        port: u16,
        script: &str,
        seconds: u32,
    ) -> String {
        let cmd = format!("({script}; sleep 1) | timeout {seconds} nc {host} {port}");
        let out = self.exec(from, &["sh", "-c", &cmd]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits until the daemon's proxy serves a container.
    pub fn wait_proxy_ready(&self, c: &Container) {
        self.wait_for(&format!("the http proxy of {}", c.name), |env| {
            env.endpoint(c).is_some_and(|e| e["proxy"]["ready"] == true)
        });
    }

    /// A container's HTTP requests allowed and denied in a direction
    /// (`status --json`).
    pub fn http_counts(&self, c: &Container, direction: Direction) -> (u64, u64) {
        let ep = self
            .endpoint(c)
            .unwrap_or_else(|| panic!("{} is not an endpoint", c.name));
        let d = &ep[direction.key()];
        (
            d["http_allowed"].as_u64().unwrap_or(0),
            d["http_denied"].as_u64().unwrap_or(0),
        )
    }

    /// Connections the proxy closed for a reason (`status --json`).
    pub fn proxy_closed(&self, reason: &str) -> u64 {
        self.status()["proxy_closed"][reason].as_u64().unwrap_or(0)
    }

    /// `bpfwall policy check ... --port PORT/tcp --http 'METHOD TARGET'`:
    /// (allowed, the printed answer).
    pub fn check_http(
        &self,
        from: &Container,
        to: &Container,
        port: u16,
        request: &str,
        headers: &[&str],
    ) -> (bool, String) {
        let port = format!("{port}/tcp");
        let mut args = vec![
            "policy", "check", "--from", &from.name, "--to", &to.name, "--port", &port, "--http",
            request,
        ];
        for h in headers {
            args.push("--header");
            args.push(h);
        }
        let out = self.cli(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        match out.status.code() {
            Some(0) => (true, text),
            Some(1) => (false, text),
            _ => panic!("policy check failed: {text}"),
        }
    }
}
