//! The C ABI: the only place that knows C. This file holds the constants,
//! the options struct, the error codes (and the mapping of an [`Error`] to
//! them), and the one boundary helper, `guard`; the exported functions are
//! in one file per area: `errors` (version, messages), `region` (open),
//! `registry` (families and series), `slots` (slots and cells), `scrape`
//! (expositions).
//!
//! Conventions: functions return `int` codes (0 or a non-negative result on
//! success, a negative `SHMETRICS_E_*` code on failure, with a detailed message
//! from `shmetrics_last_error`); pointers are checked for NULL; every buffer
//! comes with its length; outputs are written only on success. Each body runs
//! inside `guard`, so a panic becomes `SHMETRICS_E_INTERNAL` and never unwinds
//! into LuaJIT (which would abort the nginx worker).

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{panic_message, Error};
use crate::layout::MAX_LABELS;
use crate::offload::Job;
use crate::region::Region;
use crate::scrape::Render;

// In the order of the header's functions (cbindgen follows the declarations).
mod errors;
mod region;
mod registry;

mod slots;

mod scrape;

pub use errors::*;
pub use region::*;
pub use registry::*;
pub use scrape::*;
pub use slots::*;

/// Version of this ABI; bumped on any incompatible change. The Lua module and
/// the header carry the same number and refuse to run with another.
pub const SHMETRICS_ABI_VERSION: u32 = 1;

/// Error codes: 0 is success, negative codes are errors (never reused).
pub const SHMETRICS_OK: i32 = 0;
pub const SHMETRICS_E_INVALID: i32 = -1;
pub const SHMETRICS_E_CONFLICT: i32 = -2;
pub const SHMETRICS_E_LABEL_COUNT: i32 = -3;
pub const SHMETRICS_E_LABEL_TOO_LONG: i32 = -4;
pub const SHMETRICS_E_FULL: i32 = -5;
pub const SHMETRICS_E_NO_SLOT: i32 = -6;
pub const SHMETRICS_E_IO: i32 = -7;
pub const SHMETRICS_E_INTERNAL: i32 = -8;

/// `shmetrics_open` results.
pub const SHMETRICS_OPEN_CREATED: i32 = 0;
pub const SHMETRICS_OPEN_ATTACHED: i32 = 1;
pub const SHMETRICS_OPEN_RECREATED: i32 = 2;
pub const SHMETRICS_OPEN_REUSED: i32 = 3;

/// `shmetrics_options.flags`: discard an existing file (not on reload).
pub const SHMETRICS_FLAG_RESET: u32 = 1;
/// `shmetrics_options.flags`: the exposition follows the configuration. When this
/// call maps the file (not on reload, nor in a binary upgrade's new master),
/// every stored family is hidden until a
/// definition names it again, so a family the configuration dropped disappears.
pub const SHMETRICS_FLAG_FOLLOW_CONFIG: u32 = 2;

/// Added to `shmetrics_family`'s `kind`: a stored family of the same name whose
/// definition differs (type, labels, buckets) is replaced instead of refused.
pub const SHMETRICS_FAMILY_REPLACE: u32 = 256;

/// Exposition formats for `shmetrics_render_open`: Prometheus text 0.0.4.
pub const SHMETRICS_FORMAT_TEXT: u32 = 0;
/// OpenMetrics 1.0.0.
pub const SHMETRICS_FORMAT_OPENMETRICS: u32 = 1;
/// The JSON view: user families with their series and values.
pub const SHMETRICS_FORMAT_JSON: u32 = 2;
/// Added to a `shmetrics_series` result that is the overflow series' cell.
pub const SHMETRICS_SERIES_OVERFLOW: i32 = 1_073_741_824;
/// `shmetrics_render_poll`: no piece is ready yet (yield, then poll again).
pub const SHMETRICS_RENDER_PENDING: i32 = 2;
/// Most pieces `shmetrics_render_start` lets wait in a job's queue.
pub const SHMETRICS_RENDER_MAX_DEPTH: u32 = 16;
/// Most family names one scrape may ask for.
pub const SHMETRICS_MAX_FILTER_NAMES: u32 = 1024;

/// Sizes of a region. Zero means the default.
#[repr(C)]
pub struct shmetrics_options {
    pub max_series: u32,
    pub max_families: u32,
    pub max_slots: u32,
    pub max_label_bytes: u32,
    pub max_cells: u32,
    pub flags: u32,
    pub arena_bytes: u64,
}

/// An opaque region handle (declared in the header by cbindgen.toml).
/// cbindgen:ignore
pub type shmetrics_region = Region;
/// An opaque exposition iterator.
/// cbindgen:ignore
pub type shmetrics_render = Render;
/// An opaque exposition rendered on the library's thread.
/// cbindgen:ignore
pub type shmetrics_render_job = Job;

impl Error {
    /// The `SHMETRICS_E_*` code of this error at the C ABI.
    pub fn code(&self) -> i32 {
        match self {
            Error::Invalid(_) => SHMETRICS_E_INVALID,
            Error::Conflict(_) => SHMETRICS_E_CONFLICT,
            Error::LabelCount(_) => SHMETRICS_E_LABEL_COUNT,
            Error::LabelTooLong(_) => SHMETRICS_E_LABEL_TOO_LONG,
            Error::Full(_) => SHMETRICS_E_FULL,
            Error::NoSlot(_) => SHMETRICS_E_NO_SLOT,
            Error::Io(_) => SHMETRICS_E_IO,
            Error::Internal(_) => SHMETRICS_E_INTERNAL,
        }
    }
}

/// A short fixed description of a code (NUL-terminated, for `shmetrics_strerror`).
fn strerror(code: i32) -> &'static str {
    match code {
        SHMETRICS_OK => "success\0",
        SHMETRICS_E_INVALID => "invalid argument\0",
        SHMETRICS_E_CONFLICT => "conflicting definition\0",
        SHMETRICS_E_LABEL_COUNT => "wrong number of label values\0",
        SHMETRICS_E_LABEL_TOO_LONG => "label value too long\0",
        SHMETRICS_E_FULL => "store full\0",
        SHMETRICS_E_NO_SLOT => "no free worker slot\0",
        SHMETRICS_E_IO => "region file error\0",
        SHMETRICS_E_INTERNAL => "internal error\0",
        _ => "unknown error code\0",
    }
}

thread_local! {
    /// The detailed message of this thread's last failed call.
    static LAST: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Remembers the detailed message of the last failed call on this thread.
fn set_last(msg: &str) {
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        l.clear();
        l.push_str(msg);
    });
}

/// Runs `f` with the last message.
fn with_last<R>(f: impl FnOnce(&str) -> R) -> R {
    LAST.with(|l| f(&l.borrow()))
}

/// What an exported function returns when its body fails.
trait Outcome {
    fn failed(e: &Error) -> Self;
}

/// A code: the error's, with its message kept for `shmetrics_last_error`.
impl Outcome for i32 {
    fn failed(e: &Error) -> i32 {
        set_last(e.message());
        e.code()
    }
}

/// A length or a count: 0.
impl Outcome for usize {
    fn failed(_: &Error) -> usize {
        0
    }
}

impl Outcome for u32 {
    fn failed(_: &Error) -> u32 {
        0
    }
}

/// A pointer: NULL.
impl<T> Outcome for *const T {
    fn failed(_: &Error) -> *const T {
        std::ptr::null()
    }
}

impl<T> Outcome for *mut T {
    fn failed(_: &Error) -> *mut T {
        std::ptr::null_mut()
    }
}

/// Nothing to return.
impl Outcome for () {
    fn failed(_: &Error) {}
}

/// The boundary every exported function's body runs in: an `Err` becomes the
/// function's failure value ([`Outcome`]: a code with its message recorded,
/// 0 or NULL), and a panic becomes `SHMETRICS_E_INTERNAL` (or 0, NULL) with
/// its message recorded, instead of unwinding into LuaJIT (a panic escaping
/// `extern "C"` aborts the process: an nginx worker).
fn guard<T: Outcome>(f: impl FnOnce() -> Result<T, Error>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => T::failed(&e),
        Err(p) => {
            let msg = panic_message(&*p);
            set_last(&msg);
            T::failed(&Error::Internal(msg))
        }
    }
}

/// `Err` naming argument `arg` when `p` is NULL.
fn non_null<T>(p: *const T, arg: &str) -> Result<(), Error> {
    if p.is_null() {
        return Err(Error::invalid(format!("bad argument \"{arg}\": NULL")));
    }
    Ok(())
}

/// # Safety
/// `p` must be NULL or point to `len` readable bytes.
unsafe fn bytes<'a>(p: *const c_char, len: usize) -> Option<&'a [u8]> {
    if p.is_null() {
        return if len == 0 { Some(&[]) } else { None };
    }
    // SAFETY: non-NULL here; `len` readable bytes by the caller's contract.
    Some(unsafe { std::slice::from_raw_parts(p.cast(), len) })
}

/// # Safety
/// `ptrs` and `lens` must be NULL or point to `n` entries, each pointer to its length in bytes.
unsafe fn byte_list<'a>(
    ptrs: *const *const c_char,
    lens: *const usize,
    n: u32,
    arg: &str,
) -> Result<Vec<&'a [u8]>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if n as usize > MAX_LABELS {
        return Err(Error::LabelCount(format!("{n} {arg}; at most {MAX_LABELS}")));
    }
    if ptrs.is_null() || lens.is_null() {
        return Err(Error::invalid(format!("bad argument \"{arg}\": NULL")));
    }
    (0..n as usize)
        .map(|i| {
            // SAFETY: `i < n` entries in both arrays, each pointer to its length (caller contract).
            unsafe { bytes(*ptrs.add(i), *lens.add(i)) }
                .ok_or_else(|| Error::invalid(format!("bad argument \"{arg}\": entry {} is NULL", i + 1)))
        })
        .collect()
}

/// # Safety
/// `r` must be NULL or a handle returned by `shmetrics_open`.
unsafe fn region_arg<'a>(r: *const Region) -> Result<&'a Region, Error> {
    // SAFETY: NULL or a live handle (caller contract); handles are never freed.
    unsafe { r.as_ref() }.ok_or_else(|| Error::invalid("bad argument \"region\": NULL".to_string()))
}
