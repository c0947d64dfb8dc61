//! Creating, validating and mapping a region file.
//!
//! The nginx master calls [`open`] in `init_by_lua`, before it forks the workers;
//! the workers inherit the mapping at the same address and never open the file
//! themselves (they run as another user and could not). On `nginx -s reload` the
//! master runs `init_by_lua` again in a fresh Lua VM, but this library stays
//! loaded, so [`open`] finds the mapping it already made and returns it: old and
//! new workers keep writing into the same memory.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::Error;
use crate::layout::*;

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
    pub path: PathBuf,
    pub params: Params,
    pub off: Offsets,
    /// `(pid << 32) | slot` of the slot this process owns, 0 if none.
    pub(crate) my_slot: AtomicU64,
    /// This process's rendered label blocks, by series id (see `render`).
    pub(crate) label_cache: Mutex<Vec<Option<Box<[u8]>>>>,
    /// This process's live series by family (see `render::Scan`).
    pub(crate) scan: Mutex<crate::render::Scan>,
    /// Name of the error counter this process exposes (empty: none); see
    /// `Region::set_error_metric`. Per process: workers inherit the master's.
    pub(crate) error_metric: Mutex<Vec<u8>>,
}

// SAFETY: a `Region` is a pointer into a `MAP_SHARED` mapping that stays mapped for
// the life of the process; all shared fields are accessed through atomics or
// immutable-after-publication data, so sharing the handle between threads is sound.
unsafe impl Send for Region {}
// SAFETY: see `Send` above.
unsafe impl Sync for Region {}

static REGIONS: Mutex<Vec<&'static Region>> = Mutex::new(Vec::new());

/// Opens (or reuses) the region at `path`.
///
/// With `reset`, an existing file is discarded, unless this process has it mapped
/// already (a reload must never reset the counts old workers are still adding to).
pub fn open(path: &Path, params: Params, reset: bool) -> Result<(&'static Region, Opened), Error> {
    let params = params.resolved();
    params
        .check()
        .map_err(|(arg, why)| Error::invalid(format!("bad option \"{arg}\": {why}")))?;
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
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor; the mapping, once made, does not need it.
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
    // SAFETY: `c` is a valid NUL-terminated path. O_NOFOLLOW as everywhere here;
    // O_NONBLOCK so that a FIFO at the path does not wait for a writer (pread then
    // fails on it, and map_file refuses it with its own message).
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return 0;
    }
    let fd = Fd(fd);
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is a valid writable buffer of the given length.
    let n = unsafe { libc::pread(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let at = std::mem::offset_of!(Header, master);
    if n != buf.len() as isize || buf[..8] != MAGIC || u16::from_le_bytes([buf[8], buf[9]]) != LAYOUT_MAJOR {
        return 0;
    }
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

fn map_file_unowned(path: &Path, params: Params, reset: bool) -> Result<(Region, Opened), Error> {
    let off = params.offsets();
    let c = cpath(path)?;
    // Before anything else, even a reset: never replace or join another nginx's region.
    crate::store::check_master(recorded_master(&c), path)?;
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
                    let r = Region::new(base, off.total as usize, path, params, off);
                    r.check_counters()?;
                    return Ok((r, Opened::Attached));
                }
                Err(why) => recreated = Some(why),
            }
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOENT) => {}
                Some(libc::ELOOP) => {
                    return Err(Error::Io(format!(
                        "\"{}\" is a symbolic link; refusing it",
                        path.display()
                    )))
                }
                _ => return Err(Error::Io(format!("cannot open \"{}\": {e}", path.display()))),
            }
        }
    } else if path.exists() {
        recreated = Some((ORIGIN_RESET, "the reset option was given".to_string()));
    }
    let origin = recreated.as_ref().map_or(ORIGIN_NEW, |r| r.0);
    let (base, len) = create(path, &c, &params, &off, origin)?;
    let r = Region::new(base, len, path, params, off);
    Ok((r, recreated.map_or(Opened::Created, |r| Opened::Recreated(r.1))))
}

/// Reads the header of an existing file and compares every constant field with
/// what `params` would build. Returns why the file cannot be used.
fn validate_existing(fd: libc::c_int, size: u64, params: &Params, off: &Offsets) -> Result<(), (u32, String)> {
    if size < HEADER_BYTES {
        return Err((ORIGIN_BAD_FILE, format!("the file is {size} bytes, shorter than a header")));
    }
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is a valid writable buffer of the given length.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err((ORIGIN_BAD_FILE, "the header could not be read".to_string()));
    }
    let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
    if buf[..8] != MAGIC {
        return Err((ORIGIN_BAD_FILE, "wrong magic: not a shmetrics region".to_string()));
    }
    if u16_at(8) != LAYOUT_MAJOR {
        return Err((ORIGIN_LAYOUT, format!("layout version {} is not ours ({LAYOUT_MAJOR})", u16_at(8))));
    }
    let want = [
        ("header_size", u32_at(12) as u64, std::mem::size_of::<Header>() as u64, ORIGIN_BAD_FILE),
        // The configured sizes before total_size, which follows from them: the
        // reason then names the option that changed.
        ("max_series", u32_at(24) as u64, params.max_series as u64, ORIGIN_SIZES),
        ("max_families", u32_at(28) as u64, params.max_families as u64, ORIGIN_SIZES),
        ("max_slots", u32_at(32) as u64, params.max_slots as u64, ORIGIN_SIZES),
        ("max_label_bytes", u32_at(36) as u64, params.max_label_bytes as u64, ORIGIN_SIZES),
        ("max_cells", u32_at(40) as u64, params.max_cells as u64, ORIGIN_SIZES),
        ("arena_bytes", u64_at(56), params.arena_bytes, ORIGIN_SIZES),
        ("total_size", u64_at(16), off.total, ORIGIN_SIZES),
    ];
    for (name, have, want, origin) in want {
        if have != want {
            return Err((origin, format!("{name} is {have} in the file, {want} in the configuration")));
        }
    }
    let offs = [
        u64_at(72),
        u64_at(80),
        u64_at(88),
        u64_at(96),
        u64_at(104),
        u64_at(112),
        u64_at(120),
    ];
    let want_offs = [off.slots, off.families, off.family_index, off.series, off.series_index, off.arena, off.cells];
    if offs != want_offs || u32_at(44) != off.series_index_cap || u32_at(48) != off.family_index_cap {
        return Err((ORIGIN_BAD_FILE, "section offsets differ from this build's".to_string()));
    }
    if size != off.total {
        return Err((ORIGIN_BAD_FILE, format!("the file is {size} bytes, the header says {}", off.total)));
    }
    Ok(())
}

fn mmap(fd: libc::c_int, len: usize, path: &Path) -> Result<*mut u8, Error> {
    // SAFETY: mapping `len` bytes of a file we checked is at least `len` long.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
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

/// Builds a new file next to `path` and renames it into place, so that a process
/// opening `path` concurrently sees either the old file or a complete new one.
fn create(path: &Path, c: &CString, params: &Params, off: &Offsets, origin: u32) -> Result<(*mut u8, usize), Error> {
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
    h.created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
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
    Ok((base, off.total as usize))
}

impl Region {
    fn new(base: *mut u8, len: usize, path: &Path, params: Params, off: Offsets) -> Region {
        Region {
            base,
            len,
            path: path.to_path_buf(),
            params,
            off,
            my_slot: AtomicU64::new(0),
            label_cache: Mutex::new(Vec::new()),
            scan: Mutex::new(crate::render::Scan::default()),
            error_metric: Mutex::new(Vec::new()),
        }
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

    pub fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (page aligned, ≥ HEADER_BYTES long).
        unsafe { &*(self.base as *const Header) }
    }

    /// # Safety
    /// `off + count * size_of::<T>()` must lie inside the mapping and `off` be aligned for `T`.
    unsafe fn at<T>(&self, off: u64, i: u64) -> &T {
        debug_assert!(off + (i + 1) * std::mem::size_of::<T>() as u64 <= self.len as u64);
        &*(self.base.add((off + i * std::mem::size_of::<T>() as u64) as usize) as *const T)
    }

    /// Slot `i`'s ownership record; `i < max_slots`.
    pub fn slot(&self, i: u32) -> &Slot {
        assert!(i < self.params.max_slots);
        // SAFETY: the slots section holds max_slots 64-byte records (offsets()).
        unsafe { self.at(self.off.slots, i as u64) }
    }

    /// Family `i`; `i < max_families`.
    pub fn family(&self, i: u32) -> &Family {
        assert!(i < self.params.max_families);
        // SAFETY: the families section holds max_families records.
        unsafe { self.at(self.off.families, i as u64) }
    }

    pub fn family_index(&self, i: u32) -> &AtomicU32 {
        // SAFETY: masked by the caller to < family_index_cap, the section's length.
        unsafe { self.at(self.off.family_index, (i & (self.off.family_index_cap - 1)) as u64) }
    }

    /// Series `i`; `i < max_series`.
    pub fn series(&self, i: u32) -> &Series {
        assert!(i < self.params.max_series);
        // SAFETY: the series section holds max_series records.
        unsafe { self.at(self.off.series, i as u64) }
    }

    pub fn series_index(&self, i: u32) -> &AtomicU32 {
        // SAFETY: masked to < series_index_cap, the section's length.
        unsafe { self.at(self.off.series_index, (i & (self.off.series_index_cap - 1)) as u64) }
    }

    /// Bytes `off..off+len` of the arena, or `None` if that is outside it.
    pub fn arena(&self, off: u32, len: u32) -> Option<&[u8]> {
        let end = off as u64 + len as u64;
        if end > self.params.arena_bytes {
            return None;
        }
        // SAFETY: bounds checked just above against the arena's size; published
        // arena bytes are never written again.
        Some(unsafe { std::slice::from_raw_parts(self.base.add((self.off.arena + off as u64) as usize), len as usize) })
    }

    /// Raw pointer to arena offset `off` (for writing before publication).
    ///
    /// # Safety
    /// `off + len` must be within the arena and the bytes allocated to the caller.
    pub unsafe fn arena_mut(&self, off: u32) -> *mut u8 {
        self.base.add((self.off.arena + off as u64) as usize)
    }

    /// Slot `slot`'s cell array (`max_cells` doubles).
    pub fn cells(&self, slot: u32) -> *mut f64 {
        assert!(slot < self.params.max_slots);
        // SAFETY: the cells section holds max_slots arrays of max_cells doubles.
        unsafe { self.base.add((self.off.cells + slot as u64 * self.params.max_cells as u64 * 8) as usize).cast() }
    }

    /// Reads one cell of one slot. Writers store whole 8-byte words (LuaJIT's
    /// `movsd`, our `AtomicU64::store`), so a relaxed 8-byte load never tears.
    #[inline]
    pub fn cell(&self, slot: u32, idx: u32) -> f64 {
        debug_assert!(idx < self.params.max_cells);
        // SAFETY: `idx < max_cells` (callers check cell + ncells against max_cells),
        // the cell is 8-aligned inside the mapping, and AtomicU64 has f64's layout.
        let a = unsafe { &*(self.cells(slot).add(idx as usize) as *const AtomicU64) };
        f64::from_bits(a.load(Ordering::Relaxed))
    }

    /// Adds to a cell of the calling process's own slot (single writer).
    #[inline]
    pub fn cell_add(&self, slot: u32, idx: u32, v: f64) {
        // SAFETY: as in `cell`; only the slot's owner writes it, so load+store is
        // not a lost update.
        let a = unsafe { &*(self.cells(slot).add(idx as usize) as *const AtomicU64) };
        let old = f64::from_bits(a.load(Ordering::Relaxed));
        a.store((old + v).to_bits(), Ordering::Relaxed);
    }
}
