//! Human units for the CLI and configuration: sizes (`128M`, `1G`) and durations
//! (`1`, `0.5`, `250ms`, `2m`).

use crate::error::Error;

/// Parses a size: a number with an optional binary suffix `K`, `M`, `G`, `T`
/// (also `KiB`, `MB`, ... all powers of 1024) or `B`. `512M` is 512 MiB.
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad =
        || Error::invalid(format!("'{s}' is not a size: use a number with an optional unit, e.g. 512M, 1G, 65536"));
    if num.is_empty() {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v.round() as u64)
}

/// Parses a duration into milliseconds: a bare number is seconds (`1`, `0.5`);
/// suffixes `ms`, `s`, `m`, `h` are accepted.
pub fn parse_duration_ms(s: &str) -> Result<u64, Error> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad =
        || Error::invalid(format!("'{s}' is not a duration: use seconds (e.g. 1, 0.5) or a unit (250ms, 2m, 1h)"));
    if num.is_empty() {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim() {
        "" | "s" | "sec" => 1000.0,
        "ms" => 1.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return Err(bad()),
    };
    let v = n * mult;
    if !v.is_finite() || !(0.0..=1e15).contains(&v) {
        return Err(bad());
    }
    Ok(v.round() as u64)
}

/// Formats bytes for people: `512 MiB`, `1.5 GiB`, `300 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || v.fract() == 0.0 { format!("{} {}", v as u64, UNITS[i]) } else { format!("{v:.1} {}", UNITS[i]) }
}

/// Formats milliseconds for people: `250 ms`, `1.5 s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{} s", ms as f64 / 1000.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M").unwrap(), 128 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        for bad in ["lots", "", "M", "12Q", "-1M"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains("not a size"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1").unwrap(), 1000);
        assert_eq!(parse_duration_ms("0.5").unwrap(), 500);
        assert_eq!(parse_duration_ms("250ms").unwrap(), 250);
        assert_eq!(parse_duration_ms("2m").unwrap(), 120_000);
        assert!(parse_duration_ms("soon").is_err());
        assert!(parse_duration_ms("1d").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_duration_ms(250), "250 ms");
        assert_eq!(format_duration_ms(1500), "1.5 s");
    }
}
