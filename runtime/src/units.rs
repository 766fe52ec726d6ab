//! Human-friendly byte sizes (`128MiB`, `10MB`, `4096`) and durations (`30s`, `250ms`).

use anyhow::{Context, Result, bail};
use std::time::Duration;

/// Parses a byte size such as `128MiB`, `1GiB`, `10MB`, `64k` or a plain number of bytes.
///
/// Binary suffixes (`KiB`, `MiB`, `GiB`, `TiB`) and decimal ones (`KB`, `MB`, `GB`, `TB`) are
/// accepted case-insensitively; a single letter (`k`, `m`, `g`) means the binary unit.
pub fn parse_size(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        bail!("invalid size `{text}`: expected a number with an optional unit, e.g. `128MiB`");
    }
    let number: u64 = digits
        .parse()
        .with_context(|| format!("invalid size `{text}`"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => bail!(
            "invalid size `{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"
        ),
    };
    number
        .checked_mul(multiplier)
        .with_context(|| format!("size `{text}` is too large"))
}

/// Formats a byte count with the largest binary unit that divides it exactly (`128MiB`, `1536KiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, unit) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

/// Parses a duration such as `30s`, `250ms`, `2m` or `1h 30m` (a plain number means seconds).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit()) {
        let seconds: u64 = trimmed
            .parse()
            .with_context(|| format!("invalid duration `{text}`"))?;
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(trimmed)
        .with_context(|| format!("invalid duration `{text}`: expected e.g. `30s`, `250ms` or `2m`"))
}

/// Formats a duration compactly (`30s`, `250ms`, `1m 30s`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_size("128mib").unwrap(), 128 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size(" 2 GiB ").unwrap(), 2 << 30);
    }

    #[test]
    fn bad_sizes_are_rejected_with_the_input_named() {
        for bad in ["", "MiB", "12 parsecs", "-1", "99999999999999999999"] {
            let error = parse_size(bad).unwrap_err().to_string();
            assert!(error.contains(bad.trim()), "{bad:?} -> {error}");
        }
        assert!(parse_size("18446744073709551615GiB").is_err());
    }

    #[test]
    fn sizes_format_back_to_their_units() {
        assert_eq!(format_size(128 << 20), "128MiB");
        assert_eq!(format_size(1536 << 10), "1536KiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(parse_size(&format_size(3 << 30)).unwrap(), 3 << 30);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }
}
