//! Server configuration: defaults < optional TOML file < environment
//! variables < command-line flags, read once at startup.
//!
//! Every setting is declared once in [`SETTINGS`] with its TOML key, its
//! environment variable, its default and a sentence for people; the loader,
//! the error messages and `viberglass config default` are all driven by that
//! table, so they cannot drift apart.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use viberglass_store::DatabaseTarget;

/// One setting: where it comes from and what it means.
pub struct Setting {
    pub key: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    /// Secret values are never echoed in messages.
    pub secret: bool,
}

pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "data_dir",
        env: "VIBERGLASS_DATA_DIR",
        default: "./viberglass-data",
        doc: "Where the embedded SQLite database, the generated encryption key and job workspaces live.",
        secret: false,
    },
    Setting {
        key: "database_url",
        env: "DATABASE_URL",
        default: "",
        doc: "Empty: the embedded SQLite database in data_dir. postgres://user:password@host:5432/db: PostgreSQL (production).",
        secret: false,
    },
    Setting {
        key: "host",
        env: "VIBERGLASS_HOST",
        default: "127.0.0.1",
        doc: "The address to listen on. Use 0.0.0.0 to accept connections from other machines (e.g. in a container).",
        secret: false,
    },
    Setting {
        key: "port",
        env: "VIBERGLASS_PORT",
        default: "8888",
        doc: "The TCP port to listen on (0 picks a free one).",
        secret: false,
    },
    Setting {
        key: "public_url",
        env: "VIBERGLASS_PUBLIC_URL",
        default: "",
        doc: "The URL people and workers reach this server at. Empty: http://<host>:<port>.",
        secret: false,
    },
    Setting {
        key: "log_format",
        env: "LOG_FORMAT",
        default: "text",
        doc: "text (readable) or json (one object per line, for log collectors).",
        secret: false,
    },
    Setting {
        key: "log_level",
        env: "LOG_LEVEL",
        default: "info",
        doc: "error, warn, info, debug or trace, or per-module directives such as info,viberglass_store=debug.",
        secret: false,
    },
    Setting {
        key: "cors_allowed_origins",
        env: "VIBERGLASS_CORS_ORIGINS",
        default: "",
        doc: "Origins other than this server's own that browsers may call the API from, comma-separated (https://app.example.com).",
        secret: false,
    },
    Setting {
        key: "body_limit_bytes",
        env: "VIBERGLASS_BODY_LIMIT_BYTES",
        default: "10485760",
        doc: "The largest request body accepted, in bytes.",
        secret: false,
    },
    Setting {
        key: "secrets_encryption_key",
        env: "SECRETS_ENCRYPTION_KEY",
        default: "",
        doc: "32 bytes as 64 hex characters (or base64) that encrypt stored secrets. Embedded mode generates one into \
              data_dir/secrets.key; with PostgreSQL it is required and must be the same on every server.",
        secret: true,
    },
    Setting {
        key: "secrets_previous_keys",
        env: "SECRETS_PREVIOUS_KEYS",
        default: "",
        doc: "Earlier encryption keys, comma-separated: they still decrypt what they encrypted (during a key rotation, \
              see `viberglass secrets rotate-key`).",
        secret: true,
    },
    Setting {
        key: "ssm_prefix",
        env: "VIBERGLASS_SSM_PREFIX",
        default: "/viberglass",
        doc: "Where `ssm` secrets live in AWS SSM Parameter Store when they give no explicit path: <prefix>/<NAME>. \
              The endpoint, region and credentials come from the standard AWS settings (AWS_REGION, AWS_ENDPOINT_URL, ...).",
        secret: false,
    },
    Setting {
        key: "auth_disabled",
        env: "AUTH_DISABLED",
        default: "false",
        doc: "Local development only: every request acts as an administrator, without signing in. Logged as a warning \
              at startup; refused with PostgreSQL unless auth_disabled_allow_postgres is also true.",
        secret: false,
    },
    Setting {
        key: "auth_disabled_allow_postgres",
        env: "AUTH_DISABLED_ALLOW_POSTGRES",
        default: "false",
        doc: "Confirms AUTH_DISABLED together with a PostgreSQL database (which usually means a shared deployment).",
        secret: false,
    },
    Setting {
        key: "trust_forwarded_for",
        env: "VIBERGLASS_TRUST_FORWARDED_FOR",
        default: "false",
        doc: "Behind one reverse proxy: take the client's address (for sign-in limits and the audit log) from the \
              last X-Forwarded-For entry the proxy adds, instead of the connection's address.",
        secret: false,
    },
    Setting {
        key: "trust_traceparent",
        env: "VIBERGLASS_TRUST_TRACEPARENT",
        default: "false",
        doc: "Continue the trace a request's W3C traceparent header names (with OTLP tracing on). Only behind a gateway \
              that sets or checks it: otherwise any caller chooses whether its requests and runs are sampled.",
        secret: false,
    },
    Setting {
        key: "session_ttl_hours",
        env: "VIBERGLASS_SESSION_TTL_HOURS",
        default: "168",
        doc: "How long a sign-in lasts.",
        secret: false,
    },
    Setting {
        key: "db_connect_attempts",
        env: "VIBERGLASS_DB_CONNECT_ATTEMPTS",
        default: "5",
        doc: "How many times to try reaching the database at startup before giving up (with backoff between tries).",
        secret: false,
    },
    Setting {
        key: "db_max_connections",
        env: "VIBERGLASS_DB_MAX_CONNECTIONS",
        default: "10",
        doc: "The most database connections this server keeps open.",
        secret: false,
    },
    Setting {
        key: "worker_binary",
        env: "VIBERGLASS_WORKER_BINARY",
        default: "",
        doc: "The viberglass binary local workers run as `viberglass worker`. Empty: this server's own binary.",
        secret: false,
    },
    Setting {
        key: "sandbox",
        env: "VIBERGLASS_SANDBOX",
        default: "auto",
        doc: "How local workers are isolated: auto (bubblewrap when installed), bubblewrap (required) or none.",
        secret: false,
    },
    Setting {
        key: "bwrap",
        env: "VIBERGLASS_BWRAP",
        default: "",
        doc: "The bubblewrap binary that sandboxes local workers. Empty: `bwrap` on the PATH.",
        secret: false,
    },
    Setting {
        key: "sandbox_paths",
        env: "VIBERGLASS_SANDBOX_PATHS",
        default: "",
        doc: "Directories (colon-separated) sandboxed local workers may read besides the system's, e.g. where agent CLIs are installed outside /usr.",
        secret: false,
    },
    Setting {
        key: "host_id",
        env: "VIBERGLASS_HOST_ID",
        default: "",
        doc: "This host's id. Local workers are named by it, and only servers with the same host id inspect or stop them. Empty: /etc/machine-id, else the hostname.",
        secret: false,
    },
    Setting {
        key: "allowed_hosts",
        env: "VIBERGLASS_ALLOWED_HOSTS",
        default: "",
        doc: "Extra host names (comma-separated) requests may be addressed to, besides the public URL's host, localhost and IP addresses. Others are refused, which stops DNS-rebinding pages from driving a local server.",
        secret: false,
    },
    Setting {
        key: "allow_local_repositories",
        env: "VIBERGLASS_ALLOW_LOCAL_REPOSITORIES",
        default: "false",
        doc: "Whether projects may clone from this machine's own files (file:// URLs). Off: a project could read any repository the server can.",
        secret: false,
    },
    Setting {
        key: "docker_allow_host_network",
        env: "VIBERGLASS_DOCKER_ALLOW_HOST_NETWORK",
        default: "false",
        doc: "Whether Docker clankers may use \"network\": \"host\". Off: that network gives agents the Docker host's loopback services and cloud metadata endpoint.",
        secret: false,
    },
    Setting {
        key: "kubernetes_namespaces",
        env: "VIBERGLASS_KUBERNETES_NAMESPACES",
        default: "",
        doc: "The namespaces (comma-separated) Kubernetes clankers may run workers in. Empty: Kubernetes clankers are off, and no kubeconfig or in-cluster account is used.",
        secret: false,
    },
    Setting {
        key: "kubeconfig",
        env: "VIBERGLASS_KUBECONFIG",
        default: "",
        doc: "The kubeconfig file Kubernetes clankers use. Empty: KUBECONFIG, ~/.kube/config, else the in-cluster service account.",
        secret: false,
    },
    Setting {
        key: "kubernetes_context",
        env: "VIBERGLASS_KUBERNETES_CONTEXT",
        default: "",
        doc: "The kubeconfig context Kubernetes clankers use. Empty: its current context.",
        secret: false,
    },
    Setting {
        key: "kubernetes_unschedulable_grace_secs",
        env: "VIBERGLASS_KUBERNETES_UNSCHEDULABLE_GRACE_SECS",
        default: "120",
        doc: "How long a Kubernetes worker's pod may wait for a node (a cluster autoscaler may be adding one) before its job fails as unschedulable.",
        secret: false,
    },
    Setting {
        key: "agent_silence_secs",
        env: "VIBERGLASS_AGENT_SILENCE_SECS",
        default: "300",
        doc: "How long an agent may print nothing (a model API that stalls mid-stream) before its run fails in the agent_timeout layer.",
        secret: false,
    },
    Setting {
        key: "heartbeat_interval_secs",
        env: "VIBERGLASS_HEARTBEAT_INTERVAL_SECS",
        default: "5",
        doc: "How often workers report that they are alive.",
        secret: false,
    },
    Setting {
        key: "heartbeat_grace_secs",
        env: "VIBERGLASS_HEARTBEAT_GRACE_SECS",
        default: "60",
        doc: "How long a worker may stay silent before its job is failed and its compute stopped.",
        secret: false,
    },
    Setting {
        key: "reaper_interval_ms",
        env: "VIBERGLASS_REAPER_INTERVAL_MS",
        default: "2000",
        doc: "How often the reaper looks for silent or overlong jobs while any job is live (with none, it sleeps until a job changes).",
        secret: false,
    },
    Setting {
        key: "dispatch_interval_ms",
        env: "VIBERGLASS_DISPATCH_INTERVAL_MS",
        default: "500",
        doc: "How often the dispatcher looks for queued jobs when it cannot hear job changes (SQLite, or while PostgreSQL's listener is down); otherwise any server's job change wakes it at once.",
        secret: false,
    },
    Setting {
        key: "webhook_payload_days",
        env: "VIBERGLASS_WEBHOOK_PAYLOAD_DAYS",
        default: "14",
        doc: "How many days an inbound webhook delivery's raw payload is kept for reading and redelivery (the delivery's record stays).",
        secret: false,
    },
    Setting {
        key: "webhook_allow_private",
        env: "VIBERGLASS_WEBHOOK_ALLOW_PRIVATE",
        default: "false",
        doc: "Let outbound webhooks reach loopback, link-local and private addresses (true or false); off, each subscription to an internal target needs an administrator's allow_private.",
        secret: false,
    },
    Setting {
        key: "webhook_max_age_secs",
        env: "VIBERGLASS_WEBHOOK_MAX_AGE_SECS",
        default: "259200",
        doc: "How long an outbound webhook delivery is retried (seconds; 3 days), and how long a subscription may fail before it is turned off.",
        secret: false,
    },
    Setting {
        key: "webhook_retry_min_ms",
        env: "VIBERGLASS_WEBHOOK_RETRY_MIN_MS",
        default: "5000",
        doc: "The wait after an outbound webhook's first failed attempt (milliseconds); it doubles with each failure, with jitter.",
        secret: false,
    },
    Setting {
        key: "webhook_retry_max_secs",
        env: "VIBERGLASS_WEBHOOK_RETRY_MAX_SECS",
        default: "3600",
        doc: "The longest wait between two attempts of an outbound webhook (seconds).",
        secret: false,
    },
    Setting {
        key: "webhook_delivery_days",
        env: "VIBERGLASS_WEBHOOK_DELIVERY_DAYS",
        default: "30",
        doc: "How many days a succeeded outbound webhook delivery keeps its body for redelivery (its record and attempts stay).",
        secret: false,
    },
    Setting {
        key: "webhook_timeout_ms",
        env: "VIBERGLASS_WEBHOOK_TIMEOUT_MS",
        default: "10000",
        doc: "How long an outbound webhook's receiver has to answer (milliseconds).",
        secret: false,
    },
    Setting {
        key: "keep_failed_workspaces",
        env: "VIBERGLASS_KEEP_FAILED_WORKSPACES",
        default: "false",
        doc: "Keep the workspace of a failed run for inspection (true or false).",
        secret: false,
    },
    Setting {
        key: "commit_author",
        env: "VIBERGLASS_COMMIT_AUTHOR",
        default: "Viberglass <viberglass@localhost>",
        doc: "The author of the commits execution runs make, as `Name <email>`.",
        secret: false,
    },
    Setting {
        key: "shutdown_timeout_secs",
        env: "VIBERGLASS_SHUTDOWN_TIMEOUT_SECS",
        default: "30",
        doc: "How long to let in-flight requests finish after SIGTERM or Ctrl-C.",
        secret: false,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret value whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey([u8; 32]);

impl EncryptionKey {
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads 64 hex characters or base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        use base64::Engine;
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "expected 32 bytes as 64 hex characters or base64".to_owned())?
        };
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("expected 32 bytes as 64 hex characters or base64, got {} bytes", b.len()))?;
        Ok(Self(bytes))
    }

    pub fn generate() -> Self {
        Self(rand::random())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(***)")
    }
}

/// Where the encryption key came from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Configured(EncryptionKey),
    /// Embedded mode without a configured key: read or created at startup in this file.
    DataDirFile(PathBuf),
}

/// The server's configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database: DatabaseTarget,
    pub host: IpAddr,
    pub port: u16,
    pub public_url: Option<String>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub cors_allowed_origins: Vec<String>,
    pub body_limit_bytes: usize,
    pub encryption_key: KeySource,
    pub db_connect_attempts: u32,
    pub db_max_connections: u32,
    pub shutdown_timeout_secs: u64,
    /// Empty means this process's own executable.
    pub worker_binary: Option<PathBuf>,
    pub heartbeat_interval_secs: u64,
    pub heartbeat_grace_secs: u64,
    pub reaper_interval_ms: u64,
    pub dispatch_interval_ms: u64,
    /// Days an inbound delivery's payload is kept.
    pub webhook_payload_days: u32,
    /// Outbound webhooks: private destinations allowed for every subscription.
    pub webhook_allow_private: bool,
    pub webhook_max_age_secs: u64,
    pub webhook_retry_min_ms: u64,
    pub webhook_retry_max_secs: u64,
    pub webhook_timeout_ms: u64,
    pub webhook_delivery_days: u32,
    pub keep_failed_workspaces: bool,
    pub commit_author: viberglass_domain::CommitAuthor,
    /// Earlier encryption keys that still decrypt.
    pub previous_keys: Vec<EncryptionKey>,
    pub ssm_prefix: String,
    pub auth_disabled: bool,
    pub session_ttl_hours: u32,
    pub trust_forwarded_for: bool,
    /// Continue a request's `traceparent` (see telemetry).
    pub trust_traceparent: bool,
    pub sandbox: viberglass_compute::Sandbox,
    /// The bubblewrap binary; `None`: `bwrap` on the PATH.
    pub bwrap: Option<PathBuf>,
    pub sandbox_paths: Vec<PathBuf>,
    pub host_id: String,
    pub agent_silence_secs: u64,
    pub allow_local_repositories: bool,
    pub docker_allow_host_network: bool,
    pub kubeconfig: Option<PathBuf>,
    pub kubernetes_namespaces: Vec<String>,
    /// The standard AWS settings (`AWS_REGION`, credentials, endpoints), as
    /// this server's environment has them: ECS clankers use them.
    pub aws: viberglass_secrets::AwsSettings,
    /// `AWS_ENDPOINT_URL`: every AWS service's stand-in (the SSM-only one is not the compute targets').
    pub aws_endpoint_url: Option<String>,
    /// `AWS_ENDPOINT_URL_ECS`: an ECS stand-in's address.
    pub aws_ecs_endpoint_url: Option<String>,
    /// `AWS_ENDPOINT_URL_LAMBDA`: a Lambda stand-in's address.
    pub aws_lambda_endpoint_url: Option<String>,
    pub kubernetes_context: Option<String>,
    pub kubernetes_unschedulable_grace_secs: u64,
    /// Host names requests may be addressed to besides the public URL's, localhost and IP literals.
    pub allowed_hosts: Vec<String>,
}

/// This host's id when none is configured: the processes a server can see
/// and signal are those of its PID namespace on this boot of this machine,
/// so the id is the machine id (else the hostname), the PID namespace and
/// the boot. A machine id copied into container images or cloned VMs alone
/// would make two hosts look like one.
fn default_host_id() -> String {
    let read = |path: &str| std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let machine = read("/etc/machine-id")
        .or_else(|| read("/etc/hostname"))
        .or_else(|| read("/proc/sys/kernel/hostname"))
        .unwrap_or_else(|| "localhost".to_owned());
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|l| l.to_string_lossy().chars().filter(char::is_ascii_digit).collect::<String>())
        .unwrap_or_default();
    let boot = read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let machine: String =
        machine.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')).take(32).collect();
    let boot: String = boot.chars().filter(char::is_ascii_hexdigit).take(8).collect();
    format!("{machine}.{namespace}.{boot}")
}

/// A setting was missing or invalid. Printed as one line; exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {origin}={value}: {reason}; set {target} to {expected}")]
    Invalid { origin: String, target: &'static str, value: String, reason: String, expected: String },
    #[error("{env} is not set: {reason}; {fix}")]
    Missing { env: &'static str, reason: String, fix: String },
    #[error("cannot read the config file {path}: {reason}")]
    File { path: String, reason: String },
}

impl ConfigError {
    pub fn exit_code(&self) -> u8 {
        2
    }
}

/// A value given on the command line, which wins over everything else.
pub struct Override {
    pub key: &'static str,
    pub flag: &'static str,
    pub value: String,
}

/// Where one raw value came from, for messages.
enum Origin {
    Default,
    File(String),
    Env(&'static str),
    /// `<ENV>_FILE`, naming the file the value was read from (a Docker or Kubernetes secret).
    EnvFile(&'static str, String),
    Flag(&'static str),
}

impl Origin {
    fn name(&self, setting: &Setting) -> String {
        match self {
            Origin::Default => format!("default {}", setting.key),
            Origin::File(path) => format!("{} in {path}", setting.key),
            Origin::Env(name) => (*name).to_owned(),
            Origin::EnvFile(name, path) => format!("{name}_FILE ({path})"),
            Origin::Flag(flag) => (*flag).to_owned(),
        }
    }
}

struct Raw<'a> {
    setting: &'a Setting,
    value: String,
    origin: Origin,
}

impl Raw<'_> {
    fn invalid(&self, reason: impl Into<String>, expected: &str) -> ConfigError {
        let shown = if self.setting.secret {
            "(value hidden)".to_owned()
        } else if self.setting.key == "database_url" {
            // From a file it may be anything (a password, a key): never shown. Otherwise only with its password out.
            match self.origin {
                Origin::EnvFile(..) => "(value hidden)".to_owned(),
                _ if !self.value.contains("://") => "(value hidden: not a URL)".to_owned(),
                _ => format!("{:?}", redact_url_password(&self.value).chars().take(200).collect::<String>()),
            }
        } else {
            format!("{:?}", self.value.chars().take(200).collect::<String>())
        };
        ConfigError::Invalid {
            origin: self.origin.name(self.setting),
            target: match self.origin {
                Origin::Flag(flag) => flag,
                _ => self.setting.env,
            },
            value: shown,
            reason: reason.into(),
            expected: expected.to_owned(),
        }
    }

    fn is_empty(&self) -> bool {
        self.value.trim().is_empty()
    }
}

/// Hides the password in a URL such as `postgres://user:pw@host/db`.
pub fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}{}:***{}", &url[..scheme_end], &authority[..colon], &rest[at..])
        }
        _ => url.to_owned(),
    }
}

fn toml_to_string(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(toml_to_string).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::File { path: display.clone(), reason: e.to_string() })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| text[..s.start].lines().count().max(1));
        ConfigError::File {
            path: display.clone(),
            reason: match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_owned(),
            },
        }
    })?;
    for key in table.keys() {
        if !SETTINGS.iter().any(|s| s.key == key) {
            return Err(ConfigError::File {
                path: display,
                reason: format!("unknown setting `{key}`; known settings are listed by `viberglass config default`"),
            });
        }
    }
    Ok(table)
}

/// May be given as `<ENV>_FILE`, the path of a file holding the value: the settings a secret store hands over.
pub fn readable_from_file(setting: &Setting) -> bool {
    setting.secret || setting.key == "database_url"
}

/// The values given as `<ENV>_FILE` (Docker and Kubernetes secrets are files), keyed by setting, with their paths.
/// The file's content is the value, without a trailing newline. Giving both `<ENV>` and `<ENV>_FILE` is refused.
fn secret_files(
    env: &impl Fn(&str) -> Option<String>,
) -> Result<std::collections::HashMap<&'static str, (String, String)>, ConfigError> {
    let mut found = std::collections::HashMap::new();
    for setting in SETTINGS.iter().filter(|s| readable_from_file(s)) {
        let variable = format!("{}_FILE", setting.env);
        let Some(path) = env(&variable).filter(|p| !p.trim().is_empty()) else { continue };
        if env(setting.env).is_some() {
            return Err(ConfigError::Invalid {
                origin: variable,
                target: setting.env,
                value: format!("{path:?}"),
                reason: format!("{} is set as well, and only one may be", setting.env),
                expected: "nothing: unset one of the two".into(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: format!("{e} (it is named by {variable}; it must be readable by the server's user)"),
        })?;
        found.insert(setting.key, (path, text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(found)
}

fn parse_number<T: TryFrom<i128> + Into<i128> + Copy + fmt::Display>(
    raw: &Raw,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let expected = format!("a whole number from {min} to {max}");
    let n: i128 = raw.value.trim().parse().map_err(|_| raw.invalid("not a whole number", &expected))?;
    if n < min.into() || n > max.into() {
        return Err(raw.invalid("out of range", &expected));
    }
    T::try_from(n).map_err(|_| raw.invalid("out of range", &expected))
}

fn parse_bool(raw: &Raw) -> Result<bool, ConfigError> {
    match raw.value.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(raw.invalid("not a boolean", "true or false")),
    }
}

fn parse_origin(origin: &str) -> Result<String, String> {
    let origin = origin.trim().trim_end_matches('/');
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| format!("`{origin}` is not an origin: it must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(format!("`{origin}` is not an origin: give scheme, host and port only, without a path"));
    }
    Ok(origin.to_owned())
}

impl Config {
    /// Loads the configuration. `env` looks up an environment variable;
    /// `file` is the optional TOML file; `overrides` are command-line flags.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        let table = file.map(read_file).transpose()?;
        let file_name = file.map(|p| p.display().to_string()).unwrap_or_default();
        let from_files = secret_files(&env)?;
        let raw = |key: &str| -> Raw<'static> {
            let setting = SETTINGS.iter().find(|s| s.key == key).expect("every key read is declared in SETTINGS");
            if let Some(o) = overrides.iter().find(|o| o.key == key) {
                return Raw { setting, value: o.value.clone(), origin: Origin::Flag(o.flag) };
            }
            if let Some(value) = env(setting.env) {
                return Raw { setting, value, origin: Origin::Env(setting.env) };
            }
            if let Some((path, value)) = from_files.get(key) {
                return Raw { setting, value: value.clone(), origin: Origin::EnvFile(setting.env, path.clone()) };
            }
            if let Some(value) = table.as_ref().and_then(|t| t.get(key)) {
                return Raw { setting, value: toml_to_string(value), origin: Origin::File(file_name.clone()) };
            }
            Raw { setting, value: setting.default.to_owned(), origin: Origin::Default }
        };

        let data_dir_raw = raw("data_dir");
        if data_dir_raw.is_empty() {
            return Err(data_dir_raw.invalid("empty", "a directory path, e.g. ./viberglass-data"));
        }
        let data_dir = PathBuf::from(data_dir_raw.value.trim());

        let database_raw = raw("database_url");
        let database = if database_raw.is_empty() {
            DatabaseTarget::Sqlite { path: data_dir.join("viberglass.db") }
        } else {
            let url = database_raw.value.trim();
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                DatabaseTarget::Postgres { url: url.to_owned() }
            } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
                let path = path.split('?').next().unwrap_or_default();
                if path.is_empty() || path == ":memory:" {
                    return Err(
                        database_raw.invalid("an SQLite URL needs a file path", "sqlite://path/to/viberglass.db")
                    );
                }
                DatabaseTarget::Sqlite { path: PathBuf::from(path) }
            } else {
                return Err(database_raw.invalid(
                    "not a PostgreSQL or SQLite URL",
                    "postgres://user:password@host:5432/viberglass (or unset it to use the embedded SQLite database)",
                ));
            }
        };

        let host_raw = raw("host");
        let host: IpAddr = host_raw
            .value
            .trim()
            .parse()
            .map_err(|_| host_raw.invalid("not an IP address", "an IP address such as 127.0.0.1 or 0.0.0.0"))?;
        let port: u16 = parse_number(&raw("port"), 0, 65535)?;

        let public_raw = raw("public_url");
        let public_url = if public_raw.is_empty() {
            None
        } else {
            let url = public_raw.value.trim().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(char::is_whitespace) {
                return Err(public_raw.invalid(
                    "not an http(s) URL",
                    "the URL people reach this server at, e.g. https://viberglass.example.com",
                ));
            }
            Some(url.to_owned())
        };

        let format_raw = raw("log_format");
        let log_format = match format_raw.value.trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(format_raw.invalid("unknown log format", "text or json")),
        };

        let level_raw = raw("log_level");
        let log_level = level_raw.value.trim().to_owned();
        tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|e| {
            level_raw.invalid(e.to_string(), "a level such as info or a directive such as info,viberglass=debug")
        })?;

        let cors_raw = raw("cors_allowed_origins");
        let cors_allowed_origins = cors_raw
            .value
            .split(',')
            .filter(|o| !o.trim().is_empty())
            .map(parse_origin)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| cors_raw.invalid(reason, "a comma-separated list such as https://app.example.com"))?;

        let body_limit_bytes = parse_number::<u32>(&raw("body_limit_bytes"), 1024, 1 << 30)? as usize;

        let key_raw = raw("secrets_encryption_key");
        let encryption_key = if key_raw.is_empty() {
            match database {
                DatabaseTarget::Postgres { .. } => {
                    return Err(ConfigError::Missing {
                        env: "SECRETS_ENCRYPTION_KEY",
                        reason: "with PostgreSQL every server must share one key to read stored secrets".into(),
                        fix: "generate one with `viberglass config gen-key` and set SECRETS_ENCRYPTION_KEY to it on every server".into(),
                    });
                }
                DatabaseTarget::Sqlite { .. } => KeySource::DataDirFile(data_dir.join("secrets.key")),
            }
        } else {
            KeySource::Configured(EncryptionKey::parse(&key_raw.value).map_err(|reason| {
                key_raw.invalid(reason, "64 hex characters, e.g. the output of `viberglass config gen-key`")
            })?)
        };

        let is_postgres = matches!(database, DatabaseTarget::Postgres { .. });
        Ok(Config {
            data_dir,
            database,
            host,
            port,
            public_url,
            log_format,
            log_level,
            cors_allowed_origins,
            body_limit_bytes,
            encryption_key,
            db_connect_attempts: parse_number(&raw("db_connect_attempts"), 1, 100)?,
            db_max_connections: parse_number(&raw("db_max_connections"), 1, 1000)?,
            shutdown_timeout_secs: parse_number(&raw("shutdown_timeout_secs"), 0, 3600)?,
            worker_binary: Some(raw("worker_binary")).filter(|r| !r.is_empty()).map(|r| PathBuf::from(r.value.trim())),
            heartbeat_interval_secs: parse_number(&raw("heartbeat_interval_secs"), 1, 300)?,
            heartbeat_grace_secs: parse_number(&raw("heartbeat_grace_secs"), 2, 3600)?,
            reaper_interval_ms: parse_number(&raw("reaper_interval_ms"), 50, 600_000)?,
            dispatch_interval_ms: parse_number(&raw("dispatch_interval_ms"), 10, 600_000)?,
            webhook_payload_days: parse_number(&raw("webhook_payload_days"), 1, 3650)?,
            webhook_allow_private: parse_bool(&raw("webhook_allow_private"))?,
            webhook_max_age_secs: parse_number(&raw("webhook_max_age_secs"), 1, 30 * 86_400)?,
            webhook_retry_min_ms: parse_number(&raw("webhook_retry_min_ms"), 10, 3_600_000)?,
            webhook_retry_max_secs: parse_number(&raw("webhook_retry_max_secs"), 1, 86_400)?,
            webhook_timeout_ms: parse_number(&raw("webhook_timeout_ms"), 100, 60_000)?,
            webhook_delivery_days: parse_number(&raw("webhook_delivery_days"), 1, 3650)?,
            keep_failed_workspaces: parse_bool(&raw("keep_failed_workspaces"))?,
            previous_keys: {
                let raw = raw("secrets_previous_keys");
                raw.value
                    .split(',')
                    .filter(|k| !k.trim().is_empty())
                    .map(EncryptionKey::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| raw.invalid(reason, "comma-separated keys of 64 hex characters"))?
            },
            ssm_prefix: {
                let raw = raw("ssm_prefix");
                let prefix = raw.value.trim().trim_end_matches('/').to_owned();
                viberglass_domain::secret::parse_ssm_path(&format!("{prefix}/X")).map_err(|_| {
                    raw.invalid("not an SSM path", "a path such as /viberglass or /teams/app/viberglass")
                })?;
                prefix
            },
            auth_disabled: {
                let disabled = parse_bool(&raw("auth_disabled"))?;
                let allow_postgres = parse_bool(&raw("auth_disabled_allow_postgres"))?;
                if disabled && !allow_postgres && is_postgres {
                    return Err(ConfigError::Invalid {
                        origin: "AUTH_DISABLED".into(),
                        target: "AUTH_DISABLED",
                        value: "true".into(),
                        reason: "signing in is off while DATABASE_URL points at PostgreSQL, which usually means a shared deployment".into(),
                        expected: "false (or confirm with AUTH_DISABLED_ALLOW_POSTGRES=true for a private database)".into(),
                    });
                }
                disabled
            },
            session_ttl_hours: parse_number(&raw("session_ttl_hours"), 1, 24 * 365)?,
            trust_forwarded_for: parse_bool(&raw("trust_forwarded_for"))?,
            trust_traceparent: parse_bool(&raw("trust_traceparent"))?,
            commit_author: {
                let raw = raw("commit_author");
                viberglass_domain::CommitAuthor::parse(&raw.value).map_err(|reason| {
                    raw.invalid(reason, "a name and an address, e.g. `Viberglass <bot@example.com>`")
                })?
            },
            sandbox: {
                let raw = raw("sandbox");
                match raw.value.trim() {
                    "auto" => viberglass_compute::Sandbox::Auto,
                    "bubblewrap" => viberglass_compute::Sandbox::Bubblewrap,
                    "none" => viberglass_compute::Sandbox::None,
                    _ => return Err(raw.invalid("unknown sandbox", "auto, bubblewrap or none")),
                }
            },
            bwrap: Some(raw("bwrap")).filter(|r| !r.is_empty()).map(|r| PathBuf::from(r.value.trim())),
            sandbox_paths: std::env::split_paths(&raw("sandbox_paths").value)
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
            host_id: {
                let raw = raw("host_id");
                let id = raw.value.trim();
                if id.is_empty() {
                    default_host_id()
                } else if id.len() > 100
                    || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(raw.invalid("not a host id", "letters, digits, `-`, `_` and `.`, at most 100"));
                } else {
                    id.to_owned()
                }
            },
            agent_silence_secs: parse_number(&raw("agent_silence_secs"), 5, 86_400)?,
            allow_local_repositories: parse_bool(&raw("allow_local_repositories"))?,
            docker_allow_host_network: parse_bool(&raw("docker_allow_host_network"))?,
            kubeconfig: Some(raw("kubeconfig"))
                .filter(|r| !r.value.trim().is_empty())
                .map(|r| PathBuf::from(r.value.trim())),
            aws: viberglass_secrets::AwsSettings::from_env(&env),
            aws_endpoint_url: env("AWS_ENDPOINT_URL").filter(|v| !v.trim().is_empty()),
            aws_ecs_endpoint_url: env("AWS_ENDPOINT_URL_ECS").filter(|v| !v.trim().is_empty()),
            aws_lambda_endpoint_url: env("AWS_ENDPOINT_URL_LAMBDA").filter(|v| !v.trim().is_empty()),
            kubernetes_namespaces: {
                let raw = raw("kubernetes_namespaces");
                let mut namespaces = Vec::new();
                for namespace in raw.value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let valid = namespace.len() <= 63
                        && namespace.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !namespace.starts_with('-')
                        && !namespace.ends_with('-');
                    if !valid {
                        return Err(raw.invalid(
                            format!("`{namespace}` is not a namespace name"),
                            "namespace names (lowercase letters, digits, `-`), comma-separated, e.g. viberglass,ci-workers",
                        ));
                    }
                    namespaces.push(namespace.to_owned());
                }
                namespaces
            },
            kubernetes_context: Some(raw("kubernetes_context").value.trim().to_owned()).filter(|c| !c.is_empty()),
            kubernetes_unschedulable_grace_secs: parse_number(&raw("kubernetes_unschedulable_grace_secs"), 0, 86_400)?,
            allowed_hosts: {
                let raw = raw("allowed_hosts");
                let mut hosts = Vec::new();
                for host in raw.value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                    if host.contains(['/', ':', ' ', '@']) {
                        return Err(raw.invalid(
                            format!("`{host}` is not a host name"),
                            "host names without scheme or port, e.g. viberglass.internal,ci.example.com",
                        ));
                    }
                    hosts.push(host.to_ascii_lowercase());
                }
                hosts
            },
        })
    }

    /// Loads from the process environment.
    pub fn from_env(file: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        Config::load(file, |name| std::env::var(name).ok(), overrides)
    }

    /// The default configuration file, annotated: what `viberglass config default` prints.
    pub fn default_file() -> String {
        let mut out = String::from(
            "# Viberglass configuration.\n\
             # Pass it with `viberglass serve --config FILE` (or VIBERGLASS_CONFIG=FILE).\n\
             # Every setting can also be set by the environment variable named above it,\n\
             # which wins over this file; command-line flags win over both.\n",
        );
        for s in SETTINGS {
            out.push('\n');
            for line in wrap(s.doc, 100) {
                out.push_str(&format!("# {line}\n"));
            }
            out.push_str(&format!("# Environment: {}\n", s.env));
            if readable_from_file(s) {
                out.push_str(&format!("# Or a file holding it: {}_FILE\n", s.env));
            }
            let bare = s.default.parse::<i64>().is_ok() || s.default == "true" || s.default == "false";
            let value = match s.key {
                _ if bare => s.default.to_owned(),
                "cors_allowed_origins" => "[]".to_owned(),
                _ => format!("{:?}", s.default),
            };

            if s.default.is_empty() || s.secret {
                out.push_str(&format!("# {} = {}\n", s.key, value));
            } else {
                out.push_str(&format!("{} = {}\n", s.key, value));
            }
        }
        out
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::load(None, |name| map.get(name).cloned(), &[])
    }

    #[test]
    fn no_settings_means_embedded_sqlite_on_port_8888() {
        let config = load(&[]).unwrap();
        assert_eq!(config.port, 8888);
        assert_eq!(config.database, DatabaseTarget::Sqlite { path: PathBuf::from("./viberglass-data/viberglass.db") });
        assert!(matches!(config.encryption_key, KeySource::DataDirFile(ref p) if p.ends_with("secrets.key")));
    }

    #[test]
    fn postgres_without_a_key_names_the_variable_and_the_fix() {
        let err = load(&[("DATABASE_URL", "postgres://u@db:5432/vg")]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("SECRETS_ENCRYPTION_KEY is not set"), "{text}");
        assert!(text.contains("viberglass config gen-key"), "{text}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn an_invalid_value_is_named_with_what_to_set() {
        let err = load(&[("VIBERGLASS_PORT", "eighty")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid VIBERGLASS_PORT=\"eighty\": not a whole number; set VIBERGLASS_PORT to a whole number from 0 to 65535"
        );
    }

    #[test]
    fn a_bad_database_url_hides_its_password() {
        let err = load(&[("DATABASE_URL", "mysql://root:hunter2@db/x")]).unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL=\"mysql://root:***@db/x\""), "{err}");
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "postgres://vg:pw@db:5432/vg\n").unwrap();
        let (key_path, url_path) = (key.display().to_string(), url.display().to_string());
        let config =
            load(&[("SECRETS_ENCRYPTION_KEY_FILE", key_path.as_str()), ("DATABASE_URL_FILE", url_path.as_str())])
                .unwrap();
        assert!(matches!(config.encryption_key, KeySource::Configured(_)));
        assert!(
            matches!(config.database, DatabaseTarget::Postgres { ref url } if url == "postgres://vg:pw@db:5432/vg")
        );

        let both = load(&[("SECRETS_ENCRYPTION_KEY_FILE", key_path.as_str()), ("SECRETS_ENCRYPTION_KEY", "x")])
            .unwrap_err()
            .to_string();
        assert!(both.contains("SECRETS_ENCRYPTION_KEY is set as well"), "{both}");
        let missing = load(&[("SECRETS_ENCRYPTION_KEY_FILE", "/nonexistent/key")]).unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/key") && missing.contains("SECRETS_ENCRYPTION_KEY_FILE"), "{missing}");
        std::fs::write(&key, "not a key\n").unwrap();
        let bad = load(&[("SECRETS_ENCRYPTION_KEY_FILE", key_path.as_str())]).unwrap_err().to_string();
        assert!(bad.contains("SECRETS_ENCRYPTION_KEY_FILE (") && bad.contains("(value hidden)"), "{bad}");
        assert!(!bad.contains("not a key"), "the value is not echoed: {bad}");
    }

    #[test]
    fn a_bad_key_never_echoes_the_key() {
        let err = load(&[("SECRETS_ENCRYPTION_KEY", "tooshort-secret")]).unwrap_err().to_string();
        assert!(err.contains("(value hidden)") && !err.contains("tooshort"), "{err}");
    }

    #[test]
    fn keys_parse_from_hex_and_base64() {
        let key = EncryptionKey::generate();
        assert_eq!(EncryptionKey::parse(&key.to_hex()).unwrap(), key);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.bytes());
        assert_eq!(EncryptionKey::parse(&b64).unwrap(), key);
        assert_eq!(format!("{key:?}"), "EncryptionKey(***)");
    }

    #[test]
    fn environment_wins_over_the_file_and_flags_win_over_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vg.toml");
        std::fs::write(&file, "port = 9000\nhost = \"0.0.0.0\"\nlog_format = \"json\"\n").unwrap();
        let env = |name: &str| (name == "VIBERGLASS_PORT").then(|| "9100".to_owned());
        let config = Config::load(Some(&file), env, &[]).unwrap();
        assert_eq!(
            (config.port, config.host.to_string(), config.log_format),
            (9100, "0.0.0.0".into(), LogFormat::Json)
        );
        let flag = Override { key: "port", flag: "--port", value: "9200".into() };
        assert_eq!(Config::load(Some(&file), env, &[flag]).unwrap().port, 9200);
    }

    #[test]
    fn a_bad_file_value_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vg.toml");
        std::fs::write(&file, "log_format = \"xml\"\n").unwrap();
        let err = Config::load(Some(&file), |_| None, &[]).unwrap_err().to_string();
        assert!(err.starts_with(&format!("invalid log_format in {}=\"xml\"", file.display())), "{err}");
        assert!(err.ends_with("set LOG_FORMAT to text or json"), "{err}");
    }

    #[test]
    fn unknown_file_keys_and_syntax_errors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vg.toml");
        std::fs::write(&file, "prot = 1\n").unwrap();
        let err = Config::load(Some(&file), |_| None, &[]).unwrap_err().to_string();
        assert!(err.contains("unknown setting `prot`"), "{err}");
        std::fs::write(&file, "port = \n").unwrap();
        let err = Config::load(Some(&file), |_| None, &[]).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn the_default_file_loads_and_gives_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vg.toml");
        std::fs::write(&file, Config::default_file()).unwrap();
        let config = Config::load(Some(&file), |_| None, &[]).unwrap();
        assert_eq!(config.port, 8888);
        assert_eq!(config.body_limit_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn cors_origins_must_be_origins() {
        let config = load(&[("VIBERGLASS_CORS_ORIGINS", "https://a.example.com, http://localhost:3000/")]).unwrap();
        assert_eq!(config.cors_allowed_origins, ["https://a.example.com", "http://localhost:3000"]);
        assert!(load(&[("VIBERGLASS_CORS_ORIGINS", "https://a.example.com/app")]).is_err());
    }
}
