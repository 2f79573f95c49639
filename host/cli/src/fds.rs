//! File descriptor hygiene at start-up, before anything else opens a file.

/// Which standard descriptors were closed when the host started.
#[derive(Debug, Default)]
pub struct StdFds {
    /// Standard output was closed: a job's log would have nowhere to go.
    pub stdout_closed: bool,
}

/// Whether fd 1 was closed when the process started, as seen by [`STDOUT_CHECK`].
static STDOUT_CLOSED_AT_EXEC: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Looks at fd 1 before Rust's runtime does. The runtime puts a read-write `/dev/null` on
/// every closed standard descriptor before `main` (so that no file opened later becomes fd
/// 1 and receives a job's log); after that, a closed stdout cannot be told from a read-write
/// `/dev/null` given on purpose (Python's `subprocess.DEVNULL`, `daemon(3)`, `1<>/dev/null`).
/// Functions in `.init_array` run before `main`, and so before the runtime's own set-up.
#[used]
#[link_section = ".init_array"]
static STDOUT_CHECK: extern "C" fn() = {
    extern "C" fn check() {
        // SAFETY: F_GETFD only queries the descriptor table; nothing else runs yet.
        if unsafe { libc::fcntl(1, libc::F_GETFD) } == -1 {
            STDOUT_CLOSED_AT_EXEC.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    check
};

/// Tells whether standard output was closed when the host started, and marks every
/// inherited descriptor above 2 close-on-exec, so that jobs and anything a plugin spawns get
/// 0, 1 and 2 only.
pub fn sanitize() -> StdFds {
    let found = StdFds {
        stdout_closed: STDOUT_CLOSED_AT_EXEC.load(std::sync::atomic::Ordering::Relaxed),
    };
    close_on_exec_from(3);
    found
}

fn close_on_exec_from(first: i32) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd"))
    else {
        return;
    };
    let fds: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number; one that was the directory listing's own
        // (closed by now) fails harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}
