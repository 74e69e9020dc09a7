//! User settings vocabularies and the notification-settings rules (PostHog's
//! `posthog/api/notification_settings.py`).

use serde_json::{Map, Value, json};

use super::python::{py_repr, py_type_name};

pub const TOOLBAR_MODES: &[&str] = &["disabled", "toolbar"];
pub const THEME_MODES: &[&str] = &["light", "dark", "system"];
pub const SHORTCUT_POSITIONS: &[&str] = &["above", "below", "hidden"];
pub const ROLES_AT_ORGANIZATION: &[&str] = &[
    "engineering",
    "data",
    "product",
    "founder",
    "leadership",
    "marketing",
    "sales",
    "student",
    "other",
];

/// Rendered in place of a stored null `shortcut_position`.
pub const DEFAULT_SHORTCUT_POSITION: &str = "above";

/// Keys whose value is a map of ids to booleans, merged rather than replaced.
const MAP_KEYS: &[&str] = &[
    "project_weekly_digest_disabled",
    "organization_member_join_email_disabled",
];
const THRESHOLD_KEY: &str = "data_pipeline_error_threshold";

/// The baseline defaults, in PostHog's order.
pub fn default_notification_settings() -> Map<String, Value> {
    let Value::Object(map) = json!({
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
    }) else {
        unreachable!("a JSON object literal")
    };
    map
}

/// Defaults overlaid with what is stored.
pub fn effective_notification_settings(stored: Option<&Value>) -> Map<String, Value> {
    let mut settings = default_notification_settings();
    if let Some(Value::Object(stored)) = stored {
        for (k, v) in stored {
            settings.insert(k.clone(), v.clone());
        }
    }
    settings
}

/// Validates `incoming` against the current settings and returns the complete merged map to store.
/// The error is the detail of a `invalid_input` error on `notification_settings`.
pub fn merge_notification_settings(
    stored: Option<&Value>,
    incoming: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let mut settings = effective_notification_settings(stored);
    let defaults = default_notification_settings();
    for (key, value) in incoming {
        if !defaults.contains_key(key) {
            return Err(format!(
                "Key {key} is not valid as a key for notification settings"
            ));
        }
        if MAP_KEYS.contains(&key.as_str()) {
            let Value::Object(entries) = value else {
                return Err(format!(
                    "{key} must be a dictionary mapping IDs to boolean values"
                ));
            };
            if let Some(bad) = entries.values().find(|v| !v.is_boolean()) {
                return Err(format!(
                    "Notification setting values must be boolean, got <class '{}'> instead",
                    py_type_name(bad)
                ));
            }
            let mut merged = match settings.get(key) {
                Some(Value::Object(existing)) => existing.clone(),
                _ => Map::new(),
            };
            for (id, flag) in entries {
                merged.insert(id.clone(), flag.clone());
            }
            settings.insert(key.clone(), Value::Object(merged));
        } else if key == THRESHOLD_KEY {
            let Some(number) = value.as_f64().filter(|_| value.is_number()) else {
                return Err(format!(
                    "{THRESHOLD_KEY} must be a number, got <class '{}'> instead",
                    py_type_name(value)
                ));
            };
            if !(0.0..=1.0).contains(&number) {
                return Err(format!(
                    "{THRESHOLD_KEY} must be between 0.0 and 1.0, got {}",
                    py_repr(value)
                ));
            }
            settings.insert(key.clone(), json!(number));
        } else {
            if !value.is_boolean() {
                return Err(format!(
                    "{} is not a valid type for notification settings, should be <class 'bool'>",
                    super::python::py_str(value)
                ));
            }
            settings.insert(key.clone(), value.clone());
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn merges_maps_and_keeps_defaults() {
        let first = merge_notification_settings(
            None,
            &obj(json!({"project_weekly_digest_disabled": {"123": true}})),
        )
        .unwrap();
        let second = merge_notification_settings(
            Some(&Value::Object(first)),
            &obj(json!({"project_weekly_digest_disabled": {"456": true}})),
        )
        .unwrap();
        assert_eq!(
            second["project_weekly_digest_disabled"],
            json!({"123": true, "456": true})
        );
        assert_eq!(second["plugin_disabled"], json!(true));
        assert_eq!(second.len(), default_notification_settings().len());
    }

    #[test]
    fn error_messages() {
        let err = |v: Value| merge_notification_settings(None, &obj(v)).unwrap_err();
        assert_eq!(
            err(json!({"invalid_key": true})),
            "Key invalid_key is not valid as a key for notification settings"
        );
        assert_eq!(
            err(json!({"project_weekly_digest_disabled": {"123": "not a boolean"}})),
            "Notification setting values must be boolean, got <class 'str'> instead"
        );
        assert_eq!(
            err(json!({"plugin_disabled": "yes"})),
            "yes is not a valid type for notification settings, should be <class 'bool'>"
        );
        assert_eq!(
            err(json!({"data_pipeline_error_threshold": 2})),
            "data_pipeline_error_threshold must be between 0.0 and 1.0, got 2"
        );
        assert_eq!(
            err(json!({"data_pipeline_error_threshold": "x"})),
            "data_pipeline_error_threshold must be a number, got <class 'str'> instead"
        );
    }
}
