//! Durations (`60`, `"500ms"`, `"1h30m"`) and sizes (`65536`, `"16KiB"`,
//! `"10MB"`) as written in the file, and their canonical spelling for `--show`.

use std::time::Duration;

/// Durations longer than this are refused everywhere: no limit, block or
/// timeout of the gateway needs more, and the cap keeps time arithmetic far
/// from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A plain number: `60`, `1_000`, `2.5`. Negative, NaN and infinite values are refused.
pub fn parse_number(text: &str) -> Option<f64> {
    let cleaned: String = text.trim().chars().filter(|c| *c != '_').collect();
    if cleaned.is_empty()
        || !cleaned
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
    {
        return None;
    }
    let value: f64 = cleaned.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// A non-negative integer; an integral float (`10.0`, `1e3`) counts.
pub fn parse_u64(text: &str) -> Option<u64> {
    let cleaned: String = text.trim().chars().filter(|c| *c != '_').collect();
    if let Ok(v) = cleaned.parse::<u64>() {
        return Some(v);
    }
    let f = parse_number(text)?;
    // 2^64 as f64; anything at or past it does not fit.
    (f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0).then_some(f as u64)
}

/// Seconds as a bare number, or a sequence of number-unit pairs with units
/// `ns`, `us`, `ms`, `s`, `m`, `h`, `d` (`"1h30m"`, `"1.5s"`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Some(seconds) = parse_number(text) {
        return seconds_to_duration(seconds);
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
            .unwrap_or(rest.len());
        let number = parse_number(&rest[..digits])?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        total += number * seconds_per_unit;
        rest = rest[unit_len..].trim_start();
    }
    seconds_to_duration(total)
}

fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    if !seconds.is_finite() || seconds < 0.0 || seconds > MAX_DURATION.as_secs_f64() {
        // Out of range is reported by the caller with the range in the message.
        return if seconds.is_finite() && seconds >= 0.0 {
            Some(MAX_DURATION + Duration::from_secs(1))
        } else {
            None
        };
    }
    // Round to whole nanoseconds so that "0.1" is exactly 100ms.
    Some(Duration::from_nanos((seconds * 1e9).round() as u64))
}

/// Bytes as a bare integer, or a number with a unit: `B`, `KiB`, `MiB`, `GiB`,
/// `TiB` (powers of 1024) or `KB`, `MB`, `GB`, `TB` (powers of 1000), in any
/// case. A bare `K`/`M`/`G` is refused: readers disagree on its base.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(v) = parse_u64(text) {
        return Some(v);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let number = parse_number(&text[..split])?;
    let multiplier: u64 = match text[split..].trim().to_ascii_lowercase().as_str() {
        "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    let bytes = number * multiplier as f64;
    (bytes.fract() == 0.0 && bytes < 9.0e18).then_some(bytes as u64)
}

/// The shortest exact spelling: `"500ms"`, `"1h30m"`, `"0s"`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if !nanos.is_multiple_of(1_000_000_000) {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

/// `"16KiB"` when the size is a whole number of KiB/MiB/GiB, else bytes.
pub fn format_size(bytes: u64) -> String {
    for (unit, len) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= len && bytes.is_multiple_of(len) {
            return format!("{}{unit}", bytes / len);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), secs(60));
        assert_eq!(parse_duration("0.1"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("90s"), secs(90));
        assert_eq!(parse_duration("15m"), secs(900));
        assert_eq!(parse_duration("1h"), secs(3600));
        assert_eq!(parse_duration("1d"), secs(86400));
        assert_eq!(parse_duration("1h30m"), secs(5400));
        assert_eq!(parse_duration("1h 30m"), secs(5400));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        for bad in ["", "1x", "h", "-5", "1m-", "abc", "1 h x", "NaN", "inf"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert!(parse_duration("400d").is_some_and(|d| d > MAX_DURATION));
    }

    #[test]
    fn durations_print_back_exactly() {
        for text in ["0s", "500ms", "15m", "1h", "1d", "1h30m", "250us", "7ns"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("16KiB"), Some(16384));
        assert_eq!(parse_size("16 kib"), Some(16384));
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("1.5KiB"), Some(1536));
        assert_eq!(parse_size("100B"), Some(100));
        for bad in ["16K", "10M", "1G", "", "KiB", "-1", "1.3B", "10 parsecs"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(format_size(16384), "16KiB");
        assert_eq!(format_size(10 << 20), "10MiB");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn integers() {
        assert_eq!(parse_u64("1_000"), Some(1000));
        assert_eq!(parse_u64("10.0"), Some(10));
        assert_eq!(parse_u64("1e3"), Some(1000));
        assert_eq!(parse_u64("1.5"), None);
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64("1e30"), None);
    }
}
