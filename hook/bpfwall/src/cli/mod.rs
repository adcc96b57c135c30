//! The `bpfwall` command line: the daemon, the policy tools, status, the
//! OCI hook and the runtime installers. It parses, calls, prints; the work
//! is done in `crate::agent` (the daemon), `crate::runtime` and the
//! daemon's API.

mod advise;
mod hooks;
pub mod monitor;
mod network_plugin;
mod observe;
mod policy;
pub mod render;
pub mod service_map;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::agent::reconciler::ReconcilerConfig;
use crate::agent::{self, DaemonConfig};
use crate::api::{self, Answer, Request};

const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/bpfwall_v1";

#[derive(Debug, Parser)]
#[command(
    name = "bpfwall",
    version,
    about = "Label-selected L3/L4 policy for Docker containers, enforced by eBPF"
)]
pub struct Cli {
    /// More logging (-v info for every change, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// How the daemon polices: identities, map sizes, conntrack shares.
#[derive(Debug, clap::Args)]
struct PolicingArgs {
    /// Leave this label out of identities as well (KEY, or a prefix ending
    /// in '*'; repeatable). Compose's per-replica labels and image
    /// annotations are left out by default (docs/design.md, Identities).
    #[arg(long, value_name = "KEY")]
    identity_exclude_label: Vec<String>,
    /// Put this label back into identities (one of the default exclusions).
    #[arg(long, value_name = "KEY")]
    identity_keep_label: Vec<String>,
    /// Count the labels a container has only from its image in its
    /// identity (left out by default).
    #[arg(long)]
    identity_include_image_labels: bool,
    /// Entries of each policy map (default 524288); for small hosts and tests.
    #[arg(long, value_name = "N")]
    policy_map_entries: Option<u32>,
    /// Entries of the conntrack map (default 524288).
    #[arg(long, value_name = "N")]
    conntrack_entries: Option<u32>,
    /// Conntrack entries one container may hold at most.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    conntrack_per_endpoint: u32,
    /// Conntrack entries every container may take however full the map is.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    conntrack_guaranteed: u32,
}

impl PolicingArgs {
    fn reconciler(&self, manage: labels_policy::Selector) -> ReconcilerConfig {
        let mut identity_labels = labels_policy::identity::IdentityLabels::default();
        identity_labels
            .exclude
            .retain(|k| !self.identity_keep_label.contains(k));
        identity_labels
            .exclude
            .extend(self.identity_exclude_label.iter().cloned());
        identity_labels.include_image_labels = self.identity_include_image_labels;
        ReconcilerConfig {
            manage,
            identity_labels,
            ct_per_endpoint: self.conntrack_per_endpoint,
            ct_guaranteed: self.conntrack_guaranteed,
            audit: false,
        }
    }

    fn map_sizes(&self) -> bpfwall_datapath::MapSizes {
        bpfwall_datapath::MapSizes {
            policy: self.policy_map_entries,
            conntrack: self.conntrack_entries,
            events_ring: None,
        }
    }
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process: boxing the daemon's arguments would buy nothing"
)]
enum Command {
    /// Run the daemon in the foreground.
    Daemon {
        /// dockerd's API socket.
        #[arg(long, default_value = "/var/run/docker.sock")]
        docker_socket: String,
        /// containerd's API socket: containers of every namespace but
        /// Docker's (`moby`). Absent: the containerd source is off, said in
        /// the log and in `status`, and watched for.
        #[arg(long, default_value = crate::runtime::containerd::DEFAULT_SOCKET)]
        containerd_socket: String,
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
        #[arg(long, default_value = crate::agent::policy_watch::DEFAULT_POLICY_DIR)]
        policy_dir: PathBuf,
        /// What the daemon keeps across restarts: the last good version of
        /// each policy file (root-only).
        #[arg(long, default_value = crate::agent::policy_store::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[command(flatten)]
        policing: PolicingArgs,
        #[command(flatten)]
        network_plugin: network_plugin::NetworkPluginArgs,
        #[command(flatten)]
        observe: observe::ObserveArgs,
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
        /// The socket of the containerd that creates the container (added by
        /// bpfwall-runc under a containerd shim): labels are read from it.
        #[arg(long, requires = "containerd_namespace")]
        containerd_socket: Option<String>,
        /// The container's containerd namespace.
        #[arg(long, requires = "containerd_socket")]
        containerd_namespace: Option<String>,
        /// podman runs the hook (from the hooks.d file): labels are read
        /// from podman's database.
        #[arg(long)]
        podman: bool,
        /// podman's graph root (its database and images).
        #[arg(long, default_value = crate::runtime::podman::DEFAULT_GRAPH_ROOT)]
        podman_root: PathBuf,
        /// Let the container start when the daemon is unreachable or refuses.
        #[arg(long)]
        fail_open: bool,
    },
    /// Install the OCI hook for podman (a hooks.d file): every podman
    /// container is policed from its first instruction.
    InstallHook(hooks::InstallHookArgs),
    /// Remove exactly what install-hook wrote.
    UninstallHook(hooks::UninstallHookArgs),
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
    /// Live flows: time, verdict, direction, source -> destination, port, rule or drop reason.
    Monitor {
        /// Only flows of this container (a name), or of containers with
        /// these labels (KEY=VALUE[,KEY=VALUE]), at either end.
        #[arg(long, value_name = "NAME|SELECTOR")]
        container: Option<String>,
        /// Only allowed, dropped or audit flows, or HTTP requests the proxy
        /// denied (denied; allowed ones are allowed).
        #[arg(long)]
        verdict: Option<String>,
        /// Only ingress or egress.
        #[arg(long)]
        direction: Option<String>,
        /// Only this destination port (ICMP: type).
        #[arg(long)]
        port: Option<u16>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
        /// The daemon's API socket.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The least allow policy for what a container was seen doing.
    Advise {
        /// The container (name or id).
        container: String,
        /// labels (--label flags), compose (an override file) or cilium (a policy file).
        #[arg(long, value_enum, default_value = "labels")]
        format: advise::Format,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
        /// The daemon's API socket.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Who talks to whom, as learned from traffic: a list, an SVG or DOT.
    Map {
        /// Write the graph as SVG to this file.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Write the graph as DOT to this file.
        #[arg(long, value_name = "FILE")]
        dot: Option<PathBuf>,
        /// Print the edges as JSON.
        #[arg(long)]
        json: bool,
        /// The daemon's API socket.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Detach everything and remove all pins (uninstall). Refused while a daemon runs on them.
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
        /// An HTTP request on the connection, 'METHOD TARGET' (such as
        /// 'GET /restricted/x'): answered with the HTTP rule that decides it.
        #[arg(long, value_name = "METHOD TARGET")]
        http: Option<String>,
        /// A header of that request, 'Name: value' (repeatable; 'Host: ...'
        /// sets the host).
        #[arg(long, value_name = "NAME: VALUE", requires = "http")]
        header: Vec<String>,
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

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Daemon {
            docker_socket,
            containerd_socket,
            bpffs_root,
            socket,
            manage_label,
            policy_dir,
            state_dir,
            policing,
            network_plugin,
            observe,
        } => {
            let observe_config = observe.config()?;
            let mut reconciler = policing.reconciler(parse_manage(&manage_label)?);
            reconciler.audit = observe.audit;
            agent::run(DaemonConfig {
                docker_socket,
                containerd_socket,
                pin_root: bpffs_root,
                api_socket: socket,
                reconciler,
                map_sizes: bpfwall_datapath::MapSizes {
                    events_ring: observe.flow_event_ring_bytes,
                    ..policing.map_sizes()
                },
                policy_dir,
                state_dir,
                network_plugin: network_plugin.config(),
                observe: observe_config,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { socket, json } => match api::call(&socket, &Request::Status).await? {
            Answer::Status(s) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print!("{}", render::status(&s));
                }
                Ok(ExitCode::SUCCESS)
            }
            Answer::Error { message, .. } => anyhow::bail!("daemon: {message}"),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        },
        Command::Policy(PolicyCommand::Validate { files, label }) => {
            policy::validate(&files, &label)
        }
        Command::Policy(PolicyCommand::Check {
            from,
            from_cidr,
            to,
            to_cidr,
            port,
            http,
            header,
            socket,
            json,
        }) => {
            let (protocol, port_number) = policy::parse_check_port(&port)?;
            let request = Request::Check {
                from: policy::flow_end(from, from_cidr, "from")?,
                to: policy::flow_end(to, to_cidr, "to")?,
                protocol,
                port: port_number,
                http: http
                    .as_deref()
                    .map(|h| policy::parse_check_http(h, &header))
                    .transpose()?,
            };
            match api::call(&socket, &request).await? {
                Answer::Check(result) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&result)?);
                    } else {
                        println!(
                            "{} on {port}{}",
                            if result.allowed { "ALLOWED" } else { "DENIED" },
                            http.as_deref()
                                .map(|h| format!(": {h}"))
                                .unwrap_or_default()
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
                Answer::Error { message, .. } => anyhow::bail!("{message}"),
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
                    print!("{}", render::explanation(&e));
                }
                Ok(ExitCode::SUCCESS)
            }
            Answer::Error { message, .. } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        },
        Command::OciHook {
            socket,
            docker_root,
            containerd_socket,
            containerd_namespace,
            podman,
            podman_root,
            fail_open,
        } => {
            let sources = crate::runtime::oci_hook::LabelSources {
                docker_root,
                containerd: containerd_socket.zip(containerd_namespace),
                podman: podman.then(|| crate::runtime::podman::PodmanStore::new(&podman_root)),
            };
            Ok(crate::runtime::oci_hook::run(&socket, &sources, fail_open).await)
        }
        Command::InstallHook(args) => hooks::install(args),
        Command::UninstallHook(args) => hooks::uninstall(args),
        Command::InstallRuntime {
            name,
            default,
            socket,
            fail_open,
            daemon_json,
            docker_pid_file,
            docker_socket,
        } => {
            crate::runtime::install::install(&crate::runtime::install::InstallOptions {
                name: name.clone(),
                default,
                socket,
                fail_open,
                daemon_json: daemon_json.clone(),
            })?;
            crate::runtime::install::reload_dockerd(&docker_pid_file)?;
            crate::runtime::install::wait_for_runtime(&docker_socket, &name, true).await?;
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
            let pending = crate::runtime::install::uninstall(&name, &daemon_json)?;
            crate::runtime::install::reload_dockerd(&docker_pid_file)?;
            crate::runtime::install::wait_for_runtime(&docker_socket, &name, false).await?;
            crate::runtime::install::finish_uninstall(pending)?;
            println!(
                "removed runtime '{name}' from {}; dockerd reloaded",
                daemon_json.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Monitor {
            container,
            verdict,
            direction,
            port,
            json,
            socket,
        } => {
            let filter = crate::api::flow::MonitorFilter {
                container,
                verdict,
                direction,
                port,
            };
            monitor::run(&socket, filter, json).await
        }
        Command::Advise {
            container,
            format,
            json,
            socket,
        } => observe::advise(&socket, container, format, json).await,
        Command::Map {
            svg,
            dot,
            json,
            socket,
        } => observe::map(&socket, svg, dot, json).await,
        Command::Teardown { bpffs_root } => {
            // Never under a running daemon: hold its lock while removing.
            let _lock = crate::agent::instance_lock::InstanceLock::acquire(
                std::path::Path::new(crate::agent::instance_lock::LOCK_DIR),
                &bpffs_root,
            )?;
            bpfwall_datapath::remove_pins(&bpffs_root)?;
            println!("removed {}", bpffs_root.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
