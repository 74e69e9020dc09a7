//! Importing accounts from a PostHog database (`hoglet import posthog`, issue 14). So far the
//! source side: [`source::Snapshot`] reads what the import carries over, in one read-only
//! snapshot. The writer and the command come next.

pub mod source;
