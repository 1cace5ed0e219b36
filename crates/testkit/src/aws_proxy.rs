//! A fault-injecting proxy between an AWS SDK and moto's server: it forwards
//! every request, records which API action each was, refuses the actions a
//! test takes away with the error AWS gives (`AccessDeniedException`, with a
//! request id), and mends the answers where moto departs from AWS's model in
//! ways a strict SDK cannot read (moto 5.2 sends an ECS container's `cpu` and
//! `memory` as numbers; the ECS model has strings).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

#[derive(Default)]
struct Faults {
    denied: BTreeSet<String>,
    actions: Vec<String>,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    faults: Mutex<Faults>,
}

pub struct AwsProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The action of a JSON-protocol request (`X-Amz-Target: Service.Action`).
fn action_of(headers: &HeaderMap) -> Option<String> {
    let target = headers.get("x-amz-target")?.to_str().ok()?;
    Some(target.rsplit('.').next()?.to_owned())
}

/// The service prefix IAM names an action with, from its target.
fn service_of(headers: &HeaderMap) -> &'static str {
    match headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        Some(t) if t.starts_with("AmazonEC2ContainerService") => "ecs",
        Some(t) if t.starts_with("Logs") => "logs",
        _ => "aws",
    }
}

/// Numbers where the ECS model has strings, made strings.
fn mend_ecs(body: &mut Value) {
    let mut fix = |task: &mut Value| {
        for container in task["containers"].as_array_mut().into_iter().flatten() {
            for field in ["cpu", "memory", "memoryReservation"] {
                if let Some(n) = container.get(field).filter(|v| v.is_number()).cloned() {
                    container[field] = json!(n.to_string());
                }
            }
        }
    };
    if let Some(tasks) = body["tasks"].as_array_mut() {
        tasks.iter_mut().for_each(&mut fix);
    }
    if body["task"].is_object() {
        fix(&mut body["task"]);
    }
}

impl AwsProxy {
    /// Starts a proxy in front of `upstream` (moto's endpoint).
    pub async fn start(upstream: &str) -> AwsProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            faults: Mutex::new(Faults::default()),
        });
        let app = axum::Router::new().fallback(forward).with_state(shared.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        AwsProxy { address, shared, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Refuses `action` (e.g. `RegisterTaskDefinition`) as IAM would.
    pub fn deny(&self, action: &str) {
        self.shared.faults.lock().unwrap().denied.insert(action.to_owned());
    }

    /// Gives `action` back.
    pub fn allow(&self, action: &str) {
        self.shared.faults.lock().unwrap().denied.remove(action);
    }

    /// The actions called so far, in order.
    pub fn actions(&self) -> Vec<String> {
        self.shared.faults.lock().unwrap().actions.clone()
    }
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = action_of(&headers);
    if let Some(action) = &action {
        let mut faults = shared.faults.lock().unwrap();
        faults.actions.push(action.clone());
        if faults.denied.contains(action) {
            let service = service_of(&headers);
            let message = format!(
                "User: arn:aws:sts::123456789012:assumed-role/viberglass-server/i-0abc is not authorized to perform: \
                 {service}:{action} on resource: * because no identity-based policy allows the {service}:{action} action"
            );
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .header("content-type", "application/x-amz-json-1.1")
                .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string())
                .body(Body::from(json!({"__type": "AccessDeniedException", "message": message}).to_string()))
                .unwrap_or_default();
        }
    }
    let url = format!("{}{}", shared.upstream, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut request = shared.client.request(method, &url).body(body.to_vec());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(format!("the proxy cannot reach moto: {e}")))
                .unwrap_or_default();
        }
    };
    let status = answer.status();
    let mut builder = Response::builder().status(status.as_u16());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            builder = builder.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    let mended = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut value) if service_of(&headers) == "ecs" => {
            mend_ecs(&mut value);
            value.to_string().into_bytes()
        }
        _ => bytes.to_vec(),
    };
    builder.body(Body::from(mended)).unwrap_or_default()
}
