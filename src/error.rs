//! Error codes of the C ABI and the messages behind them.

use std::cell::RefCell;

/// Everything that can go wrong, with the code it has at the ABI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A setup argument is wrong; the message names it.
    Invalid(String),
    /// A family is defined again differently; the message names both definitions.
    Conflict(String),
    /// Wrong number of label values.
    LabelCount(String),
    /// A label value is longer than `max_label_bytes`.
    LabelTooLong(String),
    /// The registry, the cells or the arena is full.
    Full(String),
    /// More live processes than worker slots.
    NoSlot(String),
    /// The region file could not be created, opened or trusted.
    Io(String),
    /// A panic was caught at the FFI boundary (a bug).
    Internal(String),
}

pub use crate::ffi::{
    SHMETRICS_E_CONFLICT as E_CONFLICT, SHMETRICS_E_FULL as E_FULL, SHMETRICS_E_INTERNAL as E_INTERNAL,
    SHMETRICS_E_INVALID as E_INVALID, SHMETRICS_E_IO as E_IO, SHMETRICS_E_LABEL_COUNT as E_LABEL_COUNT,
    SHMETRICS_E_LABEL_TOO_LONG as E_LABEL_TOO_LONG, SHMETRICS_E_NO_SLOT as E_NO_SLOT, SHMETRICS_OK as OK,
};

impl Error {
    pub fn invalid(msg: String) -> Error {
        Error::Invalid(msg)
    }

    pub fn code(&self) -> i32 {
        match self {
            Error::Invalid(_) => E_INVALID,
            Error::Conflict(_) => E_CONFLICT,
            Error::LabelCount(_) => E_LABEL_COUNT,
            Error::LabelTooLong(_) => E_LABEL_TOO_LONG,
            Error::Full(_) => E_FULL,
            Error::NoSlot(_) => E_NO_SLOT,
            Error::Io(_) => E_IO,
            Error::Internal(_) => E_INTERNAL,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Error::Invalid(m)
            | Error::Conflict(m)
            | Error::LabelCount(m)
            | Error::LabelTooLong(m)
            | Error::Full(m)
            | Error::NoSlot(m)
            | Error::Io(m)
            | Error::Internal(m) => m,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// What a caught panic says: "internal error (a bug in shmetrics)" and its
/// message, if it carried one.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("internal error (a bug in shmetrics): {what}")
}

/// A short fixed description of a code (NUL-terminated, for `shmetrics_strerror`).
pub fn strerror(code: i32) -> &'static str {
    match code {
        OK => "success\0",
        E_INVALID => "invalid argument\0",
        E_CONFLICT => "conflicting definition\0",
        E_LABEL_COUNT => "wrong number of label values\0",
        E_LABEL_TOO_LONG => "label value too long\0",
        E_FULL => "store full\0",
        E_NO_SLOT => "no free worker slot\0",
        E_IO => "region file error\0",
        E_INTERNAL => "internal error\0",
        _ => "unknown error code\0",
    }
}

thread_local! {
    static LAST: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Remembers the detailed message of the last failed call on this thread.
pub fn set_last(msg: &str) {
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        l.clear();
        l.push_str(msg);
    });
}

/// Runs `f` with the last message.
pub fn with_last<R>(f: impl FnOnce(&str) -> R) -> R {
    LAST.with(|l| f(&l.borrow()))
}
