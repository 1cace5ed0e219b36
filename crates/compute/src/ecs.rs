//! The AWS ECS Fargate target: one task of the worker image per run, in the
//! clanker's cluster and subnets.
//!
//! Start checks the cluster and registers the worker's task definition only
//! when none with the same content exists: its family is named by a digest
//! of that content (`viberglass-worker-<12 hex>`), so Start twice, or two
//! clankers with the same settings, add no revision, and a launch runs
//! exactly the definition its clanker's settings describe. A run is RunTask
//! with the job id, the server URL and the token as overrides of the worker
//! container (anyone allowed `ecs:DescribeTasks` in the account can read a
//! live run's token: keep that permission to the operators); stop is
//! StopTask; inspect reads DescribeTasks and maps `stopCode` and
//! `stoppedReason` to the job's failure.

use std::time::Duration;

use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::operation::RequestId;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, Compatibility, ContainerDefinition, ContainerOverride, KeyValuePair,
    LaunchType, LogConfiguration, LogDriver, NetworkConfiguration, NetworkMode, Tag, Task, TaskOverride,
};
use futures::future::BoxFuture;
use sha2::Digest;
use viberglass_domain::{ComputeKind, JobId};

use crate::{ComputeConfig, ComputeError, ComputeTarget, ExitReason, LaunchRequest, Provisioned, WorkerState};

/// An ECS Fargate clanker's settings (`compute_config`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcsConfig {
    /// The ECS cluster's name.
    pub cluster: String,
    /// The worker image (e.g. in ECR).
    pub image: String,
    /// Fargate CPU units (256, 512, 1024, 2048, 4096, 8192, 16384).
    #[serde(default = "default_cpu")]
    pub cpu: u32,
    /// Fargate memory in MiB, valid for the CPU (see [`fargate_memory`]).
    #[serde(default = "default_memory")]
    pub memory: u32,
    /// The subnets the task's network interface is placed in.
    pub subnets: Vec<String>,
    /// The security groups of that interface.
    pub security_groups: Vec<String>,
    /// Whether the task gets a public IP (needed in public subnets without a NAT gateway).
    #[serde(default)]
    pub assign_public_ip: bool,
    /// The role ECS pulls the image and writes logs with.
    pub execution_role_arn: Option<String>,
    /// The role the worker (and so its agent) runs as: give it nothing.
    pub task_role_arn: Option<String>,
    /// The CloudWatch Logs group of the workers' logs.
    #[serde(default = "default_log_group")]
    pub log_group: String,
}

fn default_cpu() -> u32 {
    1024
}

fn default_memory() -> u32 {
    2048
}

fn default_log_group() -> String {
    "/viberglass/workers".to_owned()
}

/// The memory sizes (MiB) Fargate accepts for a CPU size; `None` for a CPU size it does not offer.
pub fn fargate_memory(cpu: u32) -> Option<Vec<u32>> {
    let range = |from: u32, to: u32, step: u32| (from..=to).step_by(step as usize).collect::<Vec<_>>();
    Some(match cpu {
        256 => vec![512, 1024, 2048],
        512 => range(1024, 4096, 1024),
        1024 => range(2048, 8192, 1024),
        2048 => range(4096, 16384, 1024),
        4096 => range(8192, 30720, 1024),
        8192 => range(16384, 61440, 4096),
        16384 => range(32768, 122880, 8192),
        _ => return None,
    })
}

fn is_aws_name(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

impl EcsConfig {
    pub(crate) fn validate(self) -> Result<EcsConfig, String> {
        if !is_aws_name(&self.cluster, 255) {
            return Err("`compute_config.cluster` must be an ECS cluster's name (letters, digits, `-` and `_`)".into());
        }
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err("`compute_config.image` must be an image URI such as \
                        123456789012.dkr.ecr.us-east-1.amazonaws.com/viberglass-worker:1"
                .into());
        }
        match fargate_memory(self.cpu) {
            None => {
                return Err(format!(
                    "`compute_config.cpu` {} is not a Fargate CPU size: use 256, 512, 1024, 2048, 4096, 8192 or 16384",
                    self.cpu
                ));
            }
            Some(valid) if !valid.contains(&self.memory) => {
                let shown = match valid.as_slice() {
                    [first, .., last] if valid.len() > 3 => {
                        format!("{first} to {last} in steps of {}", valid[1] - valid[0])
                    }
                    _ => valid.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                };
                return Err(format!(
                    "Fargate has no task with {} CPU units and {} MiB: with {} CPU units the memory is {shown} MiB",
                    self.cpu, self.memory, self.cpu
                ));
            }
            Some(_) => {}
        }
        let ids = |field: &str, values: &[String], prefix: &str| -> Result<(), String> {
            if values.is_empty() {
                return Err(format!("`compute_config.{field}` needs at least one id ({prefix}…)"));
            }
            match values.iter().find(|v| !v.starts_with(prefix) || !is_aws_name(v, 64)) {
                Some(bad) => Err(format!("`compute_config.{field}`: `{bad}` is not an id of the form {prefix}…")),
                None => Ok(()),
            }
        };
        ids("subnets", &self.subnets, "subnet-")?;
        ids("security_groups", &self.security_groups, "sg-")?;
        for (field, value) in [("execution_role_arn", &self.execution_role_arn), ("task_role_arn", &self.task_role_arn)]
        {
            if let Some(arn) = value
                && !(arn.starts_with("arn:aws") && arn.contains(":iam::") && arn.contains(":role/"))
            {
                return Err(format!("`compute_config.{field}` `{arn}` is not an IAM role ARN (arn:aws:iam::…:role/…)"));
            }
        }
        if self.log_group.is_empty()
            || self.log_group.len() > 512
            || !self.log_group.chars().all(|c| c.is_ascii_alphanumeric() || "_-/.#".contains(c))
        {
            return Err(
                "`compute_config.log_group` must be a CloudWatch Logs group name such as /viberglass/workers".into()
            );
        }
        Ok(self)
    }

    /// The task definition's family: a digest of everything in it.
    fn family(&self, region: &str) -> String {
        let content = format!(
            "v1|{}|{}|{}|{}|{}|{}|{region}",
            self.image,
            self.cpu,
            self.memory,
            self.execution_role_arn.as_deref().unwrap_or_default(),
            self.task_role_arn.as_deref().unwrap_or_default(),
            self.log_group
        );
        format!("viberglass-worker-{}", &hex::encode(sha2::Sha256::digest(content.as_bytes()))[..12])
    }
}

/// Where an AWS API (ECS, Lambda) is and who calls it.
#[derive(Clone, Default)]
pub struct AwsComputeSettings {
    /// Names this server's workers (see `LocalSettings::host_id`).
    pub host_id: String,
    /// A stand-in's address (`AWS_ENDPOINT_URL_ECS`/`_LAMBDA` or `AWS_ENDPOINT_URL`).
    pub endpoint_url: Option<String>,
    /// `AWS_REGION`; `us-east-1` when absent.
    pub region: Option<String>,
    /// The server's URL as workers reach it (a Lambda function keeps it: its worker serves no other server).
    pub server_url: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl AwsComputeSettings {
    pub(crate) fn region(&self) -> String {
        self.region.clone().unwrap_or_else(|| "us-east-1".to_owned())
    }

    /// The SDK configuration: this region, endpoint and credentials (else the default chain), bounded calls.
    pub(crate) async fn sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).region(aws_config::Region::new(self.region()));
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_ecs::config::Credentials::new(
                id,
                secret,
                self.session_token.clone(),
                None,
                "viberglass",
            ));
        }
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build();
        loader.timeout_config(timeouts).load().await
    }
}

impl std::fmt::Debug for AwsComputeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsComputeSettings")
            .field("host_id", &self.host_id)
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// An ECS compute ref: `ecs:<host id>:<cluster>/<task id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsRef {
    pub host: String,
    pub cluster: String,
    pub task: String,
}

impl EcsRef {
    pub fn parse(compute_ref: &str) -> Option<EcsRef> {
        let rest = compute_ref.strip_prefix("ecs:")?;
        let (host, task) = rest.split_once(':')?;
        let (cluster, task) = task.split_once('/')?;
        let valid = !host.is_empty() && is_aws_name(cluster, 255) && is_aws_name(task, 64);
        valid.then(|| EcsRef { host: host.to_owned(), cluster: cluster.to_owned(), task: task.to_owned() })
    }
}

impl std::fmt::Display for EcsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ecs:{}:{}/{}", self.host, self.cluster, self.task)
    }
}

const WORKER: &str = "worker";
const STREAM_PREFIX: &str = "viberglass";

pub struct EcsTarget {
    settings: AwsComputeSettings,
    client: tokio::sync::OnceCell<aws_sdk_ecs::Client>,
}

/// An ECS API error, for people: the action, the service's code and message, and the request id.
pub(crate) fn failed<E: ProvideErrorMetadata + RequestId + std::error::Error + Send + Sync + 'static>(
    action: &str,
    error: SdkError<E>,
) -> ComputeError {
    let api = if action.starts_with("lambda:") { "Lambda" } else { "ECS" };
    match &error {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown");
            let message = e.message().unwrap_or_default();
            let request = e.request_id().map(|r| format!(" (request id {r})")).unwrap_or_default();
            let text = match code {
                "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" => format!(
                    "the server's AWS role lacks `{action}`: add it to the role (or re-apply your infrastructure) \
                     [{code}: {message}]{request}"
                ),
                "ClusterNotFoundException" => {
                    format!("{action}: the ECS cluster was not found [{code}: {message}]{request}")
                }
                "InvalidParameterValueException" | "InvalidParameterException"
                    if message.contains("ubnet") || message.to_lowercase().contains("security group") =>
                {
                    format!(
                        "{action}: a subnet or security group of the clanker was not found (they belong to another \
                         VPC or were deleted): re-deploy the workers' network settings [{code}: {message}]{request}"
                    )
                }
                "InvalidParameterValueException" | "InvalidParameterException"
                    if message.to_lowercase().contains("image") =>
                {
                    format!(
                        "{action}: the image URI was not found in ECR (or this role may not read it): push the worker \
                         image, or fix compute_config.image [{code}: {message}]{request}"
                    )
                }
                _ => format!("{action} failed [{code}: {message}]{request}"),
            };
            tracing::warn!(action, code, request = e.request_id().unwrap_or_default(), "{text}");
            if matches!(code, "ThrottlingException" | "ServerException" | "ServiceUnavailableException") {
                ComputeError::Transient(text)
            } else {
                ComputeError::Permanent(text)
            }
        }
        // Never the raw answer: it may echo the run's overrides, token included.
        SdkError::ResponseError(response) => ComputeError::Transient(format!(
            "{action}: the {api} API's answer (HTTP {}) could not be read: check AWS_ENDPOINT_URL points at {api}",
            response.raw().status().as_u16()
        )),
        SdkError::TimeoutError(_) => {
            ComputeError::Transient(format!("{action}: the {api} API did not answer within 30 s; retrying"))
        }
        other => {
            let detail = match other {
                SdkError::DispatchFailure(failure) => {
                    format!("{:?}", failure.as_connector_error().map(|e| e.to_string()))
                }
                _ => "the request could not be sent".to_owned(),
            };
            ComputeError::Transient(format!(
                "{action}: cannot reach the {api} API ({detail}): check AWS_REGION, AWS_ENDPOINT_URL and the network"
            ))
        }
    }
}

/// What a stopped (or stopping) task says of its worker.
pub(crate) fn task_reason(task: &Task, log_group: Option<&str>) -> Option<ExitReason> {
    let reason = task.stopped_reason().unwrap_or_default();
    let code = task.stop_code().map(|c| c.as_str()).unwrap_or_default();
    let container = task.containers().iter().find(|c| c.name() == Some(WORKER));
    let container_reason = container.and_then(|c| c.reason()).unwrap_or_default();
    let task_id = task.task_arn().and_then(|a| a.rsplit('/').next()).unwrap_or_default();
    let stream = log_group
        .map(|g| format!("; its log is in the CloudWatch Logs group {g}, stream {STREAM_PREFIX}/{WORKER}/{task_id}"))
        .unwrap_or_default();
    let all = format!("{reason} {container_reason}");
    if all.contains("CannotPullContainerError") {
        return Some(ExitReason {
            code: "worker_image_pull_failed",
            message: format!(
                "ECS cannot pull the worker image ({}): check that the image URI exists in ECR and that the execution \
                 role may pull it (ecr:GetAuthorizationToken, ecr:BatchGetImage)",
                all.trim()
            ),
            started: false,
        });
    }
    if all.contains("ResourceInitializationError") {
        return Some(ExitReason {
            code: "worker_not_started",
            message: format!(
                "ECS could not prepare the task ({}): the execution role cannot read or decrypt what the task needs \
                 (secrets, registry credentials, the log group), or the subnets cannot reach those services",
                all.trim()
            ),
            started: false,
        });
    }
    if container_reason.contains("OutOfMemoryError") {
        return Some(ExitReason {
            code: "worker_out_of_memory",
            message: format!(
                "killed: out of memory ({container_reason}): raise the clanker's memory (compute_config.memory, valid \
                 for its cpu), then re-run{stream}"
            ),
            started: true,
        });
    }
    let last = task.last_status().unwrap_or_default();
    if last != "STOPPED" && reason.is_empty() {
        return None;
    }
    let exit = container.and_then(|c| c.exit_code());
    Some(ExitReason {
        code: "worker_exited",
        message: match exit {
            Some(exit) => format!("the task's worker exited with code {exit} ({code}: {reason}){stream}"),
            None => format!("the task stopped before its worker ran ({code}: {reason}){stream}"),
        },
        started: exit.is_some(),
    })
}

impl EcsTarget {
    pub fn new(settings: AwsComputeSettings) -> Self {
        Self { settings, client: tokio::sync::OnceCell::new() }
    }

    fn region(&self) -> String {
        self.settings.region()
    }

    async fn client(&self) -> &aws_sdk_ecs::Client {
        self.client.get_or_init(|| async { aws_sdk_ecs::Client::new(&self.settings.sdk_config().await) }).await
    }

    fn config(config: &ComputeConfig) -> Result<&EcsConfig, ComputeError> {
        match config {
            ComputeConfig::Ecs(ecs) => Ok(ecs),
            other => Err(ComputeError::Permanent(format!("the ECS target was given a {} configuration", other.kind()))),
        }
    }

    /// Registers the worker's task definition unless the latest of its family is it (the same image, size and
    /// roles: someone else may register in a family whose name is guessable); returns the exact revision's ARN.
    async fn ensure_task_definition(&self, config: &EcsConfig) -> Result<(String, bool), ComputeError> {
        let client = self.client().await;
        let family = config.family(&self.region());
        match client.describe_task_definition().task_definition(&family).send().await {
            Ok(found) => {
                if let Some(definition) = found.task_definition()
                    && definition.status().map(|s| s.as_str()) == Some("ACTIVE")
                    && let Some(arn) = definition.task_definition_arn()
                {
                    let worker = definition.container_definitions().iter().find(|c| c.name() == Some(WORKER));
                    let same = worker.and_then(|w| w.image()) == Some(config.image.as_str())
                        && definition.cpu() == Some(config.cpu.to_string().as_str())
                        && definition.memory() == Some(config.memory.to_string().as_str())
                        && definition.execution_role_arn() == config.execution_role_arn.as_deref()
                        && definition.task_role_arn() == config.task_role_arn.as_deref();
                    if same {
                        return Ok((arn.to_owned(), false));
                    }
                    tracing::warn!(
                        family,
                        "the latest task definition of the family differs from the clanker's: registering it again"
                    );
                }
            }
            // "Unable to describe task definition": there is none of this family yet.
            Err(SdkError::ServiceError(e)) if e.err().code() == Some("ClientException") => {}
            Err(e) => return Err(failed("ecs:DescribeTaskDefinition", e)),
        }
        let logs = LogConfiguration::builder()
            .log_driver(LogDriver::Awslogs)
            .options("awslogs-group", &config.log_group)
            .options("awslogs-region", self.region())
            .options("awslogs-stream-prefix", STREAM_PREFIX)
            .options("awslogs-create-group", "true")
            .build()
            .map_err(|e| ComputeError::Permanent(format!("the log configuration is invalid: {e}")))?;
        let container = ContainerDefinition::builder()
            .name(WORKER)
            .image(&config.image)
            .essential(true)
            .memory(config.memory as i32)
            .command("worker")
            .command("--self-check")
            .environment(KeyValuePair::builder().name("LOG_FORMAT").value("json").build())
            .log_configuration(logs)
            .build();
        let mut register = client
            .register_task_definition()
            .family(&family)
            .requires_compatibilities(Compatibility::Fargate)
            .network_mode(NetworkMode::Awsvpc)
            .cpu(config.cpu.to_string())
            .memory(config.memory.to_string())
            .container_definitions(container)
            .tags(Tag::builder().key("managed-by").value("viberglass").build());
        if let Some(role) = &config.execution_role_arn {
            register = register.execution_role_arn(role);
        }
        if let Some(role) = &config.task_role_arn {
            register = register.task_role_arn(role);
        }
        let registered = register.send().await.map_err(|e| failed("ecs:RegisterTaskDefinition", e))?;
        let arn = registered
            .task_definition()
            .and_then(|d| d.task_definition_arn())
            .ok_or_else(|| ComputeError::Transient("ECS registered the task definition without naming it".into()))?;
        Ok((arn.to_owned(), true))
    }

    async fn launch_inner(&self, request: LaunchRequest) -> Result<String, ComputeError> {
        let config = Self::config(&request.config)?;
        let (definition, _) = self.ensure_task_definition(config).await?;
        let client = self.client().await;
        let network = AwsVpcConfiguration::builder()
            .set_subnets(Some(config.subnets.clone()))
            .set_security_groups(Some(config.security_groups.clone()))
            .assign_public_ip(if config.assign_public_ip { AssignPublicIp::Enabled } else { AssignPublicIp::Disabled })
            .build()
            .map_err(|e| ComputeError::Permanent(format!("the network configuration is invalid: {e}")))?;
        let env = |name: &str, value: &str| KeyValuePair::builder().name(name).value(value).build();
        let job = request.job_id.to_string();
        let overrides = TaskOverride::builder()
            .container_overrides(
                ContainerOverride::builder()
                    .name(WORKER)
                    .command("worker")
                    .command("--job")
                    .command(&job)
                    .environment(env("VIBERGLASS_SERVER_URL", &request.server_url))
                    .environment(env("VIBERGLASS_JOB_TOKEN", &request.token))
                    .environment(env("VIBERGLASS_WORKSPACE", "/workspace"))
                    .build(),
            )
            .build();
        let ran = client
            .run_task()
            .cluster(&config.cluster)
            .task_definition(&definition)
            .launch_type(LaunchType::Fargate)
            .network_configuration(NetworkConfiguration::builder().awsvpc_configuration(network).build())
            .overrides(overrides)
            .started_by(format!("viberglass-{}", &job[..job.len().min(25)]))
            .tags(Tag::builder().key("io.viberglass.job").value(&job).build())
            .tags(Tag::builder().key("io.viberglass.host").value(&self.settings.host_id).build())
            .send()
            .await
            .map_err(|e| failed("ecs:RunTask", e))?;
        if let Some(failure) = ran.failures().first() {
            return Err(ComputeError::Permanent(format!(
                "ECS did not start the task: {} ({})",
                failure.reason().unwrap_or_default(),
                failure.detail().unwrap_or_default()
            )));
        }
        let arn = ran
            .tasks()
            .first()
            .and_then(|t| t.task_arn())
            .ok_or_else(|| ComputeError::Transient("ECS answered RunTask without a task".into()))?;
        let task = arn.rsplit('/').next().unwrap_or_default().to_owned();
        Ok(EcsRef { host: self.settings.host_id.clone(), cluster: config.cluster.clone(), task }.to_string())
    }

    fn owned(&self, compute_ref: &str) -> Option<EcsRef> {
        EcsRef::parse(compute_ref).filter(|r| r.host == self.settings.host_id)
    }

    async fn describe(&self, r: &EcsRef) -> Result<Option<Task>, ComputeError> {
        let client = self.client().await;
        let found = client
            .describe_tasks()
            .cluster(&r.cluster)
            .tasks(&r.task)
            .send()
            .await
            .map_err(|e| failed("ecs:DescribeTasks", e))?;
        Ok(found.tasks().first().cloned())
    }
}

impl ComputeTarget for EcsTarget {
    fn kind(&self) -> ComputeKind {
        ComputeKind::Ecs
    }

    fn provision<'a>(
        &'a self,
        config: &'a ComputeConfig,
        _programs: &'a [String],
    ) -> BoxFuture<'a, Result<Provisioned, ComputeError>> {
        Box::pin(async move {
            let config = Self::config(config)?;
            let client = self.client().await;
            let clusters = client
                .describe_clusters()
                .clusters(&config.cluster)
                .send()
                .await
                .map_err(|e| failed("ecs:DescribeClusters", e))?;
            let active = clusters.clusters().iter().any(|c| c.status() == Some("ACTIVE"));
            if !active {
                return Err(ComputeError::Permanent(format!(
                    "the ECS cluster `{}` does not exist (or is not active) in region {}: create it, or set the \
                     clanker's compute_config.cluster",
                    config.cluster,
                    self.region()
                )));
            }
            let (definition, registered) = self.ensure_task_definition(config).await?;
            let family = definition.rsplit('/').next().unwrap_or(&definition);
            Ok(Provisioned {
                message: format!(
                    "ready: workers run as Fargate tasks of `{}` ({} CPU units, {} MiB) in cluster {} ({}), task \
                     definition {family} ({})",
                    config.image,
                    config.cpu,
                    config.memory,
                    config.cluster,
                    self.region(),
                    if registered { "registered now" } else { "unchanged" }
                ),
            })
        })
    }

    fn launch(&self, request: LaunchRequest) -> BoxFuture<'_, Result<String, ComputeError>> {
        Box::pin(self.launch_inner(request))
    }

    fn stop<'a>(&'a self, _job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Result<(), ComputeError>> {
        Box::pin(async move {
            let Some(r) = EcsRef::parse(compute_ref) else {
                return Err(ComputeError::Permanent(format!("`{compute_ref}` is not an ECS worker")));
            };
            crate::ours_to_stop(compute_ref, &r.host, &self.settings.host_id)?;
            let client = self.client().await;
            match client
                .stop_task()
                .cluster(&r.cluster)
                .task(&r.task)
                .reason("stopped by Viberglass (the job was cancelled or has ended)")
                .send()
                .await
            {
                Ok(_) => Ok(()),
                // A task that is gone (or already stopped) is stopped.
                Err(SdkError::ServiceError(e))
                    if matches!(e.err().code(), Some("InvalidParameterException" | "ClientException")) =>
                {
                    Ok(())
                }
                Err(e) => Err(failed("ecs:StopTask", e)),
            }
        })
    }

    fn inspect<'a>(&'a self, _job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, WorkerState> {
        Box::pin(async move {
            let Some(r) = self.owned(compute_ref) else { return WorkerState::Foreign };
            match self.describe(&r).await {
                Ok(None) => WorkerState::Gone,
                Ok(Some(task)) => match task.last_status() {
                    Some("STOPPED" | "DEPROVISIONING") => WorkerState::Gone,
                    _ if task.desired_status() == Some("STOPPED") && task.stop_code().is_some() => WorkerState::Gone,
                    _ => WorkerState::Running,
                },
                Err(_) => WorkerState::Unknown,
            }
        })
    }

    fn log_tail<'a>(&'a self, _job_id: JobId, _compute_ref: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async { None })
    }

    fn log_location(&self, config: &ComputeConfig, compute_ref: &str) -> Option<String> {
        let (ComputeConfig::Ecs(config), Some(r)) = (config, EcsRef::parse(compute_ref)) else { return None };
        Some(format!(
            "CloudWatch Logs group {} in {}, stream {STREAM_PREFIX}/{WORKER}/{}",
            config.log_group,
            self.region(),
            r.task
        ))
    }

    fn exit_reason<'a>(&'a self, _job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, Option<ExitReason>> {
        Box::pin(async move {
            let r = self.owned(compute_ref)?;
            let task = self.describe(&r).await.ok()??;
            // Where its log is: the awslogs group of its task definition.
            let mut group = None;
            if let Some(definition) = task.task_definition_arn() {
                let client = self.client().await;
                if let Ok(found) = client.describe_task_definition().task_definition(definition).send().await {
                    group = found
                        .task_definition()
                        .and_then(|d| d.container_definitions().iter().find(|c| c.name() == Some(WORKER)))
                        .and_then(|c| c.log_configuration())
                        .and_then(|l| l.options())
                        .and_then(|o| o.get("awslogs-group").cloned());
                }
            }
            task_reason(&task, group.as_deref())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{Container, TaskStopCode};

    fn parse(v: serde_json::Value) -> Result<EcsConfig, String> {
        serde_json::from_value::<EcsConfig>(v).map_err(|e| e.to_string()).and_then(EcsConfig::validate)
    }

    fn base() -> serde_json::Value {
        serde_json::json!({"cluster": "workers", "image": "123.dkr.ecr.us-east-1.amazonaws.com/w:1",
                           "subnets": ["subnet-0abc"], "security_groups": ["sg-0abc"]})
    }

    #[test]
    fn cpu_and_memory_are_checked_against_fargates_table() {
        assert!(parse(base()).is_ok());
        let mut odd = base();
        odd["cpu"] = 1024.into();
        odd["memory"] = 1024.into();
        let error = parse(odd).unwrap_err();
        assert!(error.contains("with 1024 CPU units the memory is 2048 to 8192 in steps of 1024 MiB"), "{error}");
        let mut small = base();
        small["cpu"] = 256.into();
        small["memory"] = 4096.into();
        assert!(parse(small).unwrap_err().contains("512, 1024, 2048"));
        let mut cpu = base();
        cpu["cpu"] = 300.into();
        assert!(parse(cpu).unwrap_err().contains("not a Fargate CPU size"));
        assert_eq!(fargate_memory(16384).unwrap().last(), Some(&122880));
    }

    #[test]
    fn networks_and_roles_are_checked() {
        let mut no_subnets = base();
        no_subnets["subnets"] = serde_json::json!([]);
        assert!(parse(no_subnets).unwrap_err().contains("subnets"));
        let mut bad_sg = base();
        bad_sg["security_groups"] = serde_json::json!(["default"]);
        assert!(parse(bad_sg).unwrap_err().contains("sg-"));
        let mut role = base();
        role["task_role_arn"] = "admin".into();
        assert!(parse(role).unwrap_err().contains("IAM role ARN"));
        let mut unknown = base();
        unknown["privileged"] = true.into();
        assert!(parse(unknown).is_err());
    }

    #[test]
    fn the_family_names_the_definitions_content() {
        let a = parse(base()).unwrap();
        let mut b = a.clone();
        assert_eq!(a.family("us-east-1"), b.family("us-east-1"));
        b.memory = 4096;
        assert_ne!(a.family("us-east-1"), b.family("us-east-1"));
        assert!(a.family("us-east-1").starts_with("viberglass-worker-"));
    }

    #[test]
    fn refs_name_their_host_cluster_and_task() {
        let r = EcsRef { host: "h.1".into(), cluster: "workers".into(), task: "0123abcd".into() };
        assert_eq!(EcsRef::parse(&r.to_string()), Some(r));
        assert_eq!(EcsRef::parse("ecs:h:bad cluster/x"), None);
    }

    fn task(stop: Option<TaskStopCode>, reason: &str, container_reason: Option<&str>, exit: Option<i32>) -> Task {
        let container = Container::builder()
            .name(WORKER)
            .set_reason(container_reason.map(str::to_owned))
            .set_exit_code(exit)
            .build();
        Task::builder()
            .task_arn("arn:aws:ecs:us-east-1:123456789012:task/workers/0123abcd")
            .last_status("STOPPED")
            .set_stop_code(stop)
            .stopped_reason(reason)
            .containers(container)
            .build()
    }

    #[test]
    fn stopped_reasons_map_to_failures() {
        // Recorded DescribeTasks answers.
        let pull = task(
            Some(TaskStopCode::TaskFailedToStart),
            "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref \
             123.dkr.ecr.us-east-1.amazonaws.com/w:1: not found",
            None,
            None,
        );
        let r = task_reason(&pull, None).unwrap();
        assert_eq!((r.code, r.started), ("worker_image_pull_failed", false));
        assert!(r.message.contains("image URI exists in ECR"), "{}", r.message);

        let secrets = task(
            Some(TaskStopCode::TaskFailedToStart),
            "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
             failed: unable to retrieve secret from asm: AccessDeniedException",
            None,
            None,
        );
        let r = task_reason(&secrets, None).unwrap();
        assert_eq!((r.code, r.started), ("worker_not_started", false));
        assert!(r.message.contains("execution role cannot read or decrypt"), "{}", r.message);

        let oom = task(
            Some(TaskStopCode::EssentialContainerExited),
            "Essential container in task exited",
            Some("OutOfMemoryError: Container killed due to memory usage"),
            Some(137),
        );
        assert_eq!(task_reason(&oom, None).unwrap().code, "worker_out_of_memory");

        let exited =
            task(Some(TaskStopCode::EssentialContainerExited), "Essential container in task exited", None, Some(2));
        let r = task_reason(&exited, Some("/viberglass/workers")).unwrap();
        assert_eq!((r.code, r.started), ("worker_exited", true));
        assert!(
            r.message.contains("exited with code 2") && r.message.contains("stream viberglass/worker/0123abcd"),
            "{}",
            r.message
        );
    }
}
