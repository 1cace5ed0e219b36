//! Logging: readable text by default, one JSON object per line with
//! `LOG_FORMAT=json`. Spans carry the structured context (the request's
//! `request_id`, a job's `job_id`), and every line inside a span carries it.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::LogFormat;

/// Builds the subscriber for a format, level and writer.
pub fn subscriber<W>(
    format: LogFormat,
    level: &str,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = Registry::default().with(filter);
    match format {
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(writer),
            ),
        ),
        LogFormat::Text => Box::new(
            registry.with(tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi).with_writer(writer)),
        ),
    }
}

/// Installs logging to standard output for this process.
pub fn init(format: LogFormat, level: &str) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = subscriber(format, level, ansi, std::io::stdout).try_init();
}
