//! The transaction script of `hoglet import posthog`: one batch of PostHog rows of one table,
//! written with their PostHog ids, on both backends.
//!
//! Each row is first claimed in `import_ledger` (a row listed there was brought by an earlier run
//! and is left alone, even if hoglet deleted it since), then inserted with `ON CONFLICT DO
//! NOTHING`. Only when the insert writes nothing does the script look up why, and the row is
//! skipped with that reason (its claim released, so a later run can still bring it). So the common
//! path is two statements per row. A dry run claims and inserts nothing: it runs the lookups only.
//!
//! Rows that hang off another row (a team off its organization, a key off its user) are inserted
//! with `INSERT … SELECT … WHERE EXISTS (parent)`, so a missing parent is a reported skip and never
//! a foreign-key error that would fail the batch. The statements spell every value as
//! `CAST($n AS type)` so that PostgreSQL knows each parameter's type in a `SELECT` list.

use futures_util::future::try_join_all;
use uuid::Uuid;

use super::exec::{Exec, args};
use super::scripts::{count, invalidate, json};
use super::*;

const LEDGER_CLAIM: &str = "INSERT INTO import_ledger (source, source_id, imported_at) \
     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
const LEDGER_HAS: &str = "SELECT count(*) FROM import_ledger WHERE source = $1 AND source_id = $2";
const LEDGER_RELEASE: &str = "DELETE FROM import_ledger WHERE source = $1 AND source_id = $2";

const ORGANIZATION_INSERT: &str = "INSERT INTO organizations (id, name, slug, created_at, \
     updated_at, enforce_2fa, members_can_use_personal_api_keys) \
     VALUES ($1, $2, $3, $4, $4, $5, $6) ON CONFLICT DO NOTHING";
const ORGANIZATION_CLASH: &str = "SELECT (SELECT count(*) FROM organizations WHERE id = $1), \
     (SELECT id FROM organizations WHERE slug = $2)";

const TEAM_INSERT: &str = "INSERT INTO teams (id, uuid, organization_id, project_id, api_token, \
     name, timezone, created_at) SELECT CAST($1 AS BIGINT), CAST($2 AS TEXT), CAST($3 AS TEXT), \
     CAST($4 AS BIGINT), CAST($5 AS TEXT), CAST($6 AS TEXT), CAST($7 AS TEXT), CAST($8 AS BIGINT) \
     WHERE EXISTS (SELECT 1 FROM organizations WHERE id = $3) ON CONFLICT DO NOTHING";
const TEAM_CLASH: &str = "SELECT (SELECT uuid FROM teams WHERE id = $1), \
     (SELECT id FROM teams WHERE uuid = $2), (SELECT id FROM teams WHERE api_token = $3), \
     (SELECT count(*) FROM organizations WHERE id = $4)";

/// The current organization and team are kept only if they were imported too.
const USER_INSERT: &str = "INSERT INTO users (id, uuid, email, email_lower, pending_email, \
     password, first_name, last_name, distinct_id, is_active, is_staff, date_joined, last_login, \
     is_email_verified, current_organization_id, current_team_id, partial_notification_settings, \
     anonymize_data, toolbar_mode, theme_mode, hedgehog_config, events_column_config, \
     has_seen_product_intro_for, role_at_organization) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
     $10, $11, $12, $13, $14, (SELECT id FROM organizations WHERE id = $15), \
     (SELECT id FROM teams WHERE id = $16), $17, COALESCE($18, FALSE), COALESCE($19, 'toolbar'), \
     $20, $21, COALESCE($22, '{\"active\": \"DEFAULT\"}'), $23, $24) ON CONFLICT DO NOTHING";
const USER_CLASH: &str = "SELECT (SELECT uuid FROM users WHERE id = $1), \
     (SELECT id FROM users WHERE uuid = $2), (SELECT id FROM users WHERE email_lower = $3), \
     (SELECT id FROM users WHERE distinct_id = $4)";

const MEMBERSHIP_INSERT: &str = "INSERT INTO organization_memberships (id, organization_id, \
     user_id, level, invited, joined_at, updated_at) SELECT CAST($1 AS TEXT), CAST($2 AS TEXT), \
     CAST($3 AS BIGINT), CAST($4 AS BIGINT), FALSE, CAST($5 AS BIGINT), CAST($5 AS BIGINT) \
     WHERE EXISTS (SELECT 1 FROM organizations WHERE id = $2) \
     AND EXISTS (SELECT 1 FROM users WHERE id = $3) ON CONFLICT DO NOTHING";
const MEMBERSHIP_CLASH: &str = "SELECT (SELECT count(*) FROM organization_memberships \
     WHERE organization_id = $1 AND user_id = $2), \
     (SELECT count(*) FROM organizations WHERE id = $1), (SELECT count(*) FROM users WHERE id = $2)";

const API_KEY_INSERT: &str = "INSERT INTO personal_api_keys (id, user_id, label, secure_value, \
     mask_value, created_at, last_used_at, last_rolled_at, scopes, scoped_teams, \
     scoped_organizations) SELECT CAST($1 AS TEXT), CAST($2 AS BIGINT), CAST($3 AS TEXT), \
     CAST($4 AS TEXT), CAST($5 AS TEXT), CAST($6 AS BIGINT), CAST($7 AS BIGINT), \
     CAST($8 AS BIGINT), CAST($9 AS TEXT), CAST($10 AS TEXT), CAST($11 AS TEXT) \
     WHERE EXISTS (SELECT 1 FROM users WHERE id = $2) ON CONFLICT DO NOTHING";
const API_KEY_CLASH: &str = "SELECT (SELECT user_id FROM personal_api_keys WHERE id = $1), \
     (SELECT id FROM personal_api_keys WHERE secure_value = $2), \
     (SELECT count(*) FROM users WHERE id = $3)";

const TOTP_INSERT: &str = "INSERT INTO totp_devices (user_id, secret, last_step, failures, \
     throttled_until, created_at) SELECT CAST($1 AS BIGINT), CAST($2 AS TEXT), CAST($3 AS BIGINT), \
     0, 0, CAST($4 AS BIGINT) WHERE EXISTS (SELECT 1 FROM users WHERE id = $1) \
     ON CONFLICT DO NOTHING";
const TOTP_CLASH: &str = "SELECT (SELECT count(*) FROM totp_devices WHERE user_id = $1), \
     (SELECT count(*) FROM users WHERE id = $1)";

const BACKUP_CODE_INSERT: &str = "INSERT INTO backup_codes (user_id, code_hash, created_at) \
     SELECT CAST($1 AS BIGINT), CAST($2 AS TEXT), CAST($3 AS BIGINT) \
     WHERE EXISTS (SELECT 1 FROM users WHERE id = $1) ON CONFLICT DO NOTHING";
const BACKUP_CODE_CLASH: &str = "SELECT (SELECT count(*) FROM backup_codes \
     WHERE user_id = $1 AND code_hash = $2), (SELECT count(*) FROM users WHERE id = $1)";

/// Identity columns whose sequence must move past imported ids, so the next row hoglet creates
/// gets a free id (SQLite's AUTOINCREMENT follows explicit ids by itself).
const POSTGRES_SEQUENCES: &[(&str, &str)] = &[
    (
        "users",
        "SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users))",
    ),
    (
        "teams",
        "SELECT setval(pg_get_serial_sequence('teams', 'id'), (SELECT max(id) FROM teams))",
    ),
];

/// Why an insert wrote nothing, as its lookup found.
enum Clash {
    /// The same row is already there (an earlier run, or the same data by another way).
    Present,
    /// Nothing in the way: a dry run would write it.
    None,
    Skip(String),
}

/// One PostHog row of a batch.
trait ImportRow {
    /// PostHog's table, as named in the ledger and the summary.
    const SOURCE: &'static str;
    fn source_id(&self) -> String;
    /// Inserts the row; how many rows were written (0 or 1).
    async fn insert(&self, tx: &impl Exec, now: Micros) -> StoreResult<u64>;
    /// What stands in the way of the row. A missing parent counts only when `write`: in a dry
    /// run the parent may be in the same import, unwritten.
    async fn clash(&self, tx: &impl Exec, write: bool) -> StoreResult<Clash>;
}

/// [`Store::import`].
pub(crate) async fn import(
    tx: &impl Exec,
    batch: &ImportBatch,
    write: bool,
    now: Micros,
) -> StoreResult<ImportReport> {
    let report = match batch {
        ImportBatch::Organizations(rows) => import_rows(tx, rows, write, now).await?,
        ImportBatch::Teams(rows) => import_rows(tx, rows, write, now).await?,
        ImportBatch::Users(rows) => import_rows(tx, rows, write, now).await?,
        ImportBatch::Memberships(rows) => import_rows(tx, rows, write, now).await?,
        ImportBatch::ApiKeys(rows) => import_rows(tx, rows, write, now).await?,
        ImportBatch::TotpDevices(rows) => import_rows(tx, rows, write, now).await?,
        ImportBatch::BackupCodes(rows) => import_rows(tx, rows, write, now).await?,
    };
    if write && report.written > 0 {
        let table = match batch {
            ImportBatch::Users(_) => Some("users"),
            ImportBatch::Teams(_) => Some("teams"),
            _ => None,
        };
        if is_postgres(tx)
            && let Some((_, setval)) = POSTGRES_SEQUENCES.iter().find(|(t, _)| Some(*t) == table)
        {
            tx.query_opt(setval, &[], |r| r.i64(0)).await?;
        }
        // A new membership, team, device or code changes what an existing user's cached views
        // show; new users, organizations and keys are in no cache yet.
        if !matches!(
            batch,
            ImportBatch::Users(_) | ImportBatch::Organizations(_) | ImportBatch::ApiKeys(_)
        ) {
            invalidate(tx, None, None).await?;
        }
    }
    Ok(report)
}

fn is_postgres<E: Exec>(_: &E) -> bool {
    E::BACKEND == Backend::Postgres
}

/// Rows whose statements are sent together: PostgreSQL pipelines them on the connection (one
/// round trip for the lot instead of one each); on SQLite they run one after another as always.
/// Kept small so `try_join_all` polls every statement at each turn (SQLite's scripts must finish
/// in one poll).
const PIPELINE: usize = 24;

async fn import_rows<R: ImportRow>(
    tx: &impl Exec,
    rows: &[R],
    write: bool,
    now: Micros,
) -> StoreResult<ImportReport> {
    let mut report = ImportReport::default();
    for chunk in rows.chunks(PIPELINE) {
        let ids: Vec<String> = chunk.iter().map(ImportRow::source_id).collect();
        // Claim each row in the ledger (a dry run only looks); a row claimed before is present.
        let claimed = try_join_all(ids.iter().map(|id| async move {
            Ok::<_, StoreError>(if write {
                tx.execute(LEDGER_CLAIM, args![R::SOURCE, id.as_str(), now])
                    .await?
                    == 1
            } else {
                count(tx, LEDGER_HAS, args![R::SOURCE, id.as_str()]).await? == 0
            })
        }))
        .await?;
        let fresh: Vec<(&R, &String)> = chunk
            .iter()
            .zip(&ids)
            .zip(&claimed)
            .filter_map(|(row, claimed)| claimed.then_some(row))
            .collect();
        report.present += (chunk.len() - fresh.len()) as u64;
        let inserted = if write {
            try_join_all(fresh.iter().map(|(row, _)| row.insert(tx, now))).await?
        } else {
            vec![0; fresh.len()]
        };
        report.written += inserted.iter().sum::<u64>();
        // Only a row that wrote nothing needs a look at what stands in its way.
        for ((row, id), _) in fresh.iter().zip(&inserted).filter(|(_, n)| **n == 0) {
            match row.clash(tx, write).await? {
                Clash::Present => report.present += 1,
                Clash::None if !write => report.written += 1,
                clash => {
                    let reason = match clash {
                        Clash::Skip(reason) => reason,
                        _ => "not written, for a reason hoglet could not find".to_string(),
                    };
                    if write {
                        tx.execute(LEDGER_RELEASE, args![R::SOURCE, id.as_str()])
                            .await?;
                    }
                    report.skipped.push(ImportSkip {
                        id: id.to_string(),
                        reason,
                    });
                }
            }
        }
    }
    Ok(report)
}

fn parent_missing(write: bool, exists: bool, what: &str) -> Option<Clash> {
    (write && !exists).then(|| Clash::Skip(format!("its {what} is not in hoglet")))
}

impl ImportRow for ImportOrganization {
    const SOURCE: &'static str = "posthog_organization";

    fn source_id(&self) -> String {
        self.id.to_string()
    }

    async fn insert(&self, tx: &impl Exec, _now: Micros) -> StoreResult<u64> {
        let id = self.id.to_string();
        tx.execute(
            ORGANIZATION_INSERT,
            args![
                id.as_str(),
                &self.name,
                &self.slug,
                self.created_at,
                self.enforce_2fa,
                self.members_can_use_personal_api_keys
            ],
        )
        .await
    }

    async fn clash(&self, tx: &impl Exec, _write: bool) -> StoreResult<Clash> {
        let id = self.id.to_string();
        let (same_id, slug_owner) = tx
            .query_opt(ORGANIZATION_CLASH, args![id.as_str(), &self.slug], |r| {
                Ok((r.i64(0)?, r.opt_text(1)?))
            })
            .await?
            .unwrap_or_default();
        Ok(match (same_id, slug_owner) {
            (n, _) if n > 0 => Clash::Present,
            (_, Some(other)) => Clash::Skip(format!(
                "the slug {:?} belongs to another organization ({other})",
                self.slug
            )),
            _ => Clash::None,
        })
    }
}

impl ImportRow for ImportTeam {
    const SOURCE: &'static str = "posthog_team";

    fn source_id(&self) -> String {
        self.id.to_string()
    }

    async fn insert(&self, tx: &impl Exec, _now: Micros) -> StoreResult<u64> {
        let (uuid, organization) = (self.uuid.to_string(), self.organization_id.to_string());
        tx.execute(
            TEAM_INSERT,
            args![
                self.id,
                uuid.as_str(),
                organization.as_str(),
                self.project_id,
                &self.api_token,
                &self.name,
                &self.timezone,
                self.created_at
            ],
        )
        .await
    }

    async fn clash(&self, tx: &impl Exec, write: bool) -> StoreResult<Clash> {
        let (uuid, organization) = (self.uuid.to_string(), self.organization_id.to_string());
        let (uuid_of_id, id_of_uuid, token_owner, organizations) = tx
            .query_opt(
                TEAM_CLASH,
                args![
                    self.id,
                    uuid.as_str(),
                    &self.api_token,
                    organization.as_str()
                ],
                |r| Ok((r.opt_text(0)?, r.opt_i64(1)?, r.opt_i64(2)?, r.i64(3)?)),
            )
            .await?
            .unwrap_or_default();
        Ok(match (uuid_of_id, id_of_uuid, token_owner) {
            (Some(stored), ..) if stored == uuid => Clash::Present,
            (Some(stored), ..) => Clash::Skip(format!(
                "team id {} belongs to another team (uuid {stored})",
                self.id
            )),
            (None, Some(other), _) => {
                Clash::Skip(format!("its uuid belongs to another team (id {other})"))
            }
            (None, None, Some(other)) => Clash::Skip(format!(
                "its api_token belongs to another team (id {other})"
            )),
            _ => parent_missing(write, organizations > 0, "organization").unwrap_or(Clash::None),
        })
    }
}

impl ImportRow for ImportUser {
    const SOURCE: &'static str = "posthog_user";

    fn source_id(&self) -> String {
        self.id.to_string()
    }

    async fn insert(&self, tx: &impl Exec, _now: Micros) -> StoreResult<u64> {
        let uuid = self.uuid.to_string();
        let email_lower = self.email.to_lowercase();
        let organization = self.current_organization_id.map(|o| o.to_string());
        tx.execute(
            USER_INSERT,
            args![
                self.id,
                uuid.as_str(),
                &self.email,
                email_lower.as_str(),
                &self.pending_email,
                self.password.0.as_str(),
                &self.first_name,
                &self.last_name,
                &self.distinct_id,
                self.is_active,
                self.is_staff,
                self.date_joined,
                self.last_login,
                self.is_email_verified,
                &organization,
                self.current_team_id,
                &self.partial_notification_settings,
                self.anonymize_data,
                &self.toolbar_mode,
                &self.theme_mode,
                &self.hedgehog_config,
                &self.events_column_config,
                &self.has_seen_product_intro_for,
                &self.role_at_organization
            ],
        )
        .await
    }

    async fn clash(&self, tx: &impl Exec, _write: bool) -> StoreResult<Clash> {
        let uuid = self.uuid.to_string();
        let email_lower = self.email.to_lowercase();
        let (uuid_of_id, id_of_uuid, email_owner, distinct_id_owner) = tx
            .query_opt(
                USER_CLASH,
                args![
                    self.id,
                    uuid.as_str(),
                    email_lower.as_str(),
                    &self.distinct_id
                ],
                |r| Ok((r.opt_text(0)?, r.opt_i64(1)?, r.opt_i64(2)?, r.opt_i64(3)?)),
            )
            .await?
            .unwrap_or_default();
        Ok(
            match (uuid_of_id, id_of_uuid, email_owner, distinct_id_owner) {
                (Some(stored), ..) if stored == uuid => Clash::Present,
                (Some(stored), ..) => Clash::Skip(format!(
                    "user id {} belongs to another user (uuid {stored})",
                    self.id
                )),
                (None, Some(other), ..) => {
                    Clash::Skip(format!("its uuid belongs to another user (id {other})"))
                }
                (None, None, Some(other), _) => Clash::Skip(format!(
                    "the email {} belongs to another user (id {other})",
                    self.email
                )),
                (None, None, None, Some(other)) => Clash::Skip(format!(
                    "its distinct_id belongs to another user (id {other})"
                )),
                _ => Clash::None,
            },
        )
    }
}

impl ImportRow for ImportMembership {
    const SOURCE: &'static str = "posthog_organizationmembership";

    fn source_id(&self) -> String {
        format!("{}:{}", self.organization_id, self.user_id)
    }

    async fn insert(&self, tx: &impl Exec, _now: Micros) -> StoreResult<u64> {
        if MembershipLevel::from_i64(self.level).is_none() {
            return Ok(0);
        }
        let (id, organization) = (Uuid::now_v7().to_string(), self.organization_id.to_string());
        tx.execute(
            MEMBERSHIP_INSERT,
            args![
                id.as_str(),
                organization.as_str(),
                self.user_id,
                self.level,
                self.joined_at
            ],
        )
        .await
    }

    async fn clash(&self, tx: &impl Exec, write: bool) -> StoreResult<Clash> {
        if MembershipLevel::from_i64(self.level).is_none() {
            return Ok(Clash::Skip(format!(
                "level {} is none of 1, 8, 15",
                self.level
            )));
        }
        let organization = self.organization_id.to_string();
        let (memberships, organizations, users) = tx
            .query_opt(
                MEMBERSHIP_CLASH,
                args![organization.as_str(), self.user_id],
                |r| Ok((r.i64(0)?, r.i64(1)?, r.i64(2)?)),
            )
            .await?
            .unwrap_or_default();
        Ok(if memberships > 0 {
            Clash::Present
        } else {
            parent_missing(write, organizations > 0, "organization")
                .or_else(|| parent_missing(write, users > 0, "user"))
                .unwrap_or(Clash::None)
        })
    }
}

impl ImportRow for ImportApiKey {
    const SOURCE: &'static str = "posthog_personalapikey";

    fn source_id(&self) -> String {
        self.id.clone()
    }

    async fn insert(&self, tx: &impl Exec, _now: Micros) -> StoreResult<u64> {
        let scopes = json(&self.scopes)?;
        let teams = self.scoped_teams.as_ref().map(json).transpose()?;
        let organizations = self.scoped_organizations.as_ref().map(json).transpose()?;
        tx.execute(
            API_KEY_INSERT,
            args![
                &self.id,
                self.user_id,
                &self.label,
                &self.secure_value,
                &self.mask_value,
                self.created_at,
                self.last_used_at,
                self.last_rolled_at,
                scopes.as_str(),
                &teams,
                &organizations
            ],
        )
        .await
    }

    async fn clash(&self, tx: &impl Exec, write: bool) -> StoreResult<Clash> {
        let (owner, id_of_hash, users) = tx
            .query_opt(
                API_KEY_CLASH,
                args![&self.id, &self.secure_value, self.user_id],
                |r| Ok((r.opt_i64(0)?, r.opt_text(1)?, r.i64(2)?)),
            )
            .await?
            .unwrap_or_default();
        Ok(match (owner, id_of_hash) {
            (Some(owner), _) if owner == self.user_id => Clash::Present,
            (Some(owner), _) => Clash::Skip(format!(
                "the key id belongs to a key of another user (id {owner})"
            )),
            (None, Some(other)) => Clash::Skip(format!(
                "the same key is already stored under the id {other}"
            )),
            _ => parent_missing(write, users > 0, "user").unwrap_or(Clash::None),
        })
    }
}

impl ImportRow for ImportTotpDevice {
    const SOURCE: &'static str = "otp_totp_totpdevice";

    fn source_id(&self) -> String {
        self.id.to_string()
    }

    async fn insert(&self, tx: &impl Exec, _now: Micros) -> StoreResult<u64> {
        tx.execute(
            TOTP_INSERT,
            args![self.user_id, &self.secret, self.last_step, self.created_at],
        )
        .await
    }

    async fn clash(&self, tx: &impl Exec, write: bool) -> StoreResult<Clash> {
        let (devices, users) = tx
            .query_opt(TOTP_CLASH, args![self.user_id], |r| {
                Ok((r.i64(0)?, r.i64(1)?))
            })
            .await?
            .unwrap_or_default();
        Ok(if devices > 0 {
            Clash::Skip(format!(
                "user {} already has a TOTP device in hoglet",
                self.user_id
            ))
        } else {
            parent_missing(write, users > 0, "user").unwrap_or(Clash::None)
        })
    }
}

impl ImportRow for ImportBackupCode {
    const SOURCE: &'static str = "otp_static_statictoken";

    fn source_id(&self) -> String {
        self.id.to_string()
    }

    async fn insert(&self, tx: &impl Exec, _now: Micros) -> StoreResult<u64> {
        tx.execute(
            BACKUP_CODE_INSERT,
            args![self.user_id, &self.code_hash, self.created_at],
        )
        .await
    }

    async fn clash(&self, tx: &impl Exec, write: bool) -> StoreResult<Clash> {
        let (codes, users) = tx
            .query_opt(
                BACKUP_CODE_CLASH,
                args![self.user_id, &self.code_hash],
                |r| Ok((r.i64(0)?, r.i64(1)?)),
            )
            .await?
            .unwrap_or_default();
        Ok(if codes > 0 {
            Clash::Present
        } else {
            parent_missing(write, users > 0, "user").unwrap_or(Clash::None)
        })
    }
}
