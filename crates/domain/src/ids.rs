//! Identifiers. Every entity id is a UUIDv7, so ids sort by creation time and
//! can serve as keyset-pagination cursors on their own.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The error for a string that is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {kind} id: expected a UUID such as 01920000-0000-7000-8000-000000000000")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new id for an entity created now.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim()).map(Self).map_err(|_| InvalidId {
                    kind: $kind,
                    value: s.chars().take(64).collect(),
                })
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Uuid,
                    )))
                    .description(Some(concat!("The ", $kind, " id (a UUIDv7, sorts by creation time).")))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

id_type!(
    /// A project: one repository and its settings.
    ProjectId,
    "project"
);
id_type!(
    /// A ticket: one requested change.
    TicketId,
    "ticket"
);
id_type!(
    /// A job (a run): one worker invocation for one phase.
    JobId,
    "job"
);
id_type!(
    /// A clanker: a saved worker configuration.
    ClankerId,
    "clanker"
);
id_type!(
    /// A user account.
    UserId,
    "user"
);
id_type!(
    /// A secret.
    SecretId,
    "secret"
);
id_type!(
    /// An integration: a connection to an SCM provider or another service.
    IntegrationId,
    "integration"
);

id_type!(
    /// An inbound webhook configuration: where one ticket source delivers.
    WebhookConfigId,
    "webhook"
);
id_type!(
    /// One inbound webhook delivery, as received.
    DeliveryId,
    "delivery"
);
id_type!(
    /// An outbound webhook subscription: where events are delivered.
    SubscriptionId,
    "subscription"
);
id_type!(
    /// A task template: recurring work a schedule runs.
    TaskTemplateId,
    "task template"
);
id_type!(
    /// A schedule: a task template on a cron expression or an interval.
    ScheduleId,
    "schedule"
);
id_type!(
    /// One slot of a schedule and the run it made.
    ExecutionId,
    "execution"
);
id_type!(
    /// A Slack thread bound to a ticket (the thread mirrors the ticket; replies in it act on it).
    SlackThreadId,
    "slack thread"
);
id_type!(
    /// One event (or test) owed to one subscription, with its attempts.
    OutboundDeliveryId,
    "outbound delivery"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_created_later_sort_later() {
        let a = TicketId::new();
        let b = TicketId::new();
        assert!(a < b, "UUIDv7 ids must sort by creation time");
    }

    #[test]
    fn an_id_round_trips_through_its_string_form() {
        let id = ProjectId::new();
        assert_eq!(id.to_string().parse::<ProjectId>().unwrap(), id);
    }

    #[test]
    fn a_malformed_id_names_its_kind() {
        let err = "not-an-id".parse::<JobId>().unwrap_err();
        assert_eq!(err.kind, "job");
        assert!(err.to_string().contains("not a valid job id"));
    }
}
