//! The transaction scripts, written once for both backends. Each runs inside a transaction the
//! backend opened (SQLite: the writer's group transaction, in the write's own savepoint;
//! Postgres: one transaction per call) and commits with it. Every cache-invalidation row is
//! written here, through [`invalidate`] and [`invalidate_members`], in the transaction of the
//! write it reports.

use uuid::Uuid;

use super::exec::{Exec, args};
use super::row;
use super::sql;
use super::*;
use crate::crypto;
use crate::time::{Micros, system_now};

// --- shared steps -------------------------------------------------------------------------------

/// Appends a row to the cross-process invalidation feed: the user's cached views (`user`), a
/// cached key or session (`key_hash`), or, with neither, everything.
pub(crate) async fn invalidate(
    tx: &impl Exec,
    user: Option<i64>,
    key_hash: Option<&str>,
) -> StoreResult<()> {
    tx.execute(
        sql::INVALIDATION_INSERT,
        args![system_now(), user, key_hash],
    )
    .await?;
    Ok(())
}

/// One invalidation row per member of the organization (each member's rendered user shows it).
async fn invalidate_members(tx: &impl Exec, organization: &str, now: Micros) -> StoreResult<()> {
    tx.execute(sql::INVALIDATE_MEMBERS, args![organization, now])
        .await?;
    Ok(())
}

/// [`Store::enqueue_mail`]; also a step of writes that send mail.
pub(crate) async fn enqueue_mail(tx: &impl Exec, mail: &NewMail) -> StoreResult<()> {
    tx.execute(
        sql::OUTBOX_INSERT,
        args![
            &mail.recipient,
            &mail.subject,
            &mail.sealed_body,
            mail.created_at
        ],
    )
    .await?;
    Ok(())
}

/// Writes entries of the activity log, in the transaction of the action they record.
pub(crate) async fn record(tx: &impl Exec, log: &[NewActivity]) -> StoreResult<()> {
    for entry in log {
        let detail = entry.detail.to_string();
        tx.execute(
            sql::ACTIVITY_INSERT,
            args![
                entry.user_id,
                entry.activity.as_str(),
                entry.created_at,
                &entry.ip,
                &entry.user_agent,
                entry.actor.kind.as_str(),
                &entry.actor.id,
                &entry.actor.label,
                detail.as_str()
            ],
        )
        .await?;
    }
    Ok(())
}

/// `Missing("user")` unless the user exists; the answer holds until commit (see
/// [`sql::USER_LOCK`]).
async fn lock_user(tx: &impl Exec, id: i64) -> StoreResult<()> {
    tx.query_opt(tx.pick(&sql::USER_LOCK), args![id], |r| r.i64(0))
        .await?
        .map(|_| ())
        .ok_or(StoreError::Missing("user"))
}

/// `Missing("team")` unless the team exists; the answer holds until commit.
async fn lock_team(tx: &impl Exec, id: i64) -> StoreResult<()> {
    tx.query_opt(tx.pick(&sql::TEAM_LOCK), args![id], |r| r.i64(0))
        .await?
        .map(|_| ())
        .ok_or(StoreError::Missing("team"))
}

async fn organization_exists(tx: &impl Exec, id: &str) -> StoreResult<bool> {
    Ok(tx
        .query_opt(sql::ORGANIZATION_EXISTS, args![id], |r| r.text(0))
        .await?
        .is_some())
}

async fn user_by_id(tx: &impl Exec, id: i64) -> StoreResult<UserRecord> {
    tx.query_opt(sql::USER_BY_ID, args![id], |r| row::user_from_row(r, 0))
        .await?
        .ok_or(StoreError::Missing("user"))
}

async fn organization_by_id(tx: &impl Exec, id: &str) -> StoreResult<Option<OrganizationRecord>> {
    tx.query_opt(sql::ORGANIZATION_BY_ID, args![id], |r| {
        row::organization_from_row(r, 0)
    })
    .await
}

async fn api_key_by_id(tx: &impl Exec, sql: &str, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
    tx.query_opt(sql, args![id], |r| row::api_key_from_row(r))
        .await
}

pub(crate) async fn count(
    tx: &impl Exec,
    sql: &str,
    params: &[exec::Param<'_>],
) -> StoreResult<i64> {
    Ok(tx.query_opt(sql, params, |r| r.i64(0)).await?.unwrap_or(0))
}

/// Inserts a user row; returns its id.
async fn insert_user_row(tx: &impl Exec, user: &NewUser) -> StoreResult<i64> {
    let uuid = user.uuid.to_string();
    let email_key = sql::email_key(&user.email);
    tx.query_opt(
        sql::USER_INSERT,
        args![
            uuid.as_str(),
            &user.email,
            email_key.as_str(),
            &user.password.0,
            &user.first_name,
            &user.last_name,
            &user.distinct_id,
            user.is_staff,
            user.is_email_verified,
            &user.role_at_organization,
            user.email_opt_in,
            user.date_joined
        ],
        |r| r.i64(0),
    )
    .await?
    .ok_or(StoreError::Missing("user"))
}

/// Inserts a team and its default dashboard.
async fn insert_team(
    tx: &impl Exec,
    organization: Uuid,
    name: &str,
    now: Micros,
) -> StoreResult<TeamRecord> {
    let uuid = Uuid::now_v7().to_string();
    let organization = organization.to_string();
    let token = format!("phc_{}", crypto::random_token(35));
    let id = tx
        .query_opt(
            sql::TEAM_INSERT,
            args![
                uuid.as_str(),
                organization.as_str(),
                token.as_str(),
                name,
                now
            ],
            |r| r.i64(0),
        )
        .await?
        .ok_or(StoreError::Missing("team"))?;
    tx.query_opt(
        sql::DASHBOARD_INSERT,
        args![id, sql::DEFAULT_DASHBOARD_NAME, now],
        |_| Ok(()),
    )
    .await?;
    tx.query_opt(sql::TEAM_BY_ID, args![id], |r| row::team_from_row(r))
        .await?
        .ok_or(StoreError::Missing("team"))
}

async fn insert_membership(
    tx: &impl Exec,
    organization: Uuid,
    user_id: i64,
    level: MembershipLevel,
    invited: bool,
    now: Micros,
) -> StoreResult<MembershipRecord> {
    let id = Uuid::now_v7().to_string();
    let organization = organization.to_string();
    tx.execute(
        sql::MEMBERSHIP_INSERT,
        args![
            id.as_str(),
            organization.as_str(),
            user_id,
            level.as_i64(),
            invited,
            now
        ],
    )
    .await?;
    tx.query_opt(sql::MEMBERSHIP_BY_ID, args![id.as_str()], |r| {
        row::membership_from_row(r)
    })
    .await?
    .ok_or(StoreError::Missing("membership"))
}

/// Inserts the organization under its name's slug, or the slug with a random suffix when taken.
/// `ON CONFLICT DO NOTHING` waits for a concurrent insert of the same slug instead of failing
/// (Postgres), so organizations created at once with one name all succeed.
async fn insert_organization(tx: &impl Exec, id: &str, name: &str, now: Micros) -> StoreResult<()> {
    let base = sql::slugify(name);
    let mut slug = base.clone();
    for _ in 0..20 {
        if tx
            .execute(
                sql::ORGANIZATION_INSERT,
                args![id, name, slug.as_str(), now],
            )
            .await?
            == 1
        {
            return Ok(());
        }
        slug = format!("{base}-{}", crypto::random_alphanumeric(4).to_lowercase());
    }
    Err(StoreError::Unique(Unique::Slug))
}

/// The organization with its first team, the owner's membership, and the owner's current
/// context pointing at them.
async fn insert_organization_tree(
    tx: &impl Exec,
    owner_id: i64,
    name: &str,
    team_name: &str,
    now: Micros,
) -> StoreResult<(OrganizationRecord, TeamRecord)> {
    let id = Uuid::now_v7().to_string();
    insert_organization(tx, &id, name, now).await?;
    let organization = organization_by_id(tx, &id)
        .await?
        .ok_or(StoreError::Missing("organization"))?;
    let team = insert_team(tx, organization.id, team_name, now).await?;
    insert_membership(
        tx,
        organization.id,
        owner_id,
        MembershipLevel::Owner,
        false,
        now,
    )
    .await?;
    tx.execute(sql::USER_SET_CONTEXT, args![owner_id, id.as_str(), team.id])
        .await?;
    Ok((organization, team))
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Other(e.into()))
}

fn session_key(id: &str) -> String {
    format!("session${id}")
}

// --- settings and users ------------------------------------------------------------------------

pub(crate) async fn setting_or_insert(
    tx: &impl Exec,
    key: &str,
    value: &str,
) -> StoreResult<String> {
    tx.execute(sql::SETTING_INSERT, args![key, value]).await?;
    tx.query_opt(sql::SETTING_GET, args![key], |r| r.text(0))
        .await?
        .ok_or(StoreError::Missing("setting"))
}

pub(crate) async fn insert_user(tx: &impl Exec, user: &NewUser) -> StoreResult<UserRecord> {
    let id = insert_user_row(tx, user).await?;
    user_by_id(tx, id).await
}

/// [`Store::write_user`].
pub(crate) async fn write_user(
    tx: &impl Exec,
    user_id: i64,
    w: &UserWrite,
) -> StoreResult<UserRecord> {
    lock_user(tx, user_id).await?;
    if let Some((update, values)) = sql::user_update(&w.changes) {
        let mut params = vec![exec::Param::I64(user_id)];
        params.extend(values.iter().map(exec::Param::from));
        // Not cached: each set of columns is its own statement, callers choose the set, and a
        // statement cache never forgets one.
        tx.execute_uncached(&update, &params).await?;
    }
    if let Some(keep) = &w.end_sessions {
        let keep = keep.as_deref().unwrap_or_default();
        tx.execute(sql::SESSIONS_DELETE_OF_USER, args![user_id, keep])
            .await?;
    }
    if w.remove_two_factor {
        tx.execute(sql::TOTP_DELETE, args![user_id]).await?;
        tx.execute(sql::BACKUP_CODES_DELETE, args![user_id]).await?;
    }
    if let Some(d) = &w.totp_device {
        put_totp_row(tx, user_id, d).await?;
    }
    if let Some(hashes) = &w.backup_codes {
        write_backup_codes(tx, user_id, hashes).await?;
    }
    if let Some(s) = &w.session {
        write_session_row(tx, sql::SESSION_UPSERT, s).await?;
    }
    for mail in &w.mail {
        enqueue_mail(tx, mail).await?;
    }
    record(tx, &w.activity).await?;
    // One row covers the user's rendered views, keys and sessions; it also names the session
    // written, whose cached entry may belong to no user yet (a pending login).
    let session = w.session.as_ref().map(|s| session_key(&s.id));
    invalidate(tx, Some(user_id), session.as_deref()).await?;
    user_by_id(tx, user_id).await
}

/// [`Store::upgrade_password_hash`].
pub(crate) async fn upgrade_password_hash(
    tx: &impl Exec,
    user_id: i64,
    from: &PasswordHash,
    to: &PasswordHash,
) -> StoreResult<bool> {
    let upgraded = tx
        .execute(sql::USER_UPGRADE_PASSWORD, args![user_id, &from.0, &to.0])
        .await?
        == 1;
    if upgraded {
        invalidate(tx, Some(user_id), None).await?;
    }
    Ok(upgraded)
}

pub(crate) async fn set_current_context(
    tx: &impl Exec,
    user_id: i64,
    organization: Option<Uuid>,
    team: Option<i64>,
) -> StoreResult<()> {
    let organization = organization.map(|o| o.to_string());
    tx.execute(sql::USER_SET_CONTEXT, args![user_id, &organization, team])
        .await?;
    invalidate(tx, Some(user_id), None).await
}

pub(crate) async fn delete_user(tx: &impl Exec, id: i64) -> StoreResult<UserDeletion> {
    match lock_user(tx, id).await {
        Err(StoreError::Missing(_)) => return Ok(UserDeletion::Missing),
        other => other?,
    }
    if count(tx, sql::USER_MEMBERSHIP_COUNT, args![id]).await? > 0 {
        return Ok(UserDeletion::HasMemberships);
    }
    tx.execute(sql::USER_DELETE, args![id]).await?;
    invalidate(tx, Some(id), None).await?;
    Ok(UserDeletion::Deleted)
}

/// [`Store::signup`].
pub(crate) async fn signup(
    tx: &impl Exec,
    signup: NewSignup,
) -> StoreResult<(UserRecord, OrganizationRecord, TeamRecord)> {
    let now = system_now();
    if let Some(lock) = tx.pick(&sql::SIGNUP_LOCK) {
        tx.execute(lock, &[]).await?;
    }
    let first_user = count(tx, sql::USER_COUNT, &[]).await? == 0;
    if signup.only_first_user && !first_user {
        return Err(StoreError::Unique(Unique::FirstUser));
    }
    let user = NewUser {
        is_staff: first_user,
        ..signup.user
    };
    let user_id = insert_user_row(tx, &user).await?;
    let (organization, team) = insert_organization_tree(
        tx,
        user_id,
        &signup.organization_name,
        &signup.team_name,
        now,
    )
    .await?;
    let user = user_by_id(tx, user_id).await?;
    Ok((user, organization, team))
}

// --- organizations, teams, dashboards ----------------------------------------------------------

pub(crate) async fn create_organization(
    tx: &impl Exec,
    new: &NewOrganization,
) -> StoreResult<(OrganizationRecord, TeamRecord)> {
    let now = system_now();
    lock_user(tx, new.owner_id).await?;
    let created =
        insert_organization_tree(tx, new.owner_id, &new.name, &new.team_name, now).await?;
    invalidate(tx, Some(new.owner_id), None).await?;
    Ok(created)
}

pub(crate) async fn update_organization(
    tx: &impl Exec,
    id: Uuid,
    changes: &OrganizationChanges,
) -> StoreResult<Option<OrganizationRecord>> {
    let id = id.to_string();
    let now = system_now();
    let mut found = true;
    if let Some(name) = &changes.name {
        found &= tx
            .execute(sql::ORGANIZATION_SET_NAME, args![id.as_str(), name, now])
            .await?
            == 1;
    }
    if let Some(enforce) = changes.enforce_2fa {
        found &= tx
            .execute(
                sql::ORGANIZATION_SET_ENFORCE_2FA,
                args![id.as_str(), enforce, now],
            )
            .await?
            == 1;
    }
    if !found {
        return Ok(None);
    }
    invalidate_members(tx, &id, now).await?;
    organization_by_id(tx, &id).await
}

pub(crate) async fn add_membership(
    tx: &impl Exec,
    organization: Uuid,
    user_id: i64,
    level: MembershipLevel,
) -> StoreResult<MembershipRecord> {
    let now = system_now();
    lock_user(tx, user_id).await?;
    let id = organization.to_string();
    if !organization_exists(tx, &id).await? {
        return Err(StoreError::Missing("organization"));
    }
    let membership = insert_membership(tx, organization, user_id, level, true, now).await?;
    // Joining makes the organization (and its first team) current, as PostHog's `join`.
    let first_team = tx
        .query_opt(sql::FIRST_TEAM_OF_ORGANIZATION, args![id.as_str()], |r| {
            r.i64(0)
        })
        .await?;
    tx.execute(
        sql::USER_SET_CONTEXT,
        args![user_id, id.as_str(), first_team],
    )
    .await?;
    // Every member's view of the organization (member count) changed.
    invalidate(tx, None, None).await?;
    Ok(membership)
}

/// [`Store::remove_membership`].
pub(crate) async fn remove_membership(
    tx: &impl Exec,
    organization: Uuid,
    user_id: i64,
    log: &[NewActivity],
) -> StoreResult<MembershipRemoval> {
    let id = organization.to_string();
    let lock = tx.pick(&sql::ORGANIZATION_LOCK);
    if tx
        .query_opt(lock, args![id.as_str()], |r| r.text(0))
        .await?
        .is_none()
    {
        return Err(StoreError::Missing("organization"));
    }
    let Some(membership) = tx
        .query_opt(sql::MEMBERSHIP_OF_USER, args![id.as_str(), user_id], |r| {
            row::membership_from_row(r)
        })
        .await?
    else {
        return Ok(MembershipRemoval::NotMember);
    };
    let owner = MembershipLevel::Owner.as_i64();
    if membership.level == MembershipLevel::Owner
        && count(tx, sql::ORGANIZATION_LEVEL_COUNT, args![id.as_str(), owner]).await? <= 1
    {
        return Ok(MembershipRemoval::LastOwner);
    }
    let membership_id = membership.id.to_string();
    tx.execute(sql::MEMBERSHIP_DELETE, args![membership_id.as_str()])
        .await?;
    tx.execute(sql::USER_LEAVE_ORGANIZATION, args![user_id, id.as_str()])
        .await?;
    record(tx, log).await?;
    // As for joining: every member's view of the organization (member count) changed, and the
    // member's own views, keys and sessions with it.
    invalidate(tx, None, None).await?;
    Ok(MembershipRemoval::Removed(membership))
}

pub(crate) async fn create_team(tx: &impl Exec, new: &NewTeam) -> StoreResult<TeamRecord> {
    if !organization_exists(tx, &new.organization_id.to_string()).await? {
        return Err(StoreError::Missing("organization"));
    }
    let team = insert_team(tx, new.organization_id, &new.name, system_now()).await?;
    invalidate(tx, None, None).await?;
    Ok(team)
}

/// The team checked is the team written to.
pub(crate) async fn create_dashboard(
    tx: &impl Exec,
    team_id: i64,
    name: &str,
) -> StoreResult<DashboardRecord> {
    lock_team(tx, team_id).await?;
    tx.query_opt(
        sql::DASHBOARD_INSERT,
        args![team_id, name, system_now()],
        |r| row::dashboard_from_row(r),
    )
    .await?
    .ok_or(StoreError::Missing("dashboard"))
}

pub(crate) async fn upsert_scene_personalisation(
    tx: &impl Exec,
    scene: &NewScene,
) -> StoreResult<()> {
    lock_user(tx, scene.user_id).await?;
    let updated = match scene.team_id {
        None => {
            tx.execute(
                sql::SCENE_UPDATE_NULL_TEAM,
                args![scene.user_id, &scene.scene, scene.dashboard_id],
            )
            .await?
        }
        Some(_) => 0,
    };
    if updated == 0 {
        tx.execute(
            sql::SCENE_UPSERT,
            args![
                scene.user_id,
                scene.team_id,
                &scene.scene,
                scene.dashboard_id,
                system_now()
            ],
        )
        .await?;
    }
    invalidate(tx, Some(scene.user_id), None).await
}

// --- personal API keys -------------------------------------------------------------------------

pub(crate) async fn insert_api_key(
    tx: &impl Exec,
    key: &NewApiKey,
    limit: usize,
    log: &[NewActivity],
) -> StoreResult<ApiKeyRecord> {
    lock_user(tx, key.user_id).await?;
    if count(tx, sql::API_KEY_COUNT_FOR_USER, args![key.user_id]).await? >= limit as i64 {
        return Err(StoreError::Limit(limit));
    }
    let scopes = json(&key.scopes)?;
    let teams = key.scoped_teams.as_ref().map(json).transpose()?;
    let orgs = key.scoped_organizations.as_ref().map(json).transpose()?;
    tx.execute(
        sql::API_KEY_INSERT,
        args![
            &key.id,
            key.user_id,
            &key.label,
            &key.secure_value,
            &key.mask_value,
            key.created_at,
            scopes.as_str(),
            &teams,
            &orgs,
            key.expires_at
        ],
    )
    .await?;
    invalidate(tx, Some(key.user_id), None).await?;
    record(tx, log).await?;
    api_key_by_id(tx, sql::API_KEY_BY_ID, &key.id)
        .await?
        .ok_or(StoreError::Missing("personal API key"))
}

/// Every `last_used_at` in one transaction: all or nothing, and one commit for the batch.
pub(crate) async fn touch_api_keys(tx: &impl Exec, used: &[(String, Micros)]) -> StoreResult<()> {
    for (id, at) in used {
        tx.execute(sql::API_KEY_TOUCH, args![id, at]).await?;
    }
    Ok(())
}

/// Every session's `last_activity_at` in one transaction (no invalidation: nothing cached
/// shows it).
pub(crate) async fn touch_sessions(tx: &impl Exec, used: &[(String, Micros)]) -> StoreResult<()> {
    for (id, at) in used {
        tx.execute(sql::SESSION_TOUCH, args![id, at]).await?;
    }
    Ok(())
}

pub(crate) async fn update_api_key(
    tx: &impl Exec,
    id: &str,
    changes: &ApiKeyChanges,
    log: &[NewActivity],
) -> StoreResult<ApiKeyRecord> {
    let before = api_key_by_id(tx, tx.pick(&sql::API_KEY_BEFORE_WRITE), id)
        .await?
        .ok_or(StoreError::Missing("personal API key"))?;
    let scopes = json(&changes.scopes)?;
    let teams = changes.scoped_teams.as_ref().map(json).transpose()?;
    let orgs = changes
        .scoped_organizations
        .as_ref()
        .map(json)
        .transpose()?;
    tx.execute(
        sql::API_KEY_UPDATE,
        args![
            id,
            &changes.label,
            scopes.as_str(),
            &teams,
            &orgs,
            changes.expires_at
        ],
    )
    .await?;
    invalidate(tx, None, Some(&before.secure_value)).await?;
    record(tx, log).await?;
    api_key_by_id(tx, sql::API_KEY_BY_ID, id)
        .await?
        .ok_or(StoreError::Missing("personal API key"))
}

pub(crate) async fn delete_api_key(
    tx: &impl Exec,
    id: &str,
    log: &[NewActivity],
) -> StoreResult<Option<ApiKeyRecord>> {
    let Some(before) = api_key_by_id(tx, tx.pick(&sql::API_KEY_BEFORE_WRITE), id).await? else {
        return Ok(None);
    };
    tx.execute(sql::API_KEY_DELETE, args![id]).await?;
    invalidate(tx, Some(before.user_id), Some(&before.secure_value)).await?;
    record(tx, log).await?;
    Ok(Some(before))
}

pub(crate) async fn roll_api_key(
    tx: &impl Exec,
    id: &str,
    secure_value: &str,
    mask_value: &str,
    rolled_at: Micros,
    log: &[NewActivity],
) -> StoreResult<Option<(ApiKeyRecord, ApiKeyRecord)>> {
    let Some(before) = api_key_by_id(tx, tx.pick(&sql::API_KEY_BEFORE_WRITE), id).await? else {
        return Ok(None);
    };
    tx.execute(
        sql::API_KEY_ROLL,
        args![id, secure_value, mask_value, rolled_at],
    )
    .await?;
    invalidate(tx, None, Some(&before.secure_value)).await?;
    record(tx, log).await?;
    let after = api_key_by_id(tx, sql::API_KEY_BY_ID, id)
        .await?
        .ok_or(StoreError::Missing("personal API key"))?;
    Ok(Some((before, after)))
}

// --- sessions and two-factor authentication ----------------------------------------------------

pub(crate) async fn insert_session(tx: &impl Exec, s: &SessionRecord) -> StoreResult<()> {
    write_session_row(tx, sql::SESSION_INSERT, s).await
}

/// Binds every column of a session row to `statement` ([`sql::SESSION_INSERT`] or
/// [`sql::SESSION_UPSERT`], which take them in the same order).
async fn write_session_row(tx: &impl Exec, statement: &str, s: &SessionRecord) -> StoreResult<()> {
    tx.execute(
        statement,
        args![
            &s.id,
            s.user_id,
            s.created_at,
            s.login_at,
            s.expires_at,
            &s.csrf_token,
            s.two_factor_verified,
            s.pending_user_id,
            s.pending_at,
            &s.totp_setup_secret,
            s.totp_setup_at,
            &s.client.ip,
            &s.client.user_agent,
            &s.client.login_method,
            s.last_activity_at
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn update_session(tx: &impl Exec, s: &SessionRecord) -> StoreResult<()> {
    tx.execute(
        sql::SESSION_UPDATE,
        args![
            &s.id,
            s.user_id,
            s.login_at,
            s.expires_at,
            &s.csrf_token,
            s.two_factor_verified,
            s.pending_user_id,
            s.pending_at,
            &s.totp_setup_secret,
            s.totp_setup_at
        ],
    )
    .await?;
    invalidate(tx, None, Some(&session_key(&s.id))).await
}

/// Deletes the session; whether there was one (`log` is written only then).
pub(crate) async fn delete_session(
    tx: &impl Exec,
    id: &str,
    log: &[NewActivity],
) -> StoreResult<bool> {
    let deleted = tx.execute(sql::SESSION_DELETE, args![id]).await? > 0;
    invalidate(tx, None, Some(&session_key(id))).await?;
    if deleted {
        record(tx, log).await?;
    }
    Ok(deleted)
}

pub(crate) async fn delete_sessions_of(
    tx: &impl Exec,
    user_id: i64,
    keep: Option<&str>,
    log: &[NewActivity],
) -> StoreResult<u64> {
    let keep = keep.unwrap_or_default();
    let n = tx
        .execute(sql::SESSIONS_DELETE_OF_USER, args![user_id, keep])
        .await?;
    invalidate(tx, Some(user_id), None).await?;
    record(tx, log).await?;
    Ok(n)
}

/// Deletes the matching unused code (recording `log` only then); whether there was one.
pub(crate) async fn consume_backup_code(
    tx: &impl Exec,
    user_id: i64,
    hash: &str,
    log: &[NewActivity],
) -> StoreResult<bool> {
    let used = tx
        .execute(sql::BACKUP_CODE_CONSUME, args![user_id, hash])
        .await?
        == 1;
    if used {
        record(tx, log).await?;
    }
    Ok(used)
}

async fn put_totp_row(tx: &impl Exec, user_id: i64, d: &TotpDeviceRecord) -> StoreResult<()> {
    tx.execute(
        sql::TOTP_UPSERT,
        args![
            user_id,
            &d.secret,
            d.last_step,
            d.failures,
            d.throttled_until,
            d.created_at
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn put_totp_device(tx: &impl Exec, d: &TotpDeviceRecord) -> StoreResult<()> {
    put_totp_row(tx, d.user_id, d).await?;
    invalidate(tx, Some(d.user_id), None).await
}

pub(crate) async fn delete_two_factor(tx: &impl Exec, user_id: i64) -> StoreResult<()> {
    tx.execute(sql::TOTP_DELETE, args![user_id]).await?;
    tx.execute(sql::BACKUP_CODES_DELETE, args![user_id]).await?;
    invalidate(tx, Some(user_id), None).await
}

async fn write_backup_codes(tx: &impl Exec, user_id: i64, hashes: &[String]) -> StoreResult<()> {
    let now = system_now();
    tx.execute(sql::BACKUP_CODES_DELETE, args![user_id]).await?;
    for hash in hashes {
        tx.execute(sql::BACKUP_CODE_INSERT, args![user_id, hash, now])
            .await?;
    }
    Ok(())
}

/// Nothing cached shows the codes, so no invalidation.
pub(crate) async fn replace_backup_codes(
    tx: &impl Exec,
    user_id: i64,
    hashes: &[String],
) -> StoreResult<()> {
    write_backup_codes(tx, user_id, hashes).await
}

// --- integrations ------------------------------------------------------------------------------

pub(crate) async fn upsert_user_integration(
    tx: &impl Exec,
    new: &NewUserIntegration,
    log: &[NewActivity],
) -> StoreResult<UserIntegrationRecord> {
    let id = Uuid::now_v7().to_string();
    let config = new.config.to_string();
    tx.execute(
        sql::USER_INTEGRATION_UPSERT,
        args![
            id.as_str(),
            new.user_id,
            &new.kind,
            &new.integration_id,
            config.as_str(),
            &new.sensitive_config,
            new.now
        ],
    )
    .await?;
    record(tx, log).await?;
    tx.query_opt(
        sql::USER_INTEGRATION_BY_KEY,
        args![new.user_id, &new.kind, &new.integration_id],
        |r| row::user_integration_from_row(r),
    )
    .await?
    .ok_or(StoreError::Missing("user_integration"))
}

/// Deletes the integration (and with it its tokens); whether there was one (`log` is written
/// only then).
pub(crate) async fn delete_user_integration(
    tx: &impl Exec,
    id: &str,
    log: &[NewActivity],
) -> StoreResult<bool> {
    let deleted = tx.execute(sql::USER_INTEGRATION_DELETE, args![id]).await? > 0;
    if deleted {
        record(tx, log).await?;
    }
    Ok(deleted)
}

pub(crate) async fn upsert_team_integration(
    tx: &impl Exec,
    new: &NewTeamIntegration,
) -> StoreResult<TeamIntegrationRecord> {
    lock_team(tx, new.team_id).await?;
    let config = new.config.to_string();
    let id = tx
        .query_opt(
            sql::TEAM_INTEGRATION_UPSERT,
            args![
                new.team_id,
                &new.kind,
                &new.integration_id,
                config.as_str(),
                new.created_by_id,
                new.now
            ],
            |r| r.i64(0),
        )
        .await?
        .ok_or(StoreError::Missing("team_integration"))?;
    tx.query_opt(sql::TEAM_INTEGRATION_BY_ID, args![id], |r| {
        row::team_integration_from_row(r)
    })
    .await?
    .ok_or(StoreError::Missing("team_integration"))
}

// --- outgoing mail -----------------------------------------------------------------------------

pub(crate) async fn request_password_reset(
    tx: &impl Exec,
    user_id: i64,
    requested_at: Micros,
    mail: &NewMail,
    log: &[NewActivity],
) -> StoreResult<()> {
    if tx
        .execute(sql::USER_SET_RESET_REQUESTED, args![user_id, requested_at])
        .await?
        == 0
    {
        return Err(StoreError::Missing("user"));
    }
    invalidate(tx, Some(user_id), None).await?;
    record(tx, log).await?;
    enqueue_mail(tx, mail).await
}
