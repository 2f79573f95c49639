//! A job's log as the original's log parts: cut every 500 ms or at 9 KiB, numbered from 0,
//! the last one final; text that is not UTF-8 made U+FFFD as Go's JSON encoding makes it.

use super::*;

/// A log part's body.
#[derive(Serialize)]
pub(super) struct LogPartBody<'a> {
    r#final: bool,
    pub(super) id: u64,
    pub(super) log: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) meta: Option<&'a StartedMeta>,
    pub(super) number: u64,
    pub(super) uuid: &'a Value,
}

/// The writing end of a job's log: bytes go to the task that cuts them into parts.
pub struct AmqpLog {
    pub(super) tx: tokio_util::sync::PollSender<Vec<u8>>,
}

impl tokio::io::AsyncWrite for AmqpLog {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match self.tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => match self.tx.send_item(buf.to_vec()) {
                Ok(()) => Poll::Ready(Ok(buf.len())),
                Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            },
            Poll::Ready(Err(_)) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.tx.close();
        std::task::Poll::Ready(Ok(()))
    }
}

/// The text of the first `n` bytes of `buf` as the original's JSON encoding makes it, where
/// `n` stops before a character cut short at the end (it waits for the next part).
pub(crate) fn take_text(buf: &mut Vec<u8>, flush_all: bool) -> String {
    let mut end = buf.len();
    if !flush_all {
        // Up to 3 trailing bytes may be the start of a character still being written.
        let tail = buf.len().saturating_sub(3);
        if let Some(start) = (tail..buf.len()).rev().find(|&i| buf[i] & 0xC0 != 0x80) {
            let need = match buf[start] {
                b if b >= 0xF0 => 4,
                b if b >= 0xE0 => 3,
                b if b >= 0xC0 => 2,
                _ => 1,
            };
            if buf.len() - start < need {
                end = start;
            }
        }
    }
    let rest = buf.split_off(end);
    let text = std::mem::replace(buf, rest);
    let mut out = String::with_capacity(text.len());
    let mut bytes = &text[..];
    while !bytes.is_empty() {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[..good]).unwrap_or_default());
                // As Go's encoding/json: each invalid byte is one U+FFFD.
                let bad = e.error_len().unwrap_or(bytes.len() - good);
                for _ in 0..bad {
                    out.push('\u{FFFD}');
                }
                bytes = &bytes[good + bad..];
            }
        }
    }
    out
}

/// Cuts a job's log into parts: every [`LOG_FLUSH_EVERY`] or [`LOG_PART_BYTES`], numbered
/// from 0. When the writer is gone, the part carrying the rest of the text is the final one;
/// if nothing was left, an empty final part follows. Returns the parts not yet confirmed.
pub(super) async fn log_parts(
    mut outbox: Outbox,
    key: String,
    job_id: u64,
    uuid: Value,
    meta: Arc<StartedMeta>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> Outbox {
    let body_of = |number: u64, text: String, last: bool| {
        serde_json::to_vec(&LogPartBody {
            r#final: last,
            id: job_id,
            log: &text,
            // The first part after the start carries the job's meta, as the original's does.
            meta: (number == 0).then_some(&*meta),
            number,
            uuid: &uuid,
        })
        .unwrap_or_default()
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut parts: Vec<(String, bool)> = Vec::new();
    let mut number = 0u64;
    let mut tick = tokio::time::interval(LOG_FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(c) => {
                    buf.extend_from_slice(&c);
                    if buf.len() < LOG_PART_BYTES {
                        continue;
                    }
                }
                None => open = false,
            },
            _ = tick.tick() => {}
        }
        cut_parts(&mut buf, open, &mut parts);
        for (text, last) in parts.drain(..) {
            outbox
                .send(LOG_EXCHANGE, &key, LOG_TYPE, body_of(number, text, last))
                .await;
            number += 1;
        }
        if !open {
            break;
        }
    }
    outbox
}

/// Appends to `parts`, as `(text, final)`, what goes out now of a job's buffered log `buf`:
/// whole parts while more than a part is buffered, then the rest, but for a character cut
/// short while the writer is `open` (it waits for its next bytes). Once the writer is gone,
/// everything goes and the last part is final: the one with the rest of the text, or an
/// empty one if nothing was left.
pub(super) fn cut_parts(buf: &mut Vec<u8>, open: bool, parts: &mut Vec<(String, bool)>) {
    let before = parts.len();
    while !buf.is_empty() {
        let take = buf.len().min(LOG_PART_BYTES);
        let mut part: Vec<u8> = buf.drain(..take).collect();
        let text = take_text(&mut part, !open && buf.is_empty());
        if !part.is_empty() {
            part.append(buf);
            *buf = part;
        }
        if text.is_empty() {
            break;
        }
        parts.push((text, !open && buf.is_empty()));
        if open && buf.len() < LOG_PART_BYTES {
            break;
        }
    }
    if !open && !parts[before..].last().is_some_and(|p| p.1) {
        parts.push((String::new(), true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_keeps_characters_whole_and_replaces_invalid_bytes() {
        let mut buf = "aé".as_bytes().to_vec();
        buf.push(0xE2); // the start of a 3-byte character
        assert_eq!(take_text(&mut buf, false), "aé");
        assert_eq!(buf, [0xE2]);
        buf.extend_from_slice(&[0x82, 0xAC]); // €
        assert_eq!(take_text(&mut buf, false), "€");
        let mut bad = vec![b'x', 0xFF, 0xFE, b'y'];
        assert_eq!(take_text(&mut bad, true), "x\u{FFFD}\u{FFFD}y");
    }

    fn cut(buf: &mut Vec<u8>, open: bool) -> Vec<(String, bool)> {
        let mut parts = Vec::new();
        cut_parts(buf, open, &mut parts);
        parts
    }

    #[test]
    fn the_rest_of_a_log_is_its_final_part() {
        // A short log written and closed: one part, final (the original would send two).
        assert_eq!(
            cut(&mut b"hello\n".to_vec(), false),
            [("hello\n".to_owned(), true)]
        );
        // Nothing left when the writer goes: an empty final part.
        assert_eq!(cut(&mut Vec::new(), false), [(String::new(), true)]);
        // While the writer is there, nothing is final and a cut character waits.
        let mut buf = "ab\u{e9}".as_bytes().to_vec();
        buf.pop();
        assert_eq!(cut(&mut buf, true), [("ab".to_owned(), false)]);
        assert_eq!(buf, [0xC3]);
    }

    #[test]
    fn a_long_log_goes_in_whole_parts_and_only_the_last_is_final() {
        let text: String = (0..LOG_PART_BYTES * 5 / 2)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        // Buffered while the writer is there: whole parts only; the half part waits.
        let mut buf = text.clone().into_bytes();
        let open = cut(&mut buf, true);
        assert_eq!(open.len(), 2, "whole parts until less than a part is left");
        assert_eq!(buf.len(), LOG_PART_BYTES / 2);
        // The writer gone: the rest, the last part final.
        let closed = cut(&mut buf, false);
        assert!(buf.is_empty());
        let all: Vec<_> = open.iter().chain(&closed).collect();
        let lens: Vec<usize> = all.iter().map(|p| p.0.len()).collect();
        assert_eq!(lens, [LOG_PART_BYTES, LOG_PART_BYTES, LOG_PART_BYTES / 2]);
        let finals: Vec<bool> = all.iter().map(|p| p.1).collect();
        assert_eq!(finals, [false, false, true]);
        assert_eq!(all.iter().map(|p| p.0.as_str()).collect::<String>(), text);
    }
}
