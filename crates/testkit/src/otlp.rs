//! An OTLP/HTTP trace receiver, as an OpenTelemetry Collector answers: `POST
//! /v1/traces` with an `ExportTraceServiceRequest` in protobuf. It keeps every
//! span it is sent, decoded, for a test to assert the span tree.
//!
//! Faithful where an exporter would notice: anything but
//! `application/x-protobuf` is 415, a body that does not decode is 400 with a
//! message, and success is 200 with an (empty) `ExportTraceServiceResponse`
//! in protobuf.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message;

/// One span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// Hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// The span kind's number (1 internal, 2 server, 3 client...).
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    /// Its events, each as its name and its attributes' `key=value` pairs.
    pub events: Vec<String>,
    /// The resource's `service.name`.
    pub service: String,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    requests: usize,
}

/// The receiver; it stops when dropped.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    _server: tokio::task::JoinHandle<()>,
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

async fn traces(State(received): State<Arc<Mutex<Received>>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type != "application/x-protobuf" {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported content type `{content_type}`"))
            .into_response();
    }
    let request = match ExportTraceServiceRequest::decode(body.as_ref()) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not an ExportTraceServiceRequest: {e}")).into_response(),
    };
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: span.attributes.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref()))).collect(),
                    events: span
                        .events
                        .iter()
                        .map(|e| {
                            let attributes: Vec<String> = e
                                .attributes
                                .iter()
                                .map(|kv| format!("{}={}", kv.key, text(kv.value.as_ref())))
                                .collect();
                            format!("{} {}", e.name, attributes.join(" "))
                        })
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    if let Ok(mut received) = received.lock() {
        received.requests += 1;
        received.spans.extend(spans);
    }
    let answer = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
    ([(header::CONTENT_TYPE, "application/x-protobuf")], answer).into_response()
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = axum::Router::new().route("/v1/traces", post(traces)).with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OtlpReceiver { addr, received, _server: server }
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter adds `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().map(|r| r.spans.clone()).unwrap_or_default()
    }

    /// Export requests taken so far.
    pub fn requests(&self) -> usize {
        self.received.lock().map(|r| r.requests).unwrap_or_default()
    }

    /// Waits until `done` holds for the spans received, and returns them.
    pub async fn wait_for(&self, within: Duration, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the spans wanted did not arrive within {within:?}; received: {:#?}",
                spans.iter().map(|s| (&s.name, &s.trace_id, &s.span_id, &s.parent_span_id)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[tokio::test]
    async fn decodes_spans_and_refuses_what_a_collector_refuses() {
        let receiver = OtlpReceiver::start().await;
        let url = format!("{}/v1/traces", receiver.endpoint());
        let client = reqwest::Client::new();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue { value: Some(any_value::Value::StringValue("svc".into())) }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        name: "GET /x".into(),
                        kind: 2,
                        attributes: vec![KeyValue {
                            key: "job.id".into(),
                            value: Some(AnyValue { value: Some(any_value::Value::StringValue("j1".into())) }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let ok = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(request.encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let spans = receiver.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].name.as_str(), spans[0].service.as_str()), ("GET /x", "svc"));
        assert_eq!(spans[0].trace_id, "01".repeat(16));
        assert_eq!(spans[0].parent_span_id, "", "a root span");
        assert_eq!(spans[0].attribute("job.id"), Some("j1"));

        let json = client.post(&url).header("content-type", "application/json").body("{}").send().await.unwrap();
        assert_eq!(json.status(), 415);
        let garbage = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(vec![0xff, 0xff, 0xff])
            .send()
            .await
            .unwrap();
        assert_eq!(garbage.status(), 400);
        assert_eq!(receiver.requests(), 1, "refused requests keep nothing");
    }
}
