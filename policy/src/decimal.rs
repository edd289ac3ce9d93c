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
    let frac = frac_part.unwrap_or("");
    // Plain amounts, prices and nonces (`0.001`, `95000`, `1763812345.12300000`): at
    // most 28 digits in all, so the digits fit the 96-bit mantissa as they are and the
    // scale is the fraction's length. Built directly: rust_decimal's parser (rounding,
    // separators, signs) is most of the cost and none of it applies here.
    if exp == 0 && int_part.len() + frac.len() <= MAX_DIGITS {
        // Trailing fraction zeros dropped here leave nothing for `normalize` to do.
        let frac = frac.trim_end_matches('0');
        let digits = int_part.bytes().chain(frac.bytes());
        let m = digits.fold(0i128, |m, d| m * 10 + i128::from(d - b'0'));
        return Ok(Decimal::from_i128_with_scale(m, frac.len() as u32));
    }
    let mut value: Decimal = mantissa.parse().map_err(|_| Deny::InvalidField)?;
    // rust_decimal silently rounds inputs with more than 28 significant digits; an amount
    // that does not fit is refused instead of being changed.
    if significant_digits(int_part, frac) > MAX_DIGITS {
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

/// The most significant digits an exact decimal holds (its 96-bit mantissa).
const MAX_DIGITS: usize = 28;

/// How many digits `int_part` followed by `frac` has once leading zeros are dropped.
fn significant_digits(int_part: &str, frac: &str) -> usize {
    let int_zeros = int_part.bytes().take_while(|b| *b == b'0').count();
    if int_zeros < int_part.len() {
        int_part.len() - int_zeros + frac.len()
    } else {
        frac.len() - frac.bytes().take_while(|b| *b == b'0').count()
    }
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

    /// The direct path for plain decimals gives what rust_decimal's parser gives.
    #[test]
    fn plain_decimals_as_rust_decimal_reads_them() {
        let mut cases: Vec<String> = [
            "0",
            "00",
            "0.0",
            "1",
            "007",
            "0.00100",
            "95000",
            "0.001",
            "5000000",
            "1763812345.12300000",
            "12345678901234567890.12345678",
            "0.000000000000000000000000001",
            "9999999999999999999999999999",
            "0000000000000000000000000001",
            "79228162514264337593543950335",
            "1.2345678901234567890123456789",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in 1..=29 {
            cases.push("9".repeat(n));
            cases.push(format!("0.{}", "9".repeat(n)));
            cases.push(format!("{}.5", "1".repeat(n)));
        }
        for case in cases {
            let ours = parse_decimal(&case);
            let theirs = case.parse::<Decimal>().map(|d| d.normalize());
            let too_long = significant_digits(
                case.split('.').next().unwrap(),
                case.split('.').nth(1).unwrap_or(""),
            ) > MAX_DIGITS;
            match (ours, theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{case}");
                    assert_eq!(a.to_string(), b.to_string(), "{case}");
                    assert_eq!(a.scale(), b.scale(), "{case}");
                }
                (Err(_), _) => assert!(too_long, "{case}"),
                (Ok(a), Err(e)) => panic!("{case}: {a} but rust_decimal says {e}"),
            }
        }
        assert_eq!(significant_digits("000", "0012"), 2);
        assert_eq!(significant_digits("010", "00"), 4);
        assert_eq!(significant_digits("0", ""), 0);
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
