//! `hoglet import posthog`: accounts carried over from a PostHog database, so existing users sign
//! in with their passwords, their `phx_` keys and their 2FA.
//!
//! [`source`] reads PostHog in one read-only snapshot, a batch at a time; this module turns each
//! batch into hoglet's rows (hashing a legacy plaintext key, sealing a TOTP key, hashing backup
//! codes) and hands it to [`crate::store::Store::import`], one transaction per batch. Tables go
//! parents first; a row whose parent was skipped is skipped too, so what lands is consistent after
//! every batch and an interrupted run is completed by the next.

pub mod progress;
pub mod source;

use std::collections::HashSet;

use secrecy::ExposeSecret;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::api_key;
use crate::service::accounts::{backup_code_hash, seal_totp_secret};
use crate::state::AppState;
use crate::store::{
    ImportApiKey, ImportBackupCode, ImportBatch, ImportReport, ImportSkip, ImportTotpDevice,
};
use progress::Progress;
use source::{Query, Snapshot, Source};

/// What the command was asked.
pub struct Options {
    /// The PostHog database (read only).
    pub from: secrecy::SecretString,
    /// Only these organizations, their teams and members; empty: everything.
    pub organizations: Vec<Uuid>,
    /// Rows per read and per transaction.
    pub batch: usize,
    /// Check everything, write nothing.
    pub dry_run: bool,
}

/// The command's answer: rows written per kind (in a dry run: that would be), and what was left
/// out and why. Rows an earlier run brought are in neither.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub users: u64,
    pub organizations: u64,
    pub memberships: u64,
    pub teams: u64,
    pub personal_api_keys: u64,
    pub totp_devices: u64,
    pub backup_codes: u64,
    pub skipped: Vec<Skipped>,
    /// Rows already imported by an earlier run (left as they are).
    #[serde(skip)]
    pub present: u64,
}

impl Summary {
    /// Rows written (in a dry run: that would be), of every kind.
    pub fn written(&self) -> u64 {
        self.users
            + self.organizations
            + self.memberships
            + self.teams
            + self.personal_api_keys
            + self.totp_devices
            + self.backup_codes
    }

    /// The one-line outcome for people (stderr), e.g. "import: wrote 12 rows, 3 already
    /// imported before, 1 skipped".
    pub fn outcome(&self, dry_run: bool) -> String {
        let written = self.written();
        format!(
            "import: {} {written} rows, {} already imported before, {} skipped{}",
            if dry_run { "would write" } else { "wrote" },
            self.present,
            self.skipped.len(),
            if written == 0 { " (nothing new)" } else { "" }
        )
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Skipped {
    /// PostHog's table.
    pub table: &'static str,
    /// The row's PostHog id (a membership: `organization:user`).
    pub id: String,
    pub reason: String,
}

/// Ids left out so far, so their dependents are left out too.
#[derive(Default)]
struct Left {
    organizations: HashSet<Uuid>,
    teams: HashSet<i64>,
    users: HashSet<i64>,
}

struct Run<'a> {
    state: &'a AppState,
    options: &'a Options,
    progress: &'a Progress,
    summary: Summary,
    left: Left,
}

/// Runs the import; the summary is the command's output.
pub async fn run(
    state: &AppState,
    options: &Options,
    progress: &Progress,
) -> anyhow::Result<Summary> {
    let mut source = Source::connect(options.from.expose_secret()).await?;
    let snapshot = source.snapshot(&options.organizations).await?;
    let mut run = Run {
        state,
        options,
        progress,
        summary: Summary::default(),
        left: Left::default(),
    };
    run.organizations(&snapshot).await?;
    run.teams(&snapshot).await?;
    run.users(&snapshot).await?;
    run.memberships(&snapshot).await?;
    run.api_keys(&snapshot).await?;
    run.totp_devices(&snapshot).await?;
    run.backup_codes(&snapshot).await?;
    Ok(run.summary)
}

impl Run<'_> {
    /// Reads `query` a batch at a time; `convert` turns a batch into hoglet's rows (noting rows
    /// it leaves out); each batch is written (or checked) in one transaction. Returns the ids
    /// the store skipped and how many rows it wrote.
    async fn table<T>(
        &mut self,
        snapshot: &Snapshot<'_>,
        table: &'static str,
        query: Query<T>,
        mut convert: impl FnMut(&mut Self, Vec<T>) -> anyhow::Result<ImportBatch>,
    ) -> anyhow::Result<(u64, Vec<String>)> {
        let total = snapshot.count(&query).await?;
        let bar = self.progress.table(table, total);
        let mut written = 0;
        let mut skipped_ids = Vec::new();
        let mut rows = snapshot.rows(&query).await?;
        while let Some(batch) = rows.next_batch(self.options.batch).await? {
            let read = batch.len() as u64;
            let skipped_before = self.summary.skipped.len();
            let batch = convert(self, batch)?;
            let converted_out = (self.summary.skipped.len() - skipped_before) as u64;
            let report = if batch.is_empty() {
                ImportReport::default()
            } else {
                let now = self.state.clock.now();
                self.state
                    .store
                    .import(batch, !self.options.dry_run, now)
                    .await?
            };
            written += report.written;
            self.summary.present += report.present;
            bar.advance(
                read,
                report.written,
                report.skipped.len() as u64 + converted_out,
            );
            for ImportSkip { id, reason } in report.skipped {
                skipped_ids.push(id.clone());
                self.skip(table, id, reason);
            }
        }
        drop(rows);
        bar.finish();
        Ok((written, skipped_ids))
    }

    fn skip(&mut self, table: &'static str, id: String, reason: String) {
        self.summary.skipped.push(Skipped { table, id, reason });
    }

    async fn organizations(&mut self, snapshot: &Snapshot<'_>) -> anyhow::Result<()> {
        let query = snapshot.organizations();
        let (written, skipped) = self
            .table(snapshot, "posthog_organization", query, |_, rows| {
                Ok(ImportBatch::Organizations(rows))
            })
            .await?;
        self.summary.organizations = written;
        self.left
            .organizations
            .extend(skipped.iter().filter_map(|id| Uuid::parse_str(id).ok()));
        Ok(())
    }

    async fn teams(&mut self, snapshot: &Snapshot<'_>) -> anyhow::Result<()> {
        let query = snapshot.teams();
        let (written, skipped) = self
            .table(snapshot, "posthog_team", query, |run, rows| {
                let mut kept = Vec::with_capacity(rows.len());
                for team in rows {
                    if run.left.organizations.contains(&team.organization_id) {
                        run.left.teams.insert(team.id);
                        run.skip(
                            "posthog_team",
                            team.id.to_string(),
                            "its organization was skipped".into(),
                        );
                    } else {
                        kept.push(team);
                    }
                }
                Ok(ImportBatch::Teams(kept))
            })
            .await?;
        self.summary.teams = written;
        self.left
            .teams
            .extend(skipped.iter().filter_map(|id| id.parse::<i64>().ok()));
        Ok(())
    }

    async fn users(&mut self, snapshot: &Snapshot<'_>) -> anyhow::Result<()> {
        let query = snapshot.users();
        let (written, skipped) = self
            .table(snapshot, "posthog_user", query, |run, mut rows| {
                // A current organization or team that was left out is no one's current one.
                for user in &mut rows {
                    if user
                        .current_organization_id
                        .is_some_and(|o| run.left.organizations.contains(&o))
                    {
                        user.current_organization_id = None;
                    }
                    if user
                        .current_team_id
                        .is_some_and(|t| run.left.teams.contains(&t))
                    {
                        user.current_team_id = None;
                    }
                }
                Ok(ImportBatch::Users(rows))
            })
            .await?;
        self.summary.users = written;
        self.left
            .users
            .extend(skipped.iter().filter_map(|id| id.parse::<i64>().ok()));
        Ok(())
    }

    async fn memberships(&mut self, snapshot: &Snapshot<'_>) -> anyhow::Result<()> {
        let query = snapshot.memberships();
        let (written, _) = self
            .table(
                snapshot,
                "posthog_organizationmembership",
                query,
                |run, rows| {
                    let mut kept = Vec::with_capacity(rows.len());
                    for membership in rows {
                        let id = format!("{}:{}", membership.organization_id, membership.user_id);
                        if run.left.organizations.contains(&membership.organization_id) {
                            run.skip(
                                "posthog_organizationmembership",
                                id,
                                "its organization was skipped".into(),
                            );
                        } else if run.left.users.contains(&membership.user_id) {
                            run.skip(
                                "posthog_organizationmembership",
                                id,
                                "its user was skipped".into(),
                            );
                        } else {
                            kept.push(membership);
                        }
                    }
                    Ok(ImportBatch::Memberships(kept))
                },
            )
            .await?;
        self.summary.memberships = written;
        Ok(())
    }

    async fn api_keys(&mut self, snapshot: &Snapshot<'_>) -> anyhow::Result<()> {
        const TABLE: &str = "posthog_personalapikey";
        let query = snapshot.api_keys();
        let (written, _) = self
            .table(snapshot, TABLE, query, |run, rows| {
                let mut kept = Vec::with_capacity(rows.len());
                for key in rows {
                    if run.left.users.contains(&key.user_id) {
                        run.skip(TABLE, key.id, "its user was skipped".into());
                        continue;
                    }
                    match convert_api_key(key) {
                        Ok(key) => kept.push(key),
                        Err((id, reason)) => run.skip(TABLE, id, reason),
                    }
                }
                Ok(ImportBatch::ApiKeys(kept))
            })
            .await?;
        self.summary.personal_api_keys = written;
        Ok(())
    }

    async fn totp_devices(&mut self, snapshot: &Snapshot<'_>) -> anyhow::Result<()> {
        const TABLE: &str = "otp_totp_totpdevice";
        let encrypted = snapshot.totp_key_encryption().await?;
        let query = snapshot.totp_devices();
        let (written, _) = self
            .table(snapshot, TABLE, query, |run, rows| {
                let mut kept = Vec::with_capacity(rows.len());
                for device in rows {
                    let id = device.id.to_string();
                    if run.left.users.contains(&device.user_id) {
                        run.skip(TABLE, id, "its user was skipped".into());
                        continue;
                    }
                    if let Some(migration) = &encrypted {
                        run.skip(
                            TABLE,
                            id,
                            format!(
                                "django-otp encrypts TOTP keys in this database (migration \
                                 {migration}), so the key cannot be read"
                            ),
                        );
                        continue;
                    }
                    match totp_secret(&device) {
                        Ok(secret) => kept.push(ImportTotpDevice {
                            id: device.id,
                            user_id: device.user_id,
                            secret: seal_totp_secret(run.state, &secret)
                                .map_err(|e| anyhow::anyhow!("sealing a TOTP secret: {e:?}"))?,
                            last_step: device.last_t,
                            created_at: run.state.clock.now(),
                        }),
                        Err(reason) => run.skip(TABLE, id, reason),
                    }
                }
                Ok(ImportBatch::TotpDevices(kept))
            })
            .await?;
        self.summary.totp_devices = written;
        Ok(())
    }

    async fn backup_codes(&mut self, snapshot: &Snapshot<'_>) -> anyhow::Result<()> {
        const TABLE: &str = "otp_static_statictoken";
        let query = snapshot.static_tokens();
        let (written, _) = self
            .table(snapshot, TABLE, query, |run, rows| {
                let mut kept = Vec::with_capacity(rows.len());
                for token in rows {
                    if run.left.users.contains(&token.user_id) {
                        run.skip(TABLE, token.id.to_string(), "its user was skipped".into());
                        continue;
                    }
                    kept.push(ImportBackupCode {
                        id: token.id,
                        user_id: token.user_id,
                        code_hash: backup_code_hash(
                            run.state,
                            token.user_id,
                            token.token.expose_secret(),
                        ),
                        created_at: run.state.clock.now(),
                    });
                }
                Ok(ImportBatch::BackupCodes(kept))
            })
            .await?;
        self.summary.backup_codes = written;
        Ok(())
    }
}

/// PostHog's key as hoglet stores it: the hash kept as it is (`sha256$…` or a legacy PBKDF2
/// form), or for a row that still holds the key in clear, its hash (the clear value goes no
/// further). `Err((id, reason))` for a row with neither.
fn convert_api_key(key: source::ApiKey) -> Result<ImportApiKey, (String, String)> {
    let plaintext = key.value.as_ref().map(|v| v.expose_secret());
    let secure_value = match (key.secure_value.filter(|v| !v.is_empty()), plaintext) {
        (Some(hash), _) => hash,
        (None, Some(value)) if !value.is_empty() => api_key::secure_value(value),
        _ => return Err((key.id, "it holds neither a key hash nor a key".into())),
    };
    let mask_value = key
        .mask_value
        .or_else(|| plaintext.map(api_key::mask))
        .unwrap_or_else(|| "********".into());
    Ok(ImportApiKey {
        id: key.id,
        user_id: key.user_id,
        label: key.label,
        secure_value,
        mask_value,
        created_at: key.created_at,
        last_used_at: key.last_used_at,
        last_rolled_at: key.last_rolled_at,
        scopes: key.scopes,
        scoped_teams: key.scoped_teams,
        scoped_organizations: key.scoped_organizations,
    })
}

/// The secret of a django-otp device hoglet can verify as it is: confirmed, 30-second steps from
/// the epoch, six digits, a hex key. `Err(reason)` otherwise.
fn totp_secret(device: &source::TotpDevice) -> Result<Vec<u8>, String> {
    if !device.confirmed {
        return Err("the device was never confirmed".into());
    }
    if device.step != 30 {
        return Err(format!(
            "its codes change every {} seconds; hoglet's every 30",
            device.step
        ));
    }
    if device.t0 != 0 {
        return Err(format!(
            "its time steps start at t0 = {}; hoglet's at 0",
            device.t0
        ));
    }
    if device.digits != 6 {
        return Err(format!(
            "its codes have {} digits; hoglet's 6",
            device.digits
        ));
    }
    match hex::decode(device.key.expose_secret()) {
        Ok(secret) if !secret.is_empty() => Ok(secret),
        _ => Err("its key is not hex".into()),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn device(step: i64, t0: i64, digits: i64, key: &str) -> source::TotpDevice {
        source::TotpDevice {
            id: 1,
            user_id: 7,
            name: "default".into(),
            confirmed: true,
            key: SecretString::from(key.to_string()),
            step,
            t0,
            digits,
            tolerance: 1,
            drift: 0,
            last_t: 0,
        }
    }

    #[test]
    fn only_devices_hoglet_verifies_as_they_are_come_over() {
        let hex = "3132333435363738393031323334353637383930";
        assert_eq!(
            totp_secret(&device(30, 0, 6, hex)).unwrap(),
            b"12345678901234567890"
        );
        for (bad, reason) in [
            (device(60, 0, 6, hex), "every 60 seconds"),
            (device(30, 15, 6, hex), "t0 = 15"),
            (device(30, 0, 8, hex), "8 digits"),
            (device(30, 0, 6, "not hex!"), "not hex"),
            (device(30, 0, 6, ""), "not hex"),
        ] {
            let err = totp_secret(&bad).unwrap_err();
            assert!(err.contains(reason), "{err}");
        }
        let mut unconfirmed = device(30, 0, 6, hex);
        unconfirmed.confirmed = false;
        assert!(
            totp_secret(&unconfirmed)
                .unwrap_err()
                .contains("never confirmed")
        );
    }

    fn key(secure_value: Option<&str>, value: Option<&str>, mask: Option<&str>) -> source::ApiKey {
        source::ApiKey {
            id: "k".into(),
            user_id: 7,
            label: "l".into(),
            mask_value: mask.map(str::to_string),
            secure_value: secure_value.map(str::to_string),
            value: value.map(|v| SecretString::from(v.to_string())),
            created_at: 0,
            last_used_at: None,
            last_rolled_at: None,
            scopes: vec![],
            scoped_teams: None,
            scoped_organizations: None,
        }
    }

    #[test]
    fn a_key_keeps_its_hash_and_a_plaintext_key_is_hashed() {
        let plaintext = "phx_0123456789abcdefghijklmnopqrstuvwxyz";
        let kept = convert_api_key(key(Some("sha256$ab"), Some(plaintext), Some("phx_...wxyz")));
        assert_eq!(kept.unwrap().secure_value, "sha256$ab");
        let hashed = convert_api_key(key(None, Some(plaintext), None)).unwrap();
        assert_eq!(hashed.secure_value, api_key::secure_value(plaintext));
        assert_eq!(hashed.mask_value, "phx_...wxyz");
        assert!(!format!("{hashed:?}").contains(plaintext));
        let (id, reason) = convert_api_key(key(None, None, None)).unwrap_err();
        assert_eq!(
            (id.as_str(), reason.as_str()),
            ("k", "it holds neither a key hash nor a key")
        );
    }
}
