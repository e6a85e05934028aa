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

/// Parsed from a flag or environment variable (clap) without ever failing.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Deserialised as text, so config files can hold a secret inline (a
/// `*_file` field is the better habit): an unquoted `20240101` or `0123` is
/// a password made of digits, taken exactly as written. A format that hands
/// over a number or a boolean anyway gets its text. Anything else (a list,
/// a map) is refused without quoting it, since serde's own message would
/// show the value, which here is a password.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl<'v> serde::de::Visitor<'v> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret written as text")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'v>>(self, _: A) -> Result<Secret, A::Error> {
                Err(serde::de::Error::custom(
                    "a secret must be text, not a list",
                ))
            }

            fn visit_map<A: serde::de::MapAccess<'v>>(self, _: A) -> Result<Secret, A::Error> {
                Err(serde::de::Error::custom("a secret must be text, not a map"))
            }
        }

        // Asked for as text: YAML then hands a plain scalar over exactly as
        // written (`0123` stays `0123`, not the number 123).
        deserializer.deserialize_str(SecretVisitor)
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
    fn an_unquoted_numeric_secret_in_yaml_is_taken_as_written() {
        // YAML reads 123456 as a number; a password is its text.
        let s: Secret = serde_yaml::from_str("123456").unwrap();
        assert_eq!(s.expose(), "123456");
        // Exactly as written, leading zeros and all.
        for text in ["8812345671", "0123", "1e3", "true", "0x1F"] {
            let s: Secret = serde_yaml::from_str(text).unwrap();
            assert_eq!(s.expose(), text);
        }
        for bad in ["[hunter2]", "{hunter2: x}"] {
            let err = serde_yaml::from_str::<Secret>(bad).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn from_file_drops_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, "pa ss\n\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), "pa ss\n");
    }
}
