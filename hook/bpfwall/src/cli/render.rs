//! What the CLI prints for people (`--json` prints the API's own types).

use std::fmt::Write as _;

use crate::agent::policy_watch::utc_text;
use crate::api::{Status, VersionInForce};

/// `bpfwall status` as a person reads it.
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bpfwall: {} endpoints, {} policy entries, {} ipcache entries, docker {}, pins in {}",
        s.endpoints.len(),
        s.policy_entries,
        s.ipcache_entries,
        match (s.docker_connected, s.docker_synced) {
            (true, true) => "connected, synced",
            (true, false) => "connected, NOT SYNCED yet",
            (false, _)
                if s.sources
                    .iter()
                    .any(|src| src.source == "docker" && src.state.starts_with("off")) =>
            {
                "off"
            }
            (false, _) => "DISCONNECTED, NOT SYNCED",
        },
        s.pin_root
    );
    for source in &s.sources {
        if source.synced {
            let _ = writeln!(out, "{}: {}", source.source, source.state);
        } else if source.state.starts_with("off") {
            // Absent runtimes are said, not shouted: nothing of theirs runs.
            let _ = writeln!(out, "{}: {}", source.source, source.state);
        } else {
            let _ = writeln!(
                out,
                "NOT SYNCED with {}: {}; containers it starts meanwhile are not policed until it is (unless started with bpfwall-runc or the OCI hook)",
                source.source, source.state
            );
        }
    }
    if s.sources.is_empty() && !s.docker_synced {
        let _ = writeln!(
            out,
            "NOT SYNCED with docker: containers started meanwhile are not policed until it is (unless started with bpfwall-runc)"
        );
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "last reconcile FAILED: {e}");
    }
    if s.audit_all {
        let _ = writeln!(
            out,
            "AUDIT MODE (--audit): policy drops are reported and pass, for every container"
        );
    }
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    for e in &s.policy_dir_errors {
        let _ = writeln!(out, "ERROR policy directory: {e}");
    }
    for f in &s.policy_files {
        match &f.error {
            None if f.in_force == VersionInForce::Saved => {
                let _ = writeln!(
                    out,
                    "policy file {}: {} specs, the last good version saved by an earlier run (from {}): the file was not read",
                    f.file,
                    f.specs,
                    f.in_force_since_unix.map_or_else(|| "an unknown time".to_string(), utc_text)
                );
            }
            None => {
                let _ = writeln!(out, "policy file {}: {} specs", f.file, f.specs);
            }
            Some(e) => {
                let _ = writeln!(out, "ERROR policy file {e}");
            }
        }
        if let Some(e) = &f.save_error {
            let _ = writeln!(out, "ERROR saving policy file {}: {e}", f.file);
        }
    }
    for ep in &s.endpoints {
        let _ = writeln!(
            out,
            "\n{} ({}) identity {}{} [{}]",
            ep.name,
            ep.id,
            ep.identity,
            if ep.attached { "" } else { " NOT ATTACHED" },
            ep.addresses.join(", ")
        );
        if ep.mode == "audit" {
            let _ = writeln!(
                out,
                "  mode    AUDIT: what its policy would drop is reported and passes"
            );
        }
        if !ep.runtime.is_empty() {
            let _ = writeln!(
                out,
                "  runtime {}{}",
                ep.runtime,
                if ep.namespace.is_empty() {
                    String::new()
                } else {
                    format!(", namespace {}", ep.namespace)
                }
            );
        }
        for (k, v) in &ep.labels {
            let _ = writeln!(out, "  label {k}={v}");
        }
        for (name, d) in [("ingress", &ep.ingress), ("egress", &ep.egress)] {
            let http = if d.http_allowed + d.http_denied > 0 || ep.proxy.is_some() {
                format!(
                    "   http allowed {} denied {}",
                    d.http_allowed, d.http_denied
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {name:<7} {:<20} rules {:<3} allowed {:<8} dropped {}{http}",
                d.state, d.rules, d.allowed_packets, d.dropped_packets
            );
        }
        if let Some(p) = &ep.proxy {
            let ports: Vec<String> = p.ports.iter().map(|p| format!("{p}/tcp")).collect();
            match &p.error {
                None => {
                    let _ = writeln!(
                        out,
                        "  http proxy on {} {}",
                        ports.join(","),
                        if p.ready { "ready" } else { "NOT READY" }
                    );
                }
                Some(e) => {
                    let _ = writeln!(out, "  ERROR http proxy: {e}");
                }
            }
        }
        for e in &ep.errors {
            let _ = writeln!(out, "  ERROR {e}");
        }
    }
    let drops: Vec<String> = s
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if !drops.is_empty() {
        let _ = writeln!(out, "\ndrops: {}", drops.join(" "));
    }
    if let Some(p) = &s.network_plugin {
        network_plugin(&mut out, p);
    }
    let closed: Vec<String> = s
        .proxy_closed
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if !closed.is_empty() {
        let _ = writeln!(out, "http proxy closed: {}", closed.join(" "));
    }
    out
}

/// The network plugin's part of `status`.
fn network_plugin(out: &mut String, p: &bpfwall_plugin::PluginStatus) {
    let _ = writeln!(
        out,
        "\nnetwork plugin {} ({}): {} networks",
        p.name,
        p.socket,
        p.networks.len()
    );
    for n in &p.networks {
        let mut what = Vec::new();
        if n.default_deny {
            what.push("default deny");
        }
        if n.internal {
            what.push("internal");
        }
        let _ = writeln!(
            out,
            "  network {} ({}) {}{}",
            n.name.as_deref().unwrap_or("?"),
            n.id.get(..12).unwrap_or(&n.id),
            n.subnets.join(", "),
            if what.is_empty() {
                String::new()
            } else {
                format!(" [{}]", what.join(", "))
            }
        );
        for e in &n.endpoints {
            let _ = writeln!(
                out,
                "    endpoint {} {} [{}] {}: {}",
                e.id.get(..12).unwrap_or(&e.id),
                e.interface.as_deref().unwrap_or("-"),
                e.addresses.join(", "),
                e.container.as_deref().unwrap_or("-"),
                e.reason
            );
        }
    }
    let drops: Vec<String> = p
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if !drops.is_empty() {
        let _ = writeln!(out, "  gate drops: {}", drops.join(" "));
    }
    for e in &p.errors {
        let _ = writeln!(out, "  ERROR {e}");
    }
}

/// `bpfwall policy explain` as a person reads it.
pub fn explanation(e: &labels_policy::query::Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} identity {}{}",
        e.container,
        e.identity,
        if e.attached {
            ""
        } else {
            " (NOT ATTACHED: not policed)"
        }
    );
    for err in &e.errors {
        let _ = writeln!(out, "  ERROR {err}");
    }
    for d in &e.directions {
        let _ = writeln!(out, "{}: {}", d.direction, d.state);
        for r in &d.rules {
            let who = if r.matching_containers.is_empty() {
                String::new()
            } else {
                format!(" [now: {}]", r.matching_containers.join(", "))
            };
            let http = if r.http.is_empty() {
                String::new()
            } else {
                format!(" http {}", r.http.join(" | "))
            };
            let _ = writeln!(
                out,
                "  {:<5} {}{} port {}{http}   ({})",
                r.verdict, r.peers, who, r.ports, r.origin
            );
        }
    }
    out
}
