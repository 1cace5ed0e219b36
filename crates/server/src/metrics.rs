//! Prometheus metrics at `/metrics`.
//!
//! Two kinds, and the names say which: figures read from the database at
//! scrape time (job counts by status, webhook deliveries, outbox backlog), the
//! same on every server of a cluster; and this process's own counters and
//! histograms (requests, dispatch latency, job durations, failures by layer,
//! agent tokens and cost), each event counted once, on the server it happened
//! on, so a cluster's figure is their `sum`. Every label value comes from a
//! closed set (routes as matched, the domain's enums), so no input can grow
//! the series. README.md's "Metrics" section lists them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use time::OffsetDateTime;
use viberglass_domain::protocol::Usage;
use viberglass_domain::{ComputeKind, FailureLayer, Job};
use viberglass_store::Outcome;

use crate::AppState;
use crate::error::ApiResult;

/// (method, matched route, status).
type RequestKey = (String, String, u16);

/// Upper bounds (seconds) of the job-duration buckets: a research run takes minutes, an execution up to hours.
const DURATION_BUCKETS: &[f64] = &[10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0];
/// Upper bounds (seconds) of the dispatch-latency buckets: queued to the worker launched.
const DISPATCH_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The most tokens (each way) one job's report counts for.
const MAX_JOB_TOKENS: u64 = 1_000_000_000_000;
/// The most US dollars one job's report counts for.
const MAX_JOB_COST_USD: f64 = 1_000_000.0;

/// A Prometheus histogram: cumulative counts per upper bound, plus sum and count.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, value: f64) {
        let value = value.max(0.0);
        for (bound, count) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {:.3}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// What this process saw of jobs. Keys are the domain's enum names.
#[derive(Default)]
struct JobFigures {
    /// (phase, target) → seconds from queued to the worker launched.
    dispatch: BTreeMap<(&'static str, &'static str), Histogram>,
    /// (phase, target, outcome) → seconds the run took (from the worker's start, else from its launch or queueing).
    duration: BTreeMap<(&'static str, &'static str, &'static str), Histogram>,
    /// (phase, layer) → failed jobs.
    failures: BTreeMap<(&'static str, &'static str), u64>,
    /// (phase, target, direction) → tokens the agent reported.
    tokens: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// (phase, target) → the cost in US dollars the agent reported.
    cost: BTreeMap<(&'static str, &'static str), f64>,
}

/// What the metrics keep of how a job ended (taken before the outcome is stored).
#[derive(Debug, Clone)]
pub struct JobEnd {
    outcome: &'static str,
    layer: Option<FailureLayer>,
    usage: Option<Usage>,
}

impl JobEnd {
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Completed { result, .. } => {
                JobEnd { outcome: "completed", layer: None, usage: result.usage.clone() }
            }
            Outcome::Failed { failure, result } => JobEnd {
                outcome: "failed",
                layer: Some(failure.layer),
                usage: result.as_ref().and_then(|r| r.usage.clone()),
            },
            Outcome::Cancelled { .. } => JobEnd { outcome: "cancelled", layer: None, usage: None },
        }
    }
}

/// This process's counters: requests (count and total seconds per key) and job figures.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, (u64, f64)>>,
    jobs: Mutex<JobFigures>,
}

fn target_of(job: &Job) -> &'static str {
    job.compute_kind.map_or("none", |k| k.as_str())
}

impl Metrics {
    /// A worker was launched for `job` on `target`.
    pub fn job_dispatched(&self, job: &Job, target: ComputeKind) {
        let waited = (OffsetDateTime::now_utc() - job.queued_at).as_seconds_f64();
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.dispatch
            .entry((job.phase.as_str(), target.as_str()))
            .or_insert_with(|| Histogram::new(DISPATCH_BUCKETS))
            .observe(waited);
    }

    /// `job` ended as `end` says (called once per job, by the call that ended it).
    pub fn job_ended(&self, job: &Job, end: &JobEnd) {
        let phase = job.phase.as_str();
        let target = target_of(job);
        let began = job.started_at.or(job.dispatched_at).unwrap_or(job.queued_at);
        let took = (OffsetDateTime::now_utc() - began).as_seconds_f64();
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let histogram =
            jobs.duration.entry((phase, target, end.outcome)).or_insert_with(|| Histogram::new(DURATION_BUCKETS));
        histogram.observe(took);
        if let Some(layer) = end.layer {
            let failures = jobs.failures.entry((phase, layer.as_str())).or_default();
            *failures = failures.saturating_add(1);
        }
        // What an agent reports is its own say (a steered agent can write any number): one job counts for at most
        // MAX_JOB_TOKENS tokens each way and MAX_JOB_COST_USD, and the counters saturate.
        if let Some(usage) = &end.usage {
            for (direction, tokens) in [("input", usage.input_tokens), ("output", usage.output_tokens)] {
                let counter = jobs.tokens.entry((phase, target, direction)).or_default();
                *counter = counter.saturating_add(tokens.min(MAX_JOB_TOKENS));
            }
            if let Some(cost) = usage.cost_usd.filter(|c| c.is_finite() && *c >= 0.0) {
                *jobs.cost.entry((phase, target)).or_default() += cost.min(MAX_JOB_COST_USD);
            }
        }
    }

    fn render_jobs(&self, out: &mut String) {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(
            "# HELP viberglass_job_dispatch_seconds Time from a job queued to its worker launched, by phase and compute target (this server's launches).\n\
             # TYPE viberglass_job_dispatch_seconds histogram\n",
        );
        for ((phase, target), histogram) in &jobs.dispatch {
            histogram.render(out, "viberglass_job_dispatch_seconds", &format!("phase=\"{phase}\",target=\"{target}\""));
        }
        out.push_str(
            "# HELP viberglass_job_duration_seconds How long jobs ran, by phase, compute target and outcome (jobs this server ended).\n\
             # TYPE viberglass_job_duration_seconds histogram\n",
        );
        for ((phase, target, outcome), histogram) in &jobs.duration {
            let labels = format!("phase=\"{phase}\",target=\"{target}\",outcome=\"{outcome}\"");
            histogram.render(out, "viberglass_job_duration_seconds", &labels);
        }
        out.push_str(
            "# HELP viberglass_job_failures_total Failed jobs by phase and the layer that broke (jobs this server ended).\n\
             # TYPE viberglass_job_failures_total counter\n",
        );
        for ((phase, layer), count) in &jobs.failures {
            let _ = writeln!(out, "viberglass_job_failures_total{{phase=\"{phase}\",layer=\"{layer}\"}} {count}");
        }
        out.push_str(
            "# HELP viberglass_agent_tokens_total Tokens the agents reported, by phase, compute target and direction (input, output).\n\
             # TYPE viberglass_agent_tokens_total counter\n",
        );
        for ((phase, target, direction), count) in &jobs.tokens {
            let _ = writeln!(
                out,
                "viberglass_agent_tokens_total{{phase=\"{phase}\",target=\"{target}\",direction=\"{direction}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP viberglass_agent_cost_usd_total What the agents reported their runs cost, in US dollars, by phase and compute target.\n\
             # TYPE viberglass_agent_cost_usd_total counter\n",
        );
        for ((phase, target), cost) in &jobs.cost {
            let _ = writeln!(out, "viberglass_agent_cost_usd_total{{phase=\"{phase}\",target=\"{target}\"}} {cost:.6}");
        }
    }

    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry((method.to_owned(), route.to_owned(), status)).or_default();
        entry.0 += 1;
        entry.1 += seconds;
    }

    fn render(&self, out: &mut String) {
        let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP viberglass_http_requests_total HTTP requests served, by matched route and status.\n");
        out.push_str("# TYPE viberglass_http_requests_total counter\n");
        for ((method, route, status), (count, _)) in map.iter() {
            let _ = writeln!(
                out,
                "viberglass_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {count}",
                escape(route)
            );
        }
        out.push_str("# HELP viberglass_http_request_seconds_sum Time spent serving requests, by matched route.\n");
        out.push_str("# TYPE viberglass_http_request_seconds_sum counter\n");
        for ((method, route, status), (_, seconds)) in map.iter() {
            let _ = writeln!(
                out,
                "viberglass_http_request_seconds_sum{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {seconds:.6}",
                escape(route)
            );
        }
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus text exposition of this server's metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let mut out = String::new();
    out.push_str("# HELP viberglass_build_info The running version.\n# TYPE viberglass_build_info gauge\n");
    let _ = writeln!(out, "viberglass_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    let (live, hits, misses) = state.store.credential_cache_state();
    let _ = write!(
        out,
        "# HELP viberglass_credential_cache_live Whether sessions and API tokens are served from memory (PostgreSQL, while this server listens for revocations).\n\
         # TYPE viberglass_credential_cache_live gauge\nviberglass_credential_cache_live {}\n\
         # HELP viberglass_credential_cache_lookups_total Credential lookups by whether memory answered.\n\
         # TYPE viberglass_credential_cache_lookups_total counter\n\
         viberglass_credential_cache_lookups_total{{result=\"hit\"}} {hits}\n\
         viberglass_credential_cache_lookups_total{{result=\"miss\"}} {misses}\n",
        u8::from(live)
    );
    out.push_str("# HELP viberglass_jobs Jobs by status, from the database.\n# TYPE viberglass_jobs gauge\n");
    // Still served when the database is down: the request metrics and `viberglass_database_up` say so.
    match tokio::time::timeout(std::time::Duration::from_secs(1), state.store.job_counts()).await {
        Ok(Ok(counts)) => {
            for (status, count) in counts {
                let _ = writeln!(out, "viberglass_jobs{{status=\"{status}\"}} {count}");
            }
            out.push_str("# HELP viberglass_database_up Whether the database answered.\n# TYPE viberglass_database_up gauge\nviberglass_database_up 1\n");
        }
        _ => out.push_str("# HELP viberglass_database_up Whether the database answered.\n# TYPE viberglass_database_up gauge\nviberglass_database_up 0\n"),
    }
    if let Ok(Ok((deliveries, feedback))) =
        tokio::time::timeout(std::time::Duration::from_secs(1), state.store.webhook_counts()).await
    {
        out.push_str(
            "# HELP viberglass_webhook_deliveries Inbound webhook deliveries by provider and outcome, from the database.\n\
             # TYPE viberglass_webhook_deliveries gauge\n",
        );
        // Only known providers become label values: an address anyone can post to must not grow the series.
        let mut known: BTreeMap<(String, String), i64> = BTreeMap::new();
        for (provider, status, count) in deliveries {
            let provider = provider.parse::<viberglass_domain::WebhookProvider>().map_or("unknown", |p| p.as_str());
            *known.entry((provider.to_owned(), escape(&status))).or_default() += count;
        }
        for ((provider, status), count) in known {
            let _ =
                writeln!(out, "viberglass_webhook_deliveries{{provider=\"{provider}\",status=\"{status}\"}} {count}");
        }
        out.push_str(
            "# HELP viberglass_source_feedback Comments owed to ticket sources by status (pending, delivered, failed).\n\
             # TYPE viberglass_source_feedback gauge\n",
        );
        for (status, count) in feedback {
            let _ = writeln!(out, "viberglass_source_feedback{{status=\"{status}\"}} {count}");
        }
    }
    if let Ok(Ok(counts)) = tokio::time::timeout(std::time::Duration::from_secs(1), state.store.outbound_counts()).await
    {
        out.push_str(
            "# HELP viberglass_outbound_webhook_deliveries Outbound webhook deliveries by status (pending, succeeded, failed), from the database.\n\
             # TYPE viberglass_outbound_webhook_deliveries gauge\n",
        );
        for (status, count) in counts {
            let _ = writeln!(out, "viberglass_outbound_webhook_deliveries{{status=\"{}\"}} {count}", escape(&status));
        }
    }
    if let Ok(Ok(consumers)) = tokio::time::timeout(std::time::Duration::from_secs(1), state.store.consumer_lag()).await
    {
        out.push_str(
            "# HELP viberglass_outbox_pending_events Events written after each outbox consumer's cursor, from the database.\n\
             # TYPE viberglass_outbox_pending_events gauge\n",
        );
        for c in &consumers {
            let _ = writeln!(out, "viberglass_outbox_pending_events{{consumer=\"{}\"}} {}", escape(&c.name), c.pending);
        }
        out.push_str(
            "# HELP viberglass_outbox_lag_seconds Age of the oldest event each outbox consumer has not handled (0 when caught up).\n\
             # TYPE viberglass_outbox_lag_seconds gauge\n",
        );
        for c in &consumers {
            let _ =
                writeln!(out, "viberglass_outbox_lag_seconds{{consumer=\"{}\"}} {:.3}", escape(&c.name), c.lag_seconds);
        }
    }
    state.metrics.render(&mut out);
    state.metrics.render_jobs(&mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
