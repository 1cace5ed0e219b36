//! Store errors. Callers see what happened in domain terms (not found,
//! conflict) and the database's own error only as a cause to log.

use std::path::PathBuf;

use crate::DatabaseTarget;

/// Opening the database failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the PostgreSQL URL is invalid: {reason}")]
    InvalidUrl { reason: String },
    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot reach the database at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("the database at {address} refused the connection: {reason}")]
    Rejected { address: String, reason: String },
}

impl ConnectError {
    pub(crate) fn classify(target: &DatabaseTarget, err: sqlx::Error) -> ConnectError {
        let address = target.host_port().unwrap_or_else(|| target.describe());
        match err {
            sqlx::Error::Io(io) => ConnectError::Unreachable { address, reason: io.to_string() },
            sqlx::Error::PoolTimedOut => {
                ConnectError::Unreachable { address, reason: "timed out waiting for a connection".into() }
            }
            sqlx::Error::Tls(tls) => ConnectError::Unreachable { address, reason: format!("TLS failed: {tls}") },
            sqlx::Error::Database(db) => ConnectError::Rejected { address, reason: db.message().to_owned() },
            sqlx::Error::Configuration(cfg) => ConnectError::InvalidUrl { reason: cfg.to_string() },
            other => ConnectError::Rejected { address, reason: other.to_string() },
        }
    }

    /// Whether trying again later may succeed (the server is down or starting).
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectError::Unreachable { .. })
    }
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {id} does not exist")]
    NotFound { entity: &'static str, id: String },
    /// A unique field is already taken.
    #[error("another {entity} already has this {field}")]
    Conflict { entity: &'static str, field: String },
    /// A row could not be turned into a domain value: the database holds
    /// something this version does not understand.
    #[error("stored {entity} is invalid: {detail}")]
    Corrupt { entity: &'static str, detail: String },
    /// The parent is archived, so nothing new may be added to it.
    #[error("{entity} {id} is archived; unarchive it first")]
    ParentArchived { entity: &'static str, id: String },
    /// The row kept changing under us; the caller may retry.
    #[error("{entity} was changed concurrently; try again")]
    Contended { entity: &'static str },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the database could not be reached at all (down, restarting,
    /// out of connections), as opposed to refusing one query.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable_reason().is_some()
    }

    /// Why the database could not be reached, in words safe to show (no
    /// addresses or credentials); `None` when it was reached.
    pub fn unavailable_reason(&self) -> Option<&'static str> {
        match self {
            StoreError::Database(sqlx::Error::PoolTimedOut) => Some("no connection could be had in time"),
            StoreError::Database(sqlx::Error::PoolClosed) => Some("the server is shutting down"),
            StoreError::Database(sqlx::Error::Io(_)) => Some("the connection failed"),
            _ => None,
        }
    }

    pub(crate) fn not_found(entity: &'static str, id: impl ToString) -> Self {
        StoreError::NotFound { entity, id: id.to_string() }
    }

    /// Maps a unique violation to [`StoreError::Conflict`] naming the column.
    pub(crate) fn from_write(entity: &'static str, table: &str, err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err
            && db.is_unique_violation()
        {
            return StoreError::Conflict { entity, field: unique_column(table, db.constraint(), db.message()) };
        }
        StoreError::Database(err)
    }
}

/// Which column a unique violation is about. PostgreSQL names the
/// constraint (`projects_slug_key`: unique constraints and indexes are named
/// `<table>_<column>_key` in our migrations); SQLite names the columns in its
/// message (`UNIQUE constraint failed: projects.slug`).
fn unique_column(table: &str, constraint: Option<&str>, message: &str) -> String {
    if let Some(name) = constraint {
        let name = name.strip_suffix("_key").unwrap_or(name);
        let name = name.strip_prefix(table).and_then(|n| n.strip_prefix('_')).unwrap_or(name);
        return name.to_owned();
    }
    message
        .rsplit(": ")
        .next()
        .and_then(|cols| cols.split(", ").last())
        .and_then(|col| col.split('.').nth(1))
        .unwrap_or("value")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::unique_column;

    #[test]
    fn unique_columns_are_named_on_both_backends() {
        assert_eq!(unique_column("projects", Some("projects_slug_key"), ""), "slug");
        assert_eq!(unique_column("tickets", Some("tickets_external_id_key"), ""), "external_id");
        assert_eq!(unique_column("projects", None, "UNIQUE constraint failed: projects.slug"), "slug");
        assert_eq!(
            unique_column(
                "tickets",
                None,
                "UNIQUE constraint failed: tickets.project_id, tickets.source, tickets.external_id"
            ),
            "external_id"
        );
    }
}
