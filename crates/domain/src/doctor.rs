//! What `viberglass doctor` reports: each thing it checked, and for each
//! broken one a finding that names the layer, the cause and the fix, as the
//! troubleshooting guide does for a failed job.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

named_enum!(
    /// How bad a finding is: `error` breaks work now; `warning` will, or hides a problem.
    FindingSeverity, "finding severity", {
        Error => "error",
        Warning => "warning",
    }
);

named_enum!(
    /// The part of the installation a check looks at.
    DoctorLayer, "doctor layer", {
        Configuration => "configuration",
        Database => "database",
        Encryption => "encryption",
        Secrets => "secrets",
        Scm => "scm",
        Compute => "compute",
        Webhooks => "webhooks",
        Slack => "slack",
        Workflow => "workflow",
        Jobs => "jobs",
    }
);

/// One broken (or soon broken) thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    pub severity: FindingSeverity,
    pub layer: DoctorLayer,
    /// What it is about, e.g. `secret github-token` or `clanker claude`.
    pub subject: String,
    /// What is wrong.
    pub cause: String,
    /// What to do about it.
    pub fix: String,
}

/// One check and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DoctorCheck {
    pub layer: DoctorLayer,
    /// What was checked, e.g. `every secret resolves from its backend`.
    pub name: String,
    /// How many things it looked at.
    pub checked: u32,
    /// How many findings it made.
    pub findings: u32,
}

/// Everything `viberglass doctor` (and `GET /api/v1/doctor`) found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DoctorReport {
    /// No finding of severity `error` (warnings allowed).
    pub healthy: bool,
    pub checks: Vec<DoctorCheck>,
    /// Errors first, then warnings, each in check order.
    pub findings: Vec<Finding>,
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
}

impl DoctorReport {
    pub fn new(checks: Vec<DoctorCheck>, mut findings: Vec<Finding>, checked_at: OffsetDateTime) -> DoctorReport {
        findings.sort_by_key(|f| f.severity != FindingSeverity::Error);
        let healthy = findings.iter().all(|f| f.severity != FindingSeverity::Error);
        DoctorReport { healthy, checks, findings, checked_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(severity: FindingSeverity, subject: &str) -> Finding {
        Finding { severity, layer: DoctorLayer::Jobs, subject: subject.into(), cause: "c".into(), fix: "f".into() }
    }

    #[test]
    fn errors_come_first_and_only_errors_make_it_unhealthy() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let report = DoctorReport::new(vec![], vec![finding(FindingSeverity::Warning, "a")], now);
        assert!(report.healthy);
        let report = DoctorReport::new(
            vec![],
            vec![
                finding(FindingSeverity::Warning, "a"),
                finding(FindingSeverity::Error, "b"),
                finding(FindingSeverity::Warning, "c"),
            ],
            now,
        );
        assert!(!report.healthy);
        let order: Vec<_> = report.findings.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }
}
