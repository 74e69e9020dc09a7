//! `/settings/user-2fa`: turning TOTP on with an authenticator app (the QR code is an inline SVG
//! made here), backup codes shown once, and turning it off — through the use cases the API's
//! `/api/users/@me/two_factor_*` endpoints call, behind the same authorisation.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use qrcode::QrCode;
use qrcode::render::svg;

use super::layout::{Errors, Layout, notice};
use super::{PageError, see_other, text};
use crate::auth::session;
use crate::auth::{Authenticated, Caller, SessionOnly};
use crate::domain::scope::ScopeNeed;
use crate::error::ApiError;
use crate::http::body::Body;
use crate::service::activity::{Context, Origin};
use crate::service::two_factor::{self, Setup};
use crate::state::AppState;
use crate::store::UserRecord;

type PageResult = Result<Response, PageError>;

pub const PAGE: &str = "/settings/user-2fa";

/// The secret of a setup in progress, as text and as a QR code.
pub struct SetupView {
    pub secret: String,
    /// An `<svg>` element (made here from the `otpauth://` URI, so safe to embed).
    pub qr_svg: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "settings_2fa.html", whitespace = "minimize")]
pub struct TwoFactorPage {
    layout: Layout,
    errors: Errors,
    enabled: bool,
    backup_codes_remaining: i64,
    setup: Option<SetupView>,
    /// Codes just made: shown this once.
    backup_codes: Option<Vec<String>>,
    /// The codes as a `data:` URL for the download link.
    download_href: String,
}

/// The QR code of an `otpauth://` URI as an inline `<svg>` (dark on light in either theme, so
/// every authenticator app reads it).
fn qr_svg(uri: &str) -> Result<String, ApiError> {
    let code = QrCode::new(uri.as_bytes()).map_err(ApiError::internal)?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    // The renderer writes a whole document; the page embeds only its `<svg>` element.
    let start = image.find("<svg").unwrap_or(0);
    Ok(image[start..].replacen(
        "<svg",
        "<svg role=\"img\" aria-label=\"QR code of the secret for your authenticator app\"",
        1,
    ))
}

fn setup_view(setup: Setup) -> Result<SetupView, ApiError> {
    Ok(SetupView {
        qr_svg: qr_svg(&setup.otpauth_uri)?,
        secret: setup.secret_base32,
    })
}

async fn render(
    state: &AppState,
    caller: &Caller,
    user: &UserRecord,
    headers: &HeaderMap,
    layout_notice: Option<&'static str>,
    errors: Errors,
    backup_codes: Option<Vec<String>>,
) -> Result<TwoFactorPage, ApiError> {
    let status = two_factor::status(state, user).await?;
    let setup = if status.has_totp || backup_codes.is_some() {
        None
    } else {
        // Keep a setup the user may have scanned already; start one otherwise.
        let setup = match two_factor::pending_setup(state, caller, user).await? {
            Some(setup) => setup,
            None => two_factor::start_setup(state, caller, user).await?,
        };
        Some(setup_view(setup)?)
    };
    let (csrf, _) = session::page_csrf_token(state, headers);
    let download_href = backup_codes.as_ref().map_or_else(String::new, |codes| {
        let text = codes.join("\r\n") + "\r\n";
        format!(
            "data:text/plain;charset=utf-8,{}",
            utf8_percent_encode(&text, NON_ALPHANUMERIC)
        )
    });
    Ok(TwoFactorPage {
        layout: Layout::user("Two-factor authentication", csrf, user).with_notice(layout_notice),
        errors,
        enabled: status.has_totp,
        backup_codes_remaining: status.backup_codes_remaining,
        setup,
        backup_codes,
        download_href,
    })
}

/// Makes new backup codes (the old ones stop working) and shows them, this once.
async fn new_backup_codes(
    state: &AppState,
    ctx: &Context,
    caller: &Caller,
    user: &UserRecord,
    headers: &HeaderMap,
) -> PageResult {
    let codes = two_factor::regenerate_backup_codes(state, ctx, user).await?;
    let page = render(
        state,
        caller,
        user,
        headers,
        None,
        Errors::none(),
        Some(codes),
    )
    .await?;
    Ok(page.into_response())
}

/// `GET /settings/user-2fa`: the status, or the setup when 2FA is off.
pub async fn page(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> PageResult {
    let (caller, user) = signed_in!(&state, auth, PAGE, |auth| auth
        .authorize(ScopeNeed::NoKeyAccess));
    let notice = notice(query.as_deref());
    let page = render(
        &state,
        &caller,
        &user,
        &headers,
        notice,
        Errors::none(),
        None,
    )
    .await?;
    Ok(page.into_response())
}

/// `POST /settings/user-2fa/enable`: `token`, the first code from the app; on success the new
/// backup codes, shown once.
pub async fn enable(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    let form = body?.object()?;
    let (caller, user) = signed_in!(&state, auth, PAGE, |auth| auth
        .authorize(ScopeNeed::NoKeyAccess));
    let token = Some(text(&form, "token").trim().to_string()).filter(|t| !t.is_empty());
    let ctx = Context::caller(&caller, origin);
    match two_factor::enable(&state, &ctx, &caller, &user, token).await {
        Ok(()) => new_backup_codes(&state, &ctx, &caller, &user, &headers).await,
        Err(e) if e.status().is_server_error() => Err(e.into()),
        Err(e) => {
            let errors = Errors::of(&e, &["token"]);
            let status = e.status();
            let page = render(&state, &caller, &user, &headers, None, errors, None).await?;
            Ok((status, page).into_response())
        }
    }
}

/// `POST /settings/user-2fa/backup-codes`: new codes (the old ones stop working), shown once.
pub async fn backup_codes(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    body?;
    let (caller, user) = signed_in!(&state, auth, PAGE, |auth| auth
        .authorize(ScopeNeed::NoKeyAccess));
    if !two_factor::status(&state, &user).await?.has_totp {
        return Ok(see_other(PAGE));
    }
    let ctx = Context::caller(&caller, origin);
    new_backup_codes(&state, &ctx, &caller, &user, &headers).await
}

/// `POST /settings/user-2fa/disable`.
pub async fn disable(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    body: Result<Body, ApiError>,
) -> PageResult {
    body?;
    let (caller, user) = signed_in!(&state, auth, PAGE, |auth| auth
        .authorize(ScopeNeed::NoKeyAccess));
    two_factor::disable(&state, &Context::caller(&caller, origin), &user).await?;
    Ok(see_other("/settings/user-2fa?notice=two_factor_disabled"))
}
