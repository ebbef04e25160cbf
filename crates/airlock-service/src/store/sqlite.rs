//! The embedded store: one SQLite file (`airlock.db`, write-ahead log) in the data
//! directory, so `airlock serve` works with no setup.
//!
//! Several airlock processes may share a data directory (a server and a few
//! `airlock mcp` processes, say). Each open store is an *instance* that holds an
//! exclusive `flock` on `instances/<id>.lock` for as long as it lives; records carry
//! the instance that accepted them. At start-up, the records of instances whose lock
//! is free (their process died) and that are still `running` are marked `lost`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use airlock_core::{Error, Language};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    AuditStore, ExecutionEnd, ExecutionPage, ExecutionQuery, ExecutionRecord, ExecutionStart, KeyInfo, KeyStore,
    NewKey, RecordStatus, now_ms, rfc3339,
};

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

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
    finished_at_ms INTEGER
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
        // `journal_mode` answers with the mode; in memory it stays `memory`.
        let _: String =
            conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(|e| db_err("enabling WAL", e))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| db_err("setting synchronous", e))?;
        let version: i64 =
            conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| db_err("reading the version", e))?;
        if version > SCHEMA_VERSION {
            return Err(Error::host(format!(
                "audit store: the database was written by a newer airlock (schema {version}, this one knows {SCHEMA_VERSION}); upgrade airlock or use another --data-dir"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(|e| db_err("creating tables", e))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(|e| db_err("setting the version", e))?;
        Ok(())
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
    /// A clean exit with nothing running removes this instance's lock file; otherwise
    /// the next start-up finds it free and marks what was running as lost.
    fn drop(&mut self) {
        if self._instance_lock.is_none() {
            return;
        }
        let running: i64 = self
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM executions WHERE instance = ?1 AND status = 'running'",
                [&self.instance],
                |r| r.get(0),
            )
            .unwrap_or(1);
        if running == 0 {
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
        self.conn()
            .prepare_cached(
                "INSERT INTO executions (id, instance, kind, key_id, sandbox_id, backend, language, code, code_bytes, status, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'running', ?10)",
            )
            .and_then(|mut st| {
                st.execute(params![
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
                ])
            })
            .map_err(|e| db_err("recording an accepted execution", e))?;
        Ok(())
    }

    fn end(&self, id: &str, e: &ExecutionEnd) -> Result<(), Error> {
        let error = e.error.as_ref().map(|x| serde_json::to_string(x).unwrap_or_default());
        let usage = e.usage.as_ref().map(|x| serde_json::to_string(x).unwrap_or_default());
        self.conn()
            .prepare_cached(
                "UPDATE executions SET status = ?2, reason = ?3, backend = COALESCE(?4, backend), exit_code = ?5,
                 stdout = ?6, stderr = ?7, output_truncated = ?8, error = ?9, usage = ?10, finished_at_ms = ?11
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
                    e.finished_at_ms as i64
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
                     reason = 'the server stopped (crash or kill) before this execution finished; its result is unknown'
                     WHERE instance = ?1 AND status = 'running'",
                    params![inst, now_ms() as i64],
                )
                .map_err(|e| db_err("marking lost executions", e))? as u64;
        }
        Ok(n)
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
        }
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
