//! Human units: durations, sizes and CPU cores. Each parser returns a message
//! that says what was expected, for use in diagnostics.

/// Parses a duration such as `30s`, `15m`, `2h`, `1d`, `500ms` or `1h30m`,
/// into milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let expected = || format!("expected a duration like 30s, 15m, 2h or 1d, got \"{s}\"");
    let t = s.trim();
    if t.is_empty() {
        return Err(expected());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(expected());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| expected())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "expected a duration with a unit (ms, s, m, h, d), like {n}s, got \"{s}\""
                ));
            }
            _ => return Err(expected()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration \"{s}\" is too long"))?;
    }
    Ok(total)
}

/// Formats milliseconds the short way: `2h`, `1h30m`, `1500ms`.
pub fn format_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= secs {
            out.push_str(&format!("{}{unit}", s / secs));
            s %= secs;
        }
    }
    out
}

/// Parses a size such as `512MiB`, `4GiB`, `4G` (binary), `500MB` (decimal)
/// or a plain number of bytes, into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let expected = || format!("expected a size like 512MiB or 4GiB, got \"{s}\"");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(expected());
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(expected()),
    };
    let v: f64 = num.parse().map_err(|_| expected())?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("size \"{s}\" is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Formats bytes for people, in the largest binary unit of at least 1,
/// with one decimal unless whole: `4GiB`, `1.5GiB`, `23.5GiB`, `1000B`.
pub fn format_size(b: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if b >= 1 << shift {
            if b.is_multiple_of(1 << shift) {
                return format!("{}{unit}", b >> shift);
            }
            let v = b as f64 / (1u64 << shift) as f64;
            let s = format!("{v:.1}");
            let s = s.strip_suffix(".0").unwrap_or(&s);
            return format!("{s}{unit}");
        }
    }
    format!("{b}B")
}

/// Parses CPU as cores (`2`, `0.5`) or millicores (`500m`) into millicores.
pub fn parse_cores(s: &str) -> Result<u64, String> {
    let expected = || format!("expected cores like 2 or 0.5, got \"{s}\"");
    let t = s.trim();
    if let Some(m) = t.strip_suffix('m') {
        return m.parse::<u64>().map_err(|_| expected());
    }
    let v: f64 = t.parse().map_err(|_| expected())?;
    if !v.is_finite() || v < 0.0 {
        return Err(expected());
    }
    let millis = v * 1000.0;
    if (millis - millis.round()).abs() > 1e-6 {
        return Err(format!(
            "cores are counted in thousandths; got \"{s}\", use at most 3 decimals"
        ));
    }
    if millis > 1e12 {
        return Err(format!("{s} cores is more than any machine has"));
    }
    Ok(millis.round() as u64)
}

/// Formats millicores as cores: `2`, `0.5`.
pub fn format_cores(m: u64) -> String {
    if m.is_multiple_of(1000) {
        format!("{}", m / 1000)
    } else {
        let s = format!("{:.3}", m as f64 / 1000.0);
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok: &[(&str, u64)] = &[
            ("30s", 30_000),
            ("15m", 900_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("500ms", 500),
            ("1h30m", 5_400_000),
            (" 10s ", 10_000),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "expected a duration like 30s, 15m, 2h or 1d, got \"\""),
            (
                "10",
                "expected a duration with a unit (ms, s, m, h, d), like 10s, got \"10\"",
            ),
            (
                "2 hours",
                "expected a duration like 30s, 15m, 2h or 1d, got \"2 hours\"",
            ),
            (
                "h",
                "expected a duration like 30s, 15m, 2h or 1d, got \"h\"",
            ),
            (
                "-5s",
                "expected a duration like 30s, 15m, 2h or 1d, got \"-5s\"",
            ),
            (
                "99999999999999999d",
                "duration \"99999999999999999d\" is too long",
            ),
        ];
        for (s, want) in bad {
            assert_eq!(parse_duration(s), Err(want.to_string()), "{s}");
        }
        for ms in [1_000, 5_400_000, 90_061_000, 1500] {
            assert_eq!(parse_duration(&format_duration(ms)), Ok(ms));
        }
    }

    #[test]
    fn sizes() {
        let ok: &[(&str, u64)] = &[
            ("512MiB", 512 << 20),
            ("4GiB", 4 << 30),
            ("4G", 4 << 30),
            ("1.5GiB", 3 << 29),
            ("500MB", 500_000_000),
            ("1024", 1024),
            ("64kib", 64 << 10),
        ];
        for (s, want) in ok {
            assert_eq!(parse_size(s), Ok(*want), "{s}");
        }
        for s in ["", "lots", "4XB", "GiB", "1.2.3GiB"] {
            assert_eq!(
                parse_size(s),
                Err(format!("expected a size like 512MiB or 4GiB, got \"{s}\"")),
                "{s}"
            );
        }
        assert_eq!(format_size(4 << 30), "4GiB");
        assert_eq!(format_size(1536 << 20), "1.5GiB");
        assert_eq!(format_size(4_000_000_000), "3.7GiB", "--mem 4GB");
        assert_eq!(format_size(24_683_584 << 10), "23.5GiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn cores() {
        let ok: &[(&str, u64)] = &[("2", 2000), ("0.5", 500), ("500m", 500), ("0.125", 125)];
        for (s, want) in ok {
            assert_eq!(parse_cores(s), Ok(*want), "{s}");
        }
        assert_eq!(
            parse_cores("two"),
            Err("expected cores like 2 or 0.5, got \"two\"".into())
        );
        assert_eq!(
            parse_cores("-1"),
            Err("expected cores like 2 or 0.5, got \"-1\"".into())
        );
        assert!(parse_cores("0.0001").unwrap_err().contains("3 decimals"));
        assert_eq!(format_cores(2500), "2.5");
        assert_eq!(format_cores(4000), "4");
    }
}
