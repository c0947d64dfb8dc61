//! Process identity from `/proc`: the owner word that names a process in a
//! slot (and the region's master), and whether that process still runs.

/// Whether the process recorded in a slot's `owner` word still runs.
///
/// `owner` is `(start_time_low32 << 32) | pid`; comparing the start time tells a
/// live owner from an unrelated process that reused its pid.
pub fn owner_alive(owner: u64) -> bool {
    let pid = (owner & 0xffff_ffff) as i32;
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match proc_stat(pid) {
        // A zombie has exited: its stores are complete, only its parent has not
        // reaped it yet (PID 1 in a container may take its time).
        Some((state, _)) if state == 'Z' || state == 'X' => false,
        Some((_, st)) => (st & 0xffff_ffff) as u32 == (owner >> 32) as u32,
        None => true,
    }
}

/// State (field 3) and start time (field 22, clock ticks since boot) of
/// `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.nth(18)?.parse().ok()?))
}

/// The owner word of process `pid`: its start time (low 32 bits) above its pid.
pub fn owner_word(pid: i32) -> u64 {
    let st = proc_stat(pid).map_or(0, |(_, st)| st);
    ((st & 0xffff_ffff) << 32) | pid as u32 as u64
}

pub fn my_owner_word() -> u64 {
    owner_word(std::process::id() as i32)
}

/// Whether process `pid` is an nginx master: nginx titles it "nginx: master
/// process <command line>" once it runs as one (after daemonizing), so the
/// process that only launched a daemon never carries the title.
pub fn is_nginx_master(pid: i32) -> bool {
    pid > 1 && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|t| t.starts_with(b"nginx: master process"))
}
