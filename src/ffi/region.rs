//! Opening a region.

use std::ffi::c_char;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::*;
use crate::layout::Params;
use crate::region::joined_parent;
use crate::region::{self, Opened};

/// Opens (creates, attaches or reuses) the region file at `path`.
/// Returns one of `SHMETRICS_OPEN_*` and stores the handle in `*out`; for
/// `SHMETRICS_OPEN_RECREATED`, `shmetrics_last_error` says why the old file was replaced.
///
/// # Safety
/// `path` must point to `path_len` bytes; `opts` must be NULL or valid; `out` valid.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_open(
    path: *const c_char,
    path_len: usize,
    opts: *const shmetrics_options,
    out: *mut *const shmetrics_region,
) -> i32 {
    guard(|| {
        // SAFETY: caller contract.
        let path = unsafe { bytes(path, path_len) }
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Error::invalid("bad option \"path\": empty".to_string()))?;
        non_null(out, "out")?;
        let mut params = Params::default();
        let mut reset = false;
        let mut follow = false;
        // SAFETY: caller contract: NULL or a valid options struct.
        if let Some(o) = unsafe { opts.as_ref() } {
            let pick = |v: u32, d: u32| if v == 0 { d } else { v };
            params.max_series = pick(o.max_series, params.max_series);
            params.max_families = pick(o.max_families, params.max_families);
            params.max_slots = pick(o.max_slots, params.max_slots);
            params.max_label_bytes = pick(o.max_label_bytes, params.max_label_bytes);
            params.max_cells = o.max_cells;
            params.arena_bytes = o.arena_bytes;
            reset = o.flags & SHMETRICS_FLAG_RESET != 0;
            follow = o.flags & SHMETRICS_FLAG_FOLLOW_CONFIG != 0;
        }
        let path = Path::new(std::ffi::OsStr::from_bytes(path));
        let (r, how) = region::open(path, params, reset)?;
        if follow && how != Opened::Reused && !joined_parent() {
            r.begin_configuration();
        }
        // SAFETY: `out` checked non-NULL above.
        unsafe { *out = r };
        Ok(match how {
            Opened::Created => SHMETRICS_OPEN_CREATED,
            Opened::Attached => SHMETRICS_OPEN_ATTACHED,
            Opened::Reused => SHMETRICS_OPEN_REUSED,
            Opened::Recreated(why) => {
                set_last(&why);
                SHMETRICS_OPEN_RECREATED
            }
        })
    })
}
