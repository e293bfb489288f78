use std::{fmt, sync::Arc};

/// The longest image id accepted, as in the original Draw64.
pub const MAX_ID_LEN: usize = 30;

/// A validated image id: 1 to 30 characters of `[a-zA-Z0-9-]`.
///
/// Shared as `Arc<str>` because every event, map key and subscriber holds one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("image_id is empty; it must be 1 to {MAX_ID_LEN} characters of a-z, A-Z, 0-9 and '-'")]
    Empty,
    #[error("image_id is {0} characters long; at most {MAX_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("image_id contains {0:?}; only a-z, A-Z, 0-9 and '-' are allowed")]
    BadChar(char),
}

impl ImageId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() {
            return Err(IdError::Empty);
        }
        if let Some(bad) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(IdError::BadChar(bad));
        }
        // Only ASCII is left, so bytes are characters.
        if raw.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(raw.len()));
        }
        Ok(Self(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet_up_to_30() {
        for ok in ["a", "default", "ambre-042", "A-Z-0-9", &"x".repeat(30), "-"] {
            assert_eq!(ImageId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        assert_eq!(ImageId::parse(""), Err(IdError::Empty));
        assert_eq!(ImageId::parse(&"x".repeat(31)), Err(IdError::TooLong(31)));
        assert_eq!(ImageId::parse("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(ImageId::parse("x.png"), Err(IdError::BadChar('.')));
        assert_eq!(ImageId::parse("é"), Err(IdError::BadChar('é')));
        assert_eq!(ImageId::parse("a_b"), Err(IdError::BadChar('_')));
        assert!(ImageId::parse("a/b").unwrap_err().to_string().contains("'/'"));
    }
}
