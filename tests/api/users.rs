//! `GET /api/users/{uuid}/`: target resolution (`@me`, staff, non-staff) and every field of the
//! user representation (users.md §2.2, §3, §4.3; test cases 1–4, 6, 8–9, 11, 43).

use hoglet::store::MembershipLevel;
use reqwest::Method;
use serde_json::{Value, json};

use crate::db_tests;
use crate::helpers::{Db, eventually, spawn_app};

db_tests!(
    a_teams_project_id_is_its_own_id_unless_stored,
    me_with_a_key_returns_the_full_user,
    me_without_credentials_is_401,
    key_without_user_scope_is_403,
    me_representation_of_a_new_member_has_every_default,
    me_lists_every_membership_with_the_requesters_level,
    non_staff_may_only_use_at_me,
    staff_reads_any_active_user_by_uuid,
    staff_gets_404_for_unknown_inactive_or_malformed_uuids,
    user_without_memberships_has_no_team_or_organization,
    missing_current_organization_and_team_are_filled_and_saved,
    stored_null_shortcut_position_renders_above,
    me_cache_follows_writes_through_the_api,
    me_cache_follows_writes_made_outside_the_api,
    paths_that_match_no_user_route_are_404,
);

/// PostHog's notification defaults (users.md §3.3), in its order.
pub fn default_notification_settings() -> Value {
    json!({
        "plugin_disabled": true,
        "discussions_mentioned": true,
        "project_weekly_digest_disabled": {},
        "all_weekly_digest_disabled": false,
        "error_tracking_issue_assigned": true,
        "error_tracking_weekly_digest": true,
        "data_pipeline_error_threshold": 0.01,
        "project_api_key_exposed": true,
        "materialized_view_sync_failed": false,
        "web_analytics_weekly_digest": true,
        "organization_member_join_email_disabled": {},
    })
}

/// The baseline fields of the user representation, in PostHog's order (users.md §3.1).
const BASELINE_FIELDS: &[&str] = &[
    "date_joined",
    "uuid",
    "distinct_id",
    "first_name",
    "last_name",
    "email",
    "pending_email",
    "is_email_verified",
    "notification_settings",
    "anonymize_data",
    "allow_impersonation",
    "toolbar_mode",
    "has_password",
    "id",
    "is_staff",
    "is_impersonated",
    "is_impersonated_until",
    "is_impersonated_read_only",
    "sensitive_session_expires_at",
    "team",
    "organization",
    "organizations",
    "events_column_config",
    "is_2fa_enabled",
    "has_social_auth",
    "has_sso_enforcement",
    "has_seen_product_intro_for",
    "scene_personalisation",
    "theme_mode",
    "hedgehog_config",
    "allow_sidebar_suggestions",
    "shortcut_position",
    "role_at_organization",
    "passkeys_enabled_for_2fa",
];

/// Fields users.md §3.1 lists as **[later]** additions (safe extras).
const LATER_FIELDS: &[&str] = &[
    "is_impersonated_reason",
    "fresh_reauth_expires_at",
    "notification_locks",
    "hide_mcp_hints",
    "ui_configuration",
    "onboarding_skipped_at",
    "onboarding_skipped_reason",
    "onboarding_skipped_organization_id",
    "onboarding_delegated_to_invite",
    "onboarding_delegated_to_organization_id",
    "onboarding_delegation_accepted_at",
    "is_organization_first_user",
    "active_realtime_notification_types",
    "pending_invites",
    "requires_credential_review",
];

const TEAM_KEYS: &[&str] = &[
    "id",
    "uuid",
    "organization",
    "project_id",
    "api_token",
    "name",
    "completed_snippet_onboarding",
    "has_completed_onboarding_for",
    "ingested_event",
    "is_demo",
    "timezone",
    "access_control",
];

const ORGANIZATION_KEYS: &[&str] = &[
    "id",
    "name",
    "slug",
    "logo_media_id",
    "created_at",
    "updated_at",
    "membership_level",
    "plugins_access_level",
    "teams",
    "projects",
    "available_product_features",
    "is_member_join_email_enabled",
    "metadata",
    "customer_id",
    "enforce_2fa",
    "members_can_invite",
    "members_can_use_personal_api_keys",
    "allow_publicly_shared_resources",
    "member_count",
    "is_ai_data_processing_approved",
    "default_experiment_stats_method",
    "default_anonymize_ips",
    "default_role_id",
    "is_active",
    "is_not_active_reason",
];

const ORGANIZATION_BASIC_KEYS: &[&str] = &[
    "id",
    "name",
    "slug",
    "logo_media_id",
    "membership_level",
    "members_can_use_personal_api_keys",
    "is_active",
    "is_not_active_reason",
];

/// The object's keys, in order.
pub fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// Asserts the user representation has every baseline field in PostHog's order, no write-only
/// field, and nothing beyond the documented later additions.
#[track_caller]
pub fn assert_user_shape(user: &Value) {
    let present = keys(user);
    let baseline: Vec<&str> = present
        .iter()
        .copied()
        .filter(|k| BASELINE_FIELDS.contains(k))
        .collect();
    assert_eq!(baseline, BASELINE_FIELDS, "baseline fields and their order");
    for key in &present {
        assert!(
            BASELINE_FIELDS.contains(key) || LATER_FIELDS.contains(key),
            "undocumented field {key}"
        );
    }
    for write_only in [
        "password",
        "current_password",
        "set_current_team",
        "set_current_organization",
    ] {
        assert!(
            user.get(write_only).is_none(),
            "{write_only} must be absent"
        );
    }
    if !user["team"].is_null() {
        assert_eq!(keys(&user["team"]), TEAM_KEYS, "team keys");
        assert_eq!(user["team"]["organization"], user["organization"]["id"]);
    }
    if !user["organization"].is_null() {
        assert_eq!(
            keys(&user["organization"]),
            ORGANIZATION_KEYS,
            "organization keys"
        );
        for team in user["organization"]["teams"].as_array().unwrap() {
            assert_eq!(keys(team), TEAM_KEYS, "organization.teams[] keys");
        }
        for project in user["organization"]["projects"].as_array().unwrap() {
            assert_eq!(keys(project), ["id", "organization_id", "name"]);
        }
    }
    for org in user["organizations"]
        .as_array()
        .expect("organizations is a list")
    {
        assert_eq!(keys(org), ORGANIZATION_BASIC_KEYS, "organizations[] keys");
    }
    for list in ["organizations", "scene_personalisation"] {
        assert!(user[list].is_array(), "{list} is a list, never null");
    }
}

/// `2024-05-01T12:00:00Z` or `2024-05-01T12:00:00.123456Z`.
#[track_caller]
pub fn assert_iso_z(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    let (main, rest) = text.split_at(19);
    assert!(
        main.len() == 19 && &main[4..5] == "-" && &main[10..11] == "T" && &main[13..14] == ":",
        "{text}"
    );
    assert!(rest == "Z" || (rest.len() == 8 && rest.starts_with('.') && rest.ends_with('Z')));
}

async fn me_with_a_key_returns_the_full_user(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app
        .user_with_key("alice@example.com", false, &["user:read"])
        .await;
    for path in ["/api/users/@me/", "/api/users/@me", "/api/users/%40me/"] {
        let reply = app.get(path, &key).await;
        let body = reply.assert_ok();
        assert_eq!(body["uuid"], json!(user.uuid));
        assert_eq!(body["id"], json!(user.id));
        assert_eq!(body["email"], json!("alice@example.com"));
        assert_eq!(body["has_password"], json!(true));
        assert_eq!(body["is_staff"], json!(false));
        assert_eq!(body["sensitive_session_expires_at"], json!(null));
        assert_eq!(body["team"]["organization"], body["organization"]["id"]);
        assert_eq!(body["organization"]["membership_level"], json!(15));
        assert!(body.get("password").is_none());
        assert!(body.get("set_current_team").is_none());
    }
    app.stop().await;
}

async fn me_without_credentials_is_401(db: Db) {
    let app = spawn_app(db).await;
    for path in [
        "/api/users/@me/",
        "/api/users/@me",
        "/api/users/",
        "/api/users/@me/hedgehog_config/",
    ] {
        let reply = app.call(Method::GET, path, None, None).await;
        reply.assert_error(
            401,
            "authentication_error",
            "not_authenticated",
            "Authentication credentials were not provided.",
            None,
        );
        assert_eq!(reply.header("www-authenticate"), Some("Session"));
    }
    for (method, path) in [
        (Method::PATCH, "/api/users/@me/"),
        (Method::PUT, "/api/users/@me/"),
        (Method::PATCH, "/api/users/@me/hedgehog_config/"),
        (Method::POST, "/api/users/@me/scene_personalisation/"),
    ] {
        let reply = app.call(method, path, None, Some(json!({}))).await;
        reply.assert_error(
            401,
            "authentication_error",
            "not_authenticated",
            "Authentication credentials were not provided.",
            None,
        );
        assert_eq!(reply.header("www-authenticate"), Some("Session"));
    }
    let reply = app.get("/api/users/@me/", "phx_not_a_real_key").await;
    reply.assert_error(
        401,
        "authentication_error",
        "authentication_failed",
        "Personal API key found in request Authorization header is invalid.",
        None,
    );
    assert_eq!(reply.header("www-authenticate"), Some("Session"));
    app.stop().await;
}

async fn key_without_user_scope_is_403(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app
        .user_with_key("bob@example.com", false, &["insight:read"])
        .await;
    for path in [
        "/api/users/@me/",
        "/api/users/",
        "/api/users/@me/hedgehog_config/",
    ] {
        app.get(path, &key).await.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "API key missing required scope 'user:read'",
            None,
        );
    }
    app.stop().await;
}

/// Test cases 1 and 3: a member (level 1) of someone else's organization, every field at its
/// default, and the same body with and without the slash and with `%40me`.
async fn me_representation_of_a_new_member_has_every_default(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("owner@example.com", false).await;
    let (org, team_id) = app.create_org("Acme", "owner@example.com").await;
    let member = app.create_user("member@example.com", false).await;
    app.add_member(&org, "member@example.com", MembershipLevel::Member)
        .await;
    let key = app.create_key("member@example.com", &["user:read"]).await;

    let reply = app.get("/api/users/@me/", &key).await;
    let me = reply.assert_ok().clone();
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_user_shape(&me);

    assert_iso_z(&me["date_joined"]);
    assert_eq!(me["uuid"], json!(member.uuid));
    let distinct_id = me["distinct_id"].as_str().expect("distinct_id is set");
    assert!(!distinct_id.is_empty() && distinct_id.len() <= 200);
    assert_eq!(me["first_name"], "Test");
    assert_eq!(me["last_name"], "User");
    assert_eq!(me["email"], json!(member.email));
    assert_eq!(me["pending_email"], Value::Null);
    assert_eq!(me["is_email_verified"], Value::Null);
    assert_eq!(me["notification_settings"], default_notification_settings());
    assert_eq!(
        keys(&me["notification_settings"]),
        keys(&default_notification_settings()),
        "notification settings in PostHog's order"
    );
    assert_eq!(me["anonymize_data"], false);
    assert_eq!(me["allow_impersonation"], Value::Null);
    assert_eq!(me["toolbar_mode"], "toolbar");
    assert_eq!(me["has_password"], true);
    assert_eq!(me["id"], json!(member.id));
    assert_eq!(me["is_staff"], false);
    assert_eq!(me["is_impersonated"], false);
    assert_eq!(me["is_impersonated_until"], Value::Null);
    assert_eq!(me["is_impersonated_read_only"], Value::Null);
    assert_eq!(me["sensitive_session_expires_at"], Value::Null);
    assert_eq!(me["events_column_config"], json!({"active": "DEFAULT"}));
    assert_eq!(me["is_2fa_enabled"], false);
    assert_eq!(me["has_social_auth"], false);
    assert_eq!(me["has_sso_enforcement"], false);
    assert_eq!(me["has_seen_product_intro_for"], Value::Null);
    assert_eq!(me["scene_personalisation"], json!([]));
    assert_eq!(me["theme_mode"], Value::Null);
    assert_eq!(me["hedgehog_config"], Value::Null);
    assert_eq!(me["allow_sidebar_suggestions"], Value::Null);
    assert_eq!(me["shortcut_position"], "above");
    assert_eq!(me["role_at_organization"], Value::Null);
    assert_eq!(me["passkeys_enabled_for_2fa"], false);

    // team: TeamBasic of the current team, and nothing else of the team's settings.
    let team = &me["team"];
    assert_eq!(team["id"], json!(team_id));
    assert_eq!(team["organization"], json!(org));
    assert!(team["uuid"].as_str().unwrap().len() == 36);
    assert!(team["project_id"].is_i64());
    assert!(team["api_token"].as_str().unwrap().starts_with("phc_"));
    assert_eq!(team["name"], "Default project");
    assert_eq!(team["completed_snippet_onboarding"], false);
    assert_eq!(team["has_completed_onboarding_for"], Value::Null);
    assert_eq!(team["ingested_event"], false);
    assert_eq!(team["is_demo"], false);
    assert_eq!(team["timezone"], "UTC");
    assert_eq!(team["access_control"], false);
    assert!(team.get("test_account_filters").is_none());

    // organization: the full shape, levels of the requester.
    let o = &me["organization"];
    assert_eq!(o["id"], json!(org));
    assert_eq!(o["name"], "Acme");
    assert!(!o["slug"].as_str().unwrap().is_empty());
    assert_eq!(o["logo_media_id"], Value::Null);
    assert_iso_z(&o["created_at"]);
    assert_iso_z(&o["updated_at"]);
    assert_eq!(o["membership_level"], 1);
    assert_eq!(o["plugins_access_level"], 9);
    assert_eq!(o["teams"], json!([team.clone()]));
    assert_eq!(o["teams"][0]["id"], json!(team_id));
    assert_eq!(
        o["projects"],
        json!([{"id": team["project_id"], "organization_id": org, "name": "Default project"}])
    );
    assert_eq!(o["available_product_features"], json!([]));
    assert_eq!(o["is_member_join_email_enabled"], true);
    assert_eq!(o["metadata"], json!({"instance_tag": "none"}));
    assert_eq!(o["customer_id"], Value::Null);
    assert_eq!(o["enforce_2fa"], Value::Null);
    assert_eq!(o["members_can_invite"], true);
    assert_eq!(o["members_can_use_personal_api_keys"], true);
    assert_eq!(o["allow_publicly_shared_resources"], true);
    assert_eq!(o["member_count"], 2);
    assert_eq!(o["is_ai_data_processing_approved"], Value::Null);
    assert_eq!(o["default_experiment_stats_method"], "bayesian");
    assert_eq!(o["default_anonymize_ips"], false);
    assert_eq!(o["default_role_id"], Value::Null);
    assert_eq!(o["is_active"], true);
    assert_eq!(o["is_not_active_reason"], Value::Null);

    assert_eq!(
        me["organizations"],
        json!([{
            "id": org,
            "name": "Acme",
            "slug": o["slug"],
            "logo_media_id": null,
            "membership_level": 1,
            "members_can_use_personal_api_keys": true,
            "is_active": true,
            "is_not_active_reason": null,
        }])
    );

    // The same body however `@me` is spelled (and whether or not it came from the cache).
    for path in [
        "/api/users/@me",
        "/api/users/%40me/",
        "/api/users/%40me",
        "/api/users/@me/",
    ] {
        assert_eq!(app.get(path, &key).await.assert_ok(), &me, "{path}");
    }
    app.stop().await;
}

/// Test case 2: one OrganizationBasic per membership, each with the requester's own level.
async fn me_lists_every_membership_with_the_requesters_level(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app.user_with_key("multi@example.com", false, &["*"]).await;
    app.create_user("other-owner@example.com", false).await;
    let (other_org, other_team) = app.create_org("Other org", "other-owner@example.com").await;
    app.add_member(&other_org, "multi@example.com", MembershipLevel::Admin)
        .await;

    let me = app.get("/api/users/@me/", &key).await.assert_ok().clone();
    assert_user_shape(&me);
    let orgs = me["organizations"].as_array().unwrap();
    assert_eq!(orgs.len(), 2);
    assert_eq!(orgs[0]["name"], "Org of multi@example.com");
    assert_eq!(orgs[0]["membership_level"], 15);
    assert_eq!(orgs[1]["id"], json!(other_org));
    assert_eq!(orgs[1]["membership_level"], 8);
    // Joining made the new organization and its first team current.
    assert_eq!(me["organization"]["id"], json!(other_org));
    assert_eq!(me["organization"]["membership_level"], 8);
    assert_eq!(me["team"]["id"], json!(other_team));
    assert_eq!(me["organization"]["member_count"], 2);
    app.stop().await;
}

const ME_ONLY: &str = "As a non-staff user you're only allowed to access the `@me` user instance.";

/// Test case 6 (and 18): any value other than `@me` is refused to non-staff, even their own uuid,
/// on every route that resolves the path user.
async fn non_staff_may_only_use_at_me(db: Db) {
    let app = spawn_app(db).await;
    let (me, key) = app.user_with_key("plain@example.com", false, &["*"]).await;
    let (other, _) = app
        .user_with_key("someone@example.com", false, &["*"])
        .await;
    let before = app.user_record(other.id).await;
    let upper = me.uuid.to_uppercase();
    for segment in [
        me.uuid.as_str(),
        other.uuid.as_str(),
        upper.as_str(),
        "00000000-0000-0000-0000-000000000000",
        "not-a-uuid",
        "me",
        "%40ME",
    ] {
        let forbidden = |reply: crate::helpers::Reply| {
            reply.assert_error(
                403,
                "authentication_error",
                "permission_denied",
                ME_ONLY,
                None,
            )
        };
        forbidden(app.get(&format!("/api/users/{segment}/"), &key).await);
        forbidden(app.get(&format!("/api/users/{segment}"), &key).await);
        forbidden(
            app.patch(
                &format!("/api/users/{segment}/"),
                &key,
                json!({"first_name": "Mallory", "is_staff": true}),
            )
            .await,
        );
        forbidden(
            app.put(
                &format!("/api/users/{segment}/"),
                &key,
                json!({"email": "someone@example.com"}),
            )
            .await,
        );
        forbidden(
            app.get(&format!("/api/users/{segment}/hedgehog_config/"), &key)
                .await,
        );
        forbidden(
            app.patch(
                &format!("/api/users/{segment}/hedgehog_config/"),
                &key,
                json!({"color": "red"}),
            )
            .await,
        );
    }
    let after = app.user_record(other.id).await;
    assert_eq!(after.first_name, before.first_name);
    assert_eq!(after.hedgehog_config, None);
    assert!(!after.is_staff);
    app.stop().await;
}

/// Test case 8: staff read anyone active; `membership_level` and the visible teams describe the
/// requester, not the target.
async fn staff_reads_any_active_user_by_uuid(db: Db) {
    let app = spawn_app(db).await;
    // (Set up through admin operations before any request, so no `@me` is cached yet.)
    app.create_user("staff@example.com", true).await;
    let (staff_org, _) = app.create_org("Staff org", "staff@example.com").await;
    let staff_key = app.create_key("staff@example.com", &["user:read"]).await;
    let (stranger, _) = app
        .user_with_key("stranger@example.com", false, &["user:read"])
        .await;
    let member = app.create_user("member@example.com", false).await;
    app.add_member(&staff_org, "member@example.com", MembershipLevel::Member)
        .await;

    // A stranger: their own organization, in which the staff requester has no level.
    let reply = app
        .get(&format!("/api/users/{}/", stranger.uuid), &staff_key)
        .await;
    let body = reply.assert_ok();
    assert_user_shape(body);
    assert_eq!(body["uuid"], json!(stranger.uuid));
    assert_eq!(body["email"], "stranger@example.com");
    assert_eq!(body["is_staff"], false);
    assert_eq!(body["organization"]["name"], "Org of stranger@example.com");
    assert_eq!(body["organization"]["membership_level"], Value::Null);
    assert_eq!(body["organizations"][0]["membership_level"], Value::Null);
    assert_eq!(body["team"]["organization"], body["organization"]["id"]);
    // Only what the requester may see: none of a foreign organization's projects.
    assert_eq!(body["organization"]["teams"], json!([]));
    assert_eq!(body["organization"]["projects"], json!([]));
    assert_eq!(body["organization"]["member_count"], 1);
    assert_eq!(body["sensitive_session_expires_at"], Value::Null);

    // A member of the staff user's organization: the staff user's level (owner) is shown.
    for segment in [member.uuid.clone(), member.uuid.to_uppercase()] {
        let body = app
            .get(&format!("/api/users/{segment}"), &staff_key)
            .await
            .assert_ok()
            .clone();
        assert_eq!(body["uuid"], json!(member.uuid));
        assert_eq!(body["organization"]["id"], json!(staff_org));
        assert_eq!(body["organization"]["membership_level"], 15);
        assert_eq!(body["organizations"][0]["membership_level"], 15);
        assert_eq!(body["organization"]["teams"][0]["id"], body["team"]["id"]);
    }
    // Staff may use `@me` like anyone else, and their own uuid too.
    let me = app
        .get("/api/users/@me/", &staff_key)
        .await
        .assert_ok()
        .clone();
    assert_eq!(me["is_staff"], true);
    let own = app
        .get(
            &format!("/api/users/{}/", me["uuid"].as_str().unwrap()),
            &staff_key,
        )
        .await;
    assert_eq!(own.assert_ok(), &me);
    app.stop().await;
}

/// Test case 9: unknown, inactive and malformed uuids are all the same 404 for staff.
async fn staff_gets_404_for_unknown_inactive_or_malformed_uuids(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app.user_with_key("root@example.com", true, &["*"]).await;
    let gone = app.create_user("gone@example.com", false).await;
    let mut record = app.user_record(gone.id).await;
    record.is_active = false;
    app.store_user(&record).await;
    for segment in [
        "00000000-0000-0000-0000-000000000000",
        gone.uuid.as_str(),
        "not-a-uuid",
        "12345",
        "me",
    ] {
        let not_found = |reply: crate::helpers::Reply| {
            reply.assert_error(404, "invalid_request", "not_found", "Not found.", None)
        };
        not_found(app.get(&format!("/api/users/{segment}/"), &key).await);
        not_found(
            app.patch(
                &format!("/api/users/{segment}/"),
                &key,
                json!({"first_name": "x"}),
            )
            .await,
        );
        not_found(
            app.get(&format!("/api/users/{segment}/hedgehog_config/"), &key)
                .await,
        );
        not_found(
            app.patch(
                &format!("/api/users/{segment}/hedgehog_config"),
                &key,
                json!({}),
            )
            .await,
        );
    }
    assert_eq!(app.user_record(gone.id).await.first_name, "Test");
    app.stop().await;
}

/// A user who belongs to no organization: nulls and an empty list, and nothing is saved.
async fn user_without_memberships_has_no_team_or_organization(db: Db) {
    let app = spawn_app(db).await;
    let loner = app.create_user("loner@example.com", false).await;
    let key = app.create_key("loner@example.com", &["user:read"]).await;
    let me = app.get("/api/users/@me/", &key).await.assert_ok().clone();
    assert_user_shape(&me);
    assert_eq!(me["team"], Value::Null);
    assert_eq!(me["organization"], Value::Null);
    assert_eq!(me["organizations"], json!([]));
    assert_eq!(me["has_sso_enforcement"], false);
    let record = app.user_record(loner.id).await;
    assert_eq!(record.current_organization_id, None);
    assert_eq!(record.current_team_id, None);
    app.stop().await;
}

/// users.md §3.2: an unset current organization becomes the first membership's, an unset current
/// team the lowest-id team of the current organization, and both are saved.
async fn missing_current_organization_and_team_are_filled_and_saved(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("fill@example.com", false, &["*"]).await;
    let first = app.get("/api/users/@me/", &key).await.assert_ok().clone();
    let org_id = first["organization"]["id"].as_str().unwrap().to_string();
    let first_team = first["team"]["id"].as_i64().unwrap();
    let second_team = app.create_team(&org_id, "Second").await;
    app.create_user("elsewhere@example.com", false).await;
    let (later_org, _) = app.create_org("Later", "elsewhere@example.com").await;
    app.add_member(&later_org, "fill@example.com", MembershipLevel::Member)
        .await;

    // Both unset: the first organization joined and its first team.
    let mut record = app.user_record(user.id).await;
    record.current_organization_id = None;
    record.current_team_id = None;
    app.store_user(&record).await;
    let me = app
        .patch("/api/users/@me/", &key, json!({}))
        .await
        .assert_ok()
        .clone();
    assert_eq!(me["organization"]["id"], json!(org_id));
    assert_eq!(me["team"]["id"], json!(first_team));
    let saved = app.user_record(user.id).await;
    assert_eq!(
        saved.current_organization_id.map(|o| o.to_string()),
        Some(org_id.clone())
    );
    assert_eq!(saved.current_team_id, Some(first_team));

    // Only the team unset: the lowest-id team of the current organization.
    let mut record = app.user_record(user.id).await;
    record.current_team_id = None;
    app.store_user(&record).await;
    let me = app
        .patch("/api/users/@me/", &key, json!({}))
        .await
        .assert_ok()
        .clone();
    assert_eq!(me["team"]["id"], json!(first_team));
    assert_eq!(
        me["organization"]["teams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![first_team, second_team]
    );
    assert_eq!(
        app.user_record(user.id).await.current_team_id,
        Some(first_team)
    );
    app.stop().await;
}

/// Test case 43.
async fn stored_null_shortcut_position_renders_above(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("short@example.com", false, &["*"]).await;
    assert_eq!(app.user_record(user.id).await.shortcut_position, None);
    let me = app.get("/api/users/@me/", &key).await.assert_ok().clone();
    assert_eq!(me["shortcut_position"], "above");
    let me = app
        .patch(
            "/api/users/@me/",
            &key,
            json!({"shortcut_position": "below"}),
        )
        .await
        .assert_ok()
        .clone();
    assert_eq!(me["shortcut_position"], "below");
    let me = app
        .patch("/api/users/@me/", &key, json!({"shortcut_position": null}))
        .await
        .assert_ok()
        .clone();
    assert_eq!(me["shortcut_position"], "above");
    assert_eq!(app.user_record(user.id).await.shortcut_position, None);
    app.stop().await;
}

/// The cached `@me` of a key never outlives a write made through the API.
async fn me_cache_follows_writes_through_the_api(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app.user_with_key("cache@example.com", false, &["*"]).await;
    let other_key = app.create_key("cache@example.com", &["user:read"]).await;
    for k in [&key, &other_key] {
        assert_eq!(
            app.get("/api/users/@me/", k).await.assert_ok()["first_name"],
            "Test"
        );
    }
    app.patch("/api/users/@me/", &key, json!({"first_name": "Fresh"}))
        .await
        .assert_ok();
    for k in [&key, &other_key] {
        assert_eq!(
            app.get("/api/users/@me/", k).await.assert_ok()["first_name"],
            "Fresh"
        );
    }
    app.patch(
        "/api/users/@me/hedgehog_config/",
        &key,
        json!({"color": "blue"}),
    )
    .await
    .assert_ok();
    assert_eq!(
        app.get("/api/users/@me", &other_key).await.assert_ok()["hedgehog_config"],
        json!({"color": "blue"})
    );
    app.stop().await;
}

/// Admin commands write straight to the database while the server runs; a cached `@me` picks their
/// changes up through the invalidation feed (bounded wait, no restart).
async fn me_cache_follows_writes_made_outside_the_api(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app
        .user_with_key("outside@example.com", false, &["user:read"])
        .await;
    for _ in 0..2 {
        let me = app.get("/api/users/@me/", &key).await.assert_ok().clone();
        assert_eq!(me["organizations"].as_array().unwrap().len(), 1);
    }
    app.create_user("host@example.com", false).await;
    let (org, team) = app.create_org("Host", "host@example.com").await;
    app.add_member(&org, "outside@example.com", MembershipLevel::Admin)
        .await;
    let me = eventually(
        "the new membership to show",
        std::time::Duration::from_secs(10),
        || async {
            let me = app.get("/api/users/@me/", &key).await.assert_ok().clone();
            (me["organizations"].as_array().unwrap().len() == 2).then_some(me)
        },
    )
    .await;
    assert_eq!(me["organization"]["id"], json!(org));
    assert_eq!(me["organization"]["membership_level"], 8);
    assert_eq!(me["team"]["id"], json!(team));
    assert_eq!(me["organization"]["member_count"], 2);
    app.stop().await;
}

/// users.md §0.1: the `{uuid}` segment matches `[^/.]+`, so a value with a dot (however encoded)
/// matches no route, and neither does an unknown action: `Endpoint not found.`, whoever asks.
async fn paths_that_match_no_user_route_are_404(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app.user_with_key("routes@example.com", true, &["*"]).await;
    for path in [
        "/api/users/a.b/",
        "/api/users/@me.json",
        "/api/users/@me.json/",
        "/api/users/%40me%2Ejson/",
        "/api/users/@me./hedgehog_config/",
        "/api/users/@me/nope/",
        "/api/users/@me/hedgehog_config/extra/",
        "/api/users/@me/scene_personalisation/x",
    ] {
        // (Methods a route does not serve at all still answer 405 before the segment is read.)
        for (method, key) in [
            (Method::GET, None),
            (Method::GET, Some(key.as_str())),
            (Method::PATCH, Some(key.as_str())),
        ] {
            app.call(method.clone(), path, key, Some(json!({})))
                .await
                .assert_error(
                    404,
                    "invalid_request",
                    "not_found",
                    "Endpoint not found.",
                    None,
                );
        }
    }
    for (method, path) in [
        (Method::POST, "/api/users/@me./scene_personalisation/"),
        (Method::POST, "/api/users/x.y/scene_personalisation"),
        (Method::DELETE, "/api/users/a.b/"),
        (Method::PUT, "/api/users/@me.json"),
    ] {
        app.call(method, path, Some(&key), Some(json!({})))
            .await
            .assert_error(
                404,
                "invalid_request",
                "not_found",
                "Endpoint not found.",
                None,
            );
    }
    // A segment that is not UTF-8 once decoded is just a value that names nobody.
    let (_, plain) = app.user_with_key("plain@example.com", false, &["*"]).await;
    app.get("/api/users/%FF/", &plain).await.assert_error(
        403,
        "authentication_error",
        "permission_denied",
        ME_ONLY,
        None,
    );
    app.get("/api/users/%FF/", &key).await.assert_error(
        404,
        "invalid_request",
        "not_found",
        "Not found.",
        None,
    );
    app.stop().await;
}

/// A team hoglet creates is its own project; a team whose `project_id` is stored (as an import
/// from PostHog keeps it) shows that project everywhere `@me` names it.
async fn a_teams_project_id_is_its_own_id_unless_stored(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app
        .user_with_key("projects@example.com", false, &["user:read"])
        .await;
    let (org, team_id) = app.create_org("Projects", "projects@example.com").await;
    let second = app.create_team(&org, "Second").await;
    crate::store_contract::raw_exec(
        &app.db,
        &format!("UPDATE teams SET project_id = 9001 WHERE id = {second}"),
        &format!("UPDATE teams SET project_id = 9001 WHERE id = {second}"),
    )
    .await;
    let me = app.get("/api/users/@me/", &key).await;
    let me = me.assert_ok();
    assert_eq!(me["team"]["id"], json!(team_id));
    assert_eq!(me["team"]["project_id"], json!(team_id));
    let teams = me["organization"]["teams"].as_array().unwrap();
    let ids: Vec<(Value, Value)> = teams
        .iter()
        .map(|t| (t["id"].clone(), t["project_id"].clone()))
        .collect();
    assert_eq!(
        ids,
        [
            (json!(team_id), json!(team_id)),
            (json!(second), json!(9001))
        ]
    );
    let projects: Vec<Value> = me["organization"]["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    assert_eq!(projects, [json!(team_id), json!(9001)]);
    assert_eq!(
        app.store.team(second).await.unwrap().unwrap().project_id,
        9001
    );
}
