//! Durations as people write them: `"250ms"`, `"10s"`, `"2m"`, `"1h"`, `"1m30s"`.
//!
//! Bare numbers are rejected on purpose: `timeout = 30` is ambiguous between seconds and
//! milliseconds, and guessing wrong by a factor of 1000 is the kind of outage a config format
//! should make impossible.

use std::fmt::Write as _;
use std::time::Duration;

const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses a sequence of `<integer><unit>` parts, units `h`, `m`, `s`, `ms`, largest first,
/// each at most once (`"1h30m"`, `"1s500ms"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = |why: String| format!("invalid duration \"{text}\": {why}");
    if text.is_empty() {
        return Err(invalid(
            "empty; write something like 10s, 250ms or 1m30s".to_owned(),
        ));
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    // Index into UNITS of the last unit used, so parts must get strictly smaller.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            let found = rest.chars().next().unwrap_or_default();
            return Err(invalid(format!("expected a number at `{found}`")));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(invalid(format!(
                "missing unit after `{number}`, use ms, s, m or h"
            )));
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(invalid(format!("unknown unit `{unit}`, use ms, s, m or h")));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(invalid(format!(
                "unit `{unit}` repeated or out of order, write the largest unit first (1m30s)"
            )));
        }
        last_unit = Some(index);
        let value: u64 = number
            .parse()
            .map_err(|_| invalid("number too large".to_owned()))?;
        total_ms = value
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| invalid("too large".to_owned()))?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Canonical text for a duration: largest units first, zero parts left out (`"1m30s"`,
/// `"250ms"`, `"0s"`). `None` when the duration has sub-millisecond precision, which the
/// format cannot express.
pub fn format_duration(duration: Duration) -> Option<String> {
    let mut ms = u64::try_from(duration.as_millis()).ok()?;
    if Duration::from_millis(ms) != duration {
        return None;
    }
    if ms == 0 {
        return Some("0s".to_owned());
    }
    let mut out = String::new();
    for (name, size) in UNITS {
        if ms >= size {
            // Writing to a String cannot fail.
            let _ = write!(out, "{}{name}", ms / size);
            ms %= size;
        }
    }
    Some(out)
}

/// `#[serde(with = "serde_duration")]` for `Duration` fields.
pub mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        match super::format_duration(*duration) {
            Some(text) => serializer.serialize_str(&text),
            None => Err(serde::ser::Error::custom(format!(
                "duration {duration:?} has sub-millisecond precision, which the config format cannot express"
            ))),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(default, with = "serde_opt_duration")]` for `Option<Duration>` fields.
pub mod serde_opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => super::serde_duration::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_combinations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(Duration::from_millis(3_723_004)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert_eq!(
            parse_duration("10x").unwrap_err(),
            "invalid duration \"10x\": unknown unit `x`, use ms, s, m or h"
        );
        assert!(parse_duration("10")
            .unwrap_err()
            .contains("missing unit after `10`"));
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("s").unwrap_err().contains("expected a number"));
        assert!(parse_duration("-1s").unwrap_err().contains("expected a number"));
        assert!(parse_duration("1 s")
            .unwrap_err()
            .contains("missing unit after `1`"));
        assert!(parse_duration("30s1m").unwrap_err().contains("out of order"));
        assert!(parse_duration("1s1s").unwrap_err().contains("repeated"));
        assert!(parse_duration("99999999999999999999h")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_duration(Duration::from_secs(10)).unwrap(), "10s");
        assert_eq!(format_duration(Duration::from_millis(250)).unwrap(), "250ms");
        assert_eq!(format_duration(Duration::from_secs(90)).unwrap(), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(7200)).unwrap(), "2h");
        assert_eq!(format_duration(Duration::from_millis(1500)).unwrap(), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO).unwrap(), "0s");
        assert_eq!(format_duration(Duration::from_micros(1500)), None);
    }

    #[test]
    fn round_trips() {
        for text in ["250ms", "10s", "2m", "1h", "1m30s", "1h2m3s4ms", "0s", "48h"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(format_duration(parsed).unwrap(), text);
        }
        for ms in [0, 1, 999, 1000, 59_999, 60_000, 3_600_001, 86_400_000] {
            let duration = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(duration).unwrap()), Ok(duration));
        }
    }

    #[test]
    fn serde_round_trip() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            #[serde(with = "serde_duration")]
            d: Duration,
        }
        let value = T {
            d: Duration::from_secs(90),
        };
        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(json, r#"{"d":"1m30s"}"#);
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value);
        assert!(serde_json::to_string(&T {
            d: Duration::from_nanos(1)
        })
        .is_err());
    }
}
