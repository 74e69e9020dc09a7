//! The storage contract: every method of `hoglet::store::Store`, run against SQLite and Postgres
//! through the public `hoglet::store::connect` (which also migrates). Raw SQL appears only to look
//! at what a method must (or must not) leave behind, and to make a write fail half-way through.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use hoglet::config::DatabaseUrl;
use hoglet::store::MembershipRemoval;
use hoglet::store::{
    self, ActivityQuery, ActivityRecord, ActorRecord, ApiKeyChanges, ApiKeyRecord, Backend,
    DynStore, InvalidationRecord, MailFailure, MembershipLevel, MembershipWithOrg, NewActivity,
    NewApiKey, NewMail, NewOrganization, NewScene, NewSignup, NewTeam, NewUser,
    OrganizationChanges, OrganizationRecord, OutboxStatus, PasswordHash, SessionClient,
    SessionRecord, StoreError, StoreResult, TeamRecord, TotpDeviceRecord, Unique, UserChanges,
    UserDeletion, UserFacts, UserQuery, UserRecord, UserWrite,
};
use hoglet::time::{Micros, SECOND, system_now};
use serde_json::json;
use uuid::Uuid;

use crate::db_tests;
use crate::helpers::{Db, TestDatabase};

db_tests!(
    list_counts_follow_every_change,
    backend_ping_and_a_fresh_database,
    users_insert_and_lookup,
    email_is_unique_case_insensitively,
    list_users_filters_orders_and_pages,
    update_user_round_trips_every_mutable_column,
    write_user_writes_only_the_given_columns,
    write_user_round_trips_every_mutable_column,
    write_user_refuses_unknown_users_and_taken_emails_whole,
    write_user_applies_every_part_together,
    write_user_is_all_or_nothing_and_a_failing_statement_is_not_an_outage,
    set_current_context_changes_only_the_context,
    delete_user_outcomes_and_cascades,
    user_facts_report_keys,
    create_organization_creates_the_whole_tree,
    create_organization_is_all_or_nothing,
    organization_slugs_get_a_suffix_on_collision,
    concurrent_organizations_with_one_name_get_distinct_slugs,
    add_membership_contract,
    remove_membership_contract,
    list_users_finds_addresses_containing_text_and_inactive_users,
    teams_create_read_and_order,
    memberships_follow_join_order_and_counts_see_active_members,
    dashboards_create_and_read,
    scene_personalisation_upserts,
    api_keys_insert_and_lookup,
    api_key_limit_is_per_user,
    concurrent_api_key_inserts_never_exceed_the_limit,
    legacy_api_key_helpers,
    touch_api_keys_only_moves_forward,
    settings_keep_the_first_value,
    settings_read_and_delete_only_a_matching_value,
    invalidation_feed_orders_filters_and_prunes,
    writes_are_visible_through_a_second_store,
    signal_autonomy_upserts_partially_and_deletes,
    user_integrations_upsert_replace_secrets_and_keep_the_cache,
    team_integrations_upsert_and_filter,
    sessions_insert_read_update_and_end,
    prune_sessions_removes_only_sessions_that_are_over,
    touch_sessions_only_moves_forward_and_changes_nothing_else,
    advance_totp_step_accepts_each_step_once,
    backup_codes_are_single_use,
    signup_creates_everything_or_nothing,
    concurrent_first_user_signups_make_one_staff_user,
    update_api_key_writes_only_its_fields,
    delete_api_key_returns_the_record_once,
    roll_api_key_replaces_the_hash_once_per_roll,
    request_password_reset_writes_one_column_and_its_mail_together,
    outbox_claims_lease_retry_give_up_and_delete,
    prune_dead_mail_deletes_only_old_dead_letters,
    concurrent_claims_never_share_a_message,
    update_organization_writes_only_the_given_settings,
    api_keys_of_lists_one_users_keys_newest_first,
    totp_attempts_are_claimed_once_per_backoff_window,
    upgrade_password_hash_replaces_only_the_hash_it_read,
    activity_is_written_with_each_write_paged_filtered_and_pruned,
);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A fixed timestamp for values the caller chooses (microseconds, 2023-11-14).
const T0: Micros = 1_700_000_000_000_000;
/// PostHog's per-user key limit.
const LIMIT: usize = 10;
const DEFAULT_DASHBOARD: &str = "My App Dashboard";

/// A store on a database of its own. `store` is declared first so it closes before the database
/// is dropped.
struct Env {
    store: DynStore,
    db: TestDatabase,
}

impl Env {
    async fn new(db: Db) -> Self {
        let db = TestDatabase::create(db).await;
        let store = store::connect(&db.url)
            .await
            .expect("store connects and migrates");
        Self { store, db }
    }

    /// A second store on the same database, as another replica or an admin command opens it.
    async fn reopen(&self) -> DynStore {
        store::connect(&self.db.url)
            .await
            .expect("second store connects")
    }

    /// The single integer a raw query returns (counts, mostly).
    async fn raw_i64(&self, sql: &str) -> i64 {
        raw_i64(&self.db, sql).await
    }

    /// Runs raw statements: `sqlite` on SQLite, `postgres` on Postgres.
    async fn raw_exec(&self, sqlite: &str, postgres: &str) {
        raw_exec(&self.db, sqlite, postgres).await
    }

    /// Rows of `table` (no user input reaches this).
    async fn rows(&self, table: &str) -> i64 {
        self.raw_i64(&format!("SELECT count(*) FROM {table}")).await
    }
}

/// The one integer a raw query answers, on either database (for what no store method shows).
pub async fn raw_i64(db: &TestDatabase, sql: &str) -> i64 {
    match &db.url {
        DatabaseUrl::Sqlite(path) => {
            let (path, sql) = (path.clone(), sql.to_string());
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(&path).expect("raw SQLite connection");
                conn.busy_timeout(Duration::from_secs(5))
                    .expect("busy timeout");
                conn.query_row(&sql, [], |r| r.get::<_, i64>(0))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            })
            .await
            .expect("raw query task")
        }
        DatabaseUrl::Postgres(url) => raw_postgres(url)
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get::<_, i64>(0),
    }
}

/// Runs raw statements against the test database behind the app's back: `sqlite` on SQLite,
/// `postgres` on Postgres.
pub async fn raw_exec(db: &TestDatabase, sqlite: &str, postgres: &str) {
    match &db.url {
        DatabaseUrl::Sqlite(path) => {
            let (path, sql) = (path.clone(), sqlite.to_string());
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(&path).expect("raw SQLite connection");
                conn.busy_timeout(Duration::from_secs(5))
                    .expect("busy timeout");
                conn.execute_batch(&sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            })
            .await
            .expect("raw exec task");
        }
        DatabaseUrl::Postgres(url) => raw_postgres(url)
            .await
            .batch_execute(postgres)
            .await
            .unwrap_or_else(|e| panic!("{postgres}: {e}")),
    }
}

async fn raw_postgres(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw Postgres connection");
    tokio::spawn(connection);
    client
}

fn new_user(email: &str) -> NewUser {
    NewUser {
        uuid: Uuid::new_v4(),
        email: email.to_string(),
        password: PasswordHash(format!("argon2id$v=19$m=19456,t=2,p=1$test${email}")),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        distinct_id: format!("distinct-{}", Uuid::new_v4().simple()),
        is_staff: false,
        is_email_verified: None,
        role_at_organization: None,
        email_opt_in: None,
        date_joined: T0,
    }
}

async fn add_user(store: &DynStore, email: &str) -> UserRecord {
    store
        .insert_user(new_user(email))
        .await
        .expect("user inserted")
}

async fn reload(store: &DynStore, id: i64) -> UserRecord {
    store
        .user_by_id(id)
        .await
        .expect("user read")
        .expect("user exists")
}

async fn set_active(store: &DynStore, id: i64, active: bool) -> UserRecord {
    let mut user = reload(store, id).await;
    user.is_active = active;
    save_user(store, &user).await.expect("user updated");
    user
}

/// Writes the columns in which `after` differs from the stored user, the way a use case writes.
async fn save_user(store: &DynStore, after: &UserRecord) -> StoreResult<UserRecord> {
    let before = store.user_by_id(after.id).await.unwrap();
    let changes = UserChanges::between(before.as_ref().unwrap_or(after), after);
    store
        .write_user(
            after.id,
            &UserWrite {
                changes,
                ..UserWrite::default()
            },
        )
        .await
}

async fn add_org(store: &DynStore, owner: i64, name: &str) -> (OrganizationRecord, TeamRecord) {
    store
        .create_organization(NewOrganization {
            name: name.to_string(),
            owner_id: owner,
            team_name: "Default project".into(),
        })
        .await
        .expect("organization created")
}

async fn add_team(store: &DynStore, organization: Uuid, name: &str) -> TeamRecord {
    store
        .create_team(NewTeam {
            organization_id: organization,
            name: name.to_string(),
        })
        .await
        .expect("team created")
}

fn new_key(user_id: i64) -> NewApiKey {
    let id = Uuid::new_v4().simple().to_string();
    NewApiKey {
        secure_value: format!("sha256${}", hoglet::crypto::sha256_hex(id.as_bytes())),
        id,
        user_id,
        label: "test key".into(),
        mask_value: "phx_...test".into(),
        scopes: vec!["user:read".into()],
        scoped_teams: None,
        scoped_organizations: None,
        expires_at: None,
        created_at: T0,
    }
}

fn key_with_hash(user_id: i64, secure_value: &str) -> NewApiKey {
    NewApiKey {
        secure_value: secure_value.to_string(),
        ..new_key(user_id)
    }
}

async fn key_count(env: &Env, user_id: i64) -> i64 {
    env.raw_i64(&format!(
        "SELECT count(*) FROM personal_api_keys WHERE user_id = {user_id}"
    ))
    .await
}

/// One entry of the invalidation feed without its sequence number and time.
type Entry = (Option<i64>, Option<String>);

fn user_entry(id: i64) -> Entry {
    (Some(id), None)
}

const EVERYTHING: Entry = (None, None);

/// The whole feed, oldest first (the store answers newest first).
async fn feed(store: &DynStore) -> Vec<InvalidationRecord> {
    let mut records = store.invalidations_since(0).await.expect("feed read");
    records.reverse();
    records
}

/// The newest sequence number of the feed (0 when empty).
async fn feed_mark(store: &DynStore) -> i64 {
    feed(store).await.last().map_or(0, |r| r.seq)
}

/// What the feed recorded after `mark`, oldest first.
async fn feed_after(store: &DynStore, mark: i64) -> Vec<Entry> {
    feed(store)
        .await
        .into_iter()
        .filter(|r| r.seq > mark)
        .map(|r| (r.user_id, r.key_hash))
        .collect()
}

fn describe(e: &StoreError) -> String {
    match e {
        StoreError::Unique(target) => format!("Unique({target:?})"),
        StoreError::Missing(what) => format!("Missing({what})"),
        StoreError::Limit(n) => format!("Limit({n})"),
        StoreError::Unavailable(e) => format!("Unavailable({e:#})"),
        StoreError::Other(e) => format!("Other({e:#})"),
    }
}

#[track_caller]
fn assert_err<T: Debug>(result: StoreResult<T>, expected: &str) {
    match result {
        Ok(value) => panic!("expected {expected}, got Ok({value:?})"),
        Err(e) => assert_eq!(describe(&e), expected),
    }
}

/// Asserts `value` lies in `[before, after]`: a timestamp the store took itself.
#[track_caller]
fn assert_between(value: Micros, before: Micros, after: Micros) {
    assert!(
        before <= value && value <= after,
        "{value} is not within [{before}, {after}]"
    );
}

macro_rules! assert_fields_eq {
    ($left:expr, $right:expr, [$($field:ident),+ $(,)?]) => {{
        let (left, right) = (&$left, &$right);
        $( assert_eq!(left.$field, right.$field, "field `{}`", stringify!($field)); )+
    }};
}

#[track_caller]
fn assert_same_user(actual: &UserRecord, expected: &UserRecord) {
    assert_fields_eq!(
        actual,
        expected,
        [
            id,
            uuid,
            email,
            pending_email,
            password,
            first_name,
            last_name,
            distinct_id,
            is_active,
            is_staff,
            date_joined,
            last_login,
            is_email_verified,
            requested_password_reset_at,
            current_organization_id,
            current_team_id,
            partial_notification_settings,
            anonymize_data,
            allow_impersonation,
            toolbar_mode,
            theme_mode,
            hedgehog_config,
            events_column_config,
            has_seen_product_intro_for,
            role_at_organization,
            allow_sidebar_suggestions,
            shortcut_position,
            passkeys_enabled_for_2fa,
            hide_mcp_hints,
            ui_configuration,
            email_opt_in,
            credentials_reviewed_at,
        ]
    );
}

#[track_caller]
fn assert_same_org(actual: &OrganizationRecord, expected: &OrganizationRecord) {
    assert_fields_eq!(
        actual,
        expected,
        [
            id,
            name,
            slug,
            logo_media_id,
            created_at,
            updated_at,
            plugins_access_level,
            available_product_features,
            is_member_join_email_enabled,
            enforce_2fa,
            members_can_invite,
            members_can_use_personal_api_keys,
            allow_publicly_shared_resources,
            is_ai_data_processing_approved,
            default_experiment_stats_method,
            default_anonymize_ips,
            default_role_id,
            customer_id,
            is_active,
            is_not_active_reason,
        ]
    );
}

#[track_caller]
fn assert_same_team(actual: &TeamRecord, expected: &TeamRecord) {
    assert_fields_eq!(
        actual,
        expected,
        [
            id,
            uuid,
            organization_id,
            project_id,
            api_token,
            name,
            completed_snippet_onboarding,
            has_completed_onboarding_for,
            ingested_event,
            is_demo,
            timezone,
            access_control,
            created_at,
        ]
    );
}

#[track_caller]
fn assert_same_key(actual: &ApiKeyRecord, expected: &ApiKeyRecord) {
    assert_fields_eq!(
        actual,
        expected,
        [
            id,
            user_id,
            label,
            secure_value,
            mask_value,
            scopes,
            scoped_teams,
            scoped_organizations,
            created_at,
            last_used_at,
            last_rolled_at,
            expires_at,
        ]
    );
}

fn team_ids(teams: &[TeamRecord]) -> Vec<i64> {
    teams.iter().map(|t| t.id).collect()
}

fn user_ids(page: &[UserRecord]) -> Vec<i64> {
    page.iter().map(|u| u.id).collect()
}

/// `(organization, user, level)` of each membership, in the order returned.
fn membership_rows(memberships: &[MembershipWithOrg]) -> Vec<(Uuid, i64, MembershipLevel)> {
    memberships
        .iter()
        .map(|m| {
            assert_eq!(m.membership.organization_id, m.organization.id);
            (
                m.membership.organization_id,
                m.membership.user_id,
                m.membership.level,
            )
        })
        .collect()
}

/// Runs the futures as parallel tasks and returns their results in order.
async fn in_parallel<T, F>(tasks: impl IntoIterator<Item = F>) -> Vec<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task finished"));
    }
    out
}

async fn key_by_value(store: &DynStore, secure_value: &str) -> Option<ApiKeyRecord> {
    store
        .api_key_by_secure_value(secure_value)
        .await
        .expect("key lookup")
}

// ---------------------------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------------------------

async fn backend_ping_and_a_fresh_database(db: Db) {
    let env = Env::new(db).await;
    let expected = match db {
        Db::Sqlite => Backend::Sqlite,
        Db::Postgres => Backend::Postgres,
    };
    assert_eq!(env.store.backend(), expected);
    env.store.ping().await.expect("ping");
    assert_eq!(env.store.count_users().await.unwrap(), 0);
    assert!(env.store.user_by_id(1).await.unwrap().is_none());
    assert!(!env.store.has_legacy_api_keys().await.unwrap());
    assert_eq!(feed(&env.store).await, vec![]);

    // Connecting (and so migrating) a second time is a no-op that keeps what is there.
    add_user(&env.store, "first@example.com").await;
    let again = env.reopen().await;
    again.ping().await.expect("ping through the second store");
    assert_eq!(again.backend(), expected);
    assert_eq!(again.count_users().await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

async fn users_insert_and_lookup(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;

    let new = NewUser {
        is_staff: true,
        is_email_verified: Some(false),
        role_at_organization: Some("engineering".into()),
        email_opt_in: Some(true),
        date_joined: T0 + 42,
        ..new_user("Alice.Smith@Example.com")
    };
    let alice = store.insert_user(new.clone()).await.expect("insert");
    assert!(alice.id > 0);
    // What the caller gave…
    assert_eq!(alice.uuid, new.uuid);
    assert_eq!(alice.email, "Alice.Smith@Example.com");
    assert_eq!(alice.password, new.password);
    assert_eq!(alice.first_name, "Ada");
    assert_eq!(alice.last_name, "Lovelace");
    assert_eq!(alice.distinct_id.as_deref(), Some(new.distinct_id.as_str()));
    assert!(alice.is_staff);
    assert_eq!(alice.is_email_verified, Some(false));
    assert_eq!(alice.role_at_organization.as_deref(), Some("engineering"));
    assert_eq!(alice.email_opt_in, Some(true));
    assert_eq!(alice.date_joined, T0 + 42);
    // …and the same column defaults on both backends (PostHog's model defaults).
    assert_eq!(alice.pending_email, None);
    assert!(alice.is_active);
    assert_eq!(alice.last_login, None);
    assert_eq!(alice.requested_password_reset_at, None);
    assert_eq!(alice.current_organization_id, None);
    assert_eq!(alice.current_team_id, None);
    assert_eq!(alice.partial_notification_settings, None);
    assert_eq!(alice.anonymize_data, Some(false));
    assert_eq!(alice.allow_impersonation, None);
    assert_eq!(alice.toolbar_mode.as_deref(), Some("toolbar"));
    assert_eq!(alice.theme_mode, None);
    assert_eq!(alice.hedgehog_config, None);
    assert_eq!(alice.events_column_config, json!({"active": "DEFAULT"}));
    assert_eq!(alice.has_seen_product_intro_for, None);
    assert_eq!(alice.allow_sidebar_suggestions, None);
    assert_eq!(alice.shortcut_position, None);
    assert_eq!(alice.passkeys_enabled_for_2fa, Some(false));
    assert!(!alice.hide_mcp_hints);
    assert_eq!(alice.ui_configuration, None);
    assert_eq!(alice.credentials_reviewed_at, None);

    let bob = add_user(store, "bob@example.com").await;
    assert!(bob.id > alice.id, "ids grow in insertion order");
    assert_eq!(bob.is_email_verified, None);
    assert!(!bob.is_staff);
    assert_eq!(bob.email_opt_in, None);

    assert_same_user(&reload(store, alice.id).await, &alice);
    assert_same_user(
        &store.user_by_uuid(alice.uuid).await.unwrap().unwrap(),
        &alice,
    );
    for spelling in [
        "Alice.Smith@Example.com",
        "alice.smith@example.com",
        "ALICE.SMITH@EXAMPLE.COM",
        "  alice.smith@example.com ",
    ] {
        let found = store.user_by_email(spelling).await.unwrap();
        assert_same_user(&found.expect(spelling), &alice);
    }
    assert_same_user(
        &store
            .user_by_email("BOB@example.com")
            .await
            .unwrap()
            .unwrap(),
        &bob,
    );

    assert!(store.user_by_id(bob.id + 1000).await.unwrap().is_none());
    assert!(store.user_by_uuid(Uuid::new_v4()).await.unwrap().is_none());
    assert!(
        store
            .user_by_email("nobody@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.user_by_email("alice").await.unwrap().is_none());

    // Inactive users are still found by id, uuid and email, and still counted.
    set_active(store, bob.id, false).await;
    assert!(!reload(store, bob.id).await.is_active);
    assert!(store.user_by_uuid(bob.uuid).await.unwrap().is_some());
    assert!(
        store
            .user_by_email("bob@example.com")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.count_users().await.unwrap(), 2);
}

async fn email_is_unique_case_insensitively(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let alice = add_user(store, "alice@example.com").await;

    for taken in [
        "alice@example.com",
        "ALICE@Example.COM",
        " alice@example.com ",
    ] {
        assert_err(store.insert_user(new_user(taken)).await, "Unique(Email)");
    }
    assert_err(
        store
            .insert_user(NewUser {
                distinct_id: alice.distinct_id.clone().unwrap(),
                ..new_user("someone-else@example.com")
            })
            .await,
        "Unique(DistinctId)",
    );
    assert_eq!(store.count_users().await.unwrap(), 1);

    // write_user refuses an address another user holds in any case, and changes nothing.
    let bob = add_user(store, "bob@example.com").await;
    let mark = feed_mark(store).await;
    let mut renamed = bob.clone();
    renamed.email = "Alice@EXAMPLE.com".into();
    renamed.first_name = "Robert".into();
    assert_err(save_user(store, &renamed).await, "Unique(Email)");
    assert_same_user(&reload(store, bob.id).await, &bob);
    assert_eq!(
        store
            .user_by_email("alice@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        alice.id
    );
    assert_eq!(
        feed_after(store, mark).await,
        vec![],
        "a refused update records no invalidation"
    );

    // Changing the case of one's own address is not a conflict.
    let mut shouting = alice.clone();
    shouting.email = "ALICE@example.com".into();
    save_user(store, &shouting).await.expect("own address");
    let found = store
        .user_by_email("alice@EXAMPLE.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.id, found.email.as_str()),
        (alice.id, "ALICE@example.com")
    );

    // An address given up is free again.
    let mut robert = bob.clone();
    robert.email = "robert@example.com".into();
    save_user(store, &robert).await.expect("rename");
    assert!(
        store
            .user_by_email("bob@example.com")
            .await
            .unwrap()
            .is_none()
    );
    let new_bob = add_user(store, "BOB@example.com").await;
    assert_eq!(
        store
            .user_by_email("bob@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        new_bob.id
    );

    // Case folding is Unicode-aware, the same on both backends.
    let elodie = add_user(store, "Élodie@Example.com").await;
    assert_eq!(
        store
            .user_by_email("ÉLODIE@EXAMPLE.COM")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(elodie.id)
    );
    assert_err(
        store.insert_user(new_user("élodie@example.com")).await,
        "Unique(Email)",
    );

    // Racing sign-ups with one address (through two stores): exactly one wins.
    let second = env.reopen().await;
    let results = in_parallel((0..6).map(|i| {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            second.clone()
        };
        let email = if i % 3 == 0 {
            "race@example.com"
        } else {
            "RACE@example.com"
        };
        async move { s.insert_user(new_user(email)).await }
    }))
    .await;
    let mut won = 0;
    for r in results {
        match r {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(describe(&e), "Unique(Email)"),
        }
    }
    assert_eq!(won, 1);
}

async fn list_users_filters_orders_and_pages(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let staff = |email: &str| NewUser {
        is_staff: true,
        ..new_user(email)
    };
    let a = store.insert_user(staff("a@example.com")).await.unwrap();
    let b = add_user(store, "Bob@Example.com").await;
    let c = add_user(store, "c@example.com").await;
    let d = store.insert_user(staff("d@example.com")).await.unwrap();
    let e = add_user(store, "e@example.com").await;
    set_active(store, c.id, false).await;

    let list = |q: UserQuery| async move {
        let page = store.list_users(&q).await.expect("list");
        (page.count, user_ids(&page.users))
    };
    let all = UserQuery {
        limit: 100,
        ..UserQuery::default()
    };

    // Inactive users never appear; ordered by id; `count` is the total before paging.
    assert_eq!(list(all.clone()).await, (4, vec![a.id, b.id, d.id, e.id]));
    let page = store.list_users(&all).await.unwrap();
    assert_same_user(&page.users[1], &b);
    assert_eq!(
        list(UserQuery {
            limit: 2,
            offset: 1,
            ..all.clone()
        })
        .await,
        (4, vec![b.id, d.id])
    );
    assert_eq!(
        list(UserQuery {
            limit: 2,
            offset: 3,
            ..all.clone()
        })
        .await,
        (4, vec![e.id])
    );
    assert_eq!(
        list(UserQuery {
            offset: 10,
            ..all.clone()
        })
        .await,
        (4, vec![])
    );

    // only_user narrows to one active user.
    assert_eq!(
        list(UserQuery {
            only_user: Some(b.id),
            ..all.clone()
        })
        .await,
        (1, vec![b.id])
    );
    assert_eq!(
        list(UserQuery {
            only_user: Some(c.id),
            ..all.clone()
        })
        .await,
        (0, vec![])
    );

    // The email filter is exact and case-sensitive (unlike user_by_email).
    assert_eq!(
        list(UserQuery {
            email: Some("Bob@Example.com".into()),
            ..all.clone()
        })
        .await,
        (1, vec![b.id])
    );
    assert_eq!(
        list(UserQuery {
            email: Some("bob@example.com".into()),
            ..all.clone()
        })
        .await,
        (0, vec![])
    );
    assert_eq!(
        list(UserQuery {
            email: Some("c@example.com".into()),
            ..all.clone()
        })
        .await,
        (0, vec![])
    );

    assert_eq!(
        list(UserQuery {
            is_staff: Some(true),
            ..all.clone()
        })
        .await,
        (2, vec![a.id, d.id])
    );
    assert_eq!(
        list(UserQuery {
            is_staff: Some(false),
            ..all.clone()
        })
        .await,
        (2, vec![b.id, e.id])
    );
    assert_eq!(
        list(UserQuery {
            is_staff: Some(false),
            limit: 1,
            offset: 1,
            ..all.clone()
        })
        .await,
        (2, vec![e.id])
    );

    // Filters combine with AND.
    assert_eq!(
        list(UserQuery {
            only_user: Some(a.id),
            is_staff: Some(false),
            ..all.clone()
        })
        .await,
        (0, vec![])
    );
    assert_eq!(
        list(UserQuery {
            only_user: Some(d.id),
            email: Some("d@example.com".into()),
            is_staff: Some(true),
            ..all.clone()
        })
        .await,
        (1, vec![d.id])
    );

    // Reactivating brings the user back in id order.
    set_active(store, c.id, true).await;
    assert_eq!(list(all).await, (5, vec![a.id, b.id, c.id, d.id, e.id]));
}

async fn update_user_round_trips_every_mutable_column(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let original = add_user(store, "grace@example.com").await;
    let (org, _) = add_org(store, original.id, "Navy").await;
    let second_team = add_team(store, org.id, "Compilers").await;
    let before = reload(store, original.id).await;

    let mut changed = before.clone();
    changed.email = "Grace.Hopper@Example.org".into();
    changed.pending_email = Some("grace@new.example.org".into());
    changed.password = PasswordHash("pbkdf2_sha256$600000$salt$hash=".into());
    changed.first_name = "Grace".into();
    changed.last_name = "Hopper".into();
    changed.is_active = false;
    changed.is_staff = true;
    changed.last_login = Some(T0 + 1_234_567);
    changed.is_email_verified = Some(true);
    changed.requested_password_reset_at = Some(T0 + 7);
    changed.current_organization_id = Some(org.id);
    changed.current_team_id = Some(second_team.id);
    changed.partial_notification_settings = Some(json!({
        "plugin_disabled": false,
        "project_weekly_digest_disabled": {"1": true},
    }));
    changed.anonymize_data = Some(true);
    changed.allow_impersonation = Some(false);
    changed.toolbar_mode = Some("disabled".into());
    changed.theme_mode = Some("dark".into());
    changed.hedgehog_config = Some(json!({
        "enabled": true,
        "color": "green",
        "accessories": ["beret", "🦔 ñ \"quoted\" $1"],
        "speed": 1.5,
        "big": 9_007_199_254_740_993_u64,
        "nested": {"z": null, "a": []},
    }));
    changed.events_column_config = json!({"active": ["person", "url", "timestamp"]});
    changed.has_seen_product_intro_for = Some(json!({"feature_flags": true}));
    changed.role_at_organization = Some("product".into());
    changed.allow_sidebar_suggestions = Some(true);
    changed.shortcut_position = Some("above".into());
    changed.passkeys_enabled_for_2fa = Some(true);
    changed.hide_mcp_hints = true;
    changed.ui_configuration = Some(json!({"hide_sidebar": true}));
    changed.credentials_reviewed_at = Some(T0 + 99);

    let mark = feed_mark(store).await;
    save_user(store, &changed).await.expect("update");
    assert_same_user(&reload(store, original.id).await, &changed);
    assert_eq!(feed_after(store, mark).await, vec![user_entry(original.id)]);

    // Back to nulls: nullable booleans keep None apart from false, JSON null apart from NULL.
    let mut cleared = changed.clone();
    cleared.pending_email = None;
    cleared.last_login = None;
    cleared.is_email_verified = None;
    cleared.requested_password_reset_at = None;
    cleared.current_organization_id = None;
    cleared.current_team_id = None;
    cleared.partial_notification_settings = Some(serde_json::Value::Null);
    cleared.anonymize_data = None;
    cleared.allow_impersonation = None;
    cleared.toolbar_mode = None;
    cleared.theme_mode = None;
    cleared.hedgehog_config = None;
    cleared.events_column_config = json!({});
    cleared.has_seen_product_intro_for = None;
    cleared.role_at_organization = None;
    cleared.allow_sidebar_suggestions = Some(false);
    cleared.shortcut_position = None;
    cleared.passkeys_enabled_for_2fa = None;
    cleared.hide_mcp_hints = false;
    cleared.ui_configuration = None;
    cleared.credentials_reviewed_at = None;
    cleared.is_active = true;
    cleared.is_email_verified = Some(false);
    save_user(store, &cleared).await.expect("update to nulls");
    assert_same_user(&reload(store, original.id).await, &cleared);

    // Identity columns cannot be written at all (UserChanges has no field for them).
    let mut forged = cleared.clone();
    forged.uuid = Uuid::new_v4();
    forged.date_joined = 1;
    forged.first_name = "Amazing Grace".into();
    save_user(store, &forged).await.expect("update");
    let stored = reload(store, original.id).await;
    assert_eq!(stored.first_name, "Amazing Grace");
    assert_eq!(stored.uuid, original.uuid);
    assert_eq!(stored.date_joined, original.date_joined);

    // Unknown id: Missing, and nothing recorded.
    let mark = feed_mark(store).await;
    let mut ghost = stored.clone();
    ghost.id = original.id + 1000;
    ghost.email = "ghost@example.com".into();
    assert_err(save_user(store, &ghost).await, "Missing(user)");
    assert!(
        store
            .user_by_email("ghost@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(feed_after(store, mark).await, vec![]);
}

/// What `write_user` with only `changes` is expected to return.
async fn write(store: &DynStore, id: i64, changes: UserChanges) -> UserRecord {
    let written = store
        .write_user(
            id,
            &UserWrite {
                changes,
                ..Default::default()
            },
        )
        .await
        .expect("write_user");
    assert_same_user(&written, &reload(store, id).await);
    written
}

/// A write sets only the columns it names: a write prepared before another one (a login that
/// read the user before hashing the password) does not undo it.
async fn write_user_writes_only_the_given_columns(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "partial@example.com").await;
    let other = add_user(store, "bystander@example.com").await;

    // Prepared from the row as it is now, applied after a concurrent rename.
    let stale_login = UserChanges {
        last_login: Some(Some(T0 + 5)),
        ..Default::default()
    };
    let mark = feed_mark(store).await;
    let renamed = write(
        store,
        user.id,
        UserChanges {
            first_name: Some("Renamed".into()),
            ..Default::default()
        },
    )
    .await;
    let mut expected = user.clone();
    expected.first_name = "Renamed".into();
    assert_same_user(&renamed, &expected);
    let logged_in = write(store, user.id, stale_login).await;
    expected.last_login = Some(T0 + 5);
    assert_same_user(&logged_in, &expected);
    assert_eq!(
        feed_after(store, mark).await,
        vec![user_entry(user.id), user_entry(user.id)]
    );

    // `Some(None)` writes NULL; `None` leaves the column alone.
    let set = write(
        store,
        user.id,
        UserChanges {
            pending_email: Some(Some("next@example.com".into())),
            is_email_verified: Some(Some(true)),
            hedgehog_config: Some(Some(json!({"enabled": true}))),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(set.pending_email.as_deref(), Some("next@example.com"));
    let cleared = write(
        store,
        user.id,
        UserChanges {
            pending_email: Some(None),
            last_login: Some(None),
            hedgehog_config: Some(None),
            ..Default::default()
        },
    )
    .await;
    expected.is_email_verified = Some(true);
    expected.last_login = None;
    assert_same_user(&cleared, &expected);
    assert_eq!(
        (
            cleared.pending_email,
            cleared.last_login,
            cleared.hedgehog_config
        ),
        (None, None, None)
    );

    // Nothing to change still answers the row (and tells the caches, as every write does).
    let mark = feed_mark(store).await;
    let same = store
        .write_user(user.id, &UserWrite::default())
        .await
        .expect("empty write");
    assert_same_user(&same, &expected);
    assert_eq!(feed_after(store, mark).await, vec![user_entry(user.id)]);

    // Another user's row is untouched throughout.
    assert_same_user(&reload(store, other.id).await, &other);
}

async fn write_user_round_trips_every_mutable_column(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let original = add_user(store, "ada@example.com").await;
    let (org, _) = add_org(store, original.id, "Engines").await;
    let team = add_team(store, org.id, "Analytical").await;
    let before = reload(store, original.id).await;

    let every = UserChanges {
        email: Some("Ada.King@Example.org".into()),
        pending_email: Some(Some("ada@new.example.org".into())),
        password: Some(PasswordHash("pbkdf2_sha256$600000$salt$hash=".into())),
        first_name: Some("Augusta".into()),
        last_name: Some("King".into()),
        distinct_id: Some(Some("distinct-ada".into())),
        is_active: Some(false),
        is_staff: Some(true),
        last_login: Some(Some(T0 + 1)),
        is_email_verified: Some(Some(false)),
        requested_password_reset_at: Some(Some(T0 + 2)),
        current_organization_id: Some(Some(org.id)),
        current_team_id: Some(Some(team.id)),
        partial_notification_settings: Some(Some(json!({"plugin_disabled": true}))),
        anonymize_data: Some(Some(true)),
        allow_impersonation: Some(Some(false)),
        toolbar_mode: Some(Some("disabled".into())),
        theme_mode: Some(Some("dark".into())),
        hedgehog_config: Some(Some(
            json!({"accessories": ["🦔 \"q\" $1"], "big": 9_007_199_254_740_993_u64}),
        )),
        events_column_config: Some(json!({"active": ["person"]})),
        has_seen_product_intro_for: Some(Some(json!({"surveys": true}))),
        role_at_organization: Some(Some("engineering".into())),
        allow_sidebar_suggestions: Some(Some(true)),
        shortcut_position: Some(Some("below".into())),
        passkeys_enabled_for_2fa: Some(Some(true)),
        hide_mcp_hints: Some(true),
        ui_configuration: Some(Some(json!({"hide_sidebar": false}))),
        email_opt_in: Some(Some(true)),
        credentials_reviewed_at: Some(Some(T0 + 3)),
    };
    let written = write(store, original.id, every.clone()).await;
    let expected = UserRecord {
        id: before.id,
        uuid: before.uuid,
        date_joined: before.date_joined,
        email: "Ada.King@Example.org".into(),
        pending_email: Some("ada@new.example.org".into()),
        password: PasswordHash("pbkdf2_sha256$600000$salt$hash=".into()),
        first_name: "Augusta".into(),
        last_name: "King".into(),
        distinct_id: Some("distinct-ada".into()),
        is_active: false,
        is_staff: true,
        last_login: Some(T0 + 1),
        is_email_verified: Some(false),
        requested_password_reset_at: Some(T0 + 2),
        current_organization_id: Some(org.id),
        current_team_id: Some(team.id),
        partial_notification_settings: Some(json!({"plugin_disabled": true})),
        anonymize_data: Some(true),
        allow_impersonation: Some(false),
        toolbar_mode: Some("disabled".into()),
        theme_mode: Some("dark".into()),
        hedgehog_config: every.hedgehog_config.clone().flatten(),
        events_column_config: json!({"active": ["person"]}),
        has_seen_product_intro_for: Some(json!({"surveys": true})),
        role_at_organization: Some("engineering".into()),
        allow_sidebar_suggestions: Some(true),
        shortcut_position: Some("below".into()),
        passkeys_enabled_for_2fa: Some(true),
        hide_mcp_hints: true,
        ui_configuration: Some(json!({"hide_sidebar": false})),
        email_opt_in: Some(true),
        credentials_reviewed_at: Some(T0 + 3),
    };
    assert_same_user(&written, &expected);
    assert_eq!(written.email_opt_in, Some(true));
    assert_eq!(written.distinct_id.as_deref(), Some("distinct-ada"));
    // The new address is the login address, in any case; the old one is free.
    let found = store.user_by_email("ada.king@example.ORG").await.unwrap();
    assert_eq!(found.map(|u| u.id), Some(original.id));
    assert!(
        store
            .user_by_email("ada@example.com")
            .await
            .unwrap()
            .is_none()
    );

    // And every nullable column back to NULL.
    let nulls = write(
        store,
        original.id,
        UserChanges {
            pending_email: Some(None),
            distinct_id: Some(None),
            last_login: Some(None),
            is_email_verified: Some(None),
            requested_password_reset_at: Some(None),
            current_organization_id: Some(None),
            current_team_id: Some(None),
            partial_notification_settings: Some(None),
            anonymize_data: Some(None),
            allow_impersonation: Some(None),
            toolbar_mode: Some(None),
            theme_mode: Some(None),
            hedgehog_config: Some(None),
            has_seen_product_intro_for: Some(None),
            role_at_organization: Some(None),
            allow_sidebar_suggestions: Some(None),
            shortcut_position: Some(None),
            passkeys_enabled_for_2fa: Some(None),
            ui_configuration: Some(None),
            email_opt_in: Some(None),
            credentials_reviewed_at: Some(None),
            ..Default::default()
        },
    )
    .await;
    let cleared = UserRecord {
        pending_email: None,
        distinct_id: None,
        last_login: None,
        is_email_verified: None,
        requested_password_reset_at: None,
        current_organization_id: None,
        current_team_id: None,
        partial_notification_settings: None,
        anonymize_data: None,
        allow_impersonation: None,
        toolbar_mode: None,
        theme_mode: None,
        hedgehog_config: None,
        has_seen_product_intro_for: None,
        role_at_organization: None,
        allow_sidebar_suggestions: None,
        shortcut_position: None,
        passkeys_enabled_for_2fa: None,
        ui_configuration: None,
        email_opt_in: None,
        credentials_reviewed_at: None,
        ..expected
    };
    assert_same_user(&nulls, &cleared);
    assert_eq!((nulls.distinct_id, nulls.email_opt_in), (None, None));
}

/// A write for a user that does not exist, or that would take another user's address, writes
/// nothing at all: no column, no session ended, no mail queued, no invalidation.
async fn write_user_refuses_unknown_users_and_taken_emails_whole(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let alice = add_user(store, "alice@example.com").await;
    let bob = add_user(store, "bob@example.com").await;
    store
        .insert_session(&session_row("bob-1", Some(bob.id), T0 + SESSION_AGE))
        .await
        .unwrap();
    let everything = |email: &str| UserWrite {
        changes: UserChanges {
            email: Some(email.into()),
            first_name: Some("Changed".into()),
            ..Default::default()
        },
        end_sessions: Some(None),
        remove_two_factor: true,
        backup_codes: Some(vec!["hash-1".into()]),
        mail: vec![new_mail("notice@example.com", T0)],
        ..Default::default()
    };
    let mark = feed_mark(store).await;

    assert_err(
        store
            .write_user(bob.id + 1000, &everything("ghost@example.com"))
            .await,
        "Missing(user)",
    );
    for taken in [
        "alice@example.com",
        "ALICE@Example.COM",
        " Alice@example.com ",
    ] {
        let refused = store.write_user(bob.id, &everything(taken)).await;
        assert!(
            matches!(refused, Err(StoreError::Unique(Unique::Email))),
            "{taken}: {:?}",
            refused.map_err(|e| describe(&e))
        );
    }
    assert_same_user(&reload(store, bob.id).await, &bob);
    assert_same_user(&reload(store, alice.id).await, &alice);
    assert!(session_of(store, "bob-1").await.is_some(), "sessions kept");
    assert_eq!(env.rows("outbox").await, 0, "no mail queued");
    assert_eq!(env.rows("backup_codes").await, 0);
    assert_eq!(feed_after(store, mark).await, vec![]);
    assert!(
        store
            .user_by_email("ghost@example.com")
            .await
            .unwrap()
            .is_none()
    );

    // Taking another user's distinct id is refused the same way.
    assert_err(
        store
            .write_user(
                bob.id,
                &UserWrite {
                    changes: UserChanges {
                        distinct_id: Some(alice.distinct_id.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await,
        "Unique(DistinctId)",
    );

    // One's own address in another case is no conflict.
    let shouting = store
        .write_user(bob.id, &everything("BOB@example.com"))
        .await
        .expect("own address");
    assert_eq!(shouting.email, "BOB@example.com");
}

/// Every part of a write lands, in order, with one invalidation row that also names the session
/// written.
async fn write_user_applies_every_part_together(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let ann = add_user(store, "ann@example.com").await;
    let bob = add_user(store, "bob@example.com").await;
    for (id, user) in [("ann-1", ann.id), ("ann-2", ann.id), ("bob-1", bob.id)] {
        store
            .insert_session(&session_row(id, Some(user), T0 + SESSION_AGE))
            .await
            .unwrap();
    }
    // A login waiting for Ann's second factor.
    let pending = SessionRecord {
        pending_user_id: Some(ann.id),
        pending_at: Some(T0),
        ..session_row("ann-pending", None, T0 + SESSION_AGE)
    };
    store.insert_session(&pending).await.unwrap();
    store
        .put_totp_device(&totp_device(ann.id, 7))
        .await
        .unwrap();
    store
        .replace_backup_codes(ann.id, &["old-1".into(), "old-2".into()])
        .await
        .unwrap();
    store
        .put_totp_device(&totp_device(bob.id, 1))
        .await
        .unwrap();

    let verified = SessionRecord {
        two_factor_verified: true,
        ..session_row("ann-1", Some(ann.id), T0 + 2 * SESSION_AGE)
    };
    let new_device = TotpDeviceRecord {
        secret: "sealed-new".into(),
        ..totp_device(ann.id, 0)
    };
    let mark = feed_mark(store).await;
    let written = store
        .write_user(
            ann.id,
            &UserWrite {
                changes: UserChanges {
                    password: Some(PasswordHash("argon2id$new".into())),
                    ..Default::default()
                },
                end_sessions: Some(Some("ann-1".into())),
                remove_two_factor: true,
                totp_device: Some(new_device.clone()),
                backup_codes: Some(vec!["new-1".into()]),
                session: Some(verified.clone()),
                mail: vec![
                    new_mail("ann@example.com", T0),
                    new_mail("ann-too@example.com", T0),
                ],
                activity: vec![activity_entry(Some(ann.id), "password_changed", T0)],
            },
        )
        .await
        .expect("write_user");
    assert_eq!(written.password.0, "argon2id$new");
    assert_same_session(&session_of(store, "ann-1").await.unwrap(), &verified);
    assert!(session_of(store, "ann-2").await.is_none());
    assert!(session_of(store, "ann-pending").await.is_none());
    assert!(session_of(store, "bob-1").await.is_some());
    let device = store
        .totp_device(ann.id)
        .await
        .unwrap()
        .expect("new device");
    assert_eq!(
        (device.secret.as_str(), device.last_step),
        ("sealed-new", 0)
    );
    assert_eq!(store.backup_code_count(ann.id).await.unwrap(), 1);
    assert!(
        store
            .consume_backup_code(ann.id, "new-1", &[])
            .await
            .unwrap()
    );
    assert_eq!(last_step(store, bob.id).await, 1, "bob's device untouched");
    assert_eq!(store.outbox_status(T0).await.unwrap(), status(2, 2));
    assert_eq!(
        feed_after(store, mark).await,
        vec![(Some(ann.id), Some("session$ann-1".to_string()))]
    );
    assert_eq!(
        activities_of(store, ann.id).await,
        vec!["password_changed".to_string()]
    );

    // `Some(None)` ends every session; removing two factors leaves none; a session row that
    // does not exist yet is created.
    let fresh = session_row("ann-3", Some(ann.id), T0 + SESSION_AGE);
    store
        .write_user(
            ann.id,
            &UserWrite {
                end_sessions: Some(None),
                remove_two_factor: true,
                session: Some(fresh.clone()),
                ..Default::default()
            },
        )
        .await
        .expect("write_user");
    assert!(session_of(store, "ann-1").await.is_none());
    assert_same_session(&session_of(store, "ann-3").await.unwrap(), &fresh);
    assert!(store.totp_device(ann.id).await.unwrap().is_none());
    assert_eq!(store.backup_code_count(ann.id).await.unwrap(), 0);
    assert!(session_of(store, "bob-1").await.is_some());
    let facts = store.user_facts(&[ann.id]).await.unwrap();
    assert!(!facts[0].has_totp);
}

/// A failure inside the transaction (a trigger refusing the session delete, after the password
/// was written) leaves nothing half-done, and is `Other` (a 500), not `Unavailable` (a 503).
async fn write_user_is_all_or_nothing_and_a_failing_statement_is_not_an_outage(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "atomic@example.com").await;
    store
        .insert_session(&session_row("s1", Some(user.id), T0 + SESSION_AGE))
        .await
        .unwrap();
    store
        .put_totp_device(&totp_device(user.id, 3))
        .await
        .unwrap();
    env.raw_exec(
        "CREATE TRIGGER refuse_session_delete BEFORE DELETE ON sessions \
         BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        "CREATE FUNCTION refuse_session_delete() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'injected'; END $$; \
         CREATE TRIGGER refuse_session_delete BEFORE DELETE ON sessions \
         FOR EACH ROW EXECUTE FUNCTION refuse_session_delete();",
    )
    .await;
    let reset = UserWrite {
        changes: UserChanges {
            password: Some(PasswordHash("argon2id$changed".into())),
            ..Default::default()
        },
        end_sessions: Some(None),
        remove_two_factor: true,
        mail: vec![new_mail("atomic@example.com", T0)],
        ..Default::default()
    };
    let mark = feed_mark(store).await;
    match store.write_user(user.id, &reset).await {
        Err(StoreError::Other(cause)) => {
            assert!(format!("{cause:#}").contains("injected"), "{cause:#}")
        }
        other => panic!(
            "expected Other(…injected…), got {:?}",
            other.map_err(|e| describe(&e))
        ),
    }
    assert_same_user(&reload(store, user.id).await, &user);
    assert!(session_of(store, "s1").await.is_some());
    assert_eq!(last_step(store, user.id).await, 3, "device kept");
    assert_eq!(env.rows("outbox").await, 0, "no mail queued");
    assert_eq!(feed_after(store, mark).await, vec![]);

    // The store is fine afterwards: without the trigger the same write goes through whole.
    env.raw_exec(
        "DROP TRIGGER refuse_session_delete;",
        "DROP TRIGGER refuse_session_delete ON sessions; DROP FUNCTION refuse_session_delete();",
    )
    .await;
    let written = store.write_user(user.id, &reset).await.expect("write_user");
    assert_eq!(written.password.0, "argon2id$changed");
    assert!(session_of(store, "s1").await.is_none());
    assert!(store.totp_device(user.id).await.unwrap().is_none());
    assert_eq!(env.rows("outbox").await, 1);
}

async fn set_current_context_changes_only_the_context(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "ctx@example.com").await;
    let (org, first_team) = add_org(store, user.id, "Context").await;
    let second_team = add_team(store, org.id, "Second").await;
    let (other_org, other_team) = add_org(store, user.id, "Elsewhere").await;
    let before = reload(store, user.id).await;
    assert_eq!(
        (before.current_organization_id, before.current_team_id),
        (Some(other_org.id), Some(other_team.id))
    );

    let mark = feed_mark(store).await;
    store
        .set_current_context(user.id, Some(org.id), Some(second_team.id))
        .await
        .expect("set context");
    let mut expected = before.clone();
    expected.current_organization_id = Some(org.id);
    expected.current_team_id = Some(second_team.id);
    assert_same_user(&reload(store, user.id).await, &expected);
    assert_eq!(feed_after(store, mark).await, vec![user_entry(user.id)]);

    store
        .set_current_context(user.id, Some(org.id), None)
        .await
        .unwrap();
    expected.current_team_id = None;
    assert_same_user(&reload(store, user.id).await, &expected);

    store
        .set_current_context(user.id, None, None)
        .await
        .unwrap();
    expected.current_organization_id = None;
    assert_same_user(&reload(store, user.id).await, &expected);

    store
        .set_current_context(user.id, Some(org.id), Some(first_team.id))
        .await
        .unwrap();
    let after = reload(store, user.id).await;
    assert_eq!(
        (after.current_organization_id, after.current_team_id),
        (Some(org.id), Some(first_team.id))
    );
}

async fn delete_user_outcomes_and_cascades(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let owner = add_user(store, "owner@example.com").await;
    let (org, team) = add_org(store, owner.id, "Keepers").await;
    let dashboard = store.create_dashboard(team.id, "Mine").await.unwrap();
    let leaver = add_user(store, "leaver@example.com").await;
    let keys = [new_key(leaver.id), new_key(leaver.id)];
    for key in &keys {
        store.insert_api_key(key.clone(), LIMIT, &[]).await.unwrap();
    }
    for scene in ["insights", "dashboards"] {
        store
            .upsert_scene_personalisation(NewScene {
                user_id: leaver.id,
                team_id: Some(team.id),
                scene: scene.into(),
                dashboard_id: dashboard.id,
            })
            .await
            .unwrap();
    }
    store
        .upsert_scene_personalisation(NewScene {
            user_id: leaver.id,
            team_id: None,
            scene: "home".into(),
            dashboard_id: dashboard.id,
        })
        .await
        .unwrap();

    assert_eq!(
        store.delete_user(leaver.id + 1000).await.unwrap(),
        UserDeletion::Missing
    );

    // A member of an organization is refused and keeps everything.
    let owner_before = reload(store, owner.id).await;
    let mark = feed_mark(store).await;
    assert_eq!(
        store.delete_user(owner.id).await.unwrap(),
        UserDeletion::HasMemberships
    );
    assert_same_user(&reload(store, owner.id).await, &owner_before);
    assert_eq!(
        membership_rows(&store.memberships_of(&[owner.id]).await.unwrap()),
        vec![(org.id, owner.id, MembershipLevel::Owner)]
    );
    assert_eq!(feed_after(store, mark).await, vec![]);

    let mark = feed_mark(store).await;
    assert_eq!(
        store.delete_user(leaver.id).await.unwrap(),
        UserDeletion::Deleted
    );
    assert!(store.user_by_id(leaver.id).await.unwrap().is_none());
    assert!(store.user_by_uuid(leaver.uuid).await.unwrap().is_none());
    assert!(
        store
            .user_by_email("leaver@example.com")
            .await
            .unwrap()
            .is_none()
    );
    for key in &keys {
        assert!(key_by_value(store, &key.secure_value).await.is_none());
    }
    assert_eq!(key_count(&env, leaver.id).await, 0);
    assert!(
        store
            .scene_personalisations_of(&[leaver.id])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.raw_i64(&format!(
            "SELECT count(*) FROM scene_personalisations WHERE user_id = {}",
            leaver.id
        ))
        .await,
        0
    );
    assert_eq!(store.user_facts(&[leaver.id]).await.unwrap(), vec![]);
    assert!(
        feed_after(store, mark)
            .await
            .contains(&user_entry(leaver.id))
    );
    assert_eq!(store.count_users().await.unwrap(), 1);
    // The team's dashboard is not the user's: it stays.
    assert!(store.dashboard(dashboard.id).await.unwrap().is_some());

    assert_eq!(
        store.delete_user(leaver.id).await.unwrap(),
        UserDeletion::Missing
    );
    // Ids are never reused: caches and the feed name users by id.
    let next = add_user(store, "leaver@example.com").await;
    assert!(next.id > leaver.id, "{} reused {}", next.id, leaver.id);
}

async fn user_facts_report_keys(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let with_key = add_user(store, "keyed@example.com").await;
    let without = add_user(store, "plain@example.com").await;
    store
        .insert_api_key(new_key(with_key.id), LIMIT, &[])
        .await
        .unwrap();

    let mut facts = store
        .user_facts(&[without.id, with_key.id, without.id + 1000])
        .await
        .unwrap();
    facts.sort_by_key(|f| f.user_id);
    assert_eq!(
        facts,
        vec![
            UserFacts {
                user_id: with_key.id,
                has_api_keys: true,
                has_totp: false,
            },
            UserFacts {
                user_id: without.id,
                has_api_keys: false,
                has_totp: false,
            },
        ]
    );
    assert_eq!(
        store.user_facts(&[without.id, without.id]).await.unwrap(),
        vec![UserFacts {
            user_id: without.id,
            has_api_keys: false,
            has_totp: false,
        }]
    );
    assert_eq!(store.user_facts(&[]).await.unwrap(), vec![]);
}

// ---------------------------------------------------------------------------------------------
// Organizations, teams, memberships
// ---------------------------------------------------------------------------------------------

async fn create_organization_creates_the_whole_tree(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let owner = add_user(store, "founder@example.com").await;
    let mark = feed_mark(store).await;

    let before = system_now();
    let (org, team) = store
        .create_organization(NewOrganization {
            name: "Hedgehogs United, LLC".into(),
            owner_id: owner.id,
            team_name: "Default project".into(),
        })
        .await
        .expect("create");
    let after = system_now();

    assert_eq!(org.name, "Hedgehogs United, LLC");
    assert_eq!(org.slug, "hedgehogs-united-llc");
    assert_between(org.created_at, before, after);
    assert_eq!(org.updated_at, org.created_at);
    assert_eq!(org.logo_media_id, None);
    assert_eq!(org.plugins_access_level, 9);
    assert_eq!(org.available_product_features, json!([]));
    assert!(org.is_member_join_email_enabled);
    assert_eq!(org.enforce_2fa, None);
    assert_eq!(org.members_can_invite, Some(true));
    assert!(org.members_can_use_personal_api_keys);
    assert!(org.allow_publicly_shared_resources);
    assert_eq!(org.is_ai_data_processing_approved, None);
    assert_eq!(
        org.default_experiment_stats_method.as_deref(),
        Some("bayesian")
    );
    assert!(!org.default_anonymize_ips);
    assert_eq!(org.default_role_id, None);
    assert_eq!(org.customer_id, None);
    assert_eq!(org.is_active, Some(true));
    assert_eq!(org.is_not_active_reason, None);
    assert_same_org(&store.organization(org.id).await.unwrap().unwrap(), &org);
    assert!(store.organization(Uuid::new_v4()).await.unwrap().is_none());

    assert_eq!(team.name, "Default project");
    assert_eq!(team.organization_id, org.id);
    assert_eq!(team.project_id, team.id);
    assert!(
        team.api_token.starts_with("phc_") && team.api_token.len() > 40,
        "{}",
        team.api_token
    );
    assert!(!team.completed_snippet_onboarding);
    assert_eq!(team.has_completed_onboarding_for, None);
    assert!(!team.ingested_event);
    assert!(!team.is_demo);
    assert_eq!(team.timezone, "UTC");
    assert!(!team.access_control);
    assert_between(team.created_at, before, after);
    assert_same_team(&store.team(team.id).await.unwrap().unwrap(), &team);
    assert_eq!(
        team_ids(&store.teams_of(&[org.id]).await.unwrap()),
        vec![team.id]
    );

    // The first team's default dashboard.
    assert_eq!(
        env.raw_i64(&format!(
            "SELECT count(*) FROM dashboards WHERE team_id = {} AND name = '{DEFAULT_DASHBOARD}' \
             AND deleted = FALSE",
            team.id
        ))
        .await,
        1
    );
    assert_eq!(env.rows("dashboards").await, 1);

    // The owner's membership: level Owner, not invited.
    let memberships = store.memberships_of(&[owner.id]).await.unwrap();
    assert_eq!(memberships.len(), 1);
    let m = &memberships[0].membership;
    assert_eq!(m.organization_id, org.id);
    assert_eq!(m.user_id, owner.id);
    assert_eq!(m.level, MembershipLevel::Owner);
    assert!(!m.invited);
    assert_between(m.joined_at, before, after);
    assert_eq!(m.updated_at, m.joined_at);
    assert_same_org(&memberships[0].organization, &org);
    assert_eq!(
        store.member_counts(&[org.id]).await.unwrap(),
        vec![(org.id, 1)]
    );

    // The owner now works in the new organization and team, and nothing else changed.
    let mut expected = owner.clone();
    expected.current_organization_id = Some(org.id);
    expected.current_team_id = Some(team.id);
    assert_same_user(&reload(store, owner.id).await, &expected);
    assert!(
        feed_after(store, mark)
            .await
            .contains(&user_entry(owner.id))
    );

    // A second organization gets its own team, token and dashboard, and becomes current.
    let (second, second_team) = add_org(store, owner.id, "Second Org").await;
    assert_ne!(second.id, org.id);
    assert_eq!(second.slug, "second-org");
    assert!(second_team.id > team.id);
    assert_ne!(second_team.api_token, team.api_token);
    assert_ne!(second_team.uuid, team.uuid);
    let owner_now = reload(store, owner.id).await;
    assert_eq!(
        (owner_now.current_organization_id, owner_now.current_team_id),
        (Some(second.id), Some(second_team.id))
    );
    assert_eq!(env.rows("dashboards").await, 2);
    assert_eq!(
        membership_rows(&store.memberships_of(&[owner.id]).await.unwrap()),
        vec![
            (org.id, owner.id, MembershipLevel::Owner),
            (second.id, owner.id, MembershipLevel::Owner),
        ]
    );
}

async fn create_organization_is_all_or_nothing(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "unlucky@example.com").await;
    let tables = [
        "organizations",
        "teams",
        "dashboards",
        "organization_memberships",
    ];

    // A missing owner leaves no organization behind.
    let mark = feed_mark(store).await;
    assert_err(
        store
            .create_organization(NewOrganization {
                name: "Orphan".into(),
                owner_id: user.id + 1000,
                team_name: "Default project".into(),
            })
            .await,
        "Missing(user)",
    );
    for table in tables {
        assert_eq!(env.rows(table).await, 0, "{table}");
    }
    assert_eq!(feed_after(store, mark).await, vec![]);

    // A failure after the organization, team and dashboard rows were written (the membership
    // insert is refused by a trigger) rolls all of them back.
    env.raw_exec(
        "CREATE TRIGGER refuse_memberships BEFORE INSERT ON organization_memberships \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        "CREATE FUNCTION refuse_memberships() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
         CREATE TRIGGER refuse_memberships BEFORE INSERT ON organization_memberships \
         FOR EACH ROW EXECUTE FUNCTION refuse_memberships();",
    )
    .await;
    let refused = store
        .create_organization(NewOrganization {
            name: "Half Done".into(),
            owner_id: user.id,
            team_name: "Default project".into(),
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    for table in tables {
        assert_eq!(env.rows(table).await, 0, "{table}");
    }
    assert_same_user(&reload(store, user.id).await, &user);
    assert_eq!(feed_after(store, mark).await, vec![]);

    env.raw_exec(
        "DROP TRIGGER refuse_memberships;",
        "DROP TRIGGER refuse_memberships ON organization_memberships; \
         DROP FUNCTION refuse_memberships();",
    )
    .await;
    let (org, team) = add_org(store, user.id, "Half Done").await;
    assert_eq!(
        org.slug, "half-done",
        "the failed attempt left no slug behind"
    );
    for table in tables {
        assert_eq!(env.rows(table).await, 1, "{table}");
    }
    let user = reload(store, user.id).await;
    assert_eq!(
        (user.current_organization_id, user.current_team_id),
        (Some(org.id), Some(team.id))
    );
}

fn assert_suffixed(slug: &str, base: &str) {
    let suffix = slug
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or_else(|| panic!("{slug:?} does not extend {base:?}"));
    assert!(
        suffix.len() == 4
            && suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "{slug:?}"
    );
}

async fn organization_slugs_get_a_suffix_on_collision(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let owner = add_user(store, "slugs@example.com").await;

    let (first, _) = add_org(store, owner.id, "Acme").await;
    let (second, _) = add_org(store, owner.id, "ACME").await;
    let (third, _) = add_org(store, owner.id, "  acme ").await;
    assert_eq!(first.slug, "acme");
    assert_suffixed(&second.slug, "acme");
    assert_suffixed(&third.slug, "acme");
    assert_ne!(second.slug, third.slug);
    assert_eq!(
        (second.name.as_str(), third.name.as_str()),
        ("ACME", "  acme ")
    );

    let (punctuated, _) = add_org(store, owner.id, "Jane's  Organization!").await;
    assert_eq!(punctuated.slug, "janes-organization");
    let (symbols, _) = add_org(store, owner.id, "!!!").await;
    assert_eq!(symbols.slug, "organization");
    let (again, _) = add_org(store, owner.id, "???").await;
    assert_suffixed(&again.slug, "organization");

    let mut stored = BTreeSet::new();
    for org in [&first, &second, &third, &punctuated, &symbols, &again] {
        stored.insert(store.organization(org.id).await.unwrap().unwrap().slug);
    }
    assert_eq!(stored.len(), 6, "{stored:?}");
}

async fn concurrent_organizations_with_one_name_get_distinct_slugs(db: Db) {
    let env = Env::new(db).await;
    let other = env.reopen().await;
    const N: usize = 8;
    let mut owners = Vec::new();
    for i in 0..N {
        owners.push(add_user(&env.store, &format!("rival{i}@example.com")).await);
    }
    let results = in_parallel(owners.iter().enumerate().map(|(i, owner)| {
        let store = if i % 2 == 0 {
            env.store.clone()
        } else {
            other.clone()
        };
        let owner_id = owner.id;
        async move {
            store
                .create_organization(NewOrganization {
                    name: "Rivals".into(),
                    owner_id,
                    team_name: "Default project".into(),
                })
                .await
        }
    }))
    .await;
    let mut slugs = BTreeSet::new();
    for result in results {
        let (org, _) = result.expect("every concurrent create succeeds");
        slugs.insert(org.slug);
    }
    assert_eq!(slugs.len(), N, "{slugs:?}");
    assert!(slugs.contains("rivals"), "{slugs:?}");
    for slug in slugs.iter().filter(|s| *s != "rivals") {
        assert_suffixed(slug, "rivals");
    }
    assert_eq!(env.rows("organizations").await, N as i64);
    assert_eq!(env.rows("organization_memberships").await, N as i64);
}

async fn add_membership_contract(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let owner = add_user(store, "boss@example.com").await;
    let (org, first_team) = add_org(store, owner.id, "Joinable").await;
    let later_team = add_team(store, org.id, "Later").await;
    let member = add_user(store, "member@example.com").await;

    let mark = feed_mark(store).await;
    let before = system_now();
    let membership = store
        .add_membership(org.id, member.id, MembershipLevel::Admin)
        .await
        .expect("join");
    let after = system_now();
    assert_eq!(membership.organization_id, org.id);
    assert_eq!(membership.user_id, member.id);
    assert_eq!(membership.level, MembershipLevel::Admin);
    assert!(membership.invited);
    assert_between(membership.joined_at, before, after);
    assert_eq!(membership.updated_at, membership.joined_at);
    assert!(
        feed_after(store, mark).await.contains(&EVERYTHING),
        "joining changes every member's view of the organization"
    );

    // Joining makes the organization and its first team (lowest id) current.
    let mut expected = member.clone();
    expected.current_organization_id = Some(org.id);
    expected.current_team_id = Some(first_team.id);
    assert_same_user(&reload(store, member.id).await, &expected);
    assert!(later_team.id > first_team.id);

    let stored = store.memberships_of(&[member.id]).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].membership.id, membership.id);
    assert_eq!(stored[0].membership.joined_at, membership.joined_at);
    assert!(stored[0].membership.invited);
    assert_same_org(&stored[0].organization, &org);
    assert_eq!(
        store.member_counts(&[org.id]).await.unwrap(),
        vec![(org.id, 2)]
    );

    // Refusals change nothing and record nothing.
    let mark = feed_mark(store).await;
    assert_err(
        store
            .add_membership(org.id, member.id, MembershipLevel::Member)
            .await,
        "Unique(Membership)",
    );
    assert_err(
        store
            .add_membership(org.id, owner.id, MembershipLevel::Member)
            .await,
        "Unique(Membership)",
    );
    assert_err(
        store
            .add_membership(Uuid::new_v4(), member.id, MembershipLevel::Member)
            .await,
        "Missing(organization)",
    );
    assert_err(
        store
            .add_membership(org.id, member.id + 1000, MembershipLevel::Member)
            .await,
        "Missing(user)",
    );
    assert_eq!(feed_after(store, mark).await, vec![]);
    assert_eq!(
        membership_rows(&store.memberships_of(&[member.id, owner.id]).await.unwrap()),
        vec![
            (org.id, owner.id, MembershipLevel::Owner),
            (org.id, member.id, MembershipLevel::Admin),
        ]
    );
    assert_same_user(&reload(store, member.id).await, &expected);
    assert_eq!(env.rows("organization_memberships").await, 2);

    // Racing joins of one user to one organization (through two stores): exactly one wins.
    let racer = add_user(store, "racer@example.com").await;
    let second_store = env.reopen().await;
    let results = in_parallel((0..6).map(|i| {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            second_store.clone()
        };
        let (org_id, user_id) = (org.id, racer.id);
        async move {
            s.add_membership(org_id, user_id, MembershipLevel::Member)
                .await
        }
    }))
    .await;
    let mut joined = 0;
    for r in results {
        match r {
            Ok(_) => joined += 1,
            Err(e) => assert_eq!(describe(&e), "Unique(Membership)"),
        }
    }
    assert_eq!(joined, 1);
    assert_eq!(store.memberships_of(&[racer.id]).await.unwrap().len(), 1);

    // A member may join several organizations; the latest becomes current.
    let other_owner = add_user(store, "other-boss@example.com").await;
    let (other, other_team) = add_org(store, other_owner.id, "Other").await;
    let second = store
        .add_membership(other.id, member.id, MembershipLevel::Member)
        .await
        .unwrap();
    assert_eq!(second.level, MembershipLevel::Member);
    let now = reload(store, member.id).await;
    assert_eq!(
        (now.current_organization_id, now.current_team_id),
        (Some(other.id), Some(other_team.id))
    );
    // The other owner's context is untouched by someone else joining.
    let other_owner = reload(store, other_owner.id).await;
    assert_eq!(other_owner.current_organization_id, Some(other.id));
}

async fn teams_create_read_and_order(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let owner = add_user(store, "teams@example.com").await;
    let (org_a, team_a1) = add_org(store, owner.id, "A").await;
    let (org_b, team_b1) = add_org(store, owner.id, "B").await;

    assert_err(
        store
            .create_team(NewTeam {
                organization_id: Uuid::new_v4(),
                name: "Nowhere".into(),
            })
            .await,
        "Missing(organization)",
    );
    assert_eq!(env.rows("teams").await, 2);

    let mark = feed_mark(store).await;
    let before = system_now();
    let team_a2 = add_team(store, org_a.id, "Analytics").await;
    let after = system_now();
    assert_eq!(team_a2.name, "Analytics");
    assert_eq!(team_a2.organization_id, org_a.id);
    assert_eq!(team_a2.project_id, team_a2.id);
    assert!(team_a2.api_token.starts_with("phc_"));
    assert_eq!(team_a2.timezone, "UTC");
    assert!(!team_a2.is_demo);
    assert_between(team_a2.created_at, before, after);
    assert!(team_a2.id > team_b1.id);
    assert!(feed_after(store, mark).await.contains(&EVERYTHING));
    assert_same_team(&store.team(team_a2.id).await.unwrap().unwrap(), &team_a2);
    assert!(store.team(team_a2.id + 1000).await.unwrap().is_none());

    let tokens: BTreeSet<_> = [&team_a1, &team_b1, &team_a2]
        .iter()
        .map(|t| t.api_token.clone())
        .collect();
    assert_eq!(tokens.len(), 3);

    // Ordered by id, whatever the order organizations are asked in.
    assert_eq!(
        team_ids(&store.teams_of(&[org_b.id, org_a.id]).await.unwrap()),
        vec![team_a1.id, team_b1.id, team_a2.id]
    );
    assert_eq!(
        team_ids(&store.teams_of(&[org_a.id]).await.unwrap()),
        vec![team_a1.id, team_a2.id]
    );
    let of_b = store.teams_of(&[org_b.id]).await.unwrap();
    assert_eq!(of_b.len(), 1);
    assert_same_team(&of_b[0], &team_b1);
    assert!(store.teams_of(&[]).await.unwrap().is_empty());
    assert!(store.teams_of(&[Uuid::new_v4()]).await.unwrap().is_empty());

    // Creating a team does not move anyone's current team.
    let owner = reload(store, owner.id).await;
    assert_eq!(owner.current_team_id, Some(team_b1.id));
}

async fn memberships_follow_join_order_and_counts_see_active_members(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let founder = add_user(store, "founder@example.com").await;
    let (a, _) = add_org(store, founder.id, "Org A").await;
    let (b, _) = add_org(store, founder.id, "Org B").await;
    let (c, _) = add_org(store, founder.id, "Org C").await;
    let joiner = add_user(store, "joiner@example.com").await;
    let other = add_user(store, "other@example.com").await;
    // Joined in an order that is neither creation nor id order.
    for org in [&c, &a, &b] {
        store
            .add_membership(org.id, joiner.id, MembershipLevel::Member)
            .await
            .unwrap();
    }
    store
        .add_membership(b.id, other.id, MembershipLevel::Admin)
        .await
        .unwrap();

    use MembershipLevel::{Admin, Member, Owner};
    assert_eq!(
        membership_rows(&store.memberships_of(&[joiner.id]).await.unwrap()),
        vec![
            (c.id, joiner.id, Member),
            (a.id, joiner.id, Member),
            (b.id, joiner.id, Member),
        ]
    );
    assert_eq!(
        membership_rows(
            &store
                .memberships_of(&[other.id, joiner.id, founder.id])
                .await
                .unwrap()
        ),
        vec![
            (a.id, founder.id, Owner),
            (b.id, founder.id, Owner),
            (c.id, founder.id, Owner),
            (c.id, joiner.id, Member),
            (a.id, joiner.id, Member),
            (b.id, joiner.id, Member),
            (b.id, other.id, Admin),
        ]
    );
    let joined: Vec<Micros> = store
        .memberships_of(&[joiner.id])
        .await
        .unwrap()
        .iter()
        .map(|m| m.membership.joined_at)
        .collect();
    assert!(joined.windows(2).all(|w| w[0] <= w[1]), "{joined:?}");
    assert_eq!(
        membership_rows(&store.memberships_of(&[other.id, other.id]).await.unwrap()),
        vec![(b.id, other.id, Admin)],
        "an id asked twice is answered once"
    );
    assert_eq!(
        team_ids(&store.teams_of(&[a.id, a.id]).await.unwrap()).len(),
        1
    );
    assert!(store.memberships_of(&[]).await.unwrap().is_empty());
    assert!(
        store
            .memberships_of(&[other.id + 1000])
            .await
            .unwrap()
            .is_empty()
    );

    // member_counts counts active members only; an organization with none counts 0 (absent or 0).
    let counts = |orgs: Vec<Uuid>| async move {
        let rows = store.member_counts(&orgs).await.expect("member counts");
        let map: HashMap<Uuid, i64> = rows.iter().copied().collect();
        assert_eq!(map.len(), rows.len(), "one row per organization");
        assert!(map.keys().all(|o| orgs.contains(o)), "only what was asked");
        orgs.iter()
            .map(|o| map.get(o).copied().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(counts(vec![a.id, b.id, c.id]).await, vec![2, 3, 2]);
    assert_eq!(counts(vec![b.id]).await, vec![3]);
    set_active(store, joiner.id, false).await;
    assert_eq!(counts(vec![a.id, b.id, c.id]).await, vec![1, 2, 1]);
    set_active(store, founder.id, false).await;
    assert_eq!(counts(vec![a.id, b.id, c.id]).await, vec![0, 1, 0]);
    assert_eq!(counts(vec![]).await, Vec::<i64>::new());
    assert_eq!(counts(vec![Uuid::new_v4()]).await, vec![0]);
    // Memberships of inactive users still exist.
    assert_eq!(store.memberships_of(&[joiner.id]).await.unwrap().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Dashboards and scene personalisation
// ---------------------------------------------------------------------------------------------

async fn dashboards_create_and_read(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let owner = add_user(store, "dash@example.com").await;
    let (_, team) = add_org(store, owner.id, "Dashboards").await;

    assert_err(
        store.create_dashboard(team.id + 1000, "Nowhere").await,
        "Missing(team)",
    );
    let mark = feed_mark(store).await;
    let ops = store.create_dashboard(team.id, "Ops ✓").await.unwrap();
    assert_eq!(ops.team_id, team.id);
    assert_eq!(ops.name, "Ops ✓");
    assert!(!ops.deleted);
    let sales = store.create_dashboard(team.id, "Sales").await.unwrap();
    assert!(sales.id > ops.id);

    let read = store.dashboard(ops.id).await.unwrap().unwrap();
    assert_eq!(
        (read.id, read.team_id, read.name.as_str(), read.deleted),
        (ops.id, team.id, "Ops ✓", false)
    );
    assert!(store.dashboard(sales.id + 1000).await.unwrap().is_none());
    assert_eq!(env.rows("dashboards").await, 3, "default + two");
    assert_eq!(
        feed_after(store, mark).await,
        vec![],
        "nothing cached shows dashboards"
    );
}

async fn scene_personalisation_upserts(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "scenes@example.com").await;
    let other = add_user(store, "other-scenes@example.com").await;
    let (org, team) = add_org(store, user.id, "Scenes").await;
    let team2 = add_team(store, org.id, "Two").await;
    let d1 = store.create_dashboard(team.id, "One").await.unwrap().id;
    let d2 = store.create_dashboard(team.id, "Two").await.unwrap().id;
    let d3 = store.create_dashboard(team.id, "Three").await.unwrap().id;

    let upsert = |user_id: i64, team_id: Option<i64>, scene: &str, dashboard_id: i64| {
        let scene = NewScene {
            user_id,
            team_id,
            scene: scene.to_string(),
            dashboard_id,
        };
        async move {
            let mark = feed_mark(store).await;
            store
                .upsert_scene_personalisation(scene)
                .await
                .expect("upsert");
            assert!(
                feed_after(store, mark).await.contains(&user_entry(user_id)),
                "every upsert invalidates the user"
            );
        }
    };
    let rows = |ids: Vec<i64>| async move {
        store
            .scene_personalisations_of(&ids)
            .await
            .expect("scenes")
            .into_iter()
            .map(|s| (s.user_id, s.team_id, s.scene, s.dashboard_id))
            .collect::<Vec<_>>()
    };
    let row = |u: i64, t: Option<i64>, s: &str, d: i64| (u, t, s.to_string(), Some(d));

    upsert(user.id, Some(team.id), "insights", d1).await;
    assert_eq!(
        rows(vec![user.id]).await,
        vec![row(user.id, Some(team.id), "insights", d1)]
    );
    // Same (user, team, scene): replaced in place.
    upsert(user.id, Some(team.id), "insights", d2).await;
    assert_eq!(
        rows(vec![user.id]).await,
        vec![row(user.id, Some(team.id), "insights", d2)]
    );
    // A new scene, the same scene in another team, and the no-team case add rows.
    upsert(user.id, Some(team.id), "dashboards", d3).await;
    upsert(user.id, Some(team2.id), "insights", d1).await;
    upsert(user.id, None, "insights", d1).await;
    let expected = vec![
        row(user.id, Some(team.id), "insights", d2),
        row(user.id, Some(team.id), "dashboards", d3),
        row(user.id, Some(team2.id), "insights", d1),
        row(user.id, None, "insights", d1),
    ];
    assert_eq!(rows(vec![user.id]).await, expected);
    // team_id IS NULL upserts too.
    upsert(user.id, None, "insights", d3).await;
    let mut expected = expected;
    expected[3] = row(user.id, None, "insights", d3);
    assert_eq!(rows(vec![user.id]).await, expected);

    // Another user's rows are theirs alone; several users come back in insertion order.
    upsert(other.id, Some(team.id), "insights", d1).await;
    assert_eq!(rows(vec![user.id]).await, expected);
    let mut both = expected.clone();
    both.push(row(other.id, Some(team.id), "insights", d1));
    assert_eq!(rows(vec![other.id, user.id]).await, both);
    assert!(rows(vec![]).await.is_empty());

    // Concurrent no-team upserts of one scene (through two stores) still leave one row.
    let second = env.reopen().await;
    let results = in_parallel((0..8).map(|i| {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            second.clone()
        };
        let dashboard_id = [d1, d2, d3][i % 3];
        let user_id = other.id;
        async move {
            s.upsert_scene_personalisation(NewScene {
                user_id,
                team_id: None,
                scene: "home".into(),
                dashboard_id,
            })
            .await
        }
    }))
    .await;
    for r in results {
        r.expect("concurrent upsert");
    }
    let home: Vec<_> = rows(vec![other.id])
        .await
        .into_iter()
        .filter(|r| r.2 == "home")
        .collect();
    assert_eq!(home.len(), 1, "{home:?}");

    // An unknown user is refused on both backends alike, and nothing is recorded.
    let mark = feed_mark(store).await;
    assert_err(
        store
            .upsert_scene_personalisation(NewScene {
                user_id: other.id + 1000,
                team_id: Some(team.id),
                scene: "insights".into(),
                dashboard_id: d1,
            })
            .await,
        "Missing(user)",
    );
    assert_eq!(feed_after(store, mark).await, vec![]);
}

// ---------------------------------------------------------------------------------------------
// Personal API keys
// ---------------------------------------------------------------------------------------------

async fn api_keys_insert_and_lookup(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "keys@example.com").await;
    let (org, team) = add_org(store, user.id, "Keys").await;

    let new = NewApiKey {
        label: "CI — deploys".into(),
        scopes: vec!["user:read".into(), "user:write".into()],
        scoped_teams: Some(vec![team.id, team.id + 7]),
        scoped_organizations: Some(vec![org.id.to_string()]),
        expires_at: Some(T0 + 86_400_000_000),
        created_at: T0 + 5,
        mask_value: "phx_...wxyz".into(),
        ..new_key(user.id)
    };
    let mark = feed_mark(store).await;
    let key = store.insert_api_key(new.clone(), LIMIT, &[]).await.unwrap();
    assert_eq!(key.id, new.id);
    assert_eq!(key.user_id, user.id);
    assert_eq!(key.label, "CI — deploys");
    assert_eq!(key.secure_value, new.secure_value);
    assert_eq!(key.mask_value, "phx_...wxyz");
    assert_eq!(key.scopes, vec!["user:read", "user:write"]);
    assert_eq!(key.scoped_teams, Some(vec![team.id, team.id + 7]));
    assert_eq!(key.scoped_organizations, Some(vec![org.id.to_string()]));
    assert_eq!(key.created_at, T0 + 5);
    assert_eq!(key.expires_at, Some(T0 + 86_400_000_000));
    assert_eq!(key.last_used_at, None);
    assert_eq!(key.last_rolled_at, None);
    assert!(feed_after(store, mark).await.contains(&user_entry(user.id)));
    assert_same_key(&key_by_value(store, &new.secure_value).await.unwrap(), &key);

    // Empty and absent lists stay apart; a key stored without scopes reads as `*`.
    let plain = NewApiKey {
        scopes: vec![],
        scoped_teams: Some(vec![]),
        scoped_organizations: None,
        ..new_key(user.id)
    };
    let stored = store
        .insert_api_key(plain.clone(), LIMIT, &[])
        .await
        .unwrap();
    assert_eq!(stored.scopes, vec!["*"]);
    assert_eq!(stored.scoped_teams, Some(vec![]));
    assert_eq!(stored.scoped_organizations, None);
    assert_eq!(stored.expires_at, None);
    assert_same_key(
        &key_by_value(store, &plain.secure_value).await.unwrap(),
        &stored,
    );

    assert!(key_by_value(store, "sha256$unknown").await.is_none());

    // The hash is unique; an unknown user is refused.
    let mark = feed_mark(store).await;
    assert_err(
        store
            .insert_api_key(key_with_hash(user.id, &new.secure_value), LIMIT, &[])
            .await,
        "Unique(ApiKey)",
    );
    assert_err(
        store
            .insert_api_key(new_key(user.id + 1000), LIMIT, &[])
            .await,
        "Missing(user)",
    );
    assert_eq!(feed_after(store, mark).await, vec![]);
    assert_eq!(env.rows("personal_api_keys").await, 2);

    // An inactive user's keys are not found; reactivated, they are again.
    set_active(store, user.id, false).await;
    assert!(key_by_value(store, &new.secure_value).await.is_none());
    set_active(store, user.id, true).await;
    assert_same_key(&key_by_value(store, &new.secure_value).await.unwrap(), &key);
}

async fn api_key_limit_is_per_user(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "limit@example.com").await;
    let other = add_user(store, "other-limit@example.com").await;
    for _ in 0..LIMIT {
        store
            .insert_api_key(new_key(user.id), LIMIT, &[])
            .await
            .unwrap();
    }
    let mark = feed_mark(store).await;
    let eleventh = new_key(user.id);
    assert_err(
        store.insert_api_key(eleventh.clone(), LIMIT, &[]).await,
        "Limit(10)",
    );
    assert!(key_by_value(store, &eleventh.secure_value).await.is_none());
    assert_eq!(key_count(&env, user.id).await, LIMIT as i64);
    assert_eq!(feed_after(store, mark).await, vec![]);

    // Another user has a limit of their own; the limit is the caller's.
    store
        .insert_api_key(new_key(other.id), LIMIT, &[])
        .await
        .unwrap();
    store
        .insert_api_key(new_key(other.id), 2, &[])
        .await
        .unwrap();
    assert_err(
        store.insert_api_key(new_key(other.id), 2, &[]).await,
        "Limit(2)",
    );
    assert_eq!(key_count(&env, other.id).await, 2);

    // Deleting the user frees nothing for others, and their keys go with them.
    assert_eq!(
        store.delete_user(user.id).await.unwrap(),
        UserDeletion::Deleted
    );
    assert_eq!(key_count(&env, user.id).await, 0);
    assert_eq!(env.rows("personal_api_keys").await, 2);
}

async fn concurrent_api_key_inserts_never_exceed_the_limit(db: Db) {
    let env = Env::new(db).await;
    let second = env.reopen().await;
    let user = add_user(&env.store, "race@example.com").await;

    // From zero: 16 racing inserts through two stores (two replicas), exactly 10 succeed.
    let race = |n: usize| {
        let (a, b, user_id) = (env.store.clone(), second.clone(), user.id);
        in_parallel((0..n).map(move |i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            async move { store.insert_api_key(new_key(user_id), LIMIT, &[]).await }
        }))
    };
    let outcomes = |results: Vec<StoreResult<ApiKeyRecord>>| {
        let mut ok = 0;
        for r in results {
            match r {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(describe(&e), "Limit(10)"),
            }
        }
        ok
    };
    assert_eq!(outcomes(race(16).await), LIMIT);
    assert_eq!(key_count(&env, user.id).await, LIMIT as i64);

    // At the boundary: with 8 stored, 6 racing inserts leave exactly 10.
    let user2 = add_user(&env.store, "race2@example.com").await;
    for _ in 0..8 {
        env.store
            .insert_api_key(new_key(user2.id), LIMIT, &[])
            .await
            .unwrap();
    }
    let (a, b, user_id) = (env.store.clone(), second.clone(), user2.id);
    let results = in_parallel((0..6).map(move |i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { store.insert_api_key(new_key(user_id), LIMIT, &[]).await }
    }))
    .await;
    assert_eq!(outcomes(results), 2);
    assert_eq!(key_count(&env, user2.id).await, LIMIT as i64);
}

async fn legacy_api_key_helpers(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "legacy@example.com").await;
    let inactive = add_user(store, "gone@example.com").await;
    let p260 = hoglet::domain::api_key::legacy_prefix(260_000);
    let p390 = hoglet::domain::api_key::legacy_prefix(390_000);
    assert_eq!(p260, "pbkdf2_sha256$260000$posthog_personal_api_key$");

    store
        .insert_api_key(new_key(user.id), LIMIT, &[])
        .await
        .unwrap();
    assert!(!store.has_legacy_api_keys().await.unwrap());
    assert!(store.legacy_api_keys(&p260).await.unwrap().is_empty());

    let l260 = store
        .insert_api_key(key_with_hash(user.id, &format!("{p260}AAAA=")), LIMIT, &[])
        .await
        .unwrap();
    let l390 = store
        .insert_api_key(key_with_hash(user.id, &format!("{p390}BBBB=")), LIMIT, &[])
        .await
        .unwrap();
    let l260_inactive = store
        .insert_api_key(
            key_with_hash(inactive.id, &format!("{p260}CCCC=")),
            LIMIT,
            &[],
        )
        .await
        .unwrap();
    // Look-alikes: the prefix is literal (no LIKE wildcards, no case folding).
    for lookalike in [
        "pbkdf2-sha256$260000$posthog-personal-api-key$DDDD=",
        "PBKDF2_SHA256$260000$POSTHOG_PERSONAL_API_KEY$EEEE=",
    ] {
        store
            .insert_api_key(key_with_hash(user.id, lookalike), LIMIT, &[])
            .await
            .unwrap();
    }
    set_active(store, inactive.id, false).await;
    assert!(store.has_legacy_api_keys().await.unwrap());

    let ids = |keys: Vec<ApiKeyRecord>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    let found = store.legacy_api_keys(&p260).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_same_key(&found[0], &l260);
    assert_eq!(
        ids(store.legacy_api_keys(&p390).await.unwrap()),
        vec![l390.id.clone()]
    );
    assert!(
        store
            .legacy_api_keys(&hoglet::domain::api_key::legacy_prefix(600_000))
            .await
            .unwrap()
            .is_empty()
    );

    // Upgrading replaces the hash: found by the new value, no longer by the legacy prefix.
    let mark = feed_mark(store).await;
    store
        .upgrade_api_key_hash(&l260.id, "sha256$upgraded-260")
        .await
        .unwrap();
    let upgraded = key_by_value(store, "sha256$upgraded-260").await.unwrap();
    assert_eq!(upgraded.id, l260.id);
    assert_eq!(upgraded.user_id, user.id);
    assert_eq!(upgraded.scopes, l260.scopes);
    assert!(key_by_value(store, &l260.secure_value).await.is_none());
    assert!(store.legacy_api_keys(&p260).await.unwrap().is_empty());
    assert_eq!(feed_after(store, mark).await, vec![]);
    // Upgrading to a hash another key holds is a conflict and changes nothing.
    assert_err(
        store
            .upgrade_api_key_hash(&l390.id, "sha256$upgraded-260")
            .await,
        "Unique(ApiKey)",
    );
    assert_eq!(
        ids(store.legacy_api_keys(&p390).await.unwrap()),
        vec![l390.id.clone()]
    );

    // Only when no legacy hash is left (inactive users' keys included) is the answer false.
    store
        .upgrade_api_key_hash(&l390.id, "sha256$upgraded-390")
        .await
        .unwrap();
    assert!(store.has_legacy_api_keys().await.unwrap());
    store
        .upgrade_api_key_hash(&l260_inactive.id, "sha256$upgraded-inactive")
        .await
        .unwrap();
    assert!(!store.has_legacy_api_keys().await.unwrap());
}

async fn touch_api_keys_only_moves_forward(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "touch@example.com").await;
    let k1 = store
        .insert_api_key(new_key(user.id), LIMIT, &[])
        .await
        .unwrap();
    let k2 = store
        .insert_api_key(new_key(user.id), LIMIT, &[])
        .await
        .unwrap();
    let used = |k: &ApiKeyRecord| {
        let value = k.secure_value.clone();
        async move { key_by_value(store, &value).await.unwrap().last_used_at }
    };
    let mark = feed_mark(store).await;

    store.touch_api_keys(&[]).await.unwrap();
    store
        .touch_api_keys(&[(k1.id.clone(), T0 + 1000), (k2.id.clone(), T0 + 2000)])
        .await
        .unwrap();
    assert_eq!(
        (used(&k1).await, used(&k2).await),
        (Some(T0 + 1000), Some(T0 + 2000))
    );

    // Older and equal times never move it back; newer ones move it; unknown ids are ignored.
    store
        .touch_api_keys(&[
            (k1.id.clone(), T0 + 500),
            ("no-such-key".into(), T0 + 9000),
            (k2.id.clone(), T0 + 3000),
        ])
        .await
        .unwrap();
    assert_eq!(
        (used(&k1).await, used(&k2).await),
        (Some(T0 + 1000), Some(T0 + 3000))
    );
    store
        .touch_api_keys(&[(k1.id.clone(), T0 + 1000)])
        .await
        .unwrap();
    assert_eq!(used(&k1).await, Some(T0 + 1000));
    // Within one batch the latest time wins whatever the order.
    store
        .touch_api_keys(&[(k1.id.clone(), T0 + 5000), (k1.id.clone(), T0 + 4000)])
        .await
        .unwrap();
    assert_eq!(used(&k1).await, Some(T0 + 5000));

    // Touching changes nothing else and invalidates nothing.
    let after = key_by_value(store, &k2.secure_value).await.unwrap();
    let mut expected = k2.clone();
    expected.last_used_at = Some(T0 + 3000);
    assert_same_key(&after, &expected);
    assert_eq!(feed_after(store, mark).await, vec![]);

    // A batch is one transaction: when one update fails, none of the batch is kept.
    env.raw_exec(
        &format!(
            "CREATE TRIGGER refuse_touch BEFORE UPDATE OF last_used_at ON personal_api_keys \
             WHEN NEW.id = '{}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
            k2.id
        ),
        &format!(
            "CREATE FUNCTION refuse_touch() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN IF NEW.id = '{}' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse_touch BEFORE UPDATE OF last_used_at ON personal_api_keys \
             FOR EACH ROW EXECUTE FUNCTION refuse_touch();",
            k2.id
        ),
    )
    .await;
    let refused = store
        .touch_api_keys(&[(k1.id.clone(), T0 + 8000), (k2.id.clone(), T0 + 8000)])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        (used(&k1).await, used(&k2).await),
        (Some(T0 + 5000), Some(T0 + 3000))
    );
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

async fn settings_keep_the_first_value(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    assert_eq!(
        store
            .setting_or_insert("secret_key", "first")
            .await
            .unwrap(),
        "first"
    );
    assert_eq!(
        store
            .setting_or_insert("secret_key", "second")
            .await
            .unwrap(),
        "first"
    );
    assert_eq!(
        store.setting_or_insert("other", "").await.unwrap(),
        "",
        "keys are independent; empty values are values"
    );
    assert_eq!(store.setting_or_insert("other", "x").await.unwrap(), "");

    // Another store, opened later, sees the same first value forever.
    let second = env.reopen().await;
    assert_eq!(
        second
            .setting_or_insert("secret_key", "third")
            .await
            .unwrap(),
        "first"
    );

    // Racing first inserts all agree on one of the candidates.
    let results = in_parallel((0..8).map(|i| {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            second.clone()
        };
        async move {
            s.setting_or_insert("raced", &format!("candidate-{i}"))
                .await
                .expect("setting")
        }
    }))
    .await;
    let distinct: BTreeSet<_> = results.iter().cloned().collect();
    assert_eq!(distinct.len(), 1, "{results:?}");
    assert!(results[0].starts_with("candidate-"));
    assert_eq!(
        store.setting_or_insert("raced", "late").await.unwrap(),
        results[0]
    );
    assert_eq!(env.rows("settings").await, 3);
}

async fn settings_read_and_delete_only_a_matching_value(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    assert_eq!(store.setting("missing").await.unwrap(), None);
    assert!(!store.delete_setting("missing", "x").await.unwrap());
    store.setting_or_insert("kept", "value").await.unwrap();
    store.setting_or_insert("other", "value").await.unwrap();
    assert_eq!(
        store.setting("kept").await.unwrap().as_deref(),
        Some("value")
    );
    assert!(
        !store.delete_setting("kept", "another value").await.unwrap(),
        "a different value is not deleted"
    );
    assert_eq!(
        store.setting("kept").await.unwrap().as_deref(),
        Some("value")
    );
    assert!(store.delete_setting("kept", "value").await.unwrap());
    assert_eq!(store.setting("kept").await.unwrap(), None);
    assert_eq!(env.reopen().await.setting("kept").await.unwrap(), None);
    assert_eq!(
        store.setting("other").await.unwrap().as_deref(),
        Some("value")
    );
    assert_eq!(env.rows("settings").await, 1);
}

// ---------------------------------------------------------------------------------------------
// Invalidation feed
// ---------------------------------------------------------------------------------------------

async fn invalidation_feed_orders_filters_and_prunes(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let before = system_now();
    let a = add_user(store, "feed-a@example.com").await;
    let b = add_user(store, "feed-b@example.com").await;
    assert_eq!(
        feed(store).await,
        vec![],
        "inserting a user records nothing"
    );

    let (org, _) = add_org(store, a.id, "Feed").await; // a
    save_user(store, &reload(store, b.id).await).await.unwrap(); // b
    store.set_current_context(a.id, None, None).await.unwrap(); // a
    add_team(store, org.id, "Everything").await; // everything
    store
        .insert_api_key(new_key(b.id), LIMIT, &[])
        .await
        .unwrap(); // b
    store.delete_user(b.id).await.unwrap(); // b
    let after = system_now();

    let all = feed(store).await;
    let entries: Vec<Entry> = all
        .iter()
        .map(|r| (r.user_id, r.key_hash.clone()))
        .collect();
    assert_eq!(
        entries,
        vec![
            user_entry(a.id),
            user_entry(b.id),
            user_entry(a.id),
            EVERYTHING,
            user_entry(b.id),
            user_entry(b.id),
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "{all:?}");
    assert!(
        all.windows(2).all(|w| w[0].created_at <= w[1].created_at),
        "{all:?}"
    );
    for r in &all {
        assert_between(r.created_at, before, after);
    }

    // `since` is exclusive and the answer is newest first.
    for r in &all {
        let expected: Vec<_> = all
            .iter()
            .rev()
            .filter(|x| x.created_at > r.created_at)
            .cloned()
            .collect();
        assert_eq!(
            store.invalidations_since(r.created_at).await.unwrap(),
            expected
        );
    }
    let newest_first: Vec<_> = all.iter().rev().cloned().collect();
    assert_eq!(
        store.invalidations_since(before - 1).await.unwrap(),
        newest_first
    );
    assert!(store.invalidations_since(after).await.unwrap().is_empty());

    // Pruning drops what is strictly older than the cut and keeps the rest.
    let cut = all[3].created_at;
    store.prune_invalidations(cut).await.unwrap();
    let kept: Vec<_> = all
        .iter()
        .filter(|r| r.created_at >= cut)
        .cloned()
        .collect();
    assert!(!kept.is_empty());
    assert_eq!(feed(store).await, kept);

    // Sequence numbers keep growing after a prune, even one that empties the feed: readers
    // remember which seq they applied.
    let last_seq = all.last().unwrap().seq;
    store.prune_invalidations(system_now() + 1).await.unwrap();
    assert_eq!(feed(store).await, vec![]);
    store
        .set_current_context(a.id, Some(org.id), None)
        .await
        .unwrap();
    let fresh = feed(store).await;
    assert_eq!(fresh.len(), 1);
    assert!(fresh[0].seq > last_seq, "{} after {last_seq}", fresh[0].seq);
    assert_eq!(fresh[0].user_id, Some(a.id));
}

// ---------------------------------------------------------------------------------------------
// Durability basics
// ---------------------------------------------------------------------------------------------

async fn writes_are_visible_through_a_second_store(db: Db) {
    let env = Env::new(db).await;
    let first = env.store.clone();
    let user = add_user(&first, "durable@example.com").await;
    let (org, team) = add_org(&first, user.id, "Durable").await;
    let key = first
        .insert_api_key(new_key(user.id), LIMIT, &[])
        .await
        .unwrap();
    first.setting_or_insert("secret_key", "kept").await.unwrap();
    let mut edited = reload(&first, user.id).await;
    edited.hedgehog_config = Some(json!({"color": "blue"}));
    save_user(&first, &edited).await.unwrap();

    // A second store (another process: an admin command beside the server) sees it all.
    let second = env.reopen().await;
    assert_same_user(
        &second
            .user_by_email("DURABLE@example.com")
            .await
            .unwrap()
            .unwrap(),
        &edited,
    );
    assert_same_org(&second.organization(org.id).await.unwrap().unwrap(), &org);
    assert_same_team(&second.team(team.id).await.unwrap().unwrap(), &team);
    assert_same_key(
        &key_by_value(&second, &key.secure_value).await.unwrap(),
        &key,
    );
    assert_eq!(
        second
            .setting_or_insert("secret_key", "other")
            .await
            .unwrap(),
        "kept"
    );
    assert_eq!(feed(&second).await, feed(&first).await);

    // …and what the second store writes is visible to the first at once.
    let newcomer = add_user(&second, "newcomer@example.com").await;
    second
        .add_membership(org.id, newcomer.id, MembershipLevel::Member)
        .await
        .unwrap();
    let second_key = second
        .insert_api_key(new_key(newcomer.id), LIMIT, &[])
        .await
        .unwrap();
    assert_same_user(
        &reload(&first, newcomer.id).await,
        &reload(&second, newcomer.id).await,
    );
    assert_eq!(
        first.member_counts(&[org.id]).await.unwrap(),
        vec![(org.id, 2)]
    );
    assert!(
        key_by_value(&first, &second_key.secure_value)
            .await
            .is_some()
    );
    assert!(
        feed(&first)
            .await
            .iter()
            .any(|r| (r.user_id, r.key_hash.clone()) == user_entry(newcomer.id)),
        "the feed is shared"
    );

    // Closed and opened again, nothing acknowledged is gone.
    drop(second);
    drop(first);
    let third = env.reopen().await;
    assert_eq!(third.count_users().await.unwrap(), 2);
    assert_same_user(&reload(&third, user.id).await, &edited);
    assert!(key_by_value(&third, &key.secure_value).await.is_some());
    assert!(
        key_by_value(&third, &second_key.secure_value)
            .await
            .is_some()
    );
    assert_eq!(
        membership_rows(&third.memberships_of(&[newcomer.id]).await.unwrap()),
        vec![(org.id, newcomer.id, MembershipLevel::Member)]
    );
    if let DatabaseUrl::Sqlite(path) = &env.db.url {
        let path = path.clone();
        let mode: String = tokio::task::spawn_blocking(move || {
            rusqlite::Connection::open(path)
                .unwrap()
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
    }
}

// ---------------------------------------------------------------------------------------------
// Signal autonomy and integrations
// ---------------------------------------------------------------------------------------------

async fn signal_autonomy_upserts_partially_and_deletes(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "signal@example.com").await;
    assert!(store.signal_autonomy(user.id).await.unwrap().is_none());
    assert!(!store.delete_signal_autonomy(user.id).await.unwrap());

    let created = store
        .upsert_signal_autonomy(user.id, None, T0)
        .await
        .unwrap();
    assert_eq!(
        (
            created.user_id,
            created.autostart_priority.clone(),
            created.created_at,
            created.updated_at
        ),
        (user.id, None, T0, T0)
    );
    let set = store
        .upsert_signal_autonomy(user.id, Some(Some("P2".into())), T0 + 1)
        .await
        .unwrap();
    assert_eq!(set.id, created.id);
    assert_eq!(set.autostart_priority.as_deref(), Some("P2"));
    assert_eq!((set.created_at, set.updated_at), (T0, T0 + 1));
    // Not sent: kept; only `updated_at` moves.
    let kept = store
        .upsert_signal_autonomy(user.id, None, T0 + 2)
        .await
        .unwrap();
    assert_eq!(kept.autostart_priority.as_deref(), Some("P2"));
    assert_eq!(kept.updated_at, T0 + 2);
    let cleared = store
        .upsert_signal_autonomy(user.id, Some(None), T0 + 3)
        .await
        .unwrap();
    assert_eq!(cleared.autostart_priority, None);
    assert_eq!(store.signal_autonomy(user.id).await.unwrap(), Some(cleared));

    // Concurrent first upserts make one row.
    let other = add_user(store, "race@example.com").await;
    let results = in_parallel((0..8).map(|i| {
        let store = store.clone();
        async move {
            store
                .upsert_signal_autonomy(other.id, Some(Some(format!("P{}", i % 5))), T0 + i)
                .await
                .unwrap()
        }
    }))
    .await;
    assert!(results.iter().all(|r| r.id == results[0].id));
    assert_eq!(env.rows("signal_autonomy_configs").await, 2);

    assert!(store.delete_signal_autonomy(user.id).await.unwrap());
    assert!(store.signal_autonomy(user.id).await.unwrap().is_none());
    // Deleting the user removes the row.
    assert_eq!(
        store.delete_user(other.id).await.unwrap(),
        UserDeletion::Deleted
    );
    assert_eq!(env.rows("signal_autonomy_configs").await, 0);
}

async fn user_integrations_upsert_replace_secrets_and_keep_the_cache(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "gh@example.com").await;
    let new = |installation: &str, config: serde_json::Value, secrets: &str, now: Micros| {
        store::NewUserIntegration {
            user_id: user.id,
            kind: "github".into(),
            integration_id: installation.into(),
            config,
            sensitive_config: secrets.into(),
            now,
        }
    };
    let first = store
        .upsert_user_integration(new("1", json!({"a": 1}), "v1:one", T0), &[])
        .await
        .unwrap();
    assert_eq!(first.config, json!({"a": 1}));
    assert_eq!(first.sensitive_config, "v1:one");
    assert_eq!(first.repository_cache, json!([]));
    assert_eq!(first.repository_cache_updated_at, None);
    assert_eq!((first.created_at, first.updated_at), (T0, T0));
    store
        .set_repository_cache(first.id, &json!([{"id": 1}]), T0 + 5)
        .await
        .unwrap();
    // Reconnecting replaces config and secrets wholesale and keeps id, cache and creation time.
    let again = store
        .upsert_user_integration(new("1", json!({"b": 2}), "v1:two", T0 + 10), &[])
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.config, json!({"b": 2}));
    assert_eq!(again.sensitive_config, "v1:two");
    assert_eq!(again.repository_cache, json!([{"id": 1}]));
    assert_eq!(again.repository_cache_updated_at, Some(T0 + 5));
    assert_eq!((again.created_at, again.updated_at), (T0, T0 + 10));

    let second = store
        .upsert_user_integration(new("2", json!({}), "", T0 + 20), &[])
        .await
        .unwrap();
    let listed: Vec<String> = store
        .user_integrations(user.id, "github")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.integration_id)
        .collect();
    assert_eq!(listed, ["1", "2"]);
    assert!(
        store
            .user_integrations(user.id, "slack")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .user_integration(user.id, "github", "3")
            .await
            .unwrap()
            .is_none()
    );

    assert!(
        store
            .update_user_integration_secrets(second.id, &json!({"c": 3}), "v1:three", T0 + 30)
            .await
            .unwrap()
    );
    let updated = store
        .user_integration(user.id, "github", "2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (updated.config.clone(), updated.sensitive_config.as_str()),
        (json!({"c": 3}), "v1:three")
    );
    assert_eq!(updated.updated_at, T0 + 30);

    assert!(store.delete_user_integration(second.id, &[]).await.unwrap());
    assert!(!store.delete_user_integration(second.id, &[]).await.unwrap());
    assert!(
        !store
            .update_user_integration_secrets(second.id, &json!({}), "", T0)
            .await
            .unwrap()
    );
    assert_eq!(env.rows("user_integrations").await, 1);
}

async fn team_integrations_upsert_and_filter(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "owner@example.com").await;
    let (org, team) = add_org(store, user.id, "Integrations").await;
    let other_team = add_team(store, org.id, "Other").await;
    let link = |team_id: i64, installation: &str, created_by: Option<i64>, login: Option<&str>| {
        store::NewTeamIntegration {
            team_id,
            kind: "github".into(),
            integration_id: installation.into(),
            config: match login {
                Some(login) => json!({"connecting_user_github_login": login}),
                None => json!({}),
            },
            created_by_id: created_by,
            now: T0,
        }
    };
    let a = store
        .upsert_team_integration(link(team.id, "10", Some(user.id), Some("first")))
        .await
        .unwrap();
    let b = store
        .upsert_team_integration(link(other_team.id, "20", None, None))
        .await
        .unwrap();
    // Upserting again replaces the config and keeps the creator when none is given.
    let a2 = store
        .upsert_team_integration(link(team.id, "10", None, Some("renamed")))
        .await
        .unwrap();
    assert_eq!(a2.id, a.id);
    assert_eq!(a2.created_by_id, Some(user.id));
    assert_eq!(a2.config["connecting_user_github_login"], "renamed");
    assert!(matches!(
        store
            .upsert_team_integration(link(999_999, "1", None, None))
            .await,
        Err(StoreError::Missing("team"))
    ));

    let ids = |list: Vec<store::TeamIntegrationRecord>| {
        list.into_iter().map(|i| i.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store
            .team_integrations_of(&[team.id], "github")
            .await
            .unwrap()),
        [a.id]
    );
    assert_eq!(
        ids(store
            .team_integrations_of(&[other_team.id, team.id], "github")
            .await
            .unwrap()),
        [a.id, b.id]
    );
    assert!(
        store
            .team_integrations_of(&[], "github")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .team_integrations_of(&[team.id], "slack")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(store
            .team_integrations_created_by(user.id, "github")
            .await
            .unwrap()),
        [a.id]
    );
}

/// The page count of unfiltered and staff-filtered lists comes from trigger-kept counters: they
/// must follow inserts, staff and active changes, and deletes.
async fn list_counts_follow_every_change(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let counts = || async {
        let q = |is_staff| UserQuery {
            limit: 1,
            is_staff,
            ..UserQuery::default()
        };
        (
            store.list_users(&q(None)).await.unwrap().count,
            store.list_users(&q(Some(true))).await.unwrap().count,
            store.list_users(&q(Some(false))).await.unwrap().count,
        )
    };
    assert_eq!(counts().await, (0, 0, 0));
    let a = add_user(store, "a@example.com").await;
    let b = store
        .insert_user(NewUser {
            is_staff: true,
            ..new_user("b@example.com")
        })
        .await
        .unwrap();
    assert_eq!(counts().await, (2, 1, 1));
    let mut a2 = reload(store, a.id).await;
    a2.is_staff = true;
    save_user(store, &a2).await.unwrap();
    assert_eq!(counts().await, (2, 2, 0));
    save_user(store, &a2).await.unwrap();
    assert_eq!(
        counts().await,
        (2, 2, 0),
        "an update that changes nothing keeps the counts"
    );
    set_active(store, b.id, false).await;
    assert_eq!(counts().await, (1, 1, 0));
    set_active(store, b.id, true).await;
    assert_eq!(counts().await, (2, 2, 0));
    assert_eq!(
        store.delete_user(b.id).await.unwrap(),
        UserDeletion::Deleted
    );
    assert_eq!(counts().await, (1, 1, 0));
    set_active(store, a.id, false).await;
    assert_eq!(
        store.delete_user(a.id).await.unwrap(),
        UserDeletion::Deleted
    );
    assert_eq!(
        counts().await,
        (0, 0, 0),
        "deleting an inactive user changes nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Sessions, the second factor, sign-up and key management (the security-critical writes)
// ---------------------------------------------------------------------------------------------

fn session_row(id: &str, user_id: Option<i64>, expires_at: Micros) -> SessionRecord {
    SessionRecord {
        id: id.to_string(),
        user_id,
        created_at: T0,
        login_at: user_id.map(|_| T0 + 1),
        expires_at,
        csrf_token: format!("csrf-{id}"),
        two_factor_verified: false,
        pending_user_id: None,
        pending_at: None,
        totp_setup_secret: None,
        totp_setup_at: None,
        client: SessionClient {
            ip: Some("203.0.113.7".into()),
            user_agent: Some(format!("agent of {id}")),
            login_method: user_id.map(|_| "password".into()),
        },
        last_activity_at: None,
    }
}

/// An entry of the activity log as a use case would write it.
fn activity_entry(user_id: Option<i64>, activity: &str, at: Micros) -> NewActivity {
    NewActivity {
        user_id,
        activity: activity.into(),
        created_at: at,
        ip: Some("198.51.100.4".into()),
        user_agent: Some("contract".into()),
        actor: ActorRecord {
            kind: "user".into(),
            id: user_id.map(|id| id.to_string()),
            label: None,
        },
        detail: serde_json::json!({"n": 1}),
    }
}

/// The kinds of the user's whole log, newest first.
async fn activities_of(store: &DynStore, user_id: i64) -> Vec<String> {
    store
        .activity(&ActivityQuery {
            user_id,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.activity)
        .collect()
}

#[track_caller]
fn assert_same_session(actual: &SessionRecord, expected: &SessionRecord) {
    assert_fields_eq!(
        actual,
        expected,
        [
            id,
            user_id,
            created_at,
            login_at,
            expires_at,
            csrf_token,
            two_factor_verified,
            pending_user_id,
            pending_at,
            totp_setup_secret,
            totp_setup_at,
            client,
            last_activity_at,
        ]
    );
}

async fn session_of(store: &DynStore, id: &str) -> Option<SessionRecord> {
    store.session(id).await.expect("session read")
}

fn session_entry(id: &str) -> Entry {
    (None, Some(format!("session${id}")))
}

const SESSION_AGE: Micros = 14 * 86_400_000_000;

async fn touch_sessions_only_moves_forward_and_changes_nothing_else(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let ann = add_user(store, "touch-session@example.com").await;
    let s1 = session_row("s1", Some(ann.id), T0 + SESSION_AGE);
    let s2 = session_row("s2", Some(ann.id), T0 + SESSION_AGE);
    store.insert_session(&s1).await.unwrap();
    store.insert_session(&s2).await.unwrap();
    let activity =
        |id: &'static str| async move { session_of(store, id).await.unwrap().last_activity_at };
    let mark = feed_mark(store).await;

    store.touch_sessions(&[]).await.unwrap();
    store
        .touch_sessions(&[("s1".into(), T0 + 1000), ("s2".into(), T0 + 2000)])
        .await
        .unwrap();
    assert_eq!(
        (activity("s1").await, activity("s2").await),
        (Some(T0 + 1000), Some(T0 + 2000))
    );

    // Older and equal times never move it back; newer ones move it; unknown ids are ignored.
    store
        .touch_sessions(&[
            ("s1".into(), T0 + 500),
            ("no-such-session".into(), T0 + 9000),
            ("s2".into(), T0 + 3000),
            ("s2".into(), T0 + 3000),
        ])
        .await
        .unwrap();
    assert_eq!(
        (activity("s1").await, activity("s2").await),
        (Some(T0 + 1000), Some(T0 + 3000))
    );
    // Nothing else of the session changes, and nothing cached shows it: no invalidation.
    assert_same_session(
        &session_of(store, "s2").await.unwrap(),
        &SessionRecord {
            last_activity_at: Some(T0 + 3000),
            ..s2.clone()
        },
    );
    assert_eq!(feed_after(store, mark).await, Vec::<Entry>::new());
    // update_session (a 2FA step, say) leaves it alone.
    store.update_session(&s1).await.unwrap();
    assert_eq!(activity("s1").await, Some(T0 + 1000));
    assert!(
        store
            .sessions_of(ann.id, T0)
            .await
            .unwrap()
            .iter()
            .all(|s| s.last_activity_at.is_some())
    );
}

async fn sessions_insert_read_update_and_end(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let ann = add_user(store, "ann@example.com").await;
    let bob = add_user(store, "bob@example.com").await;

    let first = session_row("s1", Some(ann.id), T0 + SESSION_AGE);
    store.insert_session(&first).await.expect("insert");
    assert_same_session(&session_of(store, "s1").await.unwrap(), &first);
    assert!(session_of(store, "S1").await.is_none(), "ids are exact");
    assert!(session_of(store, "missing").await.is_none());
    assert_err(store.insert_session(&first).await, "Unique(Row)");

    // A pending login (anonymous, waiting for the second factor) and a session of another user.
    let pending = SessionRecord {
        pending_user_id: Some(ann.id),
        pending_at: Some(T0 + 2),
        ..session_row("pending", None, T0 + SESSION_AGE)
    };
    store.insert_session(&pending).await.unwrap();
    store
        .insert_session(&session_row("bob", Some(bob.id), T0 + SESSION_AGE))
        .await
        .unwrap();
    assert_same_session(&session_of(store, "pending").await.unwrap(), &pending);
    // sessions_of: the user's logged-in sessions not over, newest login first (not the pending
    // login, not another user's, not an expired one).
    let later = SessionRecord {
        login_at: Some(T0 + 5),
        ..session_row("s2", Some(ann.id), T0 + SESSION_AGE)
    };
    store.insert_session(&later).await.unwrap();
    store
        .insert_session(&session_row("s-over", Some(ann.id), T0))
        .await
        .unwrap();
    let listed = store.sessions_of(ann.id, T0).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["s2", "s1"]
    );
    assert_same_session(&listed[1], &first);
    store.delete_session("s2", &[]).await.unwrap();
    store.delete_session("s-over", &[]).await.unwrap();

    // update_session writes every mutable column (created_at is not one) and invalidates the
    // session's cached entry.
    let mut changed = SessionRecord {
        user_id: Some(bob.id),
        login_at: Some(T0 + 10),
        expires_at: T0 + 2 * SESSION_AGE,
        csrf_token: "rotated".into(),
        two_factor_verified: true,
        pending_user_id: Some(ann.id),
        pending_at: Some(T0 + 11),
        totp_setup_secret: Some("sealed-secret".into()),
        totp_setup_at: Some(T0 + 12),
        ..first.clone()
    };
    let mark = feed_mark(store).await;
    store.update_session(&changed).await.expect("update");
    assert_same_session(&session_of(store, "s1").await.unwrap(), &changed);
    assert_eq!(feed_after(store, mark).await, vec![session_entry("s1")]);
    changed.created_at = T0 + 99;
    changed.user_id = Some(ann.id);
    changed.pending_user_id = None;
    changed.pending_at = None;
    changed.totp_setup_secret = None;
    changed.totp_setup_at = None;
    changed.login_at = None;
    store.update_session(&changed).await.unwrap();
    let stored = session_of(store, "s1").await.unwrap();
    assert_eq!(stored.created_at, T0, "created_at never changes");
    assert_same_session(
        &stored,
        &SessionRecord {
            created_at: T0,
            ..changed.clone()
        },
    );
    // Updating a session that does not exist creates nothing.
    store
        .update_session(&session_row("ghost", Some(ann.id), T0 + SESSION_AGE))
        .await
        .unwrap();
    assert!(session_of(store, "ghost").await.is_none());

    // delete_session ends one session (and its cache entry); a missing one is no error.
    store
        .insert_session(&session_row("s2", Some(ann.id), T0 + SESSION_AGE))
        .await
        .unwrap();
    let mark = feed_mark(store).await;
    store.delete_session("s2", &[]).await.expect("delete");
    assert!(session_of(store, "s2").await.is_none());
    assert_eq!(feed_after(store, mark).await, vec![session_entry("s2")]);
    store
        .delete_session("s2", &[])
        .await
        .expect("deleting again");

    // delete_sessions_of ends the user's sessions but `keep` (their pending second-factor logins
    // too), and only the user's; the count is what ended.
    for id in ["s3", "s4"] {
        store
            .insert_session(&session_row(id, Some(ann.id), T0 + SESSION_AGE))
            .await
            .unwrap();
    }
    let mark = feed_mark(store).await;
    assert_eq!(
        store
            .delete_sessions_of(ann.id, Some("s1"), &[])
            .await
            .unwrap(),
        3
    );
    assert!(session_of(store, "s1").await.is_some());
    assert!(session_of(store, "s3").await.is_none());
    assert!(session_of(store, "s4").await.is_none());
    assert!(
        session_of(store, "bob").await.is_some(),
        "another user's session"
    );
    assert!(
        session_of(store, "pending").await.is_none(),
        "a pending login"
    );
    assert_eq!(feed_after(store, mark).await, vec![user_entry(ann.id)]);
    assert_eq!(
        store
            .delete_sessions_of(ann.id, Some("bob"), &[])
            .await
            .unwrap(),
        1,
        "keeping another user's session keeps nothing of this user's"
    );
    assert!(session_of(store, "s1").await.is_none());
    assert!(session_of(store, "bob").await.is_some());
    assert_eq!(
        store.delete_sessions_of(ann.id, None, &[]).await.unwrap(),
        0
    );
    assert_eq!(
        store.delete_sessions_of(bob.id, None, &[]).await.unwrap(),
        1
    );
    assert!(session_of(store, "bob").await.is_none());

    // Deleting a user ends every session naming them, pending logins included.
    let carl = add_user(store, "carl@example.com").await;
    store.insert_session(&pending).await.unwrap();
    store
        .insert_session(&session_row("carl", Some(carl.id), T0 + SESSION_AGE))
        .await
        .unwrap();
    store
        .insert_session(&SessionRecord {
            pending_user_id: Some(carl.id),
            pending_at: Some(T0),
            ..session_row("carl-pending", None, T0 + SESSION_AGE)
        })
        .await
        .unwrap();
    assert_eq!(
        store.delete_user(carl.id).await.unwrap(),
        UserDeletion::Deleted
    );
    assert!(session_of(store, "carl").await.is_none());
    assert!(session_of(store, "carl-pending").await.is_none());
    assert!(
        session_of(store, "pending").await.is_some(),
        "another user's pending login"
    );
}

async fn prune_sessions_removes_only_sessions_that_are_over(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "prune@example.com").await;
    for (id, expires_at) in [
        ("long-gone", T0 - SESSION_AGE),
        ("just-over", T0 - 1),
        ("ends-now", T0),
        ("live", T0 + 1),
        ("fresh", T0 + SESSION_AGE),
    ] {
        store
            .insert_session(&session_row(id, Some(user.id), expires_at))
            .await
            .unwrap();
    }
    // Logins waiting for their second factor: abandoned once begun before `pending_before`.
    let pending_before = T0 - 600 * SECOND;
    for (id, pending_at) in [
        ("abandoned", pending_before - 1),
        ("waiting", pending_before),
    ] {
        let mut row = session_row(id, None, T0 + SESSION_AGE);
        row.pending_user_id = Some(user.id);
        row.pending_at = Some(pending_at);
        store.insert_session(&row).await.unwrap();
    }
    assert_eq!(store.prune_sessions(T0, pending_before).await.unwrap(), 4);
    // Authentication refuses a session once `expires_at <= now`: exactly those go.
    for gone in ["long-gone", "just-over", "ends-now", "abandoned"] {
        assert!(session_of(store, gone).await.is_none(), "{gone}");
    }
    for kept in ["live", "fresh", "waiting"] {
        assert!(session_of(store, kept).await.is_some(), "{kept}");
    }
    assert_eq!(env.rows("sessions").await, 3);
    assert_eq!(store.prune_sessions(T0, pending_before).await.unwrap(), 0);
    assert_eq!(env.rows("sessions").await, 3);
}

fn totp_device(user_id: i64, last_step: i64) -> TotpDeviceRecord {
    TotpDeviceRecord {
        user_id,
        secret: format!("sealed-{user_id}"),
        last_step,
        failures: 3,
        throttled_until: T0 + 8,
        created_at: T0,
    }
}

async fn last_step(store: &DynStore, user_id: i64) -> i64 {
    store
        .totp_device(user_id)
        .await
        .unwrap()
        .expect("device")
        .last_step
}

/// The TOTP replay guard: a step is accepted only when strictly later than the last accepted
/// one, so a code works once, also when the same code arrives twice at the same moment.
async fn advance_totp_step_accepts_each_step_once(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "totp@example.com").await;
    let other = add_user(store, "other-totp@example.com").await;

    assert!(
        !store.advance_totp_step(user.id, 1).await.unwrap(),
        "no device"
    );
    store
        .put_totp_device(&totp_device(user.id, 100))
        .await
        .unwrap();
    store
        .put_totp_device(&totp_device(other.id, 100))
        .await
        .unwrap();

    for (step, accepted) in [
        (99, false),
        (100, false),
        (101, true),
        (101, false),
        (150, true),
        (120, false),
        (150, false),
    ] {
        assert_eq!(
            store.advance_totp_step(user.id, step).await.unwrap(),
            accepted,
            "step {step}"
        );
    }
    let device = store.totp_device(user.id).await.unwrap().unwrap();
    assert_eq!(device.last_step, 150);
    // Success also clears the failure throttle; nothing else changes.
    assert_eq!((device.failures, device.throttled_until), (0, 0));
    assert_eq!(device.secret, format!("sealed-{}", user.id));
    assert_eq!(device.created_at, T0);
    let untouched = store.totp_device(other.id).await.unwrap().unwrap();
    assert_eq!(
        (
            untouched.last_step,
            untouched.failures,
            untouched.throttled_until
        ),
        (100, 3, T0 + 8),
        "another user's device"
    );

    // The same code presented concurrently (through two stores, as two replicas): one wins.
    let second = env.reopen().await;
    for step in [200, 201] {
        let results = in_parallel((0..8).map(|i| {
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                second.clone()
            };
            let id = user.id;
            async move { s.advance_totp_step(id, step).await.unwrap() }
        }))
        .await;
        assert_eq!(
            results.iter().filter(|accepted| **accepted).count(),
            1,
            "step {step}: {results:?}"
        );
        assert_eq!(last_step(store, user.id).await, step);
    }
    // A step never moves back, whatever the order concurrent steps arrive in.
    let results = in_parallel((300..310).map(|step| {
        let s = store.clone();
        let id = user.id;
        async move { (step, s.advance_totp_step(id, step).await.unwrap()) }
    }))
    .await;
    assert!(
        results.contains(&(309, true)),
        "the latest step always wins"
    );
    assert_eq!(last_step(store, user.id).await, 309);
    assert!(!store.advance_totp_step(user.id, 305).await.unwrap());
}

/// Backup codes: each works once for its own user only, also under concurrency.
async fn backup_codes_are_single_use(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let ann = add_user(store, "ann-codes@example.com").await;
    let bob = add_user(store, "bob-codes@example.com").await;
    let hashes = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("hash-{n}"))
            .collect::<Vec<_>>()
    };
    store
        .replace_backup_codes(ann.id, &hashes(&["1", "2", "3"]))
        .await
        .unwrap();
    // Bob holds a code with the same hash as one of Ann's, and one of his own.
    store
        .replace_backup_codes(bob.id, &hashes(&["1", "bob"]))
        .await
        .unwrap();
    assert_eq!(store.backup_code_count(ann.id).await.unwrap(), 3);
    assert_eq!(store.backup_code_count(bob.id).await.unwrap(), 2);

    assert!(
        !store
            .consume_backup_code(ann.id, "hash-none", &[])
            .await
            .unwrap()
    );
    assert!(
        !store
            .consume_backup_code(ann.id, "hash-bob", &[])
            .await
            .unwrap(),
        "another user's code"
    );
    assert_eq!(store.backup_code_count(bob.id).await.unwrap(), 2);
    assert!(
        store
            .consume_backup_code(ann.id, "hash-1", &[])
            .await
            .unwrap()
    );
    assert!(
        !store
            .consume_backup_code(ann.id, "hash-1", &[])
            .await
            .unwrap(),
        "used"
    );
    assert_eq!(store.backup_code_count(ann.id).await.unwrap(), 2);
    assert_eq!(
        store.backup_code_count(bob.id).await.unwrap(),
        2,
        "Bob's code with the same hash is his own"
    );
    assert!(
        store
            .consume_backup_code(bob.id, "hash-1", &[])
            .await
            .unwrap()
    );

    // One code presented many times at once (through two stores): accepted exactly once.
    let second = env.reopen().await;
    let results = in_parallel((0..8).map(|i| {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            second.clone()
        };
        let id = ann.id;
        async move { s.consume_backup_code(id, "hash-2", &[]).await.unwrap() }
    }))
    .await;
    assert_eq!(
        results.iter().filter(|used| **used).count(),
        1,
        "{results:?}"
    );
    assert_eq!(store.backup_code_count(ann.id).await.unwrap(), 1);

    // New codes replace the old ones; removing two-factor removes them all.
    store
        .replace_backup_codes(ann.id, &hashes(&["4", "5"]))
        .await
        .unwrap();
    assert!(
        !store
            .consume_backup_code(ann.id, "hash-3", &[])
            .await
            .unwrap()
    );
    assert_eq!(store.backup_code_count(ann.id).await.unwrap(), 2);
    store
        .put_totp_device(&totp_device(ann.id, 0))
        .await
        .unwrap();
    store.delete_two_factor(ann.id).await.unwrap();
    assert_eq!(store.backup_code_count(ann.id).await.unwrap(), 0);
    assert!(store.totp_device(ann.id).await.unwrap().is_none());
    assert!(
        !store
            .consume_backup_code(ann.id, "hash-4", &[])
            .await
            .unwrap()
    );
    assert_eq!(store.backup_code_count(bob.id).await.unwrap(), 1);
}

fn new_signup(email: &str, only_first_user: bool) -> NewSignup {
    NewSignup {
        user: new_user(email),
        organization_name: format!("Org of {email}"),
        team_name: "Default project".into(),
        only_first_user,
    }
}

/// Rows of every table a sign-up writes.
async fn signup_rows(env: &Env) -> [i64; 5] {
    [
        env.rows("users").await,
        env.rows("organizations").await,
        env.rows("teams").await,
        env.rows("organization_memberships").await,
        env.rows("dashboards").await,
    ]
}

/// Sign-up writes the user, their organization, its first team (with its dashboard) and the
/// owner membership together; the user is staff iff they are the first; a refusal leaves nothing.
async fn signup_creates_everything_or_nothing(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let (user, org, team) = store
        .signup(new_signup("First@Example.com", true))
        .await
        .expect("first sign-up");
    assert!(user.is_staff, "the first user is staff");
    assert_eq!(user.email, "First@Example.com");
    assert_eq!(org.name, "Org of First@Example.com");
    assert_eq!(team.name, "Default project");
    assert_eq!(team.organization_id, org.id);
    assert_eq!(
        (user.current_organization_id, user.current_team_id),
        (Some(org.id), Some(team.id))
    );
    assert_same_user(&reload(store, user.id).await, &user);
    assert_same_org(&store.organization(org.id).await.unwrap().unwrap(), &org);
    assert_same_team(&store.team(team.id).await.unwrap().unwrap(), &team);
    assert_eq!(
        membership_rows(&store.memberships_of(&[user.id]).await.unwrap()),
        vec![(org.id, user.id, MembershipLevel::Owner)]
    );
    assert_eq!(signup_rows(&env).await, [1, 1, 1, 1, 1]);

    // Only while no user exists, when asked so.
    let before = signup_rows(&env).await;
    assert_err(
        store.signup(new_signup("second@example.com", true)).await,
        "Unique(FirstUser)",
    );
    assert_eq!(signup_rows(&env).await, before);

    // Later users are never staff, whatever the caller asked.
    let (later, later_org, _) = store
        .signup(NewSignup {
            user: NewUser {
                is_staff: true,
                ..new_user("later@example.com")
            },
            ..new_signup("later@example.com", false)
        })
        .await
        .expect("open sign-up");
    assert!(!later.is_staff);
    assert_ne!(later_org.id, org.id);
    assert_eq!(signup_rows(&env).await, [2, 2, 2, 2, 2]);

    // A taken address (in any case) or distinct id refuses the whole sign-up.
    let before = signup_rows(&env).await;
    let mark = feed_mark(store).await;
    assert_err(
        store.signup(new_signup("FIRST@example.COM", false)).await,
        "Unique(Email)",
    );
    assert_err(
        store
            .signup(NewSignup {
                user: NewUser {
                    distinct_id: user.distinct_id.clone().unwrap(),
                    ..new_user("fresh@example.com")
                },
                ..new_signup("fresh@example.com", false)
            })
            .await,
        "Unique(DistinctId)",
    );
    assert_eq!(signup_rows(&env).await, before);
    assert_eq!(feed_after(store, mark).await, vec![]);
    assert!(
        store
            .user_by_email("fresh@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

/// Racing first sign-ups (two stores, as two replicas): exactly one succeeds and is staff.
async fn concurrent_first_user_signups_make_one_staff_user(db: Db) {
    let env = Env::new(db).await;
    let second = env.reopen().await;
    let results = in_parallel((0..6).map(|i| {
        let s = if i % 2 == 0 {
            env.store.clone()
        } else {
            second.clone()
        };
        async move {
            s.signup(new_signup(&format!("racer{i}@example.com"), true))
                .await
        }
    }))
    .await;
    let mut winners = Vec::new();
    for result in results {
        match result {
            Ok((user, _, _)) => winners.push(user),
            Err(e) => assert_eq!(describe(&e), "Unique(FirstUser)"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert!(winners[0].is_staff);
    assert_eq!(signup_rows(&env).await, [1, 1, 1, 1, 1]);
}

/// update_api_key writes label, scopes, scoping and expiry, nothing else, and invalidates the
/// key's cached authentication.
async fn update_api_key_writes_only_its_fields(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "update-key@example.com").await;
    let (org, team) = add_org(store, user.id, "Keys").await;
    let key = store
        .insert_api_key(new_key(user.id), LIMIT, &[])
        .await
        .unwrap();
    let other = store
        .insert_api_key(new_key(user.id), LIMIT, &[])
        .await
        .unwrap();
    store
        .touch_api_keys(&[(key.id.clone(), T0 + 50)])
        .await
        .unwrap();
    let before = store.api_key(&key.id).await.unwrap().unwrap();
    assert_eq!(before.last_used_at, Some(T0 + 50));

    let changes = ApiKeyChanges {
        label: "renamed ✓".into(),
        scopes: vec!["user:write".into()],
        scoped_teams: Some(vec![team.id]),
        scoped_organizations: Some(vec![org.id.to_string()]),
        expires_at: Some(T0 + 1_000),
    };
    let mark = feed_mark(store).await;
    let updated = store
        .update_api_key(&key.id, changes.clone(), &[])
        .await
        .expect("update");
    let expected = ApiKeyRecord {
        label: changes.label.clone(),
        scopes: changes.scopes.clone(),
        scoped_teams: changes.scoped_teams.clone(),
        scoped_organizations: changes.scoped_organizations.clone(),
        expires_at: changes.expires_at,
        ..before.clone()
    };
    assert_same_key(&updated, &expected);
    assert_same_key(&store.api_key(&key.id).await.unwrap().unwrap(), &expected);
    assert_same_key(
        &key_by_value(store, &key.secure_value).await.unwrap(),
        &expected,
    );
    assert_eq!(
        feed_after(store, mark).await,
        vec![(None, Some(key.secure_value.clone()))]
    );
    assert_same_key(&store.api_key(&other.id).await.unwrap().unwrap(), &other);

    // Back to empty and absent values (a key without scopes reads as `*`).
    let cleared = ApiKeyChanges {
        label: String::new(),
        scopes: vec![],
        scoped_teams: None,
        scoped_organizations: Some(vec![]),
        expires_at: None,
    };
    let updated = store.update_api_key(&key.id, cleared, &[]).await.unwrap();
    assert_eq!(updated.label, "");
    assert_eq!(updated.scopes, vec!["*"]);
    assert_eq!(updated.scoped_teams, None);
    assert_eq!(updated.scoped_organizations, Some(vec![]));
    assert_eq!(updated.expires_at, None);
    assert_eq!(updated.secure_value, key.secure_value);

    // A missing key: Missing, and nothing recorded.
    let mark = feed_mark(store).await;
    assert_err(
        store.update_api_key("no-such-key", changes, &[]).await,
        "Missing(personal API key)",
    );
    assert_eq!(feed_after(store, mark).await, vec![]);
    assert_eq!(env.rows("personal_api_keys").await, 2);
}

/// delete_api_key returns what it deleted, once: the key stops authenticating, a second delete
/// (also a concurrent one) finds nothing.
async fn delete_api_key_returns_the_record_once(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "delete-key@example.com").await;
    let key = store
        .insert_api_key(new_key(user.id), LIMIT, &[])
        .await
        .unwrap();
    let kept = store
        .insert_api_key(new_key(user.id), LIMIT, &[])
        .await
        .unwrap();

    let mark = feed_mark(store).await;
    let deleted = store
        .delete_api_key(&key.id, &[])
        .await
        .expect("delete")
        .expect("the key existed");
    assert_same_key(&deleted, &key);
    assert!(key_by_value(store, &key.secure_value).await.is_none());
    assert!(store.api_key(&key.id).await.unwrap().is_none());
    assert_eq!(
        feed_after(store, mark).await,
        vec![(Some(user.id), Some(key.secure_value.clone()))]
    );
    let mark = feed_mark(store).await;
    assert!(store.delete_api_key(&key.id, &[]).await.unwrap().is_none());
    assert!(
        store
            .delete_api_key("no-such-key", &[])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(feed_after(store, mark).await, vec![]);
    assert_same_key(
        &key_by_value(store, &kept.secure_value).await.unwrap(),
        &kept,
    );

    // Concurrent deletes of one key (two stores): exactly one reports it, for every key raced.
    let second = env.reopen().await;
    let mut raced = vec![kept.id.clone()];
    for _ in 0..4 {
        raced.push(
            store
                .insert_api_key(new_key(user.id), LIMIT, &[])
                .await
                .unwrap()
                .id,
        );
    }
    for id in raced {
        let results = in_parallel((0..8).map(|i| {
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                second.clone()
            };
            let id = id.clone();
            async move { s.delete_api_key(&id, &[]).await.unwrap().map(|k| k.id) }
        }))
        .await;
        assert_eq!(
            results.iter().flatten().collect::<Vec<_>>(),
            vec![&id],
            "{results:?}"
        );
    }
    assert_eq!(key_count(&env, user.id).await, 0);
    assert_eq!(
        store.user_facts(&[user.id]).await.unwrap(),
        vec![UserFacts {
            user_id: user.id,
            has_api_keys: false,
            has_totp: false,
        }]
    );
}

/// roll_api_key swaps the hash and mask and stamps the roll: the old value stops matching, the
/// new one matches; concurrent rolls happen one after the other, each seeing the hash the
/// previous one left (so each invalidates a hash that was valid).
async fn roll_api_key_replaces_the_hash_once_per_roll(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "roll-key@example.com").await;
    let key = store
        .insert_api_key(new_key(user.id), LIMIT, &[])
        .await
        .unwrap();

    let mark = feed_mark(store).await;
    let (before, after) = store
        .roll_api_key(&key.id, "sha256$rolled", "phx_...olld", T0 + 5, &[])
        .await
        .expect("roll")
        .expect("the key existed");
    assert_same_key(&before, &key);
    let expected = ApiKeyRecord {
        secure_value: "sha256$rolled".into(),
        mask_value: "phx_...olld".into(),
        last_rolled_at: Some(T0 + 5),
        ..key.clone()
    };
    assert_same_key(&after, &expected);
    assert!(key_by_value(store, &key.secure_value).await.is_none());
    assert_same_key(
        &key_by_value(store, "sha256$rolled").await.unwrap(),
        &expected,
    );
    assert_eq!(
        feed_after(store, mark).await,
        vec![(None, Some(key.secure_value.clone()))]
    );
    assert!(
        store
            .roll_api_key("no-such-key", "sha256$x", "phx_...x", T0, &[])
            .await
            .unwrap()
            .is_none()
    );
    assert!(key_by_value(store, "sha256$x").await.is_none());

    let second = env.reopen().await;
    let results = in_parallel((0..6).map(|i| {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            second.clone()
        };
        let id = key.id.clone();
        async move {
            let (before, after) = s
                .roll_api_key(&id, &format!("sha256$race{i}"), "phx_...race", T0 + 10, &[])
                .await
                .unwrap()
                .expect("the key exists");
            (before.secure_value, after.secure_value)
        }
    }))
    .await;
    let befores: BTreeSet<&String> = results.iter().map(|(b, _)| b).collect();
    assert_eq!(
        befores.len(),
        6,
        "each roll replaced a different hash: {results:?}"
    );
    let stored = store.api_key(&key.id).await.unwrap().unwrap().secure_value;
    // The rolls form one chain from the hash before the race to the stored one.
    let mut chain: HashMap<&String, &String> = results.iter().map(|(b, a)| (b, a)).collect();
    let mut at = "sha256$rolled".to_string();
    while let Some(next) = chain.remove(&at) {
        at = next.clone();
    }
    assert!(chain.is_empty(), "rolls that saw a stale hash: {chain:?}");
    assert_eq!(at, stored);
    assert_eq!(key_count(&env, user.id).await, 1);
}

// ---------------------------------------------------------------------------------------------
// The mail outbox
// ---------------------------------------------------------------------------------------------

fn new_mail(recipient: &str, at: Micros) -> NewMail {
    NewMail {
        recipient: recipient.into(),
        subject: format!("Subject for {recipient}"),
        sealed_body: format!("v1:sealed-for-{recipient}"),
        created_at: at,
    }
}

fn status(pending: i64, due: i64) -> OutboxStatus {
    OutboxStatus { pending, due }
}

async fn request_password_reset_writes_one_column_and_its_mail_together(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "reset@example.com").await;
    let mut before = user.clone();
    before.first_name = "Edited".into();
    save_user(store, &before).await.unwrap();
    let mark = feed_mark(store).await;

    store
        .request_password_reset(user.id, T0, new_mail("reset@example.com", T0), &[])
        .await
        .unwrap();
    let mut expected = before.clone();
    expected.requested_password_reset_at = Some(T0);
    assert_same_user(&reload(store, user.id).await, &expected);
    assert_eq!(feed_after(store, mark).await, vec![user_entry(user.id)]);
    assert_eq!(store.outbox_status(T0 - 1).await.unwrap(), status(1, 0));
    assert_eq!(store.outbox_status(T0).await.unwrap(), status(1, 1));
    let claimed = store.claim_mail(T0, T0 + 60 * SECOND, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (
            claimed[0].recipient.as_str(),
            claimed[0].subject.as_str(),
            claimed[0].sealed_body.as_str(),
            claimed[0].attempts,
            claimed[0].locked_until
        ),
        (
            "reset@example.com",
            "Subject for reset@example.com",
            "v1:sealed-for-reset@example.com",
            1,
            T0 + 60 * SECOND
        )
    );

    // A user that is gone gets nothing queued.
    let mark = feed_mark(store).await;
    assert_err(
        store
            .request_password_reset(user.id + 1000, T0, new_mail("ghost@example.com", T0), &[])
            .await,
        "Missing(user)",
    );
    assert_eq!(env.rows("outbox").await, 1);
    assert_eq!(feed_after(store, mark).await, vec![]);

    // All or nothing: when the mail cannot be stored, the column keeps its value.
    env.raw_exec(
        "CREATE TRIGGER refuse_mail BEFORE INSERT ON outbox \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        "CREATE FUNCTION refuse_mail() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
         CREATE TRIGGER refuse_mail BEFORE INSERT ON outbox \
         FOR EACH ROW EXECUTE FUNCTION refuse_mail();",
    )
    .await;
    let refused = store
        .request_password_reset(user.id, T0 + SECOND, new_mail("reset@example.com", T0), &[])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_same_user(&reload(store, user.id).await, &expected);
    assert_eq!(env.rows("outbox").await, 1);
    assert_eq!(feed_after(store, mark).await, vec![]);
    assert!(
        store
            .enqueue_mail(new_mail("other@example.com", T0))
            .await
            .is_err()
    );
}

async fn outbox_claims_lease_retry_give_up_and_delete(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    assert_eq!(store.outbox_status(T0).await.unwrap(), status(0, 0));
    store
        .enqueue_mail(new_mail("a@example.com", T0))
        .await
        .unwrap();
    store
        .enqueue_mail(new_mail("b@example.com", T0 + 1))
        .await
        .unwrap();
    assert_eq!(store.outbox_status(T0).await.unwrap(), status(2, 1));
    assert_eq!(store.outbox_status(T0 + 1).await.unwrap(), status(2, 2));

    // Oldest first, `limit` at a time; a leased message is not claimed again.
    let lease = T0 + 100;
    let first = store.claim_mail(T0 + 1, lease, 1).await.unwrap();
    assert_eq!(recipients(&first), ["a@example.com"]);
    assert_eq!((first[0].attempts, first[0].locked_until), (1, lease));
    let second = store.claim_mail(T0 + 1, lease, 10).await.unwrap();
    assert_eq!(recipients(&second), ["b@example.com"]);
    assert!(
        store
            .claim_mail(T0 + 1, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.outbox_status(T0 + 1).await.unwrap(), status(2, 0));

    // Delivered: deleted, but only by the holder of the lease.
    let (a, b) = (first[0].id, second[0].id);
    assert!(!store.mail_delivered(a, lease + 1).await.unwrap());
    assert!(store.mail_delivered(a, lease).await.unwrap());
    assert!(
        !store.mail_delivered(a, lease).await.unwrap(),
        "already gone"
    );
    assert_eq!(env.rows("outbox").await, 1);

    // A failure schedules the next attempt and releases the lease.
    assert!(
        store
            .mail_failed(
                b,
                lease,
                "connection refused",
                MailFailure::RetryAt(T0 + 50)
            )
            .await
            .unwrap()
    );
    assert_eq!(store.outbox_status(T0 + 49).await.unwrap(), status(1, 0));
    assert_eq!(store.outbox_status(T0 + 50).await.unwrap(), status(1, 1));
    assert_eq!(
        env.raw_i64("SELECT count(*) FROM outbox WHERE last_error = 'connection refused'")
            .await,
        1
    );

    // A worker that stops mid-attempt holds the message until its lease ends.
    let retry = store.claim_mail(T0 + 50, T0 + 60, 10).await.unwrap();
    assert_eq!((retry[0].id, retry[0].attempts), (b, 2));
    assert!(
        store
            .claim_mail(T0 + 59, T0 + 70, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let taken_over = store.claim_mail(T0 + 60, T0 + 70, 10).await.unwrap();
    assert_eq!((taken_over[0].id, taken_over[0].attempts), (b, 3));
    assert!(
        !store
            .mail_failed(b, T0 + 60, "late", MailFailure::RetryAt(T0 + 99))
            .await
            .unwrap(),
        "the first worker's lease is over"
    );

    // Given up: kept as a dead letter without its body, never claimed again.
    assert!(
        store
            .mail_failed(b, T0 + 70, "gave up", MailFailure::GiveUp(T0 + 61))
            .await
            .unwrap()
    );
    assert_eq!(store.outbox_status(i64::MAX).await.unwrap(), status(0, 0));
    assert!(
        store
            .claim_mail(i64::MAX, i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let dead = format!(
        "SELECT count(*) FROM outbox WHERE body IS NULL AND locked_until IS NULL \
         AND dead_at = {} AND attempts = 3 AND last_error = 'gave up'",
        T0 + 61
    );
    assert_eq!(env.raw_i64(&dead).await, 1);
}

fn recipients(claimed: &[hoglet::store::ClaimedMail]) -> Vec<&str> {
    claimed.iter().map(|m| m.recipient.as_str()).collect()
}

async fn concurrent_claims_never_share_a_message(db: Db) {
    let env = Env::new(db).await;
    let second = env.reopen().await;
    for i in 0..40 {
        env.store
            .enqueue_mail(new_mail(&format!("m{i}@example.com"), T0))
            .await
            .unwrap();
    }
    // Twelve claims of five racing through two stores (two replicas): every message is claimed
    // exactly once.
    let (a, b) = (env.store.clone(), second.clone());
    let claims = in_parallel((0..12).map(move |i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { store.claim_mail(T0, T0 + 60 * SECOND, 5).await.unwrap() }
    }))
    .await;
    let ids: Vec<i64> = claims.iter().flatten().map(|m| m.id).collect();
    let distinct: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 40, "{claims:?}");
    assert_eq!(distinct.len(), 40);
    assert_eq!(env.store.outbox_status(T0).await.unwrap(), status(40, 0));
}

async fn prune_dead_mail_deletes_only_old_dead_letters(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    // Three messages given up at T0, T0 + 10 and T0 + 20; one still waiting.
    for (i, recipient) in ["old@example.com", "edge@example.com", "recent@example.com"]
        .into_iter()
        .enumerate()
    {
        store.enqueue_mail(new_mail(recipient, T0)).await.unwrap();
        let claimed = store.claim_mail(T0, T0 + 100, 1).await.unwrap();
        assert_eq!(recipients(&claimed), [recipient]);
        let given_up_at = T0 + 10 * i as i64;
        assert!(
            store
                .mail_failed(
                    claimed[0].id,
                    T0 + 100,
                    "refused",
                    MailFailure::GiveUp(given_up_at)
                )
                .await
                .unwrap()
        );
    }
    store
        .enqueue_mail(new_mail("waiting@example.com", T0))
        .await
        .unwrap();
    assert_eq!(store.prune_dead_mail(T0 + 10).await.unwrap(), 1);
    assert_eq!(
        env.raw_i64("SELECT count(*) FROM outbox WHERE recipient = 'old@example.com'")
            .await,
        0
    );
    assert_eq!(env.rows("outbox").await, 3);
    assert_eq!(store.prune_dead_mail(T0 + 21).await.unwrap(), 2);
    assert_eq!(store.prune_dead_mail(T0 + 21).await.unwrap(), 0);
    // The waiting message is not a dead letter, however old.
    assert_eq!(store.prune_dead_mail(i64::MAX).await.unwrap(), 0);
    assert_eq!(store.outbox_status(T0).await.unwrap(), status(1, 1));
}

async fn update_organization_writes_only_the_given_settings(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let owner = add_user(store, "org-owner@example.com").await;
    let member = add_user(store, "org-member@example.com").await;
    let outsider = add_user(store, "org-outsider@example.com").await;
    let (org, _) = add_org(store, owner.id, "Settings").await;
    store
        .add_membership(org.id, member.id, MembershipLevel::Member)
        .await
        .unwrap();
    let (other, _) = add_org(store, outsider.id, "Elsewhere").await;

    // A name only: enforce_2fa keeps its value, every member's views are told, no one else's.
    let mark = feed_mark(store).await;
    let renamed = store
        .update_organization(
            org.id,
            OrganizationChanges {
                name: Some("Renamed".into()),
                enforce_2fa: None,
            },
        )
        .await
        .unwrap()
        .expect("organization exists");
    assert_eq!(renamed.name, "Renamed");
    assert_eq!(renamed.enforce_2fa, org.enforce_2fa);
    assert_eq!(renamed.slug, org.slug, "the slug stays");
    assert!(renamed.updated_at >= org.updated_at);
    let mut told = feed_after(store, mark).await;
    told.sort();
    let mut members = vec![user_entry(owner.id), user_entry(member.id)];
    members.sort();
    assert_eq!(told, members);

    // enforce_2fa only: the name stays.
    let enforced = store
        .update_organization(
            org.id,
            OrganizationChanges {
                name: None,
                enforce_2fa: Some(true),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (enforced.name.as_str(), enforced.enforce_2fa),
        ("Renamed", Some(true))
    );
    assert_eq!(
        store
            .organization(org.id)
            .await
            .unwrap()
            .unwrap()
            .enforce_2fa,
        Some(true)
    );

    // The other organization is untouched; an unknown one is None and records nothing.
    let untouched = store.organization(other.id).await.unwrap().unwrap();
    assert_eq!(
        (untouched.name.as_str(), untouched.enforce_2fa),
        ("Elsewhere", other.enforce_2fa)
    );
    let mark = feed_mark(store).await;
    let missing = store
        .update_organization(
            Uuid::new_v4(),
            OrganizationChanges {
                name: Some("Ghost".into()),
                enforce_2fa: Some(true),
            },
        )
        .await
        .unwrap();
    assert!(missing.is_none());
    assert_eq!(feed_after(store, mark).await, vec![]);
}

async fn api_keys_of_lists_one_users_keys_newest_first(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let owner = add_user(store, "keys-owner@example.com").await;
    let other = add_user(store, "keys-other@example.com").await;
    assert!(store.api_keys_of(owner.id).await.unwrap().is_empty());

    let mut inserted = Vec::new();
    for (i, created_at) in [T0 + 10, T0 + 30, T0 + 20].into_iter().enumerate() {
        let key = store
            .insert_api_key(
                NewApiKey {
                    label: format!("key {i}"),
                    created_at,
                    ..new_key(owner.id)
                },
                LIMIT,
                &[],
            )
            .await
            .unwrap();
        inserted.push(key);
    }
    store
        .insert_api_key(new_key(other.id), LIMIT, &[])
        .await
        .unwrap();

    let listed = store.api_keys_of(owner.id).await.unwrap();
    let labels: Vec<&str> = listed.iter().map(|k| k.label.as_str()).collect();
    assert_eq!(labels, ["key 1", "key 2", "key 0"]);
    assert!(listed.iter().all(|k| k.user_id == owner.id));
    assert_eq!(listed[0].secure_value, inserted[1].secure_value);
    assert_eq!(store.api_keys_of(other.id).await.unwrap().len(), 1);
}

async fn totp_attempts_are_claimed_once_per_backoff_window(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "claims@example.com").await;
    let other = add_user(store, "claims-other@example.com").await;
    assert!(
        store
            .claim_totp_attempt(user.id, T0)
            .await
            .unwrap()
            .is_none(),
        "no device, nothing to claim"
    );
    // The fixture has 3 failures and is throttled until T0 + 8.
    store
        .put_totp_device(&totp_device(user.id, 100))
        .await
        .unwrap();
    store
        .put_totp_device(&totp_device(other.id, 100))
        .await
        .unwrap();
    assert!(
        store
            .claim_totp_attempt(user.id, T0 + 7)
            .await
            .unwrap()
            .is_none(),
        "still throttled"
    );

    // A claim counts the miss twice and throttles for 2^(old failures + 1) seconds.
    let claimed = store
        .claim_totp_attempt(user.id, T0 + 8)
        .await
        .unwrap()
        .expect("claimable once the throttle is over");
    assert_eq!(claimed.failures, 5);
    assert_eq!(claimed.throttled_until, T0 + 8 + 16 * SECOND);
    assert_eq!(claimed.last_step, 100);
    assert_eq!(
        store.totp_device(user.id).await.unwrap().unwrap().failures,
        5
    );
    assert!(
        store
            .claim_totp_attempt(user.id, T0 + 8 + 16 * SECOND - 1)
            .await
            .unwrap()
            .is_none(),
        "one claim per window"
    );

    // The back-off stops growing at 4096 s.
    let mut worn = totp_device(user.id, 100);
    worn.failures = 40;
    worn.throttled_until = 0;
    store.put_totp_device(&worn).await.unwrap();
    let capped = store
        .claim_totp_attempt(user.id, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(capped.throttled_until, T0 + 4096 * SECOND);

    // Clearing forgets the count and the throttle, for this user only.
    store.clear_totp_throttle(user.id).await.unwrap();
    let cleared = store.totp_device(user.id).await.unwrap().unwrap();
    assert_eq!((cleared.failures, cleared.throttled_until), (0, 0));
    assert_eq!(
        (cleared.last_step, cleared.secret.as_str()),
        (100, worn.secret.as_str())
    );
    let untouched = store.totp_device(other.id).await.unwrap().unwrap();
    assert_eq!((untouched.failures, untouched.throttled_until), (3, T0 + 8));
    let again = store
        .claim_totp_attempt(user.id, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.failures, again.throttled_until),
        (2, T0 + 2 * SECOND)
    );
}

async fn upgrade_password_hash_replaces_only_the_hash_it_read(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let user = add_user(store, "rehash@example.com").await;
    let other = add_user(store, "rehash-other@example.com").await;
    let legacy = PasswordHash("pbkdf2_sha256$1000$salt$legacy".into());
    let mut stored = reload(store, user.id).await;
    stored.password = legacy.clone();
    save_user(store, &stored).await.unwrap();
    let argon = PasswordHash("argon2id$upgraded".into());

    // The hash read is still there: replaced, the rest of the row kept, the user's views told.
    let mark = feed_mark(store).await;
    assert!(
        store
            .upgrade_password_hash(user.id, &legacy, &argon)
            .await
            .unwrap()
    );
    let after = reload(store, user.id).await;
    assert_eq!(after.password, argon);
    assert_same_user(
        &after,
        &UserRecord {
            password: argon.clone(),
            ..stored.clone()
        },
    );
    assert_eq!(feed_after(store, mark).await, vec![user_entry(user.id)]);
    assert_eq!(reload(store, other.id).await.password, other.password);

    // A password changed since the read wins: nothing written, nothing recorded.
    let changed = PasswordHash("argon2id$changed-by-the-user".into());
    save_user(
        store,
        &UserRecord {
            password: changed.clone(),
            ..after.clone()
        },
    )
    .await
    .unwrap();
    let mark = feed_mark(store).await;
    assert!(
        !store
            .upgrade_password_hash(user.id, &legacy, &argon)
            .await
            .unwrap()
    );
    assert_eq!(reload(store, user.id).await.password, changed);
    assert_eq!(feed_after(store, mark).await, vec![]);

    // No such user: nothing.
    assert!(
        !store
            .upgrade_password_hash(user.id + 1000, &legacy, &argon)
            .await
            .unwrap()
    );
}

/// Every write that takes a log writes it in its transaction (a delete that found nothing writes
/// none); pages go newest first both ways from a cursor; the filter, pruning by age and the
/// user's deletion all apply.
async fn activity_is_written_with_each_write_paged_filtered_and_pruned(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let ann = add_user(store, "log-ann@example.com").await;
    let bob = add_user(store, "log-bob@example.com").await;
    let entry = |user: &UserRecord, what: &str, at: Micros| activity_entry(Some(user.id), what, at);

    store
        .record_activity(&[activity_entry(None, "login_failed", T0)])
        .await
        .unwrap();
    let key = store
        .insert_api_key(
            new_key(ann.id),
            LIMIT,
            &[entry(&ann, "key_created", T0 + 1)],
        )
        .await
        .unwrap();
    store
        .update_api_key(
            &key.id,
            ApiKeyChanges {
                label: "renamed".into(),
                scopes: key.scopes.clone(),
                scoped_teams: None,
                scoped_organizations: None,
                expires_at: None,
            },
            &[entry(&ann, "key_updated", T0 + 2)],
        )
        .await
        .unwrap();
    store
        .roll_api_key(
            &key.id,
            "sha256$rolled",
            "phx_...x",
            T0,
            &[entry(&ann, "key_rolled", T0 + 3)],
        )
        .await
        .unwrap();
    store
        .delete_api_key(&key.id, &[entry(&ann, "key_deleted", T0 + 4)])
        .await
        .unwrap();
    assert!(
        store
            .delete_api_key(&key.id, &[entry(&ann, "not_written", T0)])
            .await
            .unwrap()
            .is_none()
    );
    store
        .insert_session(&session_row("log-1", Some(ann.id), T0 + SESSION_AGE))
        .await
        .unwrap();
    assert!(
        store
            .delete_session("log-1", &[entry(&ann, "session_revoked", T0 + 5)])
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_session("log-1", &[entry(&ann, "not_written", T0)])
            .await
            .unwrap()
    );
    store
        .delete_sessions_of(ann.id, None, &[entry(&ann, "sessions_ended", T0 + 6)])
        .await
        .unwrap();
    store
        .request_password_reset(
            ann.id,
            T0,
            new_mail("log-ann@example.com", T0),
            &[entry(&ann, "reset_requested", T0 + 7)],
        )
        .await
        .unwrap();
    let linked = store
        .upsert_user_integration(
            store::NewUserIntegration {
                user_id: ann.id,
                kind: "github".into(),
                integration_id: "42".into(),
                config: json!({}),
                sensitive_config: "sealed".into(),
                now: T0,
            },
            &[entry(&ann, "linked", T0 + 8)],
        )
        .await
        .unwrap();
    assert!(
        store
            .delete_user_integration(linked.id, &[entry(&ann, "unlinked", T0 + 9)])
            .await
            .unwrap()
    );
    store
        .record_activity(&[entry(&bob, "logged_in", T0 + 10)])
        .await
        .unwrap();

    let all = activities_of(store, ann.id).await;
    assert_eq!(
        all,
        [
            "unlinked",
            "linked",
            "reset_requested",
            "sessions_ended",
            "session_revoked",
            "key_deleted",
            "key_rolled",
            "key_updated",
            "key_created"
        ]
    );
    // Stored as given.
    let page = |before: Option<i64>, after: Option<i64>, activity: Option<&str>| ActivityQuery {
        user_id: ann.id,
        activity: activity.map(str::to_string),
        before,
        after,
        limit: 3,
    };
    let first = store.activity(&page(None, None, None)).await.unwrap();
    let stored = &first[0];
    assert_eq!(
        (
            stored.user_id,
            stored.created_at,
            stored.ip.as_deref(),
            stored.user_agent.as_deref()
        ),
        (Some(ann.id), T0 + 9, Some("198.51.100.4"), Some("contract"))
    );
    assert_eq!(
        (
            stored.actor.kind.as_str(),
            stored.actor.id.clone(),
            &stored.detail
        ),
        ("user", Some(ann.id.to_string()), &json!({"n": 1}))
    );
    // Pages: three, the next three below the last id, and back above the first id of that.
    let second = store
        .activity(&page(Some(first[2].id), None, None))
        .await
        .unwrap();
    let names =
        |rows: &[ActivityRecord]| rows.iter().map(|r| r.activity.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&second),
        ["sessions_ended", "session_revoked", "key_deleted"]
    );
    let back = store
        .activity(&page(None, Some(second[0].id), None))
        .await
        .unwrap();
    assert_eq!(names(&back), names(&first));
    let filtered = store
        .activity(&page(None, None, Some("key_rolled")))
        .await
        .unwrap();
    assert_eq!(names(&filtered), ["key_rolled"]);

    // Pruning by age: entries before T0 + 5 go, whoever they belong to.
    assert_eq!(store.prune_activity(T0 + 5).await.unwrap(), 5);
    assert_eq!(activities_of(store, ann.id).await.len(), 5);
    // A deleted user's log goes with them; another user's stays.
    assert_eq!(
        store.delete_user(ann.id).await.unwrap(),
        UserDeletion::Deleted
    );
    assert!(activities_of(store, ann.id).await.is_empty());
    assert_eq!(activities_of(store, bob.id).await, ["logged_in"]);
}

async fn remove_membership_contract(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let owner = add_user(store, "rm-boss@example.com").await;
    let (home, home_team) = add_org(store, owner.id, "Home").await;
    let (org, _) = add_org(store, owner.id, "Leavable").await;
    let member = add_user(store, "rm-member@example.com").await;
    store
        .add_membership(home.id, member.id, MembershipLevel::Member)
        .await
        .unwrap();
    store
        .add_membership(org.id, member.id, MembershipLevel::Admin)
        .await
        .unwrap();
    assert_eq!(
        reload(store, member.id).await.current_organization_id,
        Some(org.id)
    );

    let mark = feed_mark(store).await;
    let log = [activity_entry(
        Some(member.id),
        "organization_member_removed",
        T0,
    )];
    let removed = store
        .remove_membership(org.id, member.id, &log)
        .await
        .expect("removed");
    let MembershipRemoval::Removed(membership) = removed else {
        panic!("not removed: {removed:?}");
    };
    assert_eq!(membership.organization_id, org.id);
    assert_eq!(membership.user_id, member.id);
    assert_eq!(membership.level, MembershipLevel::Admin);
    assert!(
        feed_after(store, mark).await.contains(&EVERYTHING),
        "leaving changes every member's view of the organization and the member's own"
    );
    // The member moves to the organization they joined first, and its first team.
    let after = reload(store, member.id).await;
    assert_eq!(after.current_organization_id, Some(home.id));
    assert_eq!(after.current_team_id, Some(home_team.id));
    assert_eq!(
        membership_rows(&store.memberships_of(&[member.id]).await.unwrap()),
        vec![(home.id, member.id, MembershipLevel::Member)]
    );
    assert_eq!(
        store.member_counts(&[org.id]).await.unwrap(),
        vec![(org.id, 1)]
    );
    let entries = store
        .activity(&ActivityQuery {
            user_id: member.id,
            limit: 10,
            ..ActivityQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].activity, "organization_member_removed");

    // Refusals change nothing and record nothing.
    let mark = feed_mark(store).await;
    assert!(matches!(
        store.remove_membership(org.id, member.id, &log).await,
        Ok(MembershipRemoval::NotMember)
    ));
    assert!(matches!(
        store.remove_membership(org.id, owner.id, &log).await,
        Ok(MembershipRemoval::LastOwner)
    ));
    assert_err(
        store
            .remove_membership(Uuid::new_v4(), member.id, &log)
            .await,
        "Missing(organization)",
    );
    assert_eq!(feed_after(store, mark).await, vec![]);
    assert_eq!(
        membership_rows(&store.memberships_of(&[owner.id]).await.unwrap()).len(),
        2
    );
    let entries = store
        .activity(&ActivityQuery {
            user_id: member.id,
            limit: 10,
            ..ActivityQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "a refusal records nothing");

    // Another owner makes the first one removable; the last member's current context empties.
    store
        .add_membership(org.id, member.id, MembershipLevel::Owner)
        .await
        .unwrap();
    assert!(matches!(
        store.remove_membership(org.id, owner.id, &[]).await,
        Ok(MembershipRemoval::Removed(_))
    ));
    let lonely = add_user(store, "rm-lonely@example.com").await;
    store
        .add_membership(org.id, lonely.id, MembershipLevel::Member)
        .await
        .unwrap();
    store
        .remove_membership(org.id, lonely.id, &[])
        .await
        .unwrap();
    let lonely = reload(store, lonely.id).await;
    assert_eq!(lonely.current_organization_id, None);
    assert_eq!(lonely.current_team_id, None);
}

async fn list_users_finds_addresses_containing_text_and_inactive_users(db: Db) {
    let env = Env::new(db).await;
    let store = &env.store;
    let ann = add_user(store, "Ann.Smith@Example.com").await;
    let bob = add_user(store, "bob_100%@example.com").await;
    add_user(store, "carol@other.test").await;
    let write = UserWrite {
        changes: UserChanges {
            is_active: Some(false),
            ..UserChanges::default()
        },
        ..UserWrite::default()
    };
    store.write_user(bob.id, &write).await.unwrap();
    let emails = |query: UserQuery| async move {
        let page = store.list_users(&query).await.unwrap();
        let emails: Vec<String> = page.users.iter().map(|u| u.email.clone()).collect();
        assert_eq!(page.count, emails.len() as i64);
        emails
    };
    let query = |text: &str, include_inactive: bool| UserQuery {
        email_contains: Some(text.into()),
        include_inactive,
        limit: 10,
        ..UserQuery::default()
    };
    assert_eq!(emails(query("SMITH", false)).await, vec![ann.email.clone()]);
    assert_eq!(
        emails(query("example", false)).await,
        vec![ann.email.clone()]
    );
    assert_eq!(
        emails(query("example", true)).await,
        vec![ann.email.clone(), bob.email.clone()]
    );
    // LIKE's own characters match only themselves.
    assert_eq!(emails(query("_100%", true)).await, vec![bob.email.clone()]);
    assert_eq!(emails(query("n%s", true)).await, Vec::<String>::new());
    assert_eq!(emails(query("bo__100", true)).await, Vec::<String>::new());
    let everyone = UserQuery {
        include_inactive: true,
        limit: 2,
        ..UserQuery::default()
    };
    let page = store.list_users(&everyone).await.unwrap();
    assert_eq!(page.users.len(), 2);
    assert_eq!(page.count, 3);
}
