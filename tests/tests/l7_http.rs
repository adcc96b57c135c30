//! L7 (HTTP) policy end to end: the real daemon and its proxy, a real
//! dockerd, real HTTP. The article's scenario answered with 200, a 403
//! from bpfwall, and a block at L3/L4; every request of a connection
//! decided; explicit HTTP deny, host and header rules, a Cilium file with
//! `rules.http`, Upgrade, what is not HTTP/1.x, malformed and oversized
//! requests, 10 MiB through an allowed rule, egress rules enforced at the
//! server, and a SIGKILLed daemon failing closed. Every `policy check
//! --http` answer is held to what the real request got.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::time::{Duration, Instant};

use bpfwall_e2e::{Container, Direction, HttpOutcome, TestEnv, SLEEP};

/// app1's command: busybox httpd with /public, /restricted, /admin and a
/// CGI at /cgi-bin/echo that answers the X-Forwarded-For it got and the
/// md5 of the body it read.
const SITE: &str = "mkdir -p /www/public /www/restricted /www/admin /www/cgi-bin /www/api; \
    echo public > /www/public/index.html; echo restricted > /www/restricted/index.html; \
    echo admin > /www/admin/index.html; echo api > /www/api/x; \
    printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho xff=$HTTP_X_FORWARDED_FOR\\nhead -c ${CONTENT_LENGTH:-0} | md5sum\\n' > /www/cgi-bin/echo; \
    chmod +x /www/cgi-bin/echo; exec httpd -f -p 80 -h /www";

fn site() -> [&'static str; 3] {
    ["sh", "-c", SITE]
}

/// The daemon's log without its terminal colour codes.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Holds `policy check --http` to what a real GET got.
fn check_agrees(env: &TestEnv, from: &Container, to: &Container, request: &str, got: &HttpOutcome) {
    let (allowed, text) = env.check_http(from, to, 80, request, &[]);
    let real = matches!(got, HttpOutcome::Ok(_));
    assert_eq!(
        allowed, real,
        "policy check says {allowed} for {request} from {}, the real request got {got:?}:\n{text}",
        from.name
    );
}

#[test]
fn l7_the_articles_scenario_on_a_bridge_and_by_name() {
    let mut env = TestEnv::new("l7-article");
    let label = "bpfwall.ingress=allow from id=app2 port 80/tcp http GET /public(/.*)?";
    for network in [None, Some(env.network("n"))] {
        let common: Vec<String> = network.iter().map(|n| format!("--network={n}")).collect();
        let common: Vec<&str> = common.iter().map(String::as_str).collect();
        let suffix = if network.is_some() { "-named" } else { "" };
        let with = |extra: &[&str]| -> Vec<String> {
            common.iter().chain(extra).map(|s| s.to_string()).collect()
        };
        fn opts(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let app1 = env.start_attached(
            &format!("app1{suffix}"),
            &opts(&with(&["--label", "id=app1", "--label", label])),
            &site(),
        );
        let app2 = env.start_attached(
            &format!("app2{suffix}"),
            &opts(&with(&["--label", "id=app2"])),
            SLEEP,
        );
        let app3 = env.start_attached(
            &format!("app3{suffix}"),
            &opts(&with(&["--label", "id=app3"])),
            SLEEP,
        );
        env.wait_proxy_ready(&app1);
        // By address on the default bridge, by name on a network of its own.
        let host = if network.is_some() {
            app1.name.clone()
        } else {
            env.ip(&app1)
        };
        let before = env.http_counts(&app1, Direction::Ingress);
        let public = env.http_get(&app2, &format!("http://{host}/public/"));
        assert_eq!(
            public,
            HttpOutcome::Ok("public\n".into()),
            "{}",
            env.status_text()
        );
        check_agrees(&env, &app2, &app1, "GET /public/", &public);
        let restricted = env.http_get(&app2, &format!("http://{host}/restricted/"));
        assert_eq!(restricted, HttpOutcome::Status(403));
        check_agrees(&env, &app2, &app1, "GET /restricted/", &restricted);
        let (_, text) = env.check_http(&app2, &app1, 80, "GET /restricted/", &[]);
        assert!(text.contains("denied by default"), "{text}");
        // POST where only GET is allowed.
        let post = env.http_request(
            &app2,
            &format!("http://{host}/public/"),
            6,
            &["--post-data", "x=1"],
        );
        assert_eq!(post, HttpOutcome::Status(403));
        let (allowed, _) = env.check_http(&app2, &app1, 80, "POST /public/", &[]);
        assert!(!allowed);
        let after = env.http_counts(&app1, Direction::Ingress);
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (1, 2),
            "http counters of app1's ingress"
        );
        // app3: blocked at L3/L4 as before, by app1's own program.
        env.assert_http_blocked_by(
            &app3,
            &format!("http://{host}/public/"),
            &app1,
            Direction::Ingress,
        );
        let (allowed, text) = env.check_http(&app3, &app1, 80, "GET /public/", &[]);
        assert!(
            !allowed && text.contains("denied by default: ingress rules apply"),
            "{text}"
        );
    }
    let log = without_colours(&env.daemon_log());
    assert!(
        log.contains("http request denied")
            && log.contains("path=/restricted/")
            && log.contains("method=GET"),
        "a denied request is logged with its method, path and rule"
    );
}

#[test]
fn l7_every_request_of_a_connection_and_what_is_not_http() {
    let mut env = TestEnv::new("l7-conn");
    let net = env.network("n");
    let netopt = format!("--network={net}");
    let app1 = env.start_attached(
        "app1",
        &[
            &netopt,
            "--label",
            "id=app1",
            "--label",
            "bpfwall.ingress=allow from id=app2 port 80/tcp http GET /public(/.*)?; allow from id=app2 port 80/tcp http POST /cgi-bin/echo; allow from id=app2 port 80/tcp http GET /big; allow from id=app2 port 8080/tcp http POST /upload",
        ],
        &["sh", "-c", &format!("http_upgrade 8080 & {SITE}")],
    );
    let app2 = env.start_attached("app2", &[&netopt, "--label", "id=app2"], SLEEP);
    env.wait_proxy_ready(&app1);
    let host = app1.name.clone();
    let req = |target: &str| format!("printf 'GET {target} HTTP/1.1\\r\\nHost: app1\\r\\n\\r\\n'");
    let statuses = |answer: &str| -> Vec<String> {
        answer
            .lines()
            .filter(|l| l.starts_with("HTTP/1.1 "))
            .map(|l| l.trim().to_string())
            .collect()
    };
    // Keep-alive: allowed, denied, allowed on one connection.
    let answer = env.raw_tcp(
        &app2,
        &host,
        80,
        &format!(
            "{}; sleep 0.3; {}; sleep 0.3; {}",
            req("/public/"),
            req("/restricted/"),
            req("/public/")
        ),
        5,
    );
    assert_eq!(
        statuses(&answer),
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 403 Forbidden",
            "HTTP/1.1 200 OK"
        ],
        "{answer}"
    );
    assert!(answer.contains("Forbidden: denied by bpfwall policy"));
    // Pipelined: the same three in one write.
    let answer = env.raw_tcp(
        &app2,
        &host,
        80,
        &format!(
            "{{ {}; {}; {}; }}",
            req("/public/"),
            req("/restricted/"),
            req("/public/")
        ),
        5,
    );
    assert_eq!(
        statuses(&answer),
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 403 Forbidden",
            "HTTP/1.1 200 OK"
        ],
        "{answer}"
    );
    // A path that a server would read otherwise than the rule: 400, closed.
    let answer = env.raw_tcp(
        &app2,
        &host,
        80,
        &format!(
            "{}; sleep 0.3; {}",
            req("/public/../restricted/"),
            req("/public/")
        ),
        5,
    );
    assert_eq!(statuses(&answer), ["HTTP/1.1 400 Bad Request"], "{answer}");
    // Malformed: 400 and closed.
    let malformed = env.proxy_closed("malformed-request");
    let answer = env.raw_tcp(
        &app2,
        &host,
        80,
        "printf 'GET /public/ HTTP/1.1\\r\\nHost: a\\r\\nBad Header\\r\\n\\r\\n'",
        5,
    );
    assert_eq!(statuses(&answer), ["HTTP/1.1 400 Bad Request"], "{answer}");
    assert!(env.proxy_closed("malformed-request") > malformed);
    // A request line, and headers, above the bound: 431 and closed.
    let oversized = env.proxy_closed("request-head-too-large");
    let long_line = "printf 'GET /'; head -c 20000 /dev/zero | tr '\\0' a; printf ' HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n'";
    let answer = env.raw_tcp(&app2, &host, 80, long_line, 5);
    assert_eq!(
        statuses(&answer),
        ["HTTP/1.1 431 Request Header Fields Too Large"],
        "{answer}"
    );
    let many = "printf 'GET /public/ HTTP/1.1\\r\\nHost: a\\r\\n'; for i in $(seq 1 120); do printf \"X-$i: 1\\r\\n\"; done; printf '\\r\\n'";
    let answer = env.raw_tcp(&app2, &host, 80, many, 5);
    assert_eq!(
        statuses(&answer),
        ["HTTP/1.1 431 Request Header Fields Too Large"],
        "{answer}"
    );
    assert!(env.proxy_closed("request-head-too-large") >= oversized + 2);
    // HTTP/2 prior knowledge and what is not HTTP: closed unanswered, counted.
    let h2 = env.proxy_closed("http2-prior-knowledge");
    let answer = env.raw_tcp(
        &app2,
        &host,
        80,
        "printf 'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'",
        5,
    );
    assert_eq!(answer, "", "nothing answers HTTP/2 prior knowledge");
    assert_eq!(env.proxy_closed("http2-prior-knowledge"), h2 + 1);
    let other = env.proxy_closed("not-http");
    let answer = env.raw_tcp(
        &app2,
        &host,
        80,
        "printf '\\026\\003\\001\\002\\000\\001\\000\\001\\374\\003\\003'",
        5,
    );
    assert_eq!(answer, "", "nothing answers a TLS hello");
    assert_eq!(env.proxy_closed("not-http"), other + 1);
    // 10 MiB up and down, intact, streamed through the allowed rules; the
    // server sees the client's address in X-Forwarded-For.
    env.exec_must(
        &app1,
        &["sh", "-c", "head -c 10485760 /dev/urandom > /www/big"],
    );
    env.exec_must(
        &app2,
        &[
            "sh",
            "-c",
            "head -c 7864320 /dev/urandom | base64 > /tmp/up",
        ],
    );
    let want_down = env.exec_must(&app1, &["md5sum", "/www/big"]);
    let want_up = env.exec_must(&app2, &["md5sum", "/tmp/up"]);
    let got_down = env.exec_must(
        &app2,
        &[
            "sh",
            "-c",
            &format!("timeout 30 wget -qO- http://{host}/big | md5sum"),
        ],
    );
    assert_eq!(
        got_down.split_whitespace().next(),
        want_down.split_whitespace().next()
    );
    let up = env.http_request(
        &app2,
        &format!("http://{host}/cgi-bin/echo"),
        30,
        &["--post-file", "/tmp/up"],
    );
    let HttpOutcome::Ok(body) = up else {
        panic!("upload failed: {up:?}");
    };
    assert!(body.contains(&format!("xff={}", env.ip(&app2))), "{body}");
    assert!(
        body.contains(want_up.split_whitespace().next().unwrap()),
        "{body} vs {want_up}"
    );
    // 10 MiB in chunks, streamed to a server that reads chunks.
    env.exec_must(
        &app2,
        &["sh", "-c", "head -c 65536 /dev/urandom > /tmp/chunk"],
    );
    let want = env.exec_must(
        &app2,
        &[
            "sh",
            "-c",
            "for i in $(seq 1 160); do cat /tmp/chunk; done | http_upgrade fnv -",
        ],
    );
    let chunked = "printf 'POST /upload HTTP/1.1\\r\\nHost: a\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n'; \
        for i in $(seq 1 160); do printf '10000\\r\\n'; cat /tmp/chunk; printf '\\r\\n'; done; printf '0\\r\\n\\r\\n'; sleep 1";
    let answer = env.raw_tcp(&app2, &host, 8080, chunked, 30);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with(&format!("{want}\n")), "{answer} vs {want}");
    // policy check says what these requests got.
    for (port, request, want) in [
        (80, "GET /big", true),
        (80, "POST /cgi-bin/echo", true),
        (8080, "POST /upload", true),
        (80, "GET /restricted/", false),
    ] {
        let (allowed, text) = env.check_http(&app2, &app1, port, request, &[]);
        assert_eq!(allowed, want, "policy check of {request} on {port}: {text}");
    }
}

#[test]
fn l7_deny_wins_host_header_and_upgrade() {
    let mut env = TestEnv::new("l7-rules");
    let net = env.network("n");
    let netopt = format!("--network={net}");
    // An explicit HTTP deny over a broader L3/L4 allow; host and header
    // rules on 8080, served by the upgrade server.
    let app1 = env.start_attached(
        "app1",
        &[
            &netopt,
            "--label",
            "id=app1",
            "--label",
            "bpfwall.ingress=allow from id=app2 port 80/tcp; deny from any port 80/tcp http * /admin(/.*)?",
            "--label",
            r"bpfwall.ingress.api=allow from id=app2 port 8080/tcp http GET /api/.* host api\.example(:8080)? header X-Token=good; allow from id=app2 port 8080/tcp http GET /ws",
        ],
        &["sh", "-c", &format!("http_upgrade 8080 & {SITE}")],
    );
    let app2 = env.start_attached("app2", &[&netopt, "--label", "id=app2"], SLEEP);
    env.wait_proxy_ready(&app1);
    let host = &app1.name;
    let public = env.http_get(&app2, &format!("http://{host}/public/"));
    assert_eq!(
        public,
        HttpOutcome::Ok("public\n".into()),
        "the L3/L4 allow lifts the http rules"
    );
    check_agrees(&env, &app2, &app1, "GET /public/", &public);
    for target in ["/admin/", "/admin?x=1", "/%61dmin/"] {
        let got = env.http_get(&app2, &format!("http://{host}{target}"));
        assert_eq!(
            got,
            HttpOutcome::Status(403),
            "{target} is denied, whatever the L3/L4 allow says"
        );
        check_agrees(&env, &app2, &app1, &format!("GET {target}"), &got);
    }
    let (_, text) = env.check_http(&app2, &app1, 80, "GET /admin/", &[]);
    assert!(text.contains("denied by bpfwall.ingress[1]"), "{text}");
    // Host and header rules.
    let api = format!("http://{host}:8080/api/x");
    let cases: [(&[&str], bool); 4] = [
        (
            &["--header", "Host: api.example", "--header", "X-Token: good"],
            true,
        ),
        (
            &["--header", "Host: api.example", "--header", "X-Token: evil"],
            false,
        ),
        (&["--header", "X-Token: good"], false),
        (&["--header", "Host: api.example"], false),
    ];
    for (headers, want) in cases {
        let got = env.http_request(&app2, &api, 6, headers);
        assert_eq!(
            matches!(got, HttpOutcome::Ok(_)),
            want,
            "{headers:?}: {got:?}"
        );
        if !want {
            assert_eq!(got, HttpOutcome::Status(403), "{headers:?}");
        }
        let check_headers: Vec<&str> = headers
            .iter()
            .copied()
            .filter(|h| *h != "--header")
            .collect();
        let mut check_headers = check_headers;
        if !check_headers.iter().any(|h| h.starts_with("Host")) {
            // wget sends the host it connects to.
            check_headers.push("Host: e2e-l7-rules-app1:8080");
        }
        let (allowed, text) = env.check_http(&app2, &app1, 8080, "GET /api/x", &check_headers);
        assert_eq!(allowed, want, "{headers:?}: {text}");
    }
    // A websocket-style Upgrade: tunnelled once its request is allowed.
    let upgrade = |path: &str| {
        format!("printf 'GET {path} HTTP/1.1\\r\\nHost: a\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n'; sleep 0.3; printf 'ping\\n'; sleep 0.3")
    };
    let answer = env.raw_tcp(&app2, host, 8080, &upgrade("/ws"), 5);
    assert!(
        answer.starts_with("HTTP/1.1 101 Switching Protocols"),
        "{answer}"
    );
    assert!(
        answer.contains("echo: ping"),
        "the upgraded connection is tunnelled: {answer}"
    );
    let answer = env.raw_tcp(&app2, host, 8080, &upgrade("/other"), 5);
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden"), "{answer}");
    assert!(
        !answer.contains("echo:"),
        "a denied upgrade is no tunnel: {answer}"
    );
    for (path, want) in [("/ws", true), ("/other", false)] {
        let (allowed, text) = env.check_http(&app2, &app1, 8080, &format!("GET {path}"), &[]);
        assert_eq!(
            allowed, want,
            "policy check of the upgrade to {path}: {text}"
        );
    }
}

const ARTICLE_HTTP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: article-http
spec:
  endpointSelector:
    matchLabels:
      id: app1
  ingress:
    - fromEndpoints:
        - matchLabels:
            id: app2
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
          rules:
            http:
              - method: GET
                path: "/public(/.*)?"
"#;

#[test]
fn l7_a_cilium_file_with_rules_http() {
    let env = TestEnv::new("l7-cilium");
    env.write_policy("article.yaml", ARTICLE_HTTP);
    let a = env.article(&[], &[]);
    env.wait_proxy_ready(&a.app1);
    let url = |p: &str| format!("{}{p}", a.target);
    let public = env.http_get(&a.app2, &url("index.html"));
    // The article's app1 has no /public: its index answers 403, /public/... 404.
    assert_eq!(public, HttpOutcome::Status(403));
    let got = env.http_get(&a.app2, &url("public/"));
    assert_eq!(
        got,
        HttpOutcome::Status(404),
        "allowed through, and the server answers"
    );
    let (allowed, text) = env.check_http(&a.app2, &a.app1, 80, "GET /public/", &[]);
    assert!(
        allowed && text.contains("article.yaml (article-http) spec[0].ingress[0]"),
        "{text}"
    );
    let (allowed, _) = env.check_http(&a.app2, &a.app1, 80, "GET /index.html", &[]);
    assert!(!allowed);
    env.assert_http_blocked_by(&a.app3, &url("public/"), &a.app1, Direction::Ingress);
}

#[test]
fn l7_egress_rules_are_enforced_at_the_server() {
    let mut env = TestEnv::new("l7-egress");
    let net = env.network("n");
    let netopt = format!("--network={net}");
    let api = env.start_attached(
        "api",
        &[&netopt, "--label", "id=api"],
        &["http_upgrade", "8080"],
    );
    let client = env.start_attached(
        "client",
        &[
            &netopt,
            "--label",
            "id=client",
            "--label",
            "bpfwall.egress=allow to id=api port 8080/tcp http GET /v1/.*; allow to world port 8080/tcp http GET /v1/.*",
        ],
        SLEEP,
    );
    env.wait_proxy_ready(&api);
    let url = |p: &str| format!("http://{}:8080{p}", api.name);
    let ok = env.http_get(&client, &url("/v1/items"));
    assert_eq!(
        ok,
        HttpOutcome::Ok(format!("plain GET /v1/items xff={}\n", env.ip(&client)))
    );
    let denied = env.http_get(&client, &url("/admin"));
    assert_eq!(denied, HttpOutcome::Status(403));
    let (allowed, text) = env.check_http(&client, &api, 8080, "GET /admin", &[]);
    assert!(
        !allowed && text.contains("egress of e2e-l7-egress-client"),
        "{text}"
    );
    let (allowed, _) = env.check_http(&client, &api, 8080, "GET /v1/items", &[]);
    assert!(allowed);
    assert_eq!(env.http_counts(&client, Direction::Egress), (1, 1));
    // A peer bpfwall does not manage cannot enforce the rule: closed.
    let outside = env.outside_netns(71, &["198.18.77.7"]);
    env.netns_http_server(&outside, 8080);
    env.assert_http_blocked_by(
        &client,
        "http://198.18.77.7:8080/v1/items",
        &client,
        Direction::Egress,
    );
    let status = env.status_text();
    assert!(status.contains("HttpPeerNotProxied"), "{status}");
}

#[test]
fn l7_a_sigkilled_daemon_fails_closed_and_comes_back() {
    let mut env = TestEnv::new("l7-kill");
    let a = env.article(
        &[
            "--label",
            "bpfwall.ingress=allow from id=app2 port 80/tcp http GET /(index\\.html)?",
        ],
        &[],
    );
    env.wait_proxy_ready(&a.app1);
    // The server has a /restricted/ page: a request that gets around the
    // proxy gets it.
    env.exec_must(
        &a.app1,
        &[
            "sh",
            "-c",
            "mkdir -p /www/restricted && echo restricted > /www/restricted/index.html",
        ],
    );
    let index = format!("{}index.html", a.target);
    let restricted = format!("{}restricted/", a.target);
    assert!(matches!(env.http_get(&a.app2, &index), HttpOutcome::Ok(_)));
    assert_eq!(env.http_get(&a.app2, &restricted), HttpOutcome::Status(403));
    let before = env.drops_by_reason();
    // Four loops in app2 ask for /restricted every 100 ms (at most 1 s
    // each) from before the kill to after the restart: none may get it,
    // nor any answer of the server's (only the proxy's 403, or nothing).
    let prober = std::process::Command::new("docker")
        .args(["exec", &a.app2.name, "sh", "-c"])
        .arg(format!(
            "for k in 1 2 3 4; do (while [ ! -e /tmp/l7-stop ]; do \
               if out=$(timeout 1 wget -qO- {restricted} 2>&1); then echo leak; \
               elif echo \"$out\" | grep -q 'HTTP/1.. 403'; then echo refused; \
               elif echo \"$out\" | grep -q 'HTTP/'; then echo leak; else echo refused; fi; \
               sleep 0.1; done) & sleep 0.03; done; wait"
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    env.kill_daemon();
    // While it is down: nothing reaches the port, allowed or not.
    for url in [&index, &restricted, &index] {
        let got = env.http_request(&a.app2, url, 3, &[]);
        assert!(
            matches!(got, HttpOutcome::Failed(_)),
            "{url} while the daemon is down: {got:?}"
        );
    }
    let started = Instant::now();
    env.start_daemon();
    let mut back = None;
    while started.elapsed() < Duration::from_secs(10) {
        if matches!(
            env.http_request(&a.app2, &index, 2, &[]),
            HttpOutcome::Ok(_)
        ) {
            back = Some(started.elapsed());
            break;
        }
    }
    let back = back.expect("service came back after the restart");
    eprintln!(
        "l7: served again {} ms after the daemon's start (its docker sync included)",
        back.as_millis()
    );
    assert_eq!(
        env.http_get(&a.app2, &restricted),
        HttpOutcome::Status(403),
        "never reachable after the restart"
    );
    std::thread::sleep(Duration::from_millis(300));
    env.exec_must(&a.app2, &["touch", "/tmp/l7-stop"]);
    let probes = prober.wait_with_output().unwrap();
    let probes = String::from_utf8_lossy(&probes.stdout);
    let leaks = probes.lines().filter(|l| *l == "leak").count();
    let tries = probes.lines().count();
    assert_eq!(
        leaks, 0,
        "/restricted was served {leaks} times in {tries} tries around the kill and restart"
    );
    assert!(tries >= 20, "the prober ran: {tries} tries");
    eprintln!("l7: /restricted refused {tries} times around the kill and the restart");
    let (allowed, _) = env.check_http(&a.app2, &a.app1, 80, "GET /restricted/", &[]);
    assert!(!allowed, "policy check agrees after the restart");
    let after = env.drops_by_reason();
    let moved = after.get("l7-proxy-unavailable").copied().unwrap_or(0)
        - before.get("l7-proxy-unavailable").copied().unwrap_or(0);
    assert!(
        moved >= 3,
        "the sk_lookup program counted its drops: {before:?} -> {after:?}"
    );
}

/// Every request the proxy decides is a `monitor` record (the 403'd one
/// naming both containers, their labels, the path and the deny rule) and a
/// Prometheus count: `bpfwall_policy_l7_total` moves by exactly the
/// requests made. Monitor filters apply to these records too.
#[test]
fn l7_requests_in_monitor_and_metrics() {
    use bpfwall_e2e::{parse_prometheus, scrape_metrics};
    let port = bpfwall_e2e::free_loopback_port();
    let addr = format!("127.0.0.1:{port}");
    let mut env = TestEnv::with_daemon_args("l7p-mon", &["--metrics-addr", &addr]);
    let net = env.network("n");
    let netopt = format!("--network={net}");
    let app1 = env.start_attached(
        "app1",
        &[
            &netopt,
            "--label",
            "id=app1",
            "--label",
            "bpfwall.ingress=allow from id=app2 port 80/tcp; deny from any port 80/tcp http * /admin(/.*)?",
        ],
        &site(),
    );
    let app2 = env.start_attached("app2", &[&netopt, "--label", "id=app2"], SLEEP);
    env.wait_proxy_ready(&app1);
    let l7 = |m: &std::collections::BTreeMap<String, f64>, rule: &str| {
        m.get(&format!(
            "bpfwall_policy_l7_total{{rule=\"{rule}\",direction=\"ingress\"}}"
        ))
        .copied()
        .unwrap_or_else(|| panic!("no bpfwall_policy_l7_total for {rule}: {m:?}"))
    };
    let before = parse_prometheus(&scrape_metrics(&addr));
    let denied = env.monitor(&["--json", "--verdict", "denied", "--container", &app1.name]);
    let allowed = env.monitor(&["--json", "--verdict", "allowed", "--port", "80"]);
    let other_port = env.monitor(&["--json", "--port", "8080"]);
    let by_app3 = env.monitor(&["--json", "--container", "id=app3"]);
    let human = env.monitor(&["--verdict", "denied"]);
    let host = &app1.name;
    for _ in 0..3 {
        assert_eq!(
            env.http_get(&app2, &format!("http://{host}/public/")),
            HttpOutcome::Ok("public\n".into())
        );
    }
    for _ in 0..2 {
        assert_eq!(
            env.http_get(&app2, &format!("http://{host}/admin/x")),
            HttpOutcome::Status(403)
        );
    }
    let r = denied
        .wait_for(Duration::from_secs(10), |r| r["type"] == "flow")
        .unwrap_or_else(|| panic!("no denied request record: {}", env.daemon_log()));
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(r["direction"], "ingress", "{r}");
    assert_eq!(r["container"], app1.name.as_str(), "{r}");
    assert_eq!(r["source"]["container"], app2.name.as_str(), "{r}");
    assert_eq!(r["source"]["labels"]["id"], "app2", "{r}");
    assert_eq!(r["destination"]["container"], app1.name.as_str(), "{r}");
    assert_eq!(r["destination"]["labels"]["id"], "app1", "{r}");
    assert_eq!(r["protocol"], "tcp", "{r}");
    assert_eq!(r["port"], 80, "{r}");
    assert_eq!(r["http"]["method"], "GET", "{r}");
    assert_eq!(r["http"]["path"], "/admin/x", "{r}");
    assert_eq!(r["rule"], "bpfwall.ingress[1]", "{r}");
    assert!(
        r["summary"].as_str().unwrap().contains("/admin(/.*)?"),
        "{r}"
    );
    let a = allowed
        .wait_for(Duration::from_secs(10), |r| r["http"]["path"] == "/public/")
        .expect("an allowed request record");
    assert_eq!(a["rule"], "bpfwall.ingress[0]", "{a}");
    assert_eq!(a["source"]["container"], app2.name.as_str(), "{a}");
    // Filters: no denied record in the allowed stream, nothing on 8080,
    // nothing of a container that took no part.
    assert!(denied.records().iter().all(|r| r["verdict"] == "denied"));
    assert!(allowed
        .records()
        .iter()
        .all(|r| r["verdict"] == "allowed" && r["port"] == 80));
    assert!(
        other_port.records().is_empty(),
        "{:?}",
        other_port.records()
    );
    assert!(by_app3.records().is_empty(), "{:?}", by_app3.records());
    let start = Instant::now();
    while !human.lines().iter().any(|l| {
        l.contains("DENIED  ingress")
            && l.contains(&format!(" {} (", app2.name))
            && l.contains("id=app2) -> ")
            && l.contains("tcp/80 http GET /admin/x: http denied by bpfwall.ingress[1]")
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no such line in {:#?}",
            human.lines()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Exact counts, whatever the records' rate limit kept.
    let after = parse_prometheus(&scrape_metrics(&addr));
    assert_eq!(l7(&after, "allowed") - l7(&before, "allowed"), 3.0);
    assert_eq!(l7(&after, "denied") - l7(&before, "denied"), 2.0);
    assert_eq!(l7(&after, "parse_errors"), l7(&before, "parse_errors"));
    // A malformed request is a parse error.
    let answer = env.raw_tcp(
        &app2,
        host,
        80,
        "printf 'GET /public/ HTTP/1.1\\r\\nHost: a\\r\\nBad Header\\r\\n\\r\\n'",
        5,
    );
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    let last = parse_prometheus(&scrape_metrics(&addr));
    assert_eq!(l7(&last, "parse_errors") - l7(&after, "parse_errors"), 1.0);
}
