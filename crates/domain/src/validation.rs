//! Field-level validation errors, collected so that one response can name
//! every invalid field at once.

use serde::Serialize;

/// One invalid field: which one, and what is wrong with it in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field's name as the client sent it, e.g. `title`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every invalid field of one input.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.summary())]
pub struct ValidationErrors {
    pub fields: Vec<FieldError>,
}

impl ValidationErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn single(field: &str, message: impl Into<String>) -> Self {
        let mut errors = Self::new();
        errors.add(field, message);
        errors
    }

    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.fields.push(FieldError { field: field.to_owned(), message: message.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// `Ok(value)` when nothing was invalid, else the collected errors.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.is_empty() { Ok(value) } else { Err(self) }
    }

    /// Runs a parser for one field and records its error under `field`.
    pub fn check<T, E: std::fmt::Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.add(field, err.to_string());
                None
            }
        }
    }

    pub fn summary(&self) -> String {
        match self.fields.as_slice() {
            [] => "no validation errors".to_owned(),
            [one] if one.message.starts_with(&one.field) => one.message.clone(),
            [one] => format!("{}: {}", one.field, one.message),
            many => format!(
                "{} fields are invalid: {}",
                many.len(),
                many.iter().map(|f| f.field.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Trims `value` and checks its length in characters.
/// The longest search text a list accepts, in characters.
pub const MAX_SEARCH_CHARS: usize = 256;

/// A list's search text: at most [`MAX_SEARCH_CHARS`] characters and no
/// control characters (a NUL cannot be matched by either database).
/// Blank is no search.
pub fn search_text(value: Option<String>) -> Result<Option<String>, String> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    if value.chars().count() > MAX_SEARCH_CHARS {
        return Err(format!("the search text may be at most {MAX_SEARCH_CHARS} characters; shorten it"));
    }
    if value.chars().any(char::is_control) {
        return Err("the search text may not contain control characters (tabs, newlines, NUL); remove them".into());
    }
    Ok(Some(value))
}

/// The same check for a web page's search box: what cannot be searched for
/// is dropped rather than refused.
pub fn search_text_lenient(value: &str) -> Option<String> {
    let cleaned: String = value.chars().filter(|c| !c.is_control()).take(MAX_SEARCH_CHARS).collect();
    Some(cleaned).filter(|c| !c.trim().is_empty())
}

pub fn bounded_text(value: &str, what: &str, min: usize, max: usize) -> Result<String, String> {
    let trimmed = value.trim();
    let len = trimmed.chars().count();
    if len < min {
        if min == 1 {
            return Err(format!("{what} must not be empty"));
        }
        return Err(format!("{what} must be at least {min} characters"));
    }
    if len > max {
        return Err(format!("{what} must be at most {max} characters (got {len})"));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t') {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

/// Deserializes a field that distinguishes "absent" (`None`), "null"
/// (`Some(None)`) and a value (`Some(Some(v))`), as PATCH bodies need.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_is_bounded_and_printable() {
        assert_eq!(search_text(None), Ok(None));
        assert_eq!(search_text(Some("  ".into())), Ok(None));
        assert_eq!(search_text(Some("Checkout".into())), Ok(Some("Checkout".into())));
        assert!(search_text(Some("ab\0c".into())).unwrap_err().contains("control characters"));
        assert!(search_text(Some("x".repeat(257))).unwrap_err().contains("256"));
        assert_eq!(search_text(Some("é".repeat(256))).map(|s| s.map(|s| s.chars().count())), Ok(Some(256)));
        assert_eq!(search_text_lenient("ab\0c\n"), Some("abc".into()));
        assert_eq!(search_text_lenient("\0"), None);
    }

    #[test]
    fn empty_text_is_rejected_with_the_field_name() {
        assert_eq!(bounded_text("   ", "title", 1, 10).unwrap_err(), "title must not be empty");
    }

    #[test]
    fn long_text_reports_its_length() {
        let err = bounded_text("abcdef", "name", 1, 3).unwrap_err();
        assert!(err.contains("at most 3") && err.contains("got 6"), "{err}");
    }

    #[test]
    fn control_characters_are_rejected() {
        assert!(bounded_text("a\u{0}b", "title", 1, 10).is_err());
        assert_eq!(bounded_text(" a\nb ", "title", 1, 10).unwrap(), "a\nb");
    }

    #[test]
    fn the_summary_names_every_invalid_field() {
        let mut errors = ValidationErrors::new();
        errors.add("title", "must not be empty");
        errors.add("severity", "unknown");
        assert_eq!(errors.summary(), "2 fields are invalid: title, severity");
    }
}
