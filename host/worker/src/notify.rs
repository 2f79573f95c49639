//! systemd's notify protocol (`sd_notify(3)`), spoken directly: a datagram of `KEY=VALUE`
//! lines to the socket in `NOTIFY_SOCKET`. A worker started by a `Type=notify` unit says
//! `READY=1` once it takes jobs, `STOPPING=1` when it drains or stops, `STATUS=` lines with
//! the jobs running, and `WATCHDOG=1` at half the unit's `WatchdogSec` from a task of its
//! runtime (so a runtime that no longer runs its tasks stops pinging, and systemd restarts
//! it). Outside systemd (no `NOTIFY_SOCKET`) nothing is sent.
//!
//! [`take_from_env`] reads the variables and removes them from the environment, so no job's
//! process inherits them (a build must not be able to tell systemd the worker is ready or
//! stopping): call it first thing in `main`, before any thread exists.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

use crate::control::Control;

/// Where notifications go, and the watchdog's interval.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half the watchdog's timeout: how often to ping; `None` without a watchdog.
    ping_every: Option<Duration>,
}

static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` and removes them from the
/// environment. Returns why the socket cannot be used, if it is set but cannot.
///
/// It changes the environment: call it while no other thread may read or write it (first
/// thing in `main`).
pub fn take_from_env() -> Option<String> {
    let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        std::env::remove_var(var);
    }
    let ours = pid.is_none_or(|p| p.trim() == std::process::id().to_string());
    let ping_every = usec
        .and_then(|u| u.trim().parse::<u64>().ok())
        .filter(|&u| u > 0 && ours)
        .map(|u| Duration::from_micros(u) / 2);
    let mut problem = None;
    let target = socket.and_then(|path| match address(&path) {
        // Non-blocking: a notification that does not fit (systemd slow to read) is dropped,
        // never waited for on the worker's runtime.
        Ok(addr) => match UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s))
        {
            Ok(s) => Some((s, addr)),
            Err(e) => {
                problem = Some(format!("NOTIFY_SOCKET: cannot make a socket: {e}"));
                None
            }
        },
        Err(e) => {
            problem = Some(format!("NOTIFY_SOCKET={}: {e}", path.to_string_lossy()));
            None
        }
    });
    let _ = NOTIFIER.set(Notifier { target, ping_every });
    problem
}

/// The socket address `NOTIFY_SOCKET` names: a path, or `@name` in the abstract namespace.
fn address(value: &std::ffi::OsStr) -> std::io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = value.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name)
        }
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(value),
        None => Err(std::io::Error::other(
            "expected an absolute path or @name (vsock addresses are not supported)",
        )),
    }
}

/// Sends `state` (lines of `KEY=VALUE`) to systemd, if the worker runs under it. A failure
/// is only logged: systemd's side of the protocol is best effort too.
pub fn send(state: &str) {
    let Some(Notifier {
        target: Some((socket, addr)),
        ..
    }) = NOTIFIER.get()
    else {
        return;
    };
    if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
        tracing::debug!("sd_notify {state:?}: {e}");
    }
}

/// Whether notifications go anywhere.
pub fn enabled() -> bool {
    NOTIFIER.get().is_some_and(|n| n.target.is_some())
}

/// Says `READY=1` and then, for as long as the worker runs, `STATUS=` when it changes and
/// `WATCHDOG=1` at half the watchdog's timeout (`STOPPING=1` is sent by
/// [`Control::drain`], which every way of stopping goes through).
/// Spawn it on the worker's runtime once the worker takes jobs.
pub async fn supervise(control: Control) {
    if !enabled() {
        return;
    }
    let ping_every = NOTIFIER.get().and_then(|n| n.ping_every);
    let tick = ping_every
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    let mut last_status = status_text(&control);
    send(&format!("READY=1\nSTATUS={last_status}"));
    let mut last_ping = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let mut message = Vec::new();
        let status = status_text(&control);
        if status != last_status {
            message.push(format!("STATUS={status}"));
            last_status = status;
        }
        if let Some(every) = ping_every {
            if last_ping.elapsed() >= every {
                message.push("WATCHDOG=1".to_owned());
                last_ping = tokio::time::Instant::now();
            }
        }
        if !message.is_empty() {
            send(&message.join("\n"));
        }
    }
}

/// What `STATUS=` says: the jobs running and whether jobs are taken.
fn status_text(control: &Control) -> String {
    let s = control.status();
    format!(
        "{} of {} job(s) running, {}",
        s.running.len(),
        s.pool_size,
        s.intake()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_are_paths_or_abstract_names() {
        use std::os::linux::net::SocketAddrExt as _;
        let a = address("@host/notify".as_ref()).unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"host/notify"[..]));
        let p = address("/run/systemd/notify".as_ref()).unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(address("vsock:2:1234".as_ref()).is_err());
    }
}
