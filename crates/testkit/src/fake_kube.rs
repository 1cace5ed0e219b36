//! A fake Kubernetes API server: the subset Viberglass's Kubernetes target
//! uses (batch/v1 Jobs, Pods and their logs, Secrets,
//! SelfSubjectAccessReview), over HTTP with a bearer token, as kube-rs talks
//! to a real cluster. No API server can be installed on these machines.
//!
//! It keeps state and behaves like a one-node cluster:
//! - a Job's controller creates its pod, which is scheduled when its
//!   requests fit the node (else it stays Pending, `Unschedulable`), pulls
//!   its images (an image not registered with [`FakeKube::add_image`] fails
//!   with `ErrImagePull`, then `ImagePullBackOff`), waits for its Secret
//!   volumes, and then really runs its init containers and its container as
//!   local processes. A container's volume mounts are directories of the
//!   pod; every mount path in its command, arguments, environment and
//!   working directory is rewritten to that directory (the process shares
//!   this machine's filesystem, so that is how it "sees" its volumes);
//! - `activeDeadlineSeconds`, `backoffLimit: 0` and `ttlSecondsAfterFinished`
//!   are honoured; deleting a Job kills its pods' processes and garbage-
//!   collects the Secrets it owns (`ownerReferences`);
//! - it refuses what a real API server refuses, in its words and `Status`
//!   objects: a missing or wrong token (401), an RBAC rule taken away with
//!   [`FakeKube::refuse`] (403, and `allowed: false` in access reviews), a
//!   missing namespace on create (404), a duplicate name (409), an invalid
//!   object (422);
//! - [`FakeKube::oom_kill`] and [`FakeKube::evict`] end running pods as the
//!   kubelet does on memory pressure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

/// An image the fake node can "pull": what its entrypoint runs here.
#[derive(Debug, Clone)]
pub struct FakeImage {
    /// The local program the image's ENTRYPOINT stands for.
    pub entrypoint: PathBuf,
    /// The image's environment (e.g. PATH, HOME).
    pub env: Vec<(String, String)>,
    /// A pull secret the registry wants: pods without it fail to pull.
    pub pull_secret: Option<String>,
}

#[derive(Debug, Default)]
struct Pod {
    object: Value,
    log: Vec<u8>,
    /// The running container's process id.
    pid: Option<u32>,
    /// How the kubelet is to end it (`OOMKilled`, `Evicted`).
    kill: Option<&'static str>,
}

#[derive(Debug, Default)]
struct Cluster {
    namespaces: BTreeSet<String>,
    jobs: BTreeMap<(String, String), Value>,
    pods: BTreeMap<(String, String), Pod>,
    secrets: BTreeMap<(String, String), Value>,
    images: BTreeMap<String, FakeImage>,
    /// Refused rules: (verb, group, resource[/subresource]).
    refused: BTreeSet<(String, String, String)>,
    /// The node's allocatable CPU (millicores) and memory (bytes).
    node: (u64, u64),
    requests: Vec<String>,
    next: u64,
}

struct Shared {
    token: String,
    root: PathBuf,
    cluster: Mutex<Cluster>,
}

pub struct FakeKube {
    address: SocketAddr,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop.cancel();
        // Every pod's process dies with the cluster.
        let pids: Vec<u32> =
            self.shared.cluster.lock().map(|c| c.pods.values().filter_map(|p| p.pid).collect()).unwrap_or_default();
        for pid in pids {
            kill_tree(pid);
        }
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A `Status` object, as the API server answers errors.
fn status(code: StatusCode, reason: &str, message: String, details: Value) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "details": details, "code": code.as_u16()});
    respond(code, body)
}

fn respond(code: StatusCode, body: Value) -> Response {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether an object's labels match a label selector (`k=v`, `k!=v`, `k`, comma-separated).
fn selects(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').map(str::trim).filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k].as_str() == Some(v)
        } else {
            labels.get(term).is_some()
        }
    })
}

/// A CPU quantity in millicores (`500m`, `1.5`, `2`).
fn millicores(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or(u64::MAX),
        None => q.parse::<f64>().map(|c| (c * 1000.0) as u64).unwrap_or(u64::MAX),
    }
}

/// A memory quantity in bytes (`512Mi`, `1Gi`, `1G`, `1000`).
fn bytes(q: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().map(|n| n.saturating_mul(factor)).unwrap_or(u64::MAX);
        }
    }
    q.parse().unwrap_or(u64::MAX)
}

/// Kills a process and every process below it.
fn kill_tree(pid: u32) {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // The parent is the second field after the command's closing parenthesis.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            if let Some(parent) = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
                children.entry(parent).or_default().push(id);
            }
        }
    }
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children.get(&all[i]).cloned().unwrap_or_default());
        i += 1;
    }
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(all.iter().map(u32::to_string))
        .stderr(std::process::Stdio::null())
        .status();
}

impl FakeKube {
    /// A cluster with the namespaces `default` and `viberglass`, a node of 4 CPUs and 8 GiB, and no images.
    pub async fn start() -> FakeKube {
        let dir = tempfile::Builder::new().prefix("viberglass-kube-").tempdir_in("/var/tmp").expect("temporary dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let cluster = Cluster {
            namespaces: ["default", "viberglass"].into_iter().map(str::to_owned).collect(),
            node: (4000, 8 << 30),
            next: 1,
            ..Cluster::default()
        };
        let shared = Arc::new(Shared {
            token: format!("fake-kube-token-{}", uuid::Uuid::new_v4().simple()),
            root: dir.path().to_owned(),
            cluster: Mutex::new(cluster),
        });
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        FakeKube { address, shared, _dir: dir, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Writes a kubeconfig for this cluster (context `fake`, its token) into `dir`; returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: viberglass\n  \
             user:\n    token: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: viberglass\n    \
             namespace: viberglass\ncurrent-context: fake\n",
            self.url(),
            self.shared.token
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.shared.cluster.lock().expect("the cluster's lock")
    }

    pub fn add_namespace(&self, name: &str) {
        self.cluster().namespaces.insert(name.to_owned());
    }

    /// Makes `name` pullable: its entrypoint runs `image.entrypoint`.
    pub fn add_image(&self, name: &str, image: FakeImage) {
        self.cluster().images.insert(name.to_owned(), image);
    }

    /// Takes a permission away: `verb` on `resource` (e.g. `pods/log`) in API group `group` (`""` for core).
    pub fn refuse(&self, verb: &str, group: &str, resource: &str) {
        self.cluster().refused.insert((verb.to_owned(), group.to_owned(), resource.to_owned()));
    }

    /// Puts a pod object in the cluster as someone else's controller (or a user with `create pods`) would.
    pub fn add_pod(&self, namespace: &str, mut object: Value) {
        let name = object["metadata"]["name"].as_str().expect("a pod name").to_owned();
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["creationTimestamp"] = json!(now());
        self.cluster().pods.insert((namespace.to_owned(), name), Pod { object, ..Pod::default() });
    }

    /// Sets the node's allocatable CPU (millicores) and memory (MiB).
    pub fn set_node(&self, millicores: u64, memory_mib: u64) {
        self.cluster().node = (millicores, memory_mib << 20);
    }

    /// Ends the running pods `selector` matches as the kernel's OOM killer would.
    pub fn oom_kill(&self, selector: &str) -> usize {
        self.end_pods(selector, "OOMKilled")
    }

    /// Evicts the running pods `selector` matches, as the kubelet does under node pressure.
    pub fn evict(&self, selector: &str) -> usize {
        self.end_pods(selector, "Evicted")
    }

    fn end_pods(&self, selector: &str, how: &'static str) -> usize {
        let mut cluster = self.cluster();
        let mut ended = 0;
        for pod in cluster.pods.values_mut().filter(|p| selects(selector, &p.object)) {
            if let Some(pid) = pod.pid {
                pod.kill = Some(how);
                kill_tree(pid);
                ended += 1;
            }
        }
        ended
    }

    fn objects(&self, which: fn(&Cluster) -> Vec<&Value>, namespace: &str) -> Vec<Value> {
        let cluster = self.cluster();
        which(&cluster).into_iter().filter(|o| o["metadata"]["namespace"] == namespace).cloned().collect()
    }

    pub fn jobs(&self, namespace: &str) -> Vec<Value> {
        self.objects(|c| c.jobs.values().collect(), namespace)
    }

    pub fn pods(&self, namespace: &str) -> Vec<Value> {
        self.objects(|c| c.pods.values().map(|p| &p.object).collect(), namespace)
    }

    pub fn secrets(&self, namespace: &str) -> Vec<Value> {
        self.objects(|c| c.secrets.values().collect(), namespace)
    }

    /// The requests served so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.cluster().requests.clone()
    }
}

/// What a request is about.
struct Target<'a> {
    group: &'a str,
    namespace: Option<&'a str>,
    resource: &'a str,
    name: Option<&'a str>,
    subresource: Option<&'a str>,
}

fn parse_path(path: &str) -> Option<Target<'_>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", "batch", "v1", rest @ ..] => ("batch", rest),
        ["apis", "authorization.k8s.io", "v1", rest @ ..] => ("authorization.k8s.io", rest),
        _ => return None,
    };
    let target =
        |namespace, resource, name, subresource| Some(Target { group, namespace, resource, name, subresource });
    match rest {
        ["namespaces", ns] => target(None, "namespaces", Some(*ns), None),
        ["namespaces", ns, resource] => target(Some(*ns), resource, None, None),
        ["namespaces", ns, resource, name] => target(Some(*ns), resource, Some(*name), None),
        ["namespaces", ns, resource, name, sub] => target(Some(*ns), resource, Some(*name), Some(*sub)),
        [resource] => target(None, resource, None, None),
        _ => None,
    }
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decoded = v.replace('+', " ");
            let decoded = percent_decode(&decoded);
            (k.to_owned(), decoded)
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "jobs" => ("Job", "batch/v1"),
        "pods" => ("Pod", "v1"),
        "secrets" => ("Secret", "v1"),
        _ => ("Namespace", "v1"),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    shared.cluster.lock().unwrap().requests.push(format!("{method} {path}"));
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(shared.token.as_str()) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into(), json!({}));
    }
    let Some(target) = parse_path(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!({}),
        );
    };
    let query = query(&uri);
    if target.resource == "selfsubjectaccessreviews" && method == Method::POST {
        return access_review(&shared, &body);
    }
    let verb = match (&method, target.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) => "list",
        (&Method::POST, None) => "create",
        (&Method::DELETE, Some(_)) => "delete",
        _ => {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported here"),
                json!({}),
            );
        }
    };
    let resource = match target.subresource {
        Some(sub) => format!("{}/{sub}", target.resource),
        None => target.resource.to_owned(),
    };
    let namespace = target.namespace.unwrap_or_default().to_owned();
    let qualified = if target.group.is_empty() {
        target.resource.to_owned()
    } else {
        format!("{}.{}", target.resource, target.group)
    };
    if shared.cluster.lock().unwrap().refused.contains(&(verb.to_owned(), target.group.to_owned(), resource.clone())) {
        let named = target.name.map(|n| format!(" \"{n}\"")).unwrap_or_default();
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{qualified}{named} is forbidden: User \"system:serviceaccount:viberglass:viberglass\" cannot {verb} \
                 resource \"{resource}\" in API group \"{}\" in the namespace \"{namespace}\"",
                target.group
            ),
            json!({"name": target.name, "group": target.group, "kind": target.resource}),
        );
    }
    let not_found = |name: &str| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{qualified} \"{name}\" not found"),
            json!({"name": name, "group": target.group, "kind": target.resource}),
        )
    };
    match (target.resource, verb, target.name) {
        ("namespaces", "get", Some(name)) => {
            if shared.cluster.lock().unwrap().namespaces.contains(name) {
                respond(
                    StatusCode::OK,
                    json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}, "status": {"phase": "Active"}}),
                )
            } else {
                not_found(name)
            }
        }
        ("jobs" | "secrets" | "pods", "list", None) => {
            let selector = query.get("labelSelector").cloned().unwrap_or_default();
            let cluster = shared.cluster.lock().unwrap();
            let all: Vec<&Value> = match target.resource {
                "jobs" => cluster.jobs.values().collect(),
                "secrets" => cluster.secrets.values().collect(),
                _ => cluster.pods.values().map(|p| &p.object).collect(),
            };
            let items: Vec<Value> = all
                .into_iter()
                .filter(|o| o["metadata"]["namespace"] == namespace.as_str() && selects(&selector, o))
                .cloned()
                .collect();
            let (kind, api_version) = kind_of(target.resource);
            respond(
                StatusCode::OK,
                json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                                           "metadata": {"resourceVersion": cluster.next.to_string()}, "items": items}),
            )
        }
        ("jobs" | "secrets" | "pods", "get", Some(name)) if target.subresource.is_none() => {
            let cluster = shared.cluster.lock().unwrap();
            let key = (namespace.clone(), name.to_owned());
            let found = match target.resource {
                "jobs" => cluster.jobs.get(&key).cloned(),
                "secrets" => cluster.secrets.get(&key).cloned(),
                _ => cluster.pods.get(&key).map(|p| p.object.clone()),
            };
            found.map_or_else(|| not_found(name), |o| respond(StatusCode::OK, o))
        }
        ("pods", "get", Some(name)) if target.subresource == Some("log") => pod_log(&shared, &namespace, name, &query),
        ("jobs" | "secrets", "create", None) => {
            create(&shared, target.resource, &namespace, &body, query.contains_key("dryRun"))
        }
        ("jobs" | "secrets" | "pods", "delete", Some(name)) => {
            let mut cluster = shared.cluster.lock().unwrap();
            let key = (namespace.clone(), name.to_owned());
            let removed = match target.resource {
                "jobs" => cluster.jobs.remove(&key),
                "secrets" => cluster.secrets.remove(&key),
                _ => cluster.pods.remove(&key).map(|p| {
                    if let Some(pid) = p.pid {
                        kill_tree(pid);
                    }
                    p.object
                }),
            };
            let Some(removed) = removed else { return not_found(name) };
            let uid = removed["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
            if target.resource == "jobs" {
                collect_garbage(&mut cluster, &uid);
            }
            respond(
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                           "details": {"name": name, "group": target.group, "kind": target.resource, "uid": uid}}),
            )
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!({}),
        ),
    }
}

/// Deletes what the object `uid` owned (its pods, killing them, and Secrets), as the garbage collector does.
fn collect_garbage(cluster: &mut Cluster, uid: &str) {
    let owned = |o: &Value| {
        o["metadata"]["ownerReferences"].as_array().is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
    };
    let pods: Vec<_> = cluster.pods.iter().filter(|(_, p)| owned(&p.object)).map(|(k, _)| k.clone()).collect();
    for key in pods {
        if let Some(pid) = cluster.pods.remove(&key).and_then(|p| p.pid) {
            kill_tree(pid);
        }
    }
    cluster.secrets.retain(|_, s| !owned(s));
}

fn access_review(shared: &Shared, body: &[u8]) -> Response {
    let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "the request body is not JSON".into(), json!({}));
    };
    let attributes = &review["spec"]["resourceAttributes"];
    let text = |k: &str| attributes[k].as_str().unwrap_or_default().to_owned();
    let resource = match text("subresource").as_str() {
        "" => text("resource"),
        sub => format!("{}/{sub}", text("resource")),
    };
    let refused = shared.cluster.lock().unwrap().refused.contains(&(text("verb"), text("group"), resource));
    review["status"] = if refused {
        json!({"allowed": false})
    } else {
        json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"viberglass/viberglass\""})
    };
    review["metadata"] = json!({"creationTimestamp": null});
    respond(StatusCode::CREATED, review)
}

fn invalid(kind: &str, name: &str, causes: &[(&str, String)]) -> Response {
    let message = causes.iter().map(|(field, m)| format!("{field}: {m}")).collect::<Vec<_>>().join(", ");
    status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("{kind} \"{name}\" is invalid: {message}"),
        json!({"name": name, "kind": kind,
               "causes": causes.iter().map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f})).collect::<Vec<_>>()}),
    )
}

fn create(shared: &Arc<Shared>, resource: &str, namespace: &str, body: &[u8], dry_run: bool) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the request body is not a JSON object".into(),
            json!({}),
        );
    };
    let (kind, api_version) = kind_of(resource);
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    if !is_dns_label(&name) {
        return invalid(
            kind,
            &name,
            &[(
                "metadata.name",
                format!(
                    "Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
                ),
            )],
        );
    }
    if resource == "jobs" {
        let pod = &object["spec"]["template"]["spec"];
        let mut causes = Vec::new();
        if !matches!(pod["restartPolicy"].as_str(), Some("Never" | "OnFailure")) {
            causes.push((
                "spec.template.spec.restartPolicy",
                "Required value: valid values: \"OnFailure\", \"Never\"".to_owned(),
            ));
        }
        let containers = pod["containers"].as_array().cloned().unwrap_or_default();
        if containers.is_empty() {
            causes.push(("spec.template.spec.containers", "Required value".to_owned()));
        }
        for c in containers.iter().chain(pod["initContainers"].as_array().into_iter().flatten()) {
            if c["image"].as_str().is_none_or(str::is_empty) {
                causes.push(("spec.template.spec.containers[0].image", "Required value".to_owned()));
            }
        }
        if !causes.is_empty() {
            return invalid(kind, &name, &causes);
        }
    }
    if resource == "secrets" {
        for (key, value) in object["data"].as_object().into_iter().flatten() {
            if value.as_str().is_none_or(|v| base64::engine::general_purpose::STANDARD.decode(v).is_err()) {
                return invalid(kind, &name, &[("data", format!("Invalid value: the value of `{key}` is not base64"))]);
            }
        }
    }
    let mut cluster = shared.cluster.lock().unwrap();
    if !cluster.namespaces.contains(namespace) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
            json!({"name": namespace, "kind": "namespaces"}),
        );
    }
    let key = (namespace.to_owned(), name.clone());
    let exists = match resource {
        "jobs" => cluster.jobs.contains_key(&key),
        _ => cluster.secrets.contains_key(&key),
    };
    if exists {
        let qualified = if resource == "jobs" { "jobs.batch" } else { "secrets" };
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
            json!({"name": name, "kind": resource}),
        );
    }
    cluster.next += 1;
    let uid = uuid::Uuid::new_v4().to_string();
    object["kind"] = json!(kind);
    object["apiVersion"] = json!(api_version);
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!(uid);
    object["metadata"]["resourceVersion"] = json!(cluster.next.to_string());
    object["metadata"]["creationTimestamp"] = json!(now());
    if resource == "jobs" {
        object["status"] = json!({});
    }
    if dry_run {
        return respond(StatusCode::CREATED, object);
    }
    match resource {
        "jobs" => {
            cluster.jobs.insert(key.clone(), object.clone());
            tokio::spawn(run_job(shared.clone(), key));
        }
        _ => {
            cluster.secrets.insert(key, object.clone());
        }
    }
    respond(StatusCode::CREATED, object)
}

fn pod_log(shared: &Shared, namespace: &str, name: &str, query: &BTreeMap<String, String>) -> Response {
    let cluster = shared.cluster.lock().unwrap();
    let Some(pod) = cluster.pods.get(&(namespace.to_owned(), name.to_owned())) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{name}\" not found"),
            json!({"name": name, "kind": "pods"}),
        );
    };
    let main = pod.object["spec"]["containers"][0]["name"].as_str().unwrap_or_default().to_owned();
    let container = query.get("container").cloned().unwrap_or_else(|| main.clone());
    if container != main {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("container {container} is not valid for pod {name}"),
            json!({}),
        );
    }
    if pod.object["status"]["containerStatuses"][0]["state"].get("waiting").is_some()
        || pod.object["status"]["containerStatuses"].is_null()
    {
        let reason = pod.object["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            .as_str()
            .unwrap_or("PodInitializing");
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"),
            json!({}),
        );
    }
    let mut text = String::from_utf8_lossy(&pod.log).into_owned();
    if let Some(lines) = query.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        let all: Vec<&str> = text.lines().collect();
        text = all[all.len().saturating_sub(lines)..].join("\n");
        text.push('\n');
    }
    if let Some(limit) = query.get("limitBytes").and_then(|n| n.parse::<usize>().ok()) {
        text = text.chars().take(limit).collect();
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(Body::from(text))
        .unwrap_or_default()
}

/// Updates a pod's object (if the pod still exists).
fn with_pod(shared: &Shared, key: &(String, String), change: impl FnOnce(&mut Pod)) -> bool {
    let mut cluster = shared.cluster.lock().unwrap();
    match cluster.pods.get_mut(key) {
        Some(pod) => {
            change(pod);
            true
        }
        None => false,
    }
}

fn with_job(shared: &Shared, key: &(String, String), change: impl FnOnce(&mut Value)) -> bool {
    let mut cluster = shared.cluster.lock().unwrap();
    match cluster.jobs.get_mut(key) {
        Some(job) => {
            change(job);
            true
        }
        None => false,
    }
}

/// The requests of a pod spec: the largest init container's or the containers' sum, whichever is more.
fn pod_requests(spec: &Value) -> (u64, u64) {
    let of = |c: &Value| {
        let r = &c["resources"]["requests"];
        let r = if r.is_null() { &c["resources"]["limits"] } else { r };
        (r["cpu"].as_str().map_or(0, millicores), r["memory"].as_str().map_or(0, bytes))
    };
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let sum = containers.iter().map(of).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let init = spec["initContainers"].as_array().cloned().unwrap_or_default();
    let max = init.iter().map(of).fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
    (sum.0.max(max.0), sum.1.max(max.1))
}

/// The Job controller and the kubelet, for one Job.
async fn run_job(shared: Arc<Shared>, job_key: (String, String)) {
    let Some(job) = shared.cluster.lock().unwrap().jobs.get(&job_key).cloned() else { return };
    let (namespace, job_name) = job_key.clone();
    let template = job["spec"]["template"].clone();
    let spec = template["spec"].clone();
    let suffix: String =
        uuid::Uuid::new_v4().simple().to_string().chars().filter(char::is_ascii_lowercase).take(5).collect();
    let pod_name = format!("{job_name}-{suffix:x<5}");
    let pod_key = (namespace.clone(), pod_name.clone());
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels["batch.kubernetes.io/job-name"] = json!(job_name);
    labels["job-name"] = json!(job_name);
    labels["controller-uid"] = job["metadata"]["uid"].clone();
    let pod = json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": pod_name, "namespace": namespace, "uid": uuid::Uuid::new_v4().to_string(),
                     "creationTimestamp": now(), "labels": labels,
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                          "uid": job["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]},
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "Burstable"}
    });
    shared.cluster.lock().unwrap().pods.insert(pod_key.clone(), Pod { object: pod, ..Pod::default() });
    let started = std::time::Instant::now();
    with_job(&shared, &job_key, |j| j["status"] = json!({"active": 1, "startTime": now(), "ready": 0}));
    let deadline = job["spec"]["activeDeadlineSeconds"].as_u64().map(Duration::from_secs);
    let outcome = run_pod(&shared, &pod_key, &spec, deadline, started).await;
    let Some((succeeded, reason, message)) = outcome else { return };
    let finished = with_job(&shared, &job_key, |j| {
        let condition = if succeeded {
            json!([{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now()},
                   {"type": "Complete", "status": "True", "lastTransitionTime": now()}])
        } else {
            json!([{"type": "FailureTarget", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()},
                   {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()}])
        };
        let start = j["status"]["startTime"].clone();
        j["status"] = json!({"startTime": start, "conditions": condition, "ready": 0});
        j["status"][if succeeded { "succeeded" } else { "failed" }] = json!(1);
        if succeeded {
            j["status"]["completionTime"] = json!(now());
        }
    });
    if !finished {
        return;
    }
    if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_u64() {
        tokio::time::sleep(Duration::from_secs(ttl)).await;
        let mut cluster = shared.cluster.lock().unwrap();
        if let Some(removed) = cluster.jobs.remove(&job_key) {
            let uid = removed["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
            collect_garbage(&mut cluster, &uid);
        }
    }
}

/// Runs a pod to its end: `Some((succeeded, job failure reason, message))`, or `None` when it was deleted or never starts.
async fn run_pod(
    shared: &Arc<Shared>,
    key: &(String, String),
    spec: &Value,
    deadline: Option<Duration>,
    started: std::time::Instant,
) -> Option<(bool, String, String)> {
    let namespace = key.0.clone();
    // Scheduling.
    let (cpu, memory) = pod_requests(spec);
    let (node_cpu, node_memory) = shared.cluster.lock().unwrap().node;
    let mut short = Vec::new();
    if cpu > node_cpu {
        short.push("1 Insufficient cpu");
    }
    if memory > node_memory {
        short.push("1 Insufficient memory");
    }
    if !short.is_empty() {
        let message = format!(
            "0/1 nodes are available: {}. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
            short.join(", ")
        );
        with_pod(shared, key, |p| {
            p.object["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                        "message": message, "lastTransitionTime": now()}]);
        });
        return None;
    }
    with_pod(shared, key, |p| {
        p.object["spec"]["nodeName"] = json!("fake-node-1");
        p.object["status"]["conditions"] =
            json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]);
    });
    let init: Vec<Value> = spec["initContainers"].as_array().cloned().unwrap_or_default();
    let containers: Vec<Value> = spec["containers"].as_array().cloned().unwrap_or_default();
    let waiting = |c: &Value, reason: &str, message: &str| {
        json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "restartCount": 0,
               "state": {"waiting": {"reason": reason, "message": message}}})
    };
    let set_statuses = |reason: &str, message: &str| {
        let init_statuses: Vec<Value> = init.iter().map(|c| waiting(c, reason, message)).collect();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| waiting(c, if init.is_empty() { reason } else { "PodInitializing" }, ""))
            .collect();
        with_pod(shared, key, |p| {
            if !init_statuses.is_empty() {
                p.object["status"]["initContainerStatuses"] = json!(init_statuses);
            }
            p.object["status"]["containerStatuses"] = json!(statuses);
        })
    };
    // Images.
    let pull_secrets: BTreeSet<String> = spec["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();
    let mut images = BTreeMap::new();
    for c in init.iter().chain(&containers) {
        let name = c["image"].as_str().unwrap_or_default().to_owned();
        let found = {
            let cluster = shared.cluster.lock().unwrap();
            cluster.images.get(&name).cloned().filter(|image| {
                image.pull_secret.as_ref().is_none_or(|secret| {
                    pull_secrets.contains(secret) && cluster.secrets.contains_key(&(namespace.clone(), secret.clone()))
                })
            })
        };
        match found {
            Some(image) => {
                images.insert(name, image);
            }
            None => {
                let message = format!(
                    "failed to pull and unpack image \"docker.io/library/{name}\": failed to resolve reference \
                     \"docker.io/library/{name}\": pull access denied, repository does not exist or may require \
                     authorization: server message: insufficient_scope: authorization failed"
                );
                set_statuses("ErrImagePull", &message);
                tokio::time::sleep(Duration::from_millis(500)).await;
                set_statuses(
                    "ImagePullBackOff",
                    &format!("Back-off pulling image \"{name}\": ErrImagePull: {message}"),
                );
                return None;
            }
        }
    }
    // Volumes: a pod's secret volumes wait for their Secrets.
    set_statuses("ContainerCreating", "");
    let root = shared.root.join("pods").join(&key.0).join(&key.1);
    let mut mounts_of_volume = BTreeMap::new();
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or_default().to_owned();
        let dir = root.join("volumes").join(&name);
        std::fs::create_dir_all(&dir).ok()?;
        if let Some(secret) = volume["secret"]["secretName"].as_str() {
            let secret_key = (namespace.clone(), secret.to_owned());
            let data = loop {
                if !shared.cluster.lock().unwrap().pods.contains_key(key) {
                    return None;
                }
                if let Some(found) = shared.cluster.lock().unwrap().secrets.get(&secret_key) {
                    break found["data"].clone();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let mode = volume["secret"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            for (file, value) in data.as_object().into_iter().flatten() {
                let decoded =
                    base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap_or_default()).ok()?;
                let path = dir.join(file);
                std::fs::write(&path, decoded).ok()?;
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).ok()?;
            }
        }
        mounts_of_volume.insert(name, dir);
    }
    let home = root.join("home");
    std::fs::create_dir_all(&home).ok()?;
    // Init containers, in order, then the container.
    for (index, container) in init.iter().enumerate() {
        let image = images.get(container["image"].as_str().unwrap_or_default())?.clone();
        let code =
            run_container(shared, key, container, &image, &mounts_of_volume, &home, deadline, started, None).await?;
        let terminated =
            json!({"exitCode": code.0, "reason": if code.0 == 0 { "Completed" } else { "Error" }, "finishedAt": now()});
        with_pod(shared, key, |p| {
            p.object["status"]["initContainerStatuses"][index]["state"] = json!({"terminated": terminated})
        });
        if let Some(outcome) = code.1 {
            return Some(outcome);
        }
        if code.0 != 0 {
            with_pod(shared, key, |p| p.object["status"]["phase"] = json!("Failed"));
            return Some((false, "BackoffLimitExceeded".into(), "Job has reached the specified backoff limit".into()));
        }
    }
    let container = containers.first()?.clone();
    let image = images.get(container["image"].as_str().unwrap_or_default())?.clone();
    let code =
        run_container(shared, key, &container, &image, &mounts_of_volume, &home, deadline, started, Some(0)).await?;
    if let Some(outcome) = code.1 {
        return Some(outcome);
    }
    let succeeded = code.0 == 0;
    with_pod(shared, key, |p| {
        p.object["status"]["phase"] = json!(if succeeded { "Succeeded" } else { "Failed" });
        p.object["status"]["containerStatuses"][0]["state"] = json!({"terminated": {
            "exitCode": code.0, "reason": if succeeded { "Completed" } else { "Error" }, "finishedAt": now()}});
    });
    Some((succeeded, "BackoffLimitExceeded".into(), "Job has reached the specified backoff limit".into()))
}

/// Rewrites a container's mount paths in `value` to the pod's directories.
fn rewrite(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (path, dir) in mounts {
        let dir = dir.display().to_string();
        if value == path {
            return dir;
        }
        if let Some(rest) = value.strip_prefix(&format!("{path}/")) {
            return format!("{dir}/{rest}");
        }
        if let Some((flag, rest)) = value.split_once('=')
            && (rest == path || rest.starts_with(&format!("{path}/")))
        {
            return format!("{flag}={}", rewrite(rest, mounts));
        }
    }
    value.to_owned()
}

/// Runs one container as a local process: its exit code, and the pod's outcome when the kubelet ended it.
#[allow(clippy::too_many_arguments)]
async fn run_container(
    shared: &Arc<Shared>,
    key: &(String, String),
    container: &Value,
    image: &FakeImage,
    volumes: &BTreeMap<String, PathBuf>,
    home: &Path,
    deadline: Option<Duration>,
    started: std::time::Instant,
    main: Option<usize>,
) -> Option<(i32, Option<(bool, String, String)>)> {
    let mut mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["mountPath"].as_str()?.to_owned(), volumes.get(m["name"].as_str()?)?.clone())))
        .collect();
    // The longest path first, so /a/b is rewritten before /a.
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str()).map(|s| rewrite(s, &mounts)).collect()
    };
    let mut argv = match container["command"].as_array() {
        Some(_) => strings(&container["command"]),
        None => vec![image.entrypoint.display().to_string()],
    };
    argv.extend(strings(&container["args"]));
    let mut command = tokio::process::Command::new(&argv[0]);
    command.args(&argv[1..]).env_clear().kill_on_drop(true).process_group(0);
    command.env("PATH", std::env::var("PATH").unwrap_or_default()).env("HOME", home);
    for (name, value) in &image.env {
        command.env(name, value);
    }
    for env in container["env"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (env["name"].as_str(), env["value"].as_str()) {
            command.env(name, rewrite(value, &mounts));
        }
    }
    if let Some(dir) = container["workingDir"].as_str() {
        command.current_dir(rewrite(dir, &mounts));
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = format!("failed to create containerd task: exec: \"{}\": {e}", argv[0]);
            with_pod(shared, key, |p| {
                p.object["status"]["containerStatuses"][main.unwrap_or(0)]["state"] =
                    json!({"waiting": {"reason": "RunContainerError", "message": message}});
            });
            return None;
        }
    };
    let pid = child.id();
    let collect = |reader: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        let shared = shared.clone();
        let key = key.clone();
        let is_main = main.is_some();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let Some(mut reader) = reader else { return };
            let mut buffer = vec![0u8; 8192];
            while let Ok(n) = reader.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                if is_main {
                    with_pod(&shared, &key, |p| {
                        p.log.extend_from_slice(&buffer[..n]);
                        let excess = p.log.len().saturating_sub(1 << 20);
                        p.log.drain(..excess);
                    });
                }
            }
        })
    };
    let out = collect(child.stdout.take().map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>));
    let err = collect(child.stderr.take().map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>));
    let alive = with_pod(shared, key, |p| {
        p.pid = pid;
        if let Some(index) = main {
            p.object["status"]["phase"] = json!("Running");
            p.object["status"]["containerStatuses"][index]["state"] = json!({"running": {"startedAt": now()}});
            p.object["status"]["containerStatuses"][index]["ready"] = json!(true);
        } else {
            let name = container["name"].clone();
            if let Some(statuses) = p.object["status"]["initContainerStatuses"].as_array_mut()
                && let Some(s) = statuses.iter_mut().find(|s| s["name"] == name)
            {
                s["state"] = json!({"running": {"startedAt": now()}});
            }
        }
    });
    if !alive {
        let _ = child.start_kill();
        return None;
    }
    let remaining = deadline.map(|d| d.saturating_sub(started.elapsed()));
    let waited = match remaining {
        Some(left) => tokio::time::timeout(left, child.wait()).await.ok(),
        None => Some(child.wait().await),
    };
    let Some(exit) = waited else {
        // Past the Job's activeDeadlineSeconds: the controller kills the pod.
        if let Some(pid) = pid {
            kill_tree(pid);
        }
        let _ = child.wait().await;
        with_pod(shared, key, |p| {
            p.pid = None;
            p.object["status"]["phase"] = json!("Failed");
            p.object["status"]["reason"] = json!("DeadlineExceeded");
            p.object["status"]["message"] = json!("Pod was active on the node longer than the specified deadline");
        });
        return Some((
            137,
            Some((false, "DeadlineExceeded".into(), "Job was active longer than specified deadline".into())),
        ));
    };
    let _ = tokio::join!(out, err);
    let code = exit.ok().and_then(|s| s.code()).unwrap_or(137);
    let mut how = None;
    let alive = with_pod(shared, key, |p| {
        p.pid = None;
        how = p.kill.take();
    });
    if !alive {
        return None;
    }
    match how {
        Some("OOMKilled") => {
            with_pod(shared, key, |p| {
                p.object["status"]["phase"] = json!("Failed");
                let index = main.unwrap_or(0);
                let field = if main.is_some() { "containerStatuses" } else { "initContainerStatuses" };
                p.object["status"][field][index]["state"] =
                    json!({"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": now()}});
            });
            Some((
                137,
                Some((false, "BackoffLimitExceeded".into(), "Job has reached the specified backoff limit".into())),
            ))
        }
        Some(_) => {
            with_pod(shared, key, |p| {
                p.object["status"]["phase"] = json!("Failed");
                p.object["status"]["reason"] = json!("Evicted");
                p.object["status"]["message"] =
                    json!("The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki.");
                if let Some(index) = main {
                    p.object["status"]["containerStatuses"][index]["state"] = json!({"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown", "finishedAt": now()}});
                }
            });
            Some((137, Some((false, "PodFailurePolicy".into(), "the pod was evicted".into()))))
        }
        None => Some((code, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_labels() {
        let object = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        assert!(selects("a=1", &object));
        assert!(selects("a=1,b", &object));
        assert!(selects("a==1,c!=3", &object));
        assert!(!selects("a=2", &object));
        assert!(!selects("c", &object));
        assert!(selects("", &object));
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(millicores("1500m"), 1500);
        assert_eq!(millicores("2"), 2000);
        assert_eq!(millicores("0.5"), 500);
        assert_eq!(bytes("512Mi"), 512 << 20);
        assert_eq!(bytes("1G"), 1_000_000_000);
    }

    #[test]
    fn mount_paths_are_rewritten() {
        let mounts = vec![("/workspace".to_owned(), PathBuf::from("/pods/p/ws"))];
        assert_eq!(rewrite("/workspace", &mounts), "/pods/p/ws");
        assert_eq!(rewrite("/workspace/.token", &mounts), "/pods/p/ws/.token");
        assert_eq!(rewrite("--dir=/workspace/x", &mounts), "--dir=/pods/p/ws/x");
        assert_eq!(rewrite("/workspaces", &mounts), "/workspaces");
    }
}
