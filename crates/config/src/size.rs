//! Byte sizes as people write them: `"256MiB"`, `"1GiB"`, `"64KiB"`, `"512B"`, or a bare
//! integer of bytes (unlike durations, a bare size has only one reading).

const UNITS: [(&str, u64); 8] = [
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("B", 1),
];

pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid size \"{text}\": expected a number of bytes or something like 64KiB, 256MiB, 1GiB"
        ));
    }
    let (number, unit) = t.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size \"{text}\": number too large"))?;
    let unit = unit.trim();
    let factor = if unit.is_empty() {
        1
    } else {
        UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                format!("invalid size \"{text}\": unknown unit `{unit}`, use B, KiB, MiB, GiB, KB, MB or GB")
            })?
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("invalid size \"{text}\": too large"))
}

/// Canonical text: the largest binary unit that divides the size exactly.
pub fn format_size(bytes: u64) -> String {
    for (name, factor) in UNITS[..4].iter().rev() {
        if bytes >= *factor && bytes.is_multiple_of(*factor) {
            return format!("{}{name}", bytes / factor);
        }
    }
    format!("{bytes}B")
}

/// `#[serde(with = "serde_size")]` for `u64` byte-size fields: a string with a unit or an integer.
pub mod serde_size {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_size(*bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        int_or_text(deserializer, super::parse_size)
    }

    /// A bare integer, or text read by `parse`.
    pub(super) fn int_or_text<'de, D: Deserializer<'de>>(
        deserializer: D,
        parse: fn(&str) -> Result<u64, String>,
    ) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(n) => Ok(n),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// `#[serde(with = "serde_rate")]` for byte-rate fields (`u64` bytes per second): `"1KiB/s"`,
/// `"500B/s"`, or `"off"` / `0` for none.
pub mod serde_rate {
    use serde::{Deserializer, Serializer};

    pub fn parse(text: &str) -> Result<u64, String> {
        let t = text.trim();
        if t == "off" || t == "0" {
            return Ok(0);
        }
        let size = t.strip_suffix("/s").ok_or_else(|| {
            format!("invalid rate \"{text}\": expected bytes per second like \"1KiB/s\", or \"off\"")
        })?;
        super::parse_size(size).map_err(|e| format!("invalid rate \"{text}\": {e}"))
    }

    pub fn serialize<S: Serializer>(rate: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        if *rate == 0 {
            return serializer.serialize_str("off");
        }
        serializer.serialize_str(&format!("{}/s", super::format_size(*rate)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        super::serde_size::int_or_text(deserializer, parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1PiB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB").unwrap_err().contains("expected a number"));
        assert_eq!(format_size(256 << 20), "256MiB");
        assert_eq!(format_size(1500), "1500B");
    }

    #[test]
    fn rates() {
        assert_eq!(serde_rate::parse("1KiB/s"), Ok(1024));
        assert_eq!(serde_rate::parse("500B/s"), Ok(500));
        assert_eq!(serde_rate::parse("off"), Ok(0));
        assert!(serde_rate::parse("1KiB")
            .unwrap_err()
            .contains("bytes per second"));
    }
}
