//! Reading columns from either backend's rows with one set of functions.

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::StoreError;
use crate::dbtime::DbTime;
use time::OffsetDateTime;

/// Typed column access shared by SQLite and PostgreSQL rows, so that each
/// row-to-domain conversion is written once.
pub(crate) trait RowExt {
    fn uuid(&self, col: &str) -> Result<Uuid, sqlx::Error>;
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, sqlx::Error>;
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn time(&self, col: &str) -> Result<OffsetDateTime, sqlx::Error>;
    fn opt_time(&self, col: &str) -> Result<Option<OffsetDateTime>, sqlx::Error>;
    fn json(&self, col: &str) -> Result<serde_json::Value, sqlx::Error>;
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, sqlx::Error>;
    fn flag(&self, col: &str) -> Result<bool, sqlx::Error>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, sqlx::Error>;
}

macro_rules! row_ext {
    ($row:ty) => {
        impl RowExt for $row {
            fn uuid(&self, col: &str) -> Result<Uuid, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, sqlx::Error> {
                self.try_get(col)
            }
            fn text(&self, col: &str) -> Result<String, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(col)
            }
            fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(col)
            }
            fn time(&self, col: &str) -> Result<OffsetDateTime, sqlx::Error> {
                self.try_get::<DbTime, _>(col).map(|t| t.0)
            }
            fn opt_time(&self, col: &str) -> Result<Option<OffsetDateTime>, sqlx::Error> {
                self.try_get::<Option<DbTime>, _>(col).map(|t| t.map(|t| t.0))
            }
            fn json(&self, col: &str) -> Result<serde_json::Value, sqlx::Error> {
                self.try_get::<sqlx::types::Json<serde_json::Value>, _>(col).map(|j| j.0)
            }
            fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, sqlx::Error> {
                self.try_get::<Option<sqlx::types::Json<serde_json::Value>>, _>(col).map(|j| j.map(|j| j.0))
            }
            fn flag(&self, col: &str) -> Result<bool, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
                self.try_get(col)
            }
        }
    };
}
row_ext!(SqliteRow);
row_ext!(PgRow);

/// Parses a stored enum name, reporting an unknown one as corruption.
pub(crate) fn parse_stored<T: std::str::FromStr>(entity: &'static str, value: String) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| StoreError::Corrupt { entity, detail: e.to_string() })
}

/// Converts a stored non-negative count to `u32`.
pub(crate) fn to_u32(entity: &'static str, col: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt { entity, detail: format!("{col} = {value} is out of range") })
}

/// A `LIKE` pattern that matches `text` anywhere, case-insensitively when
/// compared against `lower(column)`, with `\` as the escape character.
pub(crate) fn contains_pattern(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.trim().to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_in_search_text_are_escaped() {
        assert_eq!(super::contains_pattern(" 50%_Off "), "%50\\%\\_off%");
    }
}
