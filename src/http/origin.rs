//! Cross-site requests are refused before they reach a handler. Session requests already need the
//! CSRF token, but the views that start a session (login, its second factor, sign-up, email
//! verification) have no session yet, so a form on another site could log a victim into the
//! attacker's account. Browsers say where a request comes from (`Origin`, `Sec-Fetch-Site`); API
//! clients and curl send neither and are not affected.

use axum::http::{HeaderMap, Method, header};

use crate::error::ApiError;

/// Why an unsafe request is refused, if it comes from another site: its `Origin` is neither
/// `HOGLET_SITE_URL`'s nor the origin of the `Host` it was sent to (as Django's origin check), or
/// the browser labels it `Sec-Fetch-Site: cross-site`.
pub fn cross_site_refusal(
    site_url: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Option<ApiError> {
    if matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        return None;
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !same_site(origin, site_url, headers) {
            return Some(refusal(format!(
                "CSRF Failed: Origin checking failed - {} does not match any trusted origins.",
                shown(origin)
            )));
        }
    }
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if fetch_site.is_some_and(|v| v.eq_ignore_ascii_case(b"cross-site")) {
        return Some(refusal(
            "CSRF Failed: Cross-site requests are not allowed.".into(),
        ));
    }
    None
}

fn refusal(detail: String) -> ApiError {
    ApiError::forbidden(detail)
}

/// `scheme://host[:port]` of a URL (the whole string when it has no path).
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

fn same_site(origin: &str, site_url: &str, headers: &HeaderMap) -> bool {
    if origin.eq_ignore_ascii_case(origin_of(site_url)) {
        return true;
    }
    // The host the browser sent the request to, whatever scheme a proxy in front terminated.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, host)| host);
    matches!((host, origin_host), (Some(host), Some(o)) if !host.is_empty() && o.eq_ignore_ascii_case(host))
}

/// An origin as it may appear in a message: printable ASCII only, and not too long.
fn shown(origin: &str) -> String {
    origin
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_other_sites_are_refused() {
        let site = "https://hog.example.com";
        let post = Method::POST;
        let refused = |h: &HeaderMap| cross_site_refusal(site, &post, h).is_some();
        assert!(!refused(&headers(&[])), "API clients send no Origin");
        assert!(!refused(&headers(&[("origin", "https://hog.example.com")])));
        assert!(!refused(&headers(&[("origin", "https://HOG.example.com")])));
        assert!(!refused(&headers(&[
            ("origin", "http://localhost:8000"),
            ("host", "localhost:8000")
        ])));
        assert!(!refused(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!refused(&headers(&[("sec-fetch-site", "none")])));
        assert!(refused(&headers(&[("origin", "https://evil.example")])));
        assert!(refused(&headers(&[("origin", "null")])));
        assert!(refused(&headers(&[(
            "origin",
            "https://hog.example.com.evil"
        )])));
        assert!(refused(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "hog.example.com")
        ])));
        assert!(refused(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(
            cross_site_refusal(site, &Method::GET, &headers(&[("origin", "https://evil")]))
                .is_none(),
            "safe methods change nothing"
        );
    }
}
