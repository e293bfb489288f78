//! Numbers as JSON Schema reads them: an integer is any number with no fractional part.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A JSON number with no fractional part. JSON Schema (and so the OpenAPI document) counts
/// `51.0` as an integer, and so does the original's validation, so it is accepted as 51.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Integral(pub i64);

impl<'de> Deserialize<'de> for Integral {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IntegralVisitor)
    }
}

struct IntegralVisitor;

impl Visitor<'_> for IntegralVisitor {
    type Value = Integral;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Integral, E> {
        Ok(Integral(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Integral, E> {
        i64::try_from(v).map(Integral).map_err(|_| E::custom(format!("{v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Integral, E> {
        // The range check keeps the cast exact: every integral f64 in it is an i64.
        if v.fract() == 0.0 && (-9.2e18..9.2e18).contains(&v) {
            Ok(Integral(v as i64))
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<i64, String> {
        serde_json::from_str::<Integral>(json).map(|Integral(v)| v).map_err(|e| e.to_string())
    }

    #[test]
    fn a_point_with_nothing_after_it_is_still_an_integer() {
        assert_eq!(read("51"), Ok(51));
        assert_eq!(read("-51.0"), Ok(-51));
        assert_eq!(read("1e3"), Ok(1000));
        assert!(read("0.5").unwrap_err().contains("not an integer"));
        assert!(read("1e300").unwrap_err().contains("not an integer"));
        assert!(read("18446744073709551615").unwrap_err().contains("too large"));
        assert!(read("\"1\"").unwrap_err().contains("an integer"));
    }
}
