//! Line diffs between config versions, in unified format.

/// A unified diff of `old` → `new` with 3 lines of context; empty when they are equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn shows_changed_lines_only_with_context() {
        let d = super::unified("a\nb\nc\n", "a\nB\nc\n", "version 1", "version 2");
        assert!(d.contains("--- version 1\n+++ version 2\n"), "{d}");
        assert!(d.contains("-b\n+B\n"), "{d}");
        assert_eq!(super::unified("x", "x", "a", "b"), "");
    }
}
