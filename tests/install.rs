//! Installing shmetrics like any Lua library: the Debian package, `make install` and the
//! LuaRocks rockspec, each checked by running what it installed.
//!
//! - `debian_package`: `make deb`, lintian (no error or warning beyond the override
//!   debian/ explains), `dpkg -i`, an nginx whose config names no package path finds
//!   both parts in the system directories and counts exactly, `dpkg --purge` leaves
//!   none of the package's files. It installs into the system, so it refuses to run
//!   (fails, saying why) when lua-resty-shmetrics is already installed or `make install`
//!   left a copy in /usr/local: it never replaces or removes the user's copy. It purges
//!   what it installed even when it fails. Other test binaries put the checkout first
//!   in lua_package_path/cpath, so the installed copy never stands in for the one under
//!   test there. Without root it fails; SHMETRICS_SKIP_SYSTEM_INSTALL=1 skips it.
//! - `make_install`: into a DESTDIR, the default and the OpenResty directories; nginx
//!   against it; `make uninstall` leaves no file.
//! - `luarocks_make`: the rockspec into a temporary tree; LuaJIT requires both parts
//!   from that tree and records a count.
//! - `one_version`: Cargo.toml, debian/changelog and the rockspec agree, and the rockspec
//!   installs every Lua module in lua/.
//!
//! They reuse target/release (make test has just built it): `make deb` and the
//! rockspec's `cargo build --release` find it up to date.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use testkit::harness::nginx::{repo_dir, LIB_NAME};
use testkit::harness::*;

const PACKAGE: &str = "lua-resty-shmetrics";
const REQUESTS: u64 = 300;
/// Debian's LuaJIT (luajit2) and so nginx's Lua module look here by default.
const DEB_LUA_DIR: &str = "/usr/share/lua/5.1";
const DEB_CLIB_DIR: &str = "/usr/lib/x86_64-linux-gnu/lua/5.1";
const LOCAL_LUA_DIR: &str = "/usr/local/share/lua/5.1";
const LOCAL_CLIB_DIR: &str = "/usr/local/lib/lua/5.1";

/// Runs `cmd`, fails the test with its output unless it exits 0; returns stdout.
fn run(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn make(args: &[&str]) -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(repo_dir()).args(["--no-print-directory"]).args(args);
    cmd
}

/// A fresh directory nginx's workers (nobody) can enter; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("shmetrics-install-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Every file (not directory) under `root`, relative to it, sorted.
fn files_under(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// The Lua modules of the checkout, as paths under a Lua directory (`resty/...`).
fn lua_modules() -> BTreeSet<String> {
    files_under(&repo_dir().join("lua"))
}

/// Starts nginx-test-conf/installed.conf with `package_paths` in place of its
/// package-path lines, sends REQUESTS requests, checks the exact counts and that the
/// workers loaded `lua_file` and mapped `lib_file`.
fn check_nginx(package_paths: &str, lua_file: &str, lib_file: &str) {
    let text = fs::read_to_string(repo_dir().join("nginx-test-conf/installed.conf")).unwrap();
    let nginx = Nginx::start_text("installed", &text, &[("PACKAGE_PATHS", package_paths)]);
    let conf = fs::read_to_string(&nginx.conf).unwrap();
    if package_paths.is_empty() {
        let named: Vec<&str> =
            conf.lines().filter(|l| !l.trim_start().starts_with('#') && l.contains("lua_package")).collect();
        assert!(named.is_empty(), "the package's nginx config must name no package path: {named:?}");
    }

    let where_ = get(nginx.port, "/where").expect("GET /where");
    assert_eq!(where_.status, 200, "{}", where_.text());
    let gateway_file = lua_file.replace("shmetrics.lua", "shmetrics/gateway.lua");
    assert_eq!(
        where_.text(),
        format!("{lua_file}\n{gateway_file}\n{lib_file}\n"),
        "what nginx's package.path/cpath find"
    );
    for pid in nginx.worker_pids() {
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(maps.contains(lib_file), "worker {pid} has not mapped {lib_file}:\n{maps}");
    }

    let r = load(nginx.port, |i| if i % 3 == 0 { "/a".into() } else { "/b".into() }, REQUESTS, 4);
    assert_eq!((r.ok, r.failed, r.unknown), (REQUESTS, 0, 0), "{:?}", r.samples);
    let (a, b) = (REQUESTS.div_ceil(3), REQUESTS - REQUESTS.div_ceil(3));
    let (_, exp) = scrape_until(nginx.metrics_port, Duration::from_secs(10), |e| {
        e.value("installed_requests_total", &[("path", "/a")]) >= Some(a as f64)
            && e.value("installed_requests_total", &[("path", "/b")]) >= Some(b as f64)
            && e.value("installed_request_duration_seconds_count", &[("path", "/b")]) >= Some(b as f64)
    });
    assert_eq!(exp.expect("installed_requests_total", &[("path", "/a")]), a as f64);
    assert_eq!(exp.expect("installed_requests_total", &[("path", "/b")]), b as f64);
    assert_eq!(exp.expect("installed_request_duration_seconds_count", &[("path", "/a")]), a as f64);
    assert_eq!(exp.expect("installed_request_duration_seconds_count", &[("path", "/b")]), b as f64);
    nginx.assert_no_errors(&[]);
}

// ---- the Debian package ----

/// `dpkg-query`'s status of PACKAGE ("" when dpkg knows nothing of it).
fn package_status() -> String {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}", PACKAGE]).output().expect("dpkg-query");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a dpkg command, waiting while another dpkg/apt holds the lock (other helpers'
/// `make deps` on a shared machine): up to 5 minutes.
fn dpkg(args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = Command::new("dpkg").args(args).env("DEBIAN_FRONTEND", "noninteractive").output().expect("run dpkg");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if stderr.contains("lock") && Instant::now() < deadline {
            eprintln!("dpkg {args:?}: locked, retrying: {}", stderr.trim());
            thread::sleep(Duration::from_secs(3));
            continue;
        }
        panic!("dpkg {args:?}: {}\n{}{stderr}", out.status, String::from_utf8_lossy(&out.stdout));
    }
}

/// Purges PACKAGE when dropped: the machine is left as found even when the test fails.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if !package_status().is_empty() {
            let out = Command::new("dpkg").args(["--purge", PACKAGE]).output();
            match out {
                Ok(o) if o.status.success() => {}
                other => eprintln!("dpkg --purge {PACKAGE} failed, remove it by hand: {other:?}"),
            }
        }
    }
}

#[test]
fn debian_package() {
    if std::env::var_os("SHMETRICS_SKIP_SYSTEM_INSTALL").is_some_and(|v| v == "1") {
        eprintln!(
            "debian_package: SKIPPED (SHMETRICS_SKIP_SYSTEM_INSTALL=1): the package was not installed or checked"
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "debian_package installs a package with dpkg: run as root, or set SHMETRICS_SKIP_SYSTEM_INSTALL=1"
    );
    let before = package_status();
    assert!(
        before.is_empty() || before.starts_with("unknown ok not-installed"),
        "{PACKAGE} is on this machine ({before}): this test installs and purges {PACKAGE} and will not \
         replace yours. Remove it (dpkg --purge {PACKAGE}) or set SHMETRICS_SKIP_SYSTEM_INSTALL=1."
    );
    for dir in [LOCAL_LUA_DIR, LOCAL_CLIB_DIR] {
        for f in ["resty/shmetrics.lua", "libshmetrics.so"] {
            let p = Path::new(dir).join(f);
            assert!(
                !p.exists(),
                "{} exists (a `make install` copy?): it would shadow the package's copy on nginx's default paths; \
                 remove it (make uninstall) or set SHMETRICS_SKIP_SYSTEM_INSTALL=1",
                p.display()
            );
        }
    }

    let out = TempDir::new("deb");
    let t = Instant::now();
    run(&mut make(&["deb", &format!("DEB_OUT={}", out.0.display())]));
    report!("make deb: {:?}", t.elapsed());
    let version = run(Command::new("dpkg-parsechangelog").current_dir(repo_dir()).args(["-S", "Version"]));
    let deb = out.0.join(format!("{PACKAGE}_{}_amd64.deb", version.trim()));
    assert!(deb.is_file(), "make deb made no {}: {:?}", deb.display(), files_under(&out.0));

    // Lintian: no error, no warning (the overridden one is explained in debian/).
    let t = Instant::now();
    let lint = Command::new("lintian")
        .args(["--fail-on", "error,warning", "-I", "--pedantic"])
        .arg(&deb)
        .output()
        .expect("run lintian");
    let lint_out = String::from_utf8_lossy(&lint.stdout);
    report!("lintian: {:?}\n{lint_out}", t.elapsed());
    assert!(
        lint.status.success(),
        "lintian {}: {}\n{lint_out}{}",
        deb.display(),
        lint.status,
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(!lint_out.lines().any(|l| l.starts_with("E:") || l.starts_with("W:")), "{lint_out}");

    // What it declares and holds.
    let control = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
    for dep in ["libnginx-mod-http-lua", "lua-resty-core", "libc6 (>= "] {
        assert!(control.contains(dep), "Depends lacks {dep}: {control}");
    }
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let mut want: BTreeSet<String> = lua_modules().iter().map(|m| format!("{DEB_LUA_DIR}/{m}")).collect();
    want.insert(format!("{DEB_CLIB_DIR}/{LIB_NAME}"));
    for f in ["README.md.gz", "copyright", "changelog.Debian.gz", "layout.md.gz", "examples/prometheus/prometheus.yml"]
    {
        want.insert(format!("/usr/share/doc/{PACKAGE}/{f}"));
    }
    for w in &want {
        assert!(listing.lines().any(|l| l.ends_with(&format!(".{w}"))), "the package lacks {w}:\n{listing}");
    }

    // Install, run, purge. Purge is armed before dpkg -i: a half-installed package goes too.
    let existed_before: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_once(" ./").map(|(_, p)| format!("/{}", p.trim_end_matches('/'))))
        .filter(|p| Path::new(p).exists())
        .collect();
    let _purge = Purge;
    let t = Instant::now();
    dpkg(&["-i", deb.to_str().unwrap()]);
    report!("dpkg -i: {:?}", t.elapsed());
    assert!(package_status().starts_with("install ok installed"), "{}", package_status());
    let installed: Vec<String> = dpkg(&["-L", PACKAGE]).lines().map(str::to_string).filter(|p| p != "/.").collect();
    for w in &want {
        assert!(installed.contains(w) && Path::new(w).is_file(), "{w} not installed: {installed:?}");
    }

    // LuaJIT's own defaults find both parts too (no nginx).
    let found = run(Command::new("luajit").args(["-e", "print(package.searchpath('resty.shmetrics', package.path)) print(package.searchpath('libshmetrics', package.cpath))"]));
    assert_eq!(
        found,
        format!("{DEB_LUA_DIR}/resty/shmetrics.lua\n{DEB_CLIB_DIR}/{LIB_NAME}\n"),
        "luajit's default paths"
    );
    check_nginx("", &format!("{DEB_LUA_DIR}/resty/shmetrics.lua"), &format!("{DEB_CLIB_DIR}/{LIB_NAME}"));

    let t = Instant::now();
    dpkg(&["--purge", PACKAGE]);
    report!("dpkg --purge: {:?}", t.elapsed());
    assert_eq!(package_status(), "", "dpkg still knows {PACKAGE} after --purge");
    let left: Vec<&String> =
        installed.iter().filter(|p| !existed_before.contains(*p) && Path::new(p).exists()).collect();
    assert!(left.is_empty(), "left after dpkg --purge: {left:?}");
}

// ---- make install ----

#[test]
fn make_install() {
    // The default directories are on LuaJIT's default paths (and so nginx's).
    let defaults = run(Command::new("luajit").args(["-e", "print(package.path) print(package.cpath)"]));
    assert!(defaults.contains(&format!("{LOCAL_LUA_DIR}/?.lua")), "{defaults}");
    assert!(defaults.contains(&format!("{LOCAL_CLIB_DIR}/?.so")), "{defaults}");

    let dest = TempDir::new("destdir");
    let destdir = format!("DESTDIR={}", dest.0.display());
    run(&mut make(&["install", &destdir]));
    let mut want: BTreeSet<String> = lua_modules().iter().map(|m| format!("{}/{m}", &LOCAL_LUA_DIR[1..])).collect();
    want.insert(format!("{}/{LIB_NAME}", &LOCAL_CLIB_DIR[1..]));
    assert_eq!(files_under(&dest.0), want, "make install {destdir}");
    let root = dest.0.display();
    check_nginx(
        &format!("    lua_package_path \"{root}{LOCAL_LUA_DIR}/?.lua;;\";\n    lua_package_cpath \"{root}{LOCAL_CLIB_DIR}/?.so;;\";\n"),
        &format!("{root}{LOCAL_LUA_DIR}/resty/shmetrics.lua"),
        &format!("{root}{LOCAL_CLIB_DIR}/{LIB_NAME}"),
    );
    run(&mut make(&["uninstall", &destdir]));
    assert_eq!(files_under(&dest.0), BTreeSet::new(), "left after make uninstall {destdir}");
    assert!(!dest.0.join(&LOCAL_LUA_DIR[1..]).join("resty").exists(), "make uninstall left an empty resty/");

    // OpenResty's site directory, as the README shows.
    let site = "/usr/local/openresty/site/lualib";
    let vars = [destdir.as_str(), &format!("LUA_LIB_DIR={site}"), &format!("LUA_CLIB_DIR={site}")];
    run(&mut make(&[&["install"][..], &vars[..]].concat()));
    let mut want: BTreeSet<String> = lua_modules().iter().map(|m| format!("{}/{m}", &site[1..])).collect();
    want.insert(format!("{}/{LIB_NAME}", &site[1..]));
    assert_eq!(files_under(&dest.0), want, "make install into OpenResty's site/lualib");
    run(&mut make(&[&["uninstall"][..], &vars[..]].concat()));
    assert_eq!(files_under(&dest.0), BTreeSet::new(), "left after make uninstall (OpenResty)");
}

// ---- LuaRocks ----

fn rockspec() -> PathBuf {
    let mut specs: Vec<PathBuf> = fs::read_dir(repo_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rockspec"))
        .collect();
    assert_eq!(specs.len(), 1, "want exactly one rockspec at the top: {specs:?}");
    specs.pop().unwrap()
}

#[test]
fn luarocks_make() {
    let spec = rockspec();
    run(Command::new("luarocks").arg("lint").arg(&spec));
    let tree = TempDir::new("rocks");
    let t = Instant::now();
    let out = run(Command::new("luarocks").current_dir(repo_dir()).arg("make").arg("--tree").arg(&tree.0).arg(&spec));
    report!("luarocks make: {:?}\n{out}", t.elapsed());

    // Both parts from the tree, found through `luarocks path` alone.
    let paths = run(Command::new("luarocks").args(["path", "--tree"]).arg(&tree.0));
    let var = |name: &str| {
        let line = paths
            .lines()
            .find(|l| l.starts_with(&format!("export {name}='")))
            .unwrap_or_else(|| panic!("no {name} in:\n{paths}"));
        line[name.len() + 9..line.len() - 1].to_string()
    };
    let region = format!("/dev/shm/shmetrics-test-rocks-{}", std::process::id());
    let prog = format!(
        r#"local m = require("resty.shmetrics")
print(package.searchpath("resty.shmetrics", package.path))
print(package.searchpath("libshmetrics", package.cpath))
local p = m.init("rocks", {{ path = "{region}" }})
p:counter("rocks_total", "From the rocks tree", {{"part"}}):inc(7, {{"both"}})
io.write(p:metric_data("text"))"#
    );
    let out = Command::new("luajit")
        .args(["-e", &prog])
        .env("LUA_PATH", var("LUA_PATH"))
        .env("LUA_CPATH", var("LUA_CPATH"))
        .output()
        .expect("luajit");
    testkit::harness::nginx::remove_shm(Path::new(&region));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "luajit from the rocks tree: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tree_dir = tree.0.display();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(format!("{tree_dir}/share/lua/5.1/resty/shmetrics.lua").as_str()));
    assert_eq!(lines.next(), Some(format!("{tree_dir}/lib/lua/5.1/{LIB_NAME}").as_str()));
    assert!(stdout.lines().any(|l| l == r#"rocks_total{part="both"} 7"#), "{stdout}");
}

// ---- one version everywhere ----

#[test]
fn one_version() {
    let cargo = fs::read_to_string(repo_dir().join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("Cargo.toml version");
    let changelog = fs::read_to_string(repo_dir().join("debian/changelog")).unwrap();
    let first = changelog.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("{PACKAGE} ({version}-")),
        "debian/changelog's latest entry is not {version}: {first}"
    );
    let spec = rockspec();
    assert!(
        spec.file_name().unwrap().to_str().unwrap().starts_with(&format!("{PACKAGE}-{version}-")),
        "the rockspec's name is not of version {version}: {}",
        spec.display()
    );
    let text = fs::read_to_string(&spec).unwrap();
    assert!(text.contains(&format!("version = \"{version}-")), "{} is not version {version}", spec.display());
    for m in lua_modules() {
        assert!(text.contains(&format!("\"lua/{m}\"")), "{} does not install lua/{m}", spec.display());
    }
}
