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
    },
    /// Show managed containers, their policy state and counters.
    Status {
        /// The daemon's API socket.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Detach everything and remove all pins (uninstall). Stop the daemon first.
    Teardown {
        /// The pin root to remove.
        #[arg(long, default_value = DEFAULT_PIN_ROOT)]
        bpffs_root: PathBuf,
    },
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
        } => {
            daemon::run(DaemonConfig {
                docker_socket,
                pin_root: bpffs_root,
                api_socket: socket,
                manage: parse_manage(&manage_label)?,
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
        },
        Command::Teardown { bpffs_root } => {
            bpfwall::datapath::remove_pins(&bpffs_root)?;
            println!("removed {}", bpffs_root.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
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
