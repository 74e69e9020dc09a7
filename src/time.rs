//! Timestamps: stored as microseconds since the Unix epoch (an `i64` in both databases), rendered in
//! the two ISO-8601 forms PostHog uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

/// Microseconds since the Unix epoch, UTC.
pub type Micros = i64;

pub const SECOND: Micros = 1_000_000;

/// Where "now" comes from. Production uses the system clock; tests can move time forward.
#[derive(Clone)]
pub struct Clock(Arc<ClockInner>);

enum ClockInner {
    System,
    Manual(AtomicI64),
}

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(ClockInner::System))
    }

    /// A clock that starts at the current time and only moves when told to.
    pub fn manual() -> Self {
        Self(Arc::new(ClockInner::Manual(AtomicI64::new(system_now()))))
    }

    pub fn now(&self) -> Micros {
        match &*self.0 {
            ClockInner::System => system_now(),
            ClockInner::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    pub fn now_secs(&self) -> i64 {
        self.now().div_euclid(SECOND)
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    pub fn advance(&self, by: Micros) {
        if let ClockInner::Manual(t) = &*self.0 {
            t.fetch_add(by, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            ClockInner::System => f.write_str("Clock::System"),
            ClockInner::Manual(_) => f.write_str("Clock::Manual"),
        }
    }
}

/// The system clock, for timestamps the store writes (`created_at`, the invalidation feed).
pub fn system_now() -> Micros {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

fn datetime(micros: Micros) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// DRF's `DateTimeField` form: `2024-05-01T12:00:00.123456Z` (fraction only when non-zero).
pub fn iso_z(micros: Micros) -> String {
    let mut s = iso_base(micros);
    s.push('Z');
    s
}

/// Python's `isoformat()` of an aware UTC datetime: `2024-05-01T12:00:00.123456+00:00`.
pub fn iso_offset(micros: Micros) -> String {
    let mut s = iso_base(micros);
    s.push_str("+00:00");
    s
}

fn iso_base(micros: Micros) -> String {
    let dt = datetime(micros);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let fraction = dt.microsecond();
    if fraction != 0 {
        s.push_str(&format!(".{fraction:06}"));
    }
    s
}

/// Parses an RFC 3339 timestamp (GitHub's `expires_at`, API input) into microseconds.
pub fn parse_rfc3339(value: &str) -> Option<Micros> {
    let dt = OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(dt.unix_timestamp_nanos() / 1000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_drf_and_python() {
        assert_eq!(iso_z(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_z(1_714_564_800_123_456), "2024-05-01T12:00:00.123456Z");
        assert_eq!(
            iso_offset(1_714_564_800_000_010),
            "2024-05-01T12:00:00.000010+00:00"
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T12:00:00Z"),
            Some(1_714_564_800_000_000)
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual();
        let start = clock.now();
        clock.advance(5 * SECOND);
        assert_eq!(clock.now(), start + 5 * SECOND);
    }
}
