//! What an operator does for a user who cannot help themselves (`hoglet user …`, `hoglet key
//! revoke`, `hoglet org remove-member`): set a password, turn off a lost second factor,
//! deactivate or reactivate an account, revoke a key, remove a member. Each change and its
//! activity entry commit together; the store's invalidation row tells running servers, which stop
//! honouring what the change ends within one poll of the feed.

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::service::activity::{self, Activity, Context};
use crate::service::emails::Outgoing;
use crate::service::{accounts, api_keys};
use crate::state::AppState;
use crate::store::{
    ApiKeyRecord, MembershipRecord, MembershipRemoval, StoreError, UserChanges, UserRecord,
    UserWrite,
};

/// Applies a write carrying its activity entries (logged and counted once it committed).
async fn commit(state: &AppState, user_id: i64, write: UserWrite) -> ApiResult<UserRecord> {
    accounts::commit(state, user_id, &write, Outgoing::default()).await
}

/// Sets the password (by the API's rules for a new password) and ends every session of the user:
/// whoever knew the old one may hold one.
pub async fn set_password(
    state: &AppState,
    ctx: &Context,
    user: &UserRecord,
    password: &SecretString,
) -> ApiResult<UserRecord> {
    accounts::check_new_password(password.expose_secret(), Some(user), false)?;
    let hash = accounts::hash_password(state, password.expose_secret()).await?;
    let write = UserWrite {
        changes: UserChanges {
            password: Some(hash),
            ..UserChanges::default()
        },
        end_sessions: Some(None),
        activity: vec![ctx.entry(state, Some(user.id), Activity::PasswordChanged, json!({}))],
        ..UserWrite::default()
    };
    commit(state, user.id, write).await
}

/// Removes the TOTP device and every backup code, so the user logs in with the password alone.
pub async fn disable_two_factor(
    state: &AppState,
    ctx: &Context,
    user: &UserRecord,
) -> ApiResult<UserRecord> {
    if state.store.totp_device(user.id).await?.is_none() {
        return Err(ApiError::non_field(
            "2fa_not_enabled",
            format!("{} has no two-factor authentication", user.email),
        ));
    }
    let write = UserWrite {
        remove_two_factor: true,
        activity: vec![ctx.entry(state, Some(user.id), Activity::TwoFactorDisabled, json!({}))],
        ..UserWrite::default()
    };
    commit(state, user.id, write).await
}

/// Deactivates (`active: false`) or reactivates the account. A deactivated user's sessions end
/// and their keys are refused at once (key lookups only find active users' keys).
pub async fn set_active(
    state: &AppState,
    ctx: &Context,
    user: &UserRecord,
    active: bool,
) -> ApiResult<UserRecord> {
    if user.is_active == active {
        let what = if active { "active" } else { "deactivated" };
        return Err(ApiError::non_field(
            "unchanged",
            format!("{} is already {what}", user.email),
        ));
    }
    let kind = if active {
        Activity::UserActivated
    } else {
        Activity::UserDeactivated
    };
    let write = UserWrite {
        changes: UserChanges {
            is_active: Some(active),
            ..UserChanges::default()
        },
        end_sessions: (!active).then_some(None),
        activity: vec![ctx.entry(state, Some(user.id), kind, json!({}))],
        ..UserWrite::default()
    };
    commit(state, user.id, write).await
}

/// Deletes a personal API key by id, whoever owns it; it stops working at once.
pub async fn revoke_key(state: &AppState, ctx: &Context, id: &str) -> ApiResult<ApiKeyRecord> {
    let missing = || ApiError::NotFound(format!("no personal API key with id {id:?}").into());
    if crate::domain::fields::check_characters(id, false).is_err() {
        return Err(missing());
    }
    let key = state.store.api_key(id).await?.ok_or_else(missing)?;
    api_keys::delete(state, ctx, &key).await?;
    Ok(key)
}

/// Removes the user from the organization, unless they are its only owner.
pub async fn remove_member(
    state: &AppState,
    ctx: &Context,
    organization: Uuid,
    user: &UserRecord,
) -> ApiResult<MembershipRecord> {
    let no_organization = || ApiError::NotFound(format!("no organization {organization}").into());
    let org = state
        .store
        .organization(organization)
        .await?
        .ok_or_else(no_organization)?;
    let entries = [ctx.entry(
        state,
        Some(user.id),
        Activity::OrganizationMemberRemoved,
        json!({"organization_id": org.id, "organization_name": org.name}),
    )];
    let removal = state
        .store
        .remove_membership(organization, user.id, &entries)
        .await
        .map_err(|e| match e {
            StoreError::Missing("organization") => no_organization(),
            other => other.into(),
        })?;
    match removal {
        MembershipRemoval::Removed(membership) => {
            state.caches.invalidate_all();
            activity::committed(state, &entries);
            Ok(membership)
        }
        MembershipRemoval::NotMember => Err(ApiError::NotFound(
            format!("{} is not a member of {}", user.email, org.name).into(),
        )),
        MembershipRemoval::LastOwner => Err(ApiError::non_field(
            "last_owner",
            format!(
                "{} is the only owner of {}: make another member owner first",
                user.email, org.name
            ),
        )),
    }
}
