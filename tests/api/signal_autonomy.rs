//! `/api/users/{user_id}/signal_autonomy/` (auth spec Part A), on both databases.

use reqwest::Method;
use serde_json::json;

use crate::browser::Browser;
use crate::helpers::{Db, PASSWORD, spawn_app};

const PATH: &str = "/api/users/@me/signal_autonomy/";

crate::db_tests!(
    lifecycle_with_partial_upserts,
    validation_messages,
    scopes_and_authentication,
    staff_resolve_by_integer_id,
    sessions_and_methods,
    key_throttles_cover_signal_and_integration_views,
);

async fn lifecycle_with_partial_upserts(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app
        .user_with_key("sig@example.com", false, &["user:write"])
        .await;

    let absent = app.get(PATH, &key).await;
    assert_eq!(absent.status, 404);
    assert_eq!(absent.text, "", "a bare 404 without the envelope");

    let created = app
        .call(Method::POST, PATH, Some(&key), Some(json!({})))
        .await;
    let body = created.assert_ok().clone();
    assert_eq!(body["autostart_priority"], json!(null));
    assert_eq!(
        body["user"],
        json!({"id": user.id, "uuid": user.uuid, "first_name": "Test", "last_name": "User",
               "email": "sig@example.com"})
    );
    let id = body["id"].as_str().unwrap().to_string();
    uuid::Uuid::parse_str(&id).unwrap();
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        [
            "id",
            "user",
            "autostart_priority",
            "created_at",
            "updated_at"
        ]
    );

    let p1 = app
        .call(
            Method::POST,
            PATH,
            Some(&key),
            Some(json!({"autostart_priority": "P1"})),
        )
        .await;
    assert_eq!(p1.assert_ok()["autostart_priority"], "P1");
    assert_eq!(p1.json["id"], id.as_str(), "an upsert keeps the row");
    assert_eq!(p1.json["created_at"], body["created_at"]);

    // Only sent keys are written: `{}` and unknown keys leave the priority alone.
    let kept = app
        .call(Method::POST, PATH, Some(&key), Some(json!({"unknown": 1})))
        .await;
    assert_eq!(kept.assert_ok()["autostart_priority"], "P1");
    let read = app.get(PATH, &key).await;
    assert_eq!(read.assert_ok()["autostart_priority"], "P1");
    assert_eq!(read.json["id"], id.as_str());

    let cleared = app
        .call(
            Method::POST,
            PATH,
            Some(&key),
            Some(json!({"autostart_priority": null})),
        )
        .await;
    assert_eq!(cleared.assert_ok()["autostart_priority"], json!(null));

    for priority in ["P0", "P2", "P3", "P4"] {
        let r = app
            .call(
                Method::POST,
                PATH,
                Some(&key),
                Some(json!({"autostart_priority": priority})),
            )
            .await;
        assert_eq!(r.assert_ok()["autostart_priority"], priority);
    }

    let deleted = app.call(Method::DELETE, PATH, Some(&key), None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.text, "");
    let again = app.call(Method::DELETE, PATH, Some(&key), None).await;
    assert_eq!(again.status, 204, "DELETE is idempotent");
    assert_eq!(app.get(PATH, &key).await.status, 404);

    // Re-creating after an opt-out makes a new row.
    let recreated = app.call(Method::POST, PATH, Some(&key), None).await;
    assert_ne!(recreated.assert_ok()["id"], id.as_str());
}

async fn validation_messages(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app
        .user_with_key("val@example.com", false, &["user:write"])
        .await;
    for (value, shown) in [
        (json!("P9"), "P9"),
        (json!("p1"), "p1"),
        (json!(""), ""),
        (json!(1), "1"),
        (json!(true), "True"),
    ] {
        let r = app
            .call(
                Method::POST,
                PATH,
                Some(&key),
                Some(json!({"autostart_priority": value})),
            )
            .await;
        r.assert_error(
            400,
            "validation_error",
            "invalid_choice",
            &format!("\"{shown}\" is not a valid choice."),
            Some("autostart_priority"),
        );
    }
    let list = app
        .call(Method::POST, PATH, Some(&key), Some(json!(["P1"])))
        .await;
    list.assert_error(
        400,
        "validation_error",
        "invalid_input",
        "Invalid data. Expected a dictionary, but got list.",
        None,
    );
    // Nothing was written by the refused requests.
    assert_eq!(app.get(PATH, &key).await.status, 404);
    let form = app
        .raw(
            Method::POST,
            PATH,
            Some(&key),
            "application/x-www-form-urlencoded",
            "autostart_priority=P3",
        )
        .await;
    assert_eq!(form.assert_ok()["autostart_priority"], "P3");
}

async fn scopes_and_authentication(db: Db) {
    let app = spawn_app(db).await;
    let (_, read_only) = app
        .user_with_key("scopes@example.com", false, &["user:read"])
        .await;
    let star = app.create_key("scopes@example.com", &["*"]).await;
    for method in [Method::GET, Method::POST, Method::DELETE] {
        let r = app.call(method.clone(), PATH, Some(&read_only), None).await;
        r.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "API key missing required scope 'user:write'",
            None,
        );
        let ok = app.call(method, PATH, Some(&star), None).await;
        assert!(ok.status.is_success() || ok.status == 404, "{}", ok.text);
    }
    let anonymous = app.call(Method::GET, PATH, None, None).await;
    anonymous.assert_error(
        401,
        "authentication_error",
        "not_authenticated",
        "Authentication credentials were not provided.",
        None,
    );
    assert_eq!(anonymous.header("www-authenticate"), Some("Session"));
    let bad = app.get(PATH, "phx_not_a_real_key").await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json["code"], "authentication_failed");
    let oauth = app.get(PATH, "pha_whatever").await;
    oauth.assert_error(
        401,
        "authentication_error",
        "authentication_failed",
        "Invalid access token.",
        None,
    );
}

async fn staff_resolve_by_integer_id(db: Db) {
    let app = spawn_app(db).await;
    let (member, member_key) = app
        .user_with_key("member@example.com", false, &["user:write"])
        .await;
    let (staff, staff_key) = app
        .user_with_key("staff@example.com", true, &["user:write"])
        .await;
    let staff_only = |r: crate::helpers::Reply| {
        r.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "Only staff can access other users' autonomy config.",
            None,
        )
    };
    // Non-staff: refused for any value but @me, their own id and uuid included.
    for segment in [
        member.id.to_string(),
        member.uuid.clone(),
        staff.id.to_string(),
        "nope".into(),
    ] {
        let path = format!("/api/users/{segment}/signal_autonomy/");
        staff_only(app.get(&path, &member_key).await);
        staff_only(app.call(Method::POST, &path, Some(&member_key), None).await);
    }

    // Staff reach anyone by integer id, inactive users included.
    let path = format!("/api/users/{}/signal_autonomy/", member.id);
    let set = app
        .call(
            Method::POST,
            &path,
            Some(&staff_key),
            Some(json!({"autostart_priority": "P2"})),
        )
        .await;
    assert_eq!(set.assert_ok()["user"]["id"], member.id);
    assert_eq!(set.json["user"]["email"], "member@example.com");
    let mine = app.get(PATH, &member_key).await;
    assert_eq!(mine.assert_ok()["autostart_priority"], "P2");

    let mut record = app.user_record(member.id).await;
    record.is_active = false;
    app.store_user(&record).await;
    let inactive = app.get(&path, &staff_key).await;
    assert_eq!(inactive.assert_ok()["autostart_priority"], "P2");

    for missing in ["999999", "abc", &member.uuid, "1.5"] {
        let r = app
            .get(
                &format!("/api/users/{missing}/signal_autonomy/"),
                &staff_key,
            )
            .await;
        r.assert_error(404, "invalid_request", "not_found", "Not found.", None);
    }
    let deleted = app
        .call(Method::DELETE, &path, Some(&staff_key), None)
        .await;
    assert_eq!(deleted.status, 204);
    let gone = app.get(&path, &staff_key).await;
    assert_eq!((gone.status.as_u16(), gone.text.as_str()), (404, ""));
}

async fn sessions_and_methods(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app
        .user_with_key("session@example.com", false, &["user:write"])
        .await;
    let browser = Browser::new(&app);
    browser
        .login("session@example.com", PASSWORD)
        .await
        .assert_ok();
    assert_eq!(browser.get(PATH).await.status, 404);
    let created = browser
        .post(PATH, json!({"autostart_priority": "P4"}))
        .await;
    assert_eq!(created.assert_ok()["autostart_priority"], "P4");
    let no_csrf = browser
        .call_without_csrf(Method::POST, PATH, Some(json!({})))
        .await;
    assert_eq!(no_csrf.status, 403);
    assert!(
        no_csrf.json["detail"]
            .as_str()
            .unwrap()
            .starts_with("CSRF Failed")
    );
    assert_eq!(
        browser.get("/api/users/@me/signal_autonomy").await.json["autostart_priority"],
        "P4",
        "the trailing slash is optional"
    );
    for method in [Method::PUT, Method::PATCH] {
        let r = app
            .call(method.clone(), PATH, Some(&key), Some(json!({})))
            .await;
        r.assert_error(
            405,
            "invalid_request",
            "method_not_allowed",
            &format!("Method \"{method}\" not allowed."),
            None,
        );
    }
}

/// PostHog's burst limit (480 a minute per key) covers signal autonomy and the integration
/// views, but not `github/start`, `github_login` or sessions.
async fn key_throttles_cover_signal_and_integration_views(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app
        .user_with_key("burst@example.com", false, &["user:write"])
        .await;
    for _ in 0..480 {
        assert_eq!(app.get(PATH, &key).await.status, 404);
    }
    for reply in [
        app.get(PATH, &key).await,
        app.get("/api/users/@me/integrations/", &key).await,
        app.call(
            Method::DELETE,
            "/api/users/@me/integrations/github/1/",
            Some(&key),
            None,
        )
        .await,
    ] {
        assert_eq!(reply.status, 429, "{}", reply.text);
        assert_eq!(reply.json["type"], "throttled_error");
        assert_eq!(reply.json["code"], "throttled");
        assert!(reply.header("retry-after").is_some());
    }
    let start = app
        .call(
            Method::POST,
            "/api/users/@me/integrations/github/start/",
            Some(&key),
            Some(json!({})),
        )
        .await;
    assert_eq!(start.status, 400, "not throttled: {}", start.text);
    let login = app.get("/api/users/@me/github_login/", &key).await;
    assert_eq!(login.assert_ok(), &json!({"github_login": null}));
    let browser = Browser::new(&app);
    browser
        .login("burst@example.com", PASSWORD)
        .await
        .assert_ok();
    assert_eq!(browser.get(PATH).await.status, 404);
}
