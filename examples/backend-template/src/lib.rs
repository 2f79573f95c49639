//! A backend template: every place where a real backend does its work is marked `TODO`.
//! As it stands it "runs" a script by reporting its size, so it loads, runs and passes the
//! conformance checks from the first build.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plugin_api::sdk::*;

pub struct Template;

impl Backend for Template {
    // TODO: your alias (what `host run --backend` takes) and name.
    const ALIAS: &'static str = "template";
    const HUMAN_READABLE_NAME: &'static str = "Template";
    // Every key you read, with a line of help: `host list-backends` and `host --help` show
    // them, and the host warns about keys that are not here.
    const HELP: &'static [(&'static str, &'static str)] = &[
        ("GREETING", "first line of every log (default: \"template backend\")"),
        ("WORK_TIME", "how long the pretend work takes (default: 10ms)"),
    ];
    type Provider = TemplateProvider;

    fn new_provider(config: &ProviderConfig) -> Result<TemplateProvider, BackendError> {
        // Validate everything here, naming the key and value at fault
        // (`config.duration`, `config.bool`, `config.parse` do that for you).
        Ok(TemplateProvider {
            greeting: config.lookup("GREETING").unwrap_or("template backend").to_owned(),
            work_time: config.duration("WORK_TIME")?.unwrap_or(Duration::from_millis(10)),
        })
    }
}

pub struct TemplateProvider {
    greeting: String,
    work_time: Duration,
}

impl Provider for TemplateProvider {
    type Instance = TemplateInstance;

    async fn start(&self, attributes: &StartAttributes) -> Result<TemplateInstance, BackendError> {
        let began = Instant::now();
        // TODO: create the VM/container/directory for the job here.
        tracing::info!(language = %attributes.language, "starting an instance");
        Ok(TemplateInstance {
            greeting: self.greeting.clone(),
            work_time: self.work_time,
            script: std::sync::Mutex::new(None),
            stopped: AtomicBool::new(false),
            startup: began.elapsed(),
        })
    }
}

pub struct TemplateInstance {
    greeting: String,
    work_time: Duration,
    script: std::sync::Mutex<Option<Vec<u8>>>,
    stopped: AtomicBool,
    startup: Duration,
}

impl Instance for TemplateInstance {
    async fn upload_script(&self, script: &[u8]) -> Result<(), BackendError> {
        let mut slot = self.script.lock().map_err(|_| BackendError::other("poisoned"))?;
        if slot.is_some() {
            return Err(BackendError::stale_vm());
        }
        // TODO: copy the script onto the instance.
        *slot = Some(script.to_vec());
        Ok(())
    }

    async fn run_script(&self, output: &mut Output) -> Result<RunResult, BackendError> {
        let size = match &*self.script.lock().map_err(|_| BackendError::other("poisoned"))? {
            Some(s) => s.len(),
            None => return Err(BackendError::other("no script was uploaded")),
        };
        // TODO: run the script and stream its output as it comes. `output.write` waits
        // when the host is busy and fails when it wants no more: return that error.
        output.write(format!("{}\n", self.greeting)).await?;
        output.write(format!("would run a {size}-byte script\n")).await?;
        // A sleep that stands for the work; dropping this future (cancellation) ends it.
        tokio::time::sleep(self.work_time).await;
        Ok(RunResult::completed(0))
    }

    async fn stop(&self) -> Result<(), BackendError> {
        // TODO: release everything the instance holds. Called on every path, maybe twice.
        self.stopped.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn id(&self) -> &str {
        "template-1"
    }

    fn startup_duration(&self) -> Duration {
        self.startup
    }
}

plugin_api::export_backend!(Template);
