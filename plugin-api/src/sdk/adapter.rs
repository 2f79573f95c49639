//! Turns a plugin author's [`Backend`], [`Provider`] and [`Instance`] into the raw ABI of
//! [`crate::ffi`]. Every entry point goes through [`super::runtime`]'s guards.

use std::sync::Arc;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RDuration, RResult, RStr, RString, RVec, Tuple2};

use super::runtime::{guard_future, guard_plain, guard_sync, set_alias};
use super::{logging, Backend, Instance, Output, Provider};
use crate::attributes::StartAttributes;
use crate::config::ProviderConfig;
use crate::ffi::{
    BackendMod, BackendMod_Ref, FfiInstance, FfiInstance_TO, FfiProvider, FfiProvider_TO,
    FfiResultFuture, HelpEntry, InstanceBox, LoggerBox, OutputSinkBox, ProviderBox, RConfig,
    RStartAttributes, RunResult,
};
use crate::BackendError;

/// Builds the root module of backend `B`. Called once, by the loader the export macro
/// generates.
pub fn root_module<B: Backend>(plugin_version: extern "C" fn() -> RStr<'static>) -> BackendMod_Ref {
    set_alias(B::ALIAS);
    logging::install_panic_hook();
    BackendMod {
        alias: alias::<B>,
        human_readable_name: human_readable_name::<B>,
        plugin_version,
        help: help::<B>,
        set_logger,
        new_provider: new_provider::<B>,
    }
    .leak_into_prefix()
}

extern "C" fn alias<B: Backend>() -> RStr<'static> {
    RStr::from_str(B::ALIAS)
}

extern "C" fn human_readable_name<B: Backend>() -> RStr<'static> {
    RStr::from_str(B::HUMAN_READABLE_NAME)
}

extern "C" fn help<B: Backend>() -> RVec<HelpEntry> {
    B::HELP
        .iter()
        .map(|(k, v)| Tuple2(RStr::from_str(k), RStr::from_str(v)))
        .collect()
}

extern "C" fn set_logger(logger: LoggerBox) {
    // Nothing here can panic but the logger itself; a failure only loses plugin logs.
    let _ = guard_sync("set_logger", || {
        logging::set_logger(logger);
        Ok(())
    });
}

pub(crate) extern "C" fn new_provider<B: Backend>(
    config: RConfig,
) -> RResult<ProviderBox, BackendError> {
    guard_sync("Backend::new_provider", || {
        let config = ProviderConfig::from_map(
            config
                .into_iter()
                .map(|Tuple2(k, v)| (k.into_string(), v.into_string())),
        );
        let provider = B::new_provider(&config)?;
        Ok(FfiProvider_TO::from_value(
            ProviderAdapter(Arc::new(provider)),
            TD_Opaque,
        ))
    })
    .into()
}

struct ProviderAdapter<P>(Arc<P>);

impl<P: Provider> FfiProvider for ProviderAdapter<P> {
    fn setup(&self) -> FfiResultFuture<()> {
        let provider = Arc::clone(&self.0);
        guard_future("Provider::setup", async move { provider.setup().await })
    }

    fn start(&self, attributes: &RStartAttributes) -> FfiResultFuture<InstanceBox> {
        let provider = Arc::clone(&self.0);
        let attributes = StartAttributes::from(attributes);
        guard_future("Provider::start", async move {
            let instance = provider.start(&attributes).await?;
            Ok(FfiInstance_TO::from_value(
                InstanceAdapter(Arc::new(instance)),
                TD_Opaque,
            ))
        })
    }

    // ---- appended in plugin-api 1.1 ----
    fn reap(&self, older_than: RDuration, dry_run: bool) -> FfiResultFuture<RVec<RString>> {
        let provider = Arc::clone(&self.0);
        guard_future("Provider::reap", async move {
            let lines = provider.reap(older_than.into(), dry_run).await?;
            Ok(lines.into_iter().map(RString::from).collect())
        })
    }
    // ---- end of 1.1 ----

    // ---- appended in plugin-api 1.2 ----
    fn supports_progress(&self) -> bool {
        guard_plain("Provider::supports_progress", || self.0.supports_progress()).unwrap_or(false)
    }

    fn start_with_progress(
        &self,
        attributes: &RStartAttributes,
        progress: crate::ffi::ProgresserBox,
    ) -> FfiResultFuture<InstanceBox> {
        let provider = Arc::clone(&self.0);
        let attributes = StartAttributes::from(attributes);
        let progress = super::Progress::new(progress);
        // Named as the author knows it: without progress, the SDK's default runs `start`.
        let with_progress = guard_plain("Provider::supports_progress", || {
            provider.supports_progress()
        })
        .unwrap_or(false);
        let what = if with_progress {
            "Provider::start_with_progress"
        } else {
            "Provider::start"
        };
        guard_future(what, async move {
            let instance = provider.start_with_progress(&attributes, progress).await?;
            Ok(FfiInstance_TO::from_value(
                InstanceAdapter(Arc::new(instance)),
                TD_Opaque,
            ))
        })
    }
    // ---- end of 1.2 ----
}

struct InstanceAdapter<I>(Arc<I>);

impl<I: Instance> FfiInstance for InstanceAdapter<I> {
    fn upload_script(&self, script: RVec<u8>) -> FfiResultFuture<()> {
        let instance = Arc::clone(&self.0);
        guard_future("Instance::upload_script", async move {
            instance.upload_script(script.as_slice()).await
        })
    }

    fn run_script(&self, output: OutputSinkBox) -> FfiResultFuture<RunResult> {
        let instance = Arc::clone(&self.0);
        guard_future("Instance::run_script", async move {
            let mut output = Output::new(output);
            instance.run_script(&mut output).await
        })
    }

    fn stop(&self) -> FfiResultFuture<()> {
        let instance = Arc::clone(&self.0);
        guard_future("Instance::stop", async move { instance.stop().await })
    }

    fn id(&self) -> RStr<'_> {
        // A panic here has no error channel: it is logged by the panic hook and the id
        // reads as empty.
        guard_plain("Instance::id", || RStr::from_str(self.0.id())).unwrap_or_default()
    }

    fn startup_duration(&self) -> RDuration {
        guard_plain("Instance::startup_duration", || {
            self.0.startup_duration().into()
        })
        .unwrap_or_else(|_| RDuration::from_secs(0))
    }

    // ---- appended in plugin-api 1.2 ----
    fn image_name(&self) -> RStr<'_> {
        guard_plain("Instance::image_name", || {
            RStr::from_str(self.0.image_name())
        })
        .unwrap_or_default()
    }

    fn warmed(&self) -> bool {
        guard_plain("Instance::warmed", || self.0.warmed()).unwrap_or(false)
    }

    fn supports_progress(&self) -> bool {
        guard_plain("Instance::supports_progress", || self.0.supports_progress()).unwrap_or(false)
    }

    fn download_trace(&self) -> FfiResultFuture<RVec<u8>> {
        let instance = Arc::clone(&self.0);
        guard_future("Instance::download_trace", async move {
            instance.download_trace().await.map(RVec::from)
        })
    }
    // ---- end of 1.2 ----
}
