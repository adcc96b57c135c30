//! `bpfwall-runc`: a runtime Docker runs in place of runc. Every runc
//! command passes through unchanged (the process execs runc); on `create`
//! (and `run`) it first adds a createRuntime hook to the bundle's
//! config.json that runs `bpfwall oci-hook`, so the container is policed
//! before its first instruction.
//!
//! Its own settings come as leading `--bpfwall-*` arguments (Docker's
//! `runtimeArgs` in daemon.json), which it removes before exec'ing runc:
//! `--bpfwall-socket=PATH`, `--bpfwall-fail-open`, `--bpfwall-runc=PATH`,
//! `--bpfwall-docker-root=PATH`.

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
    let mut settings = WrapperSettings {
        socket: crate::api::DEFAULT_SOCKET.to_string(),
        fail_open: false,
        runc: "runc".to_string(),
        docker_root: "/var/lib/docker".to_string(),
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
    if settings.fail_open {
        args.push("--fail-open".to_string());
    }
    json!({ "path": exe.display().to_string(), "args": args, "timeout": 30 })
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
    let (settings, runc_args) = split_args(args);
    if let Some(bundle) = bundle_of(&runc_args) {
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
