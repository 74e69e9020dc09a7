//! Django REST framework's field rules, reproduced so bad input gets the same `code` and `detail`
//! PostHog answers with. Each function reads one JSON value and returns the typed value or the
//! field error; callers attach the field name.

use serde_json::Value;

use super::python::py_str;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub code: &'static str,
    pub detail: String,
}

impl FieldError {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }

    pub fn null() -> Self {
        Self::new("null", "This field may not be null.")
    }

    pub fn blank() -> Self {
        Self::new("blank", "This field may not be blank.")
    }

    pub fn required() -> Self {
        Self::new("required", "This field is required.")
    }
}

pub type FieldResult<T> = Result<T, FieldError>;

/// Options of a `CharField`.
#[derive(Clone, Copy, Debug)]
pub struct Chars {
    pub max_length: Option<usize>,
    pub allow_blank: bool,
    pub allow_null: bool,
    pub trim: bool,
    /// Control characters other than NUL are accepted (passwords: hashed, never stored as given).
    pub allow_controls: bool,
}

impl Chars {
    pub const fn new() -> Self {
        Self {
            max_length: None,
            allow_blank: false,
            allow_null: false,
            trim: true,
            allow_controls: false,
        }
    }
    pub const fn max(mut self, n: usize) -> Self {
        self.max_length = Some(n);
        self
    }
    pub const fn blank_ok(mut self) -> Self {
        self.allow_blank = true;
        self
    }
    pub const fn null_ok(mut self) -> Self {
        self.allow_null = true;
        self
    }
    pub const fn no_trim(mut self) -> Self {
        self.trim = false;
        self
    }
    pub const fn controls_ok(mut self) -> Self {
        self.allow_controls = true;
        self
    }
}

impl Default for Chars {
    fn default() -> Self {
        Self::new()
    }
}

/// `CharField`: strings, and numbers coerced to their text; `None` only when null is allowed.
pub fn char_field(value: &Value, opts: Chars) -> FieldResult<Option<String>> {
    let text = match value {
        Value::Null if opts.allow_null => return Ok(None),
        Value::Null => return Err(FieldError::null()),
        Value::String(s) => s.clone(),
        Value::Number(_) => py_str(value),
        _ => return Err(FieldError::new("invalid_input", "Not a valid string.")),
    };
    let text = if opts.trim {
        text.trim().to_string()
    } else {
        text
    };
    if text.is_empty() {
        return if opts.allow_blank {
            Ok(Some(text))
        } else {
            Err(FieldError::blank())
        };
    }
    check_max_length(&text, opts.max_length)?;
    check_characters(&text, opts.allow_controls)?;
    Ok(Some(text))
}

/// The characters any text that reaches the database may hold: never NUL (PostgreSQL `text`
/// cannot store it; Django's `ProhibitNullCharactersValidator` gives the code and message), and
/// no other control character (Unicode `Cc`: C0, DEL, C1 — tabs and line breaks included) unless
/// `allow_controls`. PostHog accepts those; hoglet's text fields are all single-line, so a control
/// character there is an injection attempt or a mistake, never data.
pub fn check_characters(text: &str, allow_controls: bool) -> FieldResult<()> {
    if text.contains('\0') {
        return Err(FieldError::new(
            "null_characters_not_allowed",
            "Null characters are not allowed.",
        ));
    }
    if !allow_controls && text.chars().any(char::is_control) {
        return Err(FieldError::new(
            "invalid_input",
            "Control characters are not allowed.",
        ));
    }
    Ok(())
}

fn check_max_length(text: &str, max: Option<usize>) -> FieldResult<()> {
    match max {
        Some(max) if text.chars().count() > max => Err(FieldError::new(
            "max_length",
            format!("Ensure this field has no more than {max} characters."),
        )),
        _ => Ok(()),
    }
}

/// `BooleanField`: DRF's accepted spellings, case-insensitively for strings.
pub fn bool_field(value: &Value, allow_null: bool) -> FieldResult<Option<bool>> {
    let invalid = || FieldError::new("invalid_input", "Must be a valid boolean.");
    match value {
        Value::Bool(b) => Ok(Some(*b)),
        Value::Null if allow_null => Ok(None),
        Value::Null => Err(FieldError::null()),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Ok(Some(true)),
            Some(0.0) => Ok(Some(false)),
            _ => Err(invalid()),
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "on" | "1" => Ok(Some(true)),
            "false" | "f" | "no" | "n" | "off" | "0" => Ok(Some(false)),
            "null" | "" if allow_null => Ok(None),
            _ => Err(invalid()),
        },
        _ => Err(invalid()),
    }
}

/// `ChoiceField`: the value's text must be one of `choices`.
pub fn choice_field(
    value: &Value,
    choices: &[&str],
    allow_blank: bool,
    allow_null: bool,
) -> FieldResult<Option<String>> {
    match value {
        Value::Null if allow_null => return Ok(None),
        Value::Null => return Err(FieldError::null()),
        Value::String(s) if s.is_empty() && allow_blank => return Ok(Some(String::new())),
        _ => {}
    }
    let text = py_str(value);
    if choices.contains(&text.as_str()) {
        Ok(Some(text))
    } else {
        Err(FieldError::new(
            "invalid_choice",
            format!("\"{text}\" is not a valid choice."),
        ))
    }
}

/// `IntegerField` with optional bounds.
pub fn integer_field(value: &Value, min: Option<i64>, max: Option<i64>) -> FieldResult<i64> {
    let invalid = || FieldError::new("invalid_input", "A valid integer is required.");
    let n = match value {
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            (None, Some(f)) if f == f.trunc() && f.abs() < 9.0e18 => f as i64,
            _ => return Err(invalid()),
        },
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<i64>() {
                Ok(i) => i,
                Err(_) => match s.parse::<f64>() {
                    Ok(f) if f == f.trunc() && f.abs() < 9.0e18 => f as i64,
                    _ => return Err(invalid()),
                },
            }
        }
        Value::Null => return Err(FieldError::null()),
        _ => return Err(invalid()),
    };
    if let Some(max) = max.filter(|m| n > *m) {
        return Err(FieldError::new(
            "max_value",
            format!("Ensure this value is less than or equal to {max}."),
        ));
    }
    if let Some(min) = min.filter(|m| n < *m) {
        return Err(FieldError::new(
            "min_value",
            format!("Ensure this value is greater than or equal to {min}."),
        ));
    }
    Ok(n)
}

/// `EmailField` (max 254, not blank, not null) with Django's `EmailValidator`.
pub fn email_field(value: &Value) -> FieldResult<String> {
    let email = char_field(value, Chars::new().max(254))?.unwrap_or_default();
    if is_valid_email(&email) {
        Ok(email)
    } else {
        Err(FieldError::new(
            "invalid_input",
            "Enter a valid email address.",
        ))
    }
}

/// Django's `EmailValidator`, without the IDN (punycode) step.
pub fn is_valid_email(value: &str) -> bool {
    if value.is_empty() || value.len() > 320 {
        return false;
    }
    let Some((user, domain)) = value.rsplit_once('@') else {
        return false;
    };
    valid_user_part(user) && (domain == "localhost" || valid_domain_part(domain))
}

fn valid_user_part(user: &str) -> bool {
    const ATOM_SPECIALS: &str = "-!#$%&'*+/=?^_`{}|~";
    let atom_char = |c: char| c.is_ascii_alphanumeric() || ATOM_SPECIALS.contains(c);
    if user.starts_with('"') && user.ends_with('"') && user.len() >= 2 {
        let inner = &user[1..user.len() - 1];
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e) if (e as u32) <= 0x7f && e != '\n' && e != '\r' && e != '\0' => {}
                    _ => return false,
                },
                '"' => return false,
                c if (c as u32) >= 1 && (c as u32) <= 0x7f && c != '\n' && c != '\r' => {}
                _ => return false,
            }
        }
        return true;
    }
    !user.is_empty()
        && user
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atom_char))
}

fn valid_domain_part(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return literal.parse::<std::net::IpAddr>().is_ok()
            || literal
                .strip_prefix("IPv6:")
                .is_some_and(|l| l.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let (tld, rest) = labels.split_last().unwrap_or((&"", &[]));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    rest.iter().all(|l| label_ok(l))
        && tld.len() >= 2
        && tld.len() <= 63
        && tld.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !tld.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chars() {
        let opts = Chars::new().max(5);
        assert_eq!(
            char_field(&json!("  ab "), opts).unwrap(),
            Some("ab".into())
        );
        assert_eq!(char_field(&json!(12), opts).unwrap(), Some("12".into()));
        assert_eq!(char_field(&json!("   "), opts).unwrap_err().code, "blank");
        assert_eq!(char_field(&json!(null), opts).unwrap_err().code, "null");
        assert_eq!(
            char_field(&json!(true), opts).unwrap_err().detail,
            "Not a valid string."
        );
        assert_eq!(
            char_field(&json!("abcdef"), opts).unwrap_err().detail,
            "Ensure this field has no more than 5 characters."
        );
        assert_eq!(
            char_field(&json!(""), opts.blank_ok()).unwrap(),
            Some(String::new())
        );
    }

    #[test]
    fn control_characters() {
        let nul = "null_characters_not_allowed";
        let control = "Control characters are not allowed.";
        assert_eq!(
            char_field(&json!("a\u{0}b"), Chars::new())
                .unwrap_err()
                .code,
            nul
        );
        assert_eq!(
            char_field(&json!("a\u{1}\u{0}"), Chars::new())
                .unwrap_err()
                .code,
            nul,
            "NUL wins"
        );
        for text in ["a\tb", "a\nb", "a\u{1b}", "a\u{7f}", "a\u{9f}b"] {
            assert_eq!(
                char_field(&json!(text), Chars::new()).unwrap_err().detail,
                control,
                "{text:?}"
            );
            assert_eq!(
                char_field(&json!(text), Chars::new().controls_ok()).unwrap(),
                Some(text.to_string())
            );
        }
        assert_eq!(
            char_field(&json!("a\u{0}"), Chars::new().controls_ok())
                .unwrap_err()
                .code,
            nul
        );
        // Trimmed first, like DRF; the length check comes before the character check.
        assert_eq!(
            char_field(&json!("\tab\n"), Chars::new()).unwrap(),
            Some("ab".into())
        );
        assert_eq!(
            char_field(&json!("ab\u{0}"), Chars::new().max(2))
                .unwrap_err()
                .code,
            "max_length"
        );
        assert!(check_characters("é\u{200b}🦔", false).is_ok());
    }

    #[test]
    fn booleans() {
        for v in [
            json!(true),
            json!("TRUE"),
            json!("yes"),
            json!(1),
            json!("on"),
        ] {
            assert_eq!(bool_field(&v, false).unwrap(), Some(true), "{v}");
        }
        for v in [json!(false), json!("f"), json!(0), json!("off")] {
            assert_eq!(bool_field(&v, false).unwrap(), Some(false), "{v}");
        }
        assert_eq!(bool_field(&json!(""), true).unwrap(), None);
        assert_eq!(bool_field(&json!("null"), true).unwrap(), None);
        assert_eq!(
            bool_field(&json!("maybe"), true).unwrap_err().detail,
            "Must be a valid boolean."
        );
        assert_eq!(
            bool_field(&json!([]), true).unwrap_err().code,
            "invalid_input"
        );
    }

    #[test]
    fn choices() {
        let c = ["light", "dark"];
        assert_eq!(
            choice_field(&json!("dark"), &c, true, true).unwrap(),
            Some("dark".into())
        );
        assert_eq!(
            choice_field(&json!("foo"), &c, true, true)
                .unwrap_err()
                .detail,
            "\"foo\" is not a valid choice."
        );
        assert_eq!(
            choice_field(&json!(""), &c, false, false).unwrap_err().code,
            "invalid_choice"
        );
        assert_eq!(
            choice_field(&json!(null), &c, false, false)
                .unwrap_err()
                .code,
            "null"
        );
    }

    #[test]
    fn emails() {
        for ok in [
            "a@b.co",
            "first.last+tag@example.com",
            "x@localhost",
            "\"q u\"@example.org",
            "a@[127.0.0.1]",
        ] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "a@b",
            "a@.com",
            "a..b@example.com",
            "a@exa_mple.com",
            "a@-x.com",
            "a b@c.com",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn integers() {
        assert_eq!(integer_field(&json!("42"), Some(1), Some(500)).unwrap(), 42);
        assert_eq!(
            integer_field(&json!(501), Some(1), Some(500))
                .unwrap_err()
                .detail,
            "Ensure this value is less than or equal to 500."
        );
        assert_eq!(
            integer_field(&json!("x"), None, None).unwrap_err().code,
            "invalid_input"
        );
    }
}
