//! bpfwall: label-selected L3/L4 policy for container hosts, enforced by
//! eBPF. Installed as `bpfwall-runc`, the same binary is the runtime
//! wrapper; otherwise it is the command line (`bpfwall::cli`).

use std::process::ExitCode;

use clap::Parser as _;

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

fn main() -> ExitCode {
    // Installed as `bpfwall-runc`: the runtime wrapper, before any parsing.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        == Some(bpfwall::runtime::runc_wrapper::WRAPPER_NAME)
    {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let e = bpfwall::runtime::runc_wrapper::run(&args);
        eprintln!("bpfwall-runc: {}", bpfwall_sys::error_chain(&e));
        return ExitCode::from(1);
    }
    let cli = bpfwall::cli::Cli::parse();
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
    match runtime.block_on(bpfwall::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpfwall: {e:#}");
            ExitCode::from(2)
        }
    }
}
