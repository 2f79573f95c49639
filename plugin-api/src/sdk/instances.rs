//! Naming instances so that a reaper can tell whose they are: a name carries the pid of the
//! host process that made it, and [`process_alive`] tells whether that host still runs.

use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A name for a new instance, unique on this machine: `<prefix>-<host pid>-<n>-<salt>`,
/// where `n` counts this process's instances and `salt` (from the clock) tells apart two
/// processes that had the same pid.
pub fn instance_name(prefix: &str) -> String {
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}-{salt:08x}", std::process::id())
}

/// The host pid in a name made by [`instance_name`] with `prefix`.
pub fn host_pid_of(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?
        .strip_prefix('-')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Whether process `pid` runs (exists and is not a zombie). On systems without `/proc`, a
/// process is taken to run when it exists.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold any byte.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) if std::path::Path::new("/proc/self").exists() => false,
        Err(_) => std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_carries_its_host_pid_and_names_differ() {
        let a = instance_name("local");
        let b = instance_name("local");
        assert_ne!(a, b);
        assert_eq!(host_pid_of(&a, "local"), Some(std::process::id()));
        assert_eq!(host_pid_of(&a, "docker"), None);
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }
}
