//! The embedded store: one SQLite file in the data dir.
//!
//! rusqlite (with `bundled`, so no system library is needed) rather than sqlx: the control
//! plane's writes are few and small, a synchronous API called from `spawn_blocking` is the
//! simplest correct use of SQLite from tokio, and it needs no query macros or offline data.
//! WAL with `synchronous = NORMAL`: a commit survives a killed process (what the tests and a
//! restarted control plane rely on); only a power loss may drop the last few commits.

use std::path::Path;
use std::sync::Mutex;

use outpost_wire::Purge;
use rusqlite::{params, Connection, OptionalExtension};

use super::*;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    toml TEXT NOT NULL,
    author TEXT NOT NULL,
    message TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    diff TEXT NOT NULL,
    reverted_from INTEGER
);
CREATE TABLE IF NOT EXISTS pops (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    location TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    state TEXT NOT NULL,
    applied_version INTEGER,
    applied_ms INTEGER,
    nack_version INTEGER,
    nack_errors TEXT,
    nack_ms INTEGER
);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    pop TEXT,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    remote TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS purges (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    author TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purge_targets (
    seq INTEGER NOT NULL,
    pop TEXT NOT NULL,
    acked_ms INTEGER,
    error TEXT,
    PRIMARY KEY (seq, pop)
);
CREATE TABLE IF NOT EXISTS pop_purge_cursor (
    pop TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    name TEXT PRIMARY KEY,
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    not_after_ms INTEGER,
    uploaded_ms INTEGER NOT NULL
);
";

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    pub fn open(path: &Path) -> StoreResult<Self> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// An in-memory store for tests.
    pub fn in_memory() -> StoreResult<Self> {
        let conn = Connection::open_in_memory().map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        f(&mut conn).map_err(backend)
    }
}

fn version_row(row: &rusqlite::Row<'_>, with_text: bool) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        version: to_u64(row.get(0)?),
        hash: row.get(1)?,
        author: row.get(2)?,
        message: row.get(3)?,
        created_ms: row.get(4)?,
        diff: row.get(5)?,
        reverted_from: row.get::<_, Option<i64>>(6)?.map(to_u64),
        toml: if with_text { row.get(7)? } else { String::new() },
    })
}

const VERSION_COLUMNS: &str = "version, hash, author, message, created_ms, diff, reverted_from, toml";

const POP_COLUMNS: &str = "p.id, p.region, p.location, p.capacity, p.state, p.applied_version, p.applied_ms, p.nack_version, p.nack_errors, p.nack_ms, c.seq";

fn pop_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PopRecord> {
    let state: String = row.get(4)?;
    let errors: Option<String> = row.get(8)?;
    Ok(PopRecord {
        id: row.get(0)?,
        region: row.get(1)?,
        location: row.get(2)?,
        capacity: u32::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        state: PopState::parse(&state).unwrap_or(PopState::Active),
        applied_version: row.get::<_, Option<i64>>(5)?.map(to_u64),
        applied_ms: row.get(6)?,
        nack_version: row.get::<_, Option<i64>>(7)?.map(to_u64),
        nack_errors: errors
            .and_then(|e| serde_json::from_str(&e).ok())
            .unwrap_or_default(),
        nack_ms: row.get(9)?,
        last_purge_seq: row.get::<_, Option<i64>>(10)?.map(to_u64),
    })
}

fn token_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let role: String = row.get(2)?;
    Ok(TokenRecord {
        name: row.get(0)?,
        hash: row.get(1)?,
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        pop: row.get(3)?,
        created_ms: row.get(4)?,
    })
}

fn purge_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PurgeRecord> {
    let body: String = row.get(1)?;
    let purge: Purge = serde_json::from_str(&body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(PurgeRecord {
        seq: to_u64(row.get(0)?),
        purge,
        author: row.get(2)?,
        created_ms: row.get(3)?,
    })
}

fn targets_of(conn: &Connection, seq: u64) -> rusqlite::Result<Vec<PurgeTarget>> {
    let mut stmt =
        conn.prepare_cached("SELECT pop, acked_ms, error FROM purge_targets WHERE seq = ?1 ORDER BY pop")?;
    let rows = stmt.query_map([to_i64(seq)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

impl Store for SqliteStore {
    fn latest_version(&self) -> StoreResult<Option<VersionRecord>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM versions ORDER BY version DESC LIMIT 1"),
                [],
                |r| version_row(r, true),
            )
            .optional()
        })
    }

    fn version(&self, n: u64) -> StoreResult<Option<VersionRecord>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE version = ?1"),
                [to_i64(n)],
                |r| version_row(r, true),
            )
            .optional()
        })
    }

    fn versions(&self) -> StoreResult<Vec<VersionRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM versions ORDER BY version DESC"
            ))?;
            let rows = stmt.query_map([], |r| version_row(r, false))?;
            rows.collect()
        })
    }

    fn insert_version(&self, new: NewVersion, base: Option<u64>) -> StoreResult<VersionRecord> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        let latest: u64 = tx
            .query_row("SELECT COALESCE(MAX(version), 0) FROM versions", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(to_u64)
            .map_err(backend)?;
        if let Some(base) = base {
            if base != latest {
                return Err(StoreError::Conflict { base, latest });
            }
        }
        let version = latest + 1;
        tx.execute(
            "INSERT INTO versions (version, hash, toml, author, message, created_ms, diff, reverted_from) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                to_i64(version),
                new.hash,
                new.toml,
                new.author,
                new.message,
                new.created_ms,
                new.diff,
                new.reverted_from.map(to_i64)
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(VersionRecord {
            version,
            hash: new.hash,
            author: new.author,
            message: new.message,
            created_ms: new.created_ms,
            diff: new.diff,
            reverted_from: new.reverted_from,
            toml: new.toml,
        })
    }

    fn pops(&self) -> StoreResult<Vec<PopRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {POP_COLUMNS} FROM pops p LEFT JOIN pop_purge_cursor c ON c.pop = p.id ORDER BY p.id"
            ))?;
            let rows = stmt.query_map([], pop_row)?;
            rows.collect()
        })
    }

    fn pop(&self, id: &str) -> StoreResult<Option<PopRecord>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {POP_COLUMNS} FROM pops p LEFT JOIN pop_purge_cursor c ON c.pop = p.id WHERE p.id = ?1"),
                [id],
                pop_row,
            )
            .optional()
        })
    }

    fn upsert_pop(&self, spec: &PopSpec) -> StoreResult<PopRecord> {
        self.with(|c| {
            c.execute(
                "INSERT INTO pops (id, region, location, capacity, state) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET region = excluded.region, location = excluded.location,
                 capacity = excluded.capacity, state = excluded.state",
                params![
                    spec.id,
                    spec.region,
                    spec.location,
                    spec.capacity,
                    spec.state.as_str()
                ],
            )?;
            Ok(())
        })?;
        self.pop(&spec.id)?
            .ok_or_else(|| StoreError::Backend("PoP vanished after upsert".into()))
    }

    fn delete_pop(&self, id: &str) -> StoreResult<bool> {
        self.with(|c| {
            c.execute("DELETE FROM pop_purge_cursor WHERE pop = ?1", [id])?;
            c.execute("DELETE FROM tokens WHERE pop = ?1", [id])?;
            Ok(c.execute("DELETE FROM pops WHERE id = ?1", [id])? > 0)
        })
    }

    fn record_applied(&self, pop: &str, version: u64, at_ms: i64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "UPDATE pops SET applied_version = ?2, applied_ms = ?3 WHERE id = ?1",
                params![pop, to_i64(version), at_ms],
            )?;
            Ok(())
        })
    }

    fn record_nack(&self, pop: &str, version: u64, errors: &[String], at_ms: i64) -> StoreResult<()> {
        let errors = serde_json::to_string(errors).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "UPDATE pops SET nack_version = ?2, nack_errors = ?3, nack_ms = ?4 WHERE id = ?1",
                params![pop, to_i64(version), errors, at_ms],
            )?;
            Ok(())
        })
    }

    fn token_count(&self) -> StoreResult<u64> {
        self.with(|c| c.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get::<_, i64>(0)))
            .map(to_u64)
    }

    fn insert_token(&self, token: &TokenRecord) -> StoreResult<()> {
        let result = self.with(|c| {
            c.execute(
                "INSERT INTO tokens (name, hash, role, pop, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    token.name,
                    token.hash,
                    token.role.as_str(),
                    token.pop,
                    token.created_ms
                ],
            )
        });
        match result {
            Ok(_) => Ok(()),
            Err(StoreError::Backend(e)) if e.contains("UNIQUE") => Err(StoreError::Invalid(format!(
                "a token named \"{}\" already exists",
                token.name
            ))),
            Err(e) => Err(e),
        }
    }

    fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        self.with(|c| {
            c.query_row(
                "SELECT name, hash, role, pop, created_ms FROM tokens WHERE hash = ?1",
                [hash],
                token_row,
            )
            .optional()
        })
    }

    fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT name, hash, role, pop, created_ms FROM tokens ORDER BY name")?;
            let rows = stmt.query_map([], token_row)?;
            rows.collect()
        })
    }

    fn delete_token(&self, name: &str) -> StoreResult<bool> {
        self.with(|c| Ok(c.execute("DELETE FROM tokens WHERE name = ?1", [name])? > 0))
    }

    fn append_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at_ms, actor, action, target, detail, remote) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![e.at_ms, e.actor, e.action, e.target, e.detail, e.remote],
            )?;
            Ok(())
        })
    }

    fn audit(&self, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at_ms, actor, action, target, detail, remote FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(AuditEntry {
                    id: to_u64(r.get(0)?),
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    detail: r.get(5)?,
                    remote: r.get(6)?,
                })
            })?;
            rows.collect()
        })
    }

    fn insert_purge(
        &self,
        purge: &Purge,
        author: &str,
        at_ms: i64,
        targets: &[String],
    ) -> StoreResult<PurgeRecord> {
        let body = serde_json::to_string(purge).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO purges (body, author, created_ms) VALUES (?1, ?2, ?3)",
                params![body, author, at_ms],
            )?;
            let seq = to_u64(tx.last_insert_rowid());
            {
                let mut stmt = tx.prepare_cached("INSERT INTO purge_targets (seq, pop) VALUES (?1, ?2)")?;
                for pop in targets {
                    stmt.execute(params![to_i64(seq), pop])?;
                }
            }
            tx.commit()?;
            Ok(PurgeRecord {
                seq,
                purge: purge.clone(),
                author: author.to_owned(),
                created_ms: at_ms,
            })
        })
    }

    fn purges_after(&self, after: u64, limit: u32) -> StoreResult<Vec<PurgeRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, body, author, created_ms FROM purges WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![to_i64(after), limit], purge_row)?;
            rows.collect()
        })
    }

    fn latest_purge_seq(&self) -> StoreResult<u64> {
        self.with(|c| {
            c.query_row("SELECT COALESCE(MAX(seq), 0) FROM purges", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .map(to_u64)
    }

    fn record_purge_acks(&self, acks: &[PurgeAck]) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut ack = tx.prepare_cached(
                    "INSERT INTO purge_targets (seq, pop, acked_ms, error) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(seq, pop) DO UPDATE SET acked_ms = excluded.acked_ms, error = excluded.error
                     WHERE purge_targets.acked_ms IS NULL",
                )?;
                let mut cursor = tx.prepare_cached(
                    "INSERT INTO pop_purge_cursor (pop, seq) VALUES (?1, ?2)
                     ON CONFLICT(pop) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                )?;
                for a in acks {
                    ack.execute(params![to_i64(a.seq), a.pop, a.acked_ms, a.error])?;
                    cursor.execute(params![a.pop, to_i64(a.seq)])?;
                }
            }
            tx.commit()
        })
    }

    fn skip_purges(&self, pop: &str, upto: u64, at_ms: i64, reason: &str) -> StoreResult<u64> {
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE purge_targets SET acked_ms = ?3, error = ?4 WHERE pop = ?1 AND seq <= ?2 AND acked_ms IS NULL",
                params![pop, to_i64(upto), at_ms, reason],
            )?;
            tx.execute(
                "INSERT INTO pop_purge_cursor (pop, seq) VALUES (?1, ?2)
                 ON CONFLICT(pop) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                params![pop, to_i64(upto)],
            )?;
            tx.commit()?;
            Ok(n as u64)
        })
    }

    fn purge_status(&self, seq: u64) -> StoreResult<Option<PurgeStatus>> {
        self.with(|c| {
            let record = c
                .query_row(
                    "SELECT seq, body, author, created_ms FROM purges WHERE seq = ?1",
                    [to_i64(seq)],
                    purge_row,
                )
                .optional()?;
            match record {
                Some(record) => Ok(Some(PurgeStatus {
                    targets: targets_of(c, record.seq)?,
                    record,
                })),
                None => Ok(None),
            }
        })
    }

    fn recent_purges(&self, limit: u32) -> StoreResult<Vec<PurgeStatus>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT seq, body, author, created_ms FROM purges ORDER BY seq DESC LIMIT ?1")?;
            let records: Vec<PurgeRecord> = stmt.query_map([limit], purge_row)?.collect::<Result<_, _>>()?;
            records
                .into_iter()
                .map(|record| {
                    Ok(PurgeStatus {
                        targets: targets_of(c, record.seq)?,
                        record,
                    })
                })
                .collect()
        })
    }

    fn put_certificate(&self, cert: &CertificateRecord) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO certificates (name, cert_pem, key_pem, not_after_ms, uploaded_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(name) DO UPDATE SET cert_pem = excluded.cert_pem, key_pem = excluded.key_pem,
                 not_after_ms = excluded.not_after_ms, uploaded_ms = excluded.uploaded_ms",
                params![cert.name, cert.cert_pem, cert.key_pem, cert.not_after_ms, cert.uploaded_ms],
            )?;
            Ok(())
        })
    }

    fn certificates(&self) -> StoreResult<Vec<CertificateRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, cert_pem, key_pem, not_after_ms, uploaded_ms FROM certificates ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(CertificateRecord {
                    name: r.get(0)?,
                    cert_pem: r.get(1)?,
                    key_pem: r.get(2)?,
                    not_after_ms: r.get(3)?,
                    uploaded_ms: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    fn delete_certificate(&self, name: &str) -> StoreResult<bool> {
        self.with(|c| Ok(c.execute("DELETE FROM certificates WHERE name = ?1", [name])? > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_version(toml: &str) -> NewVersion {
        NewVersion {
            toml: toml.into(),
            hash: outpost_wire::config_hash(toml),
            author: "t".into(),
            message: "m".into(),
            created_ms: 1,
            diff: String::new(),
            reverted_from: None,
        }
    }

    #[test]
    fn versions_are_numbered_and_base_is_checked_atomically() {
        let s = SqliteStore::in_memory().unwrap();
        assert_eq!(s.insert_version(new_version("a"), Some(0)).unwrap().version, 1);
        assert_eq!(s.insert_version(new_version("b"), None).unwrap().version, 2);
        match s.insert_version(new_version("c"), Some(1)) {
            Err(StoreError::Conflict { base: 1, latest: 2 }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(s.latest_version().unwrap().unwrap().toml, "b");
        assert_eq!(s.versions().unwrap().len(), 2);
    }

    #[test]
    fn purges_are_ordered_and_acks_are_recorded_once() {
        let s = SqliteStore::in_memory().unwrap();
        let purge: Purge = serde_json::from_str(r#"{"tag":"x"}"#).unwrap();
        let targets = vec!["a".to_owned(), "b".to_owned()];
        let p1 = s.insert_purge(&purge, "t", 10, &targets).unwrap();
        let p2 = s.insert_purge(&purge, "t", 11, &targets).unwrap();
        assert_eq!((p1.seq, p2.seq), (1, 2));
        assert_eq!(s.purges_after(1, 10).unwrap().len(), 1);
        let ack = |seq, ms| PurgeAck {
            seq,
            pop: "a".into(),
            acked_ms: ms,
            error: None,
        };
        s.record_purge_acks(&[ack(1, 20), ack(1, 99)]).unwrap();
        let status = s.purge_status(1).unwrap().unwrap();
        assert_eq!(status.targets[0], ("a".into(), Some(20), None));
        assert_eq!(status.targets[1], ("b".into(), None, None));
        // "b" comes back with no state: both purges are closed as skipped, not left pending.
        assert_eq!(s.skip_purges("b", 2, 30, "skipped").unwrap(), 2);
        let status = s.purge_status(1).unwrap().unwrap();
        assert_eq!(status.targets[1], ("b".into(), Some(30), Some("skipped".into())));
        assert_eq!(s.skip_purges("a", 2, 30, "skipped").unwrap(), 1);
    }
}
