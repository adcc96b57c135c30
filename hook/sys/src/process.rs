//! Processes, and telling one process from a later one with the same pid.

use std::path::PathBuf;

use crate::error::{io_error, IoError};

/// True while a process with this pid exists (any process: pids are reused).
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// When the process started, in clock ticks after boot (field 22 of
/// /proc/PID/stat). With the pid, it names one process for good: a later
/// process that reuses the pid has a later start time.
pub fn start_time(pid: u32) -> Result<u64, IoError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
    parse_start_time(&text).ok_or_else(|| IoError {
        op: "parse",
        path,
        source: std::io::Error::other("no start time after the command name"),
    })
}

/// The start time in a /proc/PID/stat line. The command name (field 2) is
/// in parentheses and may itself hold spaces and parentheses, so fields are
/// counted from the last ')'.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow; the start time is field 22, the 20th of them.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_skips_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_start_time_is_stable() {
        let a = start_time(std::process::id()).unwrap();
        assert_eq!(start_time(std::process::id()).unwrap(), a);
        assert!(alive(std::process::id()));
    }
}
