//! Config errors that point at the exact spot an operator has to fix.

use std::fmt;

/// One problem in a config, located as precisely as the source allows.
///
/// `field` uses the TOML names (`pool[0].origin[1].url`) so it can be matched against the file
/// even when no line is known, as for configs built in code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, or whatever the config came from (`"<command line>"`).
    pub file: String,
    /// 1-based line, when the config came from text.
    pub line: Option<usize>,
    /// 1-based column in characters, when the config came from text.
    pub column: Option<usize>,
    /// Path of the offending key; empty when the problem is not about one key.
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    /// An error that has no position in any text (I/O failures, programmatic configs).
    pub(crate) fn unlocated(file: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: None,
            column: None,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one config. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: Option<usize>, column: Option<usize>, field: &str) -> ConfigError {
        ConfigError {
            file: "edge.toml".into(),
            line,
            column,
            field: field.into(),
            reason: "invalid URL".into(),
        }
    }

    #[test]
    fn display_includes_what_is_known() {
        let full = error(Some(12), Some(7), "pool[0].origin[1].url");
        assert_eq!(
            full.to_string(),
            "edge.toml:12:7: pool[0].origin[1].url: invalid URL"
        );
        assert_eq!(
            error(None, None, "admin.token").to_string(),
            "edge.toml: admin.token: invalid URL"
        );
        assert_eq!(error(Some(3), None, "").to_string(), "edge.toml:3: invalid URL");
    }

    #[test]
    fn errors_display_one_per_line() {
        let errors = ConfigErrors(vec![error(Some(1), Some(1), "a"), error(Some(2), Some(1), "b")]);
        assert_eq!(
            errors.to_string(),
            "edge.toml:1:1: a: invalid URL\nedge.toml:2:1: b: invalid URL"
        );
    }
}
