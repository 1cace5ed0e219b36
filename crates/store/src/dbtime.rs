//! Timestamps as the store keeps them: UTC, whole microseconds.
//!
//! PostgreSQL stores `TIMESTAMPTZ` natively. SQLite has no time type, so the
//! store writes one fixed-width text form (`2026-01-02T03:04:05.000006Z`);
//! with every value in the same width and zone, comparing the text compares
//! the times, which range queries (heartbeats, expiry) rely on.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// The current time, truncated to what both databases keep.
pub fn now() -> OffsetDateTime {
    truncate(OffsetDateTime::now_utc())
}

fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).unwrap_or(t)
}

/// A timestamp column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DbTime(pub OffsetDateTime);

impl DbTime {
    pub fn opt(t: Option<OffsetDateTime>) -> Option<DbTime> {
        t.map(DbTime)
    }
}

const SQLITE_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

impl Type<Sqlite> for DbTime {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for DbTime {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        let text = truncate(self.0).format(SQLITE_FORMAT)?;
        Encode::<Sqlite>::encode(text, buf)
    }
}

impl<'r> Decode<'r, Sqlite> for DbTime {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(DbTime(OffsetDateTime::parse(text, &Rfc3339)?.to_offset(UtcOffset::UTC)))
    }
}

impl Type<Postgres> for DbTime {
    fn type_info() -> PgTypeInfo {
        <OffsetDateTime as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <OffsetDateTime as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for DbTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode(truncate(self.0), buf)
    }
}

impl<'r> Decode<'r, Postgres> for DbTime {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(DbTime(<OffsetDateTime as Decode<Postgres>>::decode(value)?.to_offset(UtcOffset::UTC)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_text_form_has_a_fixed_width_so_text_order_is_time_order() {
        let a = time::macros::datetime!(2026-01-02 03:04:05.5 UTC);
        let b = time::macros::datetime!(2026-01-02 03:04:05.25 UTC);
        let fa = a.format(SQLITE_FORMAT).unwrap();
        let fb = b.format(SQLITE_FORMAT).unwrap();
        assert_eq!(fa, "2026-01-02T03:04:05.500000Z");
        assert_eq!(fa.len(), fb.len());
        assert!(fb < fa);
    }

    #[test]
    fn now_keeps_whole_microseconds() {
        assert_eq!(now().nanosecond() % 1_000, 0);
    }
}
