//! Text that must not leak or mislead: [`Secret`] (tokens, never printed) and `sanitize`
//! (server-provided text, shortened and defanged before it reaches an error message). Pure, so
//! that the sans-IO protocol module can use both without depending on key-file I/O.

use std::fmt;

/// A string that must never reach a log: `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Shortens a server-provided text for an error message: at most `max` chars, control characters
/// replaced, so a hostile body cannot flood the journal or forge log lines.
pub(crate) fn sanitize(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_truncates_and_strips_controls() {
        assert_eq!(sanitize("a\nb\u{1b}[31m", 100), "a b [31m");
        assert_eq!(sanitize("abcdef", 3), "abc…");
        assert_eq!(sanitize("", 3), "");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose(), "hunter2");
    }
}
