//! Prometheus metrics at `/metrics`: request counts and latency by matched
//! route, and job counts by status read from the database at scrape time
//! (so every server of a cluster reports the same job figures).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AppState;
use crate::error::ApiResult;

/// (method, matched route, status).
type RequestKey = (String, String, u16);

/// Request counters, kept in memory per process: count and total seconds per key.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, (u64, f64)>>,
}

impl Metrics {
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
    state.metrics.render(&mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
