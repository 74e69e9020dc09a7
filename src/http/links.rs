//! Links hoglet builds from what a request sent: a list's `next`/`previous` pages and the
//! logout redirect's `next`. A credential given in a query string (`?personal_api_key=phx_…`)
//! never reappears in them — links end up in logs, browser history and `Referer` headers. DRF
//! echoes every parameter; hoglet drops these.

use std::borrow::Cow;

/// Query parameters that carry a credential (exact names, after decoding).
const CREDENTIAL_PARAMS: &[&str] = &["personal_api_key", "token"];

pub fn is_credential_param(name: &str) -> bool {
    CREDENTIAL_PARAMS.contains(&name)
}

/// The last value of a query parameter, as Django's `QueryDict` reads a repeated one.
pub fn last_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The largest `limit` and `offset` a list honours; larger values (also past `i64`) count as
/// this. 2⁵³ − 1 is the largest integer every JSON client reads exactly, and twice it still fits
/// `i64`, so `offset + limit` can never overflow.
pub const MAX_PAGE_BOUND: i64 = (1 << 53) - 1;

/// A `limit` or `offset` as DRF's `_positive_int` reads it (optional `+`, surrounding
/// whitespace), clamped to [`MAX_PAGE_BOUND`]; `None` when it is not a non-negative integer.
pub fn page_bound(value: &str) -> Option<i64> {
    let value = value.trim();
    let digits = value.strip_prefix('+').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Only all-digit text reaches here, so a parse error means "too large for i64".
    Some(
        digits
            .parse::<i64>()
            .map_or(MAX_PAGE_BOUND, |n| n.min(MAX_PAGE_BOUND)),
    )
}

/// DRF's `replace_query_param`: the same query with `limit`/`offset` replaced (or `offset`
/// removed), parameters sorted by name, encoded like Python's `urlencode` — without credentials.
pub fn page_link(
    base: &str,
    params: &[(String, String)],
    limit: i64,
    offset: Option<i64>,
) -> String {
    let mut set = vec![("limit", limit.to_string())];
    if let Some(offset) = offset {
        set.push(("offset", offset.to_string()));
    }
    with_params(base, params, &["limit", "offset"], set)
}

/// A cursor-paginated list's link: the same query with `cursor` set, without credentials.
pub fn cursor_link(base: &str, params: &[(String, String)], cursor: String) -> String {
    with_params(base, params, &[], vec![("cursor", cursor)])
}

/// The query without `replaced`, the names in `set` and credentials, plus `set`; parameters
/// sorted by name and encoded like Python's `urlencode`.
fn with_params(
    base: &str,
    params: &[(String, String)],
    replaced: &[&str],
    set: Vec<(&str, String)>,
) -> String {
    let mut pairs: Vec<(&str, Cow<'_, str>)> = params
        .iter()
        .filter(|(k, _)| {
            !replaced.contains(&k.as_str())
                && !set.iter().any(|(name, _)| name == k)
                && !is_credential_param(k)
        })
        .map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_str())))
        .collect();
    pairs.extend(set.into_iter().map(|(k, v)| (k, Cow::Owned(v))));
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", quote_plus(k), quote_plus(v)))
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Python's `urllib.parse.quote_plus`.
fn quote_plus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// A same-site path (`/p?q#f`) without its credential parameters; every other parameter is kept
/// exactly as sent, and a query left empty loses its `?`.
pub fn without_credentials(target: &str) -> Cow<'_, str> {
    let (before_fragment, fragment) = match target.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (target, None),
    };
    let Some((path, query)) = before_fragment.split_once('?') else {
        return Cow::Borrowed(target);
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|segment| !is_credential_param(&decoded_name(segment)))
        .collect();
    if kept.len() == query.split('&').count() {
        return Cow::Borrowed(target);
    }
    let mut out = path.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Cow::Owned(out)
}

/// The name of one `name=value` query segment, decoded as the authenticators decode it.
fn decoded_name(segment: &str) -> String {
    let name = segment.split_once('=').map_or(segment, |(name, _)| name);
    serde_urlencoded::from_str::<Vec<(String, String)>>(name)
        .ok()
        .and_then(|pairs| pairs.into_iter().next())
        .map_or_else(|| name.to_string(), |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_links_match_drf() {
        let params = vec![("email".to_string(), "a@b.c".to_string())];
        assert_eq!(
            page_link("http://h/api/users/", &params, 100, Some(100)),
            "http://h/api/users/?email=a%40b.c&limit=100&offset=100"
        );
        assert_eq!(
            page_link("http://h/api/users/", &[], 10, None),
            "http://h/api/users/?limit=10"
        );
        assert_eq!(quote_plus("a b/c"), "a+b%2Fc");
    }

    #[test]
    fn page_links_drop_credentials() {
        let params: Vec<(String, String)> = [
            ("token", "t"),
            ("personal_api_key", "phx_x"),
            ("personal_api_key_hint", "kept"),
            ("a", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            page_link("/u/", &params, 2, Some(2)),
            "/u/?a=1&limit=2&offset=2&personal_api_key_hint=kept"
        );
    }

    #[test]
    fn bounds() {
        assert_eq!(page_bound("5"), Some(5));
        assert_eq!(page_bound(" +5 "), Some(5));
        assert_eq!(page_bound("0"), Some(0));
        assert_eq!(page_bound("9223372036854775807"), Some(MAX_PAGE_BOUND));
        assert_eq!(page_bound("99999999999999999999999"), Some(MAX_PAGE_BOUND));
        for bad in ["", "-1", "-99999999999999999999", "1.5", "abc", "+", "1e3"] {
            assert_eq!(page_bound(bad), None, "{bad}");
        }
        assert!(MAX_PAGE_BOUND.checked_add(MAX_PAGE_BOUND).is_some());
    }

    #[test]
    fn paths_lose_credentials_only() {
        assert_eq!(without_credentials("/a"), "/a");
        assert_eq!(without_credentials("/a?b=1&c"), "/a?b=1&c");
        assert_eq!(
            without_credentials("/a?b=1&personal_api_key=phx_x&token=t#f"),
            "/a?b=1#f"
        );
        assert_eq!(without_credentials("/a?personal%5Fapi%5Fkey=x"), "/a");
        assert_eq!(without_credentials("/a?token&b=%20"), "/a?b=%20");
    }
}
