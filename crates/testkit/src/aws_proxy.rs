//! A fault-injecting proxy between an AWS SDK and moto's server: it forwards
//! every request, records which API action each was, refuses the actions a
//! test takes away with the error AWS gives (`AccessDeniedException`, with a
//! request id), keeps the request bodies (a Lambda invocation's payload), and mends the answers where moto departs from AWS's model in
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
    /// Errors to answer an action with once: (action, error type, message).
    failing: Vec<(String, String, String)>,
    actions: Vec<String>,
    bodies: Vec<(String, Vec<u8>)>,
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

/// The action of a request: a JSON-protocol one's `X-Amz-Target: Service.Action`, a Lambda REST one's by its route.
fn action_of(method: &Method, path: &str, headers: &HeaderMap) -> Option<String> {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return Some(target.rsplit('.').next()?.to_owned());
    }
    let rest = path.strip_prefix("/2015-03-31/functions")?.trim_end_matches('/');
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let action = match (method.as_str(), parts.as_slice()) {
        ("POST", []) => "CreateFunction",
        ("GET", [_]) => "GetFunction",
        ("DELETE", [_]) => "DeleteFunction",
        ("GET", [_, "configuration"]) => "GetFunctionConfiguration",
        ("PUT", [_, "configuration"]) => "UpdateFunctionConfiguration",
        ("PUT", [_, "code"]) => "UpdateFunctionCode",
        ("POST", [_, "invocations"]) => "Invoke",
        _ => return None,
    };
    Some(action.to_owned())
}

/// The service prefix IAM names an action with.
fn service_of(path: &str, headers: &HeaderMap) -> &'static str {
    match headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        Some(t) if t.starts_with("AmazonEC2ContainerService") => "ecs",
        Some(t) if t.starts_with("Logs") => "logs",
        _ if path.starts_with("/2015-03-31/functions") => "lambda",
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

    /// Answers the next call of `action` with the AWS error `kind` (e.g. `InvalidParameterValueException`) and `message`.
    pub fn fail_next(&self, action: &str, kind: &str, message: &str) {
        self.shared.faults.lock().unwrap().failing.push((action.to_owned(), kind.to_owned(), message.to_owned()));
    }

    /// Gives `action` back.
    pub fn allow(&self, action: &str) {
        self.shared.faults.lock().unwrap().denied.remove(action);
    }

    /// The actions called so far, in order.
    pub fn actions(&self) -> Vec<String> {
        self.shared.faults.lock().unwrap().actions.clone()
    }

    /// The request bodies of `action` so far (e.g. Lambda `Invoke` payloads), as JSON.
    pub fn bodies(&self, action: &str) -> Vec<Value> {
        let faults = self.shared.faults.lock().unwrap();
        faults.bodies.iter().filter(|(a, _)| a == action).filter_map(|(_, b)| serde_json::from_slice(b).ok()).collect()
    }
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = action_of(&method, uri.path(), &headers);
    let service = service_of(uri.path(), &headers);
    if let Some(action) = &action {
        let mut faults = shared.faults.lock().unwrap();
        faults.actions.push(action.clone());
        faults.bodies.push((action.clone(), body.to_vec()));
        if let Some(index) = faults.failing.iter().position(|(a, _, _)| a == action) {
            let (_, kind, message) = faults.failing.remove(index);
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .header("content-type", "application/x-amz-json-1.1")
                .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string())
                .header("x-amzn-errortype", kind.as_str())
                .body(Body::from(
                    json!({"__type": kind, "Type": "User", "message": message, "Message": message}).to_string(),
                ))
                .unwrap_or_default();
        }
        if faults.denied.contains(action) {
            let iam = if action == "Invoke" { "InvokeFunction" } else { action.as_str() };
            let message = format!(
                "User: arn:aws:sts::123456789012:assumed-role/viberglass-server/i-0abc is not authorized to perform: \
                 {service}:{iam} on resource: * because no identity-based policy allows the {service}:{iam} action"
            );
            // JSON-protocol services answer 400 with `__type`; Lambda's REST API 403 with the type in a header.
            let (status, content_type) = if service == "lambda" {
                (StatusCode::FORBIDDEN, "application/json")
            } else {
                (StatusCode::BAD_REQUEST, "application/x-amz-json-1.1")
            };
            return Response::builder()
                .status(status)
                .header("content-type", content_type)
                .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string())
                .header("x-amzn-errortype", "AccessDeniedException")
                .body(Body::from(
                    json!({"__type": "AccessDeniedException", "Type": "User", "message": message, "Message": message})
                        .to_string(),
                ))
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
        Ok(mut value) if service == "ecs" => {
            mend_ecs(&mut value);
            value.to_string().into_bytes()
        }
        _ => bytes.to_vec(),
    };
    builder.body(Body::from(mended)).unwrap_or_default()
}
