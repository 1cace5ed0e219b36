//! `viberglass doctor` and `GET /api/v1/doctor`: every check of what a broken
//! installation looks like, each broken thing a finding with its layer, cause
//! and fix, in the order the troubleshooting guide walks them. The checks only
//! read: running the doctor changes nothing (Test connection and secret reads
//! call out, but write nothing).

use std::time::Duration;

use viberglass_domain::doctor::{DoctorCheck, DoctorLayer, DoctorReport, Finding, FindingSeverity};
use viberglass_domain::{ClankerStatus, PageRequest, SecretBackend};

use crate::AppState;

/// How long one outside call (a secret backend, a forge, Slack) may take before it counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many findings of one kind: a report, not a dump.
const LIMIT: u32 = 50;

/// Collects the checks and findings as they are made.
struct Doctor {
    checks: Vec<DoctorCheck>,
    findings: Vec<Finding>,
}

impl Doctor {
    /// Records check `name` over `checked` things with the findings it made.
    fn check(&mut self, layer: DoctorLayer, name: &str, checked: usize, findings: Vec<Finding>) {
        self.checks.push(DoctorCheck {
            layer,
            name: name.to_owned(),
            checked: u32::try_from(checked).unwrap_or(u32::MAX),
            findings: u32::try_from(findings.len()).unwrap_or(u32::MAX),
        });
        self.findings.extend(findings);
    }
}

fn finding(
    severity: FindingSeverity,
    layer: DoctorLayer,
    subject: impl Into<String>,
    cause: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding { severity, layer, subject: subject.into(), cause: cause.into(), fix: fix.into() }
}

use FindingSeverity::{Error, Warning};

/// Runs every check. One run at a time per process: callers arriving
/// meanwhile wait for it, so parallel requests cannot multiply the calls to
/// secret backends and forges.
pub async fn run(state: &AppState) -> DoctorReport {
    static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = RUNNING.lock().await;
    let mut doctor = Doctor { checks: Vec::new(), findings: Vec::new() };
    configuration(state, &mut doctor);
    // Without the database nothing else can be read: say so once.
    if !database(state, &mut doctor).await {
        return DoctorReport::new(doctor.checks, doctor.findings, viberglass_store::now());
    }
    // Read once: the secrets check reads each, the clankers check looks up the names.
    let secrets_list = state.store.list_secrets().await;
    secrets(state, &secrets_list, &mut doctor).await;
    scm(state, &mut doctor).await;
    clankers(state, &secrets_list, &mut doctor).await;
    webhooks(state, &mut doctor).await;
    slack(state, &mut doctor).await;
    overrides(state, &mut doctor).await;
    stuck_jobs(state, &mut doctor).await;
    DoctorReport::new(doctor.checks, doctor.findings, viberglass_store::now())
}

fn configuration(state: &AppState, doctor: &mut Doctor) {
    let config = &state.config;
    let mut findings = Vec::new();
    if config.auth_disabled {
        findings.push(finding(
            Error,
            DoctorLayer::Configuration,
            "AUTH_DISABLED",
            "authentication is off: every request acts as an administrator without signing in",
            "unset AUTH_DISABLED and restart the server (it is for local development only)",
        ));
    }
    if config.public_url.is_none() && !config.host.is_loopback() {
        findings.push(finding(
            Warning,
            DoctorLayer::Configuration,
            "VIBERGLASS_PUBLIC_URL",
            format!(
                "the server listens on {} but has no public URL: links in notifications and the address remote workers \
                 call back on are guessed from the listener",
                config.host
            ),
            "set VIBERGLASS_PUBLIC_URL to the address people and workers reach this server at, then restart it",
        ));
    }
    if let Some(public) = config.public_url.as_deref() {
        let secure = public.starts_with("https://");
        for origin in config.cors_allowed_origins.iter().filter(|o| secure && o.starts_with("http://")) {
            findings.push(finding(
                Warning,
                DoctorLayer::Configuration,
                format!("CORS origin {origin}"),
                format!("the public URL {public} is https, but the allowed origin {origin} is plain http: a browser on that page blocks its calls to this server as mixed content"),
                "serve that frontend over https and list its https origin in VIBERGLASS_CORS_ORIGINS",
            ));
        }
    }
    let checked = 2 + config.cors_allowed_origins.len();
    doctor.check(DoctorLayer::Configuration, "settings a running server depends on", checked, findings);
}

/// Whether the database answered.
async fn database(state: &AppState, doctor: &mut Doctor) -> bool {
    let target = state.store.target().describe();
    let status = tokio::time::timeout(CALL_TIMEOUT, state.store.schema_status()).await;
    let (reachable, findings) = match status {
        Ok(Ok(status)) if status.applied > status.latest => (
            true,
            vec![finding(
                Error,
                DoctorLayer::Database,
                format!("database {target}"),
                format!(
                    "the schema is at version {} but this server knows only {}: a newer viberglass migrated it",
                    status.applied, status.latest
                ),
                "upgrade this server to the version that migrated the database",
            )],
        ),
        Ok(Ok(status)) if !status.is_current() => (
            true,
            vec![finding(
                Error,
                DoctorLayer::Database,
                format!("database {target}"),
                format!("the schema is at version {} but this server needs {}", status.applied, status.latest),
                "run `viberglass migrate` (the server migrates at start too: restart it and read its log if that failed)",
            )],
        ),
        Ok(Ok(_)) => (true, Vec::new()),
        Ok(Err(err)) => (
            false,
            vec![finding(
                Error,
                DoctorLayer::Database,
                format!("database {target}"),
                format!("the database does not answer: {err}"),
                "check that it runs and that DATABASE_URL names it (host, port, user, password), then retry",
            )],
        ),
        Err(_) => (
            false,
            vec![finding(
                Error,
                DoctorLayer::Database,
                format!("database {target}"),
                format!("the database did not answer within {} s", CALL_TIMEOUT.as_secs()),
                "check the database's load and the network between it and this server, then retry",
            )],
        ),
    };
    doctor.check(DoctorLayer::Database, "reachable, migrations current", 1, findings);
    reachable
}

type Secrets = Result<Vec<viberglass_domain::Secret>, viberglass_store::StoreError>;

async fn secrets(state: &AppState, secrets: &Secrets, doctor: &mut Doctor) {
    let secrets = match secrets {
        Ok(secrets) => secrets,
        Err(err) => return unreadable(doctor, DoctorLayer::Secrets, "secrets", err),
    };
    let mut findings = Vec::new();
    let mut sealed = 0;
    let mut key_failures = Vec::new();
    // A few at a time: each may be a call to AWS SSM.
    let mut reads = Vec::with_capacity(secrets.len());
    for chunk in secrets.chunks(4) {
        let calls = chunk
            .iter()
            .map(|secret| tokio::time::timeout(CALL_TIMEOUT, state.vault.read(&state.store, &state.env, secret)));
        reads.extend(futures::future::join_all(calls).await);
    }
    for (secret, read) in secrets.iter().zip(reads) {
        let why = match read {
            Ok(Ok(_)) => {
                sealed += usize::from(secret.backend == SecretBackend::Database);
                continue;
            }
            Ok(Err(why)) => why,
            Err(_) => format!("its backend did not answer within {} s", CALL_TIMEOUT.as_secs()),
        };
        let subject = format!("secret {}", secret.name);
        match secret.backend {
            SecretBackend::Env => findings.push(finding(
                Error,
                DoctorLayer::Secrets,
                subject,
                format!("it cannot be read: {why}"),
                "set the variable in the server's environment (not the worker's), then restart the server",
            )),
            SecretBackend::Database => {
                sealed += 1;
                let fix = if why.contains("no stored value") {
                    "set its value on the Secrets page (or PATCH the secret with a `value`)"
                } else {
                    "configure the key it was sealed with (SECRETS_ENCRYPTION_KEY, or SECRETS_PREVIOUS_KEYS during a \
                     rotation), or set its value again"
                };
                key_failures.push(finding(
                    Error,
                    DoctorLayer::Encryption,
                    subject,
                    format!("its stored value does not open: {why}"),
                    fix,
                ));
            }
            SecretBackend::Ssm => findings.push(finding(
                Error,
                DoctorLayer::Secrets,
                subject,
                format!("AWS SSM did not give its value: {why}"),
                "check that the parameter exists and that the server's AWS credentials (region, role) may read and \
                 decrypt it",
            )),
        }
    }
    doctor.check(DoctorLayer::Encryption, "the encryption key opens every stored secret", sealed, key_failures);
    doctor.check(DoctorLayer::Secrets, "every secret resolves from its backend", secrets.len(), findings);
}

async fn scm(state: &AppState, doctor: &mut Doctor) {
    let integrations = match state.store.list_integrations().await {
        Ok(integrations) => integrations,
        Err(err) => return unreadable(doctor, DoctorLayer::Scm, "SCM integrations", &err),
    };
    let mut findings = Vec::new();
    for integration in &integrations {
        let subject = format!("integration {}", integration.name);
        let Some(secret) = &integration.credential_secret else {
            findings.push(finding(
                Warning,
                DoctorLayer::Scm,
                subject,
                "it has no credential: clones of private repositories and pull requests through it fail",
                "set its credential secret on the Integrations page to a secret holding a token",
            ));
            continue;
        };
        let token = match resolve(state, secret, &subject).await {
            Ok(token) => token,
            Err(why) => {
                findings.push(finding(
                    Error,
                    DoctorLayer::Secrets,
                    subject,
                    why,
                    "fix the secret (see its own finding), then run Test connection on the integration",
                ));
                continue;
            }
        };
        let api_url = integration.api_url();
        let Some(forge) = viberglass_scm::connect(integration.kind, &api_url, &token) else { continue };
        match tokio::time::timeout(CALL_TIMEOUT, viberglass_scm::check_access(&forge, &api_url, None)).await {
            Ok(report) if report.ok => {}
            Ok(report) => findings.push(finding(
                Error,
                DoctorLayer::Scm,
                subject,
                format!("Test connection against {api_url} failed: {}", clip(&report.problems.join("; "), 600)),
                "give the token the access the problem names (or a new token), then run Test connection again",
            )),
            Err(_) => findings.push(finding(
                Error,
                DoctorLayer::Scm,
                subject,
                format!("{api_url} did not answer within {} s", CALL_TIMEOUT.as_secs()),
                "check the integration's base URL and that this server reaches it",
            )),
        }
    }
    doctor.check(DoctorLayer::Scm, "every SCM integration passes Test connection", integrations.len(), findings);
}

async fn clankers(state: &AppState, secrets: &Secrets, doctor: &mut Doctor) {
    let clankers = match state.store.list_clankers(PageRequest { limit: 200, after: None }).await {
        Ok(page) => page.items,
        Err(err) => return unreadable(doctor, DoctorLayer::Compute, "clankers", &err),
    };
    let known: std::collections::HashSet<&str> = match secrets {
        Ok(secrets) => secrets.iter().map(|s| s.name.as_str()).collect(),
        Err(err) => return unreadable(doctor, DoctorLayer::Compute, "secrets", err),
    };
    let mut findings = Vec::new();
    for clanker in &clankers {
        let subject = format!("clanker {}", clanker.name);
        if clanker.status == ClankerStatus::Failed {
            findings.push(finding(
                Error,
                DoctorLayer::Compute,
                subject.clone(),
                format!(
                    "it did not start on {}: {}",
                    clanker.compute,
                    clip(clanker.status_message.as_deref().unwrap_or("no reason was recorded"), 600)
                ),
                "fix what the message names on the compute side (image, permissions, network, CPU and memory), \
                 then press Start on the clanker's page",
            ));
        }
        for missing in clanker.secrets.iter().filter(|name| !known.contains(name.as_str())) {
            findings.push(finding(
                Error,
                DoctorLayer::Secrets,
                subject.clone(),
                format!("it names the secret {missing}, which does not exist: its jobs fail before the agent starts"),
                format!("declare {missing} on the Secrets page, or remove it from the clanker"),
            ));
        }
    }
    findings.extend(cut(DoctorLayer::Compute, "clankers", clankers.len(), 200));
    doctor.check(DoctorLayer::Compute, "every clanker started, with the secrets it names", clankers.len(), findings);
}

async fn webhooks(state: &AppState, doctor: &mut Doctor) {
    let troubled = match state.store.troubled_subscriptions(LIMIT).await {
        Ok(troubled) => troubled,
        Err(err) => return unreadable(doctor, DoctorLayer::Webhooks, "webhook subscriptions", &err),
    };
    let mut findings = Vec::new();
    for (subscription, last_error) in &troubled {
        // The destination's origin only: a path or query may carry a token.
        let origin = subscription.url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        let subject = format!("webhook subscription {} ({origin})", subscription.id);
        let last = last_error.as_deref().map(|e| format!(" (last error: {})", clip(e, 300))).unwrap_or_default();
        if let Some(reason) = subscription.disabled_reason.as_deref().filter(|_| !subscription.active) {
            findings.push(finding(
                Error,
                DoctorLayer::Webhooks,
                subject,
                format!("it was turned off: {reason}{last}; nothing is sent to it"),
                "fix the destination, then turn the subscription on again on its page (its deliveries are kept)",
            ));
        } else if let Some(since) = subscription.failing_since {
            findings.push(finding(
                Warning,
                DoctorLayer::Webhooks,
                subject,
                format!("its deliveries have been failing since {since}{last}"),
                "read the failed attempts on the subscription's page: fix the destination (reachable, answering 2xx, \
                 checking the signature with the current secret); failed deliveries are retried",
            ));
        }
    }
    findings.extend(cut(DoctorLayer::Webhooks, "failing webhook subscriptions", troubled.len(), LIMIT));
    doctor.check(DoctorLayer::Webhooks, "outbound webhook subscriptions deliver", troubled.len(), findings);
}

async fn slack(state: &AppState, doctor: &mut Doctor) {
    let settings = match state.store.get_slack_settings().await {
        Ok(settings) => settings,
        Err(err) => return unreadable(doctor, DoctorLayer::Slack, "Slack settings", &err),
    };
    let Some(settings) = settings else {
        return doctor.check(DoctorLayer::Slack, "the Slack app's connection (not set up)", 0, Vec::new());
    };
    let mut findings = Vec::new();
    for secret in [&settings.signing_secret, &settings.bot_token_secret] {
        if let Err(why) = resolve(state, secret, "the Slack app").await {
            findings.push(finding(
                Error,
                DoctorLayer::Slack,
                format!("Slack secret {secret}"),
                why,
                "fix the secret, then press Test on the Slack page",
            ));
        }
    }
    if let Some(error) = settings.test_error.as_deref() {
        findings.push(finding(
            Error,
            DoctorLayer::Slack,
            "Slack app",
            format!("its last test failed: {}", clip(error, 300)),
            "fix what the message names (the bot token, the app's scopes), then press Test on the Slack page; threads \
             mirror again from then on",
        ));
    }
    doctor.check(DoctorLayer::Slack, "the Slack app's connection", 1, findings);
}

async fn overrides(state: &AppState, doctor: &mut Doctor) {
    let tickets = match state.store.tickets_with_override(LIMIT).await {
        Ok(tickets) => tickets,
        Err(err) => return unreadable(doctor, DoctorLayer::Workflow, "tickets", &err),
    };
    let mut findings: Vec<Finding> = tickets
        .iter()
        .map(|ticket| {
            finding(
                Warning,
                DoctorLayer::Workflow,
                format!("ticket {} ({})", ticket.title, ticket.id),
                format!(
                    "its workflow override is still in place ({}): its phases run without waiting for approval",
                    ticket.workflow_override_reason.as_deref().unwrap_or("no reason given")
                ),
                "clear the override on the ticket's page once it has served its purpose",
            )
        })
        .collect();
    findings.extend(cut(DoctorLayer::Workflow, "tickets with an override", tickets.len(), LIMIT));
    doctor.check(DoctorLayer::Workflow, "no workflow override left in place", tickets.len(), findings);
}

async fn stuck_jobs(state: &AppState, doctor: &mut Doctor) {
    // The reaper ends a job whose worker stays silent past its grace (the
    // one its spec froze); one dispatching three times as long means no
    // server's reaper looks at it.
    const FLOOR_SECS: u64 = 120;
    let now = viberglass_store::now();
    let before = now - time::Duration::seconds(FLOOR_SECS as i64);
    let candidates = match state.store.jobs_dispatching_before(before, LIMIT).await {
        Ok(jobs) => jobs,
        Err(err) => return unreadable(doctor, DoctorLayer::Jobs, "jobs", &err),
    };
    let mut findings = Vec::new();
    for job in &candidates {
        let grace = match state.store.job_limits(job.id).await {
            Ok(Some(limits)) => limits.heartbeat_grace_secs,
            _ => state.config.heartbeat_grace_secs,
        };
        let allowed = grace.saturating_mul(3).max(FLOOR_SECS);
        let Some(since) = job.dispatched_at else { continue };
        if (now - since).whole_seconds() < i64::try_from(allowed).unwrap_or(i64::MAX) {
            continue;
        }
        findings.push(finding(
            Error,
            DoctorLayer::Jobs,
            format!("job {}", job.id),
            format!(
                "it has been dispatching since {since} ({}) and its worker never called in, past the {allowed} s any \
                 reaper allows it",
                job.compute_ref.as_deref().unwrap_or("no worker recorded")
            ),
            "check that a viberglass server is running (its reaper ends such jobs) and the clanker's compute, then \
             cancel the job and re-run it",
        ));
    }
    findings.extend(cut(DoctorLayer::Jobs, "jobs dispatching", candidates.len(), LIMIT));
    doctor.check(DoctorLayer::Jobs, "no job stuck in dispatching", candidates.len(), findings);
}

/// `vault::resolve` within [`CALL_TIMEOUT`].
async fn resolve(state: &AppState, secret: &str, whose: &str) -> Result<String, String> {
    match tokio::time::timeout(CALL_TIMEOUT, crate::vault::resolve(state, secret, whose)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(failure)) => Err(failure.message),
        Err(_) => Err(format!(
            "the secret {secret} of {whose}: its backend did not answer within {} s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

/// At most `max` characters of text from outside (an error a destination or a provider sent).
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// A finding saying a list was cut at `limit`, when it was.
fn cut(layer: DoctorLayer, what: &str, found: usize, limit: u32) -> Option<Finding> {
    (found >= limit as usize).then(|| {
        finding(
            Warning,
            layer,
            what,
            format!("only the first {limit} {what} were checked"),
            "fix the findings shown, then run the doctor again for the rest",
        )
    })
}

/// A check that could not read what it checks.
fn unreadable(doctor: &mut Doctor, layer: DoctorLayer, what: &str, err: &viberglass_store::StoreError) {
    doctor.check(
        layer,
        &format!("reading the {what}"),
        0,
        vec![finding(
            Error,
            DoctorLayer::Database,
            what,
            format!("the {what} could not be read: {err}"),
            "check the database (its own finding says more), then run the doctor again",
        )],
    );
}
