//! `meta.db`: the SQLite record of envelopes and events, for queries.
//!
//! WAL mode with `synchronous = NORMAL`: a commit does not wait for fsync,
//! because the database is the record, not the truth (the files are). The
//! schema version lives in `PRAGMA user_version` and moves forward only,
//! through the numbered migrations below. A database newer than this binary
//! is left alone.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags, params};

use crate::record::Event;

/// Forward migrations; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: envelopes and their lifecycle events.
    "CREATE TABLE envelopes (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        from_addr TEXT NOT NULL,
        to_addr TEXT NOT NULL,
        ts TEXT NOT NULL,
        origin TEXT NOT NULL,
        text TEXT NOT NULL,
        in_reply_to TEXT,
        first_seen TEXT NOT NULL
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        node TEXT NOT NULL,
        event TEXT NOT NULL,
        agent TEXT,
        envelope_id TEXT,
        detail TEXT
    );
    CREATE INDEX events_by_envelope ON events(envelope_id);
    CREATE INDEX events_by_event ON events(event, ts);",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A read-write handle on meta.db.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating and migrating) meta.db; waits at most briefly for locks.
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        conn.busy_timeout(Duration::from_millis(500))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            bail!(
                "{} has schema version {version}, newer than this netsky ({SCHEMA_VERSION})",
                path.display()
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql).with_context(|| format!("migration to schema {}", i + 1))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store { conn })
    }

    /// Records events (and their envelopes, once) in one transaction.
    pub fn record(&mut self, events: &[Event]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut env_stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO envelopes
                 (id, kind, from_addr, to_addr, ts, origin, text, in_reply_to, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut ev_stmt = tx.prepare_cached(
                "INSERT INTO events (ts, node, event, agent, envelope_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for e in events {
                if let Some(env) = &e.env {
                    env_stmt.execute(params![
                        env.id.to_string(),
                        env.kind.as_str(),
                        env.from.to_string(),
                        env.to.to_string(),
                        netsky_bus::format_ts(env.ts),
                        env.origin.to_string(),
                        env.text,
                        env.in_reply_to.map(|u| u.to_string()),
                        e.ts,
                    ])?;
                }
                ev_stmt.execute(params![e.ts, e.node, e.event, e.agent, e.envelope, e.detail])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Opens meta.db strictly read-only, for `netsky query`.
pub fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.exists() {
        bail!("no meta.db at {} yet: nothing has been recorded in this home", path.display());
    }
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("open {} read-only", path.display()))?;
    conn.busy_timeout(Duration::from_secs(2))?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_set_the_schema_version() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.db");
        drop(Store::open(&p).unwrap());
        drop(Store::open(&p).unwrap());
        let c = open_read_only(&p).unwrap();
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_schema_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.db");
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(c);
        let e = Store::open(&p).err().unwrap().to_string();
        assert!(e.contains("newer"), "{e}");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.db");
        std::fs::write(&p, vec![0x42u8; 8192]).unwrap();
        assert!(Store::open(&p).is_err());
    }

    #[test]
    fn the_read_only_handle_refuses_writes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.db");
        drop(Store::open(&p).unwrap());
        let c = open_read_only(&p).unwrap();
        assert!(c.execute("DELETE FROM events", []).is_err());
    }
}
