//! The original's payload filter: a program the job's JSON goes through (stdin to stdout)
//! before its script is requested or run, to rewrite it (another language, another image).
//! Unlike the original, which went on with the payload as it was, a filter that fails, hangs
//! or answers something that is not a job errors the job with the reason: a filter exists
//! because the payload must not run as it came.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long the filter may take by default.
pub const FILTER_TIMEOUT: Duration = Duration::from_secs(60);

/// The most of the filter's stderr kept for the reason.
const STDERR_KEPT: usize = 2048;

/// Runs `program` with `document` on its stdin; its stdout, at most `limit` bytes, within
/// `timeout`.
pub async fn filter(
    program: &Path,
    document: &[u8],
    limit: u64,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut child = tokio::process::Command::new(program)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("no pipes to the filter".into());
    };
    let input = document.to_vec();
    // Written beside the reading: a filter that answers before it has read all (or never
    // reads) must not block the worker.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
        let _ = stdin.shutdown().await;
    });
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut stdout = stdout.take(limit + 1);
        // All of stderr is read (a filter that says much must not block on it); its tail
        // is kept.
        let tail = async {
            let mut stderr = stderr;
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                err.extend_from_slice(&buf[..n]);
                if err.len() > 2 * STDERR_KEPT {
                    err.drain(..err.len() - STDERR_KEPT);
                }
            }
        };
        let (o, ()) = tokio::join!(stdout.read_to_end(&mut out), tail);
        o.map_err(|e| format!("reading its output: {e}"))?;
        if out.len() as u64 > limit {
            // It would block on a full pipe.
            let _ = child.start_kill();
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("waiting for it: {e}"))?;
        Ok::<_, String>((status, out, err))
    };
    let (status, out, err) = match tokio::time::timeout(timeout, run).await {
        Ok(r) => r?,
        Err(_) => {
            writer.abort();
            return Err(format!(
                "did not end within {}",
                host::text::fmt_duration(timeout)
            ));
        }
    };
    writer.abort();
    if out.len() as u64 > limit {
        return Err(format!("its output is larger than {limit} bytes"));
    }
    let said = String::from_utf8_lossy(&err);
    let said = said.trim();
    let said = match said.char_indices().rev().nth(STDERR_KEPT) {
        Some((i, _)) => &said[i..],
        None => said,
    };
    let said = host::text::escape_controls(said);
    if !status.success() {
        return Err(if said.is_empty() {
            format!("failed ({status})")
        } else {
            format!("failed ({status}): {said}")
        });
    }
    Ok(out)
}
