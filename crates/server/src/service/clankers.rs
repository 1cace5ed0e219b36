//! Clankers: saved worker configurations, where they may run, and Start.

use viberglass_compute::ComputeConfig;
use viberglass_domain::{Clanker, ClankerId, ClankerInput, ClankerStatus, NewClanker, ProjectSlug, ValidationErrors};
use viberglass_store::{Store, StoreError};

use super::{ServiceError, ServiceResult};
use crate::AppState;
use crate::identity::{Caller, audit};

/// The clanker an id or a slug names.
pub async fn find_clanker(store: &Store, key: &str) -> ServiceResult<Clanker> {
    let found = match key.parse::<ClankerId>() {
        Ok(id) => store.get_clanker(id).await,
        Err(_) => match ProjectSlug::parse(key) {
            Ok(slug) => store.get_clanker_by_slug(&slug).await,
            Err(_) => return Err(ServiceError::NotFound(format!("there is no clanker `{key}`: give its id or slug"))),
        },
    };
    match found {
        Err(StoreError::NotFound { .. }) => {
            Err(ServiceError::NotFound(format!("there is no clanker `{key}`: give its id or slug")))
        }
        other => Ok(other?),
    }
}

/// Checks what only the server can check about a parsed clanker: its
/// secrets exist, its projects exist (resolved into ids), and its compute
/// settings parse for its target.
async fn complete(store: &Store, new: &mut NewClanker) -> ServiceResult<()> {
    let mut errors = ValidationErrors::new();
    // What it names that does not exist: a 422 when nothing else is wrong.
    let mut missing = ValidationErrors::new();
    let slack = store.get_slack_settings().await?;
    for (i, name) in new.secrets.iter().enumerate() {
        match store.get_secret_by_name(name).await {
            // A worker holding the Slack app's secrets could forge requests as anyone in the workspace.
            Ok(_) if slack.as_ref().is_some_and(|s| s.signing_secret == *name || s.bot_token_secret == *name) => errors
                .add(
                    &format!("secrets[{i}]"),
                    format!(
                        "{name} is one of the Slack app's secrets: those never go to a worker (an agent could forge \
                         Slack requests with them)"
                    ),
                ),
            Ok(_) => {}
            Err(StoreError::NotFound { .. }) => missing.add(
                &format!("secrets[{i}]"),
                format!("there is no secret named {name}: declare it first (POST /api/v1/secrets)"),
            ),
            Err(e) => return Err(e.into()),
        }
    }
    new.projects.clear();
    for (i, key) in new.project_keys.iter().enumerate() {
        match super::projects::find_project_id(store, key).await? {
            Some(id) if !new.projects.contains(&id) => new.projects.push(id),
            Some(_) => {}
            None => missing.add(&format!("projects[{i}]"), format!("there is no project `{key}`: give its id or slug")),
        }
    }
    if let Err(message) = ComputeConfig::parse(new.compute, &new.compute_config) {
        errors.add("compute_config", message);
    }
    // Lambda stops every invocation at 15 minutes: a project that allows longer runs needs another target.
    if new.compute == viberglass_domain::ComputeKind::Lambda {
        for id in &new.projects {
            let project = store.get_project(*id).await?;
            if project.max_execution_secs > viberglass_compute::LAMBDA_MAX_SECS {
                errors.add(
                    "compute",
                    format!(
                        "project {} allows runs of {} s, above Lambda's {} s ceiling: run this clanker on ECS \
                         (\"compute\": \"ecs\"), or lower that project's max_execution_secs",
                        project.slug.as_str(),
                        project.max_execution_secs,
                        viberglass_compute::LAMBDA_MAX_SECS
                    ),
                );
            }
        }
    }
    if errors.is_empty() && !missing.is_empty() {
        return Err(ServiceError::Unmet { code: "unknown_reference", errors: missing });
    }
    for field in missing.fields {
        errors.add(&field.field, field.message);
    }
    errors.into_result(())?;
    Ok(())
}

pub async fn create_clanker(state: &AppState, caller: &Caller, input: ClankerInput) -> ServiceResult<Clanker> {
    let mut new = NewClanker::parse(input)?;
    complete(&state.store, &mut new).await?;
    let clanker = state.store.create_clanker(new).await?;
    tracing::info!(clanker_id = %clanker.id, slug = clanker.slug.as_str(), "clanker created");
    audit(
        state,
        Some(caller),
        "clanker_created",
        "clanker",
        Some(clanker.id.to_string()),
        None,
        serde_json::json!({"slug": clanker.slug.as_str(), "agent": clanker.agent, "compute": clanker.compute,
            "shared": clanker.shared, "projects": clanker.projects}),
    )
    .await;
    Ok(clanker)
}

/// Applies a change to a clanker as it is now: read, lay the input over
/// it, write it back only if nobody changed it meanwhile (else read again).
pub async fn update_clanker(
    state: &AppState,
    caller: &Caller,
    key: &str,
    input: ClankerInput,
) -> ServiceResult<Clanker> {
    // A change sends half of a pair (an agent without its settings, compute settings without the target): what is
    // wrong with it then comes from what the clanker already is, so it is a 422 naming the fields, not a 400.
    let half_pair = |field: &str| match field {
        "agent" | "agent_settings" => input.agent.is_none() || input.agent_settings.is_none(),
        "compute" | "compute_config" => input.compute.is_none() || input.compute_config.is_none(),
        _ => false,
    };
    let against_current = |e: ServiceError| match e {
        ServiceError::Invalid(errors) => ServiceError::unless_state(errors, half_pair),
        other => other,
    };
    for _ in 0..5 {
        let current = find_clanker(&state.store, key).await?;
        let mut new = NewClanker::parse(input.clone().over(&current)).map_err(|e| against_current(e.into()))?;
        complete(&state.store, &mut new).await.map_err(against_current)?;
        match state.store.update_clanker(current.id, current.updated_at, new).await {
            Ok(clanker) => {
                audit(
                    state,
                    Some(caller),
                    "clanker_changed",
                    "clanker",
                    Some(clanker.id.to_string()),
                    None,
                    serde_json::json!({"slug": clanker.slug.as_str(), "shared": clanker.shared,
                        "projects": clanker.projects}),
                )
                .await;
                // Switched to another compute target (or its settings): whether
                // it can run there is checked again, as Start would.
                let moved = clanker.compute != current.compute || clanker.compute_config != current.compute_config;
                if moved && current.status != ClankerStatus::Inactive {
                    provision_and_record(state, &clanker).await?;
                    return Ok(state.store.get_clanker(clanker.id).await?);
                }
                return Ok(clanker);
            }
            Err(StoreError::Contended { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Contended { entity: "clanker" }.into())
}

/// **Start**: provisions the clanker on its compute target (idempotent).
/// The status message says what happened, and whether workers are sandboxed.
pub async fn start_clanker(state: &AppState, caller: &Caller, key: &str) -> ServiceResult<Clanker> {
    let clanker = find_clanker(&state.store, key).await?;
    state.store.set_clanker_status(clanker.id, ClankerStatus::Deploying, Some("provisioning…".into())).await?;
    let (status, message) = provision_and_record(state, &clanker).await?;
    audit(
        state,
        Some(caller),
        "clanker_started",
        "clanker",
        Some(clanker.id.to_string()),
        None,
        serde_json::json!({"slug": clanker.slug.as_str(), "status": status, "message": message}),
    )
    .await;
    Ok(state.store.get_clanker(clanker.id).await?)
}

/// The programs a clanker names, which its compute target must be able to run.
pub(crate) fn programs_of(clanker: &Clanker) -> Vec<String> {
    clanker.harness().ok().and_then(|h| h.program().map(str::to_owned)).into_iter().collect()
}

/// Provisions `clanker` and records the status it reaches, in a task of its
/// own: a client that hangs up mid-way (a self-check may take a minute)
/// does not leave the clanker `deploying`.
async fn provision_and_record(state: &AppState, clanker: &Clanker) -> ServiceResult<(ClankerStatus, String)> {
    let id = clanker.id;
    let (task_state, clanker) = (state.clone(), clanker.clone());
    let task = tokio::spawn(async move {
        let (status, message) = provision(&task_state, &clanker).await;
        task_state.store.set_clanker_status(clanker.id, status, Some(message.clone())).await.map(|()| (status, message))
    });
    match task.await {
        Ok(done) => Ok(done?),
        Err(panicked) => {
            tracing::error!(error = %panicked, "provisioning a clanker stopped unexpectedly");
            let message =
                "provisioning failed unexpectedly (the server's log has the detail); Start it again".to_owned();
            state.store.set_clanker_status(id, ClankerStatus::Failed, Some(message.clone())).await?;
            Ok((ClankerStatus::Failed, message))
        }
    }
}

/// Provisions `clanker` on its compute target: the status it reaches and why.
async fn provision(state: &AppState, clanker: &Clanker) -> (ClankerStatus, String) {
    match ComputeConfig::parse(clanker.compute, &clanker.compute_config) {
        Err(message) => (ClankerStatus::Failed, message),
        Ok(config) => match state.engine.compute.get(clanker.compute) {
            None => (
                ClankerStatus::Failed,
                format!(
                    "the {} compute target is not available in this server (it runs {}): pick another compute target",
                    clanker.compute,
                    state.engine.compute.kinds().iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ),
            Some(target) => match target.provision(&config, &programs_of(clanker)).await {
                Ok(done) => (ClankerStatus::Active, done.message),
                Err(err) => (ClankerStatus::Failed, format!("provisioning failed: {err}")),
            },
        },
    }
}
