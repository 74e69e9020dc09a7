//! `GET /api/users/`: narrowing, filters and limit/offset pagination (users.md §4.1, §4.2; test
//! cases 5, 7–10).

use hoglet::store::MembershipLevel;
use reqwest::Method;
use serde_json::{Value, json};

use crate::db_tests;
use crate::helpers::{Db, TestApp, spawn_app};
use crate::users::assert_user_shape;

db_tests!(
    non_staff_see_only_themselves,
    staff_see_every_active_user_in_id_order,
    email_filter_is_exact_and_case_sensitive,
    is_staff_filter_accepts_booleans_and_ignores_the_rest,
    limit_and_offset_fall_back_to_defaults,
    next_and_previous_links_follow_drf,
    creating_users_is_not_allowed,
    credentials_are_never_echoed_into_page_links,
    huge_limits_and_offsets_are_clamped,
    control_characters_in_the_email_filter_are_refused,
);

/// The clamp of `limit` and `offset`: 2⁵³ − 1.
const MAX_PAGE_BOUND: i64 = 9_007_199_254_740_991;

fn ids(page: &Value) -> Vec<i64> {
    page["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect()
}

/// Staff `root` (id 1) and four more users (ids 2–5); `carol` (id 4) is staff too.
async fn population(app: &TestApp) -> (String, Vec<i64>) {
    let (root, key) = app
        .user_with_key("root@example.com", true, &["user:read"])
        .await;
    let mut all = vec![root.id];
    for (email, staff) in [
        ("alice@example.com", false),
        ("Bob@Example.com", false),
        ("carol@example.com", true),
        ("dave@example.com", false),
    ] {
        all.push(app.create_user(email, staff).await.id);
    }
    (key, all)
}

/// Test cases 5 and 7: non-staff get a list of one (themselves), whatever they filter on.
async fn non_staff_see_only_themselves(db: Db) {
    let app = spawn_app(db).await;
    population(&app).await;
    let (me, key) = app
        .user_with_key("plain@example.com", false, &["user:read"])
        .await;
    for path in ["/api/users/", "/api/users", "/api/users/?is_staff=false"] {
        let page = app.get(path, &key).await.assert_ok().clone();
        assert_eq!(page["count"], 1, "{path}");
        assert_eq!(page["next"], Value::Null);
        assert_eq!(page["previous"], Value::Null);
        assert_eq!(page["results"][0]["uuid"], json!(me.uuid));
        assert_user_shape(&page["results"][0]);
        assert_eq!(page["results"][0]["organization"]["membership_level"], 15);
    }
    for path in [
        "/api/users/?email=alice%40example.com",
        "/api/users/?email=root@example.com",
        "/api/users/?is_staff=true",
        "/api/users/?email=plain@example.com&is_staff=1",
    ] {
        let page = app.get(path, &key).await.assert_ok().clone();
        assert_eq!(
            page,
            json!({"count": 0, "next": null, "previous": null, "results": []}),
            "{path}"
        );
    }
    let page = app
        .get("/api/users/?email=plain%40example.com", &key)
        .await
        .assert_ok()
        .clone();
    assert_eq!(ids(&page), vec![me.id]);
    app.stop().await;
}

/// Staff see every active user, ordered by id, each rendered in full with the requester's level.
async fn staff_see_every_active_user_in_id_order(db: Db) {
    let app = spawn_app(db).await;
    let (key, all) = population(&app).await;
    let inactive = app.create_user("inactive@example.com", false).await;
    let mut record = app.user_record(inactive.id).await;
    record.is_active = false;
    app.store_user(&record).await;
    let org = app.get("/api/users/@me/", &key).await.assert_ok()["organization"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.add_member(&org, "alice@example.com", MembershipLevel::Member)
        .await;

    let page = app.get("/api/users/", &key).await.assert_ok().clone();
    assert_eq!(page["count"], 5);
    assert_eq!(ids(&page), all);
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["previous"], Value::Null);
    for user in page["results"].as_array().unwrap() {
        assert_user_shape(user);
        assert_eq!(user["sensitive_session_expires_at"], Value::Null);
    }
    let alice = &page["results"][1];
    assert_eq!(alice["email"], "alice@example.com");
    // The requester (staff, owner of that organization) is level 15 there.
    assert_eq!(alice["organization"]["id"], json!(org));
    assert_eq!(alice["organization"]["membership_level"], 15);
    // A user without memberships.
    assert_eq!(page["results"][2]["organization"], Value::Null);
    assert_eq!(page["results"][2]["organizations"], json!([]));
    app.stop().await;
}

/// `email`: exact and case-sensitive; an empty value is no filter (django-filter skips it); unknown
/// parameters are ignored.
async fn email_filter_is_exact_and_case_sensitive(db: Db) {
    let app = spawn_app(db).await;
    let (key, all) = population(&app).await;
    let cases: &[(&str, Vec<i64>)] = &[
        ("email=alice@example.com", vec![all[1]]),
        ("email=alice%40example.com", vec![all[1]]),
        ("email=Bob@Example.com", vec![all[2]]),
        ("email=bob@example.com", vec![]),
        ("email=ALICE@example.com", vec![]),
        ("email=alice", vec![]),
        ("email=%20alice@example.com", vec![]),
        ("email=", all.clone()),
        (
            "email=alice@example.com&email=dave@example.com",
            vec![all[4]],
        ),
        ("email=carol@example.com&is_staff=true", vec![all[3]]),
        ("email=carol@example.com&is_staff=false", vec![]),
        ("nonsense=1&ordering=-id", all.clone()),
    ];
    for (query, expected) in cases {
        let page = app
            .get(&format!("/api/users/?{query}"), &key)
            .await
            .assert_ok()
            .clone();
        assert_eq!(&ids(&page), expected, "{query}");
        assert_eq!(page["count"], json!(expected.len()), "{query}");
    }
    app.stop().await;
}

/// `is_staff`: true/false/1/0 in any case; any other value is no filter at all.
async fn is_staff_filter_accepts_booleans_and_ignores_the_rest(db: Db) {
    let app = spawn_app(db).await;
    let (key, all) = population(&app).await;
    let staff = vec![all[0], all[3]];
    let others = vec![all[1], all[2], all[4]];
    for (value, expected) in [
        ("true", &staff),
        ("True", &staff),
        ("TRUE", &staff),
        ("1", &staff),
        ("false", &others),
        ("False", &others),
        ("0", &others),
        ("maybe", &all),
        ("", &all),
        ("yes", &all),
        ("2", &all),
    ] {
        let page = app
            .get(&format!("/api/users/?is_staff={value}"), &key)
            .await
            .assert_ok()
            .clone();
        assert_eq!(&ids(&page), expected, "is_staff={value}");
        assert_eq!(page["count"], json!(expected.len()));
    }
    app.stop().await;
}

/// A missing, zero, negative or non-integer `limit` means 100; a negative or non-integer `offset`
/// means 0.
async fn limit_and_offset_fall_back_to_defaults(db: Db) {
    let app = spawn_app(db).await;
    let (key, all) = population(&app).await;
    for query in [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "offset=-5",
        "offset=abc",
        "offset=",
        "limit=0&offset=-1",
    ] {
        let page = app
            .get(&format!("/api/users/?{query}"), &key)
            .await
            .assert_ok()
            .clone();
        assert_eq!(ids(&page), all, "{query}");
        assert_eq!(page["count"], 5);
        assert_eq!(page["next"], Value::Null, "{query}");
        assert_eq!(page["previous"], Value::Null, "{query}");
    }
    let page = app
        .get("/api/users/?limit=%202%20&offset=%201", &key)
        .await
        .assert_ok()
        .clone();
    assert_eq!(ids(&page), all[1..3].to_vec());
    // An offset past the end: an empty page that still counts everything.
    let page = app
        .get("/api/users/?offset=50", &key)
        .await
        .assert_ok()
        .clone();
    assert_eq!(page["count"], 5);
    assert_eq!(page["results"], json!([]));
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["previous"], json!(app.url("/api/users/?limit=100")));
    app.stop().await;
}

/// users.md §4.1: absolute links of the same request with `limit`/`offset` replaced, parameters
/// sorted by name and encoded like Python's `urlencode`; `previous` drops an offset of 0.
async fn next_and_previous_links_follow_drf(db: Db) {
    let app = spawn_app(db).await;
    let (key, all) = population(&app).await;
    let page = |query: &'static str| {
        let app = &app;
        let key = &key;
        async move {
            app.get(&format!("/api/users/{query}"), key)
                .await
                .assert_ok()
                .clone()
        }
    };
    // Links are absolute, on the configured site URL (here the default, the bound address).
    assert_eq!(app.state.site_url, app.base);
    let link = |s: &str| json!(format!("{}{s}", app.state.site_url));

    let p = page("?limit=2").await;
    assert_eq!(p["count"], 5);
    assert_eq!(ids(&p), all[0..2].to_vec());
    assert_eq!(p["next"], link("/api/users/?limit=2&offset=2"));
    assert_eq!(p["previous"], Value::Null);

    let p = page("?limit=2&offset=2").await;
    assert_eq!(ids(&p), all[2..4].to_vec());
    assert_eq!(p["next"], link("/api/users/?limit=2&offset=4"));
    assert_eq!(p["previous"], link("/api/users/?limit=2"));

    let p = page("?offset=3&limit=2").await;
    assert_eq!(p["count"], 5);
    assert_eq!(ids(&p), all[3..5].to_vec());
    assert_eq!(p["next"], Value::Null);
    assert_eq!(p["previous"], link("/api/users/?limit=2&offset=1"));

    // A short last page counts from its own rows: the count is still everything.
    let p = page("?limit=2&offset=4").await;
    assert_eq!(p["count"], 5);
    assert_eq!(ids(&p), all[4..5].to_vec());
    assert_eq!(p["next"], Value::Null);
    assert_eq!(p["previous"], link("/api/users/?limit=2&offset=2"));

    // Other parameters are kept, sorted by name, re-encoded (`@` → `%40`, space → `+`).
    let p = page("?zeta=z&limit=1&alpha=a%20b&is_staff=false&email=").await;
    assert_eq!(ids(&p), vec![all[1]]);
    assert_eq!(
        p["next"],
        link("/api/users/?alpha=a+b&email=&is_staff=false&limit=1&offset=1&zeta=z")
    );
    let p = page("?offset=2&limit=1&email=alice@example.com").await;
    assert_eq!(p["count"], 1);
    assert_eq!(p["results"], json!([]));
    assert_eq!(p["next"], Value::Null);
    assert_eq!(
        p["previous"],
        link("/api/users/?email=alice%40example.com&limit=1&offset=1")
    );

    // The path as requested (no trailing slash) is the path of the links.
    let p = page("?limit=3").await;
    assert_eq!(p["next"], link("/api/users/?limit=3&offset=3"));
    let reply = app.get("/api/users?limit=3&offset=1", &key).await;
    let p = reply.assert_ok();
    assert_eq!(p["next"], link("/api/users?limit=3&offset=4"));
    assert_eq!(p["previous"], link("/api/users?limit=3"));

    // A default-sized page past the start.
    let p = page("?offset=1").await;
    assert_eq!(ids(&p), all[1..].to_vec());
    assert_eq!(p["next"], Value::Null);
    assert_eq!(p["previous"], link("/api/users/?limit=100"));
    app.stop().await;
}

/// Test case 10: users are never created here, whatever the method on the list route.
async fn creating_users_is_not_allowed(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app.user_with_key("admin@example.com", true, &["*"]).await;
    let before = app.store.count_users().await.unwrap();
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let name = method.to_string();
        app.call(
            method,
            "/api/users/",
            Some(&key),
            Some(json!({"first_name": "New", "email": "new@example.com", "password": "x"})),
        )
        .await
        .assert_error(
            405,
            "invalid_request",
            "method_not_allowed",
            &format!("Method \"{name}\" not allowed."),
            None,
        );
    }
    app.call(
        Method::POST,
        "/api/users",
        Some(&key),
        Some(json!({"first_name": "New", "email": "new@example.com"})),
    )
    .await
    .assert_error(
        405,
        "invalid_request",
        "method_not_allowed",
        "Method \"POST\" not allowed.",
        None,
    );
    // Nor on a user.
    app.call(
        Method::POST,
        "/api/users/@me/",
        Some(&key),
        Some(json!({"first_name": "New"})),
    )
    .await
    .assert_error(
        405,
        "invalid_request",
        "method_not_allowed",
        "Method \"POST\" not allowed.",
        None,
    );
    assert_eq!(app.store.count_users().await.unwrap(), before);
    app.stop().await;
}

/// Issue 10 item 10: a key given as `?personal_api_key=` authenticates the request but is never
/// echoed into `next`/`previous`, nor is a `token`; every other parameter is kept, sorted.
async fn credentials_are_never_echoed_into_page_links(db: Db) {
    let app = spawn_app(db).await;
    let (key, all) = population(&app).await;
    let link = |s: &str| json!(format!("{}{s}", app.state.site_url));

    let path =
        format!("/api/users/?zeta=z&personal_api_key={key}&limit=2&offset=2&token=secret&alpha=a");
    let reply = app.call(Method::GET, &path, None, None).await;
    let page = reply.assert_ok();
    assert_eq!(page["count"], 5);
    assert_eq!(ids(page), all[2..4].to_vec());
    assert_eq!(
        page["next"],
        link("/api/users/?alpha=a&limit=2&offset=4&zeta=z")
    );
    assert_eq!(page["previous"], link("/api/users/?alpha=a&limit=2&zeta=z"));
    assert!(!reply.text.contains(&key), "{}", reply.text);
    assert!(!reply.text.contains("secret"), "{}", reply.text);

    // Also when the header authenticates and the query repeats the key, and whatever the
    // encoding of the name.
    let path = format!("/api/users/?limit=1&personal%5Fapi%5Fkey={key}&personal_api_key={key}");
    let reply = app.get(&path, &key).await;
    assert_eq!(
        reply.assert_ok()["next"],
        link("/api/users/?limit=1&offset=1")
    );
    assert!(!reply.text.contains(&key), "{}", reply.text);
    app.stop().await;
}

/// Issue 10 item 11: `limit` and `offset` are clamped to 2⁵³ − 1 (a value past `i64` too), so
/// `offset + limit` never overflows; a page past the end is empty and keeps the true count.
async fn huge_limits_and_offsets_are_clamped(db: Db) {
    let app = spawn_app(db).await;
    let (key, all) = population(&app).await;
    let link = |s: String| json!(format!("{}{s}", app.state.site_url));
    let max = MAX_PAGE_BOUND;
    let cases: Vec<(&str, Vec<i64>, Value, Value)> = vec![
        (
            "limit=9223372036854775807&offset=1",
            all[1..].to_vec(),
            Value::Null,
            link(format!("/api/users/?limit={max}")),
        ),
        (
            "offset=9223372036854775807",
            vec![],
            Value::Null,
            link(format!("/api/users/?limit=100&offset={}", max - 100)),
        ),
        (
            "limit=2&offset=9223372036854775807",
            vec![],
            Value::Null,
            link(format!("/api/users/?limit=2&offset={}", max - 2)),
        ),
        (
            "limit=99999999999999999999999&offset=99999999999999999999999",
            vec![],
            Value::Null,
            link(format!("/api/users/?limit={max}")),
        ),
        (
            "limit=9223372036854775807",
            all.clone(),
            Value::Null,
            Value::Null,
        ),
        (
            "limit=9007199254740991&offset=4",
            all[4..].to_vec(),
            Value::Null,
            link(format!("/api/users/?limit={max}")),
        ),
        (
            "limit=-9223372036854775808&offset=-9223372036854775808",
            all.clone(),
            Value::Null,
            Value::Null,
        ),
        (
            "limit=-99999999999999999999&offset=-99999999999999999999",
            all.clone(),
            Value::Null,
            Value::Null,
        ),
        (
            "limit=1&offset=9007199254740990",
            vec![],
            Value::Null,
            link(format!("/api/users/?limit=1&offset={}", max - 2)),
        ),
    ];
    for (query, expected, next, previous) in cases {
        let page = app
            .get(&format!("/api/users/?{query}"), &key)
            .await
            .assert_ok()
            .clone();
        assert_eq!(ids(&page), expected, "{query}");
        assert_eq!(page["count"], 5, "{query}");
        assert_eq!(page["next"], next, "{query}");
        assert_eq!(page["previous"], previous, "{query}");
    }

    // Filtered counts past the end: an email lookup, and a non-staff caller's list of one.
    let page = app
        .get(
            "/api/users/?email=alice%40example.com&offset=9223372036854775807",
            &key,
        )
        .await
        .assert_ok()
        .clone();
    assert_eq!(page["count"], 1);
    assert_eq!(page["results"], json!([]));
    let (_, plain) = app
        .user_with_key("plain@example.com", false, &["user:read"])
        .await;
    let page = app
        .get(
            "/api/users/?limit=9223372036854775807&offset=9223372036854775807",
            &plain,
        )
        .await
        .assert_ok()
        .clone();
    assert_eq!(page["count"], 1);
    assert_eq!(page["results"], json!([]));
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["previous"], link(format!("/api/users/?limit={max}")));
    app.stop().await;
}

/// Issue 10 item 12: a NUL (which PostgreSQL text cannot hold) or any other control character in
/// the `email` filter is a 400 naming the parameter, on both databases, for staff and others.
async fn control_characters_in_the_email_filter_are_refused(db: Db) {
    let app = spawn_app(db).await;
    let (staff, all) = population(&app).await;
    let (_, plain) = app
        .user_with_key("plain@example.com", false, &["user:read"])
        .await;
    const NUL: (&str, &str) = (
        "null_characters_not_allowed",
        "Null characters are not allowed.",
    );
    const CONTROL: (&str, &str) = ("invalid_input", "Control characters are not allowed.");
    for (value, (code, detail)) in [
        ("%00", NUL),
        ("a%00b", NUL),
        ("alice%40example.com%00", NUL),
        ("%01%00", NUL),
        ("%01", CONTROL),
        ("a%09b", CONTROL),
        ("alice%40example.com%0A", CONTROL),
        ("a%0Db", CONTROL),
        ("a%1Bb", CONTROL),
        ("%7F", CONTROL),
        ("a%C2%85b", CONTROL),
    ] {
        for key in [&staff, &plain] {
            app.get(&format!("/api/users/?email={value}"), key)
                .await
                .assert_error(400, "validation_error", code, detail, Some("email"));
        }
    }
    // Only the value the filter uses counts (the last one), and other parameters are not
    // filters: they are only echoed (encoded) into the links.
    let page = app
        .get("/api/users/?email=%00&email=alice%40example.com", &staff)
        .await
        .assert_ok()
        .clone();
    assert_eq!(ids(&page), vec![all[1]]);
    let page = app
        .get("/api/users/?zeta=%00&limit=1", &staff)
        .await
        .assert_ok()
        .clone();
    assert_eq!(ids(&page), vec![all[0]]);
    assert_eq!(
        page["next"],
        json!(app.url("/api/users/?limit=1&offset=1&zeta=%00"))
    );
    // Unicode that is not a control character is fine.
    let page = app
        .get("/api/users/?email=%C3%A9%E2%80%8B%40example.com", &staff)
        .await
        .assert_ok()
        .clone();
    assert_eq!(page["count"], 0);
    app.stop().await;
}
