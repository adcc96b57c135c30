//! `bpfwall policy validate` and the arguments of `policy check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::api;

/// `--port` of `policy check`: (protocol number, port or ICMP type).
pub(super) fn parse_check_port(text: &str) -> anyhow::Result<(u8, u16)> {
    use labels_policy::datapath_abi as abi;
    if text == "icmp" {
        return Ok((abi::IPPROTO_ICMP, 8));
    }
    let (port, proto) = text
        .split_once('/')
        .with_context(|| format!("--port '{text}': expected PORT/tcp, PORT/udp or icmp"))?;
    let protocol = match proto {
        "tcp" => abi::IPPROTO_TCP,
        "udp" => abi::IPPROTO_UDP,
        _ => anyhow::bail!("--port '{text}': protocol must be tcp or udp (or use icmp)"),
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("--port '{text}': '{port}' is not a port from 1 to 65535"))?;
    Ok((protocol, port))
}

/// `--http 'METHOD TARGET'` and `--header 'Name: value'` of `policy check`.
pub(super) fn parse_check_http(text: &str, headers: &[String]) -> anyhow::Result<api::HttpCheck> {
    let mut words = text.split_whitespace();
    let (Some(method), Some(target), None) = (words.next(), words.next(), words.next()) else {
        anyhow::bail!("--http '{text}': expected 'METHOD TARGET', such as 'GET /restricted/x'");
    };
    let headers = headers
        .iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("--header '{h}': expected 'Name: value'"))?;
            Ok((name.trim().to_string(), value.trim().to_string()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(api::HttpCheck {
        method: method.to_string(),
        target: target.to_string(),
        headers,
    })
}

pub(super) fn flow_end(
    container: Option<String>,
    cidr: Option<String>,
    flag: &str,
) -> anyhow::Result<api::FlowEndArg> {
    match (container, cidr) {
        (Some(c), None) => Ok(api::FlowEndArg::Container(c)),
        (None, Some(a)) => {
            let net = labels_policy::syntax::parse_prefix(&a)
                .map_err(|expected| anyhow::anyhow!("--{flag}-cidr '{a}': expected {expected}"))?;
            Ok(api::FlowEndArg::Address(net.network()))
        }
        _ => anyhow::bail!("give --{flag} CONTAINER or --{flag}-cidr ADDRESS"),
    }
}

pub(super) fn validate(files: &[PathBuf], labels: &[String]) -> anyhow::Result<ExitCode> {
    use labels_policy::syntax::cilium::{parse_policy_file, Format};
    if files.is_empty() && labels.is_empty() {
        anyhow::bail!("give policy files, or --label KEY=VALUE");
    }
    let mut bad = 0;
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {name}"))?;
        match parse_policy_file(&text, Format::from_path(&name), &name) {
            Ok(p) => println!(
                "{name}: valid ({} policies, {} rules)",
                p.len(),
                p.iter().map(|p| p.rules.len()).sum::<usize>()
            ),
            Err(e) => {
                println!("{e}");
                bad += 1;
            }
        }
    }
    for label in labels {
        let (key, value) = label
            .split_once('=')
            .with_context(|| format!("--label '{label}': expected KEY=VALUE"))?;
        if !key.starts_with(labels_policy::syntax::LABEL_PREFIX) {
            anyhow::bail!("--label '{key}': not a bpfwall label (bpfwall.ingress, bpfwall.egress, bpfwall.policy)");
        }
        let set = labels_policy::LabelSet::from([(key.to_string(), value.to_string())]);
        let parsed = labels_policy::policy_from_labels(&set);
        if parsed.errors.is_empty() {
            println!("label '{key}': valid ({} rules)", parsed.rules.len());
        }
        for e in parsed.errors {
            println!("{e}");
            bad += 1;
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
