//! `bpfwall-runc`: a runtime Docker runs in place of runc. Every runc
//! command passes through unchanged (the process execs runc); on `create`
//! (and `run`) it first adds a createRuntime hook to the bundle's
//! config.json that runs `bpfwall oci-hook`, so the container is policed
//! before its first instruction.
//!
//! Its own settings come as leading `--bpfwall-*` arguments (Docker's
//! `runtimeArgs` in daemon.json), which it removes before exec'ing runc:
//! `--bpfwall-socket=PATH`, `--bpfwall-fail-open`, `--bpfwall-runc=PATH`,
//! `--bpfwall-docker-root=PATH`. containerd's `ctr run --runc-binary`
//! passes no arguments: there the settings not given come from the
//! environment containerd gives its shims (`BPFWALL_SOCKET`,
//! `BPFWALL_RUNC`, `BPFWALL_FAIL_OPEN=1`), else the defaults.
//!
//! Run by a containerd shim (its parent's command line is
//! `containerd-shim-runc-v2 -namespace NS ... -address SOCKET`), the hook
//! it adds is told that containerd's socket and the container's namespace,
//! so it reads the container's labels from containerd itself.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use bpfwall_sys::{io_error, IoError};
use serde_json::{json, Value};

/// The name the wrapper is installed under (a link to the bpfwall binary).
pub const WRAPPER_NAME: &str = "bpfwall-runc";

/// Settings taken from the leading `--bpfwall-*` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapperSettings {
    /// The daemon's API socket, for the hook.
    pub socket: String,
    /// Let containers start when the hook cannot enforce.
    pub fail_open: bool,
    /// The real runc.
    pub runc: String,
    /// Docker's data root, where the hook reads container labels.
    pub docker_root: String,
    /// The containerd that runs the wrapper (its shim's parent): its
    /// socket and the container's namespace.
    pub containerd: Option<(String, String)>,
}

/// Errors of the wrapper.
#[derive(Debug, thiserror::Error)]
pub enum WrapperError {
    /// The bundle's config.json could not be read or written.
    #[error(transparent)]
    Bundle(#[from] IoError),
    /// config.json is not JSON of the OCI shape.
    #[error("{path} is not an OCI runtime config")]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// runc could not be executed.
    #[error("cannot exec {runc}")]
    Exec {
        /// The runc path.
        runc: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Splits the wrapper's own leading arguments from runc's.
pub fn split_args(args: &[String]) -> (WrapperSettings, Vec<String>) {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut settings = WrapperSettings {
        socket: env("BPFWALL_SOCKET").unwrap_or_else(|| crate::api::DEFAULT_SOCKET.to_string()),
        fail_open: env("BPFWALL_FAIL_OPEN").is_some_and(|v| v == "1"),
        runc: env("BPFWALL_RUNC").unwrap_or_else(|| "runc".to_string()),
        docker_root: "/var/lib/docker".to_string(),
        containerd: None,
    };
    let mut rest = Vec::new();
    for a in args {
        if let Some(v) = a.strip_prefix("--bpfwall-socket=") {
            settings.socket = v.to_string();
        } else if a == "--bpfwall-fail-open" {
            settings.fail_open = true;
        } else if let Some(v) = a.strip_prefix("--bpfwall-runc=") {
            settings.runc = v.to_string();
        } else if let Some(v) = a.strip_prefix("--bpfwall-docker-root=") {
            settings.docker_root = v.to_string();
        } else {
            rest.push(a.clone());
        }
    }
    (settings, rest)
}

/// runc global options that take a value (everything before the command).
const GLOBAL_WITH_VALUE: &[&str] = &["--root", "--log", "--log-format", "--criu", "--rootless"];

/// For `create` and `run`: the bundle directory (`--bundle`, `-b`, or the
/// working directory). None for every other command.
pub fn bundle_of(runc_args: &[String]) -> Option<PathBuf> {
    let mut i = 0;
    // Skip global options to find the command.
    while i < runc_args.len() && runc_args[i].starts_with('-') {
        let a = &runc_args[i];
        i += if GLOBAL_WITH_VALUE.contains(&a.as_str()) {
            2
        } else {
            1
        };
    }
    let command = runc_args.get(i)?;
    if command != "create" && command != "run" {
        return None;
    }
    let rest = &runc_args[i + 1..];
    for (j, a) in rest.iter().enumerate() {
        if a == "--bundle" || a == "-b" {
            return rest.get(j + 1).map(PathBuf::from);
        }
        if let Some(v) = a
            .strip_prefix("--bundle=")
            .or_else(|| a.strip_prefix("-b="))
        {
            return Some(PathBuf::from(v));
        }
    }
    std::env::current_dir().ok()
}

/// The hook entry the wrapper adds.
pub fn hook_entry(exe: &Path, settings: &WrapperSettings) -> Value {
    let mut args = vec![
        exe.display().to_string(),
        "oci-hook".to_string(),
        "--socket".to_string(),
        settings.socket.clone(),
        "--docker-root".to_string(),
        settings.docker_root.clone(),
    ];
    if let Some((socket, namespace)) = &settings.containerd {
        args.extend([
            "--containerd-socket".to_string(),
            socket.clone(),
            "--containerd-namespace".to_string(),
            namespace.clone(),
        ]);
    }
    if settings.fail_open {
        args.push("--fail-open".to_string());
    }
    json!({ "path": exe.display().to_string(), "args": args, "timeout": 30 })
}

/// The containerd shim's `-namespace` and `-address` from its command line
/// (the shim runs runc, so the wrapper's parent), if the parent is one.
pub fn containerd_shim_origin(parent_cmdline: &[String]) -> Option<(String, String)> {
    let value = |flag: &str| {
        parent_cmdline
            .iter()
            .position(|a| a == flag || a == &format!("-{flag}"))
            .and_then(|i| parent_cmdline.get(i + 1))
            .cloned()
    };
    let is_shim = parent_cmdline
        .first()
        .is_some_and(|a| a.contains("containerd-shim"));
    if !is_shim {
        return None;
    }
    Some((value("-address")?, value("-namespace")?))
}

/// The wrapper's parent's command line.
fn parent_cmdline() -> Vec<String> {
    let path = format!("/proc/{}/cmdline", std::os::unix::process::parent_id());
    std::fs::read(path)
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Adds the hook to a bundle's config.json (atomically), once.
pub fn add_hook(bundle: &Path, exe: &Path, settings: &WrapperSettings) -> Result<(), WrapperError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(io_error("read", &path))?;
    let mut config: Value =
        serde_json::from_slice(&text).map_err(|source| WrapperError::Config {
            path: path.clone(),
            source,
        })?;
    let entry = hook_entry(exe, settings);
    let Some(root) = config.as_object_mut() else {
        return Err(WrapperError::Config {
            path,
            source: serde::de::Error::custom("the top level is not an object"),
        });
    };
    let hooks = root.entry("hooks").or_insert_with(|| json!({}));
    let list = hooks
        .as_object_mut()
        .map(|h| h.entry("createRuntime").or_insert_with(|| json!([])));
    if let Some(Value::Array(list)) = list {
        if !list
            .iter()
            .any(|h| h["args"].get(1) == Some(&json!("oci-hook")))
        {
            list.push(entry);
        }
    }
    let tmp = bundle.join(".config.json.bpfwall");
    let out = serde_json::to_vec(&config).map_err(|source| WrapperError::Config {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&tmp, out).map_err(io_error("write", &tmp))?;
    std::fs::rename(&tmp, &path)
        .map_err(io_error("replace", &path))
        .map_err(WrapperError::from)
}

/// The wrapper's main: patch the bundle if this is a create, then exec runc.
/// Returns only on failure.
pub fn run(args: &[String]) -> WrapperError {
    let (mut settings, runc_args) = split_args(args);
    if let Some(bundle) = bundle_of(&runc_args) {
        settings.containerd = containerd_shim_origin(&parent_cmdline());
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        if let Err(e) = add_hook(&bundle, &exe, &settings) {
            return e;
        }
    }
    let source = Command::new(&settings.runc).args(&runc_args).exec();
    WrapperError::Exec {
        runc: settings.runc,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn finds_the_bundle_of_create_only() {
        let create = v(&[
            "--root",
            "/r",
            "--log",
            "/l.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "id1",
        ]);
        assert_eq!(bundle_of(&create), Some(PathBuf::from("/b")));
        assert_eq!(
            bundle_of(&v(&["run", "-b=/x", "id"])),
            Some(PathBuf::from("/x"))
        );
        assert_eq!(bundle_of(&v(&["--root", "/r", "start", "id1"])), None);
        assert_eq!(
            bundle_of(&v(&["--root", "/r", "exec", "--process", "/p.json", "id1"])),
            None
        );
        assert_eq!(bundle_of(&v(&["--version"])), None);
    }

    #[test]
    fn knows_a_containerd_shim_by_its_command_line() {
        let shim = v(&[
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "default",
            "-id",
            "web",
            "-address",
            "/run/containerd/containerd.sock",
        ]);
        assert_eq!(
            containerd_shim_origin(&shim),
            Some((
                "/run/containerd/containerd.sock".to_string(),
                "default".to_string()
            ))
        );
        assert_eq!(
            containerd_shim_origin(&v(&["/usr/bin/conmon", "-namespace", "x", "-address", "y"])),
            None
        );
        assert_eq!(
            containerd_shim_origin(&v(&["containerd-shim-runc-v2", "-namespace", "x"])),
            None
        );
    }

    #[test]
    fn strips_its_own_arguments() {
        let (s, rest) = split_args(&v(&[
            "--bpfwall-socket=/s",
            "--bpfwall-fail-open",
            "--root",
            "/r",
            "state",
            "x",
        ]));
        assert_eq!(s.socket, "/s");
        assert!(s.fail_open);
        assert_eq!(s.runc, "runc");
        assert_eq!(rest, v(&["--root", "/r", "state", "x"]));
    }

    #[test]
    fn adds_the_hook_once_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("bpfwall-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"ociVersion":"1.0.2","hooks":{"prestart":[{"path":"/x"}]},"process":{"args":["sh"]}}"#).unwrap();
        let (settings, _) = split_args(&v(&["--bpfwall-socket=/s"]));
        add_hook(&dir, Path::new("/usr/bin/bpfwall"), &settings).unwrap();
        add_hook(&dir, Path::new("/usr/bin/bpfwall"), &settings).unwrap();
        let c: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(c["hooks"]["prestart"][0]["path"], "/x");
        assert_eq!(c["process"]["args"][0], "sh");
        let hooks = c["hooks"]["createRuntime"].as_array().unwrap();
        assert_eq!(hooks.len(), 1);
        assert_eq!(
            hooks[0]["args"],
            json!([
                "/usr/bin/bpfwall",
                "oci-hook",
                "--socket",
                "/s",
                "--docker-root",
                "/var/lib/docker"
            ])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
