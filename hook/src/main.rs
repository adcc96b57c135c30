//! bpfwall: label-selected L3/L4 policy for Docker containers, enforced by eBPF.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bpfwall::api::{self, Answer, Request};
use bpfwall::daemon::{self, DaemonConfig};
use clap::{Parser, Subcommand};

const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/bpfwall_v1";

#[derive(Debug, Parser)]
#[command(
    name = "bpfwall",
    version,
    about = "Label-selected L3/L4 policy for Docker containers, enforced by eBPF"
)]
struct Cli {
    /// More logging (-v info for every change, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Daemon {
        /// dockerd's API socket.
        #[arg(long, default_value = "/var/run/docker.sock")]
        docker_socket: String,
        /// Where maps and links are pinned (on bpffs).
        #[arg(long, default_value = DEFAULT_PIN_ROOT)]
        bpffs_root: PathBuf,
        /// The daemon's API socket.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Attach only to containers with these labels (KEY=VALUE, repeatable);
        /// every container is still a peer. Default: all containers.
        #[arg(long = "manage-label", value_name = "KEY=VALUE")]
        manage_label: Vec<String>,
        /// Host-wide Cilium-format policy files (JSON or YAML), reloaded on change.
        #[arg(long, default_value = bpfwall::policy_dir::DEFAULT_POLICY_DIR)]
        policy_dir: PathBuf,
    },
    /// Validate, check and explain policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show managed containers, their policy state and counters.
    Status {
        /// The daemon's API socket.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The OCI createRuntime hook (added by bpfwall-runc): policed before the first instruction.
    OciHook {
        /// The daemon's API socket.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Docker's data root (container labels are read from it).
        #[arg(long, default_value = "/var/lib/docker")]
        docker_root: PathBuf,
        /// Let the container start when the daemon is unreachable or refuses.
        #[arg(long)]
        fail_open: bool,
    },
    /// Register bpfwall-runc with Docker (daemon.json) and reload dockerd.
    InstallRuntime {
        /// The runtime's name (`docker run --runtime NAME`).
        #[arg(long, default_value = "bpfwall")]
        name: String,
        /// Make it Docker's default runtime (every `docker run`).
        #[arg(long)]
        default: bool,
        /// The daemon's API socket the hook talks to.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Start containers even when bpfwall cannot police them (off by default).
        #[arg(long)]
        fail_open: bool,
        /// Docker's daemon.json.
        #[arg(long, default_value = "/etc/docker/daemon.json")]
        daemon_json: PathBuf,
        /// dockerd's pid file (SIGHUP reloads daemon.json).
        #[arg(long, default_value = "/var/run/docker.pid")]
        docker_pid_file: PathBuf,
        /// dockerd's API socket (to see the reload take effect).
        #[arg(long, default_value = "/var/run/docker.sock")]
        docker_socket: String,
    },
    /// Undo exactly what install-runtime did, and reload dockerd.
    UninstallRuntime {
        /// The runtime's name.
        #[arg(long, default_value = "bpfwall")]
        name: String,
        /// Docker's daemon.json.
        #[arg(long, default_value = "/etc/docker/daemon.json")]
        daemon_json: PathBuf,
        /// dockerd's pid file.
        #[arg(long, default_value = "/var/run/docker.pid")]
        docker_pid_file: PathBuf,
        /// dockerd's API socket (to see the reload take effect).
        #[arg(long, default_value = "/var/run/docker.sock")]
        docker_socket: String,
    },
    /// Detach everything and remove all pins (uninstall). Stop the daemon first.
    Teardown {
        /// The pin root to remove.
        #[arg(long, default_value = DEFAULT_PIN_ROOT)]
        bpffs_root: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check policy files or a label without applying them (exit 0 valid, 2 not).
    Validate {
        /// Policy files (JSON or YAML).
        files: Vec<PathBuf>,
        /// A label KEY=VALUE, as given to `docker run --label`.
        #[arg(long, value_name = "KEY=VALUE")]
        label: Vec<String>,
    },
    /// Would a new connection pass, and which rule decides? Exit 0 allowed, 1 denied, 2 error.
    Check {
        /// The sending container (name or id).
        #[arg(
            long,
            conflicts_with = "from_cidr",
            required_unless_present = "from_cidr"
        )]
        from: Option<String>,
        /// The sending address, outside the containers.
        #[arg(long, value_name = "ADDRESS")]
        from_cidr: Option<String>,
        /// The receiving container (name or id).
        #[arg(long, conflicts_with = "to_cidr", required_unless_present = "to_cidr")]
        to: Option<String>,
        /// The receiving address, outside the containers.
        #[arg(long, value_name = "ADDRESS")]
        to_cidr: Option<String>,
        /// PORT/tcp, PORT/udp, or icmp (an echo request).
        #[arg(long)]
        port: String,
        /// The daemon's API socket.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A container's identity, the rules that select it and its effective table.
    Explain {
        /// The container (name or id).
        container: String,
        /// The daemon's API socket.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--port` of `policy check`: (protocol number, port or ICMP type).
fn parse_check_port(text: &str) -> anyhow::Result<(u8, u16)> {
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

fn flow_end(
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

fn validate(files: &[PathBuf], labels: &[String]) -> anyhow::Result<ExitCode> {
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

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,bpfwall=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BPFWALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn parse_manage(labels: &[String]) -> anyhow::Result<labels_policy::Selector> {
    let mut sel = labels_policy::Selector::default();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--manage-label '{l}': expected KEY=VALUE"))?;
        sel.match_labels.insert(k.to_string(), v.to_string());
    }
    Ok(sel)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Daemon {
            docker_socket,
            bpffs_root,
            socket,
            manage_label,
            policy_dir,
        } => {
            daemon::run(DaemonConfig {
                docker_socket,
                pin_root: bpffs_root,
                api_socket: socket,
                manage: parse_manage(&manage_label)?,
                policy_dir,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { socket, json } => match api::call(&socket, &Request::Status).await? {
            Answer::Status(s) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print!("{}", s.render());
                }
                Ok(ExitCode::SUCCESS)
            }
            Answer::Error { message } => anyhow::bail!("daemon: {message}"),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        },
        Command::Policy(PolicyCommand::Validate { files, label }) => validate(&files, &label),
        Command::Policy(PolicyCommand::Check {
            from,
            from_cidr,
            to,
            to_cidr,
            port,
            socket,
            json,
        }) => {
            let (protocol, port_number) = parse_check_port(&port)?;
            let request = Request::Check {
                from: flow_end(from, from_cidr, "from")?,
                to: flow_end(to, to_cidr, "to")?,
                protocol,
                port: port_number,
            };
            match api::call(&socket, &request).await? {
                Answer::Check(result) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&result)?);
                    } else {
                        println!(
                            "{} on {port}",
                            if result.allowed { "ALLOWED" } else { "DENIED" }
                        );
                        for s in &result.sides {
                            println!("  {} of {}: {}", s.direction, s.container, s.reason);
                        }
                    }
                    Ok(if result.allowed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
                Answer::Error { message } => anyhow::bail!("{message}"),
                other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
            }
        }
        Command::Policy(PolicyCommand::Explain {
            container,
            socket,
            json,
        }) => match api::call(&socket, &Request::Explain { container }).await? {
            Answer::Explain(e) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&e)?);
                } else {
                    print!("{}", bpfwall::status::render_explanation(&e));
                }
                Ok(ExitCode::SUCCESS)
            }
            Answer::Error { message } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        },
        Command::OciHook {
            socket,
            docker_root,
            fail_open,
        } => Ok(bpfwall::oci_hook::run(&socket, &docker_root, fail_open).await),
        Command::InstallRuntime {
            name,
            default,
            socket,
            fail_open,
            daemon_json,
            docker_pid_file,
            docker_socket,
        } => {
            bpfwall::runtime_install::install(&bpfwall::runtime_install::InstallOptions {
                name: name.clone(),
                default,
                socket,
                fail_open,
                daemon_json: daemon_json.clone(),
            })?;
            bpfwall::runtime_install::reload_dockerd(&docker_pid_file)?;
            bpfwall::runtime_install::wait_for_runtime(&docker_socket, &name, true).await?;
            println!(
                "registered runtime '{name}' in {}{}; dockerd reloaded",
                daemon_json.display(),
                if default { " as the default" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::UninstallRuntime {
            name,
            daemon_json,
            docker_pid_file,
            docker_socket,
        } => {
            let pending = bpfwall::runtime_install::uninstall(&name, &daemon_json)?;
            bpfwall::runtime_install::reload_dockerd(&docker_pid_file)?;
            bpfwall::runtime_install::wait_for_runtime(&docker_socket, &name, false).await?;
            bpfwall::runtime_install::finish_uninstall(pending)?;
            println!(
                "removed runtime '{name}' from {}; dockerd reloaded",
                daemon_json.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Teardown { bpffs_root } => {
            bpfwall::datapath::remove_pins(&bpffs_root)?;
            println!("removed {}", bpffs_root.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    // Installed as `bpfwall-runc`: the runtime wrapper, before any parsing.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        == Some(bpfwall::runtime_wrapper::WRAPPER_NAME)
    {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let e = bpfwall::runtime_wrapper::run(&args);
        eprintln!("bpfwall-runc: {}", bpfwall::docker_events::format_chain(&e));
        return ExitCode::from(1);
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bpfwall: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpfwall: {e:#}");
            ExitCode::from(2)
        }
    }
}
