//! The server's durable batch state: uploaded and output files as files under `--data-dir`, and files,
//! batches and each finished request in SQLite (WAL, synchronous commits). A finished request is one row,
//! written when it finishes: after a `kill -9` the batch resumes with the requests that have no row, and
//! the output files are made from the rows, so no request is lost or written twice.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context as _, Result};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{json, Value};

/// A stored file's metadata (OpenAI's file object).
#[derive(Clone, Debug, PartialEq)]
pub struct FileRow {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: u64,
    pub created_at: u64,
}

impl FileRow {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
            "filename": self.filename, "purpose": self.purpose, "status": "processed", "status_details": null,
        })
    }
}

/// Where a batch is, as OpenAI names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Cancelling,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Validating,
        Status::Failed,
        Status::InProgress,
        Status::Finalizing,
        Status::Completed,
        Status::Cancelling,
        Status::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::Failed => "failed",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Status {
        Status::ALL.into_iter().find(|x| x.name() == s).unwrap_or(Status::Failed)
    }

    /// Still to be worked on (by the worker, after a restart too).
    pub fn is_open(self) -> bool {
        matches!(self, Status::Validating | Status::InProgress | Status::Finalizing | Status::Cancelling)
    }

    /// The column holding when the batch entered this status.
    fn column(self) -> &'static str {
        match self {
            Status::Validating => "created_at",
            Status::Failed => "failed_at",
            Status::InProgress => "in_progress_at",
            Status::Finalizing => "finalizing_at",
            Status::Completed => "completed_at",
            Status::Cancelling => "cancelling_at",
            Status::Cancelled => "cancelled_at",
        }
    }
}

/// A batch as stored.
#[derive(Clone, Debug)]
pub struct BatchRow {
    pub id: String,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Value,
    pub status: Status,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub expires_at: u64,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// Validation errors (`failed`): OpenAI's `{"object": "list", "data": [{code, message, line}]}`.
    pub errors: Option<Value>,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

impl BatchRow {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": self.errors,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status.name(), "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": self.created_at,
            "in_progress_at": self.in_progress_at, "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at, "completed_at": self.completed_at,
            "failed_at": self.failed_at, "expired_at": null, "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        })
    }

    fn from_row(r: &Row) -> rusqlite::Result<BatchRow> {
        let metadata: Option<String> = r.get("metadata")?;
        let errors: Option<String> = r.get("errors")?;
        let status: String = r.get("status")?;
        Ok(BatchRow {
            id: r.get("id")?,
            input_file_id: r.get("input_file_id")?,
            endpoint: r.get("endpoint")?,
            completion_window: r.get("completion_window")?,
            metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or(Value::Null),
            status: Status::parse(&status),
            created_at: r.get("created_at")?,
            in_progress_at: r.get("in_progress_at")?,
            finalizing_at: r.get("finalizing_at")?,
            completed_at: r.get("completed_at")?,
            failed_at: r.get("failed_at")?,
            cancelling_at: r.get("cancelling_at")?,
            cancelled_at: r.get("cancelled_at")?,
            expires_at: r.get("expires_at")?,
            output_file_id: r.get("output_file_id")?,
            error_file_id: r.get("error_file_id")?,
            errors: errors.and_then(|e| serde_json::from_str(&e).ok()),
            total: r.get("total")?,
            completed: r.get("completed")?,
            failed: r.get("failed")?,
        })
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL, metadata TEXT, status TEXT NOT NULL, created_at INTEGER NOT NULL,
    in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER,
    cancelling_at INTEGER, cancelled_at INTEGER, expires_at INTEGER NOT NULL, output_file_id TEXT,
    error_file_id TEXT, errors TEXT, total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    batch_id TEXT NOT NULL, custom_id TEXT NOT NULL, line INTEGER NOT NULL, ok INTEGER NOT NULL,
    json TEXT NOT NULL, PRIMARY KEY (batch_id, custom_id));
CREATE TABLE IF NOT EXISTS reviews (
    batch_id TEXT NOT NULL, custom_id TEXT NOT NULL, status TEXT NOT NULL, text TEXT,
    updated_at INTEGER NOT NULL, PRIMARY KEY (batch_id, custom_id));
";

/// An editor's verdict on one result, and the text as they edited it (`None`: the model's, unchanged).
#[derive(Clone, Debug, PartialEq)]
pub struct Review {
    pub status: String,
    pub text: Option<String>,
    pub updated_at: u64,
}

/// The database and the files folder.
pub struct Store {
    conn: Mutex<Connection>,
    files_dir: PathBuf,
}

impl Store {
    /// Opens (creating) `dir/quire.db` and `dir/files/`.
    pub fn open(dir: &Path) -> Result<Store> {
        let files_dir = dir.join("files");
        std::fs::create_dir_all(&files_dir)
            .with_context(|| format!("cannot create {}", files_dir.display()))?;
        let path = dir.join("quire.db");
        let conn = Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // WAL: readers (GET /v1/batches) never wait for the worker's commits; FULL: a commit is on disk.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA).context("cannot create the batch tables")?;
        Ok(Store { conn: Mutex::new(conn), files_dir })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a file's bytes live.
    pub fn file_path(&self, id: &str) -> PathBuf {
        self.files_dir.join(id)
    }

    pub fn add_file(&self, f: &FileRow) -> Result<()> {
        self.db().execute(
            "INSERT INTO files (id, filename, purpose, bytes, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![f.id, f.filename, f.purpose, f.bytes, f.created_at],
        )?;
        Ok(())
    }

    pub fn file(&self, id: &str) -> Result<Option<FileRow>> {
        Ok(self
            .db()
            .query_row(
                "SELECT id, filename, purpose, bytes, created_at FROM files WHERE id = ?1",
                [id],
                file_row,
            )
            .optional()?)
    }

    /// Newest first, optionally of one purpose.
    pub fn files(&self, purpose: Option<&str>) -> Result<Vec<FileRow>> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT id, filename, purpose, bytes, created_at FROM files
             WHERE ?1 IS NULL OR purpose = ?1 ORDER BY created_at DESC, rowid DESC",
        )?;
        let rows = q.query_map([purpose], file_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Forgets a file and removes its bytes; false if there was none.
    pub fn delete_file(&self, id: &str) -> Result<bool> {
        let n = self.db().execute("DELETE FROM files WHERE id = ?1", [id])?;
        if n > 0 {
            let _ = std::fs::remove_file(self.file_path(id));
        }
        Ok(n > 0)
    }

    pub fn add_batch(&self, b: &BatchRow) -> Result<()> {
        self.db().execute(
            "INSERT INTO batches (id, input_file_id, endpoint, completion_window, metadata, status, created_at,
                                  expires_at, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, (SELECT COALESCE(MAX(seq), 0) + 1 FROM batches))",
            params![
                b.id,
                b.input_file_id,
                b.endpoint,
                b.completion_window,
                (!b.metadata.is_null()).then(|| b.metadata.to_string()),
                b.status.name(),
                b.created_at,
                b.expires_at
            ],
        )?;
        Ok(())
    }

    pub fn batch(&self, id: &str) -> Result<Option<BatchRow>> {
        Ok(self.db().query_row("SELECT * FROM batches WHERE id = ?1", [id], BatchRow::from_row).optional()?)
    }

    /// Newest first, `limit` of them after the batch `after` (OpenAI's cursor); and whether more follow.
    pub fn batches(&self, limit: usize, after: Option<&str>) -> Result<(Vec<BatchRow>, bool)> {
        let db = self.db();
        let after_seq: Option<i64> = match after {
            Some(a) => db.query_row("SELECT seq FROM batches WHERE id = ?1", [a], |r| r.get(0)).optional()?,
            None => None,
        };
        let mut q =
            db.prepare("SELECT * FROM batches WHERE ?1 IS NULL OR seq < ?1 ORDER BY seq DESC LIMIT ?2")?;
        let mut rows = q
            .query_map(params![after_seq, limit as i64 + 1], BatchRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, more))
    }

    /// The batches still to work on, oldest first.
    pub fn open_batches(&self) -> Result<Vec<BatchRow>> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT * FROM batches WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
             ORDER BY seq",
        )?;
        let rows = q.query_map([], BatchRow::from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Moves a batch to `status`, stamping when; `from`: only if it is in one of these now. True if it moved.
    pub fn set_status(&self, id: &str, status: Status, from: &[Status], now: u64) -> Result<bool> {
        let db = self.db();
        let current: Option<String> =
            db.query_row("SELECT status FROM batches WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        let Some(current) = current else { return Ok(false) };
        if !from.is_empty() && !from.contains(&Status::parse(&current)) {
            return Ok(false);
        }
        let sql =
            format!("UPDATE batches SET status = ?1, {} = COALESCE({0}, ?2) WHERE id = ?3", status.column());
        db.execute(&sql, params![status.name(), now, id])?;
        Ok(true)
    }

    pub fn set_total(&self, id: &str, total: u64) -> Result<()> {
        self.db().execute("UPDATE batches SET total = ?1 WHERE id = ?2", params![total, id])?;
        Ok(())
    }

    pub fn fail_validation(&self, id: &str, errors: &Value, now: u64) -> Result<()> {
        self.db().execute(
            "UPDATE batches SET status = 'failed', failed_at = ?1, errors = ?2 WHERE id = ?3",
            params![now, errors.to_string(), id],
        )?;
        Ok(())
    }

    /// Records a finished request (once: a second record of the same `custom_id` is ignored) and counts it.
    pub fn record(&self, batch: &str, custom_id: &str, line: usize, ok: bool, result: &Value) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO results (batch_id, custom_id, line, ok, json) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![batch, custom_id, line as i64, ok, result.to_string()],
        )?;
        if n > 0 {
            let column = if ok { "completed" } else { "failed" };
            tx.execute(&format!("UPDATE batches SET {column} = {column} + 1 WHERE id = ?1"), [batch])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A request's result: whether it succeeded, and its output line.
    pub fn result(&self, batch: &str, custom_id: &str) -> Result<Option<(bool, Value)>> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT ok, json FROM results WHERE batch_id = ?1 AND custom_id = ?2",
                params![batch, custom_id],
                |r| Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?;
        Ok(row.map(|(ok, json)| (ok, serde_json::from_str(&json).unwrap_or(Value::Null))))
    }

    /// Every review of a batch, by custom_id.
    pub fn reviews(&self, batch: &str) -> Result<HashMap<String, Review>> {
        let db = self.db();
        let mut q =
            db.prepare("SELECT custom_id, status, text, updated_at FROM reviews WHERE batch_id = ?1")?;
        let rows = q
            .query_map([batch], |r| {
                Ok((r.get(0)?, Review { status: r.get(1)?, text: r.get(2)?, updated_at: r.get(3)? }))
            })?
            .collect::<rusqlite::Result<HashMap<String, Review>>>()?;
        Ok(rows)
    }

    /// Sets (or, with status `pending` and no text, clears) the review of one result.
    pub fn set_review(&self, batch: &str, custom_id: &str, review: &Review) -> Result<()> {
        let db = self.db();
        if review.status == "pending" && review.text.is_none() {
            db.execute(
                "DELETE FROM reviews WHERE batch_id = ?1 AND custom_id = ?2",
                params![batch, custom_id],
            )?;
        } else {
            db.execute(
                "INSERT OR REPLACE INTO reviews (batch_id, custom_id, status, text, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![batch, custom_id, review.status, review.text, review.updated_at],
            )?;
        }
        Ok(())
    }

    /// The custom_ids of a batch that have a result.
    pub fn done_ids(&self, batch: &str) -> Result<HashSet<String>> {
        let db = self.db();
        let mut q = db.prepare("SELECT custom_id FROM results WHERE batch_id = ?1")?;
        let ids = q.query_map([batch], |r| r.get(0))?.collect::<rusqlite::Result<HashSet<String>>>()?;
        Ok(ids)
    }

    /// Writes a batch's results (the answered or the failed ones) to `path` as JSONL in input order; the
    /// number of lines.
    pub fn write_results(&self, batch: &str, ok: bool, path: &Path) -> Result<u64> {
        use std::io::Write;
        let db = self.db();
        let mut q = db.prepare("SELECT json FROM results WHERE batch_id = ?1 AND ok = ?2 ORDER BY line")?;
        let tmp = path.with_extension("partial");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut n = 0;
        for json in q.query_map(params![batch, ok], |r| r.get::<_, String>(0))? {
            out.write_all(json?.as_bytes())?;
            out.write_all(b"\n")?;
            n += 1;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(n)
    }

    /// Sets the batch's output and error files (made by [`Store::write_results`]) and registers them.
    pub fn set_result_files(
        &self,
        id: &str,
        output: Option<&FileRow>,
        errors: Option<&FileRow>,
    ) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        for f in [output, errors].into_iter().flatten() {
            tx.execute(
                "INSERT OR REPLACE INTO files (id, filename, purpose, bytes, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![f.id, f.filename, f.purpose, f.bytes, f.created_at],
            )?;
        }
        tx.execute(
            "UPDATE batches SET output_file_id = ?1, error_file_id = ?2 WHERE id = ?3",
            params![output.map(|f| &f.id), errors.map(|f| &f.id), id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// How many batches are in each status (for /metrics).
    pub fn status_counts(&self) -> Result<Vec<(Status, u64)>> {
        let db = self.db();
        let mut q = db.prepare("SELECT status, COUNT(*) FROM batches GROUP BY status")?;
        let rows = q
            .query_map([], |r| Ok((Status::parse(&r.get::<_, String>(0)?), r.get::<_, u64>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

fn file_row(r: &Row) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        id: r.get(0)?,
        filename: r.get(1)?,
        purpose: r.get(2)?,
        bytes: r.get(3)?,
        created_at: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> BatchRow {
        BatchRow {
            id: id.into(),
            input_file_id: "file-1".into(),
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            metadata: json!({"k": "v"}),
            status: Status::Validating,
            created_at: 100,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            cancelling_at: None,
            cancelled_at: None,
            expires_at: 100 + 86400,
            output_file_id: None,
            error_file_id: None,
            errors: None,
            total: 0,
            completed: 0,
            failed: 0,
        }
    }

    #[test]
    fn batches_files_and_results_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("quire-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&dir).unwrap();
            s.add_file(&FileRow {
                id: "file-1".into(),
                filename: "in.jsonl".into(),
                purpose: "batch".into(),
                bytes: 3,
                created_at: 1,
            })
            .unwrap();
            for id in ["batch_a", "batch_b", "batch_c"] {
                s.add_batch(&row(id)).unwrap();
            }
            assert!(s.set_status("batch_a", Status::InProgress, &[Status::Validating], 101).unwrap());
            assert!(!s.set_status("batch_a", Status::InProgress, &[Status::Validating], 102).unwrap());
            s.record("batch_a", "x", 2, true, &json!({"custom_id": "x"})).unwrap();
            s.record("batch_a", "x", 2, true, &json!({"custom_id": "x", "again": true})).unwrap();
            s.record("batch_a", "y", 1, false, &json!({"custom_id": "y"})).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let a = s.batch("batch_a").unwrap().unwrap();
        assert_eq!(
            (a.status, a.in_progress_at, a.completed, a.failed),
            (Status::InProgress, Some(101), 1, 1)
        );
        assert_eq!(a.metadata, json!({"k": "v"}));
        assert_eq!(s.done_ids("batch_a").unwrap(), HashSet::from(["x".to_string(), "y".to_string()]));
        let out = dir.join("out.jsonl");
        assert_eq!(s.write_results("batch_a", true, &out).unwrap(), 1);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"custom_id\":\"x\"}\n", "recorded once");
        let (page, more) = s.batches(2, None).unwrap();
        assert_eq!(page.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["batch_c", "batch_b"]);
        assert!(more);
        let (page, more) = s.batches(2, Some("batch_b")).unwrap();
        assert_eq!((page.len(), page[0].id.as_str(), more), (1, "batch_a", false));
        assert_eq!(s.open_batches().unwrap().len(), 3);
        assert_eq!(s.files(Some("batch")).unwrap().len(), 1);
        assert!(s.delete_file("file-1").unwrap() && !s.delete_file("file-1").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
