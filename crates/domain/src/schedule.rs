//! Schedules: when recurring agent work is due. A cadence is a five-field
//! cron expression in a time zone (daylight-saving changes handled: a time
//! that does not exist that day runs at the first instant after the gap, a
//! time that happens twice runs once) or a fixed interval. An invalid
//! expression is refused with the position and the reason; the next run
//! times can be previewed; and [`plan`] decides, for a due slot and the time
//! now, what runs and when the next slot is (a slot missed while no server
//! ran is caught up once, or skipped, per the schedule's policy).

use std::str::FromStr;

use chrono::TimeZone as _;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ExecutionId, Phase, ProjectId, ScheduleId, TaskTemplateId, TicketId, UserId};

/// The five fields of an expression, in order.
pub const FIELDS: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];
/// The shortest interval a schedule may have.
pub const MIN_INTERVAL_SECS: u64 = 60;
/// The longest: a year.
pub const MAX_INTERVAL_SECS: u64 = 366 * 24 * 3600;

/// Why an expression was refused: where (1-based character position) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CadenceError {
    /// The character position the problem starts at (1 for the first), when it is in the expression.
    pub position: Option<usize>,
    pub message: String,
}

fn at(position: usize, message: String) -> CadenceError {
    CadenceError { position: Some(position), message }
}

/// When a schedule runs, validated.
#[derive(Debug, Clone)]
pub enum Cadence {
    Cron {
        expression: String,
        zone: chrono_tz::Tz,
        cron: Box<Cron>,
    },
    /// Every `secs` seconds from `anchor`.
    Interval {
        secs: u64,
        anchor: OffsetDateTime,
    },
}

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build()
}

/// The reason croner gives, without its own prefixes.
fn reason(e: &croner::errors::CronError) -> String {
    let text = e.to_string();
    text.trim_start_matches("Invalid pattern: ")
        .trim_start_matches("Component error: ")
        .trim_end_matches('.')
        .to_owned()
}

/// Parses a five-field cron expression (`minute hour day-of-month month day-of-week`, names such as `MON` and
/// `JAN`, ranges, lists and steps) in the IANA time zone `zone` (`Europe/Berlin`; `UTC` when empty).
pub fn parse_cron(expression: &str, zone: &str) -> Result<Cadence, CadenceError> {
    let zone = zone.trim();
    let zone: chrono_tz::Tz = if zone.is_empty() {
        chrono_tz::UTC
    } else {
        chrono_tz::Tz::from_str(zone).map_err(|_| CadenceError {
            position: None,
            message: format!(
                "`{zone}` is not a time zone: use an IANA name such as Europe/Berlin, America/New_York or UTC"
            ),
        })?
    };
    // Each field with the character position it starts at.
    let mut fields = Vec::new();
    let mut start = None;
    for (i, c) in expression.char_indices().chain(std::iter::once((expression.len(), ' '))) {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                fields.push((expression[..s].chars().count() + 1, &expression[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if fields.is_empty() {
        return Err(CadenceError {
            position: Some(1),
            message: "the expression is empty: give five fields, e.g. `0 9 * * MON-FRI` (09:00 on weekdays)".into(),
        });
    }
    if fields.len() > 5 {
        let (position, token) = fields[5];
        return Err(at(
            position,
            format!(
                "at position {position}: `{token}` is a sixth field; use five (minute hour day-of-month month \
                 day-of-week): seconds and years are not supported"
            ),
        ));
    }
    if fields.len() < 5 {
        let position = expression.trim_end().chars().count() + 1;
        return Err(at(
            position,
            format!(
                "at position {position}: the {} field is missing; use five (minute hour day-of-month month \
                 day-of-week), e.g. `0 9 * * MON-FRI`",
                FIELDS[fields.len()]
            ),
        ));
    }
    // Which field is wrong: each one alone, the others `*`.
    for (n, (position, token)) in fields.iter().enumerate() {
        let mut probe = ["*"; 5];
        probe[n] = token;
        if let Err(e) = parser().parse(&probe.join(" ")) {
            return Err(at(*position, format!("at position {position} ({} `{token}`): {}", FIELDS[n], reason(&e))));
        }
    }
    let cron = parser().parse(expression).map_err(|e| at(1, format!("at position 1: {}", reason(&e))))?;
    // An expression that never matches (30 February) is refused now rather than found out at run time.
    let probe = to_chrono(OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_454)).with_timezone(&zone);
    if cron.find_next_occurrence(&probe, false).is_err() {
        return Err(at(1, "at position 1: the expression never matches a real date (e.g. 30 February)".into()));
    }
    Ok(Cadence::Cron {
        expression: expression.split_whitespace().collect::<Vec<_>>().join(" "),
        zone,
        cron: Box::new(cron),
    })
}

/// Parses an interval: `90s`, `15m`, `2h`, `1d`, `1w` or plain seconds; at least a minute, at most a year.
pub fn parse_interval(text: &str, anchor: OffsetDateTime) -> Result<Cadence, CadenceError> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let multiplier = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(at(
                digits.chars().count() + 1,
                format!("`{other}` is not a unit: use s, m, h, d or w, e.g. `15m` or `1d`"),
            ));
        }
    };
    let n: u64 = digits.parse().map_err(|_| at(1, format!("`{text}` is not an interval: e.g. `15m`, `2h` or `1d`")))?;
    let secs = n.saturating_mul(multiplier);
    if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&secs) {
        return Err(at(1, format!("`{text}` is {secs} s: an interval is at least a minute and at most a year")));
    }
    Ok(Cadence::Interval { secs, anchor })
}

fn to_chrono(t: OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc.timestamp_nanos(i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

fn from_chrono<Tz: chrono::TimeZone>(t: &chrono::DateTime<Tz>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.timestamp_nanos_opt().unwrap_or(0)))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `t` as a local time in the IANA zone `zone` (UTC when unknown), e.g. `2026-12-07 09:00 CET`.
pub fn local_time(t: OffsetDateTime, zone: &str) -> String {
    let zone = chrono_tz::Tz::from_str(zone).unwrap_or(chrono_tz::UTC);
    to_chrono(t).with_timezone(&zone).format("%Y-%m-%d %H:%M %Z").to_string()
}

impl Cadence {
    /// The first slot strictly after `after`; `None` when there is none (never for a validated cadence).
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        match self {
            Cadence::Cron { zone, cron, .. } => {
                let local = to_chrono(after).with_timezone(zone);
                cron.find_next_occurrence(&local, false).ok().map(|t| from_chrono(&t))
            }
            Cadence::Interval { secs, anchor } => {
                let step = i128::from(*secs) * 1_000_000_000;
                let since = after.unix_timestamp_nanos() - anchor.unix_timestamp_nanos();
                let k = if since < 0 { 0 } else { since / step + 1 };
                OffsetDateTime::from_unix_timestamp_nanos(anchor.unix_timestamp_nanos() + k * step).ok()
            }
        }
    }

    /// The latest slot at or before `at`.
    pub fn latest_at_or_before(&self, at: OffsetDateTime) -> Option<OffsetDateTime> {
        match self {
            Cadence::Cron { zone, cron, .. } => {
                let local = to_chrono(at).with_timezone(zone);
                cron.find_previous_occurrence(&local, true).ok().map(|t| from_chrono(&t))
            }
            Cadence::Interval { secs, anchor } => {
                let step = i128::from(*secs) * 1_000_000_000;
                let since = at.unix_timestamp_nanos() - anchor.unix_timestamp_nanos();
                if since < 0 {
                    return None;
                }
                OffsetDateTime::from_unix_timestamp_nanos(anchor.unix_timestamp_nanos() + since / step * step).ok()
            }
        }
    }

    /// How many slots are in `(after, until]`, counted up to [`MAX_COUNTED`].
    pub fn count_after(&self, after: OffsetDateTime, until: OffsetDateTime) -> u32 {
        if until <= after {
            return 0;
        }
        if let Cadence::Interval { secs, .. } = self {
            let span = until.unix_timestamp_nanos() - after.unix_timestamp_nanos();
            let steps = span / (i128::from(*secs) * 1_000_000_000);
            return u32::try_from(steps.max(1)).unwrap_or(u32::MAX).min(MAX_COUNTED);
        }
        let mut n = 0;
        let mut cursor = after;
        while n < MAX_COUNTED {
            match self.next_after(cursor) {
                Some(t) if t <= until => {
                    n += 1;
                    cursor = t;
                }
                _ => break,
            }
        }
        n
    }

    /// The next `n` slots after `after` (the preview).
    pub fn preview(&self, after: OffsetDateTime, n: usize) -> Vec<OffsetDateTime> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(t) => {
                    out.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }
}

named_enum!(
    /// What a due slot does while the schedule's previous execution is still running.
    OverlapPolicy, "overlap policy", {
        /// Record the slot as skipped.
        Skip => "skip",
        /// Keep one execution waiting; it starts when the running one ends (a third slot is skipped).
        Queue => "queue",
    }
);

named_enum!(
    /// What the slots missed while no server ran do.
    MissedPolicy, "missed-run policy", {
        /// One catch-up run for all of them.
        RunOnce => "run_once",
        /// None: wait for the next slot.
        Skip => "skip",
    }
);

/// What a due slot comes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The slot to execute now, if any.
    pub run: Option<OffsetDateTime>,
    /// Slots missed and not run.
    pub skipped: u32,
    /// The schedule's next slot.
    pub next: Option<OffsetDateTime>,
}

/// How many slots after a due one are counted at most (a year of minutes is "many" enough; the count is a
/// lower bound past it).
pub const MAX_COUNTED: u32 = 1000;

/// What to do with the slot `due` at `now`: on time (no later slot has come yet), it runs; after downtime
/// (later slots passed too), `missed` decides between one catch-up run (for the latest slot) and none.
pub fn plan(cadence: &Cadence, due: OffsetDateTime, now: OffsetDateTime, missed: MissedPolicy) -> Plan {
    let next = cadence.next_after(now);
    let on_time = cadence.next_after(due).is_none_or(|t| t > now);
    if on_time {
        return Plan { run: Some(due), skipped: 0, next };
    }
    let latest = cadence.latest_at_or_before(now).filter(|t| *t > due).unwrap_or(due);
    let passed = cadence.count_after(due, latest).max(1);
    match missed {
        MissedPolicy::RunOnce => Plan { run: Some(latest), skipped: passed, next },
        MissedPolicy::Skip => Plan { run: None, skipped: passed.saturating_add(1), next },
    }
}

/// Saved recurring work: what to run (clanker, phase, instructions) in a project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskTemplate {
    pub id: TaskTemplateId,
    pub project_id: ProjectId,
    /// Unique in the project.
    pub name: String,
    /// The clanker's slug.
    pub clanker: String,
    pub phase: Phase,
    /// What the agent is asked to do: the filed ticket's description.
    pub instructions: String,
    /// Whether an execution run opens a pull request (otherwise its branch is pushed and the diff recorded).
    pub open_pull_request: bool,
    /// The clanker's secrets its runs get (all of them when empty).
    pub secrets: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

named_enum!(
    /// How a schedule's slots are given.
    CadenceKind, "cadence", {
        Cron => "cron",
        Interval => "interval",
    }
);

/// A template on a cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    pub id: ScheduleId,
    pub project_id: ProjectId,
    pub template_id: TaskTemplateId,
    pub name: String,
    pub cadence: CadenceKind,
    /// The cron expression (for `cron`).
    pub expression: String,
    /// The IANA time zone the expression is read in.
    pub timezone: String,
    /// The interval (for `interval`).
    pub interval_secs: u64,
    /// Intervals count from here.
    #[serde(with = "time::serde::rfc3339")]
    pub anchor_at: OffsetDateTime,
    pub active: bool,
    pub overlap: OverlapPolicy,
    pub missed: MissedPolicy,
    /// A ticket every execution runs on, instead of a new ticket each time.
    pub standing_ticket_id: Option<TicketId>,
    /// The next slot (none while paused).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_run_at: Option<OffsetDateTime>,
    pub runs: i64,
    pub failures: i64,
    pub skipped: i64,
    pub created_by: Option<UserId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Schedule {
    /// The schedule's cadence, parsed again from what is stored.
    pub fn parsed(&self) -> Result<Cadence, CadenceError> {
        match self.cadence {
            CadenceKind::Cron => parse_cron(&self.expression, &self.timezone),
            CadenceKind::Interval => parse_interval(&self.interval_secs.to_string(), self.anchor_at),
        }
    }
}

named_enum!(
    /// Where an execution stands.
    ExecutionStatus, "execution status", {
        /// Waiting: its run has not started (or waits for the previous execution, with overlap `queue`).
        Queued => "queued",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        /// Its slot came while the previous execution ran (overlap `skip`), or was missed.
        Skipped => "skipped",
        Cancelled => "cancelled",
    }
);

named_enum!(
    /// Why an execution happened.
    ExecutionTrigger, "execution trigger", {
        Schedule => "schedule",
        /// The one run for slots missed while no server ran.
        CatchUp => "catch_up",
        /// Run now.
        Manual => "manual",
    }
);

/// One slot of a schedule, and the run it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Execution {
    pub id: ExecutionId,
    pub schedule_id: ScheduleId,
    #[serde(with = "time::serde::rfc3339")]
    pub slot: OffsetDateTime,
    pub trigger: ExecutionTrigger,
    pub status: ExecutionStatus,
    pub ticket_id: Option<TicketId>,
    pub job_id: Option<crate::JobId>,
    /// Why it was skipped or failed.
    pub message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn cron(expression: &str, zone: &str) -> Cadence {
        parse_cron(expression, zone).unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    fn local(t: OffsetDateTime, zone: &str) -> String {
        let zone: chrono_tz::Tz = zone.parse().unwrap();
        to_chrono(t).with_timezone(&zone).format("%Y-%m-%d %H:%M %Z").to_string()
    }

    #[test]
    fn an_invalid_expression_names_the_position_and_the_reason() {
        let e = parse_cron("0 25 * * *", "UTC").unwrap_err();
        assert_eq!(e.position, Some(3), "{e}");
        assert!(e.message.contains("hour `25`"), "{e}");
        let e = parse_cron("*/5 * * FOO *", "UTC").unwrap_err();
        assert_eq!(e.position, Some(9), "{e}");
        assert!(e.message.contains("month"), "{e}");
        let e = parse_cron("0 9 * *", "UTC").unwrap_err();
        assert!(e.message.contains("day of week field is missing"), "{e}");
        let e = parse_cron("0 0 9 * * *", "UTC").unwrap_err();
        assert_eq!(e.position, Some(11), "{e}");
        assert!(e.message.contains("sixth field"), "{e}");
        let e = parse_cron("0 9 30 2 *", "UTC").unwrap_err();
        assert!(e.message.contains("never matches"), "{e}");
        let e = parse_cron("0 9 * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(e.position, None);
        assert!(e.message.contains("time zone"), "{e}");
        assert!(parse_cron("", "UTC").unwrap_err().message.contains("empty"));
    }

    #[test]
    fn the_next_five_runs_are_previewed() {
        let weekdays = cron("0 9 * * MON-FRI", "Europe/Berlin");
        let from = datetime!(2026-12-04 12:00 UTC); // a Friday
        let runs: Vec<String> = weekdays.preview(from, 5).into_iter().map(|t| local(t, "Europe/Berlin")).collect();
        assert_eq!(
            runs,
            [
                "2026-12-07 09:00 CET",
                "2026-12-08 09:00 CET",
                "2026-12-09 09:00 CET",
                "2026-12-10 09:00 CET",
                "2026-12-11 09:00 CET"
            ]
        );
    }

    #[test]
    fn daily_runs_keep_their_local_time_across_daylight_saving_changes() {
        // Berlin springs forward on 29 March 2026 and falls back on 25 October 2026.
        let daily = cron("30 9 * * *", "Europe/Berlin");
        let spring: Vec<String> =
            daily.preview(datetime!(2026-03-27 12:00 UTC), 3).into_iter().map(|t| local(t, "Europe/Berlin")).collect();
        assert_eq!(spring, ["2026-03-28 09:30 CET", "2026-03-29 09:30 CEST", "2026-03-30 09:30 CEST"]);
        let utc: Vec<OffsetDateTime> = daily.preview(datetime!(2026-03-27 12:00 UTC), 3);
        assert_eq!(utc[0], datetime!(2026-03-28 08:30 UTC));
        assert_eq!(utc[1], datetime!(2026-03-29 07:30 UTC), "an hour earlier in UTC once summer time starts");
        let autumn: Vec<String> =
            daily.preview(datetime!(2026-10-23 12:00 UTC), 3).into_iter().map(|t| local(t, "Europe/Berlin")).collect();
        assert_eq!(autumn, ["2026-10-24 09:30 CEST", "2026-10-25 09:30 CET", "2026-10-26 09:30 CET"]);
    }

    #[test]
    fn a_time_in_the_gap_runs_after_it_and_a_repeated_hour_runs_once() {
        // 02:30 does not exist in New York on 8 March 2026, and happens twice on 1 November 2026.
        let night = cron("30 2 * * *", "America/New_York");
        let spring: Vec<String> = night
            .preview(datetime!(2026-03-07 12:00 UTC), 3)
            .into_iter()
            .map(|t| local(t, "America/New_York"))
            .collect();
        assert_eq!(spring, ["2026-03-08 03:00 EDT", "2026-03-09 02:30 EDT", "2026-03-10 02:30 EDT"]);
        let one_thirty = cron("30 1 * * *", "America/New_York");
        let autumn = one_thirty.preview(datetime!(2026-10-31 12:00 UTC), 2);
        assert_eq!(autumn.len(), 2);
        assert_eq!(local(autumn[0], "America/New_York"), "2026-11-01 01:30 EDT");
        assert_eq!(local(autumn[1], "America/New_York"), "2026-11-02 01:30 EST", "the repeated 01:30 ran once");
    }

    #[test]
    fn intervals_count_from_their_anchor() {
        let anchor = datetime!(2026-12-01 10:00 UTC);
        let every = parse_interval("15m", anchor).unwrap();
        assert_eq!(every.next_after(anchor), Some(datetime!(2026-12-01 10:15 UTC)));
        assert_eq!(every.next_after(datetime!(2026-12-01 10:29:59 UTC)), Some(datetime!(2026-12-01 10:30 UTC)));
        assert_eq!(every.next_after(datetime!(2026-12-01 09:00 UTC)), Some(anchor));
        assert!(parse_interval("30s", anchor).unwrap_err().message.contains("at least a minute"));
        assert_eq!(parse_interval("5x", anchor).unwrap_err().position, Some(2));
        assert!(parse_interval("1d", anchor).is_ok());
    }

    #[test]
    fn downtime_is_caught_up_once_or_skipped() {
        let minutely = cron("* * * * *", "UTC");
        let due = datetime!(2026-12-01 10:00 UTC);
        let on_time = plan(&minutely, due, datetime!(2026-12-01 10:00:02 UTC), MissedPolicy::Skip);
        assert_eq!(on_time, Plan { run: Some(due), skipped: 0, next: Some(datetime!(2026-12-01 10:01 UTC)) });
        // Down from 09:59:30 to 10:03:10: the slots 10:00, 10:01, 10:02 and 10:03 passed.
        let back = datetime!(2026-12-01 10:03:10 UTC);
        let once = plan(&minutely, due, back, MissedPolicy::RunOnce);
        assert_eq!(once.run, Some(datetime!(2026-12-01 10:03 UTC)), "one catch-up run, for the latest slot");
        assert_eq!((once.skipped, once.next), (3, Some(datetime!(2026-12-01 10:04 UTC))));
        let none = plan(&minutely, due, back, MissedPolicy::Skip);
        assert_eq!((none.run, none.skipped, none.next), (None, 4, Some(datetime!(2026-12-01 10:04 UTC))));
    }

    #[test]
    fn a_long_downtime_is_counted_up_to_a_bound_and_catches_up_the_latest_slot() {
        // A minutely schedule down for a year: the catch-up is the latest slot, found without walking the year.
        let minutely = cron("* * * * *", "Europe/Berlin");
        let due = datetime!(2025-12-01 10:00 UTC);
        let back = datetime!(2026-12-01 10:00:30 UTC);
        let once = plan(&minutely, due, back, MissedPolicy::RunOnce);
        assert_eq!(once.run, Some(datetime!(2026-12-01 10:00 UTC)));
        assert_eq!(once.skipped, MAX_COUNTED, "counted up to the bound");
        // An interval is counted exactly, in one step.
        let anchor = datetime!(2026-12-01 00:00 UTC);
        let hourly = parse_interval("1h", anchor).unwrap();
        let due = datetime!(2026-12-01 01:00 UTC);
        let none = plan(&hourly, due, datetime!(2026-12-01 05:30 UTC), MissedPolicy::Skip);
        assert_eq!((none.run, none.skipped, none.next), (None, 5, Some(datetime!(2026-12-01 06:00 UTC))));
        let once = plan(&hourly, due, datetime!(2026-12-01 05:30 UTC), MissedPolicy::RunOnce);
        assert_eq!((once.run, once.skipped), (Some(datetime!(2026-12-01 05:00 UTC)), 4));
    }
}
