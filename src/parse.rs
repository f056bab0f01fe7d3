//! Values written as text — on a command line, in a configuration file, in a request — read into
//! the library's own types. Each type that has a written form implements `FromStr` next to its
//! definition with this error, so that every front end reads `onecycle`, `jitter:256,512` or
//! `224x224` the same way and says the same thing about a value it cannot read.

/// A value that does not name what it should: says what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown {what} '{value}' (expected {expected})")]
pub struct ParseError {
    /// What kind of value (`schedule`, `crop`, `dtype`).
    pub what: &'static str,
    /// The text given.
    pub value: String,
    /// The forms it may take.
    pub expected: &'static str,
}

impl ParseError {
    /// `value` is not a `what`, which is written as `expected`.
    pub fn new(what: &'static str, value: &str, expected: &'static str) -> Self {
        ParseError { what, value: value.to_string(), expected }
    }
}

/// A comma-separated list (`256,384,512`), every item read as `T`; `None` when an item is not.
pub fn list<T: std::str::FromStr>(s: &str) -> Option<Vec<T>> {
    s.split(',').map(|v| v.trim().parse().ok()).collect()
}

/// A size written `N` (square) or `HxW`: `[height, width]`.
pub fn size(s: &str) -> Result<[usize; 2], ParseError> {
    let err = || ParseError::new("size", s, "N or HxW");
    let nums: Vec<usize> =
        s.split(['x', 'X']).map(|p| p.trim().parse().map_err(|_| err())).collect::<Result<_, _>>()?;
    match nums.as_slice() {
        [n] => Ok([*n, *n]),
        [h, w] => Ok([*h, *w]),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_lists() {
        assert_eq!(size("224"), Ok([224, 224]));
        assert_eq!(size("200x300"), Ok([200, 300]));
        assert_eq!(size("2x3x4").unwrap_err().to_string(), "unknown size '2x3x4' (expected N or HxW)");
        assert!(size("big").is_err());
        assert_eq!(list::<usize>("256, 384,512"), Some(vec![256, 384, 512]));
        assert_eq!(list::<usize>("256,x"), None);
    }
}
