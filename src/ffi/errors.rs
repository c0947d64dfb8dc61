//! The ABI version and error messages.

use std::ffi::c_char;

use super::{guard, strerror, with_last, SHMETRICS_ABI_VERSION};

/// The ABI version this library implements (`SHMETRICS_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn shmetrics_abi_version() -> u32 {
    guard(|| Ok(SHMETRICS_ABI_VERSION))
}

/// A fixed, NUL-terminated description of an error code.
#[no_mangle]
pub extern "C" fn shmetrics_strerror(code: i32) -> *const c_char {
    guard(|| Ok(strerror(code).as_ptr().cast()))
}

/// Copies the detailed message of this thread's last failed call into `buf`
/// (at most `cap` bytes, not NUL-terminated) and returns its full length.
///
/// # Safety
/// `buf` must be NULL or point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn shmetrics_last_error(buf: *mut c_char, cap: usize) -> usize {
    guard(|| {
        Ok(with_last(|m| {
            if !buf.is_null() {
                let n = m.len().min(cap);
                // SAFETY: `buf` has `cap >= n` writable bytes (caller contract).
                unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), buf.cast(), n) };
            }
            m.len()
        }))
    })
}
