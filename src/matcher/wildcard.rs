//! `*` patterns for descriptor values: `*` matches any run of characters, anywhere.

/// A compiled value pattern with at least one `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    /// The literal pieces between the stars: first is a prefix, last a suffix.
    pieces: Vec<String>,
}

impl Pattern {
    /// Compiles `source` if it contains a `*`.
    pub fn new(source: &str) -> Option<Pattern> {
        source.contains('*').then(|| Pattern {
            source: source.to_owned(),
            pieces: source.split('*').map(str::to_owned).collect(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `value` matches the whole pattern.
    pub fn matches(&self, value: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("split yields one piece");
        let (last, middle) = rest.split_last().expect("a pattern has a star");
        let Some(mut tail) = value.strip_prefix(first.as_str()) else {
            return false;
        };
        // Leftmost placement of each middle piece leaves the most room for the rest.
        for piece in middle {
            match tail.find(piece.as_str()) {
                Some(at) => tail = &tail[at + piece.len()..],
                None => return false,
            }
        }
        tail.len() >= last.len() && tail.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, value: &str) -> bool {
        Pattern::new(pattern).unwrap().matches(value)
    }

    #[test]
    fn stars_match_any_run_anywhere() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("/api/*", "/api/users"));
        assert!(m("/api/*", "/api/"));
        assert!(!m("/api/*", "/apx/users"));
        assert!(m("*.pdf", "files/a.pdf"));
        assert!(!m("*.pdf", "files/a.pdf.exe"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "a-b-b-c"));
        assert!(!m("a*b*c", "acb"));
        assert!(!m("ab*ba", "aba"), "prefix and suffix must not overlap");
        assert!(m("**", "x"));
    }

    #[test]
    fn values_without_stars_are_not_patterns() {
        assert!(Pattern::new("plain").is_none());
    }
}
