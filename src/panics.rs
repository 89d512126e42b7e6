//! The message of a caught panic, for the reports of the code that catches one (the
//! node's driver task, its storage thread, the redb guard of the store).
//!
//! A leaf: it owns turning a panic's payload into text and nothing else.

use std::any::Any;

/// The message of a panic's payload (`panic!` with a literal or a formatted message), or
/// `(no message)` for any other payload.
pub(crate) fn panic_text(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "(no message)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_formatted_and_other_payloads() {
        let caught = |f: fn()| std::panic::catch_unwind(f).expect_err("it panics");
        assert_eq!(panic_text(caught(|| panic!("plain"))), "plain");
        assert_eq!(
            panic_text(caught(|| panic!("formatted {}", 42))),
            "formatted 42"
        );
        assert_eq!(
            panic_text(caught(|| std::panic::panic_any(7_u32))),
            "(no message)"
        );
    }
}
