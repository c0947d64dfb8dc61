//! Expositions: rendered in the caller's thread, or on the render thread.

use std::ffi::c_char;

use super::*;
use crate::expo::Format;
use crate::offload::{self, Poll};
use crate::scrape::Filter;

/// Starts an exposition in `format` (`SHMETRICS_FORMAT_*`) of the families
/// named in `names`/`lens` (`n` of them, at most `SHMETRICS_MAX_FILTER_NAMES`;
/// a counter also matches without `_total`), or of every family when `n` is 0.
///
/// # Safety
/// `r` must be a region handle; `names`/`lens` hold `n` entries; `out` valid.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_open(
    r: *const shmetrics_region,
    format: u32,
    names: *const *const c_char,
    lens: *const usize,
    n: u32,
    out: *mut *mut shmetrics_render,
) -> i32 {
    guard(|| {
        non_null(out, "out")?;
        // SAFETY: caller contract, passed on.
        let args = unsafe { render_args(r, format, names, lens, n) }?;
        // SAFETY: `out` checked non-NULL above.
        unsafe { *out = Box::into_raw(Box::new(args.build())) };
        Ok(0)
    })
}

/// What a render was asked for, checked: the region, the format, the filter.
struct RenderArgs {
    region: &'static Region,
    format: u32,
    filter: Filter,
}

impl RenderArgs {
    fn build(self) -> Render {
        if self.format == SHMETRICS_FORMAT_JSON {
            Render::json(self.region, self.filter)
        } else {
            let fmt = if self.format == SHMETRICS_FORMAT_OPENMETRICS { Format::OpenMetrics } else { Format::Text004 };
            Render::with_filter(self.region, fmt, self.filter)
        }
    }
}

/// Checks the arguments `shmetrics_render_open` and `shmetrics_render_start` share.
///
/// # Safety
/// `r` must be NULL or a region handle; `names`/`lens` hold `n` entries.
unsafe fn render_args(
    r: *const shmetrics_region,
    format: u32,
    names: *const *const c_char,
    lens: *const usize,
    n: u32,
) -> Result<RenderArgs, Error> {
    // SAFETY: caller contract; regions are never freed ('static).
    let region: &'static Region = unsafe { &*(region_arg(r)? as *const Region) };
    // A file cut short or overwritten under us is not read (see check_mapped).
    region.check_mapped()?;
    if !matches!(format, SHMETRICS_FORMAT_TEXT | SHMETRICS_FORMAT_OPENMETRICS | SHMETRICS_FORMAT_JSON) {
        return Err(Error::invalid(format!("bad argument \"format\": {format}")));
    }
    let filter = if n == 0 {
        Filter::all()
    } else if n > SHMETRICS_MAX_FILTER_NAMES || names.is_null() || lens.is_null() {
        return Err(Error::invalid(format!("bad argument \"names\": NULL or more than {SHMETRICS_MAX_FILTER_NAMES}")));
    } else {
        let mut v = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            // SAFETY: caller contract: n entries, each pointer to its length.
            let name = unsafe { bytes(*names.add(i), *lens.add(i)) }
                .ok_or_else(|| Error::invalid(format!("bad argument \"names\": entry {} is NULL", i + 1)))?;
            v.push(name.to_vec());
        }
        Filter::names(v)
    };
    Ok(RenderArgs { region, format, filter })
}

/// Pages a JSON render: for every family, only its series `offset..offset +
/// limit` among those with a label value containing the `needle_len` bytes at
/// `needle` (every series when `needle_len` is 0), and the number of such series
/// as the family's `"series_count"`. Call after `shmetrics_render_open` with
/// `SHMETRICS_FORMAT_JSON`, before the first `shmetrics_render_next`.
///
/// # Safety
/// `it` from `shmetrics_render_open`, not closed; `needle` holds `needle_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_page(
    it: *mut shmetrics_render,
    offset: u64,
    limit: u64,
    needle: *const c_char,
    needle_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: caller contract: NULL or a live iterator.
        let it = unsafe { it.as_mut() }.ok_or_else(|| Error::invalid("bad argument \"it\": NULL".into()))?;
        // SAFETY: caller contract: `needle_len` bytes at `needle`.
        let needle = unsafe { bytes(needle, needle_len) }
            .ok_or_else(|| Error::invalid("bad argument \"needle\": NULL".into()))?;
        it.set_page(offset, limit, needle).map_err(Error::invalid)?;
        Ok(SHMETRICS_OK)
    })
}

/// Renders the next piece (about `hint` bytes). Returns 1 and sets `*chunk`/`*len`
/// (valid until the next call on `it`), or 0 when the exposition is complete.
///
/// # Safety
/// `it` from `shmetrics_render_open`, not closed; `chunk`/`len` valid.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_next(
    it: *mut shmetrics_render,
    hint: usize,
    chunk: *mut *const c_char,
    len: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: caller contract: NULL or a live iterator.
        let it = unsafe { it.as_mut() }.ok_or_else(|| Error::invalid("bad argument \"it\": NULL".into()))?;
        non_null(chunk, "chunk")?;
        non_null(len, "len")?;
        if !it.next_chunk(hint.max(1)) {
            return Ok(0);
        }
        // SAFETY: checked non-NULL above.
        unsafe { hand_out(&it.buf, chunk, len) };
        Ok(1)
    })
}

/// Frees an exposition iterator. NULL is ignored.
///
/// # Safety
/// `it` from `shmetrics_render_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_close(it: *mut shmetrics_render) {
    // SAFETY: caller contract: NULL or from `shmetrics_render_open`, freed once.
    guard(|| unsafe { free(it) })
}

/// Starts an exposition, as `shmetrics_render_open` does, rendered on this
/// process's render thread (started by the first call in the process) in
/// pieces of about `hint` bytes, at most `depth` of them (1 to
/// `SHMETRICS_RENDER_MAX_DEPTH`) waiting at a time; take them with
/// `shmetrics_render_poll`. Call it in the process that serves the scrape (an
/// nginx worker), never in one that forks afterwards (the master).
///
/// # Safety
/// As `shmetrics_render_open`.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_start(
    r: *const shmetrics_region,
    format: u32,
    names: *const *const c_char,
    lens: *const usize,
    n: u32,
    hint: usize,
    depth: u32,
    out: *mut *mut shmetrics_render_job,
) -> i32 {
    guard(|| {
        non_null(out, "out")?;
        if depth == 0 || depth > SHMETRICS_RENDER_MAX_DEPTH {
            return Err(Error::invalid(format!("bad argument \"depth\": {depth}; 1 to {SHMETRICS_RENDER_MAX_DEPTH}")));
        }
        // SAFETY: caller contract, passed on.
        let args = unsafe { render_args(r, format, names, lens, n) }?;
        let job = Job::start(Box::new(move || args.build()), hint, depth as usize).map_err(Error::Internal)?;
        // SAFETY: `out` checked non-NULL above.
        unsafe { *out = Box::into_raw(Box::new(job)) };
        Ok(0)
    })
}

/// Takes the next piece of a job: returns 1 and sets `*chunk`/`*len` (valid
/// until the next call on `it`), `SHMETRICS_RENDER_PENDING` when it is not
/// rendered yet, 0 when the exposition is complete, or a negative code.
/// Never blocks (but for a lock the render thread holds only to move a piece).
///
/// # Safety
/// `it` from `shmetrics_render_start`, not stopped; `chunk`/`len` valid.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_poll(
    it: *mut shmetrics_render_job,
    chunk: *mut *const c_char,
    len: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: caller contract: NULL or a live iterator.
        let it = unsafe { it.as_mut() }.ok_or_else(|| Error::invalid("bad argument \"it\": NULL".into()))?;
        non_null(chunk, "chunk")?;
        non_null(len, "len")?;
        match it.poll() {
            Poll::Piece => {
                // SAFETY: checked non-NULL above.
                unsafe { hand_out(&it.current, chunk, len) };
                Ok(1)
            }
            Poll::Pending => Ok(SHMETRICS_RENDER_PENDING),
            Poll::Done => Ok(0),
            Poll::Failed(m) => Err(Error::Internal(m)),
        }
    })
}

/// Stops a job (complete or not) and frees it: the render thread drops its
/// work on it before rendering anything else. NULL is ignored.
///
/// # Safety
/// `it` from `shmetrics_render_start`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_render_stop(it: *mut shmetrics_render_job) {
    // SAFETY: caller contract: NULL or from `shmetrics_render_start`, freed once.
    guard(|| unsafe { free(it) })
}

/// Jobs of this process the render thread still holds (started, and neither
/// finished nor dropped after a stop): 0 when no scrape is in progress.
#[no_mangle]
pub extern "C" fn shmetrics_render_jobs() -> u32 {
    guard(|| Ok(offload::live_jobs().min(u32::MAX as usize) as u32))
}

/// Hands a piece out through the caller's `chunk`/`len`.
///
/// # Safety
/// `chunk` and `len` are valid for writes (checked non-NULL by the caller).
unsafe fn hand_out(piece: &[u8], chunk: *mut *const c_char, len: *mut usize) {
    // SAFETY: caller contract.
    unsafe {
        *chunk = piece.as_ptr().cast();
        *len = piece.len();
    }
}

/// Frees a handle made with `Box::into_raw`; NULL is ignored.
///
/// # Safety
/// `p` is NULL or came from `Box::into_raw` of a `T`, and is freed once.
unsafe fn free<T>(p: *mut T) -> Result<(), Error> {
    if !p.is_null() {
        // SAFETY: caller contract.
        drop(unsafe { Box::from_raw(p) });
    }
    Ok(())
}
