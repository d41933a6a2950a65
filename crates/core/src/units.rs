//! Human-friendly byte sizes: `10GiB`, `512MiB`, `1.5T`, `4096`.

use crate::error::CoreError;

/// Parses a byte size. Binary (KiB, MiB, GiB, TiB, and K/M/G/T) and decimal (KB, MB, GB,
/// TB) suffixes are accepted, case-insensitively; a plain number is bytes.
pub fn parse_size(s: &str) -> Result<u64, CoreError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        CoreError::InvalidArgument(format!(
            "{s:?} is not a size; use a number of bytes or a suffix such as 512MiB, 10GiB, 2TB"
        ))
    };
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "p" | "pi" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let too_large = || {
        CoreError::InvalidArgument(format!(
            "{s:?} is too large: sizes are at most {} bytes (16 EiB)",
            u64::MAX
        ))
    };
    if !num.contains('.') {
        // Whole numbers are exact: a float would round above 2^53 bytes.
        let value: u64 = num
            .parse()
            .map_err(|e: std::num::ParseIntError| match e.kind() {
                std::num::IntErrorKind::PosOverflow => too_large(),
                _ => bad(),
            })?;
        return value.checked_mul(mult).ok_or_else(too_large);
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 {
        return Err(bad());
    }
    // `u64::MAX as f64` rounds up to 2^64, which itself does not fit.
    if bytes >= u64::MAX as f64 {
        return Err(too_large());
    }
    Ok(bytes.round() as u64)
}

/// Formats bytes with a binary suffix, e.g. `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("2TB"), Ok(2_000_000_000_000));
        for bad in ["", "abc", "-1", "10XB", "1e3"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    /// Found by fuzzing (fuzz/corpus/sizes): whole numbers went through f64, so sizes
    /// above 2^53 bytes were silently rounded and 2^64 or more saturated to u64::MAX.
    #[test]
    fn whole_sizes_are_exact_and_overflow_is_refused() {
        assert_eq!(parse_size("9007199254740993"), Ok(9_007_199_254_740_993));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_size("8191PiB"), Ok(8191 << 50));
        for bad in [
            "18446744073709551616",
            "16384PiB",
            "16384.0PiB",
            "99999999999TB",
        ] {
            let err = parse_size(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("too large"), "{bad}: {err}");
        }
        assert_eq!(parse_size("0.5KiB"), Ok(512));
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_size(10), "10 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(10 << 30), "10.0 GiB");
    }
}
