//! A string that must never be printed: passwords and tokens.
//!
//! `Debug` and `Display` both print `<redacted>`, so a secret that ends up in
//! a log line, an error or a `{:?}` of a config struct leaks nothing. The value
//! is reached only through [`Secret::expose`], which makes each use visible in
//! review.

use std::fmt;
use std::path::Path;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Read a secret from a file, as mounted from a Kubernetes Secret: one
    /// trailing newline (what `echo` and most editors add) is dropped.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let mut value = std::fs::read_to_string(path)?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        Ok(Secret(value))
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Deserialised from a plain string, so config files can hold a secret
/// inline (a `*_file` field is the better habit).
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("tops3cret");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "tops3cret");
    }

    #[test]
    fn from_file_drops_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, "pa ss\n\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), "pa ss\n");
    }
}
