//! Logging and tracing.
//!
//! Logs: readable text by default, one JSON object per line with
//! `LOG_FORMAT=json`. Spans carry the structured context (the request's
//! `request_id`, a job's `job_id`), and every line inside a span carries it.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the same spans also go to an
//! OpenTelemetry collector over OTLP/HTTP (protobuf), named by
//! `OTEL_SERVICE_NAME`, batched on a thread of their own. One trace runs from
//! the HTTP request that queued a job through its dispatch to the worker's
//! steps: the job's spec carries the request's W3C `traceparent`, and the
//! worker continues it. Unset, nothing is exported and nothing is kept.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::LogFormat;

/// The tracer provider this process exports through, when tracing is on.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether a request's `traceparent` header is continued (`VIBERGLASS_TRUST_TRACEPARENT`). Off, every request
/// starts a trace of its own: anyone could otherwise choose whether their requests and runs are sampled, or join
/// another trace.
static TRUST_TRACEPARENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set once at startup from the configuration.
pub fn set_trust_traceparent(trust: bool) {
    TRUST_TRACEPARENT.store(trust, std::sync::atomic::Ordering::Relaxed);
}

/// Continues a request's `traceparent` when the configuration trusts it (see [`set_trust_traceparent`]).
pub fn continue_request_trace(span: &tracing::Span, traceparent: &str) {
    if TRUST_TRACEPARENT.load(std::sync::atomic::Ordering::Relaxed) {
        continue_trace(span, traceparent);
    }
}

/// Builds the subscriber for a format, level and writer, exporting spans through `tracer` when given.
pub fn subscriber<W>(
    format: LogFormat,
    level: &str,
    ansi: bool,
    writer: W,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Spans only: an event's fields (a progress line naming the repository, an error quoting a URL) stay in the
    // logs and never become span events at the collector.
    let exporter = tracer.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t)
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| metadata.is_span()))
    });
    let registry = Registry::default().with(filter).with(exporter);
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

/// Whether the standard variables ask for traces.
fn tracing_wanted(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The OTLP/HTTP exporter and its provider, from the standard variables. An
/// error is a bad setting (an endpoint that is not a URL, a bad header list).
fn tracer_provider(role: &'static str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| e.to_string())?;
    // service.name from OTEL_SERVICE_NAME (else `viberglass`), plus OTEL_RESOURCE_ATTRIBUTES.
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
        resource = resource.with_service_name("viberglass");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(opentelemetry::KeyValue::new("viberglass.role", role))
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Installs logging to standard output for this process, and the trace
/// exporter when the standard OTLP variables ask for it. `role` (`server`,
/// `worker`) is a resource attribute of every span.
pub fn init(format: LogFormat, level: &str, role: &'static str) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut problem = None;
    let tracer = if tracing_wanted(|name| std::env::var(name).ok()) {
        match tracer_provider(role) {
            Ok(provider) => {
                let tracer = provider.tracer("viberglass");
                let _ = PROVIDER.set(provider);
                Some(tracer)
            }
            Err(e) => {
                problem = Some(e);
                None
            }
        }
    } else {
        None
    };
    let _ = subscriber(format, level, ansi, std::io::stdout, tracer).try_init();
    match problem {
        Some(e) => tracing::warn!(
            error = %e,
            "traces are not exported: the OTLP exporter could not be set up; check OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_HEADERS"
        ),
        // Scheme, host and port only: an endpoint may carry credentials, and a worker's log is in its workspace.
        None if PROVIDER.get().is_some() => tracing::info!(
            collector = %std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
                .ok()
                .and_then(|e| url::Url::parse(e.trim()).ok())
                .map(|u| format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or("?"), u.port_or_known_default().unwrap_or(0)))
                .unwrap_or_else(|| "(unparsed)".into()),
            "exporting traces over OTLP/HTTP"
        ),
        None => {}
    }
}

/// Whether this process exports traces.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Sends the spans still batched (at exit). Nothing when tracing is off.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        eprintln!("viberglass: the last traces could not be exported: {e}");
    }
}

/// The W3C `traceparent` of `span`, when it is being traced (for a job's spec, so its worker continues the trace).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    PROVIDER.get()?;
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` (just created, not yet entered) a child of the span `traceparent` names. A malformed value is
/// ignored: the span starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if PROVIDER.get().is_none() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_set() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert!(!tracing_wanted(env(&[])));
        assert!(!tracing_wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(tracing_wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])));
        assert!(tracing_wanted(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")])));
        assert!(!tracing_wanted(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ])));
    }
}
