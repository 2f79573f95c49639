//! Forwards the plugin's `tracing` events and panic messages to the host's logger.
//!
//! A cdylib has its own copy of `tracing` with its own global dispatcher, so without this
//! bridge a plugin's log lines would go nowhere. The bridge is a minimal `Subscriber` that
//! formats each event and hands it to the [`FfiLogger`](crate::ffi::FfiLogger) the host gave
//! us at load time. Spans are not forwarded.

use std::fmt::Write as _;
use std::sync::OnceLock;

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::ffi::LoggerBox;

static LOGGER: OnceLock<LoggerBox> = OnceLock::new();

pub(crate) fn set_logger(logger: LoggerBox) {
    let max = logger.max_level();
    if LOGGER.set(logger).is_ok() {
        let _ = tracing::subscriber::set_global_default(Bridge {
            max: level_filter(max),
        });
    }
}

fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn level_filter(max: u8) -> LevelFilter {
    match max {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Installs the panic hook that forwards panic messages to the host's log and remembers
/// where the panic happened for the error the boundary guard returns.
pub(crate) fn install_panic_hook() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "an unknown location".to_owned());
            super::runtime::record_panic_location(location.clone());
            match LOGGER.get() {
                Some(logger) => {
                    let payload = info.payload();
                    let msg = payload
                        .downcast_ref::<&str>()
                        .copied()
                        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("(a non-string panic payload)");
                    let thread = std::thread::current();
                    let text = format!(
                        "thread '{}' panicked at {location}: {msg}",
                        thread.name().unwrap_or("<unnamed>")
                    );
                    logger.log(1, RStr::from_str("panic"), RStr::from_str(&text));
                }
                None => previous(info),
            }
        }));
    });
}

struct Bridge {
    max: LevelFilter,
}

impl Subscriber for Bridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let Some(logger) = LOGGER.get() else { return };
        let mut text = FieldText::default();
        event.record(&mut text);
        let meta = event.metadata();
        logger.log(
            level_number(meta.level()),
            RStr::from_str(meta.target()),
            RStr::from_str(&text.finish()),
        );
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// `message k=v k=v`, the way tracing-subscriber's compact format reads.
#[derive(Default)]
struct FieldText {
    message: String,
    fields: String,
}

impl FieldText {
    fn finish(mut self) -> String {
        if !self.fields.is_empty() {
            if !self.message.is_empty() {
                self.message.push(' ');
            }
            self.message.push_str(self.fields.trim_start());
        }
        self.message
    }
}

impl Visit for FieldText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}
