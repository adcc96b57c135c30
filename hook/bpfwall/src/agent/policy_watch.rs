//! Host-wide policy files: every `*.json`, `*.yaml` and `*.yml` file of a
//! directory (default /etc/bpfwall/policies), polled a few times a second.
//!
//! What is in force never goes away by accident:
//! - a file that fails to parse (or to be read) is rejected whole and its
//!   last good version stays in force; the error (file:line:column) goes to
//!   the log and to `status`;
//! - the last good version of every file is saved ([`PolicyStore`]), so a
//!   file that is broken when the daemon starts keeps the version that was
//!   in force before the restart, and `status` says so;
//! - a directory that cannot be read (EACCES, EIO, not a directory...) is
//!   an error that keeps every file's version in force as it was; it is
//!   never read as empty. A directory that does not exist holds no files
//!   while nothing is in force (a fresh host); once something is (read
//!   earlier, or saved by an earlier run), its absence is such an error
//!   too: remove the files, not the directory, to take policies away;
//! - a file removed from a directory that can be read leaves force, and
//!   its saved version is deleted.
//!
//! The watcher runs as a task of its own ([`run`]): it hands the policies
//! in force to the reconcile loop whenever they change, and publishes the
//! files' state for `status`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bpfwall_sys::{error_chain, IoError};
use labels_policy::syntax::cilium::{parse_policy_file, Format};
use labels_policy::HostPolicy;

use super::policy_store::PolicyStore;
use crate::api::{FileStatus, VersionInForce};

/// The default policy directory.
pub const DEFAULT_POLICY_DIR: &str = "/etc/bpfwall/policies";

/// A version of a file that parsed.
#[derive(Debug, Clone)]
struct Good {
    policies: Vec<HostPolicy>,
    /// When it was read (unix seconds).
    read_unix: u64,
    /// Saved by an earlier run of the daemon, and not read by this one.
    from_earlier_run: bool,
}

#[derive(Debug, Default)]
struct FileState {
    /// The content last read (to notice changes); None until read.
    content: Option<Vec<u8>>,
    /// The last version that parsed: the one in force.
    good: Option<Good>,
    /// The text saved in the store, as far as this run knows.
    saved: Option<String>,
    /// The current content's error: it does not parse, or cannot be read.
    error: Option<String>,
    /// Saving the good version failed.
    save_error: Option<String>,
}

/// What `status` shows of the policy directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDirStatus {
    /// Each file.
    pub files: Vec<FileStatus>,
    /// The directory's own problems, and the store's.
    pub errors: Vec<String>,
}

/// The policy directory and what was read from it.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    store: PolicyStore,
    files: BTreeMap<PathBuf, FileState>,
    /// The directory cannot be read.
    dir_error: Option<String>,
    /// Saved versions that cannot be used, and saved versions that could
    /// not be deleted.
    store_errors: BTreeMap<PathBuf, String>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A unix time as people read it: `2025-11-26T04:57:03Z`.
pub fn utc_text(unix: u64) -> String {
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn has_policy_extension(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("json" | "yaml" | "yml")
    )
}

fn parse(path: &Path, text: &str) -> Result<Vec<HostPolicy>, String> {
    let name = path.display().to_string();
    parse_policy_file(text, Format::from_path(&name), &name).map_err(|e| e.to_string())
}

impl PolicyDir {
    /// The directory, with the versions an earlier run saved in `store`
    /// in force until the directory is read. Err only when the store
    /// cannot be listed: the daemon must not start without the versions
    /// it saved.
    pub fn open(dir: &Path, store: PolicyStore) -> Result<PolicyDir, IoError> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let (saved, problems) = store.load(&dir)?;
        let mut files = BTreeMap::new();
        for version in saved {
            match parse(&version.source, &version.content) {
                Ok(policies) => {
                    tracing::info!(file = %version.source.display(), saved = %version.saved_as.display(),
                        read = %utc_text(version.read_unix), "saved last good version of a policy file");
                    files.insert(
                        version.source,
                        FileState {
                            good: Some(Good {
                                policies,
                                read_unix: version.read_unix,
                                from_earlier_run: true,
                            }),
                            saved: Some(version.content),
                            ..FileState::default()
                        },
                    );
                }
                Err(e) => {
                    // Saved by a daemon whose parser accepted it: this one
                    // does not. Nothing of it can be in force.
                    tracing::error!(file = %version.source.display(), saved = %version.saved_as.display(), error = %e,
                        "a saved policy version does not parse");
                    files.insert(
                        version.source,
                        FileState {
                            saved: Some(version.content),
                            ..FileState::default()
                        },
                    );
                }
            }
        }
        let mut store_errors = BTreeMap::new();
        for p in problems {
            let path = match &p {
                super::policy_store::PolicyStoreError::Io(e) => e.path.clone(),
                super::policy_store::PolicyStoreError::Decode { path, .. } => path.clone(),
            };
            let msg = format!("{}: it is not used", error_chain(&p));
            tracing::error!(error = %msg, "a saved policy version cannot be used");
            store_errors.insert(path, msg);
        }
        Ok(PolicyDir {
            dir,
            store,
            files,
            dir_error: None,
            store_errors,
        })
    }

    /// The policy files in the directory, or why it cannot be listed.
    fn list(&self) -> Result<BTreeSet<PathBuf>, std::io::Error> {
        let mut present = BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if !has_policy_extension(&path) {
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    present.insert(path);
                }
                Ok(_) => {}
                // Removed since the listing, or a dangling link: not there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // There, but unreadable: the read below says why, and its
                // version in force stays.
                Err(_) => {
                    present.insert(path);
                }
            }
        }
        Ok(present)
    }

    /// Reads changed, new and removed files. Returns true when the policies
    /// in force or what `status` shows changed.
    pub fn poll(&mut self) -> bool {
        let present = match self.list() {
            Ok(present) => present,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.files.is_empty() => {
                // Nothing in force, nothing to keep: no files.
                return self.dir_error.take().is_some();
            }
            Err(e) => {
                let msg = format!(
                    "cannot read the policy directory {}: {e}; every file's version in force stays ({} files)",
                    self.dir.display(),
                    self.files.len()
                );
                if self.dir_error.as_deref() == Some(msg.as_str()) {
                    return false;
                }
                tracing::error!(dir = %self.dir.display(), error = %e, files_kept = self.files.len(),
                    "cannot read the policy directory: keeping every policy in force");
                self.dir_error = Some(msg);
                return true;
            }
        };
        let mut changed = self.dir_error.take().is_some();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for path in gone {
            changed = true;
            self.files.remove(&path);
            tracing::info!(file = %path.display(), "policy file removed: its policies leave force");
            match self.store.remove(&path) {
                Ok(()) => {
                    self.store_errors.remove(&self.store.path_for(&path));
                }
                Err(e) => {
                    let msg = format!(
                        "{}: the removed file {} would be back in force after a restart until it is deleted",
                        error_chain(&e),
                        path.display()
                    );
                    tracing::error!(file = %path.display(), error = %msg, "cannot delete a saved policy version");
                    self.store_errors.insert(e.path.clone(), msg);
                }
            }
        }
        for path in present {
            changed |= self.read_one(path);
        }
        changed
    }

    /// Reads one file that is there. Returns true when anything changed.
    fn read_one(&mut self, path: PathBuf) -> bool {
        let state = self.files.entry(path.clone()).or_default();
        let content = match std::fs::read(&path) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("{}: cannot read it: {e}", path.display());
                if state.error.as_deref() == Some(msg.as_str()) {
                    return false;
                }
                tracing::error!(file = %path.display(), error = %e, kept_previous = state.good.is_some(),
                    "cannot read a policy file");
                state.error = Some(msg);
                // Read again once it can be, even if its content is the same.
                state.content = None;
                return true;
            }
        };
        if state.content.as_ref() == Some(&content) {
            return false;
        }
        state.content = Some(content);
        let text =
            String::from_utf8_lossy(state.content.as_deref().unwrap_or_default()).into_owned();
        match parse(&path, &text) {
            Ok(policies) => {
                tracing::info!(file = %path.display(), specs = policies.len(), "policy file loaded");
                let read_unix = now_unix();
                state.good = Some(Good {
                    policies,
                    read_unix,
                    from_earlier_run: false,
                });
                state.error = None;
                if state.saved.as_deref() != Some(text.as_str()) {
                    match self.store.save(&path, read_unix, &text) {
                        Ok(saved_as) => {
                            tracing::debug!(file = %path.display(), saved = %saved_as.display(), "saved the last good version");
                            // Over whatever was there, damaged or not.
                            self.store_errors.remove(&saved_as);
                            state.saved = Some(text);
                            state.save_error = None;
                        }
                        Err(e) => {
                            let msg = format!(
                                "{}: this version would not survive a restart of the daemon",
                                error_chain(&e)
                            );
                            tracing::error!(file = %path.display(), error = %msg, "cannot save the last good version");
                            state.save_error = Some(msg);
                        }
                    }
                } else {
                    state.save_error = None;
                }
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e,
                    kept_previous = state.good.is_some(), "policy file rejected");
                state.error = Some(e);
            }
        }
        true
    }

    /// Every policy in force, file by file.
    pub fn policies(&self) -> Vec<HostPolicy> {
        self.files
            .values()
            .filter_map(|f| f.good.as_ref())
            .flat_map(|g| g.policies.iter().cloned())
            .collect()
    }

    /// What `status` shows.
    pub fn status(&self) -> PolicyDirStatus {
        let files = self
            .files
            .iter()
            .map(|(p, f)| {
                let in_force = match (&f.good, &f.content) {
                    (None, _) => VersionInForce::Nothing,
                    (Some(g), _) if g.from_earlier_run => VersionInForce::Saved,
                    (Some(_), Some(_)) if f.error.is_none() => VersionInForce::Current,
                    (Some(_), _) => VersionInForce::LastGood,
                };
                let kept = |g: &Good| match in_force {
                    VersionInForce::Saved => format!(
                        "kept the last good version from {}, saved by an earlier run in {}: it stays in force",
                        utc_text(g.read_unix),
                        self.store.path_for(p).display()
                    ),
                    _ => format!(
                        "the previous version stays in force: the last good version, read at {}",
                        utc_text(g.read_unix)
                    ),
                };
                let error = f.error.as_ref().map(|e| match &f.good {
                    Some(g) => format!("{e} ({})", kept(g)),
                    None => format!("{e} (nothing from this file is in force)"),
                });
                FileStatus {
                    file: p.display().to_string(),
                    specs: f.good.as_ref().map_or(0, |g| g.policies.len()),
                    error,
                    in_force,
                    in_force_since_unix: f.good.as_ref().map(|g| g.read_unix),
                    save_error: f.save_error.clone(),
                }
            })
            .collect();
        PolicyDirStatus {
            files,
            errors: self
                .dir_error
                .iter()
                .chain(self.store_errors.values())
                .cloned()
                .collect(),
        }
    }
}

/// Reads the directory every `every`; on a change, hands the policies in
/// force to the reconcile loop and publishes the files' state. Returns when
/// the loop is gone.
pub async fn run(
    mut dir: PolicyDir,
    every: std::time::Duration,
    inputs: std::sync::mpsc::Sender<super::input::Input>,
    files: tokio::sync::watch::Sender<PolicyDirStatus>,
) {
    let mut tick = tokio::time::interval(every);
    let mut in_force = dir.policies();
    loop {
        tick.tick().await;
        if dir.poll() {
            files.send_replace(dir.status());
            let now = dir.policies();
            if now == in_force {
                continue;
            }
            in_force = now.clone();
            if inputs.send(super::input::Input::HostPolicies(now)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "endpointSelector: {}\ningress: [{fromEntities: [host]}]\n";
    const WORLD: &str = "endpointSelector: {}\ningress: [{fromEntities: [world]}]\n";
    const BROKEN: &str = "endpointSelector: {}\ningress: [{fromEntities: [cluster]}]\n";

    /// A policy directory and a state directory of the test's own.
    struct Dirs {
        root: PathBuf,
        policies: PathBuf,
        state: PathBuf,
    }

    impl Dirs {
        fn new(name: &str) -> Dirs {
            let root =
                std::env::temp_dir().join(format!("bpfwall-policy-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let dirs = Dirs {
                policies: root.join("policies"),
                state: root.join("state"),
                root,
            };
            std::fs::create_dir_all(&dirs.policies).unwrap();
            dirs
        }

        /// A daemon starting: the saved versions, then a first poll.
        fn start(&self) -> PolicyDir {
            let mut pd =
                PolicyDir::open(&self.policies, PolicyStore::open(&self.state).unwrap()).unwrap();
            pd.poll();
            pd
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.policies.join(name), text).unwrap();
        }

        fn saved_versions(&self) -> usize {
            std::fs::read_dir(self.state.join("policies"))
                .unwrap()
                .count()
        }
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn error_of(pd: &PolicyDir, file: &str) -> String {
        pd.status()
            .files
            .iter()
            .find(|f| f.file.ends_with(file))
            .and_then(|f| f.error.clone())
            .unwrap_or_default()
    }

    #[test]
    fn keeps_the_last_good_version() {
        let d = Dirs::new("keeps");
        let file = d.policies.join("a.yaml");
        let mut pd = d.start();
        assert!(!pd.poll());
        d.write("a.yaml", HOST);
        d.write("ignored.txt", "not a policy");
        assert!(pd.poll());
        assert_eq!(pd.policies().len(), 1);
        assert_eq!(pd.status().files[0].in_force, VersionInForce::Current);
        assert!(!pd.poll(), "no change, no reload");
        d.write("a.yaml", BROKEN);
        assert!(pd.poll());
        assert_eq!(pd.policies().len(), 1, "the last good version stays");
        let status = pd.status();
        assert_eq!(status.files[0].in_force, VersionInForce::LastGood);
        let err = error_of(&pd, "a.yaml");
        assert!(
            err.contains("a.yaml:2:") && err.contains("cluster") && err.contains("stays in force"),
            "{err}"
        );
        std::fs::remove_file(&file).unwrap();
        assert!(pd.poll());
        assert!(pd.policies().is_empty());
    }

    #[test]
    fn a_file_broken_while_the_daemon_was_stopped_keeps_its_saved_version() {
        let d = Dirs::new("restart");
        d.write("a.yaml", HOST);
        let pd = d.start();
        assert_eq!(pd.policies().len(), 1);
        assert_eq!(d.saved_versions(), 1, "the good version is saved");
        drop(pd);

        // Stopped; the file breaks; started again.
        d.write("a.yaml", BROKEN);
        let mut pd = d.start();
        assert_eq!(
            pd.policies(),
            PolicyDir::open(&d.policies, PolicyStore::open(&d.state).unwrap())
                .unwrap()
                .policies(),
            "the saved version is in force"
        );
        assert_eq!(pd.policies().len(), 1);
        let status = pd.status();
        assert_eq!(status.files[0].in_force, VersionInForce::Saved);
        assert_eq!(status.files[0].specs, 1);
        let err = error_of(&pd, "a.yaml");
        assert!(
            err.contains("a.yaml:2:")
                && err.contains("kept the last good version from ")
                && err.contains("stays in force"),
            "{err}"
        );

        // Fixed with other content: the new version is in force and saved.
        d.write("a.yaml", WORLD);
        assert!(pd.poll());
        assert_eq!(pd.status().files[0].in_force, VersionInForce::Current);
        drop(pd);
        d.write("a.yaml", BROKEN);
        let pd = d.start();
        assert_eq!(pd.policies().len(), 1);
        assert_eq!(
            pd.policies()[0].rules[0].peers,
            [labels_policy::Peer::World],
            "the newer good version was saved"
        );
    }

    #[test]
    fn a_removed_file_leaves_force_and_its_saved_version_goes() {
        let d = Dirs::new("removed");
        d.write("a.yaml", HOST);
        d.write("b.yaml", HOST);
        let mut pd = d.start();
        assert_eq!(d.saved_versions(), 2);
        std::fs::remove_file(d.policies.join("a.yaml")).unwrap();
        assert!(pd.poll());
        assert_eq!(pd.policies().len(), 1);
        assert_eq!(d.saved_versions(), 1);
        drop(pd);
        // Removed while the daemon was stopped: gone at start too.
        std::fs::remove_file(d.policies.join("b.yaml")).unwrap();
        let pd = d.start();
        assert!(pd.policies().is_empty());
        assert!(pd.status().files.is_empty());
        assert_eq!(d.saved_versions(), 0);
    }

    #[test]
    fn an_unreadable_directory_is_an_error_that_keeps_everything() {
        let d = Dirs::new("unreadable");
        d.write("a.yaml", HOST);
        let mut pd = d.start();
        assert_eq!(pd.policies().len(), 1);
        // Not a directory any more (as root, ENOTDIR stands in for EACCES
        // and EIO: any error but "it does not exist").
        std::fs::remove_dir_all(&d.policies).unwrap();
        std::fs::write(&d.policies, "a file").unwrap();
        assert!(pd.poll());
        assert_eq!(pd.policies().len(), 1, "never read as empty");
        let status = pd.status();
        assert_eq!(status.errors.len(), 1);
        assert!(
            status.errors[0].contains(&d.policies.display().to_string())
                && status.errors[0].contains("stays"),
            "{:?}",
            status.errors
        );
        assert!(!pd.poll(), "the same error is not news");
        drop(pd);
        // At start: the saved versions are in force.
        let pd = d.start();
        assert_eq!(pd.policies().len(), 1);
        assert_eq!(pd.status().files[0].in_force, VersionInForce::Saved);
        assert_eq!(pd.status().errors.len(), 1);
        assert_eq!(d.saved_versions(), 1, "nothing deleted");
        drop(pd);
        // Readable again: the error goes, the file is read.
        std::fs::remove_file(&d.policies).unwrap();
        std::fs::create_dir(&d.policies).unwrap();
        d.write("a.yaml", HOST);
        let pd = d.start();
        assert!(pd.status().errors.is_empty());
        assert_eq!(pd.status().files[0].in_force, VersionInForce::Current);
    }

    #[test]
    fn a_missing_directory_holds_no_files_unless_something_is_in_force() {
        let d = Dirs::new("missing");
        std::fs::remove_dir(&d.policies).unwrap();
        let mut pd = d.start();
        assert!(!pd.poll());
        assert!(pd.policies().is_empty() && pd.status().errors.is_empty());
        std::fs::create_dir(&d.policies).unwrap();
        d.write("a.yaml", HOST);
        assert!(pd.poll());
        // Once something is in force, the directory's absence keeps it.
        std::fs::remove_dir_all(&d.policies).unwrap();
        assert!(pd.poll());
        assert_eq!(pd.policies().len(), 1);
        assert!(pd.status().errors[0].contains("cannot read the policy directory"));
        drop(pd);
        let pd = d.start();
        assert_eq!(pd.policies().len(), 1, "and at start, the saved version");
    }

    #[test]
    fn a_damaged_saved_version_is_reported_and_replaced_by_a_good_file() {
        let d = Dirs::new("damaged");
        d.write("a.yaml", HOST);
        drop(d.start());
        let saved = PolicyStore::open(&d.state)
            .unwrap()
            .path_for(&d.policies.join("a.yaml"));
        std::fs::write(&saved, "{damaged").unwrap();
        d.write("a.yaml", BROKEN);
        let mut pd = d.start();
        assert!(pd.policies().is_empty(), "nothing of it can be in force");
        let errors = pd.status().errors;
        assert!(
            errors.len() == 1 && errors[0].contains(&saved.display().to_string()),
            "{errors:?}"
        );
        assert!(error_of(&pd, "a.yaml").contains("nothing from this file is in force"));
        // A good version is saved over the damaged copy.
        d.write("a.yaml", HOST);
        assert!(pd.poll());
        assert!(pd.status().errors.is_empty());
        drop(pd);
        d.write("a.yaml", BROKEN);
        let pd = d.start();
        assert_eq!(pd.policies().len(), 1);
        assert_eq!(pd.status().files[0].in_force, VersionInForce::Saved);
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_text(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_text(1_764_133_023), "2025-11-26T04:57:03Z");
    }
}
