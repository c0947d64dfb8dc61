//! What can go wrong, with a message for each; independent of the C interface
//! (`ffi` maps an [`Error`] to its code).

/// Everything that can go wrong.
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

impl Error {
    pub fn invalid(msg: String) -> Error {
        Error::Invalid(msg)
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
