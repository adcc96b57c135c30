//! `bpfwall install-hook --podman` and `uninstall-hook --podman`: the OCI
//! hooks.d file podman reads (`runtime::hooks_d`).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::api;
use crate::runtime::hooks_d::{self, HookFile};

/// `install-hook`'s arguments.
#[derive(Debug, clap::Args)]
pub struct InstallHookArgs {
    /// Install the hook for podman (the only runtime that reads hooks.d here).
    #[arg(long, required = true)]
    podman: bool,
    /// The hooks directory podman reads.
    #[arg(long, default_value = hooks_d::DEFAULT_HOOKS_DIR)]
    hooks_dir: PathBuf,
    /// The file's name (`<name>.json`).
    #[arg(long, default_value = "bpfwall")]
    name: String,
    /// The daemon's API socket the hook talks to.
    #[arg(long, default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// podman's graph root (its database and images).
    #[arg(long, default_value = crate::runtime::podman::DEFAULT_GRAPH_ROOT)]
    podman_root: PathBuf,
    /// Start containers even when bpfwall cannot police them (off by default).
    #[arg(long)]
    fail_open: bool,
}

/// `uninstall-hook`'s arguments.
#[derive(Debug, clap::Args)]
pub struct UninstallHookArgs {
    /// Remove podman's hook.
    #[arg(long, required = true)]
    podman: bool,
    /// The hooks directory.
    #[arg(long, default_value = hooks_d::DEFAULT_HOOKS_DIR)]
    hooks_dir: PathBuf,
    /// The file's name (`<name>.json`).
    #[arg(long, default_value = "bpfwall")]
    name: String,
}

/// Writes the hook file.
pub fn install(args: InstallHookArgs) -> anyhow::Result<ExitCode> {
    let _ = args.podman;
    let exe = std::env::current_exe()?;
    let path = hooks_d::install(&HookFile {
        dir: args.hooks_dir,
        name: args.name,
        exe,
        socket: args.socket,
        podman_root: args.podman_root,
        fail_open: args.fail_open,
    })?;
    println!(
        "wrote {}: every podman container is policed before its first instruction",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes it.
pub fn uninstall(args: UninstallHookArgs) -> anyhow::Result<ExitCode> {
    let _ = args.podman;
    let removed = hooks_d::uninstall(&args.hooks_dir, &args.name)?;
    if removed.is_empty() {
        println!("no bpfwall hook in {}", args.hooks_dir.display());
    }
    for path in removed {
        println!("removed {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
