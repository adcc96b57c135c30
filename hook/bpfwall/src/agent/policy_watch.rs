//! Host-wide policy files: every `*.json`, `*.yaml` and `*.yml` file of a
//! directory (default /etc/bpfwall/policies), polled a few times a second.
//! A file that fails to parse is rejected whole and its last good version
//! stays in force; the error (file:line:column) goes to the log and to
//! `status`.
//!
//! The watcher runs as a task of its own ([`watch`]): it hands the policies
//! in force to the reconcile loop whenever they change, and publishes the
//! files' state for `status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use labels_policy::syntax::cilium::{parse_policy_file, Format, PolicyError};
use labels_policy::HostPolicy;

use crate::api::FileStatus;

/// The default policy directory.
pub const DEFAULT_POLICY_DIR: &str = "/etc/bpfwall/policies";

#[derive(Debug, Default)]
struct FileState {
    /// The content last read (to notice changes).
    content: Vec<u8>,
    /// The last version that parsed.
    good: Option<Vec<HostPolicy>>,
    /// The current content's error, if it does not parse.
    error: Option<PolicyError>,
}

/// The policy directory and what was read from it.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

fn is_policy_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("json" | "yaml" | "yml")
    ) && p.is_file()
}

impl PolicyDir {
    /// A directory not read yet.
    pub fn new(dir: &Path) -> Self {
        PolicyDir {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    /// Reads changed, new and removed files. Returns true when the policies
    /// in force or the errors changed.
    pub fn poll(&mut self) -> bool {
        let mut seen = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if is_policy_file(&path) {
                    seen.push(path);
                }
            }
        }
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains(p));
        if self.files.len() != before {
            changed = true;
            tracing::info!(dir = %self.dir.display(), "policy file removed");
        }
        for path in seen {
            let Ok(content) = std::fs::read(&path) else {
                continue;
            };
            let state = self.files.entry(path.clone()).or_default();
            if state.content == content && (state.good.is_some() || state.error.is_some()) {
                continue;
            }
            changed = true;
            state.content = content;
            let name = path.display().to_string();
            let text = String::from_utf8_lossy(&state.content);
            match parse_policy_file(&text, Format::from_path(&name), &name) {
                Ok(policies) => {
                    tracing::info!(file = %name, specs = policies.len(), "policy file loaded");
                    state.good = Some(policies);
                    state.error = None;
                }
                Err(e) => {
                    tracing::error!(file = %name, line = e.line, column = e.column, error = %e,
                        kept_previous = state.good.is_some(), "policy file rejected");
                    state.error = Some(e);
                }
            }
        }
        changed
    }

    /// Every policy in force, file by file.
    pub fn policies(&self) -> Vec<HostPolicy> {
        self.files
            .values()
            .filter_map(|f| f.good.as_ref())
            .flat_map(|p| p.iter().cloned())
            .collect()
    }

    /// Per-file state for `status`.
    pub fn status(&self) -> Vec<FileStatus> {
        self.files
            .iter()
            .map(|(p, f)| FileStatus {
                file: p.display().to_string(),
                specs: f.good.as_ref().map_or(0, Vec::len),
                error: f.error.as_ref().map(|e| {
                    if f.good.is_some() {
                        format!("{e} (the previous version stays in force)")
                    } else {
                        format!("{e} (nothing from this file is in force)")
                    }
                }),
            })
            .collect()
    }
}

/// Reads the directory every `every`; on a change, hands the policies in
/// force to the reconcile loop and publishes the files' state. Returns when
/// the loop is gone.
pub async fn run(
    mut dir: PolicyDir,
    every: std::time::Duration,
    inputs: std::sync::mpsc::Sender<super::reconcile_loop::Input>,
    files: tokio::sync::watch::Sender<Vec<FileStatus>>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if dir.poll() {
            files.send_replace(dir.status());
            if inputs
                .send(super::reconcile_loop::Input::HostPolicies(dir.policies()))
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_good_version() {
        let dir = std::env::temp_dir().join(format!("bpfwall-policy-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.yaml");
        let mut pd = PolicyDir::new(&dir);
        assert!(!pd.poll());
        std::fs::write(
            &file,
            "endpointSelector: {}\ningress: [{fromEntities: [host]}]\n",
        )
        .unwrap();
        std::fs::write(dir.join("ignored.txt"), "not a policy").unwrap();
        assert!(pd.poll());
        assert_eq!(pd.policies().len(), 1);
        assert!(!pd.poll(), "no change, no reload");
        std::fs::write(
            &file,
            "endpointSelector: {}\ningress: [{fromEntities: [cluster]}]\n",
        )
        .unwrap();
        assert!(pd.poll());
        assert_eq!(pd.policies().len(), 1, "the last good version stays");
        let status = pd.status();
        let err = status[0].error.as_ref().unwrap();
        assert!(
            err.contains("a.yaml:2:") && err.contains("cluster") && err.contains("stays in force"),
            "{err}"
        );
        std::fs::remove_file(&file).unwrap();
        assert!(pd.poll());
        assert!(pd.policies().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
