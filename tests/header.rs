//! The committed C header must be exactly what cbindgen makes of `src/ffi/`,
//! and the ABI version must agree across the header, the library and Lua.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate() -> String {
    let config = cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_src(root().join("src/ffi/mod.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn header_matches_code() {
    let path = root().join("include/shmetrics.h");
    let fresh = generate();
    if std::env::var_os("SHMETRICS_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/shmetrics.h is out of date with src/ffi/; \
         run `SHMETRICS_BLESS=1 cargo test --test header` and commit it"
    );
}

fn header_define(name: &str) -> i64 {
    let h = std::fs::read_to_string(root().join("include/shmetrics.h")).unwrap();
    let line = h
        .lines()
        .find(|l| l.starts_with(&format!("#define {name} ")))
        .unwrap_or_else(|| panic!("{name} not in the header"));
    line.split_whitespace().nth(2).unwrap().trim_matches(|c| c == '(' || c == ')').parse().unwrap()
}

fn lua_source() -> String {
    std::fs::read_to_string(root().join("lua/resty/shmetrics/binding.lua")).unwrap()
}

fn lua_local(name: &str) -> i64 {
    let src = lua_source();
    let line = src
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("local {name} = ")))
        .unwrap_or_else(|| panic!("local {name} not in the Lua module"));
    let value = line.split('=').nth(1).unwrap();
    value.split("--").next().unwrap().trim().parse().unwrap()
}

#[test]
fn abi_version_agrees_everywhere() {
    let lib = shmetrics::ffi::shmetrics_abi_version() as i64;
    assert_eq!(header_define("SHMETRICS_ABI_VERSION"), lib);
    let src = lua_source();
    let lua_line = src.lines().find(|l| l.trim_start().starts_with("ABI_VERSION = ")).expect("ABI_VERSION in Lua");
    let lua: i64 = lua_line.split('=').nth(1).unwrap().trim().trim_end_matches(',').parse().unwrap();
    assert_eq!(lua, lib, "the Lua module's ABI_VERSION differs from the library's");
}

#[test]
fn lua_constants_agree_with_header() {
    for (lua, c) in [
        ("E_LABEL_COUNT", "SHMETRICS_E_LABEL_COUNT"),
        ("E_LABEL_TOO_LONG", "SHMETRICS_E_LABEL_TOO_LONG"),
        ("E_FULL", "SHMETRICS_E_FULL"),
        ("E_NO_SLOT", "SHMETRICS_E_NO_SLOT"),
        ("E_INTERNAL", "SHMETRICS_E_INTERNAL"),
        ("OPEN_RECREATED", "SHMETRICS_OPEN_RECREATED"),
        ("FORMAT_TEXT", "SHMETRICS_FORMAT_TEXT"),
        ("FLAG_RESET", "SHMETRICS_FLAG_RESET"),
        ("FORMAT_OPENMETRICS", "SHMETRICS_FORMAT_OPENMETRICS"),
        ("FORMAT_JSON", "SHMETRICS_FORMAT_JSON"),
        ("MAX_FILTER_NAMES", "SHMETRICS_MAX_FILTER_NAMES"),
        ("SERIES_OVERFLOW", "SHMETRICS_SERIES_OVERFLOW"),
        ("RENDER_PENDING", "SHMETRICS_RENDER_PENDING"),
    ] {
        assert_eq!(lua_local(lua), header_define(c), "{lua} vs {c}");
    }
    use shmetrics::layout::*;
    assert_eq!(lua_local("KIND_COUNTER"), KIND_COUNTER as i64);
    assert_eq!(lua_local("KIND_GAUGE"), KIND_GAUGE as i64);
    assert_eq!(lua_local("KIND_HISTOGRAM"), KIND_HISTOGRAM as i64);
    assert_eq!(lua_local("CELL_GAUGE_SEQ"), CELL_GAUGE_SEQ as i64);
    assert_eq!(lua_local("CELL_ERRORS"), CELL_ERRORS as i64);
    assert_eq!(lua_local("STAMP_SLOTS"), STAMP_SLOTS as i64);
    // The Lua reasons table lists every reason at its index.
    let src = lua_source();
    for (i, reason) in REASONS.iter().enumerate() {
        assert!(src.contains(&format!("{reason} = {i},")), "reason {reason} is not {i} in the Lua module");
    }
}

/// Declarations with comments, preprocessor lines and spacing removed.
fn declarations(c: &str) -> Vec<String> {
    let mut text = String::new();
    let mut rest = c;
    while let Some(i) = rest.find("/*") {
        text.push_str(&rest[..i]);
        rest = rest[i..].find("*/").map_or("", |j| &rest[i + j + 2..]);
    }
    text.push_str(rest);
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.contains("extern \"C\"") && l.trim() != "}")
        .collect::<Vec<_>>()
        .join(" ");
    text.split(';')
        .map(|d| d.replace("struct ", "").split_whitespace().collect::<Vec<_>>().join(" "))
        .map(|d| d.replace("( ", "(").replace(" )", ")").replace(" ,", ","))
        .filter(|d| d.contains('(') && d.starts_with(|c: char| c.is_ascii_alphabetic()))
        .collect()
}

#[test]
fn lua_cdef_declares_the_header_functions() {
    let header = std::fs::read_to_string(root().join("include/shmetrics.h")).unwrap();
    let src = lua_source();
    let start = src.find("ffi.cdef [[").expect("ffi.cdef block") + "ffi.cdef [[".len();
    let cdef = &src[start..start + src[start..].find("]]").unwrap()];
    let lua = declarations(cdef);
    let want = declarations(&header);
    assert!(want.len() >= 15, "parsed only {} header declarations", want.len());
    for d in &want {
        assert!(
            lua.contains(d),
            "the Lua cdef lacks or differs from the header's\n  {d}\nLua has:\n  {}",
            lua.join("\n  ")
        );
    }
    assert_eq!(lua.len(), want.len(), "the Lua cdef declares functions the header does not");
}
