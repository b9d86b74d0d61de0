//! `meta.db`: the SQLite record of envelopes and events, for queries.
//!
//! The `events` and `envelopes` tables are an index of the event logs
//! (`logs/events-*.jsonl`), brought up to date by [`Store::index_logs`]: the
//! daemon runs it as events happen and on every tick, `netsky query` before it
//! answers. Short-lived commands (`channel send`, `drain`) only append to the
//! log, so SQLite's open and WAL recovery (measured at 1 to 5 ms) stay off the
//! send path. A cursor per log file, moved in the same transaction as the
//! rows it covers, makes indexing idempotent and safe to run from several
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

use crate::home::Home;

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
    // 4: clones and harvests. Appended, never rewritten: a clone's change of state is a new row.
    "CREATE TABLE clones (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        agent TEXT NOT NULL,
        workspace TEXT NOT NULL,
        state TEXT NOT NULL,
        repo TEXT NOT NULL,
        branch TEXT NOT NULL,
        brief_id TEXT,
        detail TEXT
    );
    CREATE INDEX clones_by_agent ON clones(agent, seq);
    CREATE TABLE harvests (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        agent TEXT NOT NULL,
        workspace TEXT NOT NULL,
        onto TEXT NOT NULL,
        outcome TEXT NOT NULL,
        old_head TEXT,
        new_head TEXT,
        detail TEXT
    );",
];

/// The schema version from which events are indexed from the logs rather than written directly.
const INDEXED_FROM_LOGS: i64 = 3;

/// At most this much of a log is read in one transaction.
const INDEX_CHUNK: u64 = 1 << 20;

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A read-write handle on meta.db.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating and migrating) meta.db; waits at most briefly for locks.
    pub fn open(path: &Path) -> Result<Store> {
        // A new database being set up by another process can refuse a
        // journal-mode switch outright (no busy wait): try again, for a second at most.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            match Self::open_once(path) {
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                r => return r,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        conn.busy_timeout(Duration::from_millis(500))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Every CLI call opens and closes the database; a checkpoint on each
        // close would cost four fsyncs per `channel send`. SQLite's automatic
        // checkpoint (every 1000 WAL pages) keeps the WAL bounded instead.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        not_newer(path, version)?;
        if version < SCHEMA_VERSION {
            Self::migrate(&mut conn, path)?;
        }
        Ok(Store { conn })
    }

    /// Brings the schema forward, under the write lock: two processes (or the
    /// daemon's two recorders) opening a new database at once must not both
    /// run a migration; the second waits, then finds nothing left to do.
    fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        not_newer(path, version)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).with_context(|| format!("migration to schema {}", i + 1))?;
            if i + 1 == INDEXED_FROM_LOGS as usize && version > 0 {
                // An older netsky wrote this database's events directly, up to its
                // newest event; lines logged after that (by this binary's commands,
                // which only log) are still to be read.
                let newest: Option<String> = tx.query_row("SELECT max(ts) FROM events", [], |r| r.get(0))?;
                let logs = logs_of(path);
                for (file, _) in log_files(&logs) {
                    let at = match &newest {
                        Some(ts) => offset_after(&logs.join(&file), ts)?,
                        None => 0,
                    };
                    tx.execute(
                        "INSERT OR REPLACE INTO log_cursor (file, offset) VALUES (?1, ?2)",
                        params![file, at as i64],
                    )?;
                }
            }
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// Reads what the event logs in `logs` gained since the last call into
    /// `events` and `envelopes`, at most `budget` bytes of them; returns the
    /// lines taken and whether the logs hold more.
    ///
    /// Only whole lines count (a writer may be mid-append); a line that does
    /// not parse is skipped with a warning, never retried forever.
    pub fn index_logs(&mut self, logs: &Path, budget: u64) -> Result<Indexed> {
        let mut taken = 0;
        let mut read = 0u64;
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
                if read >= budget {
                    return Ok(Indexed { lines: taken, behind: true });
                }
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
                read += next.saturating_sub(at);
                if next >= len {
                    break;
                }
            }
        }
        Ok(Indexed { lines: taken, behind: false })
    }
}

/// Refuses a database whose schema is newer than this binary: it is left alone.
fn not_newer(path: &Path, version: i64) -> Result<()> {
    if version > SCHEMA_VERSION {
        bail!("{} has schema version {version}, newer than this netsky ({SCHEMA_VERSION})", path.display());
    }
    Ok(())
}

/// What one [`Store::index_logs`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indexed {
    /// Log lines read into the database.
    pub lines: usize,
    /// The budget ran out before the end of the logs.
    pub behind: bool,
}

/// How much of the logs a reader (`query`, `channel status`) reads into
/// meta.db before it answers; the daemon reads the rest.
pub const REFRESH_BUDGET: u64 = 64 << 20;

/// Brings `home`'s meta.db up to date with its logs before it is read (up
/// to [`REFRESH_BUDGET`]). A failure (locked, damaged, newer schema) is a
/// warning: the logs stay the truth.
pub fn refresh(home: &Home) {
    let (db, logs) = (home.db_path(), home.logs_dir());
    if !logs.is_dir() {
        return;
    }
    match Store::open(&db).and_then(|mut s| s.index_logs(&logs, REFRESH_BUDGET)) {
        Ok(c) if c.behind => tracing::warn!(
            db = %db.display(),
            "meta.db is far behind the event logs; this answer misses the newest events (the daemon indexes them)"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(db = %db.display(), error = %format!("{e:#}"), "meta.db not brought up to date with the logs")
        }
    }
}

/// Whether `e` is SQLite saying another connection holds the lock (worth a later retry).
pub fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    })
}

/// The offset just past the last line of `path` logged at or before `ts`.
fn offset_after(path: &Path, ts: &str) -> Result<u64> {
    use std::io::BufRead;
    #[derive(serde::Deserialize)]
    struct Ts {
        ts: String,
    }
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let (mut at, mut after) = (0u64, 0u64);
    let mut r = std::io::BufReader::new(f);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).with_context(|| format!("read {}", path.display()))?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(after);
        }
        at += n as u64;
        if serde_json::from_slice::<Ts>(&line).is_ok_and(|l| l.ts.as_str() <= ts) {
            after = at;
        }
    }
}

/// The logs folder beside `meta.db`: a store knows only its own path, and a
/// home keeps the two side by side (see `Home::logs_dir`).
fn logs_of(db: &Path) -> std::path::PathBuf {
    db.with_file_name("logs")
}

/// The event log of `day`: `events-YYYY-MM-DD.jsonl`.
pub fn log_file_name(day: time::Date) -> String {
    format!("{LOG_PREFIX}{day}{LOG_SUFFIX}")
}

/// How event logs are named: the prefix and suffix around the day.
const LOG_PREFIX: &str = "events-";
const LOG_SUFFIX: &str = ".jsonl";

/// The event logs in `logs` (`events-*.jsonl`), oldest first, with their lengths.
fn log_files(logs: &Path) -> Vec<(String, u64)> {
    let Ok(rd) = std::fs::read_dir(logs) else { return Vec::new() };
    let mut v: Vec<(String, u64)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let meta = e.metadata().ok()?;
            (name.starts_with(LOG_PREFIX) && name.ends_with(LOG_SUFFIX) && meta.is_file())
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
    f.take(INDEX_CHUNK).read_to_end(&mut buf).with_context(|| format!("read {}", path.display()))?;
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(end) => {
            buf.truncate(end + 1);
            Ok((buf, at + end as u64 + 1))
        }
        // A line longer than a whole chunk is no event line: step over it.
        None if buf.len() as u64 == INDEX_CHUNK => Ok((Vec::new(), at + INDEX_CHUNK)),
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

/// Parses one log line. A line torn by a crash mid-append has the next
/// writer's whole line glued to it: that line, from its own `{"ts":`, still counts.
fn parse_line(line: &[u8]) -> Option<LogLine> {
    if let Ok(e) = serde_json::from_slice::<LogLine>(line) {
        return Some(e);
    }
    const START: &[u8] = b"{\"ts\":";
    let at = line.windows(START.len()).rposition(|w| w == START).filter(|&i| i > 0)?;
    serde_json::from_slice::<LogLine>(&line[at..]).ok()
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
            let Some(e) = parse_line(line) else {
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

/// One row of the `clones` table.
pub struct CloneRow<'a> {
    /// When.
    pub ts: &'a str,
    /// The clone's agent.
    pub agent: &'a str,
    /// Its workspace's name.
    pub workspace: &'a str,
    /// briefed, done, killed.
    pub state: &'a str,
    /// The repository it was cloned from.
    pub repo: &'a str,
    /// The branch it works on.
    pub branch: &'a str,
    /// The brief's envelope id.
    pub brief_id: Option<&'a str>,
    /// More, in words.
    pub detail: Option<&'a str>,
}

/// One row of the `harvests` table.
pub struct HarvestRow<'a> {
    /// When.
    pub ts: &'a str,
    /// The clone's agent.
    pub agent: &'a str,
    /// Its workspace's name.
    pub workspace: &'a str,
    /// The target branch.
    pub onto: &'a str,
    /// landed or refused.
    pub outcome: &'a str,
    /// The target before.
    pub old_head: Option<&'a str>,
    /// The target after (landed) or the rebased head (refused after the rebase).
    pub new_head: Option<&'a str>,
    /// Why, in words.
    pub detail: Option<&'a str>,
}

impl Store {
    /// Appends a clone's change of state.
    pub fn insert_clone(&mut self, r: &CloneRow<'_>) -> Result<()> {
        self.conn.execute(
            "INSERT INTO clones (ts, agent, workspace, state, repo, branch, brief_id, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![r.ts, r.agent, r.workspace, r.state, r.repo, r.branch, r.brief_id, r.detail],
        )?;
        Ok(())
    }

    /// Appends a harvest's outcome.
    pub fn insert_harvest(&mut self, r: &HarvestRow<'_>) -> Result<()> {
        self.conn.execute(
            "INSERT INTO harvests (ts, agent, workspace, onto, outcome, old_head, new_head, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![r.ts, r.agent, r.workspace, r.onto, r.outcome, r.old_head, r.new_head, r.detail],
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

    /// A temp home: (its guard, meta.db path, logs folder made).
    fn home() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let (db, logs) = (d.path().join("meta.db"), d.path().join("logs"));
        std::fs::create_dir_all(&logs).unwrap();
        (d, db, logs)
    }

    fn count(p: &Path, sql: &str) -> i64 {
        open_read_only(p).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn indexing_reads_whole_lines_once_and_keeps_envelopes() {
        use netsky_bus::{Address, AgentName, Kind, NodeName};
        let (_d, db, logs) = home();
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
        assert_eq!(s.index_logs(&logs, u64::MAX).unwrap().lines, 1);
        assert_eq!(s.index_logs(&logs, u64::MAX).unwrap().lines, 0, "nothing twice");
        assert_eq!(count(&db, "SELECT count(*) FROM envelopes WHERE text = 'hello'"), 1);
        // The writer finishes its line; a second store (another process) takes only that.
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"de\": \"work\", \"event\": \"claimed\"}\n").unwrap();
        let mut other = Store::open(&db).unwrap();
        assert_eq!(other.index_logs(&logs, u64::MAX).unwrap().lines, 1);
        assert_eq!(s.index_logs(&logs, u64::MAX).unwrap().lines, 0);
        assert_eq!(count(&db, "SELECT count(*) FROM events"), 2);
    }

    #[test]
    fn an_older_database_takes_only_the_lines_logged_after_its_newest_event() {
        let (_d, db, logs) = home();
        // Schema 2, as an older netsky left it: it recorded the first event itself.
        let c = Connection::open(&db).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(MIGRATIONS[1]).unwrap();
        c.execute(
            "INSERT INTO events (ts, node, event) VALUES ('2026-11-24T10:00:00.000Z', 'w', 'sent')",
            [],
        )
        .unwrap();
        c.pragma_update(None, "user_version", 2).unwrap();
        drop(c);
        // The new binary's send only logged the second one.
        let lines = [
            r#"{"ts":"2026-11-24T10:00:00.000Z","node":"w","event":"sent"}"#,
            r#"{"ts":"2026-11-24T10:00:01.000Z","node":"w","event":"claimed"}"#,
        ];
        std::fs::write(logs.join("events-2026-11-24.jsonl"), lines.join("\n") + "\n").unwrap();
        let mut s = Store::open(&db).unwrap();
        assert_eq!(s.index_logs(&logs, u64::MAX).unwrap().lines, 1);
        assert_eq!(count(&db, "SELECT count(*) FROM events WHERE event = 'claimed'"), 1);
        assert_eq!(count(&db, "SELECT count(*) FROM events"), 2);
    }

    #[test]
    fn a_line_torn_by_a_crash_keeps_the_whole_line_glued_to_it() {
        let (_d, db, logs) = home();
        let text = concat!(
            r#"{"ts":"t1","node":"w","event":"se"#,
            r#"{"ts":"t2","node":"w","event":"claimed"}"#,
            "\n",
            r#"{"ts":"t3","node":"w","event":"delivered"}"#,
            "\n"
        );
        std::fs::write(logs.join("events-2026-11-25.jsonl"), text).unwrap();
        let mut s = Store::open(&db).unwrap();
        assert_eq!(s.index_logs(&logs, u64::MAX).unwrap().lines, 2);
        assert_eq!(count(&db, "SELECT count(*) FROM events WHERE event IN ('claimed', 'delivered')"), 2);
    }

    #[test]
    fn a_budget_stops_indexing_early_and_the_next_call_goes_on() {
        let (_d, db, logs) = home();
        for day in ["2026-11-24", "2026-11-25"] {
            let line = format!(r#"{{"ts":"{day}","node":"w","event":"sent"}}"#);
            std::fs::write(logs.join(format!("events-{day}.jsonl")), line + "\n").unwrap();
        }
        let mut s = Store::open(&db).unwrap();
        let first = s.index_logs(&logs, 1).unwrap();
        assert_eq!((first.lines, first.behind), (1, true));
        let rest = s.index_logs(&logs, u64::MAX).unwrap();
        assert_eq!((rest.lines, rest.behind), (1, false));
    }

    #[test]
    fn stores_indexing_at_once_take_every_line_exactly_once() {
        let (_d, db, logs) = home();
        let n = 30_000;
        let text: String = (0..n)
            .map(|i| format!(r#"{{"ts":"t{i:06}","node":"w","event":"sent","detail":"line {i}"}}"#) + "\n")
            .collect();
        std::fs::write(logs.join("events-2026-11-25.jsonl"), text).unwrap();
        drop(Store::open(&db).unwrap());
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    let mut s = Store::open(&db).unwrap();
                    loop {
                        match s.index_logs(&logs, u64::MAX) {
                            Ok(c) if !c.behind && c.lines == 0 => break,
                            Ok(_) => {}
                            Err(e) if is_busy(&e) => {}
                            Err(e) => panic!("{e:#}"),
                        }
                    }
                });
            }
        });
        assert_eq!(count(&db, "SELECT count(*) FROM events"), n);
        assert_eq!(count(&db, "SELECT count(DISTINCT detail) FROM events"), n);
    }

    #[test]
    fn opening_a_new_database_from_several_threads_at_once_migrates_it_once() {
        for _ in 0..20 {
            let (_d, db, _) = home();
            std::thread::scope(|sc| {
                let opens: Vec<_> = (0..4).map(|_| sc.spawn(|| Store::open(&db).map(|_| ()))).collect();
                for o in opens {
                    o.join().unwrap().expect("every opener gets the database");
                }
            });
            let c = open_read_only(&db).unwrap();
            let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
            assert_eq!(v, SCHEMA_VERSION);
        }
    }
}
