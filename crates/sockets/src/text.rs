//! Number parsing over the ASCII bytes the kernel prints. Pure; never panics; no allocation.

/// Parses 1 to `max_digits` hex digits (either case), nothing else: no sign, no prefix, no
/// spaces (unlike `from_str_radix`, which accepts a leading `+`).
pub(crate) fn hex(digits: &[u8], max_digits: usize) -> Option<u64> {
    if digits.is_empty() || digits.len() > max_digits.min(16) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = char::from(d).to_digit(16)?;
        Some(acc << 4 | u64::from(v))
    })
}

/// Parses a non-empty run of decimal digits that fits in a `u64`.
pub(crate) fn dec(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = char::from(d).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(u64::from(v))
    })
}

/// The number in a link target such as `socket:[8195]` or `net:[4026531840]`, given the
/// prefix up to and including `[`.
pub(crate) fn bracketed(target: &[u8], prefix: &[u8]) -> Option<u64> {
    dec(target.strip_prefix(prefix)?.strip_suffix(b"]")?)
}

/// The whitespace-separated fields of `line`, or `None` if there are fewer than `N`.
pub(crate) fn fields<const N: usize>(line: &[u8]) -> Option<[&[u8]; N]> {
    let mut it = line
        .split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty());
    let mut out: [&[u8]; N] = [&[]; N];
    for slot in &mut out {
        *slot = it.next()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_rejects_signs_and_overlong_input() {
        assert_eq!(hex(b"0A", 2), Some(10));
        assert_eq!(hex(b"ffFF", 4), Some(0xffff));
        assert_eq!(hex(b"+A", 2), None);
        assert_eq!(hex(b"10000", 4), None);
        assert_eq!(hex(b"", 4), None);
    }

    #[test]
    fn dec_rejects_overflow_and_non_digits() {
        assert_eq!(dec(b"4026531840"), Some(4_026_531_840));
        assert_eq!(dec(b"18446744073709551616"), None);
        assert_eq!(dec(b"-1"), None);
    }

    #[test]
    fn bracketed_needs_prefix_and_closing_bracket() {
        assert_eq!(bracketed(b"socket:[8195]", b"socket:["), Some(8195));
        assert_eq!(bracketed(b"pipe:[9]", b"socket:["), None);
        assert_eq!(bracketed(b"socket:[9", b"socket:["), None);
    }

    #[test]
    fn fields_skips_runs_of_whitespace() {
        assert_eq!(fields::<2>(b"  a \t b  c"), Some([&b"a"[..], b"b"]));
        assert_eq!(fields::<3>(b"a b"), None);
    }
}
