//! JSON through serde_json (the grammar, escapes, surrogates, nesting limit are its
//! own), read into a tree that keeps what a `serde_json::Value` drops: the order of
//! an object's keys, duplicate keys (refused), and each number's text (to check its
//! spelling). Then the shape of shmetrics' JSON view (`src/json.rs`).

use std::fmt;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::expo::{is_go_float, parse_value};

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text, as written.
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    /// Keys in the order written, each once.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Parses a whole document; see [`parse_json`].
    pub fn parse(text: &str) -> Result<Json, String> {
        parse_json(text.as_bytes())
    }

    /// A member of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A number's value (its text read as an `f64`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[(String, Json)]> {
        match self {
            Json::Obj(m) => Some(m),
            _ => None,
        }
    }

    /// Every value in this tree (itself included), depth first.
    pub fn walk<'a>(&'a self, out: &mut Vec<&'a Json>) {
        out.push(self);
        match self {
            Json::Arr(a) => a.iter().for_each(|v| v.walk(out)),
            Json::Obj(m) => m.iter().for_each(|(_, v)| v.walk(out)),
            _ => {}
        }
    }
}

/// Entries of an object, in order, values still unparsed.
struct Entries(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Items of an array, unparsed.
struct Items(Vec<Box<RawValue>>);

impl<'de> serde::Deserialize<'de> for Items {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Items;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Items, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = s.next_element::<Box<RawValue>>()? {
                    out.push(v);
                }
                Ok(Items(out))
            }
        }
        d.deserialize_seq(V)
    }
}

fn tree(raw: &RawValue) -> Result<Json, String> {
    let text = raw.get();
    let err = |e: serde_json::Error| format!("JSON: {e}");
    Ok(match text.as_bytes().first() {
        Some(b'{') => {
            let Entries(entries) = serde_json::from_str(text).map_err(err)?;
            let mut fields: Vec<(String, Json)> = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                if fields.iter().any(|(n, _)| *n == k) {
                    return Err(format!("JSON: key {k:?} twice in one object"));
                }
                fields.push((k, tree(&v)?));
            }
            Json::Obj(fields)
        }
        Some(b'[') => {
            let Items(items) = serde_json::from_str(text).map_err(err)?;
            Json::Arr(items.iter().map(|v| tree(v)).collect::<Result<_, _>>()?)
        }
        Some(b'"') => Json::Str(serde_json::from_str(text).map_err(err)?),
        Some(b't' | b'f') => Json::Bool(serde_json::from_str(text).map_err(err)?),
        Some(b'n') => Json::Null,
        _ => Json::Num(text.to_string()),
    })
}

/// Parses a whole document (RFC 8259: nothing but blanks after the value).
pub fn parse_json(body: &[u8]) -> Result<Json, String> {
    let raw: Box<RawValue> = serde_json::from_slice(body).map_err(|e| format!("JSON: {e}"))?;
    tree(&raw)
}

fn obj<'a>(v: &'a Json, keys: &[&str]) -> Result<Vec<&'a Json>, String> {
    match v {
        Json::Obj(fields) if fields.len() == keys.len() && fields.iter().zip(keys).all(|((k, _), w)| k == w) => {
            Ok(fields.iter().map(|(_, v)| v).collect())
        }
        _ => Err(format!("expected an object with keys {keys:?}, got {v:?}")),
    }
}

fn arr(v: &Json) -> Result<&[Json], String> {
    match v {
        Json::Arr(a) => Ok(a),
        _ => Err(format!("expected an array, got {v:?}")),
    }
}

fn jstr(v: &Json) -> Result<&str, String> {
    match v {
        Json::Str(s) => Ok(s),
        _ => Err(format!("expected a string, got {v:?}")),
    }
}

/// A JSON view number: finite ones as numbers in the exposition's spelling,
/// others as the strings `+Inf`, `-Inf`, `NaN`.
fn jnum(v: &Json) -> Result<f64, String> {
    match v {
        Json::Num(s) if is_go_float(s) => Ok(parse_value(s).unwrap()),
        Json::Str(s) if matches!(s.as_str(), "+Inf" | "-Inf" | "NaN") => Ok(parse_value(s).unwrap()),
        _ => Err(format!("expected a number, got {v:?}")),
    }
}

/// One family of the JSON view (`src/json.rs`), as plain data.
#[derive(Debug)]
pub struct JsonFamily {
    pub name: String,
    pub typ: String,
    pub help: String,
    pub labels: Vec<String>,
    /// Per series: label values by name, then the value or (buckets, sum, count).
    pub series: Vec<(Vec<(String, String)>, JsonValue)>,
}

#[derive(Debug)]
pub enum JsonValue {
    One(f64),
    Histogram(Vec<(f64, f64)>, f64, f64),
}

/// Reads the JSON view strictly: `{"families":[...]}`, each family's keys in their
/// order, each series' keys for its type, numbers in the exposition's spelling.
pub fn parse_json_view(body: &[u8]) -> Result<Vec<JsonFamily>, String> {
    let top = parse_json(body)?;
    let mut out = Vec::new();
    for f in arr(obj(&top, &["families"])?[0])? {
        let v = obj(f, &["name", "type", "help", "labels", "series"])?;
        let typ = jstr(v[1])?.to_string();
        if !matches!(typ.as_str(), "counter" | "gauge" | "histogram") {
            return Err(format!("bad type {typ:?}"));
        }
        let labels: Vec<String> = arr(v[3])?.iter().map(|l| jstr(l).map(str::to_string)).collect::<Result<_, _>>()?;
        let mut series = Vec::new();
        for s in arr(v[4])? {
            let keys: &[&str] =
                if typ == "histogram" { &["labels", "buckets", "sum", "count"] } else { &["labels", "value"] };
            let sv = obj(s, keys)?;
            let Json::Obj(lv) = sv[0] else { return Err(format!("series labels not an object: {:?}", sv[0])) };
            let lv: Vec<(String, String)> =
                lv.iter().map(|(k, v)| jstr(v).map(|v| (k.clone(), v.to_string()))).collect::<Result<_, _>>()?;
            let value = if typ == "histogram" {
                let mut buckets = Vec::new();
                for b in arr(sv[1])? {
                    let pair = arr(b)?;
                    if pair.len() != 2 {
                        return Err(format!("bucket {b:?} is not a pair"));
                    }
                    buckets.push((jnum(&pair[0])?, jnum(&pair[1])?));
                }
                JsonValue::Histogram(buckets, jnum(sv[2])?, jnum(sv[3])?)
            } else {
                JsonValue::One(jnum(sv[1])?)
            };
            series.push((lv, value));
        }
        out.push(JsonFamily { name: jstr(v[0])?.to_string(), typ, help: jstr(v[2])?.to_string(), labels, series });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_number_text_and_refuses_what_rfc_8259_does() {
        let j = parse_json(br#" {"b":[1.50,-0,"x\u00e9"],"a":null} "#).unwrap();
        let want = Json::Obj(vec![
            ("b".into(), Json::Arr(vec![Json::Num("1.50".into()), Json::Num("-0".into()), Json::Str("xé".into())])),
            ("a".into(), Json::Null),
        ]);
        assert_eq!(j, want);
        for bad in [&br#"{"a":1,"a":2}"#[..], b"[1,]", b"[01]", b"\"\\ud800\"", b"{} x", b"", b"[\"\x01\"]"] {
            assert!(parse_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
