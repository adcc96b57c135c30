//! The daemon's network plugin flags.

use std::path::PathBuf;

use clap::Args;

use crate::agent::network_plugin::{NetworkPluginConfig, DEFAULT_NAME, DEFAULT_SOCKET_DIR};

/// `bpfwall daemon`'s flags for the Docker network plugin.
#[derive(Debug, Args)]
pub struct NetworkPluginArgs {
    /// The network driver's name (`docker network create -d NAME`); the
    /// daemon serves <plugin-dir>/NAME.sock.
    #[arg(long = "network-plugin", default_value = DEFAULT_NAME, value_name = "NAME")]
    name: String,
    /// Docker's plugin socket directory.
    #[arg(long = "plugin-dir", default_value = DEFAULT_SOCKET_DIR)]
    socket_dir: PathBuf,
    /// Do not serve the network plugin.
    #[arg(long = "no-network-plugin", conflicts_with = "name")]
    off: bool,
}

impl NetworkPluginArgs {
    /// The plugin's configuration, None when it is off.
    pub fn config(&self) -> Option<NetworkPluginConfig> {
        (!self.off).then(|| NetworkPluginConfig {
            name: self.name.clone(),
            socket_dir: self.socket_dir.clone(),
        })
    }
}
