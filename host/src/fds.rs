//! Descriptors for child processes (a probe, a plugin server): pipes that close on exec, and
//! moving descriptors into place between fork and exec.

use std::os::fd::{FromRawFd as _, OwnedFd};

/// Puts each `(from, to)` descriptor at `to` in a child, without close-on-exec, whatever
/// the numbers (a `from` may be another pair's `to`). Runs between fork and exec: only
/// `fcntl` and `dup2`, no allocation; at most four pairs.
pub(crate) fn move_fds(moves: &[(i32, i32)]) -> std::io::Result<()> {
    let mut temp = [-1i32; 4];
    if moves.len() > temp.len() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // First out of the way (above every target), then into place.
    for (i, (from, _)) in moves.iter().enumerate() {
        // SAFETY: fcntl on a descriptor number of this process.
        temp[i] = unsafe { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, 10) };
        if temp[i] < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (i, (_, to)) in moves.iter().enumerate() {
        // SAFETY: dup2 between descriptor numbers of this process; it clears close-on-exec.
        if unsafe { libc::dup2(temp[i], *to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A pipe whose ends close on exec.
pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: two fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
