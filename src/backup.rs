//! `hoglet backup --to FILE` and `hoglet restore --from FILE`: a consistent copy of a SQLite
//! database that a server may be writing, and putting such a copy back in place of one no
//! process has open. PostgreSQL has its own tools (`pg_dump`, `pg_restore`), which these
//! commands point at.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

use crate::admin::AdminError;
use crate::config::{DatabaseUrl, redact_url};

/// How long restore waits for the target's lock before it calls the database in use.
const LOCK_WAIT: Duration = Duration::from_millis(200);
/// How long backup waits on a lock (a checkpoint's moment) before giving up.
const BUSY_WAIT: Duration = Duration::from_secs(5);

/// `hoglet backup --to FILE [--force]`.
pub fn backup(database: &DatabaseUrl, to: &Path, force: bool) -> Result<Value, AdminError> {
    let source = sqlite_path(database, |url| {
        format!(
            "the database is PostgreSQL: back it up with pg_dump, e.g. \
             pg_dump --format=custom --file=FILE '{url}'"
        )
    })?;
    if !source.is_file() {
        return Err(invalid(format!("no database at {}", source.display())));
    }
    if !force && to.symlink_metadata().is_ok() {
        return Err(AdminError::Usage(format!(
            "{} already exists: choose another file, or pass --force to replace it",
            to.display()
        )));
    }
    let started = Instant::now();
    let temporary = temporary_beside(to)?;
    let result = (|| {
        // VACUUM INTO reads the whole database in one read transaction: the copy is the
        // snapshot at its start, and in WAL mode a reader never blocks the server's writer (nor
        // is blocked by it), so writes go on while the copy is made. The online backup API in
        // steps would restart each time another connection writes, and might never finish
        // under a steady stream of writes.
        let conn = Connection::open_with_flags(&source, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .with_context(|| format!("opening {}", source.display()))?;
        conn.busy_timeout(BUSY_WAIT).map_err(anyhow::Error::from)?;
        conn.execute("VACUUM INTO ?1", [path_text(&temporary)?])
            .with_context(|| format!("copying {}", source.display()))?;
        drop(conn);
        sync_file(&temporary)?;
        let users = count_users(&temporary)?;
        if force {
            std::fs::rename(&temporary, to)
                .with_context(|| format!("moving the copy to {}", to.display()))?;
        } else {
            // A hard link fails when the name exists: no race with another writer of `to`.
            std::fs::hard_link(&temporary, to).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    AdminError::Usage(format!(
                        "{} already exists: choose another file, or pass --force to replace it",
                        to.display()
                    ))
                } else {
                    anyhow::Error::new(e)
                        .context(format!("moving the copy to {}", to.display()))
                        .into()
                }
            })?;
            std::fs::remove_file(&temporary).ok();
        }
        sync_directory(to)?;
        Ok::<_, AdminError>(users)
    })();
    if result.is_err() {
        std::fs::remove_file(&temporary).ok();
    }
    let users = result?;
    let bytes = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    Ok(json!({
        "path": to.display().to_string(),
        "bytes": bytes,
        "users": users,
        "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    }))
}

/// `hoglet restore --from FILE`.
pub fn restore(database: &DatabaseUrl, from: &Path) -> Result<Value, AdminError> {
    let target = sqlite_path(database, |url| {
        format!(
            "the database is PostgreSQL: restore a pg_dump file with pg_restore, e.g. \
             pg_restore --clean --if-exists --dbname '{url}' FILE (psql for a plain SQL dump)"
        )
    })?;
    if !from.is_file() {
        return Err(AdminError::Usage(format!("no file at {}", from.display())));
    }
    let wal = sidecar(from, "-wal");
    if wal.metadata().is_ok_and(|m| m.len() > 0) {
        return Err(invalid(format!(
            "{} has writes in {} that a copy of the file alone would lose: make backups with \
             hoglet backup",
            from.display(),
            wal.display()
        )));
    }
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
    }
    // The checks run on the copy that is put in place, never on (or changing) the backup.
    let temporary = temporary_beside(&target)?;
    let result = (|| {
        std::fs::copy(from, &temporary).with_context(|| format!("copying {}", from.display()))?;
        let users = check_backup(from, &temporary)?;
        sync_file(&temporary)?;
        let guard = lock_unused(&target)?;
        // Holding the target's exclusive lock (or with no target at all), no process uses the
        // old database: its -wal and -shm are stale and would be replayed onto the new file,
        // so they go before the new file takes the name.
        for suffix in ["-wal", "-shm", "-journal"] {
            match std::fs::remove_file(sidecar(&target, suffix)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("removing {}", sidecar(&target, suffix).display()))
                        .into());
                }
                _ => {}
            }
        }
        std::fs::rename(&temporary, &target)
            .with_context(|| format!("moving the backup to {}", target.display()))?;
        sync_directory(&target)?;
        drop(guard);
        Ok::<_, AdminError>(users)
    })();
    if result.is_err() {
        std::fs::remove_file(&temporary).ok();
        std::fs::remove_file(sidecar(&temporary, "-journal")).ok();
    }
    let users = result?;
    let bytes = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    Ok(json!({
        "path": target.display().to_string(),
        "bytes": bytes,
        "users": users,
    }))
}

/// Checks the copy of a backup: SQLite says it is whole, and it is a hoglet database at a
/// schema version this binary knows (an older one is migrated at the next start). Leaves it in
/// rollback-journal mode, a single self-contained file (the server turns WAL on when it opens
/// it). Returns its number of users.
fn check_backup(from: &Path, copy: &Path) -> Result<i64, AdminError> {
    let shown = from.display();
    let not_database =
        |e: rusqlite::Error| invalid(format!("{shown} is not a usable SQLite database: {e}"));
    let conn = Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(not_database)?;
    conn.query_row("PRAGMA journal_mode = DELETE", [], |r| {
        r.get::<_, String>(0)
    })
    .map_err(not_database)?;
    let mut problems = Vec::new();
    {
        let mut statement = conn
            .prepare("PRAGMA integrity_check")
            .map_err(not_database)?;
        let mut rows = statement.query([]).map_err(not_database)?;
        while let Some(row) = rows.next().map_err(not_database)? {
            problems.push(row.get::<_, String>(0).map_err(not_database)?);
        }
    }
    if problems != ["ok"] {
        let first: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
        return Err(invalid(format!(
            "{shown} is damaged (integrity check: {})",
            first.join("; ")
        )));
    }
    let version: Option<i64> = conn
        .query_row(
            "SELECT max(version) FROM refinery_schema_history",
            [],
            |r| r.get(0),
        )
        .map_err(|_| {
            invalid(format!(
                "{shown} is not a hoglet database (no schema history)"
            ))
        })?;
    let Some(version) = version else {
        return Err(invalid(format!(
            "{shown} is not a hoglet database (no schema history)"
        )));
    };
    let known = crate::store::sqlite::latest_schema_version();
    if version > known {
        return Err(invalid(format!(
            "{shown} is at schema version {version}, newer than this hoglet knows ({known}): \
             restore it with the hoglet that made it"
        )));
    }
    let users = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .map_err(not_database)?;
    conn.close().map_err(|(_, e)| not_database(e))?;
    Ok(users)
}

/// Proof that no process has the database at `target` open, held until dropped: a connection
/// holding SQLite's EXCLUSIVE lock on the file. `None` when there is no file.
///
/// Why this is reliable in WAL mode: a WAL connection keeps its SHARED lock on the database
/// file from its first read until it closes, between transactions too (SQLite itself relies on
/// this: the last connection to close is the one that can take EXCLUSIVE, and only it
/// checkpoints and deletes the WAL). A running server keeps its writer connection open, so it
/// holds that lock for as long as it runs, idle or not. `BEGIN EXCLUSIVE` alone would not do:
/// in WAL mode it takes only the WAL's write lock, which an idle server does not hold. With
/// `locking_mode = EXCLUSIVE`, opening the WAL takes the file's EXCLUSIVE lock, which fails
/// while any other connection holds SHARED. Switching the old file to rollback mode (allowed
/// only with that lock) closes its WAL, so closing this connection later touches no file by
/// name (a WAL connection deletes `-wal` by name on close, which after the rename would be the
/// new database's).
fn lock_unused(target: &Path) -> Result<Option<Connection>, AdminError> {
    if !target.exists() {
        return Ok(None);
    }
    let shown = target.display();
    let in_use = || {
        AdminError::Invalid(format!(
            "{shown} is in use (a running hoglet or another program has it open): stop it first"
        ))
    };
    let conn = Connection::open_with_flags(target, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .with_context(|| format!("opening {shown}"))?;
    conn.busy_timeout(LOCK_WAIT).map_err(anyhow::Error::from)?;
    let locked = (|| {
        conn.query_row("PRAGMA locking_mode = EXCLUSIVE", [], |r| {
            r.get::<_, String>(0)
        })?;
        let mode: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
        // In rollback mode already (or just switched), take and keep EXCLUSIVE explicitly.
        conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")?;
        Ok::<_, rusqlite::Error>(mode)
    })();
    match locked {
        Ok(mode) if mode.eq_ignore_ascii_case("delete") => Ok(Some(conn)),
        Ok(_) => Err(in_use()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Err(in_use())
        }
        Err(e) => Err(invalid(format!(
            "{shown} cannot be locked ({e}); if it is damaged, move it away (with its -wal and \
             -shm files) and restore again"
        ))),
    }
}

/// The SQLite file of `database`, or the usage error pointing PostgreSQL at its own tools: the
/// command shape with the URL, its password hidden.
fn sqlite_path(
    database: &DatabaseUrl,
    postgres: impl FnOnce(&str) -> String,
) -> Result<PathBuf, AdminError> {
    match database {
        DatabaseUrl::Sqlite(path) => Ok(path.clone()),
        DatabaseUrl::Postgres(url) => Err(AdminError::Usage(postgres(&redact_url(url)))),
    }
}

fn count_users(path: &Path) -> anyhow::Result<i64> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
}

/// A fresh name in the same directory as `path` (so that a rename is atomic).
fn temporary_beside(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut temporary = name.to_os_string();
    temporary.push(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    Ok(path.with_file_name(temporary))
}

/// `path` with `suffix` appended (`hoglet.db` → `hoglet.db-wal`).
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn path_text(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

fn sync_file(path: &Path) -> anyhow::Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// Makes a rename in `path`'s directory durable.
fn sync_directory(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

fn invalid(message: String) -> AdminError {
    AdminError::Invalid(message)
}
