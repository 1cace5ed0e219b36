//! Statements built per filter combination.
//!
//! A catch-all statement (`$3 IS NULL OR project_id = $3 …`) is one plan for
//! every combination, and under a generic plan PostgreSQL scans the whole
//! table for it. A list query is instead assembled here from the filters that
//! are set, so each combination is its own statement with its own plan (and
//! its own prepared-statement cache entry: there are few combinations). The
//! text is the same for both backends: both accept `$n` placeholders.

use std::fmt::Write;
use uuid::Uuid;

/// One bound value.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Uuid(Uuid),
    Text(String),
    Int(i64),
}

/// A statement being assembled: its text and its arguments, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sql {
    pub(crate) text: String,
    pub(crate) args: Vec<Arg>,
    /// Planned for its values each time rather than prepared once: for a
    /// statement whose best plan depends on them (a search term), which
    /// PostgreSQL's generic plan for a prepared statement gets wrong (an index
    /// walk filtering every row, 10× the cost of the trigram index's plan).
    pub(crate) one_shot: bool,
}

impl Sql {
    pub(crate) fn new(head: &'static str) -> Self {
        Sql { text: head.to_owned(), args: Vec::new(), one_shot: false }
    }

    /// A statement read from the database's own catalogue (the claim
    /// function's source, for `EXPLAIN`): never text from a request.
    pub(crate) fn from_catalogue(text: String) -> Self {
        Sql { text, args: Vec::new(), one_shot: true }
    }

    /// Appends literal SQL.
    pub(crate) fn push(&mut self, sql: &'static str) -> &mut Self {
        self.text.push_str(sql);
        self
    }

    /// Appends a placeholder bound to `arg`.
    pub(crate) fn arg(&mut self, arg: Arg) -> &mut Self {
        self.args.push(arg);
        // Writing to a String cannot fail.
        let _ = write!(self.text, "${}", self.args.len());
        self
    }

    /// Appends `sql` then a placeholder bound to `arg`: `.and(" AND project_id = ", id)`.
    pub(crate) fn and(&mut self, sql: &'static str, arg: Arg) -> &mut Self {
        self.push(sql).arg(arg)
    }
}

/// Builds a `sqlx::query` of `$sql` with its arguments bound.
macro_rules! bound {
    ($sql:expr) => {{
        let sql: &$crate::sql::Sql = &$sql;
        // Only this module's literals and `$n` placeholders make up the text;
        // every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.text.clone()));
        for arg in &sql.args {
            query = match arg {
                $crate::sql::Arg::Uuid(u) => query.bind(*u),
                $crate::sql::Arg::Text(t) => query.bind(t.clone()),
                $crate::sql::Arg::Int(i) => query.bind(*i),
            };
        }
        query.persistent(!sql.one_shot)
    }};
}
pub(crate) use bound;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut sql = Sql::new("SELECT 1 FROM t WHERE true");
        sql.and(" AND a = ", Arg::Int(1)).and(" AND b = ", Arg::Text("x".into())).push(" LIMIT ").arg(Arg::Int(5));
        assert_eq!(sql.text, "SELECT 1 FROM t WHERE true AND a = $1 AND b = $2 LIMIT $3");
        assert_eq!(sql.args.len(), 3);
    }
}
