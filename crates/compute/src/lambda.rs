//! The AWS Lambda target: one function of the worker image per clanker, one
//! asynchronous invocation per run.
//!
//! Start creates the function, or updates its code and configuration where
//! they differ from the clanker's settings (nothing when they match), and
//! waits until Lambda reports the update done. A run is an `Event`
//! invocation whose payload is the job id, the server URL and the token; the
//! worker (`viberglass worker --lambda`, the function's command) serves it
//! through the Lambda Runtime API and exits, so the next run gets a fresh
//! execution environment. Start manages only functions tagged
//! `managed-by=viberglass`, turns Lambda's retries of a failed invocation off
//! (a run's payload is delivered once), and gives the function this server's
//! URL, the only one its worker reports to. A Lambda invocation cannot be stopped or
//! inspected from outside: cancel reaches the worker through the answer to
//! its next heartbeat, and a worker that dies is noticed by its silence.

use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{
    Environment, EphemeralStorage, FunctionCode, ImageConfig, InvocationType, LastUpdateStatus, PackageType, State,
    VpcConfig,
};
use futures::future::BoxFuture;
use viberglass_domain::{ComputeKind, JobId};

use crate::ecs::{AwsComputeSettings, failed};
use crate::{ComputeConfig, ComputeError, ComputeTarget, LaunchRequest, Provisioned, WorkerState};

/// Lambda's ceiling on one invocation, in seconds.
pub const LAMBDA_MAX_SECS: u32 = 900;

/// A Lambda clanker's settings (`compute_config`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaConfig {
    /// The function's name (created on Start if it does not exist).
    pub function_name: String,
    /// The worker image's URI in ECR.
    pub image: String,
    /// The function's execution role (its permissions are the agent's: give it only CloudWatch Logs).
    pub role_arn: String,
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    /// The invocation's time limit (at most 900 s).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u32,
    /// The size of the function's /tmp, where the worker keeps the job's checkout.
    #[serde(default = "default_storage")]
    pub ephemeral_storage_mb: u32,
    /// For a function in a VPC: its subnets and security groups (both, or neither).
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
}

fn default_memory() -> u32 {
    2048
}

fn default_timeout() -> u32 {
    LAMBDA_MAX_SECS
}

fn default_storage() -> u32 {
    2048
}

impl LambdaConfig {
    pub(crate) fn validate(self) -> Result<LambdaConfig, String> {
        let name_ok = !self.function_name.is_empty()
            && self.function_name.len() <= 64
            && self.function_name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !name_ok {
            return Err("`compute_config.function_name` must be 1 to 64 letters, digits, `-` or `_`".into());
        }
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err("`compute_config.image` must be an ECR image URI \
                        (123456789012.dkr.ecr.us-east-1.amazonaws.com/viberglass-worker:1)"
                .into());
        }
        if !(self.role_arn.starts_with("arn:aws")
            && self.role_arn.contains(":iam::")
            && self.role_arn.contains(":role/"))
        {
            return Err(format!("`compute_config.role_arn` `{}` is not an IAM role ARN", self.role_arn));
        }
        if !(128..=10240).contains(&self.memory_mb) {
            return Err("`compute_config.memory_mb` must be between 128 and 10240 (MiB)".into());
        }
        if !(1..=LAMBDA_MAX_SECS).contains(&self.timeout_secs) {
            return Err(format!(
                "`compute_config.timeout_secs` must be between 1 and {LAMBDA_MAX_SECS}: Lambda stops every invocation \
                 after 15 minutes; for longer runs switch the clanker to ECS (its compute can be changed without \
                 recreating it)"
            ));
        }
        if !(512..=10240).contains(&self.ephemeral_storage_mb) {
            return Err("`compute_config.ephemeral_storage_mb` must be between 512 and 10240 (MiB)".into());
        }
        if self.subnets.is_empty() != self.security_groups.is_empty() {
            return Err("`compute_config.subnets` and `security_groups` go together: give both, or neither".into());
        }
        for (field, values, prefix) in
            [("subnets", &self.subnets, "subnet-"), ("security_groups", &self.security_groups, "sg-")]
        {
            if let Some(bad) = values.iter().find(|v| !v.starts_with(prefix) || v.len() > 64) {
                return Err(format!("`compute_config.{field}`: `{bad}` is not an id of the form {prefix}…"));
            }
        }
        Ok(self)
    }
}

/// A Lambda compute ref: `lambda:<host id>:<function>/<job id>`.
fn lambda_ref(host: &str, function: &str, job: JobId) -> String {
    format!("lambda:{host}:{function}/{job}")
}

pub struct LambdaTarget {
    settings: AwsComputeSettings,
    client: tokio::sync::OnceCell<aws_sdk_lambda::Client>,
}

impl LambdaTarget {
    pub fn new(settings: AwsComputeSettings) -> Self {
        Self { settings, client: tokio::sync::OnceCell::new() }
    }

    async fn client(&self) -> &aws_sdk_lambda::Client {
        self.client.get_or_init(|| async { aws_sdk_lambda::Client::new(&self.settings.sdk_config().await) }).await
    }

    fn config(config: &ComputeConfig) -> Result<&LambdaConfig, ComputeError> {
        match config {
            ComputeConfig::Lambda(lambda) => Ok(lambda),
            other => {
                Err(ComputeError::Permanent(format!("the Lambda target was given a {} configuration", other.kind())))
            }
        }
    }

    fn vpc(config: &LambdaConfig) -> VpcConfig {
        VpcConfig::builder()
            .set_subnet_ids(Some(config.subnets.clone()))
            .set_security_group_ids(Some(config.security_groups.clone()))
            .build()
    }

    fn storage(config: &LambdaConfig) -> Result<EphemeralStorage, ComputeError> {
        EphemeralStorage::builder()
            .size(config.ephemeral_storage_mb as i32)
            .build()
            .map_err(|e| ComputeError::Permanent(format!("the ephemeral storage setting is invalid: {e}")))
    }

    /// Waits until the function is active and its last update is done.
    async fn settle(&self, name: &str) -> Result<(), ComputeError> {
        let client = self.client().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let found = client
                .get_function_configuration()
                .function_name(name)
                .send()
                .await
                .map_err(|e| failed("lambda:GetFunctionConfiguration", e))?;
            if found.state() == Some(&State::Failed) || found.last_update_status() == Some(&LastUpdateStatus::Failed) {
                return Err(ComputeError::Permanent(format!(
                    "Lambda could not set up the function `{name}`: {}",
                    found.state_reason().or(found.last_update_status_reason()).unwrap_or("no reason given")
                )));
            }
            let active = found.state().is_none_or(|s| *s == State::Active);
            let updated = found.last_update_status().is_none_or(|s| *s == LastUpdateStatus::Successful);
            if active && updated {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ComputeError::Transient(format!(
                    "the function `{name}` was still updating after 120 s: Start the clanker again in a minute"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Creates the function, or updates what differs; says which.
    async fn ensure_function(&self, config: &LambdaConfig) -> Result<&'static str, ComputeError> {
        let client = self.client().await;
        let name = config.function_name.as_str();
        let found = match client.get_function().function_name(name).send().await {
            Ok(found) => Some(found),
            Err(aws_sdk_lambda::error::SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => None,
            Err(e) => return Err(failed("lambda:GetFunction", e)),
        };
        let mut environment = Environment::builder().variables("LOG_FORMAT", "json");
        // The worker serves only invocations for this server: whoever else may invoke the function cannot point
        // it at a server of their own.
        if let Some(server) = &self.settings.server_url {
            environment = environment.variables("VIBERGLASS_SERVER_URL", server);
        }
        let environment = environment.build();
        let command = ImageConfig::builder().command("worker").command("--lambda").build();
        if let Some(found) = &found {
            let tags = found.tags();
            let ours = tags.and_then(|t| t.get("managed-by")).is_some_and(|v| v == "viberglass");
            if !ours {
                return Err(ComputeError::Permanent(format!(
                    "a Lambda function `{name}` exists and was not created by Viberglass (it has no managed-by=viberglass \
                     tag), so Start leaves it alone rather than replace its code, role and settings: choose another \
                     compute_config.function_name (e.g. viberglass-worker-<clanker>), or tag that function \
                     managed-by=viberglass if it is Viberglass's"
                )));
            }
        }
        let Some(found) = found else {
            client
                .create_function()
                .function_name(name)
                .package_type(PackageType::Image)
                .code(FunctionCode::builder().image_uri(&config.image).build())
                .image_config(command)
                .role(&config.role_arn)
                .memory_size(config.memory_mb as i32)
                .timeout(config.timeout_secs as i32)
                .ephemeral_storage(Self::storage(config)?)
                .vpc_config(Self::vpc(config))
                .environment(environment)
                .tags("managed-by", "viberglass")
                .send()
                .await
                .map_err(|e| failed("lambda:CreateFunction", e))?;
            self.settle(name).await?;
            self.no_retries(name).await?;
            return Ok("created");
        };
        let mut changed = false;
        let current_image = found.code().and_then(|c| c.image_uri()).unwrap_or_default();
        if current_image != config.image {
            client
                .update_function_code()
                .function_name(name)
                .image_uri(&config.image)
                .send()
                .await
                .map_err(|e| failed("lambda:UpdateFunctionCode", e))?;
            self.settle(name).await?;
            changed = true;
        }
        let current = found.configuration();
        let vpc = current.and_then(|c| c.vpc_config());
        let same = current.is_some_and(|c| {
            c.role() == Some(config.role_arn.as_str())
                && c.memory_size() == Some(config.memory_mb as i32)
                && c.timeout() == Some(config.timeout_secs as i32)
                && c.ephemeral_storage().map_or(512, |s| s.size()) == config.ephemeral_storage_mb as i32
        }) && vpc.map_or(&[][..], |v| v.subnet_ids()) == config.subnets.as_slice()
            && vpc.map_or(&[][..], |v| v.security_group_ids()) == config.security_groups.as_slice();
        if !same {
            client
                .update_function_configuration()
                .function_name(name)
                .role(&config.role_arn)
                .memory_size(config.memory_mb as i32)
                .timeout(config.timeout_secs as i32)
                .ephemeral_storage(Self::storage(config)?)
                .vpc_config(Self::vpc(config))
                .image_config(command)
                .environment(environment)
                .send()
                .await
                .map_err(|e| failed("lambda:UpdateFunctionConfiguration", e))?;
            self.settle(name).await?;
            changed = true;
        }
        self.no_retries(name).await?;
        Ok(if changed { "updated" } else { "unchanged" })
    }

    /// Lambda retries a failed asynchronous invocation twice by default, with the same payload (token included):
    /// Viberglass re-runs jobs itself, with a new token, so a run is delivered once and never kept.
    async fn no_retries(&self, name: &str) -> Result<(), ComputeError> {
        self.client()
            .await
            .put_function_event_invoke_config()
            .function_name(name)
            .maximum_retry_attempts(0)
            .maximum_event_age_in_seconds(60)
            .send()
            .await
            .map_err(|e| failed("lambda:PutFunctionEventInvokeConfig", e))?;
        Ok(())
    }
}

impl ComputeTarget for LambdaTarget {
    fn kind(&self) -> ComputeKind {
        ComputeKind::Lambda
    }

    fn provision<'a>(
        &'a self,
        config: &'a ComputeConfig,
        _programs: &'a [String],
    ) -> BoxFuture<'a, Result<Provisioned, ComputeError>> {
        Box::pin(async move {
            let config = Self::config(config)?;
            let done = self.ensure_function(config).await?;
            Ok(Provisioned {
                message: format!(
                    "ready: workers run as invocations of the Lambda function `{}` ({done}; `{}`, {} MiB, {} s at most, \
                     region {}); their logs are in the CloudWatch Logs group /aws/lambda/{}",
                    config.function_name,
                    config.image,
                    config.memory_mb,
                    config.timeout_secs,
                    self.settings.region(),
                    config.function_name
                ),
            })
        })
    }

    fn launch(&self, request: LaunchRequest) -> BoxFuture<'_, Result<String, ComputeError>> {
        Box::pin(async move {
            let config = Self::config(&request.config)?;
            if let Some(limit) = request.time_limit_secs
                && limit > u64::from(config.timeout_secs)
            {
                return Err(ComputeError::Permanent(format!(
                    "the project's time limit ({limit} s) is above the function's {} s (Lambda's ceiling is {} s): \
                     switch the clanker to ECS, or lower the project's max_execution_secs",
                    config.timeout_secs, LAMBDA_MAX_SECS
                )));
            }
            let payload = serde_json::json!({
                "job_id": request.job_id.to_string(),
                "server_url": request.server_url,
                "token": request.token,
            });
            self.client()
                .await
                .invoke()
                .function_name(&config.function_name)
                .invocation_type(InvocationType::Event)
                .payload(Blob::new(payload.to_string()))
                .send()
                .await
                .map_err(|e| failed("lambda:InvokeFunction", e))?;
            Ok(lambda_ref(&self.settings.host_id, &config.function_name, request.job_id))
        })
    }

    fn stop<'a>(&'a self, _job_id: JobId, _compute_ref: &'a str) -> BoxFuture<'a, Result<(), ComputeError>> {
        Box::pin(async {
            Err(ComputeError::Permanent(
                "a Lambda invocation cannot be stopped from outside: the worker stops when the server answers its next \
                 heartbeat that the job has ended (within the heartbeat interval)"
                    .into(),
            ))
        })
    }

    fn inspect<'a>(&'a self, _job_id: JobId, compute_ref: &'a str) -> BoxFuture<'a, WorkerState> {
        let owned = compute_ref
            .strip_prefix("lambda:")
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(host, _)| host == self.settings.host_id);
        // Lambda cannot say: the heartbeat grace decides.
        Box::pin(async move { if owned { WorkerState::Unknown } else { WorkerState::Foreign } })
    }

    fn log_tail<'a>(&'a self, _job_id: JobId, _compute_ref: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async { None })
    }

    fn log_location(&self, config: &ComputeConfig, _compute_ref: &str) -> Option<String> {
        let ComputeConfig::Lambda(config) = config else { return None };
        Some(format!(
            "CloudWatch Logs group /aws/lambda/{} in {} (every line carries the job_id)",
            config.function_name,
            self.settings.region()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<LambdaConfig, String> {
        serde_json::from_value::<LambdaConfig>(v).map_err(|e| e.to_string()).and_then(LambdaConfig::validate)
    }

    #[test]
    fn settings_are_checked_against_lambdas_limits() {
        let base = serde_json::json!({"function_name": "viberglass-worker", "image": "1.dkr.ecr.us-east-1.amazonaws.com/w:1",
                                      "role_arn": "arn:aws:iam::123456789012:role/worker"});
        let ok = parse(base.clone()).unwrap();
        assert_eq!((ok.memory_mb, ok.timeout_secs, ok.ephemeral_storage_mb), (2048, 900, 2048));
        let mut long = base.clone();
        long["timeout_secs"] = 1200.into();
        let error = parse(long).unwrap_err();
        assert!(error.contains("15 minutes") && error.contains("switch the clanker to ECS"), "{error}");
        let mut half_vpc = base.clone();
        half_vpc["subnets"] = serde_json::json!(["subnet-1"]);
        assert!(parse(half_vpc).unwrap_err().contains("go together"));
        let mut name = base.clone();
        name["function_name"] = "a b".into();
        assert!(parse(name).is_err());
        let mut unknown = base;
        unknown["handler"] = "x".into();
        assert!(parse(unknown).is_err());
    }
}
