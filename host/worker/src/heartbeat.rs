//! The original's heartbeat URL: a service the worker asks, every few minutes, whether it
//! should go on. `GET URL` with `Authorization: token T`; an answer `{"state": "down"}`
//! drains the worker (no new jobs; running ones finish; then it stops), `up` or anything
//! else changes nothing. A failed check is said and tried again sooner.

use std::time::Duration;

use crate::Control;

/// Where and how often to check.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    /// The URL asked.
    pub url: String,
    /// Sent as `Authorization: token T`.
    pub token: Option<String>,
    /// Between checks (the original's 5 minutes).
    pub every: Duration,
    /// After a failed check (the original's 30 s).
    pub after_error: Duration,
}

/// The largest answer read.
const MAX_ANSWER_BYTES: u64 = 64 << 10;

/// What one check said.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Go on.
    Up,
    /// Drain and stop.
    Down,
}

impl Heartbeat {
    /// Checks until the worker stops taking jobs; drains it on `down`.
    pub async fn run(self, control: Control) {
        loop {
            if control.draining() {
                return;
            }
            let hb = self.clone();
            let answer = tokio::task::spawn_blocking(move || hb.check())
                .await
                .unwrap_or_else(|e| Err(format!("the check's task failed: {e}")));
            let wait = match answer {
                Ok(Answer::Down) => {
                    tracing::warn!("heartbeat {}: state down: draining", self.url);
                    control.drain();
                    return;
                }
                Ok(Answer::Up) => self.every,
                Err(e) => {
                    tracing::warn!("heartbeat {}: {e}", self.url);
                    self.after_error
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One check.
    pub fn check(&self) -> Result<Answer, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut request = agent.get(&self.url).header("Accept", "application/json");
        if let Some(t) = &self.token {
            request = request.header("Authorization", format!("token {t}"));
        }
        let mut response = request.call().map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        if status > 299 {
            return Err(format!("HTTP {status}"));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|e| format!("reading the answer: {e}"))?;
        parse(&body)
    }
}

/// The answer's meaning: `{"state": "down"}` is down; any other JSON object is up.
pub fn parse(body: &[u8]) -> Result<Answer, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| "the answer is not a JSON object".to_owned())?;
    Ok(match obj.get("state").and_then(|s| s.as_str()) {
        Some("down") => Answer::Down,
        _ => Answer::Up,
    })
}

/// The token as the original reads it: `file://PATH` is read from that file (trimmed).
pub fn token(value: &str) -> Result<String, String> {
    match value.strip_prefix("file://") {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| format!("the heartbeat token file {path}: {e}")),
        None => Ok(value.trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_drains_and_anything_else_goes_on() {
        assert_eq!(parse(br#"{"state": "down"}"#), Ok(Answer::Down));
        assert_eq!(parse(br#"{"state": "up"}"#), Ok(Answer::Up));
        assert_eq!(parse(br#"{}"#), Ok(Answer::Up));
        assert!(parse(b"down").is_err());
        assert!(parse(b"[1]").is_err());
    }
}
