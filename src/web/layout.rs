//! What every page's frame shows (title, theme, the signed-in user and their logout button), and
//! how an API error becomes messages on a form.

use askama::Template;
use askama_web::WebTemplate;

use crate::error::ApiError;
use crate::store::UserRecord;

/// The frame of a page (`templates/base.html`).
pub struct Layout {
    pub title: String,
    /// `light`, `dark` or `system` (the user's `theme_mode`; `system` follows the browser).
    pub theme: &'static str,
    /// The stylesheet's content-hashed URL.
    pub stylesheet: &'static str,
    /// The CSRF token the page's forms carry.
    pub csrf: String,
    /// The signed-in user's email (shows the logout button).
    pub signed_in: Option<String>,
    /// A one-line notice at the top of the page.
    pub notice: Option<&'static str>,
}

impl Layout {
    /// A page for a visitor who is not signed in.
    pub fn anonymous(title: &str, csrf: String) -> Self {
        Self {
            title: title.to_string(),
            theme: "system",
            stylesheet: super::assets::stylesheet_url(),
            csrf,
            signed_in: None,
            notice: None,
        }
    }

    /// A page for a signed-in user, in their theme.
    pub fn user(title: &str, csrf: String, user: &UserRecord) -> Self {
        Self {
            theme: theme(user.theme_mode.as_deref()),
            signed_in: Some(user.email.clone()),
            ..Self::anonymous(title, csrf)
        }
    }

    pub fn with_notice(mut self, notice: Option<&'static str>) -> Self {
        self.notice = notice;
        self
    }
}

/// The page theme of a `theme_mode`.
pub fn theme(mode: Option<&str>) -> &'static str {
    match mode {
        Some("light") => "light",
        Some("dark") => "dark",
        _ => "system",
    }
}

/// A query parameter's value: the first one, as a browser's `URLSearchParams.get` reads it
/// (PostHog's app reads these parameters in the browser).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query?)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The day (`YYYY-MM-DD`, UTC) of a timestamp, as the tables show dates.
pub fn day(at: crate::time::Micros) -> String {
    crate::time::iso_z(at).chars().take(10).collect()
}

/// The notice a redirect asks for with `?notice=KEY` (only these fixed texts: nothing from the
/// query is shown).
pub fn notice(query: Option<&str>) -> Option<&'static str> {
    let key = query_param(query, "notice")?;
    Some(match key.as_str() {
        "password_reset" => "Your password has been changed. Log in with the new one.",
        "verified" => "Your email address is verified. Log in to continue.",
        "logged_out" => "You are logged out.",
        "profile_saved" => "Your profile is saved.",
        "email_change_requested" => {
            "Check your inbox: the change takes effect when you open the link sent to the new address."
        }
        "email_changed" => "Your email address is changed.",
        "email_change_cancelled" => "The email change is cancelled.",
        "password_changed" => "Your password is changed. Your other sessions are signed out.",
        "two_factor_disabled" => "Two-factor authentication is off.",
        "key_deleted" => "The key is deleted. It no longer works.",
        "github_disconnected" => "The GitHub integration is removed.",
        "session_revoked" => "The session is signed out.",
        "session_gone" => "That session had already ended.",
        "other_sessions_revoked" => "Every other session is signed out.",
        _ => return None,
    })
}

/// An API error as form messages: one per field the form has (shown under that input and tied to
/// it with `aria-describedby`), else one for the whole form.
#[derive(Debug, Default)]
pub struct Errors {
    pub general: Option<String>,
    pub fields: Vec<(&'static str, String)>,
}

impl Errors {
    pub fn none() -> Self {
        Self::default()
    }

    /// `inputs` are the form's field names; an error about another field is shown for the form.
    pub fn of(error: &ApiError, inputs: &[&'static str]) -> Self {
        let detail = error.detail();
        if let ApiError::Validation {
            attr: Some(attr), ..
        } = error
            && let Some(input) = inputs.iter().find(|i| **i == attr.as_ref())
        {
            return Self {
                general: None,
                fields: vec![(input, detail)],
            };
        }
        Self {
            general: Some(detail),
            fields: Vec::new(),
        }
    }

    /// A message about one field.
    pub fn field(name: &'static str, detail: &str) -> Self {
        Self {
            general: None,
            fields: vec![(name, detail.to_string())],
        }
    }

    /// The message about `name`, if any.
    pub fn on(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d.as_str())
    }
}

/// An error shown as a page of its own.
#[derive(Template, WebTemplate)]
#[template(path = "error.html", whitespace = "minimize")]
pub struct ErrorPage {
    pub layout: Layout,
    pub status: u16,
    pub detail: String,
}
