//! Prometheus text exposition primitives: append-only writers for family
//! headers, label blocks, sample lines and numbers, plus name validation.
//!
//! Every writer appends to a caller-owned `Vec<u8>` and allocates nothing
//! else, so the renderer can reuse one buffer for a whole scrape. Numbers are
//! formatted with `itoa` and `ryu`; `ryu`'s digits are re-laid out the way Go's
//! `strconv.FormatFloat(v, 'g', -1, 64)` prints them, which is what Prometheus
//! itself and `client_golang` produce and parse.
//!
//! Two formats: Prometheus text 0.0.4 ([`Format::Text004`]) and OpenMetrics
//! 1.0.0 ([`Format::OpenMetrics`]). Functions whose output differs between
//! them take a [`Format`]; sample lines are the same in both.
//!
//! ```
//! use shmetrics::expo::{write_family_header, write_label_pairs, write_sample, Format};
//!
//! let mut out = Vec::new();
//! write_family_header(&mut out, Format::Text004, "hits_total", b"Cache hits.", "counter");
//! let mut labels = Vec::new();
//! write_label_pairs(&mut labels, &["zone"], &[b"a\"b"]);
//! write_sample(&mut out, "hits_total", "", &labels, None, 42.0);
//! assert_eq!(
//!     String::from_utf8(out).unwrap(),
//!     "# HELP hits_total Cache hits.\n# TYPE hits_total counter\nhits_total{zone=\"a\\\"b\"} 42\n",
//! );
//! ```

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition format, version 0.0.4.
    Text004,
    /// OpenMetrics text format 1.0.0: counter families are named without
    /// `_total` in `# HELP`/`# TYPE`, HELP also escapes `"`, and the body ends
    /// with `# EOF`.
    OpenMetrics,
}

impl Format {
    /// The HTTP `Content-Type` a response body in this format is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text004 => CONTENT_TYPE_TEXT_004,
            Format::OpenMetrics => CONTENT_TYPE_OPENMETRICS,
        }
    }
}

/// `Content-Type` of [`Format::Text004`] bodies, as `client_golang` sends it.
pub const CONTENT_TYPE_TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of [`Format::OpenMetrics`] bodies.
pub const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// UTF-8 encoding of U+FFFD REPLACEMENT CHARACTER.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// 2^53: below this magnitude every integer is exactly representable in an
/// `f64`, so integral values print as plain integers.
const TWO_POW_53: f64 = 9_007_199_254_740_992.0;

/// Appends `# HELP <name> <escaped help>\n# TYPE <name> <type_name>\n`.
///
/// `help` is raw bytes: a backslash becomes `\\` and a newline `\n` (and in
/// OpenMetrics a double quote `\"`);
/// every invalid UTF-8 sequence becomes U+FFFD (the policy of
/// `String::from_utf8_lossy`). An empty `help` still writes the HELP line, as
/// `# HELP <name> ` followed by the newline, like `client_golang`; the text
/// parser accepts it (promtool's linter then reports "no help text").
///
/// `name` and `type_name` are written as given; `name` must already be valid
/// (see [`is_valid_metric_name`]), `type_name` one of `counter`, `gauge`,
/// `histogram`, `summary`, `untyped`.
pub fn write_family_header(out: &mut Vec<u8>, fmt: Format, name: &str, help: &[u8], type_name: &str) {
    out.extend_from_slice(b"# HELP ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    match fmt {
        Format::Text004 => write_lossy_escaped::<false>(out, help),
        Format::OpenMetrics => write_lossy_escaped::<true>(out, help),
    }
    out.extend_from_slice(b"\n# TYPE ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(type_name.as_bytes());
    out.push(b'\n');
}

/// Appends whatever must follow the last family of a body in `fmt`.
///
/// Text 0.0.4 has no terminator, so this writes nothing; OpenMetrics writes
/// `# EOF\n`. The renderer calls it unconditionally.
pub fn write_body_end(out: &mut Vec<u8>, fmt: Format) {
    match fmt {
        Format::Text004 => {}
        Format::OpenMetrics => out.extend_from_slice(b"# EOF\n"),
    }
}

/// Appends a label block body WITHOUT braces: `a="x",b="y"`.
///
/// Each value is written with [`write_label_value`]: `\` becomes `\\`, `"`
/// becomes `\"`, a newline becomes `\n`, every invalid UTF-8 sequence becomes
/// U+FFFD, and all other bytes (NUL, tab, other control characters) pass
/// through unchanged — the Prometheus text parser accepts any valid UTF-8
/// between the quotes. Values are never truncated.
///
/// Names are written as given and must be valid (see [`is_valid_label_name`]).
/// No leading comma is written: start from an empty buffer. `names` and
/// `values` must have the same length; debug builds assert it, release builds
/// write only the pairs both slices have.
pub fn write_label_pairs(out: &mut Vec<u8>, names: &[&str], values: &[&[u8]]) {
    debug_assert_eq!(names.len(), values.len(), "label names/values mismatch");
    for (i, (name, value)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        write_label_value(out, value);
        out.push(b'"');
    }
}

/// Appends one label value, escaped as described in [`write_label_pairs`],
/// without the surrounding quotes.
pub fn write_label_value(out: &mut Vec<u8>, value: &[u8]) {
    write_lossy_escaped::<true>(out, value);
}

/// Appends one sample line:
/// `<name><suffix>{<labels>[,<extra_name>="<extra_value>"]} <value>\n`.
///
/// `labels` is a pre-rendered block from [`write_label_pairs`] (may be
/// empty). If both `labels` and `extra` are empty, no braces are written at
/// all: `<name><suffix> <value>\n`. `extra` is for the histogram `le` label;
/// its value is written verbatim (format it with [`write_le`]). `value` is
/// formatted with [`write_value`].
pub fn write_sample(
    out: &mut Vec<u8>,
    name: &str,
    suffix: &str,
    labels: &[u8],
    extra: Option<(&str, &[u8])>,
    value: f64,
) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    if !labels.is_empty() || extra.is_some() {
        out.push(b'{');
        out.extend_from_slice(labels);
        if let Some((extra_name, extra_value)) = extra {
            if !labels.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(extra_name.as_bytes());
            out.extend_from_slice(b"=\"");
            out.extend_from_slice(extra_value);
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.push(b' ');
    write_value(out, value);
    out.push(b'\n');
}

/// Appends a sample value.
///
/// - Integral values with `|v| < 2^53` print exactly as integers: `42`, `-3`,
///   `0`, `9007199254740991` (Go would print `1e+06` for a million; an
///   integer is easier to read and parses to the same value).
/// - `-0.0` prints `0`, as `client_golang` does; this is the only value whose
///   bits do not survive a round trip.
/// - Other finite values print as Go's `strconv.FormatFloat(v, 'g', -1, 64)`
///   would: the shortest digits that round-trip, in exponent form when the
///   decimal exponent is below -4 or at least 6 (`0.1`, `0.0042`,
///   `1.5e-07`, `9.007199254740992e+15`, `1e+21`, `5e-324`).
/// - Non-finite values print `+Inf`, `-Inf` and `NaN`.
pub fn write_value(out: &mut Vec<u8>, v: f64) {
    // Counters are integral almost always: one compare and one conversion.
    // NaN fails the compare; `-0.0` converts to 0 and compares equal to it.
    if v.abs() < TWO_POW_53 {
        let i = v as i64;
        if i as f64 == v {
            out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
            return;
        }
    }
    write_go_float(out, v);
}

/// Appends a histogram bucket bound for the `le` label, formatted like
/// `client_golang` does (`strconv.FormatFloat(v, 'g', -1, 64)`): `0.005`,
/// `1`, `2.5`, `1e-09`, `1e+06`, `+Inf`. `-0.0` prints `0`. The result needs
/// no escaping.
pub fn write_le(out: &mut Vec<u8>, bound: f64) {
    // Whole bounds below 10^6 are plain integers in Go's %g as well.
    if bound.abs() < 1e6 {
        let i = bound as i64;
        if i as f64 == bound {
            out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
            return;
        }
    }
    write_go_float(out, bound);
}

/// Whether `name` is a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &[u8]) -> bool {
    match name.split_first() {
        Some((&first, rest)) => {
            (first.is_ascii_alphabetic() || first == b'_' || first == b':')
                && rest.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        }
        None => false,
    }
}

/// Whether `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not
/// starting with `__` (reserved for Prometheus-internal labels).
pub fn is_valid_label_name(name: &[u8]) -> bool {
    if name.starts_with(b"__") {
        return false;
    }
    match name.split_first() {
        Some((&first, rest)) => {
            (first.is_ascii_alphabetic() || first == b'_')
                && rest.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    }
}

/// Appends `raw` with invalid UTF-8 sequences replaced by U+FFFD (one per
/// maximal invalid subpart, exactly as `String::from_utf8_lossy`) and `\`,
/// newline — and `"` when `QUOTE` — backslash-escaped.
fn write_lossy_escaped<const QUOTE: bool>(out: &mut Vec<u8>, raw: &[u8]) {
    out.reserve(raw.len());
    for chunk in raw.utf8_chunks() {
        write_escaped::<QUOTE>(out, chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(REPLACEMENT);
        }
    }
}

/// Appends valid UTF-8 `s`, escaping `\`, newline and (when `QUOTE`) `"`.
/// Those are ASCII, so they never occur inside a multi-byte sequence.
fn write_escaped<const QUOTE: bool>(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'"' if QUOTE => b"\\\"",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// Appends `v` the way Go's `strconv.FormatFloat(v, 'g', -1, 64)` lays it
/// out, with `+Inf`/`-Inf`/`NaN` and `0` for both zeros (as `client_golang`).
///
/// `ryu` gives the shortest round-trip digits; this re-reads them from its
/// output into (digits, decimal point position) and writes exponent form iff
/// the decimal exponent is `< -4` or `>= 6` (Go's rule for shortest `%g`),
/// with a signed exponent of at least two digits (`1e-07`, `1.5e+21`).
fn write_go_float(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        out.extend_from_slice(if v.is_nan() {
            b"NaN"
        } else if v > 0.0 {
            b"+Inf"
        } else {
            b"-Inf"
        });
        return;
    }
    if v == 0.0 {
        out.push(b'0');
        return;
    }

    let mut ryu_buf = ryu::Buffer::new();
    let text = ryu_buf.format_finite(v.abs()).as_bytes();
    // `ryu` writes `d+.d+`, `d+e[-]d+` or `d.d+e[-]d+`; at most 17
    // significant digits plus up to 5 zeros before them (`0.00001234`).
    let (mantissa, exp10) = match text.iter().position(|&b| b == b'e') {
        Some(e) => (&text[..e], parse_small_int(&text[e + 1..])),
        None => (text, 0),
    };
    let mut digits = [0u8; 32];
    let mut nd = 0usize;
    let mut int_digits = None;
    for &b in mantissa {
        if b == b'.' {
            int_digits = Some(nd);
        } else {
            digits[nd] = b;
            nd += 1;
        }
    }
    // Value = 0.d1 d2 d3 ... x 10^dp.
    let mut dp = int_digits.unwrap_or(nd) as i32 + exp10;
    let lead = digits[..nd].iter().take_while(|&&d| d == b'0').count();
    dp -= lead as i32;
    let mut digits = &digits[lead..nd];
    while let [rest @ .., b'0'] = digits {
        digits = rest;
    }

    if v < 0.0 {
        out.push(b'-');
    }
    let exp = dp - 1;
    if !(-4..6).contains(&exp) {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let abs = exp.unsigned_abs();
        if abs < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(itoa::Buffer::new().format(abs).as_bytes());
    } else if dp <= 0 {
        // -4 <= exp < 0: `0.000ddd`.
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat(b'0').take((-dp) as usize));
        out.extend_from_slice(digits);
    } else {
        let dp = dp as usize;
        if dp >= digits.len() {
            out.extend_from_slice(digits);
            out.extend(std::iter::repeat(b'0').take(dp - digits.len()));
        } else {
            out.extend_from_slice(&digits[..dp]);
            out.push(b'.');
            out.extend_from_slice(&digits[dp..]);
        }
    }
}

/// Parses `ryu`'s exponent (`[-]d{1,3}`).
fn parse_small_int(s: &[u8]) -> i32 {
    let (neg, s) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let n = s.iter().fold(0i32, |acc, &d| acc * 10 + i32::from(d - b'0'));
    if neg {
        -n
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: f64) -> String {
        let mut out = Vec::new();
        write_value(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    fn le(v: f64) -> String {
        let mut out = Vec::new();
        write_le(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    fn label_value(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_label_value(&mut out, raw);
        out
    }

    /// Inverse of `write_value`/`write_le` for the special spellings.
    fn parse_value(s: &str) -> f64 {
        match s {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}")),
        }
    }

    /// Whether `s` is in the grammar Go's `'g'` formatting produces (and so
    /// `strconv.ParseFloat` accepts): `-?D(.D+)?(e[+-]DD+)?` or a special.
    fn is_go_g_syntax(s: &str) -> bool {
        if matches!(s, "+Inf" | "-Inf" | "NaN") {
            return true;
        }
        let s = s.strip_prefix('-').unwrap_or(s);
        let (mantissa, exp) = match s.split_once('e') {
            Some((m, e)) => (m, Some(e)),
            None => (s, None),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        let mantissa_ok = match mantissa.split_once('.') {
            Some((i, f)) => digits(i) && digits(f),
            None => digits(mantissa),
        };
        let exp_ok = match exp {
            None => true,
            Some(e) => (e.starts_with('+') || e.starts_with('-')) && e.len() >= 3 && digits(&e[1..]),
        };
        mantissa_ok && exp_ok
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn expo_content_type() {
        assert_eq!(Format::Text004.content_type(), CONTENT_TYPE_TEXT_004);
        assert_eq!(CONTENT_TYPE_TEXT_004, "text/plain; version=0.0.4; charset=utf-8");
    }

    #[test]
    fn expo_value_integers() {
        assert_eq!(value(0.0), "0");
        assert_eq!(value(1.0), "1");
        assert_eq!(value(-1.0), "-1");
        assert_eq!(value(42.0), "42");
        assert_eq!(value(-3.0), "-3");
        assert_eq!(value(1e6), "1000000");
        assert_eq!(value(9_007_199_254_740_991.0), "9007199254740991");
        assert_eq!(value(-9_007_199_254_740_991.0), "-9007199254740991");
        // 2^53 and above: Go's %g layout.
        assert_eq!(value(9_007_199_254_740_992.0), "9.007199254740992e+15");
        assert_eq!(value(1e21), "1e+21");
        assert_eq!(value(-1e21), "-1e+21");
        assert_eq!(value(1e100), "1e+100");
        assert_eq!(value(f64::MAX), "1.7976931348623157e+308");
    }

    #[test]
    fn expo_value_fractions() {
        assert_eq!(value(0.1), "0.1");
        assert_eq!(value(0.0042), "0.0042");
        assert_eq!(value(0.0001), "0.0001");
        assert_eq!(value(0.00001), "1e-05");
        assert_eq!(value(1.0 / 3.0), "0.3333333333333333");
        assert_eq!(value(-2.5), "-2.5");
        assert_eq!(value(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(value(1.5e-7), "1.5e-07");
        assert_eq!(value(5e-324), "5e-324");
        assert_eq!(value(f64::MIN_POSITIVE), "2.2250738585072014e-308");
        assert_eq!(value(123456.5), "123456.5");
        assert_eq!(value(1234567.5), "1.2345675e+06");
        assert_eq!(value(123_456_789_012_345_680.0), "1.2345678901234568e+17");
        assert_eq!(value(-1.2345e-300), "-1.2345e-300");
    }

    #[test]
    fn expo_value_specials() {
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(-f64::NAN), "NaN");
        assert_eq!(value(-0.0), "0");
    }

    #[test]
    fn expo_le_default_buckets() {
        // nginx-lua-prometheus's default histogram buckets.
        let bounds =
            [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0];
        let expected = [
            "0.005", "0.01", "0.02", "0.03", "0.05", "0.075", "0.1", "0.2", "0.3", "0.4", "0.5", "0.75", "1", "1.5",
            "2", "3", "4", "5", "10",
        ];
        for (b, e) in bounds.iter().zip(expected) {
            assert_eq!(le(*b), e);
        }
    }

    #[test]
    fn expo_le_go_layout() {
        assert_eq!(le(f64::INFINITY), "+Inf");
        assert_eq!(le(f64::NEG_INFINITY), "-Inf");
        assert_eq!(le(f64::NAN), "NaN");
        assert_eq!(le(0.0), "0");
        assert_eq!(le(-0.0), "0");
        assert_eq!(le(1e-9), "1e-09");
        assert_eq!(le(2.5), "2.5");
        assert_eq!(le(-1.0), "-1");
        assert_eq!(le(99999.0), "99999");
        assert_eq!(le(999999.0), "999999");
        assert_eq!(le(1e6), "1e+06");
        assert_eq!(le(1048576.0), "1.048576e+06");
        assert_eq!(le(16777216.0), "1.6777216e+07");
        assert_eq!(le(0.0001), "0.0001");
        assert_eq!(le(0.00001), "1e-05");
        assert_eq!(le(0.030000000000000002), "0.030000000000000002");
        assert_eq!(le(999999.9999999999), "999999.9999999999");
    }

    #[test]
    fn expo_value_round_trip() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut out = Vec::new();
        for i in 0..20_000 {
            let bits = match i % 4 {
                // Any bit pattern: mostly huge/tiny exponents, some NaN.
                0 | 1 => rng.next(),
                // Integers around the 2^53 switch-over.
                2 => ((rng.next() >> 9) as f64 * if i % 8 == 2 { 1.0 } else { -4.0 }).to_bits(),
                // Magnitudes around the %g switch-over at 1e-4 and 1e6.
                _ => ((rng.next() >> 11) as f64 / (1u64 << 53) as f64 * 1e-3 * 10f64.powi(i % 13)).to_bits(),
            };
            let v = f64::from_bits(bits);
            for write in [write_value, write_le] {
                out.clear();
                write(&mut out, v);
                let s = std::str::from_utf8(&out).unwrap();
                assert!(is_go_g_syntax(s), "{v:?} -> {s:?}");
                let back = parse_value(s);
                if v.is_nan() {
                    assert!(back.is_nan(), "{v:?} -> {s:?}");
                } else if v == 0.0 {
                    assert_eq!(back.to_bits(), 0, "{v:?} -> {s:?}");
                } else {
                    assert_eq!(back.to_bits(), v.to_bits(), "{v:?} -> {s:?}");
                }
            }
        }
    }

    #[test]
    fn expo_label_escaping() {
        assert_eq!(label_value(b"plain"), b"plain");
        assert_eq!(label_value(b""), b"");
        assert_eq!(label_value(b"a\"b"), b"a\\\"b");
        assert_eq!(label_value(b"C:\\dir\\"), b"C:\\\\dir\\\\");
        assert_eq!(label_value(b"line1\nline2"), b"line1\\nline2");
        assert_eq!(label_value(b"nul\0byte"), b"nul\0byte");
        assert_eq!(label_value(b"tab\there\r\x01\x7f"), b"tab\there\r\x01\x7f");
        assert_eq!(label_value(b"\\n"), b"\\\\n");
        assert_eq!(label_value("héllo ✓ 𝄞".as_bytes()), "héllo ✓ 𝄞".as_bytes());
    }

    #[test]
    fn expo_label_invalid_utf8() {
        let fffd = "\u{FFFD}";
        // Lone 0xff.
        assert_eq!(label_value(b"\xff"), fffd.as_bytes());
        assert_eq!(label_value(b"a\xffb"), format!("a{fffd}b").as_bytes());
        // Truncated 3-byte sequence: one replacement for the maximal subpart.
        assert_eq!(label_value(b"x\xe2\x82"), format!("x{fffd}").as_bytes());
        assert_eq!(label_value(b"\xe2\x82\"q"), format!("{fffd}\\\"q").as_bytes());
        // Overlong `/` (0xc0 0xaf): each byte is its own invalid sequence.
        assert_eq!(label_value(b"\xc0\xaf"), format!("{fffd}{fffd}").as_bytes());
        // Surrogate encoded in UTF-8 (CESU): invalid.
        assert_eq!(label_value(b"\xed\xa0\x80"), fffd.repeat(3).as_bytes());
        // Differences in the valid parts survive.
        assert_ne!(label_value(b"a\xffb"), label_value(b"a\xffc"));
        assert_ne!(label_value(b"\xff"), label_value(b"\xff\xff"));
        // The output is always valid UTF-8.
        assert!(std::str::from_utf8(&label_value(b"\x80\xbf\xf8\x88\x80\x80\x80")).is_ok());
    }

    #[test]
    fn expo_label_matches_from_utf8_lossy() {
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        let alphabet: &[u8] = b"a\\\"\n\0\xff\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x80\xc0\xed\xa0";
        for _ in 0..5_000 {
            let len = (rng.next() % 24) as usize;
            let raw: Vec<u8> = (0..len).map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize]).collect();
            let expected =
                String::from_utf8_lossy(&raw).replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            assert_eq!(label_value(&raw), expected.as_bytes(), "{raw:?}");
        }
    }

    #[test]
    fn expo_label_pairs() {
        let mut out = Vec::new();
        write_label_pairs(&mut out, &[], &[]);
        assert_eq!(out, b"");
        write_label_pairs(&mut out, &["a"], &[b"x"]);
        assert_eq!(out, b"a=\"x\"");
        out.clear();
        write_label_pairs(&mut out, &["a", "b", "c"], &[b"x", b"", b"q\"\n\\"]);
        assert_eq!(out, b"a=\"x\",b=\"\",c=\"q\\\"\\n\\\\\"");
        // Never truncated.
        let big = vec![b'v'; 1 << 16];
        out.clear();
        write_label_pairs(&mut out, &["big"], &[&big]);
        assert_eq!(out.len(), (1 << 16) + 6);
    }

    #[test]
    fn expo_help_escaping() {
        let mut out = Vec::new();
        write_family_header(&mut out, Format::Text004, "m", b"a \\ b \"q\"\nc\xffd", "gauge");
        assert_eq!(out, "# HELP m a \\\\ b \"q\"\\nc\u{FFFD}d\n# TYPE m gauge\n".as_bytes());
        out.clear();
        write_family_header(&mut out, Format::Text004, "m_total", b"", "counter");
        assert_eq!(out, b"# HELP m_total \n# TYPE m_total counter\n");
        write_body_end(&mut out, Format::Text004);
        assert_eq!(out, b"# HELP m_total \n# TYPE m_total counter\n");
    }

    #[test]
    fn expo_sample_lines() {
        let mut out = Vec::new();
        write_sample(&mut out, "up", "", b"", None, 1.0);
        assert_eq!(out, b"up 1\n");
        out.clear();
        write_sample(&mut out, "req", "_total", b"a=\"b\"", None, 0.5);
        assert_eq!(out, b"req_total{a=\"b\"} 0.5\n");
        out.clear();
        write_sample(&mut out, "lat", "_bucket", b"", Some(("le", b"0.005")), 3.0);
        assert_eq!(out, b"lat_bucket{le=\"0.005\"} 3\n");
        out.clear();
        write_sample(&mut out, "lat", "_bucket", b"a=\"b\",c=\"d\"", Some(("le", b"+Inf")), f64::NAN);
        assert_eq!(out, b"lat_bucket{a=\"b\",c=\"d\",le=\"+Inf\"} NaN\n");
        out.clear();
        write_sample(&mut out, "g", "", b"", None, -0.0);
        assert_eq!(out, b"g 0\n");
    }

    #[test]
    fn expo_metric_names() {
        for good in ["a", "_", ":", "http_requests_total", "job:rate5m", "A1_b2:c3", "__name_ok"] {
            assert!(is_valid_metric_name(good.as_bytes()), "{good}");
        }
        for bad in ["", "1a", "a-b", "a b", "a.b", "é", "a\0", "a{", "µs"] {
            assert!(!is_valid_metric_name(bad.as_bytes()), "{bad}");
        }
        assert!(!is_valid_metric_name(b"a\xff"));
    }

    #[test]
    fn expo_label_names() {
        for good in ["a", "_", "_a", "le", "Method", "a1_B2", "_a__b"] {
            assert!(is_valid_label_name(good.as_bytes()), "{good}");
        }
        for bad in ["", "__", "__name__", "__x", "1a", "a:b", "a-b", "a b", "é"] {
            assert!(!is_valid_label_name(bad.as_bytes()), "{bad}");
        }
        assert!(!is_valid_label_name(b"a\xff"));
    }
}
