//! Text from outside (a plugin's messages, names and help; file names) made safe to print:
//! control characters are escaped so that no plugin can move the cursor, clear the screen or
//! forge a line of the host's own output. A job's log is never passed through here: it stays
//! byte-exact.

use std::borrow::Cow;

/// `s` with every control character (newlines, ESC, DEL, C1 controls...) written as an
/// escape (`\n`, `\t`, `\x1b`, `\u{9b}`); unchanged, and not copied, when it has none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `1m30s`, `250ms`, `0s`: how durations are shown to people.
pub fn fmt_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let frac = ms % 1000;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || frac > 0 {
        if frac > 0 && h == 0 && m == 0 {
            out.push_str(&format!("{s}.{frac:03}s"));
        } else {
            out.push_str(&format!("{s}s"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.500s");
        assert_eq!(fmt_duration(Duration::from_secs(210)), "3m30s");
        assert_eq!(fmt_duration(Duration::from_secs(3000)), "50m");
        assert_eq!(fmt_duration(Duration::from_secs(3600)), "1h");
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_kept() {
        assert!(matches!(escape_controls("plain ü text"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\x1b[2Jb\nc\td\u{9b}e\x7f"),
            "a\\x1b[2Jb\\nc\\td\\u{9b}e\\x7f"
        );
    }
}
