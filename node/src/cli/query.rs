//! `netsky query SQL`: read-only SQL over meta.db.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use rusqlite::types::ValueRef;

use crate::output::{Ctx, emit};
use crate::store::open_read_only;

/// A query may run this long before it is interrupted.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a failed query says: interrupted, refused as a write, or SQLite's own words.
fn explain(e: rusqlite::Error) -> anyhow::Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::OperationInterrupted) => {
            anyhow::anyhow!("query interrupted: it ran past {} s", QUERY_TIMEOUT.as_secs())
        }
        Some(rusqlite::ErrorCode::ReadOnly) => {
            anyhow::anyhow!("query refused: netsky query is read-only ({e})")
        }
        _ => anyhow::anyhow!("query failed: {e}"),
    }
}

/// Arguments of `netsky query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// One SQL statement; the database is opened read-only.
    sql: String,
    /// Print at most this many rows.
    #[arg(long, default_value_t = 10_000)]
    limit: usize,
}

/// Runs `netsky query`.
pub fn run(ctx: &Ctx, a: QueryArgs) -> Result<ExitCode> {
    crate::store::refresh(&ctx.home);
    let conn = open_read_only(&ctx.home.db_path())?;
    let deadline = Instant::now() + QUERY_TIMEOUT;
    conn.progress_handler(10_000, Some(move || Instant::now() > deadline));
    let mut stmt = conn.prepare(&a.sql).map_err(explain)?;
    let names: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
    let mut rows = stmt.query([]).map_err(explain)?;
    let mut out: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
    let mut truncated = false;
    while let Some(row) = rows.next().map_err(explain)? {
        if out.len() == a.limit {
            truncated = true;
            break;
        }
        let mut m = serde_json::Map::new();
        for (i, n) in names.iter().enumerate() {
            let v = match row.get_ref(i).with_context(|| format!("column {n}"))? {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(i) => i.into(),
                ValueRef::Real(f) => {
                    serde_json::Number::from_f64(f).map(Into::into).unwrap_or(serde_json::Value::Null)
                }
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                ValueRef::Blob(b) => b.iter().map(|x| format!("{x:02x}")).collect::<String>().into(),
            };
            m.insert(n.clone(), v);
        }
        out.push(m);
    }
    if truncated {
        eprintln!("netsky: output cut at {} rows (--limit)", a.limit);
    }
    emit(ctx, &out, || {
        let mut s = names.join("\t");
        for r in &out {
            let cells: Vec<String> = names
                .iter()
                .map(|n| match &r[n] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "NULL".into(),
                    v => v.to_string(),
                })
                .collect();
            s.push('\n');
            s.push_str(&cells.join("\t"));
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_which_kind_they_are() {
        let failure = |code: i32, msg: &str| {
            explain(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(msg.into())))
                .to_string()
        };
        assert_eq!(
            failure(rusqlite::ffi::SQLITE_INTERRUPT, "interrupted"),
            "query interrupted: it ran past 10 s"
        );
        assert!(failure(rusqlite::ffi::SQLITE_READONLY, "attempt to write").contains("read-only"));
        assert_eq!(
            failure(rusqlite::ffi::SQLITE_ERROR, "no such table: x"),
            "query failed: no such table: x"
        );
    }
}
