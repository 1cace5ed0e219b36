//! The Kubernetes target: one `batch/v1` Job of the worker image per run, in
//! the clanker's namespace, through the cluster's API (kube-rs).
//!
//! Each run's Job is named `vg-<job id>-<5 random>` and labelled with the
//! job and the owning host, so a restarted server finds its workers again.
//! The job's token goes into a per-run Secret owned by that Job (so the
//! cluster deletes it with the Job even if this server never comes back);
//! only the pod's init container mounts it, copying the token into the
//! workspace volume where the worker reads and deletes it before its agent
//! starts. The worker container never has the Secret mounted, nor a service
//! account token (`automountServiceAccountToken: false`), nor the cluster's
//! service links in its environment.
//!
//! A finished Job stays (so its pod's exit, an out-of-memory kill or an
//! eviction and its last log lines can be read) until its job has ended in
//! the database; then the engine deletes it and its Secret. The cluster's
//! `ttlSecondsAfterFinished` removes it anyway after an hour. The Secret goes
//! earlier, as soon as the worker has bootstrapped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, LocalObjectReference, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use sha2::Digest;
use viberglass_domain::{ComputeKind, JobId};

use crate::{ComputeConfig, ComputeError, ComputeTarget, ExitReason, LaunchRequest, Provisioned, WorkerState};

/// Where the image's worker keeps its job (an emptyDir volume).
const WORKSPACE: &str = "/workspace";
const TOKEN_FILE: &str = ".viberglass-token";
/// Where only the init container sees the token Secret.
const TOKEN_MOUNT: &str = "/var/run/viberglass";
const JOB_LABEL: &str = "io.viberglass/job";
const HOST_LABEL: &str = "io.viberglass/host";
const RUN_LABEL: &str = "io.viberglass/run";
const SELF_CHECK_LABEL: &str = "io.viberglass/self-check";
/// The image's user (docker/worker.Dockerfile).
const WORKER_UID: i64 = 10001;
/// How long the cluster keeps a finished Job when this server does not delete it.
const FINISHED_TTL_SECS: i32 = 3600;
/// Beyond the project's time limit, before the cluster stops a Job itself
/// (the server's own limit comes first and says more).
const DEADLINE_MARGIN_SECS: i64 = 600;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_MEMORY_MB: u64 = 1024 * 1024;

/// A Kubernetes clanker's settings (`compute_config`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The namespace its Jobs run in.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The worker image (built from docker/worker.Dockerfile and pushed where the cluster pulls from).
    #[serde(default = "default_image")]
    pub image: String,
    /// The pods' service account (the namespace's `default` when absent); it needs no permissions.
    pub service_account: Option<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret in the namespace, for a private registry.
    pub image_pull_secret: Option<String>,
    /// CPUs a worker asks for and may use (e.g. 1.5).
    pub cpus: Option<f64>,
    /// Memory a worker asks for and may use, in MiB.
    pub memory_mb: Option<u64>,
    /// Disk the workspace may use, in MiB (the pod is evicted beyond it).
    #[serde(default = "default_disk_mb")]
    pub disk_mb: u64,
}

fn default_disk_mb() -> u64 {
    10 * 1024
}

fn default_namespace() -> String {
    "viberglass".to_owned()
}

fn default_image() -> String {
    crate::DEFAULT_IMAGE.to_owned()
}

/// A DNS-1123 label: what namespaces, service accounts and Secrets are named by.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A DNS-1123 subdomain (service accounts and Secrets may have dots).
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

impl KubernetesConfig {
    pub(crate) fn validate(self) -> Result<KubernetesConfig, String> {
        if !is_dns_label(&self.namespace) {
            return Err(format!(
                "`compute_config.namespace` `{}` is not a namespace name: lowercase letters, digits and `-`, at most 63",
                self.namespace
            ));
        }
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(
                "`compute_config.image` must be an image name such as registry.example.com/viberglass-worker:1".into(),
            );
        }
        for (field, value) in
            [("service_account", &self.service_account), ("image_pull_secret", &self.image_pull_secret)]
        {
            if let Some(name) = value
                && !is_dns_subdomain(name)
            {
                return Err(format!(
                    "`compute_config.{field}` `{name}` is not a Kubernetes name: lowercase letters, digits, `-` and `.`"
                ));
            }
        }
        if let Some(cpus) = self.cpus
            && !(0.01..=512.0).contains(&cpus)
        {
            return Err("`compute_config.cpus` must be between 0.01 and 512 (e.g. 1.5)".into());
        }
        if let Some(memory) = self.memory_mb
            && !(64..=MAX_MEMORY_MB).contains(&memory)
        {
            return Err(format!("`compute_config.memory_mb` must be between 64 and {MAX_MEMORY_MB} (MiB)"));
        }
        if !(100..=MAX_MEMORY_MB * 16).contains(&self.disk_mb) {
            return Err(format!("`compute_config.disk_mb` must be between 100 and {} (MiB)", MAX_MEMORY_MB * 16));
        }
        Ok(self)
    }

    /// What a worker asks for, for messages.
    fn asks_for(&self) -> String {
        match (self.cpus, self.memory_mb) {
            (None, None) => "no CPU or memory request".to_owned(),
            (cpus, memory) => format!(
                "{} CPU and {} memory",
                cpus.map_or("any".into(), |c| c.to_string()),
                memory.map_or("any".into(), |m| format!("{m} MiB"))
            ),
        }
    }

    fn resources(&self) -> Option<ResourceRequirements> {
        let mut amounts = BTreeMap::new();
        if let Some(cpus) = self.cpus {
            amounts.insert("cpu".to_owned(), Quantity(format!("{}m", (cpus * 1000.0).round() as u64)));
        }
        if let Some(memory) = self.memory_mb {
            amounts.insert("memory".to_owned(), Quantity(format!("{memory}Mi")));
        }
        // An agent must not fill the node's disk (its writes outside the workspace, its logs).
        amounts.insert("ephemeral-storage".to_owned(), Quantity(format!("{}Mi", self.disk_mb)));
        // Requests equal to limits: the pod is scheduled where it fits, and is the last to be evicted.
        Some(ResourceRequirements { limits: Some(amounts.clone()), requests: Some(amounts), ..Default::default() })
    }
}

/// How this server reaches the cluster.
#[derive(Debug, Clone, Default)]
pub struct KubernetesSettings {
    /// Names this server's workers (see `LocalSettings::host_id`).
    pub host_id: String,
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, else the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (its current one when absent).
    pub context: Option<String>,
    /// How long a pod may wait for a node before its job fails as unschedulable
    /// (a cluster autoscaler may be adding one).
    pub unschedulable_grace: Duration,
    /// The namespaces workers may run in; none: Kubernetes clankers are off
    /// (so no kubeconfig or in-cluster account is used unless the operator says so).
    pub namespaces: Vec<String>,
}

/// A Kubernetes compute ref: `kubernetes:<host id>:<namespace>/<job name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesRef {
    pub host: String,
    pub namespace: String,
    pub name: String,
}

impl KubernetesRef {
    pub fn parse(compute_ref: &str) -> Option<KubernetesRef> {
        let rest = compute_ref.strip_prefix("kubernetes:")?;
        let (host, object) = rest.split_once(':')?;
        let (namespace, name) = object.split_once('/')?;
        let valid = !host.is_empty() && is_dns_label(namespace) && is_dns_label(name);
        valid.then(|| KubernetesRef { host: host.to_owned(), namespace: namespace.to_owned(), name: name.to_owned() })
    }
}

impl std::fmt::Display for KubernetesRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kubernetes:{}:{}/{}", self.host, self.namespace, self.name)
    }
}

/// A label value naming a host: the id itself when it is a valid label value, else a digest of it.
fn host_label(host_id: &str) -> String {
    let valid = !host_id.is_empty()
        && host_id.len() <= 63
        && host_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && host_id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && host_id.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        host_id.to_owned()
    } else {
        format!("h-{}", &hex::encode(sha2::Sha256::digest(host_id.as_bytes()))[..40])
    }
}

/// Whether `name` is a run of `job` as [`KubernetesTarget::launch`] names them
/// (`vg-<job id>-<5 hex>`): only those are deleted, with their Secret.
fn is_run_of(name: &str, job: JobId) -> bool {
    name.strip_prefix(&format!("vg-{job}-"))
        .is_some_and(|suffix| suffix.len() == 5 && suffix.chars().all(|c| c.is_ascii_hexdigit()))
}

fn random_suffix() -> String {
    // Five characters of a fresh v4 id: the run's name differs from every earlier run of the job.
    JobId::new().to_string().chars().filter(char::is_ascii_hexdigit).rev().take(5).collect()
}

/// One needed permission, as the RBAC rule that grants it.
struct Rule {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
}

/// What a clanker's workers need in their namespace.
const RULES: &[Rule] = &[
    Rule { verb: "create", group: "batch", resource: "jobs", subresource: None },
    Rule { verb: "get", group: "batch", resource: "jobs", subresource: None },
    Rule { verb: "list", group: "batch", resource: "jobs", subresource: None },
    Rule { verb: "delete", group: "batch", resource: "jobs", subresource: None },
    Rule { verb: "create", group: "", resource: "secrets", subresource: None },
    Rule { verb: "delete", group: "", resource: "secrets", subresource: None },
    Rule { verb: "list", group: "", resource: "pods", subresource: None },
    Rule { verb: "get", group: "", resource: "pods", subresource: Some("log") },
];

/// The permissions the Kubernetes target uses in a workers' namespace, as (API group, resource with its
/// subresource, verb): what a deployment's Role grants, and nothing more.
pub fn required_permissions() -> Vec<(&'static str, String, &'static str)> {
    RULES
        .iter()
        .map(|r| {
            let resource = match r.subresource {
                Some(sub) => format!("{}/{sub}", r.resource),
                None => r.resource.to_owned(),
            };
            (r.group, resource, r.verb)
        })
        .collect()
}

impl Rule {
    fn describe(&self) -> String {
        let resource = match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_owned(),
        };
        format!("apiGroups: [\"{}\"], resources: [\"{resource}\"], verbs: [\"{}\"]", self.group, self.verb)
    }
}

/// What a pod's state says of its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Not started yet (being scheduled, pulling its image, mounting its volumes).
    Pending,
    Running,
    /// It will not start until someone changes something.
    Stuck(ExitReason),
    /// It ran and ended.
    Ended(ExitReason),
}

fn text(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or_default()
}

pub struct KubernetesTarget {
    settings: KubernetesSettings,
    /// The client, once the configuration loaded (with where it came from, for messages).
    client: tokio::sync::Mutex<Option<(Client, String)>>,
}

impl KubernetesTarget {
    pub fn new(settings: KubernetesSettings) -> Self {
        Self { settings, client: tokio::sync::Mutex::new(None) }
    }

    fn config(config: &ComputeConfig) -> Result<&KubernetesConfig, ComputeError> {
        match config {
            ComputeConfig::Kubernetes(kube) => Ok(kube),
            other => Err(ComputeError::Permanent(format!(
                "the Kubernetes target was given a {} configuration",
                other.kind()
            ))),
        }
    }

    /// Refuses a namespace the operator has not given workers.
    fn check_namespace(&self, namespace: &str) -> Result<(), ComputeError> {
        if self.settings.namespaces.is_empty() {
            return Err(ComputeError::Permanent(
                "Kubernetes clankers are off in this server: set VIBERGLASS_KUBERNETES_NAMESPACES to the namespaces \
                 workers may run in (e.g. viberglass), with VIBERGLASS_KUBECONFIG or the in-cluster service account"
                    .into(),
            ));
        }
        if !self.settings.namespaces.iter().any(|n| n == namespace) {
            return Err(ComputeError::Permanent(format!(
                "namespace `{namespace}` is not one this server runs workers in (VIBERGLASS_KUBERNETES_NAMESPACES: {}): \
                 set compute_config.namespace to one of them, or ask the operator to add it",
                self.settings.namespaces.join(", ")
            )));
        }
        Ok(())
    }

    async fn load_config(&self) -> Result<(Config, String), String> {
        let (mut config, source) = match &self.settings.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| format!("cannot read the kubeconfig {} ({e})", path.display()))?;
                let options = KubeConfigOptions { context: self.settings.context.clone(), ..Default::default() };
                let config = Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| format!("the kubeconfig {} cannot be used ({e})", path.display()))?;
                let context = self.settings.context.as_deref().map(|c| format!(", context {c}")).unwrap_or_default();
                (config, format!("the kubeconfig {}{context}", path.display()))
            }
            None => {
                let config = Config::infer().await.map_err(|e| {
                    format!(
                        "no Kubernetes configuration was found ({e}): set VIBERGLASS_KUBECONFIG (or KUBECONFIG) to a \
                         kubeconfig file, or run the server in the cluster with a service account"
                    )
                })?;
                let source = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                    && std::env::var_os("KUBECONFIG").is_none()
                {
                    "the in-cluster service account".to_owned()
                } else {
                    "the default kubeconfig (KUBECONFIG or ~/.kube/config)".to_owned()
                };
                (config, source)
            }
        };
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(CALL_TIMEOUT);
        config.write_timeout = Some(CALL_TIMEOUT);
        let source = format!("the cluster at {} ({source})", config.cluster_url);
        Ok((config, source))
    }

    /// The API client and a description of the cluster, for messages.
    async fn client(&self) -> Result<(Client, String), ComputeError> {
        let mut cached = self.client.lock().await;
        if let Some(found) = &*cached {
            return Ok(found.clone());
        }
        let (config, source) = self.load_config().await.map_err(ComputeError::Permanent)?;
        let client = Client::try_from(config)
            .map_err(|e| ComputeError::Permanent(format!("cannot set up a client for {source}: {e}")))?;
        *cached = Some((client.clone(), source.clone()));
        Ok((client, source))
    }

    /// What a failed API call means, for people.
    fn failed(cluster: &str, what: &str, error: kube::Error) -> ComputeError {
        match error {
            kube::Error::Api(status) => {
                let message = format!("{what}: {} ({} {})", status.message, status.code, status.reason);
                match status.code {
                    401 => ComputeError::Permanent(format!(
                        "{message}: {cluster} does not accept this server's credentials; renew the kubeconfig's token \
                         or the service account's"
                    )),
                    403 => ComputeError::Permanent(format!(
                        "{message}: grant it in the namespace's Role (the README's Kubernetes section lists the rules), \
                         then Start the clanker again"
                    )),
                    408 | 429 | 500.. => ComputeError::Transient(format!("{message}: {cluster} is busy; retrying")),
                    _ => ComputeError::Permanent(message),
                }
            }
            kube::Error::Auth(error) => {
                // An exec plugin's output may hold credentials: the server's log has it, the message does not.
                tracing::warn!(error = %error, "{what}: authenticating to the cluster failed");
                ComputeError::Permanent(format!(
                    "{what}: authenticating to {cluster} failed (the server's log has the detail): check the \
                     kubeconfig's credentials or the service account's token"
                ))
            }
            other => {
                let detail: String = other.to_string().chars().take(300).collect();
                ComputeError::Transient(format!(
                    "{what}: cannot reach {cluster} ({detail}): check that the API server is up and reachable from \
                     this server"
                ))
            }
        }
    }

    fn labels(&self, job: Option<JobId>, run: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (HOST_LABEL.to_owned(), host_label(&self.settings.host_id)),
            (RUN_LABEL.to_owned(), run.to_owned()),
            ("app.kubernetes.io/name".to_owned(), "viberglass-worker".to_owned()),
            ("app.kubernetes.io/managed-by".to_owned(), "viberglass".to_owned()),
        ]);
        match job {
            Some(job) => labels.insert(JOB_LABEL.to_owned(), job.to_string()),
            None => labels.insert(SELF_CHECK_LABEL.to_owned(), "true".to_owned()),
        };
        labels
    }

    /// The Job a worker of `config` runs as. `token_secret`: the Secret the
    /// init container copies the job's token from (none for a self-check).
    #[allow(clippy::too_many_arguments)]
    fn job_object(
        &self,
        config: &KubernetesConfig,
        name: &str,
        labels: BTreeMap<String, String>,
        args: Vec<String>,
        env: Vec<(String, String)>,
        deadline_secs: i64,
        ttl_secs: i32,
        token_secret: Option<&str>,
    ) -> Job {
        let workspace = VolumeMount { name: "workspace".into(), mount_path: WORKSPACE.into(), ..Default::default() };
        let locked_down = SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        };
        let mut volumes = vec![Volume {
            name: "workspace".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(format!("{}Mi", config.disk_mb))),
                ..Default::default()
            }),
            ..Default::default()
        }];
        let mut init_containers = Vec::new();
        if let Some(secret) = token_secret {
            volumes.push(Volume {
                name: "token".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.to_owned()),
                    default_mode: Some(0o440),
                    optional: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            });
            init_containers.push(Container {
                name: "token".into(),
                image: Some(config.image.clone()),
                command: Some(vec!["cp".into(), format!("{TOKEN_MOUNT}/token"), format!("{WORKSPACE}/{TOKEN_FILE}")]),
                volume_mounts: Some(vec![
                    workspace.clone(),
                    VolumeMount {
                        name: "token".into(),
                        mount_path: TOKEN_MOUNT.into(),
                        read_only: Some(true),
                        ..Default::default()
                    },
                ]),
                resources: config.resources(),
                security_context: Some(locked_down.clone()),
                ..Default::default()
            });
        }
        let worker = Container {
            name: "worker".into(),
            image: Some(config.image.clone()),
            args: Some(args),
            env: Some(
                env.into_iter()
                    .map(|(name, value)| EnvVar { name, value: Some(value), ..Default::default() })
                    .collect(),
            ),
            working_dir: Some(WORKSPACE.into()),
            volume_mounts: Some(vec![workspace]),
            resources: config.resources(),
            security_context: Some(locked_down),
            ..Default::default()
        };
        let pod = PodSpec {
            containers: vec![worker],
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            volumes: Some(volumes),
            restart_policy: Some("Never".into()),
            service_account_name: config.service_account.clone(),
            // The agent runs in this pod: it gets no credentials for the cluster, and no map of its services.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            image_pull_secrets: config
                .image_pull_secret
                .as_ref()
                .map(|name| vec![LocalObjectReference { name: name.clone() }]),
            security_context: Some(PodSecurityContext {
                run_as_user: Some(WORKER_UID),
                run_as_group: Some(WORKER_UID),
                fs_group: Some(WORKER_UID),
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                ..Default::default()
            }),
            termination_grace_period_seconds: Some(10),
            ..Default::default()
        };
        Job {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(config.namespace.clone()),
                labels: Some(labels.clone()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                // Viberglass re-runs jobs itself, with a new token and a fresh workspace.
                backoff_limit: Some(0),
                active_deadline_seconds: Some(deadline_secs),
                ttl_seconds_after_finished: Some(ttl_secs),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                    spec: Some(pod),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Which of the workers' permissions the cluster does not give this server, as rules to add.
    async fn missing_rules(
        &self,
        client: &Client,
        cluster: &str,
        namespace: &str,
    ) -> Result<Vec<String>, ComputeError> {
        let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
        let mut missing = Vec::new();
        for rule in RULES {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(namespace.to_owned()),
                        verb: Some(rule.verb.to_owned()),
                        group: Some(rule.group.to_owned()),
                        resource: Some(rule.resource.to_owned()),
                        subresource: rule.subresource.map(str::to_owned),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = reviews
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| Self::failed(cluster, "cannot ask the cluster what this server may do", e))?;
            if !answer.status.is_some_and(|s| s.allowed) {
                missing.push(rule.describe());
            }
        }
        Ok(missing)
    }

    /// The pods of one run (`run` label) that its Job (`owner`, its uid) owns, newest first: a pod someone else
    /// labelled alike in the namespace is not taken for the worker.
    async fn pods(&self, client: &Client, namespace: &str, run: &str, owner: &str) -> Result<Vec<Pod>, kube::Error> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let mut found = pods.list(&ListParams::default().labels(&format!("{RUN_LABEL}={run}"))).await?.items;
        found.retain(|pod| {
            pod.metadata.owner_references.iter().flatten().any(|o| {
                o.kind == "Job" && o.api_version.starts_with("batch/") && o.controller == Some(true) && o.uid == owner
            })
        });
        found.sort_by(|a, b| b.metadata.creation_timestamp.cmp(&a.metadata.creation_timestamp));
        Ok(found)
    }

    /// The pods of the run a ref names (none when its Job is gone, and so are they).
    async fn run_pods(&self, client: &Client, r: &KubernetesRef) -> Option<Vec<Pod>> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &r.namespace);
        let owner = jobs.get_opt(&r.name).await.ok()??.metadata.uid?;
        self.pods(client, &r.namespace, &r.name, &owner).await.ok()
    }

    /// What a pod's state says of its worker.
    fn judge(&self, pod: &Pod, config: Option<&KubernetesConfig>, namespace: &str) -> Verdict {
        let Some(status) = &pod.status else { return Verdict::Pending };
        let spec = pod.spec.as_ref();
        let image =
            spec.and_then(|s| s.containers.first()).and_then(|c| c.image.clone()).unwrap_or_else(|| "(none)".into());
        if text(&status.phase) == "Failed" && text(&status.reason) == "Evicted" {
            return Verdict::Ended(ExitReason {
                code: "worker_evicted",
                message: format!(
                    "the pod was evicted by Kubernetes ({}): its node ran short of resources; give the clanker a memory \
                     request (compute_config.memory_mb) so it is scheduled where it fits, then re-run",
                    text(&status.message)
                ),
                started: true,
            });
        }
        let statuses =
            status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
        for container in statuses {
            let memory_limit = || {
                spec.and_then(|s| s.containers.first())
                    .and_then(|c| c.resources.as_ref())
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get("memory"))
                    .map(|q| format!(" (its limit is {})", q.0))
                    .unwrap_or_default()
            };
            let state = container.state.as_ref();
            if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
                let reason = text(&waiting.reason);
                if matches!(reason, "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName") {
                    let secret = match spec.and_then(|s| s.image_pull_secrets.as_ref()).and_then(|s| s.first()) {
                        Some(secret) => format!(
                            "; the pull secret is `{}` (compute_config.image_pull_secret): check that it exists in \
                             namespace {namespace} and holds this registry's credentials",
                            secret.name
                        ),
                        None => format!(
                            "; for a private registry, set compute_config.image_pull_secret to a docker-registry Secret \
                             in namespace {namespace}"
                        ),
                    };
                    return Verdict::Stuck(ExitReason {
                        code: "worker_image_pull_failed",
                        message: format!(
                            "the cluster cannot pull the worker image `{image}` ({reason}: {}): check the image name and \
                             that it was pushed to a registry the cluster reaches{secret}",
                            text(&waiting.message)
                        ),
                        started: false,
                    });
                }
                if matches!(reason, "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError") {
                    return Verdict::Stuck(ExitReason {
                        code: "worker_not_started",
                        message: format!(
                            "the cluster cannot start the worker's container ({reason}: {})",
                            text(&waiting.message)
                        ),
                        started: false,
                    });
                }
            }
            for terminated in
                [state, container.last_state.as_ref()].into_iter().flatten().filter_map(|s| s.terminated.as_ref())
            {
                if text(&terminated.reason) == "OOMKilled" {
                    return Verdict::Ended(ExitReason {
                        code: "worker_out_of_memory",
                        message: format!(
                            "killed: out of memory{}: raise the clanker's memory limit (compute_config.memory_mb), \
                             then re-run",
                            memory_limit()
                        ),
                        started: true,
                    });
                }
            }
        }
        let unschedulable = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False" && text(&c.reason) == "Unschedulable");
        if let Some(condition) = unschedulable {
            let since = condition.last_transition_time.as_ref().map(|t| t.0);
            let waited = since
                .map(|t| {
                    let now = k8s_openapi::jiff::Timestamp::now();
                    Duration::from_secs(now.as_second().saturating_sub(t.as_second()).max(0) as u64)
                })
                .unwrap_or_default();
            if waited >= self.settings.unschedulable_grace {
                let asks = config.map_or_else(|| "its requests".to_owned(), KubernetesConfig::asks_for);
                return Verdict::Stuck(ExitReason {
                    code: "worker_unschedulable",
                    message: format!(
                        "no node can run the worker, which asks for {asks} ({}): lower compute_config.cpus or \
                         memory_mb, or add capacity to the cluster",
                        text(&condition.message)
                    ),
                    started: false,
                });
            }
            return Verdict::Pending;
        }
        match text(&status.phase) {
            "Running" => Verdict::Running,
            "Succeeded" | "Failed" => {
                let code = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .find(|c| c.name == "worker")
                    .and_then(|c| c.state.as_ref()?.terminated.as_ref())
                    .map(|t| t.exit_code);
                Verdict::Ended(ExitReason {
                    code: "worker_exited",
                    message: match code {
                        Some(137) => "the pod's worker was killed (exit code 137: SIGKILL, e.g. a deleted pod or the \
                                      node)"
                            .to_owned(),
                        Some(code) => format!("the pod's worker exited with code {code}"),
                        None => format!("the pod ended ({}) before its worker ran", text(&status.message)),
                    },
                    started: code.is_some(),
                })
            }
            _ => Verdict::Pending,
        }
    }

    /// The last `lines` lines the run's worker container printed.
    async fn logs(&self, client: &Client, namespace: &str, pod: &str, lines: i64) -> String {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let params = LogParams {
            container: Some("worker".into()),
            tail_lines: Some(lines),
            limit_bytes: Some(64 * 1024),
            ..Default::default()
        };
        // Read as bytes: an agent's invalid UTF-8 must not hide what it printed.
        let Ok(stream) = pods.log_stream(pod, &params).await else { return String::new() };
        let mut bytes = Vec::new();
        let _ =
            futures::AsyncReadExt::read_to_end(&mut futures::AsyncReadExt::take(stream, 64 * 1024), &mut bytes).await;
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Runs `viberglass worker --self-check` as a Job, as a job's worker would start.
    async fn self_check(
        &self,
        client: &Client,
        cluster: &str,
        config: &KubernetesConfig,
        programs: &[String],
    ) -> Result<(), ComputeError> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &config.namespace);
        let name = format!("vg-self-check-{}", random_suffix());
        let mut args = vec!["worker".to_owned(), "--self-check".to_owned()];
        args.extend(programs.iter().map(|p| format!("--program={p}")));
        let job = self.job_object(config, &name, self.labels(None, &name), args, Vec::new(), 300, 60, None);
        let created = jobs.create(&PostParams::default(), &job).await.map_err(|e| {
            Self::failed(cluster, &format!("cannot create the self-check Job in namespace {}", config.namespace), e)
        })?;
        let Some(owner) = created.metadata.uid else {
            let _ = jobs.delete(&name, &DeleteParams::background()).await;
            return Err(ComputeError::Transient(format!("{cluster} created the self-check Job without a uid")));
        };
        let outcome = async {
            let deadline = tokio::time::Instant::now() + SELF_CHECK_TIMEOUT;
            loop {
                let pods = self
                    .pods(client, &config.namespace, &name, &owner)
                    .await
                    .map_err(|e| Self::failed(cluster, "cannot read the self-check's pod", e))?;
                let verdict = pods.first().map(|p| self.judge(p, Some(config), &config.namespace));
                match verdict {
                    Some(Verdict::Stuck(reason)) => return Err(ComputeError::Permanent(reason.message)),
                    Some(Verdict::Ended(reason)) => {
                        let pod = pods[0].metadata.name.clone().unwrap_or_default();
                        let output = self.logs(client, &config.namespace, &pod, 20).await;
                        if reason.code == "worker_exited" && output.contains("viberglass worker ok") {
                            return Ok(());
                        }
                        if output.contains("the clanker's program cannot run") {
                            return Err(ComputeError::Permanent(format!(
                                "{} in the image `{}`: install it in the image, or fix the clanker's command or `binary`",
                                output.trim(),
                                config.image
                            )));
                        }
                        return Err(ComputeError::Permanent(format!(
                            "the worker image `{}` does not run `viberglass worker` ({}): {}; build it from \
                             docker/worker.Dockerfile (scripts/worker-image)",
                            config.image,
                            reason.message,
                            output.trim()
                        )));
                    }
                    _ => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(ComputeError::Permanent(format!(
                        "the self-check pod of `{}` did not finish within {} s: the image may still be pulling, or no \
                         node has room for it (it asks for {}); Start the clanker again in a minute",
                        config.image,
                        SELF_CHECK_TIMEOUT.as_secs(),
                        config.asks_for()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        .await;
        let _ = jobs.delete(&name, &DeleteParams::background()).await;
        outcome
    }

    /// Deletes a run's Job (its pods go with it) and its token Secret.
    async fn delete_run(
        &self,
        client: &Client,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), ComputeError> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let gone = |r: Result<(), kube::Error>| match r {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => other,
        };
        gone(jobs.delete(name, &DeleteParams::background()).await.map(|_| ()))
            .map_err(|e| Self::failed(cluster, &format!("cannot delete the Job {namespace}/{name}"), e))?;
        gone(secrets.delete(name, &DeleteParams::default()).await.map(|_| ()))
            .map_err(|e| Self::failed(cluster, &format!("cannot delete the Secret {namespace}/{name}"), e))?;
        Ok(())
    }

    async fn launch_inner(&self, request: LaunchRequest) -> Result<String, ComputeError> {
        let config = Self::config(&request.config)?;
        self.check_namespace(&config.namespace)?;
        let (client, cluster) = self.client().await?;
        let namespace = config.namespace.as_str();
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        // A launch that failed half-way left its run behind: start afresh.
        let earlier = jobs
            .list(&ListParams::default().labels(&format!("{JOB_LABEL}={}", request.job_id)))
            .await
            .map_err(|e| Self::failed(&cluster, &format!("cannot list the Jobs in namespace {namespace}"), e))?;
        let names = earlier.items.iter().filter_map(|j| j.metadata.name.as_deref());
        for old in names.filter(|name| is_run_of(name, request.job_id)) {
            self.delete_run(&client, &cluster, namespace, old).await?;
        }
        let name = format!("vg-{}-{}", request.job_id, random_suffix());
        let env = vec![
            ("VIBERGLASS_SERVER_URL".to_owned(), request.server_url.clone()),
            ("VIBERGLASS_JOB_TOKEN_FILE".to_owned(), format!("{WORKSPACE}/{TOKEN_FILE}")),
            ("VIBERGLASS_WORKSPACE".to_owned(), WORKSPACE.to_owned()),
            ("LOG_FORMAT".to_owned(), "json".to_owned()),
        ];
        let deadline = request.time_limit_secs.map_or(86_400, |s| s as i64) + DEADLINE_MARGIN_SECS;
        let job = self.job_object(
            config,
            &name,
            self.labels(Some(request.job_id), &name),
            vec!["worker".into(), "--job".into(), request.job_id.to_string()],
            env,
            deadline,
            FINISHED_TTL_SECS,
            Some(&name),
        );
        let created = jobs.create(&PostParams::default(), &job).await.map_err(|e| {
            Self::failed(&cluster, &format!("the cluster refused the worker's Job in namespace {namespace}"), e)
        })?;
        let Some(uid) = created.metadata.uid.clone() else {
            let _ = self.delete_run(&client, &cluster, namespace, &name).await;
            return Err(ComputeError::Transient(format!("{cluster} created the worker's Job without a uid")));
        };
        // The token, in a Secret the Job owns: the cluster deletes it with the Job whatever becomes of this server.
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.to_owned()),
                labels: Some(self.labels(Some(request.job_id), &name)),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: name.clone(),
                    uid,
                    ..Default::default()
                }]),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("token".to_owned(), ByteString(request.token.clone().into_bytes()))])),
            type_: Some("Opaque".into()),
            immutable: Some(true),
            ..Default::default()
        };
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        if let Err(e) = secrets.create(&PostParams::default(), &secret).await {
            let _ = self.delete_run(&client, &cluster, namespace, &name).await;
            return Err(Self::failed(&cluster, "cannot store the job's token in a Secret", e));
        }
        Ok(KubernetesRef { host: self.settings.host_id.clone(), namespace: namespace.to_owned(), name }.to_string())
    }

    /// The run a ref names, when this host owns it.
    fn owned(&self, compute_ref: &str) -> Option<KubernetesRef> {
        KubernetesRef::parse(compute_ref).filter(|r| r.host == self.settings.host_id)
    }

    async fn state_of(&self, job_id: JobId, compute_ref: &str) -> WorkerState {
        let Some(r) = self.owned(compute_ref) else { return WorkerState::Foreign };
        let Ok((client, _)) = self.client().await else { return WorkerState::Unknown };
        let jobs: Api<Job> = Api::namespaced(client.clone(), &r.namespace);
        let job = match jobs.get_opt(&r.name).await {
            Ok(Some(job)) => job,
            Ok(None) => return WorkerState::Gone,
            // The cluster cannot be asked: say nothing rather than fail a job that may be fine.
            Err(_) => return WorkerState::Unknown,
        };
        let ours =
            job.metadata.labels.as_ref().and_then(|l| l.get(JOB_LABEL)).is_some_and(|j| *j == job_id.to_string());
        let finished =
            job.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                c.iter().any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
            });
        if !ours || finished {
            return WorkerState::Gone;
        }
        let Some(owner) = job.metadata.uid.clone() else { return WorkerState::Unknown };
        match self.pods(&client, &r.namespace, &r.name, &owner).await {
            Ok(pods) => match pods.first().map(|p| self.judge(p, None, &r.namespace)) {
                Some(Verdict::Stuck(_) | Verdict::Ended(_)) => WorkerState::Gone,
                _ => WorkerState::Running,
            },
            Err(_) => WorkerState::Unknown,
        }
    }

    async fn reason_of(&self, compute_ref: &str) -> Option<ExitReason> {
        let r = self.owned(compute_ref)?;
        let (client, _) = self.client().await.ok()?;
        let pods = self.run_pods(&client, &r).await?;
        if let Some(pod) = pods.first() {
            match self.judge(pod, None, &r.namespace) {
                Verdict::Stuck(reason) => return Some(reason),
                Verdict::Ended(reason) if reason.code != "worker_exited" => return Some(reason),
                Verdict::Ended(reason) => {
                    // The Job's own verdict says more when the cluster stopped it.
                    return Some(self.deadline_reason(&client, &r).await.unwrap_or(reason));
                }
                _ => {}
            }
        }
        self.deadline_reason(&client, &r).await
    }

    /// Why the cluster failed a run's Job, when it did (its deadline passed).
    async fn deadline_reason(&self, client: &Client, r: &KubernetesRef) -> Option<ExitReason> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &r.namespace);
        let job = jobs.get_opt(&r.name).await.ok()??;
        let deadline = job.spec.as_ref().and_then(|s| s.active_deadline_seconds);
        let failed = job.status?.conditions?.into_iter().find(|c| c.type_ == "Failed" && c.status == "True")?;
        (text(&failed.reason) == "DeadlineExceeded").then(|| ExitReason {
            code: "worker_deadline_exceeded",
            message: format!(
                "the cluster stopped the worker's Job at its activeDeadlineSeconds ({} s: the project's time limit plus \
                 {DEADLINE_MARGIN_SECS} s)",
                deadline.unwrap_or_default()
            ),
            started: true,
        })
    }
}

impl ComputeTarget for KubernetesTarget {
    fn kind(&self) -> ComputeKind {
        ComputeKind::Kubernetes
    }

    fn provision<'a>(
        &'a self,
        config: &'a ComputeConfig,
        programs: &'a [String],
    ) -> BoxFuture<'a, Result<Provisioned, ComputeError>> {
        Box::pin(async move {
            let config = Self::config(config)?;
            self.check_namespace(&config.namespace)?;
            let (client, cluster) = self.client().await?;
            let namespace = config.namespace.as_str();
            let missing = self.missing_rules(&client, &cluster, namespace).await?;
            if !missing.is_empty() {
                return Err(ComputeError::Permanent(format!(
                    "{cluster} does not let this server run workers in namespace {namespace}: its Role there lacks {}. \
                     Add the rule{} to the Role bound to this server's account (the README's Kubernetes section has the \
                     whole Role), then Start the clanker again",
                    missing.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", "),
                    if missing.len() == 1 { "" } else { "s" }
                )));
            }
            // The cluster's own checks of the Job (its namespace, quotas, pod security admission), without running it.
            let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
            let probe = self.job_object(
                config,
                &format!("vg-probe-{}", random_suffix()),
                self.labels(None, "probe"),
                vec!["worker".into(), "--self-check".into()],
                Vec::new(),
                300,
                60,
                None,
            );
            match jobs.create(&PostParams { dry_run: true, ..Default::default() }, &probe).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(ComputeError::Permanent(format!(
                        "namespace `{namespace}` does not exist in {cluster}: create it (`kubectl create namespace \
                         {namespace}`) or set the clanker's compute_config.namespace"
                    )));
                }
                Err(e) => {
                    return Err(Self::failed(
                        &cluster,
                        &format!("the cluster refuses the worker's Job in namespace {namespace}"),
                        e,
                    ));
                }
            }
            self.self_check(&client, &cluster, config, programs).await?;
            Ok(Provisioned {
                message: format!(
                    "ready: workers run as Jobs of `{}` in namespace {namespace} of {cluster} ({}), and the image passed \
                     its self-check",
                    config.image,
                    config.asks_for()
                ),
            })
        })
    }

    fn launch(&self, request: LaunchRequest) -> BoxFuture<'_, Result<String, ComputeError>> {
        Box::pin(self.launch_inner(request))
    }

    fn stop<'a>(&'a self, _job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Result<(), ComputeError>> {
        Box::pin(async move {
            let Some(r) = KubernetesRef::parse(compute_ref) else {
                return Err(ComputeError::Permanent(format!("`{compute_ref}` is not a Kubernetes worker")));
            };
            crate::ours_to_stop(compute_ref, &r.host, &self.settings.host_id)?;
            let (client, cluster) = self.client().await?;
            self.delete_run(&client, &cluster, &r.namespace, &r.name).await
        })
    }

    fn inspect<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, WorkerState> {
        Box::pin(self.state_of(job_id, compute_ref))
    }

    fn log_tail<'a>(&'a self, _job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let r = self.owned(compute_ref)?;
            let (client, _) = self.client().await.ok()?;
            let pods = self.run_pods(&client, &r).await?;
            let pod = pods.first()?.metadata.name.clone()?;
            let text = self.logs(&client, &r.namespace, &pod, 40).await;
            (!text.trim().is_empty()).then_some(text)
        })
    }

    fn exit_reason<'a>(&'a self, _job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Option<ExitReason>> {
        Box::pin(self.reason_of(compute_ref))
    }

    fn worker_started<'a>(&'a self, job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(r) = self.owned(compute_ref).filter(|r| is_run_of(&r.name, job_id)) else { return };
            let Ok((client, cluster)) = self.client().await else { return };
            let secrets: Api<Secret> = Api::namespaced(client, &r.namespace);
            match secrets.delete(&r.name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                // The reaper deletes it with the Job once the job ends; the Job's owner reference is the backstop.
                Err(e) => {
                    tracing::warn!(job_id = %job_id, error = %e, "cannot delete the run's token Secret on {cluster}")
                }
            }
        })
    }

    fn leftovers(&self) -> BoxFuture<'_, Vec<(JobId, String)>> {
        Box::pin(async move {
            // Every namespace workers may use, so a run launched just before a crash (whose ref was never
            // recorded) is found too.
            let namespaces = self.settings.namespaces.clone();
            if namespaces.is_empty() {
                return Vec::new();
            }
            let Ok((client, _)) = self.client().await else { return Vec::new() };
            let mut found = Vec::new();
            let selector = format!("{HOST_LABEL}={},{JOB_LABEL}", host_label(&self.settings.host_id));
            for namespace in namespaces {
                let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
                let Ok(list) = jobs.list(&ListParams::default().labels(&selector)).await else { continue };
                for job in list.items {
                    let Some(name) = job.metadata.name else { continue };
                    let Some(id) = job.metadata.labels.as_ref().and_then(|l| l.get(JOB_LABEL)?.parse::<JobId>().ok())
                    else {
                        continue;
                    };
                    if !is_run_of(&name, id) {
                        continue;
                    }
                    let r = KubernetesRef { host: self.settings.host_id.clone(), namespace: namespace.clone(), name };
                    found.push((id, r.to_string()));
                }
            }
            found
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_name_their_host_namespace_and_job() {
        let r = KubernetesRef { host: "host-a.1".into(), namespace: "ci".into(), name: "vg-abc-12345".into() };
        assert_eq!(KubernetesRef::parse(&r.to_string()), Some(r));
        assert_eq!(KubernetesRef::parse("kubernetes:h:Bad/x"), None);
        assert_eq!(KubernetesRef::parse("kubernetes:h:ns"), None);
        assert_eq!(KubernetesRef::parse("docker:h:0123"), None);
    }

    #[tokio::test]
    async fn an_unreachable_api_server_concludes_nothing_but_stopping_still_tries() {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\nusers:\n- \
             name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
             current-context: c\n",
        )
        .unwrap();
        let target = KubernetesTarget::new(KubernetesSettings {
            host_id: "h".into(),
            kubeconfig: Some(kubeconfig),
            namespaces: vec!["viberglass".into()],
            ..Default::default()
        });
        let job = JobId::new();
        let r = KubernetesRef { host: "h".into(), namespace: "viberglass".into(), name: format!("vg-{job}-abcde") };
        assert_eq!(target.inspect(job, &r.to_string()).await, WorkerState::Unknown);
        let stopped = target.stop(job, &r.to_string()).await.unwrap_err();
        assert!(stopped.is_transient() && stopped.to_string().contains("cannot reach the cluster at"), "{stopped}");
        let other = KubernetesRef { host: "other".into(), ..r };
        assert_eq!(target.inspect(job, &other.to_string()).await, WorkerState::Foreign);
    }

    #[test]
    fn host_labels_are_valid_label_values() {
        assert_eq!(host_label("host-a"), "host-a");
        let long = host_label(&"x".repeat(100));
        assert!(long.len() <= 63 && long.starts_with("h-"), "{long}");
        assert_ne!(host_label("-odd"), "-odd");
    }

    #[test]
    fn configs_are_checked() {
        let parse = |v: serde_json::Value| {
            serde_json::from_value::<KubernetesConfig>(v)
                .map_err(|e| e.to_string())
                .and_then(KubernetesConfig::validate)
        };
        let defaults = parse(serde_json::json!({})).unwrap();
        assert_eq!((defaults.namespace.as_str(), defaults.image.as_str()), ("viberglass", crate::DEFAULT_IMAGE));
        assert!(parse(serde_json::json!({"namespace": "Has_Caps"})).is_err());
        assert!(parse(serde_json::json!({"cpus": 0})).is_err());
        assert!(parse(serde_json::json!({"memory_mb": 1})).is_err());
        assert!(parse(serde_json::json!({"image_pull_secret": "a b"})).is_err());
        assert!(parse(serde_json::json!({"privileged": true})).is_err(), "unknown settings are refused");
        let ok = parse(serde_json::json!({"namespace": "ci", "cpus": 1.5, "memory_mb": 512})).unwrap();
        let resources = ok.resources().unwrap();
        assert_eq!(resources.limits.as_ref().unwrap()["cpu"].0, "1500m");
        assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "512Mi");
    }

    #[test]
    fn the_worker_never_mounts_the_token_or_a_service_account_token() {
        let target = KubernetesTarget::new(KubernetesSettings { host_id: "h".into(), ..Default::default() });
        let job = JobId::new();
        assert!(is_run_of(&format!("vg-{job}-{}", random_suffix()), job));
        assert!(!is_run_of(&format!("vg-{job}-zzzzz"), job));
        assert!(!is_run_of("someone-elses-secret", job));
        let config = KubernetesConfig::validate(serde_json::from_value(serde_json::json!({})).unwrap()).unwrap();
        let job = target.job_object(&config, "vg-x", target.labels(None, "vg-x"), vec![], vec![], 60, 60, Some("vg-x"));
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
        let worker = &pod.containers[0];
        assert!(worker.volume_mounts.as_ref().unwrap().iter().all(|m| m.name != "token"));
        let init = &pod.init_containers.unwrap()[0];
        assert!(init.volume_mounts.as_ref().unwrap().iter().any(|m| m.name == "token" && m.read_only == Some(true)));
    }
}
