//! The embedded store: one SQLite file (`airlock.db`, write-ahead log) in the data
//! directory, so `airlock serve` works with no setup.
//!
//! Several airlock processes may share a data directory (a server and a few
//! `airlock mcp` processes, say). Each open store is an *instance* that holds an
//! exclusive `flock` on `instances/<id>.lock` for as long as it lives; records carry
//! the instance that accepted them. At start-up, the records of instances whose lock
//! is free (their process died) and that are still `running` are marked `lost`.
//!
//! Schema 2 added what is remembered of sessions (`sandboxes`), idempotency keys
//! (`idempotency`) and the kept answer of an idempotent execution
//! (`executions.response`). New databases use incremental auto-vacuum, so
//! pruning gives space back to the file system; a database made by schema 1 keeps its
//! size and reuses the freed pages instead.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use airlock_core::{Error, Language};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::{
    AuditStore, END_SERVER_STOPPED, ExecutionEnd, ExecutionPage, ExecutionQuery, ExecutionRecord, ExecutionStart,
    IdempotencyKey, IdempotencyStore, KeyInfo, KeyStore, KeyUse, NewKey, Pruned, RecordStatus, Retention,
    SandboxRecord, SandboxStart, SandboxStore, now_ms, rfc3339,
};

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// Rows deleted per pruning transaction: other writers wait for at most one batch.
const PRUNE_BATCH: i64 = 100;

/// The write-ahead log is truncated to this size when it restarts.
const JOURNAL_SIZE_LIMIT: i64 = 8 << 20;

/// Pages given back per incremental-vacuum step.
const VACUUM_STEP_PAGES: i64 = 256;

/// How much a probe writes: about one record's worth, so that a store with room for
/// a probe has room for a record.
const PROBE_BYTES: i64 = 64 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS executions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    instance TEXT NOT NULL,
    kind TEXT NOT NULL,
    key_id TEXT,
    sandbox_id TEXT,
    backend TEXT,
    language TEXT NOT NULL,
    code TEXT NOT NULL,
    code_bytes INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    exit_code INTEGER,
    stdout TEXT NOT NULL DEFAULT '',
    stderr TEXT NOT NULL DEFAULT '',
    output_truncated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    usage TEXT,
    created_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER,
    response TEXT
);
CREATE INDEX IF NOT EXISTS executions_by_key ON executions(key_id, seq);
CREATE INDEX IF NOT EXISTS executions_by_sandbox ON executions(sandbox_id, seq);
CREATE INDEX IF NOT EXISTS executions_running ON executions(instance) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    max_sandboxes INTEGER,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    key_id TEXT,
    backend TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    end_cause TEXT
);
CREATE INDEX IF NOT EXISTS sandboxes_live ON sandboxes(instance) WHERE ended_at_ms IS NULL;
CREATE INDEX IF NOT EXISTS sandboxes_by_end ON sandboxes(ended_at_ms) WHERE ended_at_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    resource_id TEXT,
    instance TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency(created_at_ms);
CREATE INDEX IF NOT EXISTS idempotency_by_resource ON idempotency(resource_id);
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v BLOB
);
";

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    instance: String,
    instances_dir: PathBuf,
    _instance_lock: Option<Flock<File>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).field("instance", &self.instance).finish()
    }
}

fn db_err(what: &str, e: rusqlite::Error) -> Error {
    Error::host(format!("audit store: {what}: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) `airlock.db` in `data_dir` as a new instance.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| Error::io(format!("creating the data directory {}", data_dir.display()), e))?;
        let instances_dir = data_dir.join("instances");
        std::fs::create_dir_all(&instances_dir)
            .map_err(|e| Error::io(format!("creating {}", instances_dir.display()), e))?;
        let instance = airlock_core::new_id("ins");
        let lock_path = instances_dir.join(format!("{instance}.lock"));
        let f = File::create(&lock_path).map_err(|e| Error::io(format!("creating {}", lock_path.display()), e))?;
        let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| Error::host(format!("locking {}: {}", lock_path.display(), e.desc())))?;
        let path = data_dir.join("airlock.db");
        let conn = Connection::open(&path).map_err(|e| db_err(&format!("opening {}", path.display()), e))?;
        Self::init(&conn)?;
        Ok(SqliteStore { conn: Mutex::new(conn), path, instance, instances_dir, _instance_lock: Some(lock) })
    }

    /// A store in memory (tests): no other instance can exist.
    pub fn in_memory() -> Result<Self, Error> {
        let conn = Connection::open_in_memory().map_err(|e| db_err("opening in memory", e))?;
        Self::init(&conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: PathBuf::from(":memory:"),
            instance: airlock_core::new_id("ins"),
            instances_dir: PathBuf::new(),
            _instance_lock: None,
        })
    }

    fn init(conn: &Connection) -> Result<(), Error> {
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| db_err("setting the busy timeout", e))?;
        // Takes effect only in a database without tables yet (a new one): pruning then
        // shrinks the file. An older database reuses freed pages instead.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(|e| db_err("setting auto_vacuum", e))?;
        // `journal_mode` answers with the mode; in memory it stays `memory`.
        let _: String =
            conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(|e| db_err("enabling WAL", e))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| db_err("setting synchronous", e))?;
        // The log is cut back to this size when it restarts after a checkpoint, so
        // that it does not stay at its largest size for ever.
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
            .map_err(|e| db_err("setting journal_size_limit", e))?;
        let version: i64 =
            conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| db_err("reading the version", e))?;
        if version > SCHEMA_VERSION {
            return Err(Error::host(format!(
                "audit store: the database was written by a newer airlock (schema {version}, this one knows {SCHEMA_VERSION}); upgrade airlock or use another --data-dir"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(|e| db_err("creating tables", e))?;
        if version < 2 {
            let has_response: bool = conn
                .query_row("SELECT COUNT(*) FROM pragma_table_info('executions') WHERE name = 'response'", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(|e| db_err("reading the schema", e))?
                > 0;
            if !has_response {
                conn.execute_batch("ALTER TABLE executions ADD COLUMN response TEXT;")
                    .map_err(|e| db_err("upgrading the schema to version 2", e))?;
            }
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(|e| db_err("setting the version", e))?;
        Ok(())
    }

    /// Bytes of data in the database: its pages less the free ones.
    pub fn data_bytes(&self) -> Result<u64, Error> {
        data_bytes(&self.conn())
    }

    /// Whether the instance `id` still lives (holds its lock). This instance lives;
    /// in memory, no other instance can.
    fn instance_alive(&self, id: &str) -> bool {
        if id == self.instance {
            return true;
        }
        if self._instance_lock.is_none() {
            return false;
        }
        let Ok(f) = File::open(self.instances_dir.join(format!("{id}.lock"))) else { return false };
        matches!(Flock::lock(f, FlockArg::LockExclusiveNonblock), Err((_, Errno::EWOULDBLOCK)))
    }

    /// What `key` stood for, if it still stands for something: a use whose execution
    /// or session record expired, or a sandbox claim of a dead server, is deleted and
    /// `None` returned (the key is free).
    fn prior_use(&self, tx: &Transaction<'_>, key: &IdempotencyKey) -> rusqlite::Result<Option<KeyUse>> {
        let owner = key.key_id.as_deref().unwrap_or("");
        let prior: Option<(String, String, Option<String>, String)> = tx
            .query_row(
                "SELECT kind, fingerprint, resource_id, instance FROM idempotency WHERE owner = ?1 AND key = ?2",
                params![owner, key.key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((kind, fingerprint, resource, instance)) = prior else { return Ok(None) };
        let live = match (kind.as_str(), &resource) {
            ("execution", Some(id)) => tx
                .query_row("SELECT status, response FROM executions WHERE id = ?1", [id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                })
                .optional()?
                .map(|(status, response)| KeyUse::Execution {
                    id: id.clone(),
                    status: status.parse().unwrap_or(RecordStatus::Failed),
                    response,
                }),
            ("sandbox", Some(id)) => tx
                .query_row("SELECT 1 FROM sandboxes WHERE id = ?1", [id], |_| Ok(()))
                .optional()?
                .map(|_| KeyUse::Sandbox { id: Some(id.clone()) }),
            ("sandbox", None) if self.instance_alive(&instance) => Some(KeyUse::Sandbox { id: None }),
            _ => None,
        };
        match live {
            Some(_) if fingerprint != key.fingerprint => Ok(Some(KeyUse::Mismatch)),
            Some(u) => Ok(Some(u)),
            None => {
                tx.execute("DELETE FROM idempotency WHERE owner = ?1 AND key = ?2", params![owner, key.key])?;
                Ok(None)
            }
        }
    }

    fn insert_key(
        &self,
        tx: &Transaction<'_>,
        key: &IdempotencyKey,
        kind: &str,
        resource: Option<&str>,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO idempotency (owner, key, kind, fingerprint, resource_id, instance, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key.key_id.as_deref().unwrap_or(""),
                key.key,
                kind,
                key.fingerprint,
                resource,
                self.instance,
                now_ms() as i64
            ],
        )?;
        Ok(())
    }

    fn insert_start(&self, conn: &Connection, s: &ExecutionStart) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT INTO executions (id, instance, kind, key_id, sandbox_id, backend, language, code, code_bytes, status, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'running', ?10)",
        )?
        .execute(params![
            s.id,
            self.instance,
            s.kind.as_str(),
            s.key_id,
            s.sandbox_id,
            s.backend.map(|b| b.as_str()),
            s.language.as_str(),
            s.code,
            s.code_bytes as i64,
            s.created_at_ms as i64
        ])?;
        Ok(())
    }

    /// Deletes up to `limit` finished executions accepted before `cut`, oldest first
    /// (in the order they were recorded), with the idempotency keys that stood for
    /// them; running ones are skipped. Returns how many, and whether no older finished
    /// record is left. No index serves this (one would cost every run a little): it
    /// reads the oldest rows, which are the ones it deletes.
    fn prune_executions(&self, cut: u64, limit: i64) -> Result<(u64, bool), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| db_err("pruning executions", e))?;
        let mut victims: Vec<(i64, String)> = Vec::new();
        let mut after = 0i64;
        let mut done = false;
        'scan: loop {
            let rows: Vec<(i64, String, String, i64)> = {
                let mut st = tx
                    .prepare_cached(
                        "SELECT seq, id, status, created_at_ms FROM executions WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    )
                    .map_err(|e| db_err("pruning executions", e))?;
                let rows = st
                    .query_map(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(|e| db_err("pruning executions", e))?;
                rows.collect::<Result<_, _>>().map_err(|e| db_err("pruning executions", e))?
            };
            if rows.is_empty() {
                done = true;
                break;
            }
            for (seq, id, status, created) in rows {
                after = seq;
                if status == RecordStatus::Running.as_str() {
                    continue;
                }
                if created as u64 >= cut {
                    done = true;
                    break 'scan;
                }
                victims.push((seq, id));
                if victims.len() as i64 >= limit {
                    break 'scan;
                }
            }
        }
        for (seq, id) in &victims {
            tx.execute("DELETE FROM executions WHERE seq = ?1", [seq]).map_err(|e| db_err("pruning executions", e))?;
            tx.execute("DELETE FROM idempotency WHERE resource_id = ?1 AND kind = 'execution'", [id])
                .map_err(|e| db_err("pruning idempotency keys", e))?;
        }
        tx.commit().map_err(|e| db_err("pruning executions", e))?;
        Ok((victims.len() as u64, done))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This instance's id (stored with every record it accepts).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Instances whose lock file is free: their process is gone. Their lock files are
    /// removed.
    fn dead_instances(&self) -> Vec<String> {
        let mut dead = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.instances_dir) else { return dead };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".lock") else { continue };
            if id == self.instance {
                continue;
            }
            let Ok(f) = File::open(e.path()) else { continue };
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(_held) => {
                    dead.push(id.to_string());
                    let _ = std::fs::remove_file(e.path());
                }
                Err((_, Errno::EWOULDBLOCK)) => {}
                Err((_, e)) => tracing::warn!("checking instance {id}: {}", e.desc()),
            }
        }
        dead
    }
}

impl Drop for SqliteStore {
    /// A clean exit with nothing open removes this instance's lock file; otherwise
    /// the next start-up finds it free, marks what was running as lost and ends the
    /// sessions it held.
    fn drop(&mut self) {
        if self._instance_lock.is_none() {
            return;
        }
        // Anything still open (an execution whose end could not be written, a session
        // whose end could not be) keeps the lock file, so the next start closes it.
        let open: i64 = self
            .conn()
            .query_row(
                "SELECT (SELECT COUNT(*) FROM executions WHERE instance = ?1 AND status = 'running')
                      + (SELECT COUNT(*) FROM sandboxes WHERE instance = ?1 AND ended_at_ms IS NULL)",
                [&self.instance],
                |r| r.get(0),
            )
            .unwrap_or(1);
        if open == 0 {
            let _ = std::fs::remove_file(self.instances_dir.join(format!("{}.lock", self.instance)));
        }
    }
}

const COLUMNS: &str = "seq, id, kind, status, reason, key_id, sandbox_id, backend, language, code, code_bytes, \
                       stdout, stderr, output_truncated, error, usage, exit_code, created_at_ms, finished_at_ms";

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

fn record(r: &Row<'_>) -> rusqlite::Result<(i64, ExecutionRecord)> {
    let seq: i64 = r.get(0)?;
    let kind: String = r.get(2)?;
    let status: String = r.get(3)?;
    let backend: Option<String> = r.get(7)?;
    let language: String = r.get(8)?;
    let code: String = r.get(9)?;
    let code_bytes: i64 = r.get(10)?;
    let error: Option<String> = r.get(14)?;
    let usage: Option<String> = r.get(15)?;
    let created: i64 = r.get(17)?;
    let finished: Option<i64> = r.get(18)?;
    let rec = ExecutionRecord {
        id: r.get(1)?,
        kind: parse(&kind).unwrap_or(super::ExecutionKind::Oneshot),
        status: status.parse().unwrap_or(RecordStatus::Failed),
        reason: r.get(4)?,
        key_id: r.get(5)?,
        sandbox_id: r.get(6)?,
        backend: backend.as_deref().and_then(|b| b.parse().ok()),
        language: language.parse().unwrap_or(Language::Python),
        code_truncated: (code.len() as i64) < code_bytes,
        code,
        stdout: r.get(11)?,
        stderr: r.get(12)?,
        output_truncated: r.get::<_, i64>(13)? != 0,
        error: error.and_then(|e| serde_json::from_str(&e).ok()),
        usage: usage.and_then(|u| serde_json::from_str(&u).ok()),
        exit_code: r.get(16)?,
        created_at: rfc3339(created as u64),
        finished_at: finished.map(|f| rfc3339(f as u64)),
        duration_ms: finished.map(|f| (f - created).max(0) as u64),
    };
    Ok((seq, rec))
}

impl AuditStore for SqliteStore {
    fn begin(&self, s: &ExecutionStart) -> Result<(), Error> {
        self.insert_start(&self.conn(), s).map_err(|e| db_err("recording an accepted execution", e))
    }

    fn end(&self, id: &str, e: &ExecutionEnd) -> Result<(), Error> {
        let error = e.error.as_ref().map(|x| serde_json::to_string(x).unwrap_or_default());
        let usage = e.usage.as_ref().map(|x| serde_json::to_string(x).unwrap_or_default());
        self.conn()
            .prepare_cached(
                "UPDATE executions SET status = ?2, reason = ?3, backend = COALESCE(?4, backend), exit_code = ?5,
                 stdout = ?6, stderr = ?7, output_truncated = ?8, error = ?9, usage = ?10, finished_at_ms = ?11,
                 response = ?12
                 WHERE id = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![
                    id,
                    e.status.as_str(),
                    e.reason,
                    e.backend.map(|b| b.as_str()),
                    e.exit_code,
                    e.stdout,
                    e.stderr,
                    e.output_truncated as i64,
                    error,
                    usage,
                    e.finished_at_ms as i64,
                    e.response
                ])
            })
            .map_err(|e| db_err("recording the end of an execution", e))?;
        Ok(())
    }

    fn execution(&self, id: &str, key_id: Option<&str>) -> Result<Option<ExecutionRecord>, Error> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM executions WHERE id = ?1 AND key_id IS ?2"),
                params![id, key_id],
                record,
            )
            .optional()
            .map(|r| r.map(|(_, rec)| rec))
            .map_err(|e| db_err("reading an execution", e))
    }

    fn executions(&self, q: &ExecutionQuery) -> Result<ExecutionPage, Error> {
        let limit = q.limit.clamp(1, 1000) as i64;
        let cursor: i64 = match &q.cursor {
            None => i64::MAX,
            Some(c) => c.parse().ok().filter(|c: &i64| *c > 0).ok_or_else(|| {
                Error::invalid(format!("cursor '{c}' is not one this server gave out; use next_cursor from a page"))
            })?,
        };
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM executions
                 WHERE key_id IS ?1 AND seq < ?2 AND (?3 IS NULL OR sandbox_id = ?3) AND (?4 IS NULL OR status = ?4)
                 ORDER BY seq DESC LIMIT ?5"
            ))
            .map_err(|e| db_err("listing executions", e))?;
        let rows = stmt
            .query_map(params![q.key_id, cursor, q.sandbox_id, q.status.map(|s| s.as_str()), limit + 1], record)
            .map_err(|e| db_err("listing executions", e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.map_err(|e| db_err("reading an execution", e))?);
        }
        let next_cursor = if out.len() as i64 > limit {
            out.truncate(limit as usize);
            out.last().map(|(seq, _)| seq.to_string())
        } else {
            None
        };
        Ok(ExecutionPage { executions: out.into_iter().map(|(_, r)| r).collect(), next_cursor })
    }

    fn recover_lost(&self) -> Result<u64, Error> {
        let dead = self.dead_instances();
        let conn = self.conn();
        let mut n = 0;
        for inst in dead {
            n += conn
                .execute(
                    "UPDATE executions SET status = 'lost', finished_at_ms = ?2,
                     reason = 'the server stopped (a crash or a kill, or a shutdown while the audit log could not be written) before this execution''s end was recorded; its result is unknown'
                     WHERE instance = ?1 AND status = 'running'",
                    params![inst, now_ms() as i64],
                )
                .map_err(|e| db_err("marking lost executions", e))? as u64;
            conn.execute(
                "UPDATE sandboxes SET ended_at_ms = ?2, end_cause = ?3 WHERE instance = ?1 AND ended_at_ms IS NULL",
                params![inst, now_ms() as i64, END_SERVER_STOPPED],
            )
            .map_err(|e| db_err("ending the sessions of a stopped server", e))?;
        }
        Ok(n)
    }

    fn probe(&self) -> Result<(), Error> {
        self.conn()
            .execute(
                "INSERT INTO meta (k, v) VALUES ('probe', randomblob(?1)) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                [PROBE_BYTES],
            )
            .map_err(|e| db_err("checking that the store takes writes", e))?;
        Ok(())
    }

    fn prune(&self, r: &Retention) -> Result<Pruned, Error> {
        let mut out = Pruned { bytes_before: self.data_bytes()?, ..Default::default() };
        if let Some(cut) = r.older_than_ms {
            loop {
                let (n, done) = self.prune_executions(cut, PRUNE_BATCH)?;
                out.executions += n;
                if done || n == 0 {
                    break;
                }
            }
            loop {
                let n = self
                    .conn()
                    .execute(
                        "DELETE FROM sandboxes WHERE id IN (SELECT id FROM sandboxes
                         WHERE ended_at_ms IS NOT NULL AND ended_at_ms < ?1 ORDER BY ended_at_ms LIMIT ?2)",
                        params![cut.min(i64::MAX as u64) as i64, PRUNE_BATCH],
                    )
                    .map_err(|e| db_err("pruning sessions", e))? as u64;
                out.sandboxes += n;
                if n < PRUNE_BATCH as u64 {
                    break;
                }
            }
            loop {
                let n = self
                    .conn()
                    .execute(
                        "DELETE FROM idempotency WHERE (owner, key) IN (SELECT owner, key FROM idempotency
                             WHERE created_at_ms < ?1 ORDER BY created_at_ms LIMIT ?2)",
                        params![cut.min(i64::MAX as u64) as i64, PRUNE_BATCH],
                    )
                    .map_err(|e| db_err("pruning idempotency keys", e))? as u64;
                out.keys += n;
                if n < PRUNE_BATCH as u64 {
                    break;
                }
            }
        }
        if let Some(max) = r.max_bytes {
            // Down to 90% of the cap, so that the next pass is not due at the next write.
            let target = max / 10 * 9;
            if self.data_bytes()? > max {
                loop {
                    let data = self.data_bytes()?;
                    if data <= target {
                        break;
                    }
                    // About as many rows as hold the excess, at the mean row size.
                    let rows: i64 = self
                        .conn()
                        .query_row("SELECT COUNT(*) FROM executions", [], |r| r.get(0))
                        .map_err(|e| db_err("measuring the store", e))?;
                    let mean = (data / rows.max(1) as u64).max(1);
                    let batch = ((data - target).div_ceil(mean) as i64).clamp(1, PRUNE_BATCH);
                    let (n, _) = self.prune_executions(u64::MAX, batch)?;
                    out.executions += n;
                    if n == 0 {
                        break; // everything left is running
                    }
                }
            }
        }
        if out.executions + out.sandboxes + out.keys > 0 {
            self.give_back_space()?;
        }
        out.bytes_after = self.data_bytes()?;
        Ok(out)
    }
}

impl SqliteStore {
    /// Returns free pages to the file system (incremental auto-vacuum, a step at a
    /// time) and truncates the write-ahead log.
    fn give_back_space(&self) -> Result<(), Error> {
        loop {
            let conn = self.conn();
            let free: i64 =
                conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)).map_err(|e| db_err("vacuuming", e))?;
            let auto: i64 =
                conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).map_err(|e| db_err("vacuuming", e))?;
            if free == 0 || auto != 2 {
                break;
            }
            // Each step of the statement frees one page.
            let mut st = conn
                .prepare(&format!("PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})"))
                .map_err(|e| db_err("vacuuming", e))?;
            let mut rows = st.query([]).map_err(|e| db_err("vacuuming", e))?;
            while rows.next().map_err(|e| db_err("vacuuming", e))?.is_some() {}
        }
        // In memory there is no log; elsewhere a busy reader only makes this partial.
        if let Err(e) = self.conn().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
            tracing::debug!("truncating the write-ahead log: {e}");
        }
        Ok(())
    }
}

fn data_bytes(conn: &Connection) -> Result<u64, Error> {
    let q = |p: &str| -> Result<i64, Error> {
        conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0)).map_err(|e| db_err("measuring the store", e))
    };
    let (pages, free, size) = (q("page_count")?, q("freelist_count")?, q("page_size")?);
    Ok(((pages - free).max(0) * size) as u64)
}

impl SandboxStore for SqliteStore {
    fn sandbox_created(&self, s: &SandboxStart, key: Option<&IdempotencyKey>) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| db_err("recording a session", e))?;
        tx.execute(
            "INSERT INTO sandboxes (id, instance, key_id, backend, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.id, self.instance, s.key_id, s.backend.as_str(), s.created_at_ms as i64],
        )
        .map_err(|e| db_err("recording a session", e))?;
        if let Some(k) = key {
            tx.execute(
                "UPDATE idempotency SET resource_id = ?3 WHERE owner = ?1 AND key = ?2 AND resource_id IS NULL",
                params![k.key_id.as_deref().unwrap_or(""), k.key, s.id],
            )
            .map_err(|e| db_err("recording an idempotency key", e))?;
        }
        tx.commit().map_err(|e| db_err("recording a session", e))
    }

    fn sandbox_ended(&self, id: &str, cause: &str, at_ms: u64) -> Result<(), Error> {
        self.conn()
            .execute(
                "UPDATE sandboxes SET ended_at_ms = ?2, end_cause = ?3 WHERE id = ?1 AND ended_at_ms IS NULL",
                params![id, at_ms as i64, cause],
            )
            .map_err(|e| db_err("recording the end of a session", e))?;
        Ok(())
    }

    fn sandbox(&self, id: &str, key_id: Option<&str>) -> Result<Option<SandboxRecord>, Error> {
        self.conn()
            .query_row(
                "SELECT id, created_at_ms, ended_at_ms, end_cause FROM sandboxes WHERE id = ?1 AND key_id IS ?2",
                params![id, key_id],
                |r| {
                    Ok(SandboxRecord {
                        id: r.get(0)?,
                        created_at_ms: r.get::<_, i64>(1)? as u64,
                        ended_at_ms: r.get::<_, Option<i64>>(2)?.map(|t| t as u64),
                        end_cause: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| db_err("reading a session", e))
    }
}

impl IdempotencyStore for SqliteStore {
    fn begin_keyed(&self, start: &ExecutionStart, key: &IdempotencyKey) -> Result<KeyUse, Error> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err("recording an accepted execution", e))?;
        if let Some(u) = self.prior_use(&tx, key).map_err(|e| db_err("reading an idempotency key", e))? {
            return Ok(u);
        }
        self.insert_key(&tx, key, "execution", Some(&start.id))
            .map_err(|e| db_err("recording an idempotency key", e))?;
        self.insert_start(&tx, start).map_err(|e| db_err("recording an accepted execution", e))?;
        tx.commit().map_err(|e| db_err("recording an accepted execution", e))?;
        Ok(KeyUse::New)
    }

    fn claim_sandbox_key(&self, key: &IdempotencyKey) -> Result<KeyUse, Error> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err("recording an idempotency key", e))?;
        if let Some(u) = self.prior_use(&tx, key).map_err(|e| db_err("reading an idempotency key", e))? {
            return Ok(u);
        }
        self.insert_key(&tx, key, "sandbox", None).map_err(|e| db_err("recording an idempotency key", e))?;
        tx.commit().map_err(|e| db_err("recording an idempotency key", e))?;
        Ok(KeyUse::New)
    }

    fn release_key(&self, key: &IdempotencyKey) -> Result<(), Error> {
        self.conn()
            .execute(
                "DELETE FROM idempotency WHERE owner = ?1 AND key = ?2 AND resource_id IS NULL AND instance = ?3",
                params![key.key_id.as_deref().unwrap_or(""), key.key, self.instance],
            )
            .map_err(|e| db_err("releasing an idempotency key", e))?;
        Ok(())
    }
}

fn key_info(r: &Row<'_>) -> rusqlite::Result<KeyInfo> {
    let max: Option<i64> = r.get(3)?;
    let created: i64 = r.get(4)?;
    let revoked: Option<i64> = r.get(5)?;
    Ok(KeyInfo {
        id: r.get(0)?,
        name: r.get(1)?,
        prefix: r.get(2)?,
        max_sandboxes: max.map(|m| m.clamp(0, u32::MAX as i64) as u32),
        created_at: rfc3339(created as u64),
        revoked_at: revoked.map(|t| rfc3339(t as u64)),
    })
}

impl KeyStore for SqliteStore {
    fn create_key(&self, k: &NewKey) -> Result<(), Error> {
        let conn = self.conn();
        let taken: Option<String> = conn
            .query_row("SELECT id FROM api_keys WHERE name = ?1 AND revoked_at_ms IS NULL", [&k.name], |r| r.get(0))
            .optional()
            .map_err(|e| db_err("checking key names", e))?;
        if let Some(id) = taken {
            return Err(Error::invalid(format!(
                "a key named '{}' exists ({id}); choose another name or revoke it first",
                k.name
            )));
        }
        conn.execute(
            "INSERT INTO api_keys (id, name, hash, prefix, max_sandboxes, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![k.id, k.name, k.hash, k.prefix, k.max_sandboxes, k.created_at_ms as i64],
        )
        .map_err(|e| db_err("storing a key", e))?;
        Ok(())
    }

    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyInfo>, Error> {
        self.conn()
            .query_row(
                "SELECT id, name, prefix, max_sandboxes, created_at_ms, revoked_at_ms FROM api_keys
                 WHERE hash = ?1 AND revoked_at_ms IS NULL",
                [hash],
                key_info,
            )
            .optional()
            .map_err(|e| db_err("looking up a key", e))
    }

    fn keys(&self) -> Result<Vec<KeyInfo>, Error> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, name, prefix, max_sandboxes, created_at_ms, revoked_at_ms FROM api_keys ORDER BY created_at_ms, id")
            .map_err(|e| db_err("listing keys", e))?;
        let rows = stmt.query_map([], key_info).map_err(|e| db_err("listing keys", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| db_err("listing keys", e))
    }

    fn revoke_key(&self, id_or_name: &str) -> Result<bool, Error> {
        let n = self
            .conn()
            .execute(
                "UPDATE api_keys SET revoked_at_ms = ?2 WHERE (id = ?1 OR name = ?1) AND revoked_at_ms IS NULL",
                params![id_or_name, now_ms() as i64],
            )
            .map_err(|e| db_err("revoking a key", e))?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ExecutionKind;
    use super::*;

    fn start(id: &str, key: Option<&str>, sandbox: Option<&str>) -> ExecutionStart {
        ExecutionStart {
            id: id.into(),
            kind: if sandbox.is_some() { ExecutionKind::Cell } else { ExecutionKind::Oneshot },
            key_id: key.map(String::from),
            sandbox_id: sandbox.map(String::from),
            backend: Some(airlock_core::BackendKind::Process),
            language: Language::Python,
            code: "print(1)".into(),
            code_bytes: 8,
            created_at_ms: now_ms(),
        }
    }

    fn end(status: RecordStatus) -> ExecutionEnd {
        ExecutionEnd {
            status,
            reason: None,
            backend: None,
            exit_code: None,
            stdout: "1\n".into(),
            stderr: String::new(),
            output_truncated: false,
            error: None,
            usage: Some(airlock_core::Usage { wall_ms: 5, ..Default::default() }),
            finished_at_ms: now_ms(),
            response: None,
        }
    }

    fn file_bytes(dir: &Path) -> u64 {
        ["airlock.db", "airlock.db-wal"].iter().map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len())).sum()
    }

    /// A finished record accepted at `at_ms`, with `out` bytes of stdout.
    fn finished(s: &SqliteStore, id: &str, at_ms: u64, out: usize) {
        s.begin(&ExecutionStart { created_at_ms: at_ms, ..start(id, None, None) }).unwrap();
        s.end(id, &ExecutionEnd { stdout: "x".repeat(out), ..end(RecordStatus::Ok) }).unwrap();
    }

    #[test]
    fn pruning_by_age_keeps_running_records_and_live_sessions() {
        let s = SqliteStore::in_memory().unwrap();
        let day = 86_400_000;
        let now = now_ms();
        // Records are pruned in the order they were recorded, which is the order of
        // their acceptance times.
        finished(&s, "exe_old", now - 40 * day, 10);
        s.begin(&ExecutionStart { created_at_ms: now - 40 * day, ..start("exe_old_running", None, None) }).unwrap();
        let sbx = |id: &str| SandboxStart {
            id: id.into(),
            key_id: None,
            backend: airlock_core::BackendKind::Process,
            created_at_ms: now - 40 * day,
        };
        s.sandbox_created(&sbx("sbx_old"), None).unwrap();
        s.sandbox_ended("sbx_old", "deleted", now - 39 * day).unwrap();
        s.sandbox_created(&sbx("sbx_live"), None).unwrap();
        let key = IdempotencyKey { key_id: None, key: "k1".into(), fingerprint: "f".into() };
        assert_eq!(
            s.begin_keyed(&ExecutionStart { created_at_ms: now - 40 * day, ..start("exe_keyed", None, None) }, &key)
                .unwrap(),
            KeyUse::New
        );
        s.end("exe_keyed", &end(RecordStatus::Ok)).unwrap();
        finished(&s, "exe_new", now - day, 10);

        let p = s.prune(&Retention { older_than_ms: Some(now - 30 * day), max_bytes: None }).unwrap();
        assert_eq!((p.executions, p.sandboxes), (2, 1), "{p:?}");
        assert!(s.execution("exe_old", None).unwrap().is_none());
        assert!(s.execution("exe_new", None).unwrap().is_some());
        assert_eq!(s.execution("exe_old_running", None).unwrap().unwrap().status, RecordStatus::Running);
        assert!(s.sandbox("sbx_old", None).unwrap().is_none());
        assert!(s.sandbox("sbx_live", None).unwrap().is_some(), "a live session was forgotten");
        // The key went with its execution: it is free again.
        let again = start("exe_again", None, None);
        assert_eq!(s.begin_keyed(&again, &key).unwrap(), KeyUse::New);
        // Keep-forever keeps everything.
        let p = s.prune(&Retention::default()).unwrap();
        assert_eq!(p.executions + p.sandboxes + p.keys, 0);
    }

    #[test]
    fn pruning_by_size_deletes_oldest_first_and_the_file_stops_growing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let max = 2 * 1024 * 1024;
        let r = Retention { older_than_ms: None, max_bytes: Some(max) };
        let now = now_ms();
        s.begin(&ExecutionStart { created_at_ms: now - 10_000_000, ..start("exe_running", None, None) }).unwrap();
        for i in 0..120u64 {
            finished(&s, &format!("exe_{i:04}"), now - 1_000_000 + i, 32 * 1024);
        }
        let before = file_bytes(dir.path());
        assert!(s.data_bytes().unwrap() > max, "the test wrote too little to prune");
        let p = s.prune(&r).unwrap();
        assert!(p.bytes_after <= max, "{p:?}");
        assert!(p.executions > 0 && p.executions < 120, "{p:?}");
        assert!(s.execution("exe_0000", None).unwrap().is_none(), "the oldest record survived");
        assert!(s.execution("exe_0119", None).unwrap().is_some(), "the newest record went");
        assert!(s.execution("exe_running", None).unwrap().is_some(), "a running record was pruned");
        let after = file_bytes(dir.path());
        assert!(after < before / 2, "the file did not shrink: {before} -> {after} bytes");
        // Writing on, with a pass now and then: the file stays near the cap.
        for round in 0..4u64 {
            for i in 0..60u64 {
                finished(&s, &format!("exe_r{round}_{i:03}"), now + round * 1000 + i, 32 * 1024);
            }
            s.prune(&r).unwrap();
            let db = std::fs::metadata(dir.path().join("airlock.db")).unwrap().len();
            let wal = std::fs::metadata(dir.path().join("airlock.db-wal")).map_or(0, |m| m.len());
            assert!(db <= max / 4 * 5, "round {round}: the database grew to {db} bytes");
            assert!(wal <= JOURNAL_SIZE_LIMIT as u64, "round {round}: the log grew to {wal} bytes");
            assert!(s.execution(&format!("exe_r{round}_059"), None).unwrap().is_some());
        }
    }

    #[test]
    fn a_schema_1_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("airlock.db")).unwrap();
            // Schema 1 as it was: no `response` column, no new tables.
            let v1 = SCHEMA
                .split("CREATE TABLE IF NOT EXISTS sandboxes")
                .next()
                .unwrap()
                .replace("    finished_at_ms INTEGER,\n    response TEXT\n", "    finished_at_ms INTEGER\n");
            assert!(!v1.contains("response"));
            conn.execute_batch(&v1).unwrap();
            conn.execute(
                "INSERT INTO executions (id, instance, kind, language, code, code_bytes, status, created_at_ms)
                 VALUES ('exe_v1', 'ins_x', 'oneshot', 'python', '1', 1, 'ok', 1)",
                [],
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(s.execution("exe_v1", None).unwrap().unwrap().status, RecordStatus::Ok);
        let key = IdempotencyKey { key_id: None, key: "k".into(), fingerprint: "f".into() };
        assert_eq!(s.begin_keyed(&start("exe_2", None, None), &key).unwrap(), KeyUse::New);
        s.end("exe_2", &ExecutionEnd { response: Some("{}".into()), ..end(RecordStatus::Ok) }).unwrap();
        let v: i64 = s.conn().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        s.probe().unwrap();
    }

    #[test]
    fn sessions_of_a_dead_server_end_as_server_stopped_and_only_for_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let first = SqliteStore::open(dir.path()).unwrap();
        let row = |id: &str, key: Option<&str>| SandboxStart {
            id: id.into(),
            key_id: key.map(String::from),
            backend: airlock_core::BackendKind::Process,
            created_at_ms: now_ms(),
        };
        first.sandbox_created(&row("sbx_a", Some("key_a")), None).unwrap();
        first.sandbox_created(&row("sbx_deleted", Some("key_a")), None).unwrap();
        first.sandbox_ended("sbx_deleted", "deleted", now_ms()).unwrap();
        first.sandbox_created(&row("sbx_shut", None), None).unwrap();
        first.sandbox_ended("sbx_shut", crate::store::END_SHUTDOWN, now_ms()).unwrap();
        let second = SqliteStore::open(dir.path()).unwrap();
        second.recover_lost().unwrap();
        assert_eq!(second.sandbox("sbx_a", Some("key_a")).unwrap().unwrap().ended_at_ms, None, "its server lives");
        drop(first);
        second.recover_lost().unwrap();
        let a = second.sandbox("sbx_a", Some("key_a")).unwrap().unwrap();
        assert!(a.ended_by_restart(), "{a:?}");
        assert!(second.sandbox("sbx_a", Some("key_b")).unwrap().is_none(), "another key sees the session");
        assert!(second.sandbox("sbx_a", None).unwrap().is_none());
        assert!(!second.sandbox("sbx_deleted", Some("key_a")).unwrap().unwrap().ended_by_restart());
        assert!(second.sandbox("sbx_shut", None).unwrap().unwrap().ended_by_restart());
    }

    #[test]
    fn idempotency_keys_replay_refuse_other_requests_and_are_scoped_per_api_key() {
        let s = SqliteStore::in_memory().unwrap();
        let key = |owner: Option<&str>, k: &str, f: &str| IdempotencyKey {
            key_id: owner.map(String::from),
            key: k.into(),
            fingerprint: f.into(),
        };
        let a = key(Some("key_a"), "k", "body1");
        assert_eq!(s.begin_keyed(&start("exe_1", Some("key_a"), None), &a).unwrap(), KeyUse::New);
        // A retry while it runs, with the same request: it is running.
        assert_eq!(
            s.begin_keyed(&start("exe_2", Some("key_a"), None), &a).unwrap(),
            KeyUse::Execution { id: "exe_1".into(), status: RecordStatus::Running, response: None }
        );
        assert!(s.execution("exe_2", Some("key_a")).unwrap().is_none(), "the retry was recorded as a new run");
        // Another body with the same key is refused.
        let other = key(Some("key_a"), "k", "body2");
        assert_eq!(s.begin_keyed(&start("exe_3", Some("key_a"), None), &other).unwrap(), KeyUse::Mismatch);
        // The same key of another API key (or of the local user) is another key.
        assert_eq!(
            s.begin_keyed(&start("exe_4", Some("key_b"), None), &key(Some("key_b"), "k", "x")).unwrap(),
            KeyUse::New
        );
        assert_eq!(s.begin_keyed(&start("exe_5", None, None), &key(None, "k", "y")).unwrap(), KeyUse::New);
        s.end("exe_1", &ExecutionEnd { response: Some("{\"outcome\":1}".into()), ..end(RecordStatus::Ok) }).unwrap();
        assert_eq!(
            s.begin_keyed(&start("exe_6", Some("key_a"), None), &a).unwrap(),
            KeyUse::Execution {
                id: "exe_1".into(),
                status: RecordStatus::Ok,
                response: Some("{\"outcome\":1}".into())
            }
        );

        // Sandboxes: claimed, in progress, bound, released.
        let sk = key(Some("key_a"), "s", "create");
        assert_eq!(s.claim_sandbox_key(&sk).unwrap(), KeyUse::New);
        assert_eq!(s.claim_sandbox_key(&sk).unwrap(), KeyUse::Sandbox { id: None });
        s.release_key(&sk).unwrap();
        assert_eq!(s.claim_sandbox_key(&sk).unwrap(), KeyUse::New, "a released claim stays taken");
        let row = SandboxStart {
            id: "sbx_1".into(),
            key_id: Some("key_a".into()),
            backend: airlock_core::BackendKind::Process,
            created_at_ms: now_ms(),
        };
        s.sandbox_created(&row, Some(&sk)).unwrap();
        s.release_key(&sk).unwrap(); // a bound key is not released
        assert_eq!(s.claim_sandbox_key(&sk).unwrap(), KeyUse::Sandbox { id: Some("sbx_1".into()) });
        assert_eq!(
            s.begin_keyed(&start("exe_7", Some("key_a"), None), &key(Some("key_a"), "s", "x")).unwrap(),
            KeyUse::Mismatch
        );
    }

    #[test]
    fn a_sandbox_claim_left_by_a_dead_server_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let first = SqliteStore::open(dir.path()).unwrap();
        let second = SqliteStore::open(dir.path()).unwrap();
        let k = IdempotencyKey { key_id: None, key: "s".into(), fingerprint: "f".into() };
        assert_eq!(first.claim_sandbox_key(&k).unwrap(), KeyUse::New);
        assert_eq!(second.claim_sandbox_key(&k).unwrap(), KeyUse::Sandbox { id: None }, "its creator lives");
        drop(first);
        assert_eq!(second.claim_sandbox_key(&k).unwrap(), KeyUse::New);
    }

    #[test]
    fn records_are_scoped_paginated_and_filtered() {
        let s = SqliteStore::in_memory().unwrap();
        for i in 0..5 {
            s.begin(&start(&format!("exe_{i}"), Some("key_a"), Some("sbx_1"))).unwrap();
            s.end(&format!("exe_{i}"), &end(if i % 2 == 0 { RecordStatus::Ok } else { RecordStatus::Error })).unwrap();
        }
        s.begin(&start("exe_b", Some("key_b"), None)).unwrap();
        s.begin(&start("exe_local", None, None)).unwrap();

        assert!(s.execution("exe_1", Some("key_b")).unwrap().is_none(), "key b sees key a's record");
        let r = s.execution("exe_1", Some("key_a")).unwrap().unwrap();
        assert_eq!(r.status, RecordStatus::Error);
        assert_eq!(r.stdout, "1\n");
        assert_eq!(r.usage.unwrap().wall_ms, 5);
        assert!(s.execution("exe_local", None).unwrap().is_some());
        assert!(s.execution("exe_local", Some("key_a")).unwrap().is_none());

        let q = ExecutionQuery { key_id: Some("key_a".into()), limit: 2, ..Default::default() };
        let p1 = s.executions(&q).unwrap();
        assert_eq!(p1.executions.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["exe_4", "exe_3"]);
        let p2 = s.executions(&ExecutionQuery { cursor: p1.next_cursor.clone(), ..q.clone() }).unwrap();
        assert_eq!(p2.executions.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["exe_2", "exe_1"]);
        let p3 = s.executions(&ExecutionQuery { cursor: p2.next_cursor.clone(), ..q.clone() }).unwrap();
        assert_eq!(p3.executions.len(), 1);
        assert!(p3.next_cursor.is_none());

        let errors =
            s.executions(&ExecutionQuery { status: Some(RecordStatus::Error), limit: 10, ..q.clone() }).unwrap();
        assert_eq!(errors.executions.len(), 2);
        let other = s.executions(&ExecutionQuery { sandbox_id: Some("sbx_2".into()), limit: 10, ..q.clone() }).unwrap();
        assert!(other.executions.is_empty());
        assert!(s.executions(&ExecutionQuery { cursor: Some("x".into()), ..q }).is_err());
    }

    #[test]
    fn running_records_of_a_dead_instance_become_lost() {
        let dir = tempfile::tempdir().unwrap();
        let first = SqliteStore::open(dir.path()).unwrap();
        first.begin(&start("exe_unfinished", None, None)).unwrap();
        first.begin(&start("exe_finished", None, None)).unwrap();
        first.end("exe_finished", &end(RecordStatus::Ok)).unwrap();
        // A second instance while the first lives: nothing is lost.
        let second = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(second.recover_lost().unwrap(), 0);
        drop(first);
        assert_eq!(second.recover_lost().unwrap(), 1);
        let r = second.execution("exe_unfinished", None).unwrap().unwrap();
        assert_eq!(r.status, RecordStatus::Lost);
        assert!(r.reason.unwrap().contains("stopped"));
        assert_eq!(second.execution("exe_finished", None).unwrap().unwrap().status, RecordStatus::Ok);
    }

    #[test]
    fn keys_are_found_by_hash_and_revoked() {
        let s = SqliteStore::in_memory().unwrap();
        let k = NewKey {
            id: "key_1".into(),
            name: "ci".into(),
            hash: "ab".repeat(32),
            prefix: "ak_1234".into(),
            max_sandboxes: Some(3),
            created_at_ms: now_ms(),
        };
        s.create_key(&k).unwrap();
        assert!(s.create_key(&NewKey { id: "key_2".into(), hash: "cd".repeat(32), ..k.clone() }).is_err());
        assert_eq!(s.key_by_hash(&k.hash).unwrap().unwrap().max_sandboxes, Some(3));
        assert!(s.revoke_key("ci").unwrap());
        assert!(!s.revoke_key("ci").unwrap());
        assert!(s.key_by_hash(&k.hash).unwrap().is_none());
        assert!(s.keys().unwrap()[0].revoked_at.is_some());
    }
}
