//! The build script service: a travis-build compatible endpoint that turns a job payload
//! into the script to run. The payload is POSTed as JSON with `Authorization: token T`; the
//! response body is the script. Connection errors and 5xx answers are retried with backoff
//! (the service may be restarting); a 4xx answer is the payload's fault and final.

use std::time::Duration;

/// Where scripts come from.
#[derive(Clone, Debug)]
pub struct BuildApi {
    /// The endpoint, e.g. `http://build.example:4000/script`.
    pub url: String,
    /// The token sent as `Authorization: token T`.
    pub token: Option<String>,
    /// How many attempts before giving up on a service that does not answer.
    pub attempts: u32,
    /// The first wait between attempts (doubling, at most 10 s).
    pub backoff: Duration,
    /// Do not verify an https:// service's certificate (the original's
    /// `BUILD_API_INSECURE_SKIP_VERIFY`).
    pub insecure: bool,
}

/// Why no script came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// The service refused the payload (4xx): the job errors with this reason.
    #[error("the build script service refused the job: {0}")]
    Refused(String),
    /// The service could not be reached or failed (5xx) every time: requeue the job.
    #[error("the build script service is unavailable: {0}")]
    Unavailable(String),
}

/// The largest script accepted from the service.
const MAX_SCRIPT_BYTES: u64 = 64 << 20;

impl BuildApi {
    /// A service at `url` with the default retry policy (5 attempts from 250 ms).
    pub fn new(url: String, token: Option<String>) -> Self {
        Self {
            url,
            token,
            attempts: 5,
            backoff: Duration::from_millis(250),
            insecure: false,
        }
    }

    /// The script for `payload` (the job's JSON document).
    pub async fn script(&self, payload: Vec<u8>) -> Result<String, ScriptError> {
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts.max(1) {
            let api = self.clone();
            let body = payload.clone();
            let answer = tokio::task::spawn_blocking(move || api.post(&body))
                .await
                .unwrap_or_else(|e| Err(Attempt::Retry(format!("the request task failed: {e}"))));
            match answer {
                Ok(script) => return Ok(script),
                Err(Attempt::Final(reason)) => return Err(ScriptError::Refused(reason)),
                Err(Attempt::Retry(reason)) => last = reason,
            }
            if attempt < self.attempts {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
        Err(ScriptError::Unavailable(format!(
            "{last} ({} attempts)",
            self.attempts.max(1)
        )))
    }

    fn post(&self, body: &[u8]) -> Result<String, Attempt> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .timeout_connect(Some(Duration::from_secs(10)))
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .disable_verification(self.insecure)
                    .build(),
            )
            .build()
            .into();
        let mut request = agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "text/plain");
        if let Some(t) = &self.token {
            request = request.header("Authorization", format!("token {t}"));
        }
        let mut response = request.send(body).map_err(|e| {
            let text = e.to_string();
            // A certificate this machine does not trust is not a service that is down.
            let hint = if !self.insecure && text.to_ascii_lowercase().contains("certificate") {
                " (a certificate this machine does not trust: install its CA, or --build-api-insecure)"
            } else {
                ""
            };
            Attempt::Retry(format!("POST {}: {text}{hint}", self.url))
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_SCRIPT_BYTES)
            .read_to_string()
            .map_err(|e| Attempt::Retry(format!("reading the answer of {}: {e}", self.url)))?;
        match status {
            200..=299 => Ok(text),
            400..=499 => Err(Attempt::Final(format!(
                "HTTP {status}: {}",
                host::text::escape_controls(&shortened(text.trim(), MAX_REASON_CHARS))
            ))),
            _ => Err(Attempt::Retry(format!("HTTP {status} from {}", self.url))),
        }
    }
}

/// The most of a refusal's answer kept as the job's reason (in its state and its log): a
/// service's error page of megabytes says no more than its first lines.
const MAX_REASON_CHARS: usize = 4096;

/// `text`, cut to `max` characters with a note of how much was left out.
fn shortened(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((cut, _)) => format!("{}... ({} more bytes)", &text[..cut], text.len() - cut).into(),
    }
}

enum Attempt {
    Final(String),
    Retry(String),
}
