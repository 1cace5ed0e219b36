//! The closed sets of states a ticket can be in. Each is stored and sent as
//! its snake_case name, and parsing an unknown name says which names exist.

/// The error for a name that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {what}: use one of {}", .allowed.join(", "))]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub allowed: &'static [&'static str],
}

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        // By hand: the derive does not see the names `serde(rename)` gives through this macro, and would document
        // the Rust variant names instead of the ones sent and accepted.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some(concat!("One of the ", $what, " names.")))
                    .enum_values(Some(Self::NAMES.iter().copied()))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed(stringify!($name))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::states::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::states::UnknownValue {
                        what: $what,
                        value: other.chars().take(64).collect(),
                        allowed: Self::NAMES,
                    }),
                }
            }
        }
    };
}

named_enum!(
    /// The phase a ticket is in. Phases run in this order; each run of a
    /// phase is a job.
    Phase, "phase", {
        /// The agent studies the code and writes RESEARCH.md.
        Research => "research",
        /// The agent writes PLAN.md, which people approve.
        Planning => "planning",
        /// The agent changes the code; the result is a pull request.
        Execution => "execution",
    }
);

impl Phase {
    /// The phase after this one, if any.
    pub fn next(self) -> Option<Phase> {
        match self {
            Phase::Research => Some(Phase::Planning),
            Phase::Planning => Some(Phase::Execution),
            Phase::Execution => None,
        }
    }

    /// The document this phase produces, if it produces one.
    pub fn document_name(self) -> Option<&'static str> {
        match self {
            Phase::Research => Some("RESEARCH.md"),
            Phase::Planning => Some("PLAN.md"),
            Phase::Execution => None,
        }
    }
}

named_enum!(
    /// How urgent a ticket is.
    Severity, "severity", {
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
);

named_enum!(
    /// Where a ticket stands in its life, as people see it. Derived from the
    /// phase, its documents and its runs by the lifecycle rules.
    TicketStatus, "ticket status", {
        /// Filed; nothing has run yet.
        Open => "open",
        /// A research run is in progress or its document is being worked on.
        Researching => "researching",
        /// A document waits for someone to approve it.
        AwaitingApproval => "awaiting_approval",
        /// A planning run is in progress or the plan is being worked on.
        Planning => "planning",
        /// An execution run is in progress.
        InProgress => "in_progress",
        /// A pull request is open for review.
        InReview => "in_review",
        /// Done: the change was merged or the ticket was closed.
        Resolved => "resolved",
        /// The latest run failed and needs attention.
        Failed => "failed",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_value() {
        for phase in Phase::ALL {
            assert_eq!(phase.as_str().parse::<Phase>().unwrap(), *phase);
        }
        for status in TicketStatus::ALL {
            assert_eq!(status.as_str().parse::<TicketStatus>().unwrap(), *status);
        }
        for severity in Severity::ALL {
            assert_eq!(severity.as_str().parse::<Severity>().unwrap(), *severity);
        }
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let err = "urgent".parse::<Severity>().unwrap_err();
        assert_eq!(err.to_string(), "`urgent` is not a valid severity: use one of low, medium, high, critical");
    }

    #[test]
    fn phases_advance_in_order_and_only_research_and_planning_write_documents() {
        assert_eq!(Phase::Research.next(), Some(Phase::Planning));
        assert_eq!(Phase::Planning.next(), Some(Phase::Execution));
        assert_eq!(Phase::Execution.next(), None);
        assert_eq!(Phase::Planning.document_name(), Some("PLAN.md"));
        assert_eq!(Phase::Execution.document_name(), None);
    }

    #[test]
    fn serde_uses_the_snake_case_names() {
        assert_eq!(serde_json::to_string(&TicketStatus::AwaitingApproval).unwrap(), "\"awaiting_approval\"");
    }
}
