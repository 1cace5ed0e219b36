//! Viberglass domain: identifiers, states and the rules that govern them.
//!
//! This crate does no I/O and knows nothing of HTTP or SQL. Everything that
//! enters the system from outside is parsed into one of these types at the
//! boundary ("parse, don't validate"), so code further in can trust it.
#![forbid(unsafe_code)]

#[macro_use]
pub mod states;
pub mod clanker;
pub mod doctor;
pub mod events;
pub mod failure;
pub mod ids;
pub mod integration;
pub mod job;
pub mod page;
pub mod project;
pub mod protocol;
pub mod schedule;
pub mod scm;
pub mod secret;
pub mod slack;
pub mod subscription;
pub mod ticket;
pub mod user;
pub mod validation;
pub mod webhook;
pub mod workflow;

pub use clanker::{AgentKind, AgentSettings, Clanker, ClankerInput, ClankerStatus, ComputeKind, NewClanker};
pub use events::{DomainEvent, EventType, NewEvent};
pub use failure::{Failure, FailureLayer};
pub use ids::{
    ClankerId, DeliveryId, ExecutionId, IntegrationId, JobId, OutboundDeliveryId, ProjectId, ScheduleId, SecretId,
    SlackThreadId, SubscriptionId, TaskTemplateId, TicketId, UserId, WebhookConfigId,
};
pub use integration::{Integration, IntegrationInput, IntegrationPatch, NewIntegration};
pub use job::{
    CommitAuthor, EventKind, HarnessSpec, InstructionFile, Job, JobEvent, JobSpec, JobStatus, LogLevel, NewJobEvent,
    ScmSpec,
};
pub use page::{Cursor, Page, PageRequest};
pub use project::{NewProject, Project, ProjectInput, ProjectPatch, ProjectSlug};
pub use scm::ScmProvider;
pub use secret::{NewSecret, Secret, SecretBackend, SecretInput, SecretPatchInput};
pub use slack::{SlackPost, SlackPostStatus, SlackSettings, SlackSettingsInput, SlackThread};
pub use states::{Phase, Severity, TicketStatus};
pub use subscription::{
    AttemptError, OutboundAttempt, OutboundDelivery, OutboundStatus, Subscription, SubscriptionAuth,
    SubscriptionCredentials, SubscriptionInput, SubscriptionScope,
};
pub use ticket::{
    ArchivedFilter, Attachment, NewTicket, Ticket, TicketCategory, TicketFilter, TicketInput, TicketPatch, TicketSource,
};
pub use user::{ApiToken, AuditEntry, NewUser, ProjectRole, User, UserInput, UserPatch, UserPatchInput};
pub use validation::{FieldError, ValidationErrors};
pub use webhook::{
    Delivery, DeliveryFilter, DeliveryPayload, DeliveryStatus, NewTicketRun, NewWebhookConfig, WebhookConfig,
    WebhookConfigInput, WebhookConfigPatch, WebhookProvider,
};
