//! JSON writers for the `SHMETRICS_FORMAT_JSON` view (for dashboards and front
//! ends that want numbers, not the Prometheus text format).
//!
//! Shape (documented in docs/prometheus.md, "The JSON view"):
//!
//! ```json
//! {"families":[
//!   {"name":"requests_total","type":"counter","help":"...","labels":["code"],
//!    "series":[{"labels":{"code":"200"},"value":3}]},
//!   {"name":"latency_seconds","type":"histogram","help":"...","labels":[],
//!    "series":[{"labels":{},"buckets":[[0.1,2],[1,3],["+Inf",4]],"sum":2.5,"count":4}]}
//! ]}
//! ```
//!
//! Bucket counts are cumulative, as in the exposition. Non-finite numbers,
//! which JSON cannot hold, are the strings `"+Inf"`, `"-Inf"` and `"NaN"`.

use crate::expo;

/// Appends `raw` as a JSON string: invalid UTF-8 becomes U+FFFD, `"` and `\`
/// are escaped, control characters become `\u00XX`.
pub fn write_string(out: &mut Vec<u8>, raw: &[u8]) {
    out.push(b'"');
    for chunk in raw.utf8_chunks() {
        let s = chunk.valid().as_bytes();
        let mut start = 0;
        for (i, &b) in s.iter().enumerate() {
            if b != b'"' && b != b'\\' && b >= 0x20 {
                continue;
            }
            out.extend_from_slice(&s[start..i]);
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[(b >> 4) as usize]);
                    out.push(HEX[(b & 15) as usize]);
                }
            }
            start = i + 1;
        }
        out.extend_from_slice(&s[start..]);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
    out.push(b'"');
}

/// Appends a number: finite values as the exposition writes them (always a
/// valid JSON number: `3`, `0.1`, `1.5e-07`), others as strings.
pub fn write_number(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        expo::write_value(out, v);
    } else {
        out.push(b'"');
        expo::write_value(out, v);
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(raw: &[u8]) -> String {
        let mut out = Vec::new();
        write_string(&mut out, raw);
        String::from_utf8(out).unwrap()
    }

    fn n(v: f64) -> String {
        let mut out = Vec::new();
        write_number(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings() {
        assert_eq!(s(b"plain"), r#""plain""#);
        assert_eq!(s(b"a\"b\\c\nd\te\r\x00\x1f"), r#""a\"b\\c\nd\te\r\u0000\u001f""#);
        assert_eq!(s(b"bad\xff"), "\"bad\u{FFFD}\"");
        assert_eq!(s("ünï".as_bytes()), "\"ünï\"");
    }

    #[test]
    fn numbers() {
        assert_eq!(n(3.0), "3");
        assert_eq!(n(0.1), "0.1");
        assert_eq!(n(1.5e-7), "1.5e-07");
        assert_eq!(n(-2.5), "-2.5");
        assert_eq!(n(f64::INFINITY), r#""+Inf""#);
        assert_eq!(n(f64::NEG_INFINITY), r#""-Inf""#);
        assert_eq!(n(f64::NAN), r#""NaN""#);
    }
}
