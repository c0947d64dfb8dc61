//! Reference tests for `shmetrics::expo`: the primitives against
//! `prometheus-client` 0.26's Prometheus text 0.0.4 encoder
//! (`encoding::prometheus_text`), and against `promtool check metrics`.
//!
//! What `prometheus-client` 0.26 emits differently, and how it is normalised:
//!
//! - It appends `_total` to counter names (in HELP, TYPE and samples) and a
//!   `.` to every help text. Our renderer writes names and help as given, so
//!   the test hands our writers `<name>_total` and `<help>.`; HELP and TYPE
//!   lines are then compared byte for byte.
//! - Float values go through `dtoa`: `1.0` where we write `1`, `1e21` where
//!   we write `1e+21`, `-0.0` where we write `0`. Sample values are therefore
//!   compared as numbers: both texts are parsed to `f64`, `NaN` and `-0.0`
//!   canonicalised, and the bits compared.
//! - `Family` keeps its series in a `HashMap`, so their order is unspecified.
//!   Samples of one family are stable-sorted by their label set without `le`
//!   before comparing, which keeps the order of lines within one series
//!   (`_bucket`s, `_sum`, `_count`) significant.
//! - Everything else is compared exactly: family order, metric names, label
//!   names and order, escaped label values byte for byte, and the `le` text.
//!   The 0.0.4 encoder writes no `# EOF` and no `_created` samples.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;
use shmetrics::expo::{write_body_end, write_family_header, write_label_pairs, write_le, write_sample, Format};

type LabelSet = Vec<(String, String)>;
type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// What one series holds; the same data feeds both encoders.
#[derive(Clone, Debug)]
enum Data {
    /// A `u64` counter incremented by each entry in turn.
    IntCounter(Vec<u64>),
    /// An `f64` counter incremented by each entry in turn.
    FloatCounter(Vec<f64>),
    /// An `f64` gauge set to this value.
    Gauge(f64),
    /// A histogram observing each entry in turn.
    Histogram(Vec<f64>),
}

/// One metric family: base name (without `_total`), help without the `.`
/// `prometheus-client` appends, label names, bucket bounds for histograms.
struct FamilySpec {
    name: &'static str,
    help: &'static str,
    label_names: &'static [&'static str],
    bounds: &'static [f64],
    series: Vec<(Vec<&'static [u8]>, Data)>,
}

impl FamilySpec {
    fn type_name(&self) -> &'static str {
        match self.series[0].1 {
            Data::IntCounter(_) | Data::FloatCounter(_) => "counter",
            Data::Gauge(_) => "gauge",
            Data::Histogram(_) => "histogram",
        }
    }

    /// The name `prometheus-client` exposes: counters get `_total`.
    fn exposed_name(&self) -> String {
        match self.type_name() {
            "counter" => format!("{}_total", self.name),
            _ => self.name.to_owned(),
        }
    }
}

const HIST_BOUNDS: &[f64] = &[1e-9, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 1e6];
const SIZE_BOUNDS: &[f64] = &[64.0, 1024.0, 65536.0, 1.048576e6];

fn model() -> Vec<FamilySpec> {
    use Data::*;
    vec![
        FamilySpec {
            name: "http_requests",
            help: "Requests served, by \"method\" and path \\ route\nsecond line",
            label_names: &["method", "path"],
            bounds: &[],
            series: vec![
                (vec![b"GET", b"/"], IntCounter(vec![1])),
                (vec![b"GET", b"/a\"b\\c\nd"], IntCounter(vec![10, 7])),
                (vec![b"POST", "/héllo/✓/𝄞".as_bytes()], IntCounter(vec![])),
                (vec![b"PUT", b"/bad\xff\xfe"], IntCounter(vec![1 << 52])),
                (vec![b"PUT", b"/bad\xffz"], IntCounter(vec![u64::MAX >> 11])),
                (vec![b"DELETE", b"/trunc\xe2\x82"], IntCounter(vec![3])),
                (vec![b"PATCH", b"/overlong\xc0\xaf"], IntCounter(vec![4])),
                (vec![b"", b""], IntCounter(vec![5])),
                (vec![b"HEAD", b"nul\0tab\tcr\rdel\x7f"], IntCounter(vec![2])),
            ],
        },
        FamilySpec {
            name: "bytes_sent",
            help: "Bytes sent",
            label_names: &["zone"],
            bounds: &[],
            series: vec![
                (vec![b"a"], FloatCounter(vec![0.1, 0.2])),
                (vec![b"b"], FloatCounter(vec![1e21])),
                (vec![b"c"], FloatCounter(vec![1.5e-7])),
                (vec![b"d"], FloatCounter(vec![9_007_199_254_740_992.0])),
                (vec![b"e"], FloatCounter(vec![1.0, 2.0])),
            ],
        },
        FamilySpec {
            name: "temperature",
            help: "Assorted gauge values",
            label_names: &["sensor", "room"],
            bounds: &[],
            series: vec![
                (vec![b"neg", b"x"], Gauge(-3.0)),
                (vec![b"small", b"x"], Gauge(0.0042)),
                (vec![b"third", b"x"], Gauge(1.0 / 3.0)),
                (vec![b"denormal", b"x"], Gauge(5e-324)),
                (vec![b"inf", b"x"], Gauge(f64::INFINITY)),
                (vec![b"ninf", b"x"], Gauge(f64::NEG_INFINITY)),
                (vec![b"nan", b"x"], Gauge(f64::NAN)),
                (vec![b"negzero", b"x"], Gauge(-0.0)),
                (vec![b"zero", b"x"], Gauge(0.0)),
                (vec![b"max_int", b"x"], Gauge(9_007_199_254_740_991.0)),
                (vec![b"pow53", b"x"], Gauge(9_007_199_254_740_992.0)),
                (vec![b"big", b"x"], Gauge(1e21)),
                (vec![b"tiny", b"x"], Gauge(-1e-300)),
                (vec![b"max", b"x"], Gauge(f64::MAX)),
            ],
        },
        FamilySpec {
            name: "ratio",
            help: "A gauge without labels",
            label_names: &[],
            bounds: &[],
            series: vec![(vec![], Gauge(0.25))],
        },
        FamilySpec {
            name: "restarts",
            help: "A counter without labels",
            label_names: &[],
            bounds: &[],
            series: vec![(vec![], IntCounter(vec![7]))],
        },
        FamilySpec {
            name: "request_duration_seconds",
            help: "Request latency",
            label_names: &["route"],
            bounds: HIST_BOUNDS,
            series: vec![
                (vec![b"/api"], Histogram(vec![0.003, 0.005, 0.04, 0.7, 12.0, 1e7, 2.5, 0.1])),
                (vec![b"/static\"\\"], Histogram(vec![0.0, 1e-10])),
                (vec![b"/never"], Histogram(vec![])),
                (vec![b"/nan"], Histogram(vec![f64::NAN, 1.0])),
            ],
        },
        FamilySpec {
            name: "payload_bytes",
            help: "A histogram without labels",
            label_names: &[],
            bounds: SIZE_BOUNDS,
            series: vec![(vec![], Histogram(vec![10.0, 64.0, 65.0, 2e6, 0.5]))],
        },
    ]
}

fn lossy_label_set(names: &[&str], values: &[&[u8]]) -> LabelSet {
    names.iter().zip(values).map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned())).collect()
}

fn record_counter(c: &Counter, incs: &[u64]) {
    incs.iter().for_each(|&i| {
        c.inc_by(i);
    });
}

fn record_float_counter(c: &FloatCounter, incs: &[f64]) {
    incs.iter().for_each(|&i| {
        c.inc_by(i);
    });
}

fn record_histogram(h: &Histogram, obs: &[f64]) {
    obs.iter().for_each(|&v| h.observe(v));
}

/// Encodes `model` with `prometheus-client`; invalid UTF-8 label values go
/// in through `String::from_utf8_lossy`.
fn render_reference(model: &[FamilySpec]) -> String {
    let mut registry = Registry::default();
    for fam in model {
        let names = fam.label_names;
        if names.is_empty() {
            assert_eq!(fam.series.len(), 1);
            match &fam.series[0].1 {
                Data::IntCounter(incs) => {
                    let c = Counter::default();
                    record_counter(&c, incs);
                    registry.register(fam.name, fam.help, c);
                }
                Data::FloatCounter(incs) => {
                    let c = FloatCounter::default();
                    record_float_counter(&c, incs);
                    registry.register(fam.name, fam.help, c);
                }
                Data::Gauge(v) => {
                    let g = FloatGauge::default();
                    g.set(*v);
                    registry.register(fam.name, fam.help, g);
                }
                Data::Histogram(obs) => {
                    let h = Histogram::new(fam.bounds.iter().copied());
                    record_histogram(&h, obs);
                    registry.register(fam.name, fam.help, h);
                }
            }
            continue;
        }
        match fam.type_name() {
            "counter" if matches!(fam.series[0].1, Data::IntCounter(_)) => {
                let f = Family::<LabelSet, Counter>::default();
                for (values, data) in &fam.series {
                    let Data::IntCounter(incs) = data else { unreachable!() };
                    record_counter(&f.get_or_create(&lossy_label_set(names, values)), incs);
                }
                registry.register(fam.name, fam.help, f);
            }
            "counter" => {
                let f = Family::<LabelSet, FloatCounter>::default();
                for (values, data) in &fam.series {
                    let Data::FloatCounter(incs) = data else { unreachable!() };
                    record_float_counter(&f.get_or_create(&lossy_label_set(names, values)), incs);
                }
                registry.register(fam.name, fam.help, f);
            }
            "gauge" => {
                let f = Family::<LabelSet, FloatGauge>::default();
                for (values, data) in &fam.series {
                    let Data::Gauge(v) = data else { unreachable!() };
                    f.get_or_create(&lossy_label_set(names, values)).set(*v);
                }
                registry.register(fam.name, fam.help, f);
            }
            _ => {
                let bounds = fam.bounds;
                let f = Family::<LabelSet, Histogram, _>::new_with_constructor(move || {
                    Histogram::new(bounds.iter().copied())
                });
                for (values, data) in &fam.series {
                    let Data::Histogram(obs) = data else { unreachable!() };
                    record_histogram(&f.get_or_create(&lossy_label_set(names, values)), obs);
                }
                registry.register(fam.name, fam.help, f);
            }
        }
    }
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).unwrap();
    text
}

/// Renders `model` with our primitives, the way the renderer will: one
/// label block per series, reused for every line of that series.
fn render_ours(model: &[FamilySpec]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut labels = Vec::new();
    let mut le = Vec::new();
    for fam in model {
        let name = fam.exposed_name();
        let help = format!("{}.", fam.help);
        write_family_header(&mut out, Format::Text004, &name, help.as_bytes(), fam.type_name());
        for (values, data) in &fam.series {
            labels.clear();
            write_label_pairs(&mut labels, fam.label_names, values);
            match data {
                Data::IntCounter(incs) => {
                    let total: u64 = incs.iter().sum();
                    write_sample(&mut out, &name, "", &labels, None, total as f64);
                }
                Data::FloatCounter(incs) => {
                    let total = incs.iter().fold(0.0, |acc, v| acc + v);
                    write_sample(&mut out, &name, "", &labels, None, total);
                }
                Data::Gauge(v) => write_sample(&mut out, &name, "", &labels, None, *v),
                Data::Histogram(obs) => {
                    for &bound in fam.bounds.iter().chain([&f64::INFINITY]) {
                        let n = if bound == f64::INFINITY {
                            obs.len()
                        } else {
                            obs.iter().filter(|&&v| v <= bound).count()
                        };
                        le.clear();
                        write_le(&mut le, bound);
                        let extra = Some(("le", le.as_slice()));
                        write_sample(&mut out, &name, "_bucket", &labels, extra, n as f64);
                    }
                    let sum = obs.iter().fold(0.0, |acc, v| acc + v);
                    write_sample(&mut out, &name, "_sum", &labels, None, sum);
                    write_sample(&mut out, &name, "_count", &labels, None, obs.len() as f64);
                }
            }
        }
    }
    write_body_end(&mut out, Format::Text004);
    out
}

/// One parsed sample line: name, `(label name, escaped value)` in written
/// order, value bits with `NaN` and `-0.0` canonicalised.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: u64,
    value_text: String,
}

impl Sample {
    /// The series identity: labels without `le`.
    fn series_key(&self) -> Vec<(String, String)> {
        self.labels.iter().filter(|(n, _)| n != "le").cloned().collect()
    }
}

/// A parsed family: its HELP and TYPE lines verbatim, then its samples.
#[derive(Debug)]
struct ParsedFamily {
    help_line: String,
    type_line: String,
    samples: Vec<Sample>,
}

fn parse_value(s: &str) -> u64 {
    let v: f64 = match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s.parse().unwrap_or_else(|e| panic!("bad value {s:?}: {e}")),
    };
    if v.is_nan() {
        f64::NAN.to_bits()
    } else if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

/// Parses a 0.0.4 sample line (a strict subset of the grammar: no
/// timestamps, no whitespace inside braces).
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).expect("sample without value");
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        rest = body;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"").expect("label without value");
            let label = rest[..eq].to_owned();
            let bytes = rest.as_bytes();
            let mut i = eq + 2;
            let start = i;
            while bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            labels.push((label, rest[start..i].to_owned()));
            rest = &rest[i + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value_text = rest.strip_prefix(' ').expect("no space before value");
    Sample { name, labels, value: parse_value(value_text), value_text: value_text.to_owned() }
}

fn parse_body(text: &str) -> Vec<ParsedFamily> {
    assert!(text.is_empty() || text.ends_with('\n'));
    let mut families: Vec<ParsedFamily> = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("# HELP ") {
            let type_line = lines.next().expect("HELP without TYPE");
            assert!(type_line.starts_with("# TYPE "), "{type_line}");
            families.push(ParsedFamily {
                help_line: line.to_owned(),
                type_line: type_line.to_owned(),
                samples: Vec::new(),
            });
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let family = families.last_mut().expect("sample before any family");
            family.samples.push(parse_sample(line));
        }
    }
    families
}

#[test]
fn expo_matches_prometheus_client_text_encoder() {
    let model = model();
    let reference = render_reference(&model);
    let ours = String::from_utf8(render_ours(&model)).expect("our output is UTF-8");

    let reference_families = parse_body(&reference);
    let our_families = parse_body(&ours);
    assert_eq!(reference_families.len(), model.len(), "{reference}");
    assert_eq!(our_families.len(), model.len(), "{ours}");

    let mut textual_differences = 0;
    for (theirs, mine) in reference_families.iter().zip(&our_families) {
        assert_eq!(theirs.help_line, mine.help_line);
        assert_eq!(theirs.type_line, mine.type_line);
        let sorted = |f: &ParsedFamily| {
            let mut s = f.samples.clone();
            s.sort_by_key(Sample::series_key);
            s
        };
        let (theirs, mine) = (sorted(theirs), sorted(mine));
        assert_eq!(theirs.len(), mine.len(), "{}", mine[0].name);
        for (t, m) in theirs.iter().zip(&mine) {
            assert_eq!(
                (&t.name, &t.labels, t.value),
                (&m.name, &m.labels, m.value),
                "\nprometheus-client: {t:?}\nours:              {m:?}"
            );
            if t.value_text != m.value_text {
                textual_differences += 1;
                eprintln!(
                    "value text differs: {} prometheus-client {:?}, ours {:?}",
                    m.name, t.value_text, m.value_text
                );
            }
        }
    }
    // Sanity: the normalisation is doing work (dtoa's `1.0` style etc.).
    assert!(textual_differences > 0);
}

#[test]
fn expo_le_matches_prometheus_client_go_float() {
    // Bounds in the shapes people use, plus random ones across magnitudes.
    let mut bounds: Vec<f64> = exponential_buckets(1e-9, 10.0, 30)
        .chain(exponential_buckets(1.0, 2.0, 60))
        .chain(exponential_buckets(0.001, 1.5, 80))
        .chain(linear_buckets(0.005, 0.005, 200))
        .chain(linear_buckets(-100.0, 0.1, 2000))
        .chain([
            0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0,
            1e6, 999_999.0, 1e-4, 9.99e-5, 5e-324, 1e300,
        ])
        .collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..5_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
        let sign = if i % 5 == 0 { -1.0 } else { 1.0 };
        bounds.push(sign * unit * 10f64.powi(i % 30 - 12));
    }
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    bounds.retain(|b| *b != 0.0);

    let mut registry = Registry::default();
    let h = Histogram::new(bounds.iter().copied());
    registry.register("h", "h", h);
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).unwrap();

    let reference_les: Vec<String> =
        text.lines().filter(|l| l.starts_with("h_bucket")).map(|l| parse_sample(l).labels[0].1.clone()).collect();
    assert_eq!(reference_les.len(), bounds.len() + 1);
    assert_eq!(reference_les.last().unwrap(), "+Inf");

    // `prometheus-client` takes its digits from Rust's `Display`, which
    // breaks exact ties between two equally short digit strings upwards; Go
    // (like `ryu`, which we use) picks the even digit. Those bounds may
    // differ in the last digit only, and both texts must parse to the bound.
    let mut le = Vec::new();
    let mut ties = 0;
    for (bound, expected) in bounds.iter().zip(&reference_les) {
        le.clear();
        write_le(&mut le, *bound);
        let ours = std::str::from_utf8(&le).unwrap();
        if ours != expected {
            ties += 1;
            eprintln!("le tie: bound {bound:?} prometheus-client {expected:?} ours {ours:?}");
            assert_eq!(ours.len(), expected.len(), "bound {bound:?}");
            let (o, e) = (ours.as_bytes(), expected.as_bytes());
            let at = o.iter().zip(e).take_while(|(a, b)| a == b).count();
            assert_eq!(o[at + 1..], e[at + 1..], "more than one digit differs: {ours} vs {expected}");
            assert_eq!(o[at] % 2, 0, "ours is not the even digit: {ours}");
            let ours_back: f64 = ours.parse().unwrap();
            let expected_back: f64 = expected.parse().unwrap();
            assert_eq!(ours_back.to_bits(), bound.to_bits(), "{ours}");
            assert_eq!(expected_back.to_bits(), bound.to_bits(), "{expected}");
        }
    }
    assert!(ties * 100 < bounds.len(), "{ties} ties out of {}", bounds.len());
}

fn find_promtool() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("promtool")).find(|p| p.is_file())
}

/// Pipes `body` into `promtool check metrics`; returns (exit code, output).
fn promtool_check(promtool: &std::path::Path, body: Vec<u8>) -> (i32, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let output = child.wait_with_output().expect("wait for promtool");
    writer.join().unwrap().expect("write body to promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// A body full of hostile label values and help texts.
fn nasty_body() -> Vec<u8> {
    let big: &'static [u8] = Box::leak(vec![b'x'; 64 * 1024].into_boxed_slice());
    let values: Vec<&[u8]> = vec![
        b"quote\"in\"side",
        b"back\\slash\\",
        b"new\nline\n",
        b"nul\0byte",
        b"tab\tcr\rbell\x07del\x7fesc\x1b",
        b"\xff",
        b"\xff\xfe",
        b"a\xffb",
        b"a\xffc",
        b"trunc\xe2\x82",
        b"overlong\xc0\xaf",
        b"surrogate\xed\xa0\x80",
        b"\"\\\n\0\xff",
        "héllo ✓ 𝄞".as_bytes(),
        big,
        b"",
    ];
    let mut out = Vec::new();
    let mut labels = Vec::new();
    let mut le = Vec::new();

    write_family_header(
        &mut out,
        Format::Text004,
        "nasty_requests_total",
        b"Help with \\ backslash, \"quotes\",\nnewline, nul \0 and bad \xff\xc0 bytes.",
        "counter",
    );
    for (i, v) in values.iter().enumerate() {
        labels.clear();
        write_label_pairs(&mut labels, &["value", "i"], &[v, i.to_string().as_bytes()]);
        write_sample(&mut out, "nasty_requests_total", "", &labels, None, i as f64);
    }

    write_family_header(&mut out, Format::Text004, "nasty_values", b"Special values.", "gauge");
    let specials = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -0.0,
        5e-324,
        1e21,
        9_007_199_254_740_992.0,
        f64::MAX,
        -1.5e-7,
        1.0 / 3.0,
    ];
    for (i, v) in specials.iter().enumerate() {
        labels.clear();
        write_label_pairs(&mut labels, &["i"], &[i.to_string().as_bytes()]);
        write_sample(&mut out, "nasty_values", "", &labels, None, *v);
    }
    write_family_header(&mut out, Format::Text004, "nasty_unlabelled", b"No labels.", "gauge");
    write_sample(&mut out, "nasty_unlabelled", "", b"", None, 1.0);

    write_family_header(
        &mut out,
        Format::Text004,
        "nasty_duration_seconds",
        b"Histogram with nginx-lua-prometheus default buckets.",
        "histogram",
    );
    let bounds = [
        0.005,
        0.01,
        0.02,
        0.03,
        0.05,
        0.075,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.75,
        1.0,
        1.5,
        2.0,
        3.0,
        4.0,
        5.0,
        10.0,
        f64::INFINITY,
    ];
    for v in &values[..4] {
        labels.clear();
        write_label_pairs(&mut labels, &["value"], &[v]);
        for (n, bound) in bounds.iter().enumerate() {
            le.clear();
            write_le(&mut le, *bound);
            let extra = Some(("le", le.as_slice()));
            write_sample(&mut out, "nasty_duration_seconds", "_bucket", &labels, extra, n as f64);
        }
        write_sample(&mut out, "nasty_duration_seconds", "_sum", &labels, None, 12.5);
        write_sample(&mut out, "nasty_duration_seconds", "_count", &labels, None, 19.0);
    }
    write_body_end(&mut out, Format::Text004);
    out
}

#[test]
fn expo_promtool_accepts_nasty_output() {
    let Some(promtool) = find_promtool() else {
        eprintln!("promtool not on PATH; skipping expo_promtool_accepts_nasty_output");
        return;
    };

    // Sanity: promtool really parses stdin (a raw invalid UTF-8 label value
    // is a parse error).
    let (code, text) =
        promtool_check(&promtool, b"# HELP x_total h\n# TYPE x_total counter\nx_total{a=\"\xff\"} 1\n".to_vec());
    assert_ne!(code, 0, "promtool accepted invalid UTF-8: {text}");

    let body = nasty_body();
    assert!(std::str::from_utf8(&body).is_ok());
    let (code, text) = promtool_check(&promtool, body);
    assert_eq!(code, 0, "promtool check metrics failed:\n{text}");

    // An empty help text still parses; promtool's linter only reports it
    // (exit code 3 in 2.42, "no help text").
    let mut body = Vec::new();
    write_family_header(&mut body, Format::Text004, "quiet_total", b"", "counter");
    write_sample(&mut body, "quiet_total", "", b"", None, 1.0);
    let (code, text) = promtool_check(&promtool, body);
    assert!(code == 0 || code == 3, "exit {code}: {text}");
    assert!(!text.contains("parsing error"), "{text}");
    assert!(code == 0 || text.contains("no help text"), "{text}");
}
