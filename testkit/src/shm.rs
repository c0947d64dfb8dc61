//! Region files of tests: unique names in `/dev/shm` removed when done, a second
//! writable mapping of a region file (what another process, or damage, writes), a
//! directory copy, and a small deterministic generator.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `/dev/shm/shmetrics-<name>-<pid>`: unique per test (the caller's `name`) and per
/// process; removed first if a crashed run left it.
pub fn shm_path(name: &str) -> PathBuf {
    let path = PathBuf::from(format!("/dev/shm/shmetrics-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A region file path of one test, removed when dropped.
pub struct Shm {
    pub path: PathBuf,
}

impl Shm {
    /// See [`shm_path`].
    pub fn new(name: &str) -> Shm {
        Shm { path: shm_path(name) }
    }

    /// The path's bytes, as the C ABI takes it.
    pub fn bytes(&self) -> &[u8] {
        self.path.as_os_str().as_encoded_bytes()
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copies the directory tree `from` into `to` (created if needed).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A whole file mapped read-write and shared: writes land in the file that the
/// library (or nginx) maps too, as another process's would.
pub struct FileMap {
    pub base: *mut u8,
    pub len: usize,
}

impl FileMap {
    pub fn open(path: &Path) -> FileMap {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a shared mapping of a file we opened read-write, `len` bytes (its
        // size); the mapping outlives the descriptor, which is closed on return.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap {}", path.display());
        FileMap { base: p.cast(), len }
    }

    /// The region header at the start of the file.
    pub fn header(&self) -> &shmetrics::layout::Header {
        assert!(self.len >= std::mem::size_of::<shmetrics::layout::Header>(), "{} bytes: no header", self.len);
        // SAFETY: the mapping is page-aligned and at least a header long (asserted);
        // the header's fields are plain integers and atomics, valid for any bytes.
        unsafe { &*(self.base as *const shmetrics::layout::Header) }
    }

    pub fn write_u32(&self, off: u64, v: u32) {
        assert!(off as usize + 4 <= self.len, "write_u32 at {off} of {} bytes", self.len);
        // SAFETY: in bounds (asserted), through our own mapping; unaligned store of plain bytes.
        unsafe { std::ptr::write_unaligned(self.base.add(off as usize) as *mut u32, v) };
    }

    pub fn write_u64(&self, off: u64, v: u64) {
        assert!(off as usize + 8 <= self.len, "write_u64 at {off} of {} bytes", self.len);
        // SAFETY: as write_u32.
        unsafe { std::ptr::write_unaligned(self.base.add(off as usize) as *mut u64, v) };
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A deterministic xorshift64 generator: the same sequence in every run.
pub struct XorShift(pub u64);

impl XorShift {
    #[allow(clippy::should_implement_trait)] // an endless generator, not an Iterator
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
