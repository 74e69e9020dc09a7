//! TOTP setup, login with the second factor, backup codes, replay protection and throttling.

use hoglet::time::SECOND;
use reqwest::Method;
use serde_json::json;

use crate::browser::Browser;
use crate::db_tests;
use crate::helpers::{Db, PASSWORD, spawn_app_on_clock, totp_code};

db_tests!(
    totp_setup_login_backup_codes_and_disable,
    keys_cannot_manage_two_factor
);

async fn totp_setup_login_backup_codes_and_disable(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    app.create_user("tfa@example.com", false).await;
    app.create_org("TFA", "tfa@example.com").await;
    let browser = Browser::new(&app);
    browser.login("tfa@example.com", PASSWORD).await.assert_ok();

    let status = browser.get("/api/users/@me/two_factor_status/").await;
    assert_eq!(
        status.assert_ok(),
        &json!({"is_enabled": false, "backup_codes": [], "backup_codes_remaining": 0, "method": null,
                "has_passkeys": false, "has_totp": false, "passkeys_enabled_for_2fa": false})
    );
    browser
        .post(
            "/api/users/@me/two_factor_validate/",
            json!({"token": "123456"}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "setup_expired",
            "2FA setup session expired. Please start setup again.",
            None,
        );
    browser
        .post("/api/users/@me/two_factor_backup_codes/", json!({}))
        .await
        .assert_error(
            400,
            "validation_error",
            "2fa_not_enabled",
            "2FA must be enabled first",
            None,
        );

    let setup = browser.get("/api/users/@me/two_factor_start_setup/").await;
    let setup = setup.assert_ok();
    assert_eq!(setup["success"], true);
    let secret = setup["secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 32);
    assert!(
        setup["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    browser
        .post(
            "/api/users/@me/two_factor_validate/",
            json!({"token": "000000x"}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "token_invalid",
            "Token is not valid",
            None,
        );
    let validated = browser
        .post(
            "/api/users/@me/two_factor_validate/",
            json!({"token": totp_code(&secret, &clock)}),
        )
        .await;
    assert_eq!(validated.json, json!({"success": true}));
    assert_eq!(
        browser.get("/api/users/@me/").await.json["is_2fa_enabled"],
        true
    );

    let codes = browser
        .post("/api/users/@me/two_factor_backup_codes/", json!({}))
        .await;
    let codes: Vec<String> = codes.assert_ok()["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10);
    assert!(codes.iter().all(|c| c.len() == 8));
    let status = browser.get("/api/users/@me/two_factor_status/").await;
    assert_eq!(status.json["is_enabled"], true);
    assert_eq!(status.json["method"], "TOTP");
    assert_eq!(status.json["has_totp"], true);
    assert_eq!(status.json["backup_codes_remaining"], 10);

    // A new browser needs the second factor.
    let other = Browser::new(&app);
    other.login("tfa@example.com", PASSWORD).await.assert_error(
        401,
        "server_error",
        "2fa_required",
        "2FA is required.",
        None,
    );
    assert_eq!(other.get("/api/users/@me/").await.status.as_u16(), 401);
    // The code used to enable 2FA was accepted once; it is never accepted again.
    other
        .post(
            "/api/login/token/",
            json!({"token": totp_code(&secret, &clock)}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "2fa_invalid",
            "Invalid authentication code",
            None,
        );
    // A failed attempt blocks the next one for a moment.
    other
        .post("/api/login/token/", json!({"token": "000000"}))
        .await
        .assert_error(
            400,
            "validation_error",
            "2fa_too_many_attempts",
            "Too many attempts.",
            None,
        );
    clock.advance(60 * SECOND);
    let ok = other
        .post(
            "/api/login/token/",
            json!({"token": totp_code(&secret, &clock)}),
        )
        .await;
    assert_eq!(ok.json, json!({"success": true}), "{}", ok.text);
    assert_eq!(other.get("/api/users/@me/").await.status.as_u16(), 200);
    assert!(
        other
            .cookie_names()
            .iter()
            .any(|n| n.starts_with("remember-cookie_"))
    );

    // After logout, the remembered device logs in directly.
    other.call(Method::POST, "/logout/", None).await;
    assert_eq!(other.get("/api/users/@me/").await.status.as_u16(), 401);
    assert_eq!(
        other.login("tfa@example.com", PASSWORD).await.json,
        json!({"success": true})
    );

    // Backup codes work once each.
    let third = Browser::new(&app);
    third.login("tfa@example.com", PASSWORD).await.assert_error(
        401,
        "server_error",
        "2fa_required",
        "2FA is required.",
        None,
    );
    clock.advance(60 * SECOND);
    assert_eq!(
        third
            .post("/api/login/token", json!({"token": codes[0]}))
            .await
            .json,
        json!({"success": true})
    );
    let fourth = Browser::new(&app);
    fourth.login("tfa@example.com", PASSWORD).await;
    clock.advance(60 * SECOND);
    fourth
        .post("/api/login/token", json!({"token": codes[0]}))
        .await
        .assert_error(
            400,
            "validation_error",
            "2fa_invalid",
            "Invalid authentication code",
            None,
        );

    // A pending login expires after ten minutes.
    let late = Browser::new(&app);
    late.login("tfa@example.com", PASSWORD).await;
    clock.advance(601 * SECOND);
    late.post("/api/login/token", json!({"token": codes[1]}))
        .await
        .assert_error(
            400,
            "validation_error",
            "2fa_expired",
            "Login attempt has expired. Re-enter username/password.",
            None,
        );
    Browser::new(&app)
        .post("/api/login/token", json!({"token": codes[1]}))
        .await
        .assert_error(
            400,
            "validation_error",
            "2fa_expired",
            "Login attempt has expired. Re-enter username/password.",
            None,
        );

    // Disabling removes the device and the codes (the third browser's login is recent).
    let disabled = third
        .post("/api/users/@me/two_factor_disable/", json!({}))
        .await;
    assert_eq!(disabled.json, json!({"success": true}), "{}", disabled.text);
    let status = third.get("/api/users/@me/two_factor_status/").await;
    assert_eq!(status.json["is_enabled"], false);
    assert_eq!(status.json["backup_codes_remaining"], 0);
    let plain = Browser::new(&app);
    assert_eq!(
        plain.login("tfa@example.com", PASSWORD).await.json,
        json!({"success": true})
    );
    app.stop().await;
}

async fn keys_cannot_manage_two_factor(db: Db) {
    let (app, _clock) = spawn_app_on_clock(db, |_| {}).await;
    let (_, key) = app.user_with_key("k@example.com", false, &["*"]).await;
    for (method, path) in [
        (Method::GET, "/api/users/@me/two_factor_start_setup/"),
        (Method::GET, "/api/users/@me/two_factor_status/"),
        (Method::POST, "/api/users/@me/two_factor_validate/"),
        (Method::POST, "/api/users/@me/two_factor_backup_codes/"),
        (Method::POST, "/api/users/@me/two_factor_disable/"),
        (Method::PATCH, "/api/users/cancel_email_change_request/"),
    ] {
        app.call(method, path, Some(&key), Some(json!({})))
            .await
            .assert_error(
                403,
                "authentication_error",
                "permission_denied",
                "This action does not support Personal API Key access",
                None,
            );
    }
    app.stop().await;
}
