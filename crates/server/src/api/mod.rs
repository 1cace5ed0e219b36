//! The JSON API under `/api/v1`, plus `/healthz` and `/readyz`. Every route
//! is declared with `#[utoipa::path]` and registered through `routes!`, so
//! the OpenAPI document is generated from the same declarations that route
//! requests.

mod access;
mod attachments;
pub(crate) mod clankers;
pub(crate) mod constraints;
mod health;
mod integrations;
pub(crate) mod jobs;
pub(crate) mod projects;
pub(crate) mod schedules;
mod secrets;
pub(crate) mod slack;
pub(crate) mod subscriptions;
pub(crate) mod tickets;
pub(crate) mod webhooks;
pub mod worker;
pub(crate) mod workflow;

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Viberglass API",
        description = "Tickets in, pull requests out: the Viberglass orchestrator's JSON API. \
                       Errors share one shape: `{code, message, hint?, fields?}`.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "access", description = "Signing in, users, API tokens, project members and the audit log"),
        (name = "projects", description = "Projects: one repository and its settings"),
        (name = "tickets", description = "Tickets: requested changes"),
        (name = "secrets", description = "Secrets: named values kept outside the code, never returned"),
        (name = "integrations", description = "SCM integrations: GitHub or GitLab, with Test connection"),
        (name = "workflow", description = "Documents, comments, approvals, Approve & Continue, overrides and prompts"),
        (name = "clankers", description = "Clankers: saved worker configurations"),
        (name = "jobs", description = "Jobs (runs): one worker invocation for one phase"),
        (name = "webhooks", description = "Inbound webhooks from ticket sources: configurations, deliveries, redelivery"),
        (name = "subscriptions", description = "Outbound webhooks: the event catalogue, subscriptions, deliveries with every attempt, redelivery and test events"),
        (name = "schedules", description = "Scheduled tasks: task templates, schedules on a cron expression or an interval, pause and resume, Run now, executions with their jobs"),
        (name = "slack", description = "Slack: the request URL, the app's settings with Test connection, and tickets' threads"),
        (name = "worker", description = "The worker protocol, called by viberators with their job token"),
    ),
    modifiers(&WorkerTokenScheme)
)]
struct ApiDoc;

struct WorkerTokenScheme;

impl utoipa::Modify for WorkerTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token (vgp_…) from POST /api/v1/me/tokens"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Cookie(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "vg_session",
                    "The session cookie POST /api/v1/auth/login sets",
                ),
            )),
        );
        // Every API route accepts either, unless it says otherwise.
        openapi.security = Some(vec![
            utoipa::openapi::security::SecurityRequirement::new("api_token", Vec::<String>::new()),
            utoipa::openapi::security::SecurityRequirement::new("session", Vec::<String>::new()),
        ]);
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "worker_token",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("The job's worker token")).build(),
            ),
        );
        // What subscribers receive: one entry per event type, with an example (OpenAPI 3.1 `webhooks`).
        openapi.webhooks = subscriptions::openapi_webhooks();
    }
}

/// Completes the document with what every route shares, so generated clients and contract testers see every
/// answer the server can give: the error responses the framework and the access guard produce (400 for an id, a
/// query or a body that does not parse, 401 and 403 from the guard, 404 for an unknown id, 413 and 415 for a body),
/// each with the error body, and no authentication on the routes the guard lets anyone call (`auth::RULES`).
pub fn complete(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{Operation, ParameterIn};
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build()
            .into()
    };
    for (path, item) in openapi.paths.paths.iter_mut() {
        let operations: [(&str, &mut Option<Operation>); 5] = [
            ("GET", &mut item.get),
            ("POST", &mut item.post),
            ("PUT", &mut item.put),
            ("PATCH", &mut item.patch),
            ("DELETE", &mut item.delete),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation.as_mut() else { continue };
            let method = axum::http::Method::from_bytes(method.as_bytes()).expect("a standard method");
            let rule = crate::auth::rule_for(&method, path);
            // Every `*_id` in a path is a UUID: said in the document, so clients send one.
            for parameter in operation.parameters.iter_mut().flatten() {
                if let RefOr::T(parameter) = parameter
                    && parameter.parameter_in == ParameterIn::Path
                    && parameter.name.ends_with("_id")
                {
                    parameter.schema = Some(
                        utoipa::openapi::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::Type::String)
                            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                                utoipa::openapi::KnownFormat::Uuid,
                            )))
                            .into(),
                    );
                }
            }
            let parameters = operation.parameters.as_deref().unwrap_or_default();
            let in_path = path.contains('{');
            let in_query = parameters.iter().any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
            let body = operation.request_body.is_some();
            let mut add = |status: &str, description: &str| {
                operation.responses.responses.entry(status.to_owned()).or_insert_with(|| error(description));
            };
            if in_path || in_query || body {
                add("400", "The request is malformed: an id, a query parameter or the body (the message names which)");
            }
            if in_path {
                add("404", "Nothing has that id, or the caller may not see it");
            }
            if body {
                add("413", "The body is larger than the server accepts");
                add("415", "The body is not of the declared content type");
            }
            if method != axum::http::Method::GET {
                add(
                    "422",
                    "Well formed, but the current state does not allow it (an archived project, a clanker not started, \
                     a secret it names that does not exist yet): the message says what to do",
                );
            }
            match rule {
                Some(crate::auth::Rule::Public) => {
                    operation.security = Some(vec![utoipa::openapi::security::SecurityRequirement::default()]);
                }
                Some(_) | None => {
                    add("401", "Not signed in: send an API token (or the session cookie)");
                    add("403", "Signed in, but not allowed this (the message says what role it needs)");
                }
            }
        }
    }
}

/// Every API route, with its OpenAPI description.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::doctor))
        .routes(routes!(health::job_diagnostics))
        .routes(routes!(health::ticket_diagnostics))
        .routes(routes!(health::window_diagnostics))
        .routes(routes!(crate::metrics::metrics))
        .routes(routes!(projects::list_projects, projects::create_project))
        .routes(routes!(projects::get_project, projects::update_project))
        .routes(routes!(projects::archive_project))
        .routes(routes!(projects::unarchive_project))
        .routes(routes!(tickets::list_tickets))
        .routes(routes!(tickets::create_ticket))
        .routes(routes!(tickets::get_ticket, tickets::update_ticket))
        .routes(routes!(tickets::archive_ticket))
        .routes(routes!(tickets::unarchive_ticket))
        .routes(routes!(attachments::list_attachments, attachments::upload_attachment))
        .routes(routes!(attachments::download_attachment))
        .routes(routes!(access::setup_status, access::setup))
        .routes(routes!(access::login))
        .routes(routes!(access::logout))
        .routes(routes!(access::me))
        .routes(routes!(access::list_tokens, access::create_token))
        .routes(routes!(access::revoke_token))
        .routes(routes!(access::list_users, access::create_user))
        .routes(routes!(access::update_user))
        .routes(routes!(access::list_members))
        .routes(routes!(access::set_member, access::remove_member))
        .routes(routes!(access::list_audit))
        .routes(routes!(workflow::get_document, workflow::edit_document))
        .routes(routes!(workflow::list_revisions))
        .routes(routes!(workflow::get_revision))
        .routes(routes!(workflow::add_comment))
        .routes(routes!(workflow::set_comment_status))
        .routes(routes!(workflow::approval))
        .routes(routes!(workflow::list_approvals))
        .routes(routes!(workflow::approve_and_continue))
        .routes(routes!(workflow::request_revision))
        .routes(routes!(workflow::set_override, workflow::clear_override))
        .routes(routes!(workflow::list_prompts))
        .routes(routes!(workflow::set_prompt, workflow::reset_prompt))
        .routes(routes!(workflow::preview_prompt))
        .routes(routes!(secrets::list_secrets, secrets::create_secret))
        .routes(routes!(secrets::get_secret, secrets::update_secret, secrets::delete_secret))
        .routes(routes!(secrets::test_secret))
        .routes(routes!(integrations::list_integrations, integrations::create_integration))
        .routes(routes!(
            integrations::get_integration,
            integrations::update_integration,
            integrations::delete_integration
        ))
        .routes(routes!(integrations::test_integration))
        .routes(routes!(clankers::list_clankers, clankers::create_clanker))
        .routes(routes!(clankers::get_clanker, clankers::update_clanker))
        .routes(routes!(clankers::start_clanker))
        .routes(routes!(clankers::stop_clanker))
        .routes(routes!(jobs::create_run))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::rerun_job))
        .routes(routes!(jobs::list_events))
        .routes(routes!(jobs::stream_events))
        .routes(routes!(jobs::project_usage))
        .routes(routes!(jobs::ticket_usage))
        .routes(routes!(webhooks::receive))
        .routes(routes!(webhooks::list_configs, webhooks::create_config))
        .routes(routes!(webhooks::get_config, webhooks::update_config))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::get_delivery))
        .routes(routes!(webhooks::get_payload))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(webhooks::ticket_feedback))
        .routes(routes!(subscriptions::events))
        .routes(routes!(subscriptions::list_instance, subscriptions::create_instance))
        .routes(routes!(subscriptions::list_project, subscriptions::create_project))
        .routes(routes!(subscriptions::get, subscriptions::update))
        .routes(routes!(subscriptions::rotate_secret))
        .routes(routes!(subscriptions::send_test))
        .routes(routes!(subscriptions::list_deliveries))
        .routes(routes!(subscriptions::get_delivery))
        .routes(routes!(subscriptions::redeliver))
        .routes(routes!(subscriptions::redeliver_failed))
        .routes(routes!(slack::receive))
        .routes(routes!(slack::get_settings, slack::put_settings, slack::delete_settings))
        .routes(routes!(slack::test_settings))
        .routes(routes!(slack::get_ticket_thread, slack::link_ticket_thread, slack::unlink_ticket_thread))
        .routes(routes!(schedules::list_templates, schedules::create_template))
        .routes(routes!(schedules::get_template, schedules::update_template))
        .routes(routes!(schedules::list_schedules, schedules::create_schedule))
        .routes(routes!(schedules::preview))
        .routes(routes!(schedules::get_schedule, schedules::update_schedule))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(schedules::run_now))
        .routes(routes!(schedules::list_executions))
        .routes(routes!(schedules::get_execution))
        .routes(routes!(worker::bootstrap))
        .routes(routes!(worker::heartbeat))
        .routes(routes!(worker::events))
        .routes(routes!(worker::document))
        .routes(routes!(worker::result))
}

/// Parses an optional enum-valued query parameter, recording a bad value.
fn parse_param<T: std::str::FromStr>(
    errors: &mut viberglass_domain::ValidationErrors,
    name: &str,
    value: Option<&str>,
) -> Option<T>
where
    T::Err: std::fmt::Display,
{
    value.filter(|v| !v.is_empty()).and_then(|v| errors.check(name, v.parse::<T>()))
}

fn parse_archived(
    errors: &mut viberglass_domain::ValidationErrors,
    value: Option<&str>,
) -> viberglass_domain::ArchivedFilter {
    use viberglass_domain::ArchivedFilter;
    match value {
        None | Some("") | Some("exclude") => ArchivedFilter::Exclude,
        Some("include") => ArchivedFilter::Include,
        Some("only") => ArchivedFilter::Only,
        Some(other) => {
            errors.add("archived", format!("`{other}` is not valid: use exclude, include or only"));
            ArchivedFilter::Exclude
        }
    }
}

fn parse_page(
    errors: &mut viberglass_domain::ValidationErrors,
    limit: Option<u32>,
    cursor: Option<&str>,
) -> viberglass_domain::PageRequest {
    viberglass_domain::PageRequest::parse(limit, cursor).unwrap_or_else(|(field, message)| {
        errors.add(field, message);
        viberglass_domain::PageRequest::default()
    })
}
