//! Signal autonomy (PostHog's opt-in for autonomous signal processing): one row per user.

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{SignalAutonomyRecord, UserRecord};

/// Any user by id, active or not (PostHog looks staff targets up by primary key).
pub async fn user_by_id(state: &AppState, id: i64) -> ApiResult<UserRecord> {
    state
        .store
        .user_by_id(id)
        .await?
        .ok_or_else(ApiError::not_found)
}

/// The user's config; `None` when they have not opted in.
pub async fn get(state: &AppState, user: &UserRecord) -> ApiResult<Option<SignalAutonomyRecord>> {
    Ok(state.store.signal_autonomy(user.id).await?)
}

/// Opts the user in; the priority is written only when `Some` (`Some(None)`: the team default).
pub async fn set(
    state: &AppState,
    user: &UserRecord,
    autostart_priority: Option<Option<String>>,
) -> ApiResult<SignalAutonomyRecord> {
    Ok(state
        .store
        .upsert_signal_autonomy(user.id, autostart_priority, state.clock.now())
        .await?)
}

/// Opts the user out (whether or not they were in).
pub async fn clear(state: &AppState, user: &UserRecord) -> ApiResult<()> {
    state.store.delete_signal_autonomy(user.id).await?;
    Ok(())
}
