//! A fake of the AWS Lambda Runtime API (the interface a function's runtime
//! polls inside Lambda): `GET /2018-06-01/runtime/invocation/next` waits for
//! an event the test queues and answers it with its request id, deadline and
//! function ARN headers; `POST .../invocation/{id}/response` and `/error`
//! record the function's answer (an unknown request id is refused, as Lambda
//! does). Tests run the real worker binary (`viberglass worker --lambda`)
//! against it with `AWS_LAMBDA_RUNTIME_API`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

#[derive(Default)]
struct Runtime {
    queued: VecDeque<(String, Value)>,
    /// Handed out, not yet answered.
    pending: BTreeMap<String, Value>,
    /// Answers: request id → (`response` or `error`, body).
    answers: BTreeMap<String, (String, Value)>,
}

struct Shared {
    runtime: Mutex<Runtime>,
    wake: tokio::sync::Notify,
}

pub struct FakeLambdaRuntime {
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for FakeLambdaRuntime {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeLambdaRuntime {
    pub async fn start() -> FakeLambdaRuntime {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shared = Arc::new(Shared { runtime: Mutex::new(Runtime::default()), wake: tokio::sync::Notify::new() });
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        FakeLambdaRuntime { address, shared, stop }
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API` (host:port).
    pub fn api(&self) -> String {
        self.address.to_string()
    }

    /// Queues an invocation; returns its request id.
    pub fn invoke(&self, event: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.shared.runtime.lock().unwrap().queued.push_back((id.clone(), event));
        self.shared.wake.notify_waiters();
        id
    }

    /// The function's answer to `request` (`("response" | "error", body)`), once it gave one.
    pub fn answer(&self, request: &str) -> Option<(String, Value)> {
        self.shared.runtime.lock().unwrap().answers.get(request).cloned()
    }

    /// Waits up to `within` for the answer to `request`.
    pub async fn wait_for_answer(&self, request: &str, within: Duration) -> (String, Value) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(answer) = self.answer(request) {
                return answer;
            }
            assert!(std::time::Instant::now() < deadline, "no answer to invocation {request} within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn respond(status: StatusCode, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

async fn handle(State(shared): State<Arc<Shared>>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().trim_end_matches('/');
    let Some(rest) = path.strip_prefix("/2018-06-01/runtime") else {
        return respond(
            StatusCode::NOT_FOUND,
            json!({"errorMessage": "not a Runtime API path", "errorType": "NotFound"}),
        );
    };
    match (method, rest.split('/').filter(|p| !p.is_empty()).collect::<Vec<_>>().as_slice()) {
        (Method::GET, ["invocation", "next"]) => loop {
            let notified = shared.wake.notified();
            if let Some((id, event)) = {
                let mut runtime = shared.runtime.lock().unwrap();
                let next = runtime.queued.pop_front();
                if let Some((id, event)) = &next {
                    runtime.pending.insert(id.clone(), event.clone());
                }
                next
            } {
                let deadline =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
                        + 900_000;
                return Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .header("lambda-runtime-aws-request-id", id)
                    .header("lambda-runtime-deadline-ms", deadline.to_string())
                    .header(
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:viberglass-worker",
                    )
                    .body(Body::from(event.to_string()))
                    .unwrap_or_default();
            }
            notified.await;
        },
        (Method::POST, ["invocation", id, kind @ ("response" | "error")]) => {
            let mut runtime = shared.runtime.lock().unwrap();
            if runtime.pending.remove(*id).is_none() {
                return respond(
                    StatusCode::BAD_REQUEST,
                    json!({"errorMessage": format!("invalid request id {id}"), "errorType": "InvalidRequestID"}),
                );
            }
            let answer = serde_json::from_slice(&body).unwrap_or(Value::Null);
            runtime.answers.insert((*id).to_owned(), ((*kind).to_owned(), answer));
            respond(StatusCode::ACCEPTED, json!({"status": "OK"}))
        }
        _ => {
            respond(StatusCode::NOT_FOUND, json!({"errorMessage": "unknown Runtime API call", "errorType": "NotFound"}))
        }
    }
}
