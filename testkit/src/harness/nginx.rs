//! Starting and stopping a real nginx (Debian's, with ngx_lua) from a config template.
//!
//! The Test::Nginx shape: a template from `nginx-test-conf/` is rendered into a fresh
//! prefix under /tmp, checked with `nginx -t`, started in the foreground (master as the
//! test's user, workers as `nobody` when that is root), and stopped on drop — a failing
//! test never leaves nginx running.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

pub const NGINX: &str = "/usr/sbin/nginx";
/// Generous: two CPUs shared by parallel tests, load generators and promtool.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The repository root: the parent of testkit's own directory (`testkit/`). The one
/// place the harness derives it; every other path (`nginx-test-conf/`, `lua/`,
/// `target/`, `examples/`) is joined onto it.
pub fn repo_dir() -> PathBuf {
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
    testkit.parent().expect("testkit/ sits in the repository root").to_path_buf()
}

/// The repository's `lua/` directory.
fn lua_dir() -> PathBuf {
    repo_dir().join("lua")
}

pub const LIB_NAME: &str = "libshmetrics.so";

/// The directory holding the `libshmetrics.so` under test:
/// 1. `$SHMETRICS_LIB_DIR` if set;
/// 2. the profile directory of this test binary (`target/<profile>`), which cargo has
///    just rebuilt for this very run — so `cargo test` never tests a stale release build;
/// 3. whichever of `target/release` and `target/debug` has the newer library.
fn lib_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHMETRICS_LIB_DIR") {
        return PathBuf::from(dir);
    }
    let has_lib = |d: &Path| d.join(LIB_NAME).is_file();
    if let Some(profile) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.to_path_buf())) {
        if has_lib(&profile) {
            return profile;
        }
    }
    let target = repo_dir().join("target");
    let mtime = |d: &Path| fs::metadata(d.join(LIB_NAME)).and_then(|m| m.modified()).ok();
    let (release, debug) = (target.join("release"), target.join("debug"));
    match (mtime(&release), mtime(&debug)) {
        (Some(r), Some(d)) if d > r => debug,
        (Some(_), _) => release,
        (None, Some(_)) => debug,
        (None, None) => panic!(
            "{LIB_NAME} not found in {} or {} (run `cargo build --release`, or set SHMETRICS_LIB_DIR)",
            release.display(),
            debug.display()
        ),
    }
}

/// A loopback port that is free now, taken below the kernel's ephemeral range when
/// possible: a port from bind(0) can be handed out again as the source port of some
/// other test's outgoing connection before nginx binds it.
pub fn free_port() -> u16 {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 12000 {
        let (low, span) = (10000u32, ephemeral_low - 10000);
        let seed = std::process::id().wrapping_mul(7919);
        for _ in 0..200 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let port = low + (seed.wrapping_add(n.wrapping_mul(104_729))) % span;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// One line of /proc/<pid>/stat: (ppid, state).
fn proc_stat(pid: i32) -> Option<(i32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..." — comm may contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Running (not zombie) children of `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&pid| matches!(proc_stat(pid), Some((ppid, state)) if ppid == parent && state != 'Z' && state != 'X'))
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((_, state)) if state != 'Z' && state != 'X')
}

pub fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Polls `cond` every few ms until it holds; panics with `what()` after `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool, what: impl FnOnce() -> String) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?}: {}", what());
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Makes the server `cmd` starts get SIGTERM if the test process dies (killed by
/// a CI timeout, say). PDEATHSIG follows the spawning thread: start and stop a
/// server on one thread, as every #[test] does.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as i32;
    // SAFETY: prctl and getppid are async-signal-safe, as a pre_exec hook must be.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// A running nginx. Stopped (SIGQUIT, then SIGKILL) when dropped.
pub struct Nginx {
    pub prefix: PathBuf,
    /// `{{PORT}}`
    pub port: u16,
    /// `{{METRICS_PORT}}`
    pub metrics_port: u16,
    /// `{{WORKERS}}`
    pub workers: usize,
    /// `{{SHM_PATH}}`, removed (with any `<path>.*` siblings) on drop
    pub shm_path: PathBuf,
    /// the rendered nginx.conf
    pub conf: PathBuf,
    child: Option<Child>,
    master: i32,
    /// every worker pid seen, so a stop after a dead master still finds them
    seen_workers: Mutex<Vec<i32>>,
    killed: Mutex<Vec<i32>>,
}

impl Nginx {
    /// Renders `nginx-test-conf/<template>.conf` and starts it. `vars` add to or
    /// override the standard placeholders (`WORKERS` defaults to 2).
    pub fn start(template: &str, vars: &[(&str, &str)]) -> Nginx {
        let path = repo_dir().join("nginx-test-conf").join(format!("{template}.conf"));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Nginx::start_text(template, &text, vars)
    }

    /// Like `start`, from config text with `{{...}}` placeholders. `name` labels the prefix.
    pub fn start_text(name: &str, template: &str, vars: &[(&str, &str)]) -> Nginx {
        // Ports can be taken by someone else between choosing and binding them: retry
        // with new ones when nginx cannot bind.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Nginx::try_start(name, template, vars) {
                Ok(nginx) => return nginx,
                Err((msg, true)) if attempt < 4 => eprintln!("nginx could not bind, retrying with new ports: {msg}"),
                Err((msg, _)) => panic!("{msg}"),
            }
        }
    }

    /// Renders `nginx-test-conf/<template>.conf` and starts it expecting nginx to
    /// refuse to start (an `init_by_lua` error, say). Returns the failure report:
    /// the exit status and error.log. Panics if nginx starts.
    pub fn start_failing(template: &str, vars: &[(&str, &str)]) -> String {
        let path = repo_dir().join("nginx-test-conf").join(format!("{template}.conf"));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        for _ in 0..4 {
            match Nginx::try_start(template, &text, vars) {
                Ok(nginx) => panic!("nginx started (master {}) but should have refused to", nginx.master),
                Err((msg, true)) => eprintln!("nginx could not bind, retrying with new ports: {msg}"),
                Err((msg, false)) => return msg,
            }
        }
        panic!("nginx could not bind after 4 attempts")
    }

    /// `Err((message, address_in_use))`
    fn try_start(name: &str, template: &str, vars: &[(&str, &str)]) -> Result<Nginx, (String, bool)> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = std::env::temp_dir().join(format!("shmetrics-test-{pid}-{n}-{name}"));
        let lib_src = lib_dir().join(LIB_NAME);
        let shm_path = PathBuf::from(format!("/dev/shm/shmetrics-test-{pid}-{n}"));

        let mut values: BTreeMap<String, String> = BTreeMap::new();
        values.insert("PREFIX".into(), prefix.display().to_string());
        values.insert("PORT".into(), free_port().to_string());
        values.insert("METRICS_PORT".into(), free_port().to_string());
        values.insert("LUA_DIR".into(), prefix.join("lua").display().to_string());
        values.insert("LIB_DIR".into(), prefix.join("lib").display().to_string());
        values.insert("WORKERS".into(), "2".into());
        values.insert("SHM_PATH".into(), shm_path.display().to_string());
        for (k, v) in vars {
            values.insert(k.to_string(), v.to_string());
        }
        let rendered = render(template, &values);

        let _ = fs::remove_dir_all(&prefix);
        for dir in ["logs", "conf", "tmp", "lib"] {
            fs::create_dir_all(prefix.join(dir)).unwrap();
        }
        // Workers run as nobody: they must be able to enter the prefix.
        fs::set_permissions(&prefix, fs::Permissions::from_mode(0o755)).unwrap();
        // A private copy of the library and the Lua module: another build replacing
        // target/*/libshmetrics.so while nginx has it mapped would crash the workers,
        // and workers (nobody) may not be able to read a checkout under a 0700 directory
        // (CI clones into mktemp -d).
        fs::copy(&lib_src, prefix.join("lib").join(LIB_NAME))
            .unwrap_or_else(|e| panic!("copy {}: {e}", lib_src.display()));
        crate::shm::copy_tree(&lua_dir(), &prefix.join("lua")).unwrap_or_else(|e| panic!("copy lua/: {e}"));
        let conf = prefix.join("conf").join("nginx.conf");
        fs::write(&conf, &rendered).unwrap();
        remove_shm(&shm_path);

        let port: u16 = values["PORT"].parse().unwrap();
        let metrics_port: u16 = values["METRICS_PORT"].parse().unwrap();
        let workers: usize = values["WORKERS"].parse().expect("WORKERS must be a number");
        let error_log = prefix.join("logs").join("error.log");

        // The prefix, error log and configuration of every nginx command here.
        let files: [&std::ffi::OsStr; 6] =
            ["-p".as_ref(), prefix.as_os_str(), "-e".as_ref(), error_log.as_os_str(), "-c".as_ref(), conf.as_os_str()];
        let test = Command::new(NGINX)
            .arg("-t")
            .args(files)
            .output()
            .unwrap_or_else(|e| panic!("run {NGINX}: {e} (install nginx with `make deps`)"));
        if !test.status.success() {
            let _ = fs::remove_dir_all(&prefix);
            return Err((
                format!(
                    "nginx -t rejected {}:\n{}{}\n--- rendered config ---\n{rendered}",
                    conf.display(),
                    String::from_utf8_lossy(&test.stdout),
                    String::from_utf8_lossy(&test.stderr)
                ),
                false,
            ));
        }

        let stderr = fs::File::create(prefix.join("logs").join("stderr.log")).unwrap();
        // `SHM_TMPFS` (a tmpfs size such as "256k"): nginx runs in a private mount
        // namespace with a tmpfs of that size on /dev/shm (see `in_private_tmpfs`).
        let mut cmd = match values.get("SHM_TMPFS") {
            Some(size) => in_private_tmpfs(size),
            None => Command::new(NGINX),
        };
        cmd.args(files)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().unwrap())
            .stderr(stderr);
        // The master gets SIGTERM, and shuts down with its workers, if the test dies.
        die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {NGINX}: {e}"));
        let master = child.id() as i32;
        let mut nginx = Nginx {
            prefix,
            port,
            metrics_port,
            workers,
            shm_path,
            conf,
            child: Some(child),
            master,
            seen_workers: Mutex::new(Vec::new()),
            killed: Mutex::new(Vec::new()),
        };

        let ports: Vec<u16> = [(port, "{{PORT}}"), (metrics_port, "{{METRICS_PORT}}")]
            .iter()
            .filter(|(_, placeholder)| template.contains(placeholder))
            .map(|(p, _)| *p)
            .collect();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = nginx.child.as_mut().unwrap().try_wait().unwrap() {
                nginx.child = None;
                let mut log = nginx.error_log();
                let in_use = log.contains("Address already in use");
                // What went to stderr (nginx before its log is open, or `unshare`).
                let stderr = fs::read_to_string(nginx.prefix.join("logs").join("stderr.log")).unwrap_or_default();
                if !stderr.trim().is_empty() {
                    log = format!("{log}--- stderr ---\n{stderr}");
                }
                return Err((format!("nginx exited during start-up ({status}); error.log:\n{log}"), in_use));
            }
            let listening = ports.iter().all(|&p| {
                TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, p)), Duration::from_millis(200))
                    .is_ok()
            });
            if listening && nginx.worker_pids().len() == workers {
                return Ok(nginx);
            }
            if Instant::now() >= deadline {
                return Err((
                    format!(
                        "nginx not ready after {START_TIMEOUT:?} (ports {ports:?} listening: {listening}, workers {:?}); error.log:\n{}",
                        nginx.worker_pids(),
                        nginx.error_log()
                    ),
                    false,
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn master_pid(&self) -> i32 {
        self.master
    }

    /// Current worker processes (children of the master, zombies excluded), sorted.
    /// During a reload this includes old workers that are still draining.
    pub fn worker_pids(&self) -> Vec<i32> {
        let pids = children_of(self.master);
        let mut seen = self.seen_workers.lock().unwrap();
        for &p in &pids {
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
        pids
    }

    /// Sends SIGHUP and waits until `workers` new worker processes run. Returns the
    /// old workers' pids (see `wait_old_workers_gone`).
    pub fn reload(&self) -> Vec<i32> {
        let old = self.worker_pids();
        signal(self.master, libc::SIGHUP).expect("SIGHUP nginx master");
        wait_until(
            START_TIMEOUT,
            || self.worker_pids().iter().filter(|p| !old.contains(p)).count() >= self.workers,
            || {
                format!(
                    "no {} new workers after SIGHUP (old {old:?}, now {:?}); error.log:\n{}",
                    self.workers,
                    self.worker_pids(),
                    self.error_log()
                )
            },
        );
        old
    }

    pub fn wait_old_workers_gone(&self, old: &[i32]) {
        wait_until(
            START_TIMEOUT,
            || old.iter().all(|&p| !alive(p)),
            || format!("old workers still running: {:?}", old.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()),
        );
    }

    pub fn kill_worker(&self, pid: i32) {
        assert!(self.worker_pids().contains(&pid), "{pid} is not a worker of this nginx");
        self.killed.lock().unwrap().push(pid);
        signal(pid, libc::SIGKILL).expect("SIGKILL worker");
    }

    /// Waits until the master has replaced every worker killed by `kill_worker`:
    /// `workers` live workers, none of them a killed one. Returns their pids.
    pub fn wait_respawn(&self) -> Vec<i32> {
        let killed = self.killed.lock().unwrap().clone();
        wait_until(
            START_TIMEOUT,
            || {
                let now = self.worker_pids();
                now.len() == self.workers && now.iter().all(|p| !killed.contains(p))
            },
            || format!("workers not respawned (killed {killed:?}, now {:?})", self.worker_pids()),
        );
        self.worker_pids()
    }

    pub fn error_log(&self) -> String {
        let path = self.prefix.join("logs").join("error.log");
        String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
    }

    /// error.log lines at level error or worse, minus those containing any `allowed`
    /// substring.
    pub fn error_lines(&self, allowed: &[&str]) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| ["[error]", "[crit]", "[alert]", "[emerg]"].iter().any(|lvl| l.contains(lvl)))
            .filter(|l| !allowed.iter().any(|a| l.contains(a)))
            .map(str::to_string)
            .collect()
    }

    /// Fails on any `[error]`, `[crit]`, `[alert]` or `[emerg]` line in error.log that
    /// contains none of the `allowed` substrings. Prints a count of `[warn]` lines.
    pub fn assert_no_errors(&self, allowed: &[&str]) {
        let log = self.error_log();
        let warns: Vec<&str> = log.lines().filter(|l| l.contains("[warn]")).collect();
        if !warns.is_empty() {
            eprintln!("{} [warn] lines in error.log, first: {}", warns.len(), warns[0]);
        }
        let bad = self.error_lines(allowed);
        assert!(
            bad.is_empty(),
            "{} error lines in {}/logs/error.log:\n{}",
            bad.len(),
            self.prefix.display(),
            bad.join("\n")
        );
    }

    /// Graceful stop: SIGQUIT, wait; SIGKILL master and workers if they linger.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let workers = {
            self.worker_pids();
            self.seen_workers.lock().unwrap().clone()
        };
        let _ = signal(self.master, libc::SIGQUIT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut exited = false;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                exited = true;
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        if !exited {
            eprintln!("nginx {} did not stop in {STOP_TIMEOUT:?} after SIGQUIT: killing it", self.master);
            let _ = child.kill();
            let _ = child.wait();
        }
        // A worker outlives a master killed with SIGKILL (or one that exited early).
        for pid in workers {
            if alive(pid) && fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with("nginx")) {
                let _ = signal(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        remove_shm(&self.shm_path);
        if thread::panicking() {
            eprintln!("test failed: nginx prefix kept for inspection: {}", self.prefix.display());
        } else {
            let _ = fs::remove_dir_all(&self.prefix);
        }
    }
}

/// A command that runs nginx (the arguments added to it) in a private mount
/// namespace whose /dev/shm is a fresh tmpfs of `size`: small or full /dev/shm
/// without touching the machine's. `unshare` and `sh` exec, so the child's pid
/// is the nginx master's. The test reaches the tmpfs through
/// `/proc/<master>/root/dev/shm` (see `Nginx::ns_path`). Needs root.
fn in_private_tmpfs(size: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=\"$0\",mode=1777 tmpfs /dev/shm && exec \"$@\"")
        .arg(size)
        .arg(NGINX);
    cmd
}

impl Nginx {
    /// `path` as nginx sees it: through the master's root, which follows its
    /// mount namespace (a private /dev/shm when started with `SHM_TMPFS`).
    pub fn ns_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.master))
    }
}

/// Removes `path` and any `path.*` companions (a lock file, say).
pub fn remove_shm(path: &Path) {
    let _ = fs::remove_file(path);
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_str().is_some_and(|f| f.starts_with(&format!("{name}."))) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Replaces every `{{KEY}}`; an unknown placeholder is a bug in the template or test.
pub fn render(template: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let close = rest[open..].find("}}").unwrap_or_else(|| panic!("unclosed {{{{ in template")) + open;
        let key = &rest[open + 2..close];
        let value = values.get(key).unwrap_or_else(|| panic!("template placeholder {{{{{key}}}}} has no value"));
        out.push_str(value);
        rest = &rest[close + 2..];
    }
    out.push_str(rest);
    out
}
