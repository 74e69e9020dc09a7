//! What a transaction script needs from a database, so each script is written once (in
//! [`super::scripts`]) and runs on both backends: SQLite implements [`Exec`] for the writer's
//! `rusqlite::Connection` (inside its transaction; every call completes at once, so the script is
//! polled to completion on the writer thread), PostgreSQL for a `deadpool_postgres::Transaction`.

use super::row::Row;
use super::sql::Dialects;
use super::{Backend, StoreResult};

/// One bound value. Borrowed, so binding a script's arguments copies nothing; `Null` binds NULL
/// to a column of any type, every other variant only to a column of its own type (checked by
/// PostgreSQL's driver).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    Null,
    I64(i64),
    Text(&'a str),
    Bool(bool),
}

macro_rules! from_value {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl<'a> From<$t> for Param<'a> {
            fn from(v: $t) -> Self {
                Param::$variant(v)
            }
        }
        impl<'a> From<&'a $t> for Param<'a> {
            fn from(v: &'a $t) -> Self {
                Param::$variant(*v)
            }
        }
        impl<'a> From<Option<$t>> for Param<'a> {
            fn from(v: Option<$t>) -> Self {
                v.map_or(Param::Null, Param::$variant)
            }
        }
        impl<'a> From<&'a Option<$t>> for Param<'a> {
            fn from(v: &'a Option<$t>) -> Self {
                v.map_or(Param::Null, Param::$variant)
            }
        }
    )*};
}

from_value!(i64 => I64, bool => Bool);

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&&'a str> for Param<'a> {
    fn from(v: &&'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Param::Null, Param::Text)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a Option<String>> for Param<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().map_or(Param::Null, Param::Text)
    }
}

impl<'a> From<Option<&'a String>> for Param<'a> {
    fn from(v: Option<&'a String>) -> Self {
        v.map_or(Param::Null, |s| Param::Text(s))
    }
}

/// `&[Param]` of the given values, in placeholder order (`$1`, `$2`, …).
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$($crate::store::exec::Param::from($value)),*]
    };
}
pub(crate) use args;

/// A database connection inside a transaction, as transaction scripts use it. Statements are
/// prepared through the connection's statement cache, except by [`Exec::execute_uncached`].
pub(crate) trait Exec {
    const BACKEND: Backend;

    /// This backend's text of a statement whose dialects differ.
    fn pick<T: Copy>(&self, statement: &Dialects<T>) -> T {
        match Self::BACKEND {
            Backend::Sqlite => statement.sqlite,
            Backend::Postgres => statement.postgres,
        }
    }

    /// Runs a statement; returns how many rows it changed.
    async fn execute(&self, sql: &str, params: &[Param<'_>]) -> StoreResult<u64>;

    /// [`Exec::execute`] for a statement built at run time, kept out of the statement cache.
    async fn execute_uncached(&self, sql: &str, params: &[Param<'_>]) -> StoreResult<u64>;

    /// The first row of a query (or `None`), through `map`.
    async fn query_opt<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        map: impl Fn(&dyn Row) -> anyhow::Result<T> + Send,
    ) -> StoreResult<Option<T>>;
}

impl<'a> From<&'a super::sql::ColumnValue> for Param<'a> {
    fn from(v: &'a super::sql::ColumnValue) -> Self {
        use super::sql::ColumnValue;
        match v {
            ColumnValue::Text(v) => v.into(),
            ColumnValue::Int(v) => v.into(),
            ColumnValue::Bool(v) => v.into(),
        }
    }
}
