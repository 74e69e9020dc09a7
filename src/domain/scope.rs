//! API scopes (`<object>:<read|write>` or `*`) and the check PostHog's `APIScopePermission` makes.

/// Scope objects a personal API key may be granted (PostHog's `APIScopeObject` minus the internal
/// ones that are only ever minted server-side).
pub const SCOPE_OBJECTS: &[&str] = &[
    "action",
    "access_control",
    "account",
    "activity_log",
    "alert",
    "annotation",
    "approvals",
    "batch_export",
    "batch_import",
    "batch_import_support",
    "billing",
    "business_knowledge",
    "canvas",
    "cohort",
    "comment",
    "conversation",
    "customer_analytics",
    "customer_task",
    "customer_journey",
    "customer_profile_config",
    "data_catalog",
    "data_catalog_approval",
    "dashboard",
    "event_filter",
    "dashboard_template",
    "dataset",
    "early_access_feature",
    "endpoint",
    "engineering_analytics",
    "error_tracking",
    "evaluation",
    "element",
    "event_definition",
    "experiment",
    "experiment_holdout",
    "experiment_saved_metric",
    "export",
    "external_data_schema",
    "external_data_source",
    "feature_flag",
    "file_system",
    "file_system_shortcut",
    "group",
    "health_issue",
    "heatmap",
    "hog_flow",
    "hog_function",
    "ingestion_warning",
    "insight",
    "insight_variable",
    "integration",
    "legal_document",
    "link",
    "live_debugger",
    "llm_analytics",
    "ai_observability_clusters",
    "llm_gateway",
    "llm_playground",
    "llm_prompt",
    "llm_provider_key",
    "llm_skill",
    "logs",
    "loop",
    "marketing_analytics",
    "mcp_analytics",
    "metrics",
    "notebook",
    "organization",
    "organization_integration",
    "organization_member",
    "person",
    "plugin",
    "product_enablement",
    "product_tour",
    "project",
    "property_definition",
    "query",
    "query_performance",
    "replay_scanner",
    "review_hog",
    "revenue_analytics",
    "session_recording",
    "session_recording_playlist",
    "sharing_configuration",
    "signal_scout",
    "stamphog",
    "streamlit_app",
    "subscription",
    "survey",
    "tagger",
    "ticket",
    "task",
    "toolbar",
    "tracing",
    "field_note",
    "uploaded_media",
    "usage_metric",
    "user",
    "user_interview",
    "vision_action",
    "vision_alert",
    "visual_review",
    "warehouse_objects",
    "warehouse_table",
    "warehouse_view",
    "web_analytics",
    "webhook",
    "wizard_session",
];

/// Whether `scope` is `*` or `<known object>:<read|write>`.
pub fn is_valid_scope(scope: &str) -> bool {
    if scope == "*" {
        return true;
    }
    match scope.split_once(':') {
        Some((object, action)) => {
            matches!(action, "read" | "write") && SCOPE_OBJECTS.contains(&object)
        }
        None => false,
    }
}

/// What an action needs from a key or token, derived like PostHog's `APIScopePermission`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeNeed {
    Read(&'static str),
    Write(&'static str),
    /// The action declares no scope: keys and tokens may not use it at all.
    NoKeyAccess,
}

/// Why a key may not perform an action; rendered as PostHog's 403 details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeDenied {
    NoKeyAccess,
    Missing(String),
}

impl ScopeDenied {
    pub fn detail(&self) -> String {
        match self {
            ScopeDenied::NoKeyAccess => {
                "This action does not support Personal API Key access".into()
            }
            ScopeDenied::Missing(scope) => format!("API key missing required scope '{scope}'"),
        }
    }
}

/// Checks a personal key's scopes: `*` allows everything an action supports; `<obj>:write`
/// satisfies a read requirement. (A legacy key stored without scopes is read as `*` by the store.)
pub fn check_key_scopes(scopes: &[String], need: ScopeNeed) -> Result<(), ScopeDenied> {
    let (object, write) = match need {
        ScopeNeed::NoKeyAccess => return Err(ScopeDenied::NoKeyAccess),
        ScopeNeed::Read(object) => (object, false),
        ScopeNeed::Write(object) => (object, true),
    };
    if scopes.iter().any(|s| s == "*") {
        return Ok(());
    }
    let has = |action: &str| {
        scopes
            .iter()
            .any(|s| s.split_once(':') == Some((object, action)))
    };
    if has("write") || (!write && has("read")) {
        return Ok(());
    }
    Err(ScopeDenied::Missing(format!(
        "{object}:{}",
        if write { "write" } else { "read" }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn write_implies_read_and_star_allows_all() {
        assert!(check_key_scopes(&scopes(&["user:write"]), ScopeNeed::Read("user")).is_ok());
        assert!(check_key_scopes(&scopes(&["*"]), ScopeNeed::Write("user")).is_ok());
        assert_eq!(
            check_key_scopes(&scopes(&[]), ScopeNeed::NoKeyAccess),
            Err(ScopeDenied::NoKeyAccess)
        );
        assert!(check_key_scopes(&scopes(&[]), ScopeNeed::Read("user")).is_err());
        assert_eq!(
            check_key_scopes(&scopes(&["user:read"]), ScopeNeed::Write("user")),
            Err(ScopeDenied::Missing("user:write".into()))
        );
        assert_eq!(
            check_key_scopes(&scopes(&["*"]), ScopeNeed::NoKeyAccess),
            Err(ScopeDenied::NoKeyAccess)
        );
        assert_eq!(
            check_key_scopes(&scopes(&["insight:read"]), ScopeNeed::Read("user"))
                .unwrap_err()
                .detail(),
            "API key missing required scope 'user:read'"
        );
    }

    #[test]
    fn scope_vocabulary() {
        assert!(is_valid_scope("user:read"));
        assert!(is_valid_scope("*"));
        assert!(!is_valid_scope("user:delete"));
        assert!(!is_valid_scope("nonsense:read"));
        assert!(!is_valid_scope("internal_run:read"));
    }
}
