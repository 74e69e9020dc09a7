//! `/api/users/{uuid}/login_sessions/…` and the `/settings/user-sessions` page, through HTTP on
//! both databases: the list, revoking one session and every other one (on one replica and across
//! two on one database), `last_activity`, and the activity they record.

use std::time::{Duration, Instant};

use hoglet::BuildOptions;
use hoglet::store::ActivityQuery;
use hoglet::time::SECOND;
use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::db_tests;
use crate::helpers::{
    Db, PASSWORD, Reply, TestApp, TestDatabase, spawn_app, spawn_app_on_clock, start,
};
use crate::web_pages::{assert_page, assert_see_other};

db_tests!(
    the_list_shows_every_signed_in_session_current_first,
    only_a_session_of_the_user_themself_may_list_or_revoke,
    revoke_one_then_every_other_session,
    revoking_the_current_session_signs_this_browser_out,
    revoking_needs_a_recent_login,
    last_activity_is_written_at_most_once_a_minute,
    a_revoked_session_stops_at_once_on_the_other_replica,
    the_sessions_page_lists_and_revokes,
);

const LIST: &str = "/api/users/@me/login_sessions/";
const REVOKE_OTHERS: &str = "/api/users/@me/login_sessions/revoke_others/";
const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
                          (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const FIREFOX_WINDOWS: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0";

/// A browser with `user_agent`, logged in as `email`.
async fn signed_in(app: &TestApp, email: &str, user_agent: &str) -> Browser {
    let browser = Browser::with_user_agent(app, Some(user_agent));
    browser.login(email, PASSWORD).await.assert_ok();
    browser
}

/// The stored id of the browser's session (the cookie's SHA-256).
fn stored_id(browser: &Browser) -> String {
    hoglet::service::sessions::session_id(&browser.cookie("sessionid").expect("session cookie"))
}

fn entries(reply: &Reply) -> Vec<Value> {
    reply.assert_ok().as_array().expect("an array").clone()
}

fn id_of(entry: &Value) -> String {
    entry["id"].as_str().expect("an id").to_string()
}

/// The `session_revoked` entries of the user's log, newest first.
async fn revocations(app: &TestApp, user_id: i64) -> Vec<hoglet::store::ActivityRecord> {
    app.store
        .activity(&ActivityQuery {
            user_id,
            activity: Some("session_revoked".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn the_list_shows_every_signed_in_session_current_first(db: Db) {
    let app = spawn_app(db).await;
    let user = app.create_user("list@example.com", false).await;
    let first = signed_in(&app, "list@example.com", CHROME_MAC).await;
    let second = signed_in(&app, "list@example.com", FIREFOX_WINDOWS).await;
    // Another user's session is never listed.
    app.create_user("other@example.com", false).await;
    signed_in(&app, "other@example.com", CHROME_MAC).await;

    let listed = entries(&second.get(LIST).await);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let keys: Vec<&str> = listed[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "created_at",
            "last_activity",
            "location",
            "device",
            "login_method",
            "is_current"
        ]
    );
    assert_eq!(listed[0]["is_current"], true);
    assert_eq!(listed[1]["is_current"], false);
    for entry in &listed {
        let id = id_of(entry);
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert!(entry["created_at"].as_str().unwrap().ends_with('Z'));
        assert!(entry["last_activity"].is_string(), "{entry}");
        assert_eq!(
            entry["location"],
            Value::Null,
            "no GeoIP database configured"
        );
    }
    // The ids name the sessions opaquely: neither the cookie nor its stored hash.
    for browser in [&first, &second] {
        let text = second.get(LIST).await.text;
        assert!(!text.contains(&stored_id(browser)));
        assert!(!text.contains(&browser.cookie("sessionid").unwrap()));
    }
    // Seen from the first browser: the same ids, the other one current.
    let from_first = entries(&first.get(LIST).await);
    assert_eq!(id_of(&from_first[0]), id_of(&listed[1]));
    assert_eq!(id_of(&from_first[1]), id_of(&listed[0]));
    assert_eq!(from_first[0]["is_current"], true);
    // As everywhere in the Users API, a non-staff user names themself `@me` only.
    let by_uuid = first
        .get(&format!("/api/users/{}/login_sessions/", user.uuid))
        .await;
    assert_eq!(by_uuid.status.as_u16(), 403, "{}", by_uuid.text);
    // The client each session signed in from.
    assert_eq!(listed[0]["device"], "Firefox on Windows 10");
    assert_eq!(listed[1]["device"], "Chrome on macOS");
    assert_eq!(listed[0]["login_method"], "password");
    assert_eq!(listed[1]["login_method"], "password");
    // No User-Agent: no device.
    let bare = Browser::new(&app);
    bare.login("list@example.com", PASSWORD).await.assert_ok();
    let bare_list = entries(&bare.get(LIST).await);
    assert_eq!(bare_list.len(), 3);
    assert_eq!(bare_list[0]["device"], Value::Null);
    app.stop().await;
}

async fn only_a_session_of_the_user_themself_may_list_or_revoke(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("keyed@example.com", false, &["*"]).await;
    // A personal API key is not looked at: as if no credential came.
    for (method, path) in [
        (Method::GET, LIST.to_string()),
        (Method::POST, REVOKE_OTHERS.to_string()),
        (
            Method::DELETE,
            format!("{LIST}0123456789abcdef0123456789abcdef/"),
        ),
    ] {
        app.call(method, &path, Some(&key), None)
            .await
            .assert_error(
                401,
                "authentication_error",
                "not_authenticated",
                "Authentication credentials were not provided.",
                None,
            );
    }
    // Not another user's sessions, staff or not.
    let staff = app.create_user("staff@example.com", true).await;
    let staff_browser = signed_in(&app, &staff.email, CHROME_MAC).await;
    let other = format!("/api/users/{}/login_sessions/", user.uuid);
    staff_browser.get(&other).await.assert_error(
        403,
        "authentication_error",
        "permission_denied",
        "You can only see and revoke your own login sessions.",
        None,
    );
    let staffs = format!("/api/users/{}/login_sessions/", staff.uuid);
    assert_eq!(
        entries(&staff_browser.get(&staffs).await).len(),
        1,
        "staff may name themself by uuid"
    );
    let member = signed_in(&app, "keyed@example.com", CHROME_MAC).await;
    member.get(&staffs).await.assert_error(
        403,
        "authentication_error",
        "permission_denied",
        "As a non-staff user you're only allowed to access the `@me` user instance.",
        None,
    );
    // Another user's session id is not found among one's own.
    let staff_id = id_of(&entries(&staff_browser.get(LIST).await)[0]);
    member
        .call(Method::DELETE, &format!("{LIST}{staff_id}/"), None)
        .await
        .assert_error(
            404,
            "invalid_request",
            "not_found",
            "Login session not found.",
            None,
        );
    assert_eq!(staff_browser.get(LIST).await.status.as_u16(), 200);
    // Unsafe requests need the CSRF token, as everywhere.
    let no_csrf = member
        .call_without_csrf(Method::POST, REVOKE_OTHERS, None)
        .await;
    assert_eq!(no_csrf.status.as_u16(), 403, "{}", no_csrf.text);
    app.stop().await;
}

async fn revoke_one_then_every_other_session(db: Db) {
    let app = spawn_app(db).await;
    let user = app.create_user("revoke@example.com", false).await;
    let mine = signed_in(&app, &user.email, CHROME_MAC).await;
    let lost = signed_in(&app, &user.email, FIREFOX_WINDOWS).await;
    let old = signed_in(&app, &user.email, FIREFOX_WINDOWS).await;
    assert_eq!(lost.get("/api/users/@me/").await.status.as_u16(), 200);
    let listed = entries(&mine.get(LIST).await);
    assert_eq!(listed.len(), 3);
    // Newest login first after the current one.
    let lost_id = id_of(&entries(&lost.get(LIST).await)[0]);
    assert_eq!(id_of(&listed[2]), lost_id);
    assert_eq!(listed[2]["is_current"], false);
    assert_eq!(id_of(&listed[1]), id_of(&entries(&old.get(LIST).await)[0]));

    let revoked = mine
        .call(Method::DELETE, &format!("{LIST}{lost_id}/"), None)
        .await;
    assert_eq!(revoked.status.as_u16(), 204, "{}", revoked.text);
    assert_eq!(revoked.text, "");
    assert!(
        revoked.header("set-cookie").is_none(),
        "this browser stays signed in"
    );
    assert_eq!(
        lost.get("/api/users/@me/").await.status.as_u16(),
        401,
        "the revoked session stops at once"
    );
    assert!(
        app.store
            .session(&stored_id(&lost))
            .await
            .unwrap()
            .is_none()
    );
    let left: Vec<String> = entries(&mine.get(LIST).await).iter().map(id_of).collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&lost_id));
    // Again, or an id that names nothing: 404.
    for id in [lost_id.as_str(), "not-a-session", &"0".repeat(32)] {
        mine.call(Method::DELETE, &format!("{LIST}{id}/"), None)
            .await
            .assert_error(
                404,
                "invalid_request",
                "not_found",
                "Login session not found.",
                None,
            );
    }

    let others = mine.post(REVOKE_OTHERS, json!({})).await;
    assert_eq!(others.assert_ok(), &json!({"revoked_count": 1}));
    assert_eq!(old.get("/api/users/@me/").await.status.as_u16(), 401);
    assert_eq!(mine.get("/api/users/@me/").await.status.as_u16(), 200);
    let left = entries(&mine.get(LIST).await);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["is_current"], true);
    // Nothing left to end.
    assert_eq!(
        mine.post(REVOKE_OTHERS, json!({})).await.assert_ok(),
        &json!({"revoked_count": 0})
    );

    // Recorded once each, by the user, from this browser, without any session id.
    let log = revocations(&app, user.id).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].detail["scope"], "others");
    assert_eq!(log[0].detail["revoked_count"], 1);
    assert_eq!(log[1].detail["scope"], "one");
    assert_eq!(log[1].detail["current"], false);
    for entry in &log {
        assert_eq!(entry.actor.kind, "user");
        assert_eq!(
            entry.actor.id.as_deref(),
            Some(user.id.to_string().as_str())
        );
        assert_eq!(entry.ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(entry.user_agent.as_deref(), Some(CHROME_MAC));
        let text = entry.detail.to_string();
        for browser in [&mine, &lost, &old] {
            assert!(!text.contains(&stored_id(browser)), "{text}");
        }
        assert!(!text.contains(&lost_id), "{text}");
    }
    app.stop().await;
}

async fn revoking_the_current_session_signs_this_browser_out(db: Db) {
    let app = spawn_app(db).await;
    let user = app.create_user("self@example.com", false).await;
    let other = signed_in(&app, &user.email, FIREFOX_WINDOWS).await;
    let browser = signed_in(&app, &user.email, CHROME_MAC).await;
    let current = id_of(&entries(&browser.get(LIST).await)[0]);
    let revoked = browser
        .call(Method::DELETE, &format!("{LIST}{current}/"), None)
        .await;
    assert_eq!(revoked.status.as_u16(), 204, "{}", revoked.text);
    let cleared = revoked
        .header("set-cookie")
        .expect("the session cookie is cleared");
    assert!(cleared.starts_with("sessionid=\"\""), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert!(
        browser.cookie("sessionid").is_none(),
        "the browser dropped it"
    );
    assert_eq!(browser.get("/api/users/@me/").await.status.as_u16(), 401);
    // The other session goes on.
    assert_eq!(entries(&other.get(LIST).await).len(), 1);
    let log = revocations(&app, user.id).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].detail["current"], true);
    app.stop().await;
}

async fn revoking_needs_a_recent_login(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    let user = app.create_user("stale@example.com", false).await;
    let other = signed_in(&app, &user.email, FIREFOX_WINDOWS).await;
    let browser = signed_in(&app, &user.email, CHROME_MAC).await;
    clock.advance(2 * 3600 * SECOND + SECOND);
    let listed = entries(&browser.get(LIST).await);
    assert_eq!(listed.len(), 2, "listing is not a sensitive action");
    let stale = "This action requires you to be recently authenticated.";
    browser
        .call(
            Method::DELETE,
            &format!("{LIST}{}/", id_of(&listed[1])),
            None,
        )
        .await
        .assert_error(
            403,
            "authentication_error",
            "sensitive_action_required_reauth",
            stale,
            None,
        );
    browser.post(REVOKE_OTHERS, json!({})).await.assert_error(
        403,
        "authentication_error",
        "sensitive_action_required_reauth",
        stale,
        None,
    );
    assert_eq!(other.get("/api/users/@me/").await.status.as_u16(), 200);
    assert!(revocations(&app, user.id).await.is_empty());
    app.stop().await;
}

async fn last_activity_is_written_at_most_once_a_minute(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    let user = app.create_user("active@example.com", false).await;
    let browser = signed_in(&app, &user.email, CHROME_MAC).await;
    let watcher = signed_in(&app, &user.email, FIREFOX_WINDOWS).await;
    let id = stored_id(&browser);
    let stored = || async {
        app.state.caches.flush_last_used(&app.store).await;
        app.store
            .session(&id)
            .await
            .unwrap()
            .unwrap()
            .last_activity_at
    };
    let t0 = clock.now();
    assert_eq!(browser.get("/api/users/@me/").await.status.as_u16(), 200);
    assert_eq!(stored().await, Some(t0));
    // Within the minute: requests are not written again.
    clock.advance(30 * SECOND);
    for _ in 0..3 {
        assert_eq!(browser.get("/api/users/@me/").await.status.as_u16(), 200);
    }
    assert_eq!(stored().await, Some(t0));
    // The list shows what was written.
    let seen = entries(&watcher.get(LIST).await);
    let entry = seen.iter().find(|e| e["is_current"] == false).unwrap();
    assert_eq!(
        entry["last_activity"].as_str().unwrap(),
        hoglet::time::iso_z(t0)
    );
    // A minute on, the next request is.
    clock.advance(31 * SECOND);
    assert_eq!(browser.get("/api/users/@me/").await.status.as_u16(), 200);
    assert_eq!(stored().await, Some(t0 + 61 * SECOND));
    app.stop().await;
}

async fn replica(database: TestDatabase) -> TestApp {
    start(database, |_| {}, BuildOptions::default()).await
}

/// `GET @me` on `app` with the browser's session cookie.
async fn me_with_cookie(app: &TestApp, browser: &Browser) -> u16 {
    let cookie = format!("sessionid={}", browser.cookie("sessionid").unwrap());
    let response = reqwest::Client::new()
        .get(app.url("/api/users/@me/"))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// Polls until `browser`'s session is refused on `app`; fails after two seconds (the feed is read
/// every 250 ms).
async fn refused_soon(app: &TestApp, browser: &Browser, what: &str) {
    let started = Instant::now();
    loop {
        let status = me_with_cookie(app, browser).await;
        if status == 401 {
            return;
        }
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: the other replica still accepts the session"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn a_revoked_session_stops_at_once_on_the_other_replica(db: Db) {
    let database = TestDatabase::create(db).await;
    let second = database.shared();
    let a = replica(database).await;
    let b = replica(second).await;
    let user = a.create_user("replicas@example.com", false).await;
    let owner = signed_in(&a, &user.email, CHROME_MAC).await;
    let lost = signed_in(&a, &user.email, FIREFOX_WINDOWS).await;
    let old = signed_in(&a, &user.email, FIREFOX_WINDOWS).await;
    // Both sessions are cached on both replicas.
    for browser in [&lost, &old] {
        assert_eq!(me_with_cookie(&a, browser).await, 200);
        assert_eq!(me_with_cookie(&b, browser).await, 200);
    }

    // Revoked through replica A: refused at once there, and on B within the feed's poll.
    // The ids are the same on every session's list and on both replicas.
    let lost_id = id_of(&entries(&lost.get(LIST).await)[0]);
    let listed: Vec<String> = entries(&owner.get(LIST).await).iter().map(id_of).collect();
    assert!(listed.contains(&lost_id));
    let on_b_list = reqwest::Client::new()
        .get(b.url(LIST))
        .header(
            "Cookie",
            format!("sessionid={}", owner.cookie("sessionid").unwrap()),
        )
        .send()
        .await
        .unwrap();
    let on_b_list: Vec<Value> = on_b_list.json().await.unwrap();
    assert_eq!(on_b_list.iter().map(id_of).collect::<Vec<_>>(), listed);
    assert_eq!(
        owner
            .call(Method::DELETE, &format!("{LIST}{lost_id}/"), None)
            .await
            .status
            .as_u16(),
        204
    );
    assert_eq!(me_with_cookie(&a, &lost).await, 401);
    refused_soon(&b, &lost, "one revoked").await;

    // Signed in on B and signing the others out there: A refuses them soon after.
    let on_b = signed_in(&b, &user.email, CHROME_MAC).await;
    assert_eq!(
        entries(&on_b.get(LIST).await).len(),
        3,
        "the same list on both replicas"
    );
    assert_eq!(
        on_b.post(REVOKE_OTHERS, json!({})).await.assert_ok(),
        &json!({"revoked_count": 2})
    );
    assert_eq!(me_with_cookie(&b, &old).await, 401);
    refused_soon(&a, &old, "others revoked").await;
    refused_soon(&a, &owner, "others revoked").await;
    assert_eq!(me_with_cookie(&a, &on_b).await, 200);
    b.stop().await;
    a.stop().await;
}

async fn the_sessions_page_lists_and_revokes(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    let user = app.create_user("page@example.com", false).await;
    let other = signed_in(&app, &user.email, FIREFOX_WINDOWS).await;
    let third = signed_in(&app, &user.email, FIREFOX_WINDOWS).await;
    let browser = signed_in(&app, &user.email, CHROME_MAC).await;

    let page = browser.get("/settings/user-sessions").await;
    assert_page(&page, 200);
    assert!(
        page.text.contains("href=\"/settings/user-sessions\""),
        "in the navigation"
    );
    assert!(page.text.contains("This device"), "{}", page.text);
    assert_eq!(
        page.text.matches("/revoke\" class=\"inline\"").count(),
        2,
        "one per other session"
    );
    assert!(
        page.text
            .contains("action=\"/settings/user-sessions/revoke-others\"")
    );
    for b in [&browser, &other] {
        assert!(!page.text.contains(&stored_id(b)));
    }
    let ids: Vec<String> = entries(&browser.get(LIST).await)
        .iter()
        .map(id_of)
        .collect();
    assert!(
        !page
            .text
            .contains(&format!("/settings/user-sessions/{}/revoke", ids[0])),
        "not for this one"
    );

    // Without the form's CSRF token: refused, nothing ended.
    let forged = browser
        .submit_exactly(&format!("/settings/user-sessions/{}/revoke", ids[1]), &[])
        .await;
    assert_eq!(forged.status.as_u16(), 403, "{}", forged.text);
    let revoked = browser
        .submit(&format!("/settings/user-sessions/{}/revoke", ids[1]), &[])
        .await;
    assert_see_other(&revoked, "/settings/user-sessions?notice=session_revoked");
    assert_eq!(entries(&browser.get(LIST).await).len(), 2);
    let shown = browser
        .get("/settings/user-sessions?notice=session_revoked")
        .await;
    assert!(shown.text.contains("The session is signed out."));
    // The same form again (a second click): the session had already ended.
    let again = browser
        .submit(&format!("/settings/user-sessions/{}/revoke", ids[1]), &[])
        .await;
    assert_see_other(&again, "/settings/user-sessions?notice=session_gone");
    // A form's address opened: back to the page.
    assert_see_other(
        &browser.get("/settings/user-sessions/revoke-others").await,
        "/settings/user-sessions",
    );

    // Signing out everywhere else needs a recent login: the page asks for the password.
    clock.advance(2 * 3600 * SECOND + SECOND);
    let stale = browser
        .submit("/settings/user-sessions/revoke-others", &[])
        .await;
    assert_eq!(stale.status.as_u16(), 303);
    assert!(
        stale.header("location").unwrap().contains("reauth=1"),
        "{:?}",
        stale.header("location")
    );
    let fresh = signed_in(&app, &user.email, CHROME_MAC).await;
    let everywhere = fresh
        .submit("/settings/user-sessions/revoke-others", &[])
        .await;
    assert_see_other(
        &everywhere,
        "/settings/user-sessions?notice=other_sessions_revoked",
    );
    for b in [&browser, &other, &third] {
        assert_eq!(b.get("/api/users/@me/").await.status.as_u16(), 401);
    }
    let alone = fresh
        .get("/settings/user-sessions?notice=other_sessions_revoked")
        .await;
    assert_page(&alone, 200);
    assert!(alone.text.contains("Every other session is signed out."));
    assert!(alone.text.contains("No other browser is signed in."));
    // Signed out: to the login page, back here afterwards.
    let anonymous = Browser::new(&app);
    let to_login = anonymous.get("/settings/user-sessions").await;
    assert_eq!(to_login.status.as_u16(), 303);
    assert!(
        to_login
            .header("location")
            .unwrap()
            .starts_with("/login?next=")
    );
    app.stop().await;
}
