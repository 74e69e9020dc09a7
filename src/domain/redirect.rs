//! Where hoglet may send a browser after an action: only a path of this site, given as `next`.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// How many rounds of percent-decoding a `next` may need before it stops changing. A value still
/// changing after that is refused: nothing legitimate is encoded four times over.
const DECODE_ROUNDS: usize = 4;

/// What must be escaped in a query value so it stays one value: `&`, `=`, `#`, `+` and `%`
/// among others (a raw `&next=` would smuggle a second parameter). `/` stays readable.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// `next` if it is a same-site path, judged on its fully decoded form: it begins with exactly
/// one `/` (no `//`, no `/\`, so no other host and no scheme) and holds no backslash and no
/// control character once decoded. Stricter than Django's `url_has_allowed_host_and_scheme`, which
/// judges one decoding only: `/%2F%2Fevil.com` passes there and becomes `//evil.com` a step later.
pub fn safe_next(next: &str) -> Option<&str> {
    let mut decoded = next.to_string();
    let mut settled = false;
    for _ in 0..DECODE_ROUNDS {
        let once = percent_decode_str(&decoded)
            .decode_utf8()
            .ok()?
            .into_owned();
        if once == decoded {
            settled = true;
            break;
        }
        decoded = once;
    }
    let same_site = settled
        && decoded.starts_with('/')
        && !decoded.starts_with("//")
        && !decoded.chars().any(|c| c.is_control() || c == '\\');
    same_site.then_some(next)
}

/// `next` escaped to be one query value (for `Location: /login?next=…`).
pub fn query_value(next: &str) -> String {
    utf8_percent_encode(next, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_site_paths_pass() {
        for ok in [
            "/",
            "/settings/user-notifications",
            "/a?b=c",
            "/caf%C3%A9",
            "/ok&next=x",
        ] {
            assert_eq!(safe_next(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "https://evil.com",
            "//evil.com/path",
            "/\\evil.com",
            "/%2F%2Fevil.com",
            "/%252F%252Fevil.com",
            "/%5Cevil.com",
            "%2F%2Fevil.com",
            "/a%0d%0aSet-Cookie:x",
            "/a\tb",
            "/%25252525252F",
            "/%ff",
            "evil.com",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_next(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_values_stay_one_value() {
        assert_eq!(query_value("/settings/user"), "/settings/user");
        assert_eq!(
            query_value("/ok&next=//evil.com#x"),
            "/ok%26next%3D//evil.com%23x"
        );
        assert_eq!(query_value("/a b+c%"), "/a%20b%2Bc%25");
    }
}
