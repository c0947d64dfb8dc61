//! Creating, validating and mapping a region file.
//!
//! The nginx master calls [`open`] in `init_by_lua`, before it forks the workers;
//! the workers inherit the mapping at the same address and never open the file
//! themselves (they run as another user and could not). On `nginx -s reload` the
//! master runs `init_by_lua` again in a fresh Lua VM, but this library stays
//! loaded, so [`open`] finds the mapping it already made and returns it: old and
//! new workers keep writing into the same memory.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::Error;
use crate::layout::*;
use crate::owner::{my_owner_word, owner_alive};

/// How [`open`] came by its region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// No usable file existed; a new one was made.
    Created,
    /// A file with a matching header was attached: its counts carry on.
    Attached,
    /// A file existed but could not be used; it was replaced. The reason is kept.
    Recreated(String),
    /// This process had mapped the path already (a reload); the same mapping is used.
    Reused,
}

/// A mapped region. Lives for the rest of the process: Lua holds raw pointers
/// into it, so it is never unmapped.
pub struct Region {
    base: *mut u8,
    len: usize,
    /// The file's descriptor, kept open for the life of the process (never closed).
    /// The workers inherit it across fork with the mapping, so a worker reserves
    /// its slot's cells with `fallocate` on it, and the master checks the file
    /// (`fstat`, `pread`) on a reload, without reopening the path: workers run as
    /// another user and could not, and the path may name another file by then.
    fd: libc::c_int,
    /// Device and inode of the file that was mapped, to tell a replaced file.
    dev_ino: (u64, u64),
    pub path: PathBuf,
    pub params: Params,
    pub off: Offsets,
    /// This region's number in this process (never reused, unlike addresses):
    /// what per-process state kept by the layers above is keyed by.
    pub id: u64,
    /// `(pid << 32) | slot` of the slot this process owns, 0 if none (see `slots`).
    pub(crate) my_slot: AtomicU64,
    /// Corrupt records this process has found, counted and to log (see `corrupt`).
    pub(crate) corrupt: Mutex<Found>,
    /// The definitions this process made or matched, by family id: what its
    /// callers write, whatever the file says later (see `registry::families`).
    pub(crate) defs: Mutex<Vec<Option<Def>>>,
}

/// Corrupt records this process has found (reported by `corrupt`).
#[derive(Default)]
pub(crate) struct Found {
    pub(crate) seen: HashSet<(u32, u32)>,
    /// The first message not logged yet, and how many records it stands for.
    pub(crate) message: Option<String>,
    pub(crate) pending: u64,
    pub(crate) last_notice: Option<Instant>,
}

/// A definition as this process made or matched it (see `registry::families`).
pub(crate) struct Def {
    pub(crate) kind: u32,
    pub(crate) cells: u32,
    /// Where the finite bounds (histograms) were in the arena when defined:
    /// what `shmetrics_family_bounds` hands to Lua, whatever the record's
    /// `bounds_off` says later. NULL if none.
    pub(crate) bounds: *const f64,
}

// SAFETY: a `Region` is a pointer into a `MAP_SHARED` mapping that stays mapped for
// the life of the process; all shared fields are accessed through atomics or
// immutable-after-publication data, so sharing the handle between threads is sound.
unsafe impl Send for Region {}
// SAFETY: see `Send` above.
unsafe impl Sync for Region {}

static REGIONS: Mutex<Vec<&'static Region>> = Mutex::new(Vec::new());
/// The next [`Region::id`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Whether the region numbered `id` is mapped in this process (opened and
/// not forgotten): per-region state kept elsewhere may be dropped once not.
pub fn is_open(id: u64) -> bool {
    REGIONS.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|r| r.id == id)
}

/// Opens (or reuses) the region at `path`.
///
/// With `reset`, an existing file is discarded, unless this process has it mapped
/// already (a reload must never reset the counts old workers are still adding to).
pub fn open(path: &Path, params: Params, reset: bool) -> Result<(&'static Region, Opened), Error> {
    let params = params.resolved();
    params.check().map_err(|(arg, why)| Error::invalid(format!("bad option \"{arg}\": {why}")))?;
    let mut regions = REGIONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = regions.iter().find(|r| r.path == path) {
        if r.params != params {
            return Err(Error::invalid(format!(
                "region \"{}\" is already mapped with other sizes ({:?}); \
                 a reload cannot resize it: restart nginx to apply the new sizes",
                path.display(),
                r.params
            )));
        }
        r.check_on_reload()?;
        return Ok((r, Opened::Reused));
    }
    let (region, opened) = map_file(path, params, reset)?;
    let region: &'static Region = Box::leak(Box::new(region));
    regions.push(region);
    Ok((region, opened))
}

fn errno_msg(what: &str, path: &Path) -> Error {
    let e = std::io::Error::last_os_error();
    Error::Io(format!("{what} \"{}\": {e}", path.display()))
}

fn cpath(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid("bad option \"path\": contains a NUL byte".to_string()))
}

/// Checks that an open file is ours alone: a regular file owned by our
/// effective user and not accessible to group or others.
fn check_owner(fd: libc::c_int, path: &Path) -> Result<libc::stat, Error> {
    // SAFETY: `st` is a plain C struct that fstat fills; zeroed is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `st` a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(errno_msg("cannot stat", path));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::Io(format!("\"{}\" is not a regular file; refusing it", path.display())));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if st.st_uid != euid {
        return Err(Error::Io(format!(
            "\"{}\" is owned by uid {}, not by uid {euid}; refusing it (another user could forge the metrics)",
            path.display(),
            st.st_uid
        )));
    }
    if st.st_mode & 0o077 != 0 {
        return Err(Error::Io(format!(
            "\"{}\" has mode {:o}: group or others may access it; refusing it (want 0600)",
            path.display(),
            st.st_mode & 0o777
        )));
    }
    Ok(st)
}

struct Fd(libc::c_int);
impl Fd {
    /// Hands the descriptor over to a [`Region`], which keeps it open.
    fn keep(self) -> libc::c_int {
        let fd = self.0;
        std::mem::forget(self);
        fd
    }
}
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and nothing kept it (see `keep`).
        unsafe { libc::close(self.0) };
    }
}

fn map_file(path: &Path, params: Params, reset: bool) -> Result<(Region, Opened), Error> {
    let (r, opened) = map_file_unowned(path, params, reset)?;
    r.record_master();
    Ok((r, opened))
}

/// The master recorded in the header of the region file at `path` (layout 1.1,
/// [`Header::master`]), 0 when there is none, no file or no region header.
fn recorded_master(c: &CString) -> u64 {
    // O_NOFOLLOW as everywhere here; O_NONBLOCK so that a FIFO at the path does
    // not wait for a writer (pread then fails on it, and map_file refuses it with
    // its own message).
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: `c` is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return 0;
    }
    let fd = Fd(fd);
    let mut buf = [0u8; std::mem::size_of::<Header>()];
    // SAFETY: `buf` is a valid writable buffer of the given length.
    let n = unsafe { libc::pread(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let at = std::mem::offset_of!(Header, master);
    let major = std::mem::offset_of!(Header, major);
    if n != buf.len() as isize
        || buf[..MAGIC.len()] != MAGIC
        || u16::from_le_bytes([buf[major], buf[major + 1]]) != LAYOUT_MAJOR
    {
        return 0;
    }
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

/// Refuses a region whose recorded master (`word`, an owner word as in
/// [`Header::master`]) is another nginx that still runs: two masters mapping one
/// file would add their counts together. The process itself (a second `open`
/// after its mapping was made elsewhere) and its parent are not others: a binary
/// upgrade (USR2) starts the new master as the old master's child, and both share
/// the region while the old workers drain.
fn check_master(word: u64, path: &std::path::Path) -> Result<(), Error> {
    let pid = (word & 0xffff_ffff) as u32;
    if word == 0 || pid == std::process::id() || !owner_alive(word) {
        // The recorded master may have exited while its nginx still runs: a
        // daemon's `init_by_lua` runs before nginx forks the daemon, so the
        // recorded pid is that of the process that started it. A binary upgrade's
        // new master is still one: nginx hands it the listening sockets in the
        // environment variable NGINX.
        if std::env::var_os("NGINX").is_some() {
            // Relaxed: read later by this same thread's caller (see joined_parent).
            JOINED_PARENT.store(true, Ordering::Relaxed);
        }
        return Ok(());
    }
    // SAFETY: getppid has no preconditions.
    if pid as i32 == unsafe { libc::getppid() } {
        // Relaxed: as above.
        JOINED_PARENT.store(true, Ordering::Relaxed);
        return Ok(());
    }
    Err(Error::Io(format!(
        "\"{}\" is in use by another running nginx (master pid {pid}): two instances would add \
         their counts together; give each instance its own file with the \"path\" option of \
         shmetrics.init (or stop the other one)",
        path.display()
    )))
}

/// Set when this process is a binary upgrade's new master: the region's
/// recorded master is its live parent, or nginx handed it the listening
/// sockets (the environment variable NGINX).
static JOINED_PARENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process joined a region of its parent (a binary upgrade): its
/// open must not start a new configuration, since the old master's workers
/// are still being scraped and every family would vanish until this master's
/// definitions name it again.
pub fn joined_parent() -> bool {
    JOINED_PARENT.load(Ordering::Relaxed)
}

fn map_file_unowned(path: &Path, params: Params, reset: bool) -> Result<(Region, Opened), Error> {
    let off = params.offsets();
    let c = cpath(path)?;
    // Before anything else, even a reset: never replace or join another nginx's region.
    check_master(recorded_master(&c), path)?;
    let mut recreated = None;
    if !reset {
        // SAFETY: `c` is a valid NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd >= 0 {
            let fd = Fd(fd);
            let st = check_owner(fd.0, path)?;
            match validate_existing(fd.0, st.st_size as u64, &params, &off) {
                Ok(()) => {
                    let base = mmap(fd.0, off.total as usize, path)?;
                    // The file may be sparse (another build made it, or pages were
                    // dropped): reserve before the header is read through the mapping.
                    if let Err(e) = reserve(fd.0, base, 0, params.reserved_at_init()) {
                        // SAFETY: `base` is the mapping made just above, not shared yet.
                        unsafe { libc::munmap(base.cast(), off.total as usize) };
                        return Err(no_room(path, &params, fd.0, e));
                    }
                    let r = Region::new(base, off.total as usize, fd.keep(), (st.st_dev, st.st_ino), path, params, off);
                    r.check_counters()?;
                    r.check_counters_cover_records()?;
                    return Ok((r, Opened::Attached));
                }
                Err(why) => recreated = Some(why),
            }
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOENT) => {}
                Some(libc::ELOOP) => {
                    return Err(Error::Io(format!("\"{}\" is a symbolic link; refusing it", path.display())))
                }
                _ => return Err(Error::Io(format!("cannot open \"{}\": {e}", path.display()))),
            }
        }
    } else if path.exists() {
        recreated = Some((ORIGIN_RESET, "the reset option was given".to_string()));
    }
    let origin = recreated.as_ref().map_or(ORIGIN_NEW, |r| r.0);
    let (base, len, fd, dev_ino) = create(path, &c, &params, &off, origin)?;
    let r = Region::new(base, len, fd, dev_ino, path, params, off);
    Ok((r, recreated.map_or(Opened::Created, |r| Opened::Recreated(r.1))))
}

/// Reads the header of an existing file and compares every constant field with
/// what `params` would build. Returns why the file cannot be used.
fn validate_existing(fd: libc::c_int, size: u64, params: &Params, off: &Offsets) -> Result<(), (u32, String)> {
    if size < HEADER_BYTES {
        return Err((ORIGIN_BAD_FILE, format!("the file is {size} bytes, shorter than a header")));
    }
    let mut buf = [0u8; std::mem::size_of::<Header>()];
    // SAFETY: `buf` is a valid writable buffer of the given length.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err((ORIGIN_BAD_FILE, "the header could not be read".to_string()));
    }
    // Header fields by name: the file's bytes are read at this build's offsets.
    macro_rules! at {
        ($field:ident) => {
            std::mem::offset_of!(Header, $field)
        };
    }
    let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
    if buf[..MAGIC.len()] != MAGIC {
        return Err((ORIGIN_BAD_FILE, "wrong magic: not a shmetrics region".to_string()));
    }
    if u16_at(at!(major)) != LAYOUT_MAJOR {
        return Err((ORIGIN_LAYOUT, format!("layout version {} is not ours ({LAYOUT_MAJOR})", u16_at(at!(major)))));
    }
    let want = [
        ("header_size", u32_at(at!(header_size)) as u64, std::mem::size_of::<Header>() as u64, ORIGIN_BAD_FILE),
        // The configured sizes before total_size, which follows from them: the
        // reason then names the option that changed.
        ("max_series", u32_at(at!(max_series)) as u64, params.max_series as u64, ORIGIN_SIZES),
        ("max_families", u32_at(at!(max_families)) as u64, params.max_families as u64, ORIGIN_SIZES),
        ("max_slots", u32_at(at!(max_slots)) as u64, params.max_slots as u64, ORIGIN_SIZES),
        ("max_label_bytes", u32_at(at!(max_label_bytes)) as u64, params.max_label_bytes as u64, ORIGIN_SIZES),
        ("max_cells", u32_at(at!(max_cells)) as u64, params.max_cells as u64, ORIGIN_SIZES),
        ("arena_bytes", u64_at(at!(arena_bytes)), params.arena_bytes, ORIGIN_SIZES),
        ("total_size", u64_at(at!(total_size)), off.total, ORIGIN_SIZES),
    ];
    for (name, have, want, origin) in want {
        if have != want {
            return Err((origin, format!("{name} is {have} in the file, {want} in the configuration")));
        }
    }
    let offs = [
        u64_at(at!(off_slots)),
        u64_at(at!(off_families)),
        u64_at(at!(off_family_index)),
        u64_at(at!(off_series)),
        u64_at(at!(off_series_index)),
        u64_at(at!(off_arena)),
        u64_at(at!(off_cells)),
    ];
    let want_offs = [off.slots, off.families, off.family_index, off.series, off.series_index, off.arena, off.cells];
    if offs != want_offs
        || u32_at(at!(series_index_cap)) != off.series_index_cap
        || u32_at(at!(family_index_cap)) != off.family_index_cap
    {
        return Err((ORIGIN_BAD_FILE, "section offsets differ from this build's".to_string()));
    }
    if size != off.total {
        return Err((ORIGIN_BAD_FILE, format!("the file is {size} bytes, the header says {}", off.total)));
    }
    Ok(())
}

/// Makes the file system back bytes `start..start + len` of the file now, so that
/// no later touch of those pages through the mapping at `base` can fault (on a
/// full tmpfs a fault that cannot get a page is SIGBUS, which kills the process).
///
/// `fallocate` on the descriptor: it allocates without writing, so it is safe on
/// ranges other processes are writing through the mapping, and a failure leaves
/// no half-reserved range behind on tmpfs. File systems without it get
/// `MADV_POPULATE_WRITE` (Linux 5.14), which faults the pages in for writing and
/// reports a failure as an error instead of a signal; on older kernels such a
/// file system is left as it is (nothing more can be done without writing).
fn reserve(fd: libc::c_int, base: *mut u8, start: u64, len: u64) -> Result<(), std::io::Error> {
    loop {
        // SAFETY: `fd` is an open descriptor of ours; fallocate reads no memory.
        if unsafe { libc::fallocate(fd, 0, start as libc::off_t, len as libc::off_t) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => break,
            _ => return Err(e),
        }
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let from = start / page * page;
    loop {
        // SAFETY: `base` is a mapping of the whole file and `from..start + len` lies
        // inside it; MADV_POPULATE_WRITE changes no byte of it.
        let r = unsafe {
            libc::madvise(base.add(from as usize).cast(), (start + len - from) as usize, libc::MADV_POPULATE_WRITE)
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EINVAL) => return Ok(()),
            _ => return Err(e),
        }
    }
}

/// Free bytes (for unprivileged users) on the file system holding `fd`'s file.
fn free_bytes(fd: libc::c_int) -> Option<u64> {
    // SAFETY: `st` is a plain C struct that fstatvfs fills; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` a valid out-pointer.
    if unsafe { libc::fstatvfs(fd, &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The error `init` raises when the region cannot be reserved: what, where, how
/// much, and the fixes.
fn no_room(path: &Path, params: &Params, fd: libc::c_int, e: std::io::Error) -> Error {
    let free = free_bytes(fd).map_or("an unknown number of".to_string(), |b| b.to_string());
    Error::Io(format!(
        "cannot reserve {} bytes for the region \"{}\": {e}; the file system holding it has {free} bytes free \
         (each worker process later reserves {} bytes more for its slot). Fixes: a larger /dev/shm \
         (Docker: --shm-size), another `path` on a file system with room, or smaller max_series/max_slots",
        params.reserved_at_init(),
        path.display(),
        params.slot_bytes()
    ))
}

fn mmap(fd: libc::c_int, len: usize, path: &Path) -> Result<*mut u8, Error> {
    // SAFETY: mapping `len` bytes of a file we checked is at least `len` long.
    let p =
        unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(errno_msg("cannot map", path));
    }
    Ok(p.cast())
}

fn random_seed() -> u64 {
    let mut seed = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `seed`.
    let n = unsafe { libc::getrandom((&mut seed as *mut u64).cast(), 8, 0) };
    if n != 8 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        seed = t ^ ((std::process::id() as u64) << 32);
    }
    seed
}

/// A new file's mapping, its length, the descriptor kept open, and (device, inode).
type Made = (*mut u8, usize, libc::c_int, (u64, u64));

/// Builds a new file next to `path` and renames it into place, so that a process
/// opening `path` concurrently sees either the old file or a complete new one.
fn create(path: &Path, c: &CString, params: &Params, off: &Offsets, origin: u32) -> Result<Made, Error> {
    let tmp = PathBuf::from(format!("{}.tmp.{}", path.display(), std::process::id()));
    let ctmp = cpath(&tmp)?;
    // SAFETY: valid NUL-terminated path; a stale temporary of ours may be removed.
    unsafe { libc::unlink(ctmp.as_ptr()) };
    // SAFETY: valid path; O_EXCL|O_NOFOLLOW so we never follow or reuse another file.
    let fd = unsafe {
        libc::open(
            ctmp.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(errno_msg("cannot create", &tmp));
    }
    let fd = Fd(fd);
    // The umask may have removed bits but never adds any; make the mode exact anyway.
    // SAFETY: `fd` is open.
    unsafe { libc::fchmod(fd.0, 0o600) };
    // SAFETY: `fd` is open; the size was checked against 1 TiB in `Params::check`.
    if unsafe { libc::ftruncate(fd.0, off.total as libc::off_t) } != 0 {
        let e = errno_msg("cannot size", &tmp);
        // SAFETY: valid path.
        unsafe { libc::unlink(ctmp.as_ptr()) };
        return Err(e);
    }
    let base = match mmap(fd.0, off.total as usize, &tmp) {
        Ok(b) => b,
        Err(e) => {
            // SAFETY: valid path.
            unsafe { libc::unlink(ctmp.as_ptr()) };
            return Err(e);
        }
    };
    // Reserve before the first touch: on a full tmpfs, writing the header into
    // a page the file system cannot back would kill the master with SIGBUS.
    if let Err(e) = reserve(fd.0, base, 0, params.reserved_at_init()) {
        // SAFETY: valid path; `base`/`total` are the mapping made above, unused.
        unsafe {
            libc::unlink(ctmp.as_ptr());
            libc::munmap(base.cast(), off.total as usize);
        }
        return Err(no_room(path, params, fd.0, e));
    }
    // SAFETY: `st` is a plain C struct that fstat fills; zeroed is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` a valid out-pointer.
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
        return Err(errno_msg("cannot stat", &tmp));
    }
    // SAFETY: the mapping is at least HEADER_BYTES long, page aligned, and zero
    // filled (fresh file); nobody else has it yet.
    let h = unsafe { &mut *(base as *mut Header) };
    h.major = LAYOUT_MAJOR;
    h.minor = LAYOUT_MINOR;
    h.header_size = std::mem::size_of::<Header>() as u32;
    h.total_size = off.total;
    h.max_series = params.max_series;
    h.max_families = params.max_families;
    h.max_slots = params.max_slots;
    h.max_label_bytes = params.max_label_bytes;
    h.max_cells = params.max_cells;
    h.series_index_cap = off.series_index_cap;
    h.family_index_cap = off.family_index_cap;
    h.arena_bytes = params.arena_bytes;
    h.hash_seed = random_seed();
    h.off_slots = off.slots;
    h.off_families = off.families;
    h.off_family_index = off.family_index;
    h.off_series = off.series;
    h.off_series_index = off.series_index;
    h.off_arena = off.arena;
    h.off_cells = off.cells;
    h.created_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    h.origin = origin;
    h.cells_used.store(RESERVED_CELLS, Ordering::Relaxed);
    // Magic last: a file without it is never attached.
    h.magic = MAGIC;
    // SAFETY: both paths are valid NUL-terminated strings.
    if unsafe { libc::rename(ctmp.as_ptr(), c.as_ptr()) } != 0 {
        let e = errno_msg("cannot move the new region into place at", path);
        // SAFETY: valid path; `base`/`total` are the mapping made above.
        unsafe {
            libc::unlink(ctmp.as_ptr());
            libc::munmap(base.cast(), off.total as usize);
        }
        return Err(e);
    }
    Ok((base, off.total as usize, fd.keep(), (st.st_dev, st.st_ino)))
}

impl Region {
    fn new(
        base: *mut u8,
        len: usize,
        fd: libc::c_int,
        dev_ino: (u64, u64),
        path: &Path,
        params: Params,
        off: Offsets,
    ) -> Region {
        Region {
            base,
            len,
            fd,
            dev_ino,
            path: path.to_path_buf(),
            params,
            off,
            // Relaxed: only distinct numbers are asked of the counter.
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            my_slot: AtomicU64::new(0),
            corrupt: Mutex::new(Found::default()),
            defs: Mutex::new(Vec::new()),
        }
    }

    /// Records the calling process as the master that maps this region (see
    /// [`check_master`]).
    fn record_master(&self) {
        // Relaxed: an identity read by the next master's `open`, which runs after
        // this process made its mapping; no other data is published with it.
        self.header().master.store(my_owner_word(), Ordering::Relaxed);
    }

    /// Refuses a file whose counters point past its own capacities (corruption):
    /// readers clamp anyway, but a writer must not allocate from nonsense.
    fn check_counters(&self) -> Result<(), Error> {
        let h = self.header();
        let p = &self.params;
        let bad = h.families_used.load(Ordering::Relaxed) > p.max_families
            || h.series_used.load(Ordering::Relaxed) > p.max_series
            || h.cells_used.load(Ordering::Relaxed) > p.max_cells
            || h.cells_used.load(Ordering::Relaxed) < RESERVED_CELLS
            || h.arena_used.load(Ordering::Relaxed) > p.arena_bytes;
        if bad {
            return Err(Error::Io(format!(
                "\"{}\" has allocation counters beyond its capacity (corrupt); remove it or use the reset option",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Reserves slot `i`'s cells in the file before a process claims the slot
    /// (see [`reserve`]). Reserving a range twice is harmless, so it is done before
    /// the claim's compare-and-swap, whoever wins it.
    pub fn reserve_slot(&self, i: u32) -> Result<(), Error> {
        let bytes = self.params.slot_bytes();
        let start = self.off.cells + i as u64 * bytes;
        reserve(self.fd, self.base, start, bytes).map_err(|e| {
            let free = free_bytes(self.fd).map_or("an unknown number of".to_string(), |b| b.to_string());
            Error::NoSlot(format!(
                "cannot reserve {bytes} bytes for worker slot {i} in \"{}\": {e} ({free} bytes free there); \
                 this process records nothing. Fixes: a larger /dev/shm (Docker: --shm-size), \
                 or smaller max_series",
                self.path.display()
            ))
        })
    }

    /// The size the file has now, through the kept descriptor.
    fn file_size(&self) -> Result<u64, Error> {
        // SAFETY: `st` is a plain C struct that fstat fills; zeroed is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `self.fd` stays open for the life of the process; `st` is valid.
        if unsafe { libc::fstat(self.fd, &mut st) } != 0 {
            return Err(errno_msg("cannot stat", &self.path));
        }
        Ok(st.st_size as u64)
    }

    /// Checks, without touching the mapping, that the file is still as long as the
    /// mapping. A file cut short (`truncate`, `> file`) would make every touch of
    /// the lost pages SIGBUS: this gives the file its size back and reserves the
    /// header, registries, arena and slot 0 again, so that the running processes
    /// do not crash; the counts are lost all the same (the pages come back as
    /// zeros), and the error says so.
    ///
    /// The workers' own slots are not reserved again: which slots were claimed
    /// was in the lost pages, and reserving all of them could fill the file
    /// system for nothing. Their pages come back on the workers' next writes,
    /// which succeed unless the file system was filled in the meantime.
    pub fn check_size(&self) -> Result<(), Error> {
        let size = self.file_size()?;
        if size >= self.len as u64 {
            return Ok(());
        }
        // SAFETY: `self.fd` is open for writing; the length was valid at creation.
        let grown = unsafe { libc::ftruncate(self.fd, self.len as libc::off_t) } == 0;
        let done = if !grown {
            "its size could not be restored: processes touching the lost pages will crash".to_string()
        } else if let Err(e) = reserve(self.fd, self.base, 0, self.params.reserved_at_init()) {
            format!("its size was restored, but its registries could not be reserved again ({e})")
        } else {
            "its size was restored and its registries reserved again, so running workers do not crash".to_string()
        };
        Err(Error::Io(format!(
            "the region file \"{}\" was cut to {size} bytes while nginx ran (it is {} bytes); \
             {done}; its counts are lost: restart nginx to start a fresh region",
            self.path.display(),
            self.len
        )))
    }

    /// Checks the file behind the mapping without touching the mapping: as long
    /// as the mapping ([`check_size`](Self::check_size)), and its header (read
    /// with `pread`) still the one this process attached. Run before each scrape
    /// and each slot claim, and on reload: a region that fails is not read.
    pub fn check_mapped(&self) -> Result<(), Error> {
        self.check_size()?;
        if let Err((_, why)) = validate_existing(self.fd, self.len as u64, &self.params, &self.off) {
            return Err(Error::Io(format!(
                "the region file \"{}\" was overwritten while nginx ran ({why}); \
                 restart nginx (with the reset option, or after removing the file)",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Refuses a file whose allocation counters are below what its records use
    /// (corruption). The next family id, series id, arena bytes or cells handed
    /// out would be ones in use, and writing them would change a record under
    /// the workers that hold it: a histogram's record rewritten as another
    /// family while Lua still observes into its series with the old bounds (and
    /// writes past the cells a new series of the new kind gets), a family's
    /// bounds or name overwritten by a new key, two series sharing cells. A file
    /// this library wrote never looks so: every id, arena range and cell range
    /// is taken from its counter before anything is written into it or points
    /// at it.
    ///
    /// In use: family and series records in a state only the library writes
    /// (live, deleted, orphan) or that an index points at; their arena ranges
    /// (name, HELP, label names, bounds, key) that lie inside the arena, and
    /// the cells of series of live families where a reader or writer would use
    /// them. Other garbage is left to the readers, which skip it.
    fn check_counters_cover_records(&self) -> Result<(), Error> {
        let p = &self.params;
        let in_state = |state: &AtomicU32| {
            // Acquire: pairs with the creator's Release of the state (or of the
            // index position below): its counters were taken before that, so
            // the loads of the counters after this scan see them.
            matches!(State::from_raw(state.load(Ordering::Acquire)), Some(State::Live | State::Deleted | State::Orphan))
        };
        let mut family_indexed = vec![false; p.max_families as usize];
        let mut series_indexed = vec![false; p.max_series as usize];
        for i in 0..self.off.family_index_cap {
            // Acquire: as above (the index CAS publishing an entry is Release).
            let v = self.family_index(i).load(Ordering::Acquire);
            if v != 0 && v <= p.max_families {
                family_indexed[v as usize - 1] = true;
            }
        }
        for i in 0..self.off.series_index_cap {
            // Acquire: as above.
            let v = self.series_index(i).load(Ordering::Acquire);
            if v != 0 && v <= p.max_series {
                series_indexed[v as usize - 1] = true;
            }
        }
        let (mut families, mut series, mut arena, mut cells) = (0u32, 0u32, 0u64, 0u32);
        let mut range = |off: u32, len: u32| {
            let end = off as u64 + len as u64;
            if len > 0 && end <= p.arena_bytes {
                arena = arena.max(end);
            }
        };
        for id in 0..p.max_families {
            let f = self.family(id);
            if !(family_indexed[id as usize] || in_state(&f.state)) {
                continue;
            }
            families = id + 1;
            range(f.name_off, f.name_len);
            // Relaxed: the Acquire above ordered the record's fields.
            let h = f.help.load(Ordering::Relaxed);
            range((h >> 32) as u32, h as u32);
            let n = f.nlabels.min(MAX_LABELS as u32);
            range(f.labels_off, n * 8);
            for pair in self.arena(f.labels_off, n * 8).unwrap_or(&[]).chunks_exact(8) {
                range(
                    u32::from_le_bytes(pair[..4].try_into().unwrap()),
                    u32::from_le_bytes(pair[4..].try_into().unwrap()),
                );
            }
            range(f.bounds_off, f.nbounds.min(MAX_BUCKETS as u32) * 8);
        }
        for id in 0..p.max_series {
            let s = self.series(id);
            if !(series_indexed[id as usize] || in_state(&s.state)) {
                continue;
            }
            series = id + 1;
            range(s.key_off, s.key_len);
            if s.family < p.max_families && s.cell >= RESERVED_CELLS {
                let f = self.family(s.family);
                // Acquire: as above. Only a live family's series are read or written.
                if f.state.load(Ordering::Acquire) != STATE_LIVE {
                    continue;
                }
                let need = cells_of(f.kind, f.nbounds);
                let end = s.cell as u64 + need as u64;
                if need <= f.ncells && end <= p.max_cells as u64 {
                    cells = cells.max(end as u32);
                }
            }
        }
        let h = self.header();
        // Acquire: after the scan, so that an entry another process published
        // meanwhile is covered by the counters it took first.
        let past = [
            ("families_used", h.families_used.load(Ordering::Acquire) as u64, families as u64),
            ("series_used", h.series_used.load(Ordering::Acquire) as u64, series as u64),
            ("arena_used", h.arena_used.load(Ordering::Acquire), arena),
            ("cells_used", h.cells_used.load(Ordering::Acquire) as u64, cells as u64),
        ];
        if let Some((name, have, want)) = past.iter().find(|(_, have, want)| have < want) {
            return Err(Error::Io(format!(
                "\"{}\" has allocation counters below what its records use (corrupt: {name} is {have}, \
                 its records use {want}); remove it or use the reset option",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// What the master checks when `init` finds this region mapped already (a
    /// reload), before it touches the mapping: [`check_mapped`](Self::check_mapped),
    /// the path still names the mapped file, and the allocation counters are
    /// within the capacities. Any failure fails the reload: nginx keeps serving
    /// with the old configuration and its workers.
    fn check_on_reload(&self) -> Result<(), Error> {
        self.check_mapped()?;
        let restart = "a reload cannot switch files: restart nginx";
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.dev_ino => {}
            Ok(_) => {
                return Err(Error::Io(format!(
                    "the region file \"{}\" was replaced by another file while nginx ran; {restart}",
                    self.path.display()
                )))
            }
            Err(e) => {
                return Err(Error::Io(format!(
                    "the region file \"{}\" was removed while nginx ran ({e}); {restart}",
                    self.path.display()
                )))
            }
        }
        self.check_counters()
    }

    pub fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (page aligned, ≥ HEADER_BYTES long).
        unsafe { &*(self.base as *const Header) }
    }

    /// Element `i` of a section of `T`s starting at `off`.
    ///
    /// # Safety
    /// `off + (i + 1) * size_of::<T>()` must lie inside the mapping and `off` be
    /// aligned for `T` (every section start is 64-aligned: `Params::offsets`).
    unsafe fn at<T>(&self, off: u64, i: u64) -> *mut T {
        debug_assert!(off + (i + 1) * std::mem::size_of::<T>() as u64 <= self.len as u64);
        // SAFETY: in bounds by the caller's contract; derived from `base`, the
        // mapping's own pointer, so writing through it is allowed.
        unsafe { self.base.add((off + i * std::mem::size_of::<T>() as u64) as usize).cast() }
    }

    /// Slot `i`'s ownership record.
    ///
    /// # Panics
    /// If `i >= max_slots` (callers pass indexes they computed, never file bytes).
    pub fn slot(&self, i: u32) -> &Slot {
        assert!(i < self.params.max_slots, "slot {i} out of range");
        // SAFETY: the slots section holds max_slots 64-byte records (offsets()).
        unsafe { &*self.at(self.off.slots, i as u64) }
    }

    /// Family `i`.
    ///
    /// Only its atomic fields may be read through this reference while other
    /// processes run: the plain fields are read once, as a copy, by
    /// [`Region::family_rec`], and written only through [`Region::family_ptr`].
    ///
    /// # Panics
    /// If `i >= max_families`.
    pub fn family(&self, i: u32) -> &Family {
        // SAFETY: bounds checked by family_ptr; the record lives as long as the mapping.
        unsafe { &*self.family_ptr(i) }
    }

    /// A pointer to family record `i`, derived from the mapping's base (for
    /// writing a record before it is published, and for volatile copies).
    ///
    /// # Panics
    /// If `i >= max_families`.
    pub(crate) fn family_ptr(&self, i: u32) -> *mut Family {
        assert!(i < self.params.max_families, "family {i} out of range");
        // SAFETY: the families section holds max_families records.
        unsafe { self.at(self.off.families, i as u64) }
    }

    pub fn family_index(&self, i: u32) -> &AtomicU32 {
        // SAFETY: masked to < family_index_cap, the section's length.
        unsafe { &*self.at(self.off.family_index, (i & (self.off.family_index_cap - 1)) as u64) }
    }

    /// Series `i` (see [`Region::family`] for what may be read through it).
    ///
    /// # Panics
    /// If `i >= max_series`.
    pub fn series(&self, i: u32) -> &Series {
        // SAFETY: bounds checked by series_ptr.
        unsafe { &*self.series_ptr(i) }
    }

    /// A pointer to series record `i`, derived from the mapping's base.
    ///
    /// # Panics
    /// If `i >= max_series`.
    pub(crate) fn series_ptr(&self, i: u32) -> *mut Series {
        assert!(i < self.params.max_series, "series {i} out of range");
        // SAFETY: the series section holds max_series records.
        unsafe { self.at(self.off.series, i as u64) }
    }

    pub fn series_index(&self, i: u32) -> &AtomicU32 {
        // SAFETY: masked to < series_index_cap, the section's length.
        unsafe { &*self.at(self.off.series_index, (i & (self.off.series_index_cap - 1)) as u64) }
    }

    /// Bytes `off..off+len` of the arena, or `None` if that is outside it.
    ///
    /// The bytes stay in shared memory: published bytes never change unless the
    /// file is corrupted, so whoever must not read them twice copies them
    /// ([`Region::arena_copy`]).
    pub fn arena(&self, off: u32, len: u32) -> Option<&[u8]> {
        let end = off as u64 + len as u64;
        if end > self.params.arena_bytes {
            return None;
        }
        // SAFETY: bounds checked just above against the arena's size.
        Some(unsafe { std::slice::from_raw_parts(self.base.add((self.off.arena + off as u64) as usize), len as usize) })
    }

    /// A private copy of arena bytes `off..off+len`, or `None` if outside the arena.
    pub fn arena_copy(&self, off: u32, len: u32) -> Option<Vec<u8>> {
        let end = off as u64 + len as u64;
        if end > self.params.arena_bytes {
            return None;
        }
        let mut v = vec![0u8; len as usize];
        // SAFETY: the source range is inside the arena (checked above); `v` has
        // `len` bytes; a raw copy makes no promise that the bytes stay unchanged.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.add((self.off.arena + off as u64) as usize),
                v.as_mut_ptr(),
                v.len(),
            )
        };
        Some(v)
    }

    /// Raw pointer to arena offset `off` (for writing before publication).
    ///
    /// # Safety
    /// `off + len` must be within the arena and the bytes allocated to the caller.
    pub unsafe fn arena_mut(&self, off: u32) -> *mut u8 {
        // SAFETY: in bounds by the caller's contract.
        unsafe { self.base.add((self.off.arena + off as u64) as usize) }
    }

    /// Slot `slot`'s cell array (`max_cells` doubles).
    ///
    /// # Panics
    /// If `slot >= max_slots`.
    pub fn cells(&self, slot: u32) -> *mut f64 {
        assert!(slot < self.params.max_slots, "slot {slot} out of range");
        // SAFETY: the cells section holds max_slots arrays of max_cells doubles.
        unsafe { self.base.add((self.off.cells + slot as u64 * self.params.max_cells as u64 * 8) as usize).cast() }
    }

    /// One cell as an atomic word.
    ///
    /// # Safety
    /// `slot < max_slots` and `idx < max_cells`.
    #[inline]
    pub(crate) unsafe fn cell_word(&self, slot: u32, idx: u32) -> &AtomicU64 {
        let off = self.off.cells + (slot as u64 * self.params.max_cells as u64 + idx as u64) * 8;
        // SAFETY: inside the cells section by the contract; 8-aligned (the section
        // is page aligned); AtomicU64 has f64's size and alignment.
        unsafe { &*(self.base.add(off as usize) as *const AtomicU64) }
    }

    /// Reads one cell of one slot, unchecked. Writers store whole 8-byte words
    /// (LuaJIT's `movsd`, our `AtomicU64::store`), so a relaxed 8-byte load never tears.
    ///
    /// # Safety
    /// `slot < max_slots` and `idx < max_cells` (an index from the file must have
    /// been checked against `max_cells` first).
    #[inline]
    pub unsafe fn cell_unchecked(&self, slot: u32, idx: u32) -> f64 {
        // SAFETY: the caller's contract is cell_word's.
        f64::from_bits(unsafe { self.cell_word(slot, idx) }.load(Ordering::Relaxed))
    }

    /// Reads one cell of one slot.
    ///
    /// # Panics
    /// If `slot >= max_slots` or `idx >= max_cells` (checked in release builds).
    #[inline]
    pub fn cell(&self, slot: u32, idx: u32) -> f64 {
        assert!(slot < self.params.max_slots && idx < self.params.max_cells, "cell {slot}:{idx} out of range");
        // SAFETY: both bounds checked just above.
        unsafe { self.cell_unchecked(slot, idx) }
    }
}

#[cfg(test)]
impl Region {
    /// A region in zeroed, page-aligned heap memory, never freed: the store's
    /// logic without a file or `mmap`, so unit tests run under Miri.
    pub(crate) fn heap(params: Params) -> &'static Region {
        let params = params.resolved();
        params.check().expect("test parameters");
        let off = params.offsets();
        let layout = std::alloc::Layout::from_size_align(off.total as usize, 4096).unwrap();
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!base.is_null());
        // No file behind it: descriptor -1 and no device or inode (nothing here reserves or checks a file).
        let r = Region::new(base, off.total as usize, -1, (0, 0), Path::new("/heap/region"), params, off);
        // Relaxed: nobody else has the region yet.
        r.header().cells_used.store(RESERVED_CELLS, Ordering::Relaxed);
        Box::leak(Box::new(r))
    }
}

/// Unmaps a region this process opened and forgets it: `open` then maps its
/// path afresh, and the list it searches stays short. Not for nginx (Lua keeps
/// raw pointers into a region for the life of the process): for tests and
/// fuzzing, which open thousands of regions in one process.
///
/// # Safety
/// `r` must come from [`open`], and nothing may use it, a handle to it or a
/// pointer into its mapping afterwards.
#[doc(hidden)]
pub unsafe fn forget(r: &'static Region) {
    let mut regions = REGIONS.lock().unwrap_or_else(|e| e.into_inner());
    regions.retain(|x| !std::ptr::eq(*x, r));
    drop(regions);
    // SAFETY: caller contract: the mapping `open` made for `r`, the descriptor
    // it kept (-1 for a heap region) and the box it leaked are used by nobody
    // else now, and no longer listed.
    unsafe {
        libc::munmap(r.base.cast(), r.len);
        if r.fd >= 0 {
            libc::close(r.fd);
        }
        drop(Box::from_raw(r as *const Region as *mut Region));
    }
}
