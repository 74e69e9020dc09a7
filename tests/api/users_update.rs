//! `PATCH` and `PUT /api/users/{uuid}/` with personal API keys: every writable field, its
//! validation errors, the identity guard and the staff rule (users.md §2.6, §4.4, §4.5; test cases
//! 13–23, 30, 33–41).

use hoglet::store::{MembershipLevel, UserRecord};
use reqwest::Method;
use serde_json::{Value, json};

use crate::db_tests;
use crate::helpers::{Db, PASSWORD, Reply, TestApp, TestUser, spawn_app, spawn_app_with};
use crate::users::{assert_user_shape, default_notification_settings};

db_tests!(
    patch_updates_many_fields_and_ignores_read_only_ones,
    read_only_and_unknown_keys_are_ignored,
    names_follow_drf_char_field_rules,
    keys_cannot_change_email_or_password,
    case_only_email_change_passes_the_guard,
    is_staff_needs_a_staff_requester,
    boolean_fields_accept_drf_spellings,
    choice_fields_accept_only_their_values,
    passkeys_cannot_be_enabled_without_passkeys,
    notification_settings_merge_over_defaults,
    notification_settings_errors,
    switching_current_organization_and_team,
    current_organization_and_team_errors,
    json_fields_are_replaced_wholesale,
    first_error_in_field_order_wins,
    bodies_that_are_not_objects,
    form_and_multipart_bodies,
    oversized_bodies_are_refused,
    write_scopes,
    put_requires_email_and_password,
);

const VALIDATION: &str = "validation_error";

/// Asserts a 400 validation error.
#[track_caller]
fn invalid(reply: &Reply, code: &str, detail: &str, attr: Option<&str>) {
    reply.assert_error(400, VALIDATION, code, detail, attr);
}

/// Everything about a stored user that a failed PATCH must leave alone.
fn snapshot(u: &UserRecord) -> Value {
    json!({
        "email": u.email,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "is_staff": u.is_staff,
        "current_organization_id": u.current_organization_id,
        "current_team_id": u.current_team_id,
        "partial_notification_settings": u.partial_notification_settings,
        "anonymize_data": u.anonymize_data,
        "allow_impersonation": u.allow_impersonation,
        "toolbar_mode": u.toolbar_mode,
        "theme_mode": u.theme_mode,
        "hedgehog_config": u.hedgehog_config,
        "events_column_config": u.events_column_config,
        "has_seen_product_intro_for": u.has_seen_product_intro_for,
        "role_at_organization": u.role_at_organization,
        "allow_sidebar_suggestions": u.allow_sidebar_suggestions,
        "shortcut_position": u.shortcut_position,
        "passkeys_enabled_for_2fa": u.passkeys_enabled_for_2fa,
        "password_usable": u.password.is_usable(),
        "pending_email": u.pending_email,
    })
}

/// Sends a PATCH that must fail and checks that nothing was written.
async fn patch_fails(app: &TestApp, user: &TestUser, key: &str, body: Value) -> Reply {
    let before = snapshot(&app.user_record(user.id).await);
    let reply = app.patch("/api/users/@me/", key, body.clone()).await;
    assert!(
        reply.status.is_client_error(),
        "{body} → {} {}",
        reply.status,
        reply.text
    );
    let after = snapshot(&app.user_record(user.id).await);
    assert_eq!(after, before, "a refused PATCH wrote something: {body}");
    reply
}

async fn patch_ok(app: &TestApp, key: &str, body: Value) -> Value {
    let reply = app.patch("/api/users/@me/", key, body.clone()).await;
    assert_eq!(reply.status.as_u16(), 200, "{body} → {}", reply.text);
    assert_user_shape(&reply.json);
    reply.json
}

/// Test case 13.
async fn patch_updates_many_fields_and_ignores_read_only_ones(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("cooper@example.com", false, &["*"]).await;
    app.user_with_key("other@example.com", false, &["*"]).await;
    let (other_org, other_team) = app.create_org("Elsewhere", "other@example.com").await;
    let before = app.get("/api/users/@me/", &key).await.assert_ok().clone();

    let me = patch_ok(
        &app,
        &key,
        json!({
            "first_name": "Cooper",
            "anonymize_data": true,
            "events_column_config": {"active": ["column_1", "column_2"]},
            "notification_settings": {"plugin_disabled": false},
            "has_seen_product_intro_for": {"feature_flags": true},
            "uuid": 1,
            "id": 1,
            "organization": other_org,
            "team": other_team,
            "role_at_organization": "engineering",
        }),
    )
    .await;
    assert_eq!(me["first_name"], "Cooper");
    assert_eq!(me["anonymize_data"], true);
    assert_eq!(
        me["events_column_config"],
        json!({"active": ["column_1", "column_2"]})
    );
    assert_eq!(me["notification_settings"]["plugin_disabled"], false);
    assert_eq!(me["notification_settings"]["discussions_mentioned"], true);
    assert_eq!(
        me["has_seen_product_intro_for"],
        json!({"feature_flags": true})
    );
    assert_eq!(me["role_at_organization"], "engineering");
    assert_eq!(me["uuid"], json!(user.uuid));
    assert_eq!(me["id"], json!(user.id));
    assert_eq!(me["organization"]["id"], before["organization"]["id"]);
    assert_eq!(me["team"]["id"], before["team"]["id"]);

    // Stored, not just echoed.
    let again = app.get("/api/users/@me/", &key).await.assert_ok().clone();
    assert_eq!(again, me);
    let stored = app.user_record(user.id).await;
    assert_eq!(stored.first_name, "Cooper");
    assert_eq!(stored.role_at_organization.as_deref(), Some("engineering"));
    app.stop().await;
}

/// Test cases 14 and 15: read-only and unknown keys change nothing and cause no error.
async fn read_only_and_unknown_keys_are_ignored(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("ro@example.com", false, &["*"]).await;
    let before = app.get("/api/users/@me/", &key).await.assert_ok().clone();
    let other_uuid = uuid::Uuid::new_v4().to_string();
    for body in [
        json!({"date_joined": "2001-01-01T00:00:00Z"}),
        json!({"uuid": other_uuid}),
        json!({"distinct_id": "forged"}),
        json!({"pending_email": "pending@example.com"}),
        json!({"is_email_verified": true}),
        json!({"has_password": false}),
        json!({"is_2fa_enabled": true}),
        json!({"has_social_auth": true}),
        json!({"has_sso_enforcement": true}),
        json!({"is_impersonated": true}),
        json!({"sensitive_session_expires_at": "2030-01-01T00:00:00+00:00"}),
        json!({"scene_personalisation": [{"scene": "x", "dashboard": 1}]}),
        json!({"organizations": []}),
        json!({"id": 99, "team": null, "organization": null}),
        json!({"organization_name": "x"}),
        json!({}),
    ] {
        let me = patch_ok(&app, &key, body.clone()).await;
        assert_eq!(me, before, "{body}");
    }
    for _ in 0..10 {
        patch_ok(&app, &key, json!({"organization_name": "x"})).await;
    }
    let stored = app.user_record(user.id).await;
    assert_eq!(stored.pending_email, None);
    assert_eq!(stored.is_email_verified, None);
    assert_eq!(stored.uuid.to_string(), user.uuid);
    app.stop().await;
}

/// `first_name`/`last_name`: DRF `CharField(max_length=150, allow_blank=True)`.
async fn names_follow_drf_char_field_rules(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("names@example.com", false, &["*"]).await;
    for field in ["first_name", "last_name"] {
        for (sent, stored) in [
            (json!("Cooper"), "Cooper".to_string()),
            (json!("  Padded  "), "Padded".into()),
            (json!(""), "".into()),
            (json!("   "), "".into()),
            (json!(123), "123".into()),
            (json!(-4), "-4".into()),
            (json!(1.5), "1.5".into()),
            (json!("Zoë 🦔"), "Zoë 🦔".into()),
            (json!("x".repeat(150)), "x".repeat(150)),
            (json!("é".repeat(150)), "é".repeat(150)),
        ] {
            let me = patch_ok(&app, &key, json!({ field: sent })).await;
            assert_eq!(me[field], stored, "{field} = {sent}");
        }
        let reply = patch_fails(&app, &user, &key, json!({ field: null })).await;
        invalid(&reply, "null", "This field may not be null.", Some(field));
        for long in ["x".repeat(151), "é".repeat(151)] {
            let reply = patch_fails(&app, &user, &key, json!({ field: long })).await;
            invalid(
                &reply,
                "max_length",
                "Ensure this field has no more than 150 characters.",
                Some(field),
            );
        }
        for bad in [
            json!(true),
            json!(false),
            json!({"a": 1}),
            json!([]),
            json!(["x"]),
        ] {
            let reply = patch_fails(&app, &user, &key, json!({ field: bad })).await;
            invalid(&reply, "invalid_input", "Not a valid string.", Some(field));
        }
        let reply = patch_fails(&app, &user, &key, json!({ field: "a\u{0}b" })).await;
        invalid(
            &reply,
            "null_characters_not_allowed",
            "Null characters are not allowed.",
            Some(field),
        );
    }
    app.stop().await;
}

const IDENTITY: &str = "You can only change your email or password from the PostHog app, not with an API key or token.";

/// Test cases 30 and 34 (with a key): a different email, or any password, is refused before any
/// field validation, whatever the key's scopes.
async fn keys_cannot_change_email_or_password(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("alpha@example.com", false, &["*"]).await;
    let (_, legacy) = app.create_legacy_key("alpha@example.com").await;
    app.create_user("taken@example.com", false).await;
    for k in [&key, &legacy] {
        for body in [
            json!({"email": "new@example.com"}),
            json!({"email": "TAKEN@example.com"}),
            json!({"email": "not-an-email"}),
            json!({"email": ""}),
            json!({"email": null}),
            json!({"email": 5}),
            json!({"email": ["alpha@example.com"]}),
            json!({"password": "whatever-Str0ng-passw0rd"}),
            json!({"password": ""}),
            json!({"password": null}),
            json!({"password": "x", "current_password": PASSWORD}),
            json!({"email": "alpha@example.com", "password": "x"}),
            // The guard answers before field errors and before the staff rule.
            json!({"first_name": null, "email": "new@example.com"}),
            json!({"is_staff": true, "password": "x"}),
            json!({"role_at_organization": "ceo", "email": "x@y.z"}),
        ] {
            let reply = patch_fails(&app, &user, k, body).await;
            reply.assert_error(
                403,
                "authentication_error",
                "permission_denied",
                IDENTITY,
                None,
            );
        }
    }
    // `current_password` alone touches nothing and is not guarded.
    patch_ok(&app, &key, json!({"current_password": "wrong"})).await;
    assert_eq!(app.user_record(user.id).await.email, "alpha@example.com");
    app.stop().await;
}

/// Test case 33: the same address in another case (or with spaces) is not a change to the guard,
/// and the new casing is stored as sent.
async fn case_only_email_change_passes_the_guard(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app
        .user_with_key("alpha@example.com", false, &["user:write"])
        .await;
    let me = patch_ok(&app, &key, json!({"email": "ALPHA@example.com"})).await;
    assert_eq!(me["email"], "ALPHA@example.com");
    assert_eq!(me["pending_email"], Value::Null);
    assert_eq!(app.user_record(user.id).await.email, "ALPHA@example.com");
    let me = patch_ok(&app, &key, json!({"email": "  Alpha@Example.COM "})).await;
    assert_eq!(me["email"], "Alpha@Example.COM");
    let me = patch_ok(
        &app,
        &key,
        json!({"email": "alpha@example.com", "first_name": "A"}),
    )
    .await;
    assert_eq!(me["email"], "alpha@example.com");
    assert_eq!(me["first_name"], "A");
    // The stored address still works case-insensitively for uniqueness and lookups.
    let found = app.store.user_by_email("ALPHA@EXAMPLE.COM").await.unwrap();
    assert_eq!(found.map(|u| u.id), Some(user.id));
    app.stop().await;
}

const NOT_STAFF: &str = "You are not a staff user, contact your instance admin.";
const ME_ONLY: &str = "As a non-staff user you're only allowed to access the `@me` user instance.";

/// Test cases 16–18.
async fn is_staff_needs_a_staff_requester(db: Db) {
    let app = spawn_app(db).await;
    let (plain, plain_key) = app.user_with_key("plain@example.com", false, &["*"]).await;
    let (staff, staff_key) = app
        .user_with_key("staff@example.com", true, &["user:write"])
        .await;
    for body in [
        json!({"is_staff": true}),
        json!({"is_staff": false}),
        json!({"is_staff": null}),
        json!({"is_staff": "maybe"}),
        json!({"first_name": null, "is_staff": false}),
        json!({"is_staff": false, "role_at_organization": "ceo", "first_name": "Eve"}),
    ] {
        let reply = patch_fails(&app, &plain, &plain_key, body).await;
        reply.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            NOT_STAFF,
            None,
        );
    }
    assert!(!app.user_record(plain.id).await.is_staff);

    // Non-staff on another uuid: the `@me` rule answers first; the target is unchanged.
    let reply = app
        .patch(
            &format!("/api/users/{}/", staff.uuid),
            &plain_key,
            json!({"is_staff": false}),
        )
        .await;
    reply.assert_error(
        403,
        "authentication_error",
        "permission_denied",
        ME_ONLY,
        None,
    );
    assert!(app.user_record(staff.id).await.is_staff);

    // Staff promote and demote someone else, and may send `is_staff` about themselves.
    let path = format!("/api/users/{}/", plain.uuid);
    let reply = app
        .patch(&path, &staff_key, json!({"is_staff": true}))
        .await;
    assert_eq!(reply.assert_ok()["is_staff"], true);
    assert_eq!(reply.json["uuid"], json!(plain.uuid));
    assert!(app.user_record(plain.id).await.is_staff);
    let reply = app
        .patch(&path, &staff_key, json!({"is_staff": "false"}))
        .await;
    assert_eq!(reply.assert_ok()["is_staff"], false);
    assert!(!app.user_record(plain.id).await.is_staff);
    let reply = app
        .patch(
            &path,
            &staff_key,
            json!({"first_name": "Renamed", "is_staff": 0}),
        )
        .await;
    assert_eq!(reply.assert_ok()["first_name"], "Renamed");
    assert_eq!(app.user_record(plain.id).await.first_name, "Renamed");
    assert_eq!(
        patch_ok(&app, &staff_key, json!({"is_staff": true})).await["is_staff"],
        true
    );
    // A staff caller gets ordinary field errors.
    let reply = patch_fails(&app, &staff, &staff_key, json!({"is_staff": "maybe"})).await;
    invalid(
        &reply,
        "invalid_input",
        "Must be a valid boolean.",
        Some("is_staff"),
    );
    let reply = patch_fails(&app, &staff, &staff_key, json!({"is_staff": null})).await;
    invalid(
        &reply,
        "null",
        "This field may not be null.",
        Some("is_staff"),
    );
    let reply = patch_fails(&app, &staff, &staff_key, json!({"is_staff": ""})).await;
    invalid(
        &reply,
        "invalid_input",
        "Must be a valid boolean.",
        Some("is_staff"),
    );
    // The demoted user's key now gets the staff rule again.
    let reply = patch_fails(&app, &plain, &plain_key, json!({"is_staff": true})).await;
    reply.assert_error(
        403,
        "authentication_error",
        "permission_denied",
        NOT_STAFF,
        None,
    );
    app.stop().await;
}

fn truthy() -> Vec<Value> {
    let mut v = Vec::new();
    for s in [
        "true", "True", "TRUE", "tRuE", "t", "T", "yes", "YES", "y", "Y", "on", "ON", "1",
    ] {
        v.push(json!(s));
    }
    v.extend([json!(true), json!(1), json!(1.0)]);
    v
}

fn falsy() -> Vec<Value> {
    let mut v = Vec::new();
    for s in [
        "false", "False", "FALSE", "f", "F", "no", "NO", "n", "N", "off", "OFF", "0",
    ] {
        v.push(json!(s));
    }
    v.extend([json!(false), json!(0), json!(0.0)]);
    v
}

/// Nullable `BooleanField`s: DRF's spellings, null/"null"/"" mean null, anything else is refused.
async fn boolean_fields_accept_drf_spellings(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("bools@example.com", false, &["*"]).await;
    for field in [
        "anonymize_data",
        "allow_impersonation",
        "allow_sidebar_suggestions",
    ] {
        for value in truthy() {
            let me = patch_ok(&app, &key, json!({ field: value.clone() })).await;
            assert_eq!(me[field], true, "{field} = {value}");
        }
        for value in falsy() {
            let me = patch_ok(&app, &key, json!({ field: value.clone() })).await;
            assert_eq!(me[field], false, "{field} = {value}");
        }
        for value in [json!(null), json!("null"), json!("NULL"), json!("")] {
            patch_ok(&app, &key, json!({ field: true })).await;
            let me = patch_ok(&app, &key, json!({ field: value.clone() })).await;
            assert_eq!(me[field], Value::Null, "{field} = {value}");
        }
        for value in [
            json!("maybe"),
            json!("tru"),
            json!(" true"),
            json!(2),
            json!(-1),
            json!(0.5),
            json!([]),
            json!([true]),
            json!({}),
        ] {
            let reply = patch_fails(&app, &user, &key, json!({ field: value })).await;
            invalid(
                &reply,
                "invalid_input",
                "Must be a valid boolean.",
                Some(field),
            );
        }
    }
    app.stop().await;
}

/// Test case 40 and the other enumerations of users.md §3.4.
async fn choice_fields_accept_only_their_values(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app
        .user_with_key("choices@example.com", false, &["*"])
        .await;
    let nullable: &[(&str, &[&str])] = &[
        ("toolbar_mode", &["disabled", "toolbar"]),
        ("theme_mode", &["light", "dark", "system"]),
        ("shortcut_position", &["above", "below", "hidden"]),
    ];
    for (field, values) in nullable {
        for value in *values {
            let me = patch_ok(&app, &key, json!({ *field: value })).await;
            assert_eq!(me[*field], *value);
        }
        patch_ok(&app, &key, json!({ *field: "" })).await;
        let me = patch_ok(&app, &key, json!({ *field: null })).await;
        if *field != "shortcut_position" {
            assert_eq!(me[*field], Value::Null);
        }
        for (bad, shown) in [
            (json!("foo"), "foo"),
            (json!("Light"), "Light"),
            (json!(" dark"), " dark"),
            (json!(5), "5"),
            (json!(true), "True"),
            (json!(["light"]), "['light']"),
        ] {
            let reply = patch_fails(&app, &user, &key, json!({ *field: bad })).await;
            invalid(
                &reply,
                "invalid_choice",
                &format!("\"{shown}\" is not a valid choice."),
                Some(field),
            );
        }
    }
    let me = patch_ok(&app, &key, json!({"toolbar_mode": ""})).await;
    assert_eq!(me["toolbar_mode"], "");
    let me = patch_ok(&app, &key, json!({"theme_mode": ""})).await;
    assert_eq!(me["theme_mode"], "");

    for role in [
        "engineering",
        "data",
        "product",
        "founder",
        "leadership",
        "marketing",
        "sales",
        "other",
    ] {
        let me = patch_ok(&app, &key, json!({"role_at_organization": role})).await;
        assert_eq!(me["role_at_organization"], role);
    }
    for (bad, shown) in [(json!("ceo"), "ceo"), (json!(""), ""), (json!(1), "1")] {
        let reply = patch_fails(&app, &user, &key, json!({"role_at_organization": bad})).await;
        invalid(
            &reply,
            "invalid_choice",
            &format!("\"{shown}\" is not a valid choice."),
            Some("role_at_organization"),
        );
    }
    let reply = patch_fails(&app, &user, &key, json!({"role_at_organization": null})).await;
    invalid(
        &reply,
        "null",
        "This field may not be null.",
        Some("role_at_organization"),
    );
    app.stop().await;
}

/// Test case 41: hoglet has no passkeys, so enabling them for 2FA is always refused.
async fn passkeys_cannot_be_enabled_without_passkeys(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("pk@example.com", false, &["*"]).await;
    for value in [json!(true), json!("true"), json!("yes"), json!(1)] {
        let reply = patch_fails(
            &app,
            &user,
            &key,
            json!({"passkeys_enabled_for_2fa": value, "first_name": "Never"}),
        )
        .await;
        invalid(
            &reply,
            "no_passkeys",
            "You must have at least one passkey set up before enabling passkeys for 2FA.",
            Some("passkeys_enabled_for_2fa"),
        );
    }
    let me = patch_ok(&app, &key, json!({"passkeys_enabled_for_2fa": false})).await;
    assert_eq!(me["passkeys_enabled_for_2fa"], false);
    let me = patch_ok(&app, &key, json!({"passkeys_enabled_for_2fa": null})).await;
    assert_eq!(me["passkeys_enabled_for_2fa"], Value::Null);
    assert_eq!(me["is_2fa_enabled"], false);
    let me = patch_ok(&app, &key, json!({"passkeys_enabled_for_2fa": "off"})).await;
    assert_eq!(me["passkeys_enabled_for_2fa"], false);
    let reply = patch_fails(&app, &user, &key, json!({"passkeys_enabled_for_2fa": "x"})).await;
    invalid(
        &reply,
        "invalid_input",
        "Must be a valid boolean.",
        Some("passkeys_enabled_for_2fa"),
    );
    app.stop().await;
}

/// Test cases 35, 36 and 39: the full effective map is stored and shown; id maps are merged.
async fn notification_settings_merge_over_defaults(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("notes@example.com", false, &["*"]).await;
    let org = app.get("/api/users/@me/", &key).await.assert_ok()["organization"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Test case 39: one key on a fresh user.
    let me = patch_ok(
        &app,
        &key,
        json!({"notification_settings": {"all_weekly_digest_disabled": true}}),
    )
    .await;
    let mut expected = default_notification_settings();
    expected["all_weekly_digest_disabled"] = json!(true);
    assert_eq!(me["notification_settings"], expected);
    assert_eq!(
        app.user_record(user.id).await.partial_notification_settings,
        Some(expected.clone()),
        "the complete merged map is stored"
    );

    // Test case 35.
    let me = patch_ok(
        &app,
        &key,
        json!({"notification_settings": {
            "plugin_disabled": false,
            "discussions_mentioned": false,
            "error_tracking_issue_assigned": false,
            "project_weekly_digest_disabled": {"123": true},
            "all_weekly_digest_disabled": true,
            "data_pipeline_error_threshold": 0.1,
            "materialized_view_sync_failed": true,
        }}),
    )
    .await;
    let settings = &me["notification_settings"];
    assert_eq!(
        settings,
        &json!({
            "plugin_disabled": false,
            "discussions_mentioned": false,
            "project_weekly_digest_disabled": {"123": true},
            "all_weekly_digest_disabled": true,
            "error_tracking_issue_assigned": false,
            "error_tracking_weekly_digest": true,
            "data_pipeline_error_threshold": 0.1,
            "project_api_key_exposed": true,
            "materialized_view_sync_failed": true,
            "web_analytics_weekly_digest": true,
            "organization_member_join_email_disabled": {},
        })
    );
    assert_eq!(
        app.user_record(user.id)
            .await
            .partial_notification_settings
            .as_ref(),
        Some(settings)
    );

    // Test case 36: maps merge (new ids added, existing overwritten, nothing removed).
    let me = patch_ok(
        &app,
        &key,
        json!({"notification_settings": {"project_weekly_digest_disabled": {"456": true}}}),
    )
    .await;
    assert_eq!(
        me["notification_settings"]["project_weekly_digest_disabled"],
        json!({"123": true, "456": true})
    );
    let me = patch_ok(
        &app,
        &key,
        json!({"notification_settings": {"project_weekly_digest_disabled": {"123": false}}}),
    )
    .await;
    assert_eq!(
        me["notification_settings"]["project_weekly_digest_disabled"],
        json!({"123": false, "456": true})
    );
    let other = uuid::Uuid::new_v4().to_string();
    for (id, flag) in [(&org, true), (&other, true), (&org, false)] {
        patch_ok(
            &app,
            &key,
            json!({"notification_settings": {"organization_member_join_email_disabled": {id: flag}}}),
        )
        .await;
    }
    let me = app.get("/api/users/@me/", &key).await.assert_ok().clone();
    assert_eq!(
        me["notification_settings"]["organization_member_join_email_disabled"],
        json!({org.clone(): false, other.clone(): true})
    );
    // Earlier scalar changes survived the map merges; an empty object changes nothing.
    assert_eq!(me["notification_settings"]["plugin_disabled"], false);
    let unchanged = patch_ok(&app, &key, json!({"notification_settings": {}})).await;
    assert_eq!(
        unchanged["notification_settings"],
        me["notification_settings"]
    );

    // The threshold is a number in [0, 1], stored as a float.
    for (sent, shown) in [
        (json!(0), json!(0.0)),
        (json!(1), json!(1.0)),
        (json!(0.5), json!(0.5)),
    ] {
        let me = patch_ok(
            &app,
            &key,
            json!({"notification_settings": {"data_pipeline_error_threshold": sent}}),
        )
        .await;
        assert_eq!(
            me["notification_settings"]["data_pipeline_error_threshold"],
            shown
        );
    }
    app.stop().await;
}

/// Test cases 37 and 38 and the rest of users.md §4.4.7: every message, always on attr
/// `notification_settings`, and nothing stored.
async fn notification_settings_errors(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app
        .user_with_key("badnotes@example.com", false, &["*"])
        .await;
    patch_ok(
        &app,
        &key,
        json!({"notification_settings": {"project_weekly_digest_disabled": {"1": true}}}),
    )
    .await;
    let attr = Some("notification_settings");
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"invalid_key": true}),
            "Key invalid_key is not valid as a key for notification settings",
        ),
        (
            json!({"plugin_disabled": false, "invalid_key": true}),
            "Key invalid_key is not valid as a key for notification settings",
        ),
        (
            json!({"invalid_key": true, "plugin_disabled": "x"}),
            "Key invalid_key is not valid as a key for notification settings",
        ),
        (
            json!({"project_weekly_digest_disabled": {"123": "not a boolean"}}),
            "Notification setting values must be boolean, got <class 'str'> instead",
        ),
        (
            json!({"project_weekly_digest_disabled": {"123": 1}}),
            "Notification setting values must be boolean, got <class 'int'> instead",
        ),
        (
            json!({"project_weekly_digest_disabled": {"123": 1.5}}),
            "Notification setting values must be boolean, got <class 'float'> instead",
        ),
        (
            json!({"organization_member_join_email_disabled": {"x": null}}),
            "Notification setting values must be boolean, got <class 'NoneType'> instead",
        ),
        (
            json!({"organization_member_join_email_disabled": {"x": []}}),
            "Notification setting values must be boolean, got <class 'list'> instead",
        ),
        (
            json!({"project_weekly_digest_disabled": {"1": false, "2": {}}}),
            "Notification setting values must be boolean, got <class 'dict'> instead",
        ),
        (
            json!({"project_weekly_digest_disabled": true}),
            "project_weekly_digest_disabled must be a dictionary mapping IDs to boolean values",
        ),
        (
            json!({"organization_member_join_email_disabled": ["x"]}),
            "organization_member_join_email_disabled must be a dictionary mapping IDs to boolean values",
        ),
        (
            json!({"data_pipeline_error_threshold": "0.5"}),
            "data_pipeline_error_threshold must be a number, got <class 'str'> instead",
        ),
        (
            json!({"data_pipeline_error_threshold": null}),
            "data_pipeline_error_threshold must be a number, got <class 'NoneType'> instead",
        ),
        (
            json!({"data_pipeline_error_threshold": 1.5}),
            "data_pipeline_error_threshold must be between 0.0 and 1.0, got 1.5",
        ),
        (
            json!({"data_pipeline_error_threshold": -0.1}),
            "data_pipeline_error_threshold must be between 0.0 and 1.0, got -0.1",
        ),
        (
            json!({"data_pipeline_error_threshold": 2}),
            "data_pipeline_error_threshold must be between 0.0 and 1.0, got 2",
        ),
        (
            json!({"plugin_disabled": "yes"}),
            "yes is not a valid type for notification settings, should be <class 'bool'>",
        ),
        (
            json!({"plugin_disabled": 1}),
            "1 is not a valid type for notification settings, should be <class 'bool'>",
        ),
        (
            json!({"discussions_mentioned": null}),
            "None is not a valid type for notification settings, should be <class 'bool'>",
        ),
        (
            json!({"all_weekly_digest_disabled": [1, 2]}),
            "[1, 2] is not a valid type for notification settings, should be <class 'bool'>",
        ),
        (
            json!({"web_analytics_weekly_digest": {"a": "b"}}),
            "{'a': 'b'} is not a valid type for notification settings, should be <class 'bool'>",
        ),
    ];
    for (settings, detail) in cases {
        let reply = patch_fails(
            &app,
            &user,
            &key,
            json!({"notification_settings": settings.clone(), "first_name": "Never"}),
        )
        .await;
        invalid(&reply, "invalid_input", detail, attr);
    }
    for (value, shown) in [
        (json!([]), "list"),
        (json!("plugin_disabled"), "str"),
        (json!(1), "int"),
        (json!(true), "bool"),
    ] {
        let reply = patch_fails(&app, &user, &key, json!({"notification_settings": value})).await;
        invalid(
            &reply,
            "not_a_dict",
            &format!("Expected a dictionary of items but got type \"{shown}\"."),
            attr,
        );
    }
    let reply = patch_fails(&app, &user, &key, json!({"notification_settings": null})).await;
    invalid(&reply, "null", "This field may not be null.", attr);
    app.stop().await;
}

/// Test cases 19 and 20 and the rest of the positive rules of users.md §4.4.4.
async fn switching_current_organization_and_team(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("switch@example.com", false, &["*"]).await;
    let me = app.get("/api/users/@me/", &key).await.assert_ok().clone();
    let org_a = me["organization"]["id"].as_str().unwrap().to_string();
    let team_a1 = me["team"]["id"].as_i64().unwrap();
    let team_a2 = app.create_team(&org_a, "A2").await;
    app.create_user("b-owner@example.com", false).await;
    let (org_b, team_b1) = app.create_org("Org B", "b-owner@example.com").await;
    let team_b2 = app.create_team(&org_b, "B2").await;
    app.add_member(&org_b, "switch@example.com", MembershipLevel::Member)
        .await;

    // Only the organization: its first team becomes current.
    let me = patch_ok(&app, &key, json!({"set_current_organization": org_a})).await;
    assert_eq!(me["organization"]["id"], json!(org_a));
    assert_eq!(me["team"]["id"], json!(team_a1));
    let me = patch_ok(&app, &key, json!({"set_current_organization": org_b})).await;
    assert_eq!(me["organization"]["id"], json!(org_b));
    assert_eq!(me["organization"]["membership_level"], 1);
    assert_eq!(me["team"]["id"], json!(team_b1));
    let stored = app.user_record(user.id).await;
    assert_eq!(stored.current_organization_id.unwrap().to_string(), org_b);
    assert_eq!(stored.current_team_id, Some(team_b1));

    // Only the team: its organization becomes current.
    let me = patch_ok(&app, &key, json!({"set_current_team": team_a2.to_string()})).await;
    assert_eq!(me["team"]["id"], json!(team_a2));
    assert_eq!(me["organization"]["id"], json!(org_a));
    assert_eq!(me["organization"]["membership_level"], 15);
    // A JSON number, and surrounding spaces, are accepted.
    let me = patch_ok(&app, &key, json!({"set_current_team": team_b2})).await;
    assert_eq!(me["team"]["id"], json!(team_b2));
    assert_eq!(me["organization"]["id"], json!(org_b));
    let me = patch_ok(
        &app,
        &key,
        json!({"set_current_team": format!(" {team_a1} ")}),
    )
    .await;
    assert_eq!(me["team"]["id"], json!(team_a1));
    // Both, agreeing.
    let me = patch_ok(
        &app,
        &key,
        json!({"set_current_organization": org_b, "set_current_team": team_b2}),
    )
    .await;
    assert_eq!(me["organization"]["id"], json!(org_b));
    assert_eq!(me["team"]["id"], json!(team_b2));
    // The organization in upper case is the same organization.
    let me = patch_ok(
        &app,
        &key,
        json!({"set_current_organization": org_a.to_uppercase()}),
    )
    .await;
    assert_eq!(me["organization"]["id"], json!(org_a));
    assert_eq!(me["team"]["id"], json!(team_a1));
    let stored = app.user_record(user.id).await;
    assert_eq!(stored.current_organization_id.unwrap().to_string(), org_a);
    assert_eq!(stored.current_team_id, Some(team_a1));
    // Naming the current organization again resets the team to its first one.
    let me = patch_ok(&app, &key, json!({"set_current_team": team_a2})).await;
    assert_eq!(me["team"]["id"], json!(team_a2));
    let me = patch_ok(&app, &key, json!({"set_current_organization": org_a})).await;
    assert_eq!(me["team"]["id"], json!(team_a1));
    app.stop().await;
}

/// Test cases 21–23 and the invalid values of users.md §4.4.4.
async fn current_organization_and_team_errors(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("stay@example.com", false, &["*"]).await;
    let me = app.get("/api/users/@me/", &key).await.assert_ok().clone();
    let org_a = me["organization"]["id"].as_str().unwrap().to_string();
    app.create_user("b-owner@example.com", false).await;
    let (org_b, team_b) = app.create_org("Org B", "b-owner@example.com").await;
    app.add_member(&org_b, "stay@example.com", MembershipLevel::Member)
        .await;
    app.create_user("c-owner@example.com", false).await;
    let (org_c, team_c) = app.create_org("Org C", "c-owner@example.com").await;
    // Back to A, the state every failure below must leave alone.
    patch_ok(&app, &key, json!({"set_current_organization": org_a})).await;

    // Test case 21.
    let reply = patch_fails(
        &app,
        &user,
        &key,
        json!({"set_current_team": team_b, "set_current_organization": org_a}),
    )
    .await;
    invalid(
        &reply,
        "invalid_input",
        "Team must belong to the same organization in set_current_organization.",
        Some("set_current_team"),
    );
    // Test case 22.
    let random = uuid::Uuid::new_v4().to_string();
    for org in [&org_c, &random] {
        let reply = patch_fails(&app, &user, &key, json!({"set_current_organization": org})).await;
        invalid(
            &reply,
            "does_not_exist",
            &format!("Object with id={org} does not exist."),
            Some("set_current_organization"),
        );
    }
    for bad in ["not-a-uuid", "12345", "@me"] {
        let reply = patch_fails(&app, &user, &key, json!({"set_current_organization": bad})).await;
        invalid(
            &reply,
            "invalid_input",
            &format!("\u{201c}{bad}\u{201d} is not a valid UUID."),
            Some("set_current_organization"),
        );
    }
    let reply = patch_fails(&app, &user, &key, json!({"set_current_organization": 42})).await;
    invalid(
        &reply,
        "invalid_input",
        "\u{201c}42\u{201d} is not a valid UUID.",
        Some("set_current_organization"),
    );
    let reply = patch_fails(&app, &user, &key, json!({"set_current_organization": ""})).await;
    invalid(
        &reply,
        "blank",
        "This field may not be blank.",
        Some("set_current_organization"),
    );
    let reply = patch_fails(&app, &user, &key, json!({"set_current_organization": null})).await;
    invalid(
        &reply,
        "null",
        "This field may not be null.",
        Some("set_current_organization"),
    );
    let reply = patch_fails(
        &app,
        &user,
        &key,
        json!({"set_current_organization": [org_b]}),
    )
    .await;
    invalid(
        &reply,
        "invalid_input",
        "Not a valid string.",
        Some("set_current_organization"),
    );

    // Test case 23, and teams that exist but are out of reach, and values that are not ids.
    for (sent, shown) in [
        (json!(3983838), "3983838".to_string()),
        (json!("3983838"), "3983838".to_string()),
        (json!(team_c), team_c.to_string()),
        (json!("abc"), "abc".to_string()),
        (json!("1.0"), "1.0".to_string()),
        (json!(-1), "-1".to_string()),
        (
            json!("99999999999999999999999"),
            "99999999999999999999999".to_string(),
        ),
    ] {
        let reply = patch_fails(&app, &user, &key, json!({"set_current_team": sent})).await;
        invalid(
            &reply,
            "does_not_exist",
            &format!("Object with id={shown} does not exist."),
            Some("set_current_team"),
        );
    }
    let reply = patch_fails(&app, &user, &key, json!({"set_current_team": ""})).await;
    invalid(
        &reply,
        "blank",
        "This field may not be blank.",
        Some("set_current_team"),
    );
    let reply = patch_fails(&app, &user, &key, json!({"set_current_team": null})).await;
    invalid(
        &reply,
        "null",
        "This field may not be null.",
        Some("set_current_team"),
    );
    // The organization is checked before the team; field errors come before the pair check.
    let reply = patch_fails(
        &app,
        &user,
        &key,
        json!({"set_current_team": "abc", "set_current_organization": org_c}),
    )
    .await;
    assert_eq!(reply.json["attr"], "set_current_organization");
    let reply = patch_fails(
        &app,
        &user,
        &key,
        json!({"set_current_organization": org_a, "set_current_team": team_b, "role_at_organization": "ceo"}),
    )
    .await;
    assert_eq!(reply.json["attr"], "role_at_organization");
    app.stop().await;
}

/// `events_column_config` (not null), `has_seen_product_intro_for` and `hedgehog_config` (null ok)
/// are stored as sent, never merged.
async fn json_fields_are_replaced_wholesale(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("json@example.com", false, &["*"]).await;
    for (field, nullable) in [
        ("events_column_config", false),
        ("has_seen_product_intro_for", true),
        ("hedgehog_config", true),
    ] {
        let me = patch_ok(
            &app,
            &key,
            json!({ field: {"a": true, "nested": {"x": 1}} }),
        )
        .await;
        assert_eq!(me[field], json!({"a": true, "nested": {"x": 1}}));
        let me = patch_ok(&app, &key, json!({ field: {"b": [1, "two", null]} })).await;
        assert_eq!(
            me[field],
            json!({"b": [1, "two", null]}),
            "{field} is not merged"
        );
        for value in [json!([]), json!("text"), json!(7), json!(false), json!({})] {
            let me = patch_ok(&app, &key, json!({ field: value.clone() })).await;
            assert_eq!(me[field], value, "{field}");
        }
        if nullable {
            let me = patch_ok(&app, &key, json!({ field: null })).await;
            assert_eq!(me[field], Value::Null);
        } else {
            let reply = patch_fails(&app, &user, &key, json!({ field: null })).await;
            invalid(&reply, "null", "This field may not be null.", Some(field));
        }
    }
    let stored = app.user_record(user.id).await;
    assert_eq!(stored.events_column_config, json!({}));
    assert_eq!(stored.has_seen_product_intro_for, None);
    assert_eq!(stored.hedgehog_config, None);
    app.stop().await;
}

/// users.md §4.4.1: with several invalid fields, the one reported is the first in §3.1's order
/// (whatever the order of the body), and nothing is written.
async fn first_error_in_field_order_wins(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("order@example.com", false, &["*"]).await;
    // Body in reverse field order; each entry is invalid.
    let mut fields: Vec<(&str, Value)> = vec![
        ("passkeys_enabled_for_2fa", json!(true)),
        ("role_at_organization", json!("ceo")),
        ("shortcut_position", json!("left")),
        ("allow_sidebar_suggestions", json!("x")),
        ("theme_mode", json!("blue")),
        ("events_column_config", json!(null)),
        ("set_current_team", json!("abc")),
        ("set_current_organization", json!("abc")),
        ("toolbar_mode", json!("x")),
        ("allow_impersonation", json!("x")),
        ("anonymize_data", json!("x")),
        ("notification_settings", json!([])),
        ("last_name", json!(null)),
        ("first_name", json!({"not": "a string"})),
    ];
    while let Some((expected, _)) = fields.last().cloned() {
        let mut body = serde_json::Map::new();
        body.insert("hedgehog_config".into(), json!({"valid": true}));
        for (k, v) in &fields {
            body.insert((*k).into(), v.clone());
        }
        let reply = patch_fails(&app, &user, &key, Value::Object(body)).await;
        assert_eq!(reply.status.as_u16(), 400, "{}", reply.text);
        assert_eq!(reply.json["type"], VALIDATION);
        assert_eq!(reply.json["attr"], expected, "{}", reply.text);
        fields.pop();
    }
    app.stop().await;
}

/// A JSON body that is not an object; malformed JSON; an unsupported media type.
async fn bodies_that_are_not_objects(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("shape@example.com", false, &["*"]).await;
    let before = snapshot(&app.user_record(user.id).await);
    for (body, name) in [
        ("[]", "list"),
        (
            "[{\"email\": \"new@example.com\", \"password\": \"x\"}]",
            "list",
        ),
        ("\"first_name\"", "str"),
        ("5", "int"),
        ("1.5", "float"),
        ("true", "bool"),
    ] {
        for method in [Method::PATCH, Method::PUT] {
            let reply = app
                .raw(
                    method,
                    "/api/users/@me/",
                    Some(&key),
                    "application/json",
                    body,
                )
                .await;
            invalid(
                &reply,
                "invalid_input",
                &format!("Invalid data. Expected a dictionary, but got {name}."),
                None,
            );
        }
    }
    // DRF's serializer answers a JSON null with its own message.
    for method in [Method::PATCH, Method::PUT] {
        let reply = app
            .raw(
                method,
                "/api/users/@me/",
                Some(&key),
                "application/json",
                "null",
            )
            .await;
        invalid(&reply, "null", "No data provided", None);
    }
    for body in ["{", "{\"first_name\": }", "{'first_name': 'x'}", "nul"] {
        let reply = app
            .raw(
                Method::PATCH,
                "/api/users/@me/",
                Some(&key),
                "application/json",
                body,
            )
            .await;
        assert_eq!(reply.status.as_u16(), 400, "{}", reply.text);
        assert_eq!(reply.json["type"], "invalid_request");
        assert_eq!(reply.json["code"], "parse_error");
        assert_eq!(reply.json["attr"], Value::Null);
        assert!(
            reply.json["detail"]
                .as_str()
                .unwrap()
                .starts_with("JSON parse error - "),
            "{}",
            reply.text
        );
    }
    let reply = app
        .raw(
            Method::PATCH,
            "/api/users/@me/",
            Some(&key),
            "text/plain",
            "first_name=x",
        )
        .await;
    reply.assert_error(
        415,
        "invalid_request",
        "unsupported_media_type",
        "Unsupported media type \"text/plain\" in request.",
        None,
    );
    assert_eq!(snapshot(&app.user_record(user.id).await), before);
    // An empty body is an empty object: nothing to change.
    let reply = app
        .raw(
            Method::PATCH,
            "/api/users/@me/",
            Some(&key),
            "application/json",
            "",
        )
        .await;
    reply.assert_ok();
    // `application/*+json` is JSON too.
    let reply = app
        .raw(
            Method::PATCH,
            "/api/users/@me/",
            Some(&key),
            "application/merge-patch+json",
            r#"{"first_name": "Merged"}"#,
        )
        .await;
    assert_eq!(reply.assert_ok()["first_name"], "Merged");
    app.stop().await;
}

/// DRF's default parsers: form-encoded and multipart bodies are field maps of strings.
async fn form_and_multipart_bodies(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("form@example.com", false, &["*"]).await;
    let reply = app
        .raw(
            Method::PATCH,
            "/api/users/@me/",
            Some(&key),
            "application/x-www-form-urlencoded",
            "first_name=Form+Filled&anonymize_data=true&theme_mode=dark&set_current_team=abc&unknown=1",
        )
        .await;
    invalid(
        &reply,
        "does_not_exist",
        "Object with id=abc does not exist.",
        Some("set_current_team"),
    );
    let reply = app
        .raw(
            Method::PATCH,
            "/api/users/@me/",
            Some(&key),
            "application/x-www-form-urlencoded; charset=utf-8",
            "first_name=Form+Filled&anonymize_data=true&theme_mode=dark&role_at_organization=data",
        )
        .await;
    let me = reply.assert_ok();
    assert_eq!(me["first_name"], "Form Filled");
    assert_eq!(me["anonymize_data"], true);
    assert_eq!(me["theme_mode"], "dark");
    assert_eq!(me["role_at_organization"], "data");
    let reply = app
        .raw(
            Method::PATCH,
            "/api/users/@me/",
            Some(&key),
            "application/x-www-form-urlencoded",
            "toolbar_mode=nope",
        )
        .await;
    invalid(
        &reply,
        "invalid_choice",
        "\"nope\" is not a valid choice.",
        Some("toolbar_mode"),
    );

    let boundary = "hogletboundary42";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"last_name\"\r\n\r\nMulti Part\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"allow_sidebar_suggestions\"\r\n\r\non\r\n\
         --{boundary}--\r\n"
    );
    let reply = app
        .raw(
            Method::PATCH,
            "/api/users/@me/",
            Some(&key),
            &format!("multipart/form-data; boundary={boundary}"),
            multipart,
        )
        .await;
    let me = reply.assert_ok();
    assert_eq!(me["last_name"], "Multi Part");
    assert_eq!(me["allow_sidebar_suggestions"], true);
    let stored = app.user_record(user.id).await;
    assert_eq!(stored.first_name, "Form Filled");
    assert_eq!(stored.last_name, "Multi Part");
    app.stop().await;
}

/// A body over the configured limit is refused with an envelope, and nothing is written.
async fn oversized_bodies_are_refused(db: Db) {
    let app = spawn_app_with(db, |config| config.max_body_bytes = 1024).await;
    let (user, key) = app.user_with_key("big@example.com", false, &["*"]).await;
    let body = json!({"first_name": "Big", "hedgehog_config": {"blob": "x".repeat(4096)}});
    for path in ["/api/users/@me/", "/api/users/@me/hedgehog_config/"] {
        let reply = app.patch(path, &key, body.clone()).await;
        assert_eq!(reply.status.as_u16(), 413, "{}", reply.text);
        assert_eq!(reply.json["type"], "invalid_request");
        assert_eq!(reply.json["code"], "request_too_large");
        assert_eq!(reply.json["attr"], Value::Null);
        assert!(reply.json["detail"].is_string());
    }
    let stored = app.user_record(user.id).await;
    assert_eq!(stored.first_name, "Test");
    assert_eq!(stored.hedgehog_config, None);
    // Just under the limit is fine.
    let reply = app
        .patch("/api/users/@me/", &key, json!({"first_name": "Small"}))
        .await;
    assert_eq!(reply.assert_ok()["first_name"], "Small");
    app.stop().await;
}

/// Keys need `user:write` (or `*`, or a legacy key with no scopes) to write; a missing scope is
/// reported before anything about the target or the body.
async fn write_scopes(db: Db) {
    let app = spawn_app(db).await;
    let (user, read_key) = app
        .user_with_key("scopes@example.com", false, &["user:read"])
        .await;
    let other_scopes = app
        .create_key("scopes@example.com", &["insight:write", "user:read"])
        .await;
    for key in [&read_key, &other_scopes] {
        for (method, path, body) in [
            (
                Method::PATCH,
                "/api/users/@me/",
                json!({"first_name": "Nope"}),
            ),
            (Method::PATCH, "/api/users/@me", json!({"email": "x@y.z"})),
            (
                Method::PUT,
                "/api/users/@me/",
                json!({"first_name": "Nope"}),
            ),
            (
                Method::PATCH,
                "/api/users/not-a-uuid/",
                json!({"first_name": "Nope"}),
            ),
            (
                Method::PATCH,
                "/api/users/@me/hedgehog_config/",
                json!({"a": 1}),
            ),
        ] {
            let reply = app.call(method, path, Some(key), Some(body)).await;
            reply.assert_error(
                403,
                "authentication_error",
                "permission_denied",
                "API key missing required scope 'user:write'",
                None,
            );
        }
        let reply = app
            .raw(
                Method::PATCH,
                "/api/users/@me/",
                Some(key),
                "application/json",
                "{nope",
            )
            .await;
        reply.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "API key missing required scope 'user:write'",
            None,
        );
    }
    assert_eq!(app.user_record(user.id).await.first_name, "Test");
    for (i, scopes) in [
        vec!["user:write"],
        vec!["*"],
        vec![],
        vec!["insight:read", "user:write"],
    ]
    .into_iter()
    .enumerate()
    {
        let key = app.create_key("scopes@example.com", &scopes).await;
        let name = format!("Writer {i}");
        let me = patch_ok(&app, &key, json!({"first_name": name})).await;
        assert_eq!(me["first_name"], json!(name), "{scopes:?}");
        let reply = app
            .patch("/api/users/@me/hedgehog_config/", &key, json!({"i": i}))
            .await;
        assert_eq!(reply.assert_ok(), &json!({"i": i}));
    }
    app.stop().await;
}

/// users.md §4.5: PUT needs `email` and `password` (email first); with a key, a present password
/// is refused by the identity guard before anything else. Omitted fields keep their values.
async fn put_requires_email_and_password(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("put@example.com", false, &["*"]).await;
    patch_ok(
        &app,
        &key,
        json!({"last_name": "Kept", "theme_mode": "dark"}),
    )
    .await;
    let user_id = user.id;
    let put = |body: Value| {
        let app = &app;
        let key = &key;
        async move {
            let before = snapshot(&app.user_record(user_id).await);
            let reply = app.put("/api/users/@me/", key, body).await;
            assert_eq!(snapshot(&app.user_record(user_id).await), before);
            reply
        }
    };
    let required = |reply: Reply, attr: &str| {
        invalid(&reply, "required", "This field is required.", Some(attr));
    };
    required(put(json!({})).await, "email");
    required(put(json!({"first_name": "Put"})).await, "email");
    required(put(json!({"email": "put@example.com"})).await, "password");
    required(
        put(json!({"email": "PUT@example.com", "first_name": "Put"})).await,
        "password",
    );
    // An earlier field's error comes first.
    let reply = put(json!({"first_name": null})).await;
    invalid(
        &reply,
        "null",
        "This field may not be null.",
        Some("first_name"),
    );
    let reply = put(json!({"email": "put@example.com", "theme_mode": "x"})).await;
    assert_eq!(reply.json["attr"], "password");
    for body in [
        json!({"email": "put@example.com", "password": "a-New-passw0rd!"}),
        json!({"password": "a-New-passw0rd!"}),
        json!({"email": "other@example.com"}),
        json!({"email": "other@example.com", "password": "x", "first_name": null}),
    ] {
        put(body).await.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            IDENTITY,
            None,
        );
    }
    let stored = app.user_record(user.id).await;
    assert_eq!(stored.last_name, "Kept");
    assert_eq!(stored.theme_mode.as_deref(), Some("dark"));
    app.stop().await;
}
