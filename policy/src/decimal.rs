//! Exact decimals for money and nonces. Floats never touch an amount: `0.1 + 0.2` must
//! be `0.3` when a velocity window adds withdrawals up.

pub use rust_decimal::Decimal;

use crate::Deny;

/// Parses an unsigned decimal exactly: `123`, `0.001`, and the scientific form that some
/// clients print for small floats (`1e-05`, `2.5E3`). Rejects signs, spaces, `NaN`,
/// `Infinity`, hex, a bare `.`, leading `.5`/trailing `5.`, and anything that does not fit
/// in 28 significant digits rather than rounding it.
pub fn parse_decimal(s: &str) -> Result<Decimal, Deny> {
    let bytes = s.as_bytes();
    let (mantissa, exponent) = match bytes.iter().position(|b| *b == b'e' || *b == b'E') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int_part) || !frac_part.is_none_or(all_digits) {
        return Err(Deny::InvalidField);
    }
    let exp: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !all_digits(digits) || digits.len() > 3 {
                return Err(Deny::InvalidField);
            }
            e.parse().map_err(|_| Deny::InvalidField)?
        }
    };
    let mut value: Decimal = mantissa.parse().map_err(|_| Deny::InvalidField)?;
    // rust_decimal silently rounds inputs with more than 28 significant digits; an amount
    // that does not fit is refused instead of being changed.
    let significant = format!("{int_part}{}", frac_part.unwrap_or(""));
    if significant.trim_start_matches('0').len() > 28 {
        return Err(Deny::InvalidField);
    }
    if exp != 0 {
        let scale = value.scale() as i64 - exp;
        if scale < 0 {
            let factor = Decimal::from_i128_with_scale(10i128.pow((-scale) as u32), 0);
            value = Decimal::from_i128_with_scale(value.mantissa(), 0)
                .checked_mul(factor)
                .ok_or(Deny::InvalidField)?;
        } else if scale > 28 {
            return Err(Deny::InvalidField);
        } else {
            value = Decimal::from_i128_with_scale(value.mantissa(), scale as u32);
        }
    }
    Ok(value.normalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_scientific() {
        assert_eq!(parse_decimal("123").unwrap().to_string(), "123");
        assert_eq!(parse_decimal("0.00100").unwrap().to_string(), "0.001");
        assert_eq!(parse_decimal("1e-05").unwrap().to_string(), "0.00001");
        assert_eq!(parse_decimal("2.5E3").unwrap().to_string(), "2500");
        assert_eq!(
            parse_decimal("1700000000.12300000").unwrap().to_string(),
            "1700000000.123"
        );
    }

    #[test]
    fn sums_exactly() {
        let a = parse_decimal("0.1").unwrap() + parse_decimal("0.2").unwrap();
        assert_eq!(a, parse_decimal("0.3").unwrap());
    }

    #[test]
    fn rejects_non_canonical() {
        for bad in [
            "",
            ".",
            ".5",
            "5.",
            "+1",
            "-1",
            " 1",
            "1 ",
            "NaN",
            "nan",
            "Infinity",
            "inf",
            "0x10",
            "1e",
            "1e+",
            "1e1000",
            "1,5",
            "１",
            "1_000",
            "99999999999999999999999999999",
        ] {
            assert_eq!(parse_decimal(bad), Err(Deny::InvalidField), "{bad:?}");
        }
    }
}
