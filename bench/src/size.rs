//! Human byte sizes on the command line: `4G`, `1M`, `64K`, `512`.
//!
//! Units are binary whatever the spelling: `1K` = `1KB` = `1KiB` = 1024 bytes (a
//! benchmark asking for `1M` blocks wants 1 MiB, aligned, not 10^6 bytes).

/// Why a size argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size (examples: 4G, 1M, 64K, 512)")]
    Empty,
    #[error("'{0}' does not start with a whole number of bytes (examples: 4G, 1M, 64K, 512)")]
    NoNumber(String),
    #[error(
        "unknown unit '{unit}' in '{input}' (use K, M, G or T, optionally followed by iB or B; \
         units are binary, 1K = 1024)"
    )]
    UnknownUnit { input: String, unit: String },
    #[error("'{0}' does not fit in 64 bits")]
    Overflow(String),
}

/// Parses `<digits>[ ][K|M|G|T][iB|B]`, case-insensitive, into bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NoNumber(input.to_string()));
    }
    // Only ASCII digits remain, so the one way `parse` can fail is overflow.
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(input.to_string()))?;
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(SizeError::UnknownUnit {
                input: input.to_string(),
                unit: unit.trim().to_string(),
            })
        }
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(input.to_string()))
}

/// Formats bytes with a binary unit for humans, e.g. `4.00 GiB`, `64.0 KiB`, `512 B`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ if value < 10.0 => format!("{value:.2} {}", UNITS[unit]),
        _ if value < 100.0 => format!("{value:.1} {}", UNITS[unit]),
        _ => format!("{value:.0} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size(" 512b "), Ok(512));
    }

    #[test]
    fn binary_units_any_spelling() {
        for s in ["64K", "64k", "64KB", "64kb", "64KiB", "64kib", "64 KiB"] {
            assert_eq!(parse_size(s), Ok(64 * 1024), "{s}");
        }
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4gb"), Ok(4 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        assert!(matches!(parse_size("G"), Err(SizeError::NoNumber(_))));
        assert!(matches!(parse_size("-1K"), Err(SizeError::NoNumber(_))));
        assert!(matches!(
            parse_size("1.5G"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("4X"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("4iB"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("4GiBs"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("1 2K"),
            Err(SizeError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn refuses_overflow() {
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("16777216T"),
            Err(SizeError::Overflow(_))
        ));
        assert_eq!(parse_size("16777215T"), Ok(16777215u64 << 40));
    }

    #[test]
    fn formats() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(64 * 1024), "64.0 KiB");
        assert_eq!(format_bytes(4 << 30), "4.00 GiB");
        assert_eq!(format_bytes(256 << 20), "256 MiB");
    }
}
