//! `meta.db`: the SQLite record of envelopes and events, for queries.
//!
//! The `events` and `envelopes` tables are an index of the event logs
//! (`logs/events-*.jsonl`), brought up to date by [`Store::catch_up`]: the
//! daemon runs it as events happen and on every tick, `netsky query` before it
//! answers. Short-lived commands (`channel send`, `drain`) only append to the
//! log, so SQLite's open and WAL recovery (measured at 1 to 5 ms) stay off the
//! send path. A cursor per log file, moved in the same transaction as the
//! rows it covers, makes catching up idempotent and safe to run from several
//! processes at once.
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

use netsky_bus::Envelope;
use rusqlite::OptionalExtension;

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
    // 3: how far each event log has been read into `events` and `envelopes`.
    "CREATE TABLE log_cursor (
        file TEXT PRIMARY KEY,
        offset INTEGER NOT NULL
    );",
];

/// The schema version from which events are indexed from the logs rather than written directly.
const INDEXED_FROM_LOGS: i64 = 3;

/// At most this much of a log is read in one transaction.
const CATCH_UP_CHUNK: u64 = 8 << 20;

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
            if i + 1 == INDEXED_FROM_LOGS as usize && version > 0 {
                // An older netsky wrote this database's events directly: the logs
                // as they stand now are already in it, so the cursors start at their ends.
                for (file, len) in log_files(&logs_of(path)) {
                    tx.execute(
                        "INSERT OR REPLACE INTO log_cursor (file, offset) VALUES (?1, ?2)",
                        params![file, len],
                    )?;
                }
            }
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store { conn })
    }

    /// Reads what the event logs in `logs` gained since the last call into
    /// `events` and `envelopes`; returns the number of lines taken.
    ///
    /// Only whole lines count (a writer may be mid-append); a line that does
    /// not parse is skipped with a warning, never retried forever.
    pub fn catch_up(&mut self, logs: &Path) -> Result<usize> {
        let mut taken = 0;
        // One read of every cursor: the write lock is taken only for logs that grew.
        let cursors: std::collections::HashMap<String, i64> = {
            let mut st = self.conn.prepare("SELECT file, offset FROM log_cursor")?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        for (file, len) in log_files(logs) {
            if cursors.get(&file).is_some_and(|&at| at == len as i64) {
                continue;
            }
            let path = logs.join(&file);
            // Up to the length seen now: a log that grows meanwhile is for the next call.
            loop {
                let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let at: u64 = tx
                    .query_row("SELECT offset FROM log_cursor WHERE file = ?1", [&file], |r| {
                        r.get::<_, i64>(0)
                    })
                    .optional()?
                    .unwrap_or(0)
                    .max(0) as u64;
                let (lines, next) = read_lines(&path, at)?;
                if next == at {
                    break;
                }
                let (n, bad) = insert_lines(&tx, &lines)?;
                if bad > 0 {
                    tracing::warn!(log = %path.display(), offset = at, lines = bad, "unparsable event log lines skipped");
                }
                tx.execute(
                    "INSERT OR REPLACE INTO log_cursor (file, offset) VALUES (?1, ?2)",
                    params![file, next as i64],
                )?;
                tx.commit()?;
                taken += n;
                if next >= len {
                    break;
                }
            }
        }
        Ok(taken)
    }
}

/// Brings meta.db up to date with the logs before it is read. A failure
/// (locked, damaged, newer schema) is a warning: the logs stay the truth.
pub fn refresh(db: &Path) {
    let logs = logs_of(db);
    if !logs.is_dir() {
        return;
    }
    if let Err(e) = Store::open(db).and_then(|mut s| s.catch_up(&logs)) {
        tracing::warn!(db = %db.display(), error = %format!("{e:#}"), "meta.db not brought up to date with the logs");
    }
}

/// The logs folder beside `meta.db`.
fn logs_of(db: &Path) -> std::path::PathBuf {
    db.with_file_name("logs")
}

/// The event logs in `logs` (`events-*.jsonl`), oldest first, with their lengths.
fn log_files(logs: &Path) -> Vec<(String, u64)> {
    let Ok(rd) = std::fs::read_dir(logs) else { return Vec::new() };
    let mut v: Vec<(String, u64)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let meta = e.metadata().ok()?;
            (name.starts_with("events-") && name.ends_with(".jsonl") && meta.is_file())
                .then_some((name, meta.len()))
        })
        .collect();
    v.sort();
    v
}

/// The whole lines of `path` from byte `at` (at most one chunk), and the offset after them.
///
/// A file shorter than `at` was replaced: its new content is read from the start.
fn read_lines(path: &Path, at: u64) -> Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let len = f.metadata()?.len();
    let at = if len < at { 0 } else { at };
    f.seek(SeekFrom::Start(at))?;
    let mut buf = Vec::new();
    f.take(CATCH_UP_CHUNK).read_to_end(&mut buf).with_context(|| format!("read {}", path.display()))?;
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(end) => {
            buf.truncate(end + 1);
            Ok((buf, at + end as u64 + 1))
        }
        // A line longer than a whole chunk is no event line: step over it.
        None if buf.len() as u64 == CATCH_UP_CHUNK => Ok((Vec::new(), at + CATCH_UP_CHUNK)),
        None => Ok((Vec::new(), at)),
    }
}

/// One line of an event log, as read back.
#[derive(serde::Deserialize)]
struct LogLine {
    ts: String,
    node: String,
    event: String,
    agent: Option<String>,
    envelope: Option<String>,
    detail: Option<String>,
    env: Option<serde_json::Value>,
}

/// Inserts the events (and envelopes, once) of `lines`; returns (taken, unparsable).
fn insert_lines(tx: &rusqlite::Transaction<'_>, lines: &[u8]) -> Result<(usize, usize)> {
    let (mut n, mut bad) = (0, 0);
    {
        let mut env_stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO envelopes
                 (id, kind, from_addr, to_addr, ts, origin, text, in_reply_to, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut ev_stmt = tx.prepare_cached(
                "INSERT INTO events (ts, node, event, agent, envelope_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(e) = serde_json::from_slice::<LogLine>(line) else {
                bad += 1;
                continue;
            };
            let env =
                e.env.and_then(|v| serde_json::to_vec(&v).ok()).and_then(|b| Envelope::from_json(&b).ok());
            if let Some(env) = &env {
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
            n += 1;
        }
    }
    Ok((n, bad))
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

    fn count(p: &Path, sql: &str) -> i64 {
        open_read_only(p).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn catching_up_reads_whole_lines_once_and_keeps_envelopes() {
        use netsky_bus::{Address, AgentName, Kind, NodeName};
        let d = tempfile::tempdir().unwrap();
        let (db, logs) = (d.path().join("meta.db"), d.path().join("logs"));
        std::fs::create_dir_all(&logs).unwrap();
        let key = netsky_keys::SecretKey::generate();
        let node: NodeName = "work".parse().unwrap();
        let env = Envelope::new(
            &key,
            Kind::Message,
            Address::agent(AgentName::ROOT, node.clone()),
            Address::agent(AgentName::Numbered(1), node),
            "hello".to_string(),
            None,
        )
        .unwrap();
        let env_json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        let sent = serde_json::json!({"ts": "t1", "node": "work", "event": "sent", "agent": "agent1",
            "envelope": env.id.to_string(), "env": env_json});
        let log = logs.join("events-2026-11-25.jsonl");
        // A whole line, a line that is no event, and a line still being written.
        std::fs::write(&log, format!("{sent}\nnot json\n{{\"ts\": \"t2\", \"no")).unwrap();
        let mut s = Store::open(&db).unwrap();
        assert_eq!(s.catch_up(&logs).unwrap(), 1);
        assert_eq!(s.catch_up(&logs).unwrap(), 0, "nothing twice");
        assert_eq!(count(&db, "SELECT count(*) FROM envelopes WHERE text = 'hello'"), 1);
        // The writer finishes its line; a second store (another process) takes only that.
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"de\": \"work\", \"event\": \"claimed\"}\n").unwrap();
        let mut other = Store::open(&db).unwrap();
        assert_eq!(other.catch_up(&logs).unwrap(), 1);
        assert_eq!(s.catch_up(&logs).unwrap(), 0);
        assert_eq!(count(&db, "SELECT count(*) FROM events"), 2);
    }

    #[test]
    fn an_older_database_does_not_take_its_logs_twice() {
        let d = tempfile::tempdir().unwrap();
        let (db, logs) = (d.path().join("meta.db"), d.path().join("logs"));
        std::fs::create_dir_all(&logs).unwrap();
        // Schema 2, as an older netsky left it, with its log already recorded.
        let c = Connection::open(&db).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(MIGRATIONS[1]).unwrap();
        c.pragma_update(None, "user_version", 2).unwrap();
        drop(c);
        std::fs::write(
            logs.join("events-2026-11-24.jsonl"),
            "{\"ts\":\"t\",\"node\":\"w\",\"event\":\"sent\"}\n",
        )
        .unwrap();
        let mut s = Store::open(&db).unwrap();
        assert_eq!(s.catch_up(&logs).unwrap(), 0);
    }
}
