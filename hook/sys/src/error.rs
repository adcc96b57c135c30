//! The one I/O error type: what was done, to which path, and why.

use std::path::{Path, PathBuf};

/// A file, directory or socket operation failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct IoError {
    /// What was being done ("read", "create", "bind"...).
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// True when the path (or a process it names) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::NotFound
    }
}

/// A closure for `map_err` that wraps an `io::Error` as an [`IoError`].
pub fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> IoError + 'a {
    move |source| IoError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// An error with all its causes, for one log field or one line of output.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_operation_the_path_and_the_cause_once() {
        let e = io_error("read", Path::new("/nope"))(std::io::Error::from(
            std::io::ErrorKind::NotFound,
        ));
        assert!(e.is_not_found());
        assert_eq!(error_chain(&e), "cannot read /nope: entity not found");
    }
}
