//! Generators: definitions, names, HELP texts, bounds and label values from the
//! input, biased toward what the library checks (existing names and their
//! suffixes, reserved prefixes, lengths at the limits, escapes, invalid UTF-8).

use shmetrics::layout::*;

use super::abi::Def;
use super::input::{gen_f64, Input};
use super::oracle::Model;

pub fn gen_name(inp: &mut Input, alphabet: &[u8], max: usize) -> Vec<u8> {
    let n = 1 + inp.below(max);
    (0..n).map(|_| alphabet[inp.below(alphabet.len())]).collect()
}

pub fn raw(inp: &mut Input, max: usize) -> Vec<u8> {
    let n = inp.below(max + 1);
    inp.bytes(n).to_vec()
}

pub fn gen_metric_name(inp: &mut Input, model: &Model) -> Vec<u8> {
    let existing: Vec<&Vec<u8>> = model.fams.values().map(|f| &f.def.name).collect();
    match inp.u8() % 12 {
        0 => raw(inp, 40),
        1 | 2 if !existing.is_empty() => existing[inp.below(existing.len())].clone(),
        3 if !existing.is_empty() => {
            let n = existing[inp.below(existing.len())];
            match inp.u8() % 5 {
                0 => n.strip_suffix(b"_total").unwrap_or(n).to_vec(),
                k => [n.as_slice(), [&b"_total"[..], b"_bucket", b"_count", b"_sum"][k as usize - 1]].concat(),
            }
        }
        4 => [&b"shmetrics_"[..], &gen_name(inp, b"ab_", 4)].concat(),
        5 => vec![b'a'; MAX_NAME_BYTES - 1 + inp.below(3)],
        _ => {
            let mut n = gen_name(inp, b"ab_:0", 5);
            if inp.u8() % 4 == 0 {
                n.extend_from_slice([&b"_total"[..], b"_count", b"_sum", b"_bucket"][inp.below(4)]);
            }
            n
        }
    }
}

pub fn gen_label_name(inp: &mut Input) -> Vec<u8> {
    match inp.u8() % 10 {
        0 => raw(inp, 12),
        1 => b"le".to_vec(),
        2 => b"__x".to_vec(),
        3 => vec![b'l'; MAX_NAME_BYTES + inp.below(2)],
        _ => gen_name(inp, b"abel_0", 3),
    }
}

pub fn gen_help(inp: &mut Input) -> Vec<u8> {
    match inp.u8() % 10 {
        0 => vec![b'h'; MAX_HELP_BYTES + inp.below(2)],
        1 => Vec::new(),
        2 => b"a \\ b \"q\"\nc\xffd\r\t\0".to_vec(),
        _ => raw(inp, 48),
    }
}

pub fn gen_bounds(inp: &mut Input, kind: u32) -> Vec<f64> {
    if kind != KIND_HISTOGRAM && inp.u8() % 8 != 0 {
        return Vec::new();
    }
    match inp.u8() % 8 {
        0 => Vec::new(),
        1 => (0..inp.below(6)).map(|_| gen_f64(inp)).collect(),
        2 => (0..MAX_BUCKETS - 1 + inp.below(4)).map(|i| i as f64 / 7.0).collect(),
        _ => {
            let n = 1 + inp.below(6);
            let mut x = (inp.u8() as i8) as f64 / 4.0;
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(x);
                x += (1 + inp.below(40)) as f64 / [8.0, 1000.0, 0.001][inp.below(3)];
            }
            if inp.bool() {
                v.push(f64::INFINITY);
            }
            v
        }
    }
}

pub fn gen_def(inp: &mut Input, model: &Model) -> Def {
    let kind = match inp.u8() % 8 {
        0..=2 => KIND_COUNTER,
        3 | 4 => KIND_GAUGE,
        5 | 6 => KIND_HISTOGRAM,
        _ => inp.u32(),
    };
    let name = gen_metric_name(inp, model);
    let help = gen_help(inp);
    let nl = match inp.u8() {
        x if x < 224 => x as usize % 4,
        x => x as usize % (MAX_LABELS + 3),
    };
    let labels = (0..nl).map(|_| gen_label_name(inp)).collect();
    let bounds = gen_bounds(inp, kind);
    let max_series = match inp.u8() % 8 {
        k @ 5..=7 => k as u32 - 4,
        _ => 0,
    };
    Def { kind, name, help, labels, bounds, max_series }
}

pub fn gen_value(inp: &mut Input, model: &Model, max_label_bytes: u32) -> Vec<u8> {
    const POOL: [&[u8]; 10] = [
        b"",
        b"a",
        b"\xff",
        b"\xef\xbf\xbd",
        b"__overflow__",
        b"\"\\\n",
        "\u{e9}\u{2028}".as_bytes(),
        b"a\xc3",
        b"\0\t\r\x7f",
        b"}{,=\" x",
    ];
    match inp.u8() % 10 {
        0..=2 if !model.pool.is_empty() => model.pool[inp.below(model.pool.len())].clone(),
        3..=5 => POOL[inp.below(POOL.len())].to_vec(),
        6 => {
            let mut v = vec![b'x'; max_label_bytes as usize + inp.below(2)];
            if inp.bool() {
                v[0] = 0xff;
            }
            v
        }
        _ => raw(inp, 24),
    }
}

pub fn gen_values(inp: &mut Input, model: &Model, n: usize, max_label_bytes: u32) -> Vec<Vec<u8>> {
    let n = match inp.u8() {
        x if x < 240 => n,
        x => (n + x as usize % 3).saturating_sub(1) + if x == 255 { MAX_LABELS } else { 0 },
    };
    (0..n).map(|_| gen_value(inp, model, max_label_bytes)).collect()
}

pub fn pick_fam(inp: &mut Input, model: &Model) -> u32 {
    let k = inp.u8();
    if k < 240 && !model.fams.is_empty() {
        return *model.fams.keys().nth(k as usize % model.fams.len()).unwrap();
    }
    match k % 3 {
        0 => inp.u32(),
        1 => model.fams.len() as u32,
        _ => 0,
    }
}
