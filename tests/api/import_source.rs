//! The import's view of a PostHog database (issue 14): PostHog's real column sets (many more than
//! hoglet reads), read through one read-only snapshot, whole or for some organizations. Needs
//! PostgreSQL (`HOGLET_TEST_POSTGRES_URL`).

use hoglet::config::DatabaseUrl;
use hoglet::import::source::Source;
use secrecy::ExposeSecret;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Db, TestDatabase};
use crate::import_posthog::POSTHOG_SCHEMA;
use crate::store_contract::raw_exec;

const ORG_A: &str = "0188a0a0-0000-7000-8000-00000000000a";
const ORG_B: &str = "0188a0a0-0000-7000-8000-00000000000b";

const ROWS: &str = r#"
INSERT INTO posthog_organization (id, name, slug, created_at, enforce_2fa) VALUES
    ('0188a0a0-0000-7000-8000-00000000000a', 'Alpha', 'alpha', '2023-11-14 22:13:20+00', true),
    ('0188a0a0-0000-7000-8000-00000000000b', 'Beta', 'beta', '2023-11-15 00:00:00+00', NULL);
INSERT INTO posthog_team (id, uuid, organization_id, project_id, api_token, name, created_at) VALUES
    (2, '0188a0a0-0000-7000-8000-0000000000f2', '0188a0a0-0000-7000-8000-00000000000a', 1, 'phc_alpha2', 'Alpha web', '2023-11-14 22:13:21+00'),
    (5, '0188a0a0-0000-7000-8000-0000000000f5', '0188a0a0-0000-7000-8000-00000000000b', NULL, 'phc_beta5', 'Beta', '2023-11-15 00:00:01+00');
INSERT INTO posthog_user (id, uuid, email, password, first_name, date_joined, last_login,
    current_organization_id, current_team_id, is_email_verified, hedgehog_config, is_staff) VALUES
    (7, '0188a0a0-0000-7000-8000-0000000000e7', 'ann@alpha.example', 'pbkdf2_sha256$600000$salt$hash', 'Ann',
     '2023-11-14 22:13:20.5+00', '2024-01-01 00:00:00+00', '0188a0a0-0000-7000-8000-00000000000a', 2, true,
     '{"use_as_profile": true}', true),
    (9, '0188a0a0-0000-7000-8000-0000000000e9', 'bob@beta.example', '!unusable', 'Bob',
     '2023-11-15 00:00:00+00', NULL, NULL, NULL, NULL, NULL, false);
INSERT INTO posthog_organizationmembership (id, organization_id, user_id, level, joined_at) VALUES
    ('0188a0a0-0000-7000-8000-0000000000d1', '0188a0a0-0000-7000-8000-00000000000a', 7, 15, '2023-11-14 22:13:20+00'),
    ('0188a0a0-0000-7000-8000-0000000000d2', '0188a0a0-0000-7000-8000-00000000000b', 9, 1, '2023-11-15 00:00:00+00');
INSERT INTO posthog_personalapikey (id, user_id, label, value, mask_value, secure_value, created_at, scopes, scoped_teams) VALUES
    ('key-sha', 7, 'ci', NULL, 'phx_...abcd', 'sha256$0123', '2024-01-02 00:00:00+00', '{user:read}', '{2}'),
    ('key-plain', 7, 'old', 'phx_legacyplaintext', NULL, NULL, '2022-01-01 00:00:00+00', NULL, NULL),
    ('key-bob', 9, 'bob', NULL, 'phx_...bbbb', 'pbkdf2_sha256$260000$posthog_personal_api_key$x', '2024-01-03 00:00:00+00', '{}', NULL);
INSERT INTO otp_totp_totpdevice (id, user_id, name, confirmed, key, step, t0, digits, tolerance, drift, last_t) VALUES
    (1, 7, 'default', true, '3132333435363738393031323334353637383930', 30, 0, 6, 1, 0, 56789012);
INSERT INTO otp_static_staticdevice (id, user_id, name, confirmed) VALUES (1, 7, 'backup', true), (2, 9, 'backup', false);
INSERT INTO otp_static_statictoken (id, device_id, token) VALUES (1, 1, 'abcd1234'), (2, 1, 'efgh5678'), (3, 2, 'zzzz0000');
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hoglet_test_postgres),
    ignore = "HOGLET_TEST_POSTGRES_URL is not set"
)]
async fn a_posthog_snapshot_reads_the_columns_it_carries_over() {
    let posthog = TestDatabase::create(Db::Postgres).await;
    raw_exec(&posthog, "", &format!("{POSTHOG_SCHEMA}{ROWS}")).await;
    let DatabaseUrl::Postgres(url) = &posthog.url else {
        unreachable!("a Postgres test database")
    };

    let mut source = Source::connect(url).await.expect("connects");
    let all = source.snapshot(&[]).await.expect("snapshot");
    let orgs = all.all(&all.organizations()).await.unwrap();
    assert_eq!(
        orgs.iter()
            .map(|o| (o.id.to_string(), o.slug.as_str(), o.enforce_2fa))
            .collect::<Vec<_>>(),
        [
            (ORG_A.to_string(), "alpha", Some(true)),
            (ORG_B.to_string(), "beta", None)
        ]
    );
    assert_eq!(orgs[0].created_at, 1_700_000_000_000_000);
    assert!(orgs[0].members_can_use_personal_api_keys);

    let teams = all.all(&all.teams()).await.unwrap();
    assert_eq!(
        teams
            .iter()
            .map(|t| (t.id, t.project_id, t.api_token.as_str()))
            .collect::<Vec<_>>(),
        [(2, 1, "phc_alpha2"), (5, 5, "phc_beta5")],
        "a team without a project is its own"
    );

    let users = all.all(&all.users()).await.unwrap();
    assert_eq!(users.len(), 2);
    let ann = &users[0];
    assert_eq!(
        (ann.id, ann.email.as_str(), ann.password.0.as_str()),
        (7, "ann@alpha.example", "pbkdf2_sha256$600000$salt$hash")
    );
    assert_eq!(ann.date_joined, 1_700_000_000_500_000);
    assert_eq!(ann.last_login, Some(1_704_067_200_000_000));
    assert_eq!(
        ann.current_organization_id,
        Some(Uuid::parse_str(ORG_A).unwrap())
    );
    assert_eq!(ann.current_team_id, Some(2));
    assert_eq!(
        json_of(&ann.hedgehog_config),
        Some(json!({"use_as_profile": true}))
    );
    assert_eq!(
        json_of(&ann.events_column_config),
        Some(json!({"active": "DEFAULT"}))
    );
    assert!(ann.is_staff && ann.is_active);
    assert_eq!(users[1].password.0, "!unusable");
    assert_eq!(users[1].last_login, None);

    let memberships = all.all(&all.memberships()).await.unwrap();
    assert_eq!(
        memberships
            .iter()
            .map(|m| (m.user_id, m.level))
            .collect::<Vec<_>>(),
        [(7, 15), (9, 1)]
    );

    let keys = all.all(&all.api_keys()).await.unwrap();
    let summary: Vec<_> = keys
        .iter()
        .map(|k| {
            (
                k.id.as_str(),
                k.secure_value.clone(),
                k.value.as_ref().map(|v| v.expose_secret().to_string()),
                k.scopes.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "key-plain",
                None,
                Some("phx_legacyplaintext".to_string()),
                vec![]
            ),
            (
                "key-sha",
                Some("sha256$0123".to_string()),
                None,
                vec!["user:read".to_string()]
            ),
            (
                "key-bob",
                Some("pbkdf2_sha256$260000$posthog_personal_api_key$x".to_string()),
                None,
                vec![]
            ),
        ]
    );
    assert_eq!(keys[1].scoped_teams, Some(vec![2]));

    let devices = all.all(&all.totp_devices()).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (
            devices[0].user_id,
            devices[0].step,
            devices[0].digits,
            devices[0].last_t
        ),
        (7, 30, 6, 56_789_012)
    );
    assert_eq!(
        devices[0].key.expose_secret(),
        "3132333435363738393031323334353637383930"
    );
    assert!(
        !format!("{:?}", devices[0]).contains("3132"),
        "Debug never shows the key"
    );
    let tokens = all.all(&all.static_tokens()).await.unwrap();
    assert_eq!(
        tokens
            .iter()
            .map(|t| (t.user_id, t.token.expose_secret().to_string()))
            .collect::<Vec<_>>(),
        [(7, "abcd1234".to_string()), (7, "efgh5678".to_string())],
        "only confirmed devices' codes"
    );

    // One organization: its teams, members and their keys and devices only.
    assert_eq!(all.count(&all.users()).await.unwrap(), 2);
    drop(all);
    let beta = source
        .snapshot(&[Uuid::parse_str(ORG_B).unwrap()])
        .await
        .unwrap();
    assert_eq!(beta.all(&beta.organizations()).await.unwrap().len(), 1);
    assert_eq!(beta.all(&beta.teams()).await.unwrap()[0].id, 5);
    assert_eq!(
        beta.all(&beta.users())
            .await
            .unwrap()
            .iter()
            .map(|u| u.id)
            .collect::<Vec<_>>(),
        [9]
    );
    assert_eq!(beta.all(&beta.memberships()).await.unwrap().len(), 1);
    assert_eq!(
        beta.all(&beta.api_keys())
            .await
            .unwrap()
            .iter()
            .map(|k| k.id.as_str().to_string())
            .collect::<Vec<_>>(),
        ["key-bob"]
    );
    assert!(beta.all(&beta.totp_devices()).await.unwrap().is_empty());
    assert!(beta.all(&beta.static_tokens()).await.unwrap().is_empty());
    drop(beta);
}

fn json_of(text: &Option<String>) -> Option<serde_json::Value> {
    text.as_deref()
        .map(|t| serde_json::from_str(t).expect("JSON text"))
}
