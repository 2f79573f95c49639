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

/// Whether process `pid` runs: it exists, is not a zombie, and is not exiting. A process
/// killed with SIGKILL is still listed, as running, for a moment while the kernel tears it
/// down (its `PF_EXITING` flag set), and on a busy machine its sockets are closed before
/// that ends: whoever sees a peer go away (a broker that redelivers its jobs) and asks
/// here must hear "gone". On systems without `/proc`, a process is taken to run when it
/// exists.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_alive(&stat),
        Err(_) if std::path::Path::new("/proc/self").exists() => false,
        Err(_) => std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// The kernel's "getting shut down" process flag (`PF_EXITING`, field 9 of `stat`).
const PF_EXITING: u64 = 0x4;

/// Whether a `/proc/PID/stat` line is of a process that runs (see [`process_alive`]).
fn stat_alive(stat: &str) -> bool {
    // The fields follow the command name, which is in parentheses and may hold any byte.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return true;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("");
    // state, ppid, pgrp, session, tty_nr, tpgid, flags: the flags are the 7th after ')'.
    let flags: u64 = fields.nth(5).and_then(|f| f.parse().ok()).unwrap_or(0);
    !state.starts_with('Z') && !state.starts_with('X') && flags & PF_EXITING == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_or_an_exiting_process_is_not_alive() {
        let running = "123 (host (x) y) S 1 123 123 0 -1 4194560 100 0 0 0";
        assert!(stat_alive(running));
        assert!(!stat_alive("123 (h) Z 1 123 123 0 -1 4194560 100"));
        // Killed, being torn down: still R, PF_EXITING set.
        assert!(!stat_alive("123 (h) R 1 123 123 0 -1 4194564 100"));
    }

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
