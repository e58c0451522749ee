//! Kubernetes resource quantities ("100m", "2.58Gi", "1e3", "128974848") as integers of
//! thousandths, exact enough for placement: CPU in millicores, memory in milli-bytes.

/// Thousandths of the quantity's unit, or None for a quantity Kubernetes would not accept.
pub fn parse_milli(text: &str) -> Option<i128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (multiplier, divisor): (i128, i128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "k" => (1_000_000, 1),
        "M" => (1_000_000_000, 1),
        "G" => (1_000_000_000_000, 1),
        "T" => (1_000_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "n" => (1, 1_000_000),
        "u" => (1, 1000),
        s if s.starts_with(['e', 'E']) => {
            let exponent: u32 = s[1..].parse().ok()?;
            (1000_i128.checked_mul(10_i128.checked_pow(exponent)?)?, 1)
        }
        _ => return None,
    };
    let negative = number.starts_with('-');
    let number = number.trim_start_matches(['+', '-']);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let scale = 10_i128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let fraction: i128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    // Round up: a request of 0.1m still needs room.
    let numerator = (whole * scale + fraction).checked_mul(multiplier)?;
    let denominator = scale * divisor;
    let value = (numerator + denominator - 1) / denominator;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_quantities_kubernetes_writes() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("940m"), Some(940));
        assert_eq!(
            parse_milli("2.58Gi"),
            Some((2.58 * (1u64 << 30) as f64 * 1000.0).ceil() as i128)
        );
        assert_eq!(parse_milli("128974848"), Some(128_974_848_000));
        assert_eq!(parse_milli("129e6"), Some(129_000_000_000));
        assert_eq!(parse_milli("1k"), Some(1_000_000));
        assert_eq!(parse_milli("64Mi"), Some(64 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("500n"), Some(1), "rounded up");
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in ["", "m", "1x", "1.2.3", "Gi", "1e999"] {
            assert_eq!(parse_milli(bad), None, "{bad}");
        }
    }
}
