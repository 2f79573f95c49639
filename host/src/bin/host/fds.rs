//! File descriptor hygiene at start-up, before anything else opens a file.

/// Which standard descriptors were closed when the host started.
#[derive(Debug, Default)]
pub struct StdFds {
    /// Standard output was closed: a job's log would have nowhere to go.
    pub stdout_closed: bool,
}

/// Tells whether standard output was closed when the host started, and marks every
/// inherited descriptor above 2 close-on-exec, so that jobs and anything a plugin spawns get
/// 0, 1 and 2 only.
///
/// Rust's runtime has already put `/dev/null` on any closed standard descriptor before
/// `main` (so no file opened later lands on fd 1 and receives a job's log), opened
/// read-write; a shell's `>/dev/null` opens it write-only. So a read-write `/dev/null` on fd 1
/// means it was closed.
pub fn sanitize() -> StdFds {
    let found = StdFds {
        stdout_closed: is_runtime_dev_null(1),
    };
    close_on_exec_from(3);
    found
}

fn is_runtime_dev_null(fd: i32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(null) = std::fs::metadata("/dev/null") else {
        return false;
    };
    // SAFETY: fstat into a zeroed struct and F_GETFL only query the descriptor.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return true;
        }
        let rdwr = libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE == libc::O_RDWR;
        (st.st_mode & libc::S_IFMT) == libc::S_IFCHR && st.st_rdev == null.rdev() && rdwr
    }
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
