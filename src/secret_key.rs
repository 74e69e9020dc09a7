//! The secret key every sealed value (TOTP secrets, GitHub tokens), emailed link and keyed hash
//! derives from: where it comes from, and the checks that keep it out of the database and the same
//! on every server that shares one.
//!
//! * `HOGLET_SECRET_KEY` wins. Otherwise the key file: `HOGLET_SECRET_KEY_FILE`, or on SQLite
//!   `<database path>.secret`, created on first start (mode 0600). On PostgreSQL replicas must
//!   share the key, so one is never generated: no key is a startup error.
//! * Earlier versions stored a generated key in the `settings` table, where a copy of the database
//!   was enough to forge reset links and decrypt TOTP secrets. Such a key is moved to the key file
//!   (SQLite) or, once the same key is configured, deleted from the database.
//! * A check value (an HMAC of a fixed label under the key) is stored at first start; a server
//!   whose key does not match it refuses to start instead of failing later with "cannot decrypt".

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, DatabaseUrl};
use crate::store::Store;

/// The `settings` row where earlier versions kept the generated key.
pub const LEGACY_SETTING: &str = "secret_key";
/// The `settings` row holding the key check value (not secret: an HMAC under the key).
pub const CHECK_SETTING: &str = "secret_key_check";
const CHECK_LABEL: &[u8] = b"hoglet secret key check v1";
/// Random bytes of a generated key (written in base57: about 65 characters).
const GENERATED_KEY_BYTES: usize = 48;

/// Where the key in use came from (for messages; never the key itself).
#[derive(Clone, Debug)]
pub enum KeySource {
    Env,
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env => f.write_str("HOGLET_SECRET_KEY"),
            Self::File(path) => write!(f, "the key file {}", path.display()),
        }
    }
}

/// The key file used when `HOGLET_SECRET_KEY_FILE` is not set: `<database path>.secret` on SQLite,
/// none on PostgreSQL.
pub fn default_key_file(database: &DatabaseUrl) -> Option<PathBuf> {
    match database {
        DatabaseUrl::Sqlite(path) => {
            let mut name = path.as_os_str().to_owned();
            name.push(".secret");
            Some(PathBuf::from(name))
        }
        DatabaseUrl::Postgres(_) => None,
    }
}

/// The key to run with: from the environment or the key file (created on SQLite when missing),
/// after moving a key left in the database by an earlier version and checking the key against
/// the one the database was set up with.
pub async fn resolve(config: &Config, store: &dyn Store) -> anyhow::Result<SecretString> {
    let legacy = store
        .setting(LEGACY_SETTING)
        .await
        .context("reading the settings table")?;
    let key_file = config
        .secret_key_file
        .clone()
        .or_else(|| default_key_file(&config.database_url));
    let postgres = matches!(config.database_url, DatabaseUrl::Postgres(_));

    let (key, source, created) = match (&config.secret_key, key_file) {
        (Some(key), _) => (key.clone(), KeySource::Env, false),
        (None, Some(path)) => match read_key_file(&path)? {
            Some(key) => (key, KeySource::File(path), false),
            None if postgres => bail!(
                "the secret key file {} does not exist: on PostgreSQL every replica must use the same \
                 secret key, so hoglet does not generate one; put the shared key in that file or set \
                 HOGLET_SECRET_KEY{}",
                path.display(),
                legacy_hint(legacy.is_some())
            ),
            None => {
                // An earlier version's key keeps what was sealed with it readable.
                let new_key = legacy
                    .clone()
                    .unwrap_or_else(|| crate::crypto::random_token(GENERATED_KEY_BYTES));
                let key = match create_key_file(&path, &new_key)? {
                    true => SecretString::from(new_key),
                    // Another process created it first: use theirs.
                    false => read_key_file(&path)?.with_context(|| {
                        format!("the secret key file {} vanished", path.display())
                    })?,
                };
                (key, KeySource::File(path), true)
            }
        },
        (None, None) => bail!(
            "HOGLET_SECRET_KEY is not set: on PostgreSQL every replica must use the same secret key, \
             so hoglet does not generate one; set HOGLET_SECRET_KEY (or HOGLET_SECRET_KEY_FILE) to \
             the same long random value on every replica, e.g. the output of `openssl rand -base64 48`{}",
            legacy_hint(legacy.is_some())
        ),
    };

    if let Some(stored) = legacy {
        let same =
            crate::crypto::constant_time_eq(stored.as_bytes(), key.expose_secret().as_bytes());
        if !same {
            bail!(
                "the database holds a secret key generated by an earlier hoglet (table settings, key \
                 'secret_key'), and {source} holds a different one: TOTP secrets, GitHub tokens and \
                 emailed links made with the stored key would stop working. Use the stored key (SELECT \
                 value FROM settings WHERE key = 'secret_key') as HOGLET_SECRET_KEY or in the key \
                 file, and hoglet moves it out of the database at the next start; or delete that row \
                 if nothing was ever encrypted with it"
            );
        }
        store
            .delete_setting(LEGACY_SETTING, &stored)
            .await
            .context("deleting the secret key from the settings table")?;
        if created {
            tracing::warn!(file = %source, "moved the secret key from the database to its key file (mode 0600): keep that file with the database's backups, but never inside them");
        } else {
            tracing::warn!(source = %source, "deleted the copy of the secret key that an earlier version stored in the database");
        }
    } else if created {
        tracing::info!(file = %source, "generated a secret key (mode 0600): keep this file with the database's backups, but never inside them");
    } else {
        tracing::info!(source = %source, "read the secret key");
    }

    check_against_database(store, &key, &source).await?;
    Ok(key)
}

fn legacy_hint(has_legacy: bool) -> &'static str {
    if has_legacy {
        ". This database holds the key an earlier hoglet generated: use it (SELECT value FROM \
         settings WHERE key = 'secret_key') and hoglet removes it from the database at the next start"
    } else {
        ""
    }
}

/// Stores the key check value at first start; refuses a key that does not match it.
async fn check_against_database(
    store: &dyn Store,
    key: &SecretString,
    source: &KeySource,
) -> anyhow::Result<()> {
    let check = hex::encode(crate::crypto::hmac_sha256(
        key.expose_secret().as_bytes(),
        CHECK_LABEL,
    ));
    let stored = store
        .setting_or_insert(CHECK_SETTING, &check)
        .await
        .context("storing the secret key check")?;
    if !crate::crypto::constant_time_eq(stored.as_bytes(), check.as_bytes()) {
        bail!(
            "the secret key ({source}) differs from the one this database was set up with (its key \
             check does not match): every server on one database must use the same secret key, or \
             TOTP secrets, GitHub tokens and emailed links cannot be opened. Start with the original key"
        );
    }
    Ok(())
}

/// The key in `path`, `None` when the file does not exist.
fn read_key_file(path: &Path) -> anyhow::Result<Option<SecretString>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the secret key file {}", path.display()));
        }
    };
    let key = text.trim();
    if key.is_empty() {
        bail!("the secret key file {} is empty", path.display());
    }
    warn_if_shared(path);
    Ok(Some(SecretString::from(key.to_string())))
}

/// Warns when others may read the key file. Not refused: secret mounts (Kubernetes, Docker) are
/// often 0644 inside a container where only hoglet runs.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    mode = format!("{mode:04o}"),
                    "the secret key file is accessible to other users: chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Writes `key` to `path` (mode 0600) without ever leaving a partial file: a temporary file is
/// written and synced, then linked into place, which fails if `path` exists. Returns false when
/// another process created `path` first.
fn create_key_file(path: &Path, key: &str) -> anyhow::Result<bool> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("the secret key file {} names no file", path.display()))?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        crate::crypto::random_alphanumeric(8)
    ));
    let context = || format!("creating the secret key file {}", path.display());
    let written = (|| -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        file.write_all(key.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(e).with_context(context);
    }
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            // The new directory entry survives a crash only once the directory is synced.
            if let Ok(dir) = std::fs::File::open(&dir) {
                let _ = dir.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(context),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_file_sits_next_to_the_sqlite_database() {
        let sqlite = DatabaseUrl::parse("sqlite:///var/lib/hoglet/hoglet.db").unwrap();
        assert_eq!(
            default_key_file(&sqlite),
            Some(PathBuf::from("/var/lib/hoglet/hoglet.db.secret"))
        );
        let postgres = DatabaseUrl::parse("postgres://u@h:5432/d").unwrap();
        assert_eq!(default_key_file(&postgres), None);
    }

    #[test]
    fn key_files_are_created_once_and_read_back_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.secret");
        assert!(read_key_file(&path).unwrap().is_none());
        assert!(create_key_file(&path, "first").unwrap());
        assert!(!create_key_file(&path, "second").unwrap(), "never replaced");
        assert_eq!(
            read_key_file(&path).unwrap().unwrap().expose_secret(),
            "first"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        std::fs::write(&path, " \n").unwrap();
        let empty = read_key_file(&path).unwrap_err().to_string();
        assert!(
            empty.contains("is empty") && empty.contains("k.secret"),
            "{empty}"
        );
    }
}
