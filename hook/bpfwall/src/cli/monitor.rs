//! `bpfwall monitor`: the daemon's flow records, live, filtered by the
//! daemon; one line each for people, or one JSON object a line (`--json`).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use bpfwall_sys::io_error;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::agent::policy_watch::utc_text;
use crate::api::flow::{FlowPeer, FlowRecord, MonitorFilter, MonitorRecord};
use crate::api::{Answer, Request};

fn time_text(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let millis = unix_ns / 1_000_000 % 1000;
    let t = utc_text(secs);
    // 2026-11-26T06:34:04Z -> 06:34:04.123
    let clock = t.split('T').nth(1).unwrap_or(&t).trim_end_matches('Z');
    format!("{clock}.{millis:03}")
}

fn end_text(end: &FlowPeer) -> String {
    let mut out = end.display_name();
    if !end.labels.is_empty() {
        let labels: Vec<String> = end.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(out, " ({})", labels.join(","));
    }
    out
}

/// One flow record as a person reads it.
pub fn flow_line(f: &FlowRecord) -> String {
    let mut out = format!(
        "{} {:<7} {:<7} {} -> {} {}/{}",
        time_text(f.time_unix_ns),
        f.verdict.to_uppercase(),
        f.direction,
        end_text(&f.source),
        end_text(&f.destination),
        f.protocol,
        f.port
    );
    if let Some(h) = &f.http {
        let _ = write!(out, " http {} {}", h.method, h.path);
    }
    let _ = write!(out, ": {}", f.summary);
    if f.suppressed > 0 {
        let _ = write!(out, " (+{} like it)", f.suppressed);
    }
    out
}

/// One record as a person reads it.
pub fn line(record: &MonitorRecord) -> String {
    match record {
        MonitorRecord::Flow(f) => flow_line(f),
        MonitorRecord::LostEvents {
            time_unix_ns,
            count,
            source,
        } => format!(
            "{} LOST    {count} events ({})",
            time_text(*time_unix_ns),
            match source.as_str() {
                "monitor" => "this monitor read too slowly",
                "proxy" => "the http proxy's table of request keys was full",
                _ => "the datapath's ring buffer was full",
            }
        ),
    }
}

/// Streams until the daemon goes away (or the process is interrupted).
pub async fn run(socket: &Path, filter: MonitorFilter, json: bool) -> anyhow::Result<ExitCode> {
    filter.validate().map_err(anyhow::Error::msg)?;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(io_error("connect to the bpfwall daemon at", socket))?;
    let (read, mut write) = stream.into_split();
    let mut request = serde_json::to_string(&Request::Monitor(filter))?;
    request.push('\n');
    write
        .write_all(request.as_bytes())
        .await
        .map_err(io_error("write to", socket))?;
    let mut lines = BufReader::new(read).lines();
    let first = lines
        .next_line()
        .await
        .map_err(io_error("read from", socket))?
        .context("the daemon closed the connection")?;
    match serde_json::from_str::<Answer>(&first)
        .with_context(|| format!("bad answer from the daemon: {first}"))?
    {
        Answer::Monitoring { events_enabled } => {
            if !events_enabled {
                eprintln!("bpfwall monitor: the daemon runs with --no-flow-events: only lost-event records will come");
            }
        }
        Answer::Error { message, .. } => anyhow::bail!("daemon: {message}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
    let mut out = tokio::io::stdout();
    while let Some(text) = lines
        .next_line()
        .await
        .map_err(io_error("read from", socket))?
    {
        let shown = if json {
            text
        } else {
            match serde_json::from_str::<MonitorRecord>(&text) {
                Ok(r) => line(&r),
                Err(e) => format!("(a record this client cannot read: {e})"),
            }
        };
        if out
            .write_all(format!("{shown}\n").as_bytes())
            .await
            .is_err()
        {
            // stdout closed (a pipe to head): done.
            return Ok(ExitCode::SUCCESS);
        }
        let _ = out.flush().await;
    }
    Ok(ExitCode::SUCCESS)
}
