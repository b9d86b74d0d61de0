//! `meta.db`: the SQLite record of envelopes and events, for queries.
//!
//! WAL mode with `synchronous = NORMAL`: a commit does not wait for fsync,
//! because the database is the record, not the truth (the files are), and
//! no checkpoint on close, so a short-lived CLI call pays no fsync for it. The
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
    // 2: the constellation's watchdog: escalations, restarts and agent markers.
    // Rows are appended, never rewritten: a marker's clearing is a new row.
    "CREATE TABLE escalations (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        opened TEXT NOT NULL,
        source TEXT NOT NULL,
        agent TEXT
    );
    CREATE TABLE restarts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        agent TEXT NOT NULL,
        reason TEXT NOT NULL,
        ok INTEGER NOT NULL,
        detail TEXT
    );
    CREATE INDEX restarts_by_agent ON restarts(agent, ts);
    CREATE TABLE agent_markers (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        agent TEXT NOT NULL,
        marker TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('set', 'cleared')),
        detail TEXT
    );
    CREATE INDEX agent_markers_by_agent ON agent_markers(agent, marker, seq);",
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
        // Every CLI call opens and closes the database; a checkpoint on each
        // close would cost four fsyncs per `channel send`. SQLite's automatic
        // checkpoint (every 1000 WAL pages) keeps the WAL bounded instead.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
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

/// One row of the `escalations` table.
pub struct EscalationRow<'a> {
    /// The incident id (a ULID).
    pub id: &'a str,
    /// One-line subject.
    pub subject: &'a str,
    /// What happened.
    pub body: &'a str,
    /// When it was opened.
    pub opened: &'a str,
    /// Who opened it (`watchdog`, ...).
    pub source: &'a str,
    /// The agent concerned, if any.
    pub agent: Option<&'a str>,
}

impl Store {
    /// Records an opened escalation (once per id).
    pub fn insert_escalation(&mut self, e: &EscalationRow<'_>) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO escalations (id, subject, body, opened, source, agent)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.id, e.subject, e.body, e.opened, e.source, e.agent],
        )?;
        Ok(())
    }

    /// Appends a restart attempt of `agent`.
    pub fn insert_restart(
        &mut self,
        ts: &str,
        agent: &str,
        reason: &str,
        ok: bool,
        detail: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO restarts (ts, agent, reason, ok, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![ts, agent, reason, ok, detail],
        )?;
        Ok(())
    }

    /// Appends a marker change (`set` or `cleared`) of `agent`.
    pub fn insert_marker(
        &mut self,
        ts: &str,
        agent: &str,
        marker: &str,
        set: bool,
        detail: Option<&str>,
    ) -> Result<()> {
        let state = if set { "set" } else { "cleared" };
        self.conn.execute(
            "INSERT INTO agent_markers (ts, agent, marker, state, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![ts, agent, marker, state, detail],
        )?;
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
    fn watchdog_rows_append_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.db");
        let mut s = Store::open(&p).unwrap();
        let row = EscalationRow {
            id: "01J",
            subject: "s",
            body: "b",
            opened: "t",
            source: "watchdog",
            agent: Some("agent1"),
        };
        s.insert_escalation(&row).unwrap();
        s.insert_escalation(&row).unwrap();
        s.insert_restart("t", "agent1", "dead", true, None).unwrap();
        s.insert_marker("t", "agent1", "hang-suspected", true, None).unwrap();
        s.insert_marker("t", "agent1", "hang-suspected", false, None).unwrap();
        let c = open_read_only(&p).unwrap();
        let n = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(n("SELECT count(*) FROM escalations"), 1);
        assert_eq!(n("SELECT count(*) FROM restarts WHERE ok = 1"), 1);
        assert_eq!(n("SELECT count(*) FROM agent_markers WHERE state = 'cleared'"), 1);
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
