//! The shared-memory layout, version 1. `docs/layout.md` has the byte table.
//!
//! Every type here is `repr(C)` with explicit alignment and a compile-time size
//! assertion, because the same bytes are read by processes that may run another
//! build of this library (across a reload the old `.so` keeps running; across a
//! restart the file may come from an older release). Any change to a size, an
//! offset or the meaning of a field bumps [`LAYOUT_MAJOR`]; a field added in
//! space that was zero before bumps [`LAYOUT_MINOR`].

use std::sync::atomic::{AtomicU32, AtomicU64};

/// First eight bytes of every region file.
pub const MAGIC: [u8; 8] = *b"SHMETRC\x01";
/// Incompatible layout changes.
pub const LAYOUT_MAJOR: u16 = 1;
/// Compatible additions (readers of an older minor ignore new fields).
pub const LAYOUT_MINOR: u16 = 1;

/// Cells at the start of every slot that do not belong to a series.
pub const RESERVED_CELLS: u32 = 32;
/// Reserved cell: the per-slot sequence behind `gauge:set` stamps.
pub const CELL_GAUGE_SEQ: u32 = 0;
/// Reserved cells `CELL_ERRORS + reason`: hot-path errors by reason.
pub const CELL_ERRORS: u32 = 8;
/// Slot 0 is not owned by any process: it holds the gauges' shared set stamps.
pub const SHARED_SLOT: u32 = 0;
/// Gauge `set` stamps are `seq * STAMP_SLOTS + slot`; so at most this many slots.
pub const STAMP_SLOTS: u32 = 4096;

/// Labels per metric (the users' own rule).
pub const MAX_LABELS: usize = 10;
/// Finite histogram buckets per metric.
pub const MAX_BUCKETS: usize = 128;
/// Longest metric or label name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest HELP text, in bytes.
pub const MAX_HELP_BYTES: usize = 4096;

/// A metric kind, as stored (a `u32`) in [`Family::kind`] and passed through the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// The raw values of [`Kind`] (what the file and the C ABI carry).
pub const KIND_COUNTER: u32 = Kind::Counter as u32;
pub const KIND_GAUGE: u32 = Kind::Gauge as u32;
pub const KIND_HISTOGRAM: u32 = Kind::Histogram as u32;

impl Kind {
    /// The kind a raw value read from the file (or passed through the ABI)
    /// names, or `None`: a file may hold any bytes.
    #[inline]
    pub fn from_raw(raw: u32) -> Option<Kind> {
        match raw {
            KIND_COUNTER => Some(Kind::Counter),
            KIND_GAUGE => Some(Kind::Gauge),
            KIND_HISTOGRAM => Some(Kind::Histogram),
            _ => None,
        }
    }

    /// The name both exposition formats and the JSON view give the kind (`# TYPE`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    /// Cells a series of this kind uses in each slot: 1 for a counter,
    /// [`GAUGE_CELLS`] for a gauge, the `nbounds` finite buckets plus `+Inf`
    /// plus the sum for a histogram (`nbounds` clamped to [`MAX_BUCKETS`]).
    #[inline]
    pub fn cells(self, nbounds: u32) -> u32 {
        match self {
            Kind::Counter => 1,
            Kind::Gauge => GAUGE_CELLS,
            Kind::Histogram => nbounds.min(MAX_BUCKETS as u32) + 2,
        }
    }
}

/// The name of a raw kind for messages: its [`Kind::name`], or "unknown".
pub fn kind_name(raw: u32) -> &'static str {
    Kind::from_raw(raw).map_or("unknown", Kind::name)
}

/// Cells per series of a raw kind ([`Kind::cells`]); an unknown kind (a
/// corrupt record, refused where records are checked) is taken as a histogram's.
pub fn cells_of(kind: u32, nbounds: u32) -> u32 {
    Kind::from_raw(kind).unwrap_or(Kind::Histogram).cells(nbounds)
}

/// Cells a gauge series uses in each slot (see the `GAUGE_*` offsets).
pub const GAUGE_CELLS: u32 = 4;

/// The gauge cell protocol: offsets from a gauge series' first cell.
///
/// In each writer's own slot: the value of its last `set`
/// ([`GAUGE_SET_VALUE`]) and that set's stamp ([`GAUGE_SET_STAMP`]); the sum of
/// its `inc`s since the last set of any writer ([`GAUGE_DELTA`]) and the stamp
/// of that set ([`GAUGE_DELTA_STAMP`]). In [`SHARED_SLOT`], at
/// [`GAUGE_SHARED_STAMP`]: the stamp of the last set of any writer, stored last
/// by that set. A stamp is `seq * STAMP_SLOTS + slot`, `seq` from the writer's
/// [`CELL_GAUGE_SEQ`], so it names the slot whose set value is current.
///
/// The reader (`cells::gauge_value`): the current set's value, read from the
/// slot the shared stamp names, plus every slot's delta whose delta stamp
/// equals the shared stamp (deltas made since that set).
pub const GAUGE_SET_VALUE: u32 = 0;
pub const GAUGE_SET_STAMP: u32 = 1;
pub const GAUGE_DELTA: u32 = 2;
pub const GAUGE_DELTA_STAMP: u32 = 3;
/// In [`SHARED_SLOT`]: the stamp of the last set of the gauge.
pub const GAUGE_SHARED_STAMP: u32 = 0;
const _: () = assert!(GAUGE_DELTA_STAMP < GAUGE_CELLS && GAUGE_SHARED_STAMP < GAUGE_CELLS);

/// Hot-path error reasons; `CELL_ERRORS + reason` in each slot.
pub const REASONS: [&str; 11] = [
    "label_count",
    "label_type",
    "label_too_long",
    "value_type",
    "value_nan",
    "value_negative",
    "value_infinite",
    "store_full",
    "no_slot",
    "not_in_worker",
    "internal",
];
pub const REASON_NO_SLOT: u32 = 8;
/// Reserved cell (layout 1.1): errors reported with the Lua `log_error`, which
/// the error counter (`shmetrics_error_metric`) adds to the hot-path errors.
pub const CELL_LOG_ERRORS: u32 = 19;
const _: () = assert!(CELL_ERRORS as usize + REASONS.len() <= CELL_LOG_ERRORS as usize);
const _: () = assert!(CELL_LOG_ERRORS < RESERVED_CELLS);

/// Reserved cells `CELL_CORRUPT + what`: records of a corrupt file that this
/// process found and skipped, by what failed a check (layout 1.1).
pub const CELL_CORRUPT: u32 = 28;
/// What a corrupt record was: label values of `shmetrics_region_corrupt_total{what}`.
pub const CORRUPT_WHAT: [&str; 4] = ["family", "series", "index", "header"];
pub const CORRUPT_FAMILY: u32 = 0;
pub const CORRUPT_SERIES: u32 = 1;
pub const CORRUPT_INDEX: u32 = 2;
pub const CORRUPT_HEADER: u32 = 3;
const _: () = assert!(CELL_ERRORS as usize + REASONS.len() <= CELL_CORRUPT as usize);
const _: () = assert!(CELL_CORRUPT as usize + CORRUPT_WHAT.len() <= RESERVED_CELLS as usize);

/// The state of a family or series record ([`Family::state`], [`Series::state`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Claimed and being written; not published yet (or its creator died).
    Writing = 0,
    /// Published and complete; what lookups and the exposition take.
    Live = 1,
    /// Deleted by `del`/`reset`: skipped, never reused.
    Deleted = 2,
    /// Lost a publication race or was replaced: skipped, never reused.
    Orphan = 3,
}

/// The raw values of [`State`] (what the records' atomics hold).
pub const STATE_WRITING: u32 = State::Writing as u32;
pub const STATE_LIVE: u32 = State::Live as u32;
pub const STATE_DELETED: u32 = State::Deleted as u32;
pub const STATE_ORPHAN: u32 = State::Orphan as u32;

impl State {
    /// The state a raw value read from the file names, or `None`.
    #[inline]
    pub fn from_raw(raw: u32) -> Option<State> {
        match raw {
            STATE_WRITING => Some(State::Writing),
            STATE_LIVE => Some(State::Live),
            STATE_DELETED => Some(State::Deleted),
            STATE_ORPHAN => Some(State::Orphan),
            _ => None,
        }
    }
}

/// The region header: constants written once by the creator, then counters.
///
/// Fields up to `created_unix` never change after creation. Counters sit on their
/// own cache line; they change only when a family or series is created (cold path).
#[repr(C, align(64))]
pub struct Header {
    pub magic: [u8; 8],
    pub major: u16,
    pub minor: u16,
    pub header_size: u32,
    pub total_size: u64,
    pub max_series: u32,
    pub max_families: u32,
    pub max_slots: u32,
    pub max_label_bytes: u32,
    pub max_cells: u32,
    pub series_index_cap: u32,
    pub family_index_cap: u32,
    pub _pad0: u32,
    pub arena_bytes: u64,
    pub hash_seed: u64,
    pub off_slots: u64,
    pub off_families: u64,
    pub off_family_index: u64,
    pub off_series: u64,
    pub off_series_index: u64,
    pub off_arena: u64,
    pub off_cells: u64,
    pub created_unix: u64,
    /// Why this file was made: one of the `ORIGIN_*` values.
    pub origin: u32,
    pub _pad1: [u8; 52],
    // 192: counters.
    pub families_used: AtomicU32,
    pub series_used: AtomicU32,
    pub cells_used: AtomicU32,
    /// Layout 1.1: which configuration the exposition follows; bumped each time a
    /// new nginx master maps the region (a start, a binary upgrade; not a reload).
    /// A family is shown only while its [`Family::epoch`] equals it.
    pub config_epoch: AtomicU32,
    pub arena_used: AtomicU64,
    /// Updates dropped because no slot was free (no slot to count them in).
    pub no_slot_errors: AtomicU64,
    /// Layout 1.1: the owner word (as [`Slot::owner`]) of the nginx master that
    /// maps the region; 0 if none recorded. Another live master is refused.
    pub master: AtomicU64,
    /// Corrupt records found by processes that had no slot to count them in
    /// (layout 1.1; zero in files of 1.0).
    pub corrupt_unslotted: AtomicU64,
    pub _pad3: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<Header>() == 256);
const _: () = assert!(std::mem::align_of::<Header>() == 64);
// Layout 1.1 fields sit where 1.0 had zero padding (docs/layout.md §2.3).
const _: () = assert!(std::mem::offset_of!(Header, config_epoch) == 204);
const _: () = assert!(std::mem::offset_of!(Header, master) == 224);
const _: () = assert!(std::mem::offset_of!(Header, corrupt_unslotted) == 232);

/// [`Header::origin`]: no file was there.
pub const ORIGIN_NEW: u32 = 0;
/// It replaced a file that was not a region (magic, header or size wrong).
pub const ORIGIN_BAD_FILE: u32 = 1;
/// It replaced a region of another layout version (an upgrade).
pub const ORIGIN_LAYOUT: u32 = 2;
/// It replaced a region built with other sizes (a configuration change).
pub const ORIGIN_SIZES: u32 = 3;
/// It replaced a usable region because the `reset` option was given.
pub const ORIGIN_RESET: u32 = 4;
/// Label values of [`Header::origin`] in `shmetrics_region_replaced{reason}`.
pub const ORIGIN_NAMES: [&str; 5] = ["new", "bad_file", "layout", "sizes", "reset"];

/// Space reserved for the header; sections start after it.
pub const HEADER_BYTES: u64 = 4096;

/// One worker slot's ownership record.
///
/// `owner` packs `(start_time_low32 << 32) | pid`; 0 means never claimed. It is
/// changed only by compare-and-swap, so exactly one process owns a slot.
#[repr(C, align(64))]
pub struct Slot {
    pub owner: AtomicU64,
    /// How many processes have owned this slot (1 for the first owner).
    pub claims: AtomicU32,
    pub _pad: [u8; 52],
}
const _: () = assert!(std::mem::size_of::<Slot>() == 64);

/// One metric family. Written by its creator before publication, then read-only
/// except the atomics (`state`, `gen`, `max_series`, `help`, `dropped`,
/// `series_count`, `overflowed`).
#[repr(C, align(64))]
pub struct Family {
    pub state: AtomicU32,
    /// Bumped by `del` and `reset`; workers compare it with the generation their
    /// label cache was built under and drop the cache when it moved.
    pub gen: AtomicU32,
    pub kind: u32,
    pub nlabels: u32,
    pub nbounds: u32,
    pub ncells: u32,
    pub hash: u32,
    pub name_off: u32,
    pub name_len: u32,
    /// Arena offset of `nlabels` pairs `(u32 offset, u32 length)` of label names.
    pub labels_off: u32,
    /// Arena offset of `nbounds` finite `f64` bucket bounds, 8-aligned.
    pub bounds_off: u32,
    /// The family's own cardinality limit (0: none); beyond it, new label sets
    /// are counted in the overflow series. Replaced by a redefinition.
    pub max_series: AtomicU32,
    /// HELP text as `(arena offset << 32) | length`; replaced whole when a
    /// redefinition (after a reload) brings a new text.
    pub help: AtomicU64,
    /// Series not created because the store was full.
    pub dropped: AtomicU64,
    /// Live series of this family, the overflow series excluded.
    pub series_count: AtomicU32,
    /// Layout 1.1: the [`Header::config_epoch`] of the configuration that last
    /// defined this family; the family is shown only while the two are equal.
    pub epoch: AtomicU32,
    /// Updates sent to the overflow series because of `max_series`.
    pub overflowed: AtomicU64,
    pub _pad1: [u8; 48],
}
const _: () = assert!(std::mem::size_of::<Family>() == 128);
const _: () = assert!(std::mem::offset_of!(Family, epoch) == 68);

/// Label value of every label of a family's overflow series.
pub const OVERFLOW_VALUE: &[u8] = b"__overflow__";
/// Set in a `shmetrics_series` result when the update goes to the overflow series.
pub const SERIES_OVERFLOW: u32 = 1 << 30;

/// One series: a family plus label values, and where its cells start.
#[repr(C, align(8))]
pub struct Series {
    pub state: AtomicU32,
    pub family: u32,
    /// Arena offset of the encoded label values: per value, a `u32` LE length then the bytes.
    pub key_off: u32,
    pub key_len: u32,
    pub cell: u32,
    pub hash: u32,
}
const _: () = assert!(std::mem::size_of::<Series>() == 24);

/// Sizes a region is built with; all of them are stored in the header and must
/// match for an existing file to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub max_series: u32,
    pub max_families: u32,
    pub max_slots: u32,
    pub max_label_bytes: u32,
    pub max_cells: u32,
    pub arena_bytes: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            // 20,000 series, 8 cells each: 1.22 MiB of cells per worker process and
            // 4.7 MiB for the rest, so a default region fits Docker's 64 MiB
            // /dev/shm with dozens of workers (docs/layout.md §7 has the formula).
            max_series: 20_000,
            max_families: 1024,
            max_slots: 64,
            max_label_bytes: 1024,
            max_cells: 0,
            arena_bytes: 0,
        }
    }
}

/// Section offsets and total size derived from [`Params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub series_index_cap: u32,
    pub family_index_cap: u32,
    pub slots: u64,
    pub families: u64,
    pub family_index: u64,
    pub series: u64,
    pub series_index: u64,
    pub arena: u64,
    pub cells: u64,
    pub total: u64,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl Params {
    /// Fills the derived defaults: 8 cells and 128 arena bytes per series.
    pub fn resolved(mut self) -> Params {
        if self.max_cells == 0 {
            let cells = RESERVED_CELLS as u64 + self.max_series as u64 * 8;
            self.max_cells = cells.min(SERIES_OVERFLOW as u64 - 1) as u32;
        }
        if self.arena_bytes == 0 {
            self.arena_bytes = 64 * 1024 + self.max_series as u64 * 128;
        }
        self
    }

    /// The cardinality limit of a family defined without one of its own: a
    /// quarter of `max_series`, at least 1,000 (so small registries keep the
    /// plain "store full" behaviour). One family fed unbounded label values then
    /// fills its overflow series instead of every other family's room.
    pub fn default_family_cap(&self) -> u32 {
        (self.max_series / 4).max(1000)
    }

    /// Bytes of one slot's cell array.
    pub fn slot_bytes(&self) -> u64 {
        self.max_cells as u64 * 8
    }

    /// Bytes reserved when the file is created or attached: everything before the
    /// cells, and slot 0's cells (the gauges' shared stamps, written by every
    /// worker). Each writer process reserves [`slot_bytes`](Self::slot_bytes) more
    /// when it claims its slot.
    pub fn reserved_at_init(&self) -> u64 {
        self.offsets().cells + self.slot_bytes()
    }

    /// Checks the limits; returns the name of the offending option and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let p = self;
        if p.max_series == 0 || p.max_series > 1 << 28 {
            return Err(("max_series", format!("{} is not in 1..=268435456", p.max_series)));
        }
        if p.max_families == 0 || p.max_families > 1 << 20 {
            return Err(("max_families", format!("{} is not in 1..=1048576", p.max_families)));
        }
        if p.max_slots < 2 || p.max_slots > STAMP_SLOTS - 1 {
            return Err(("max_slots", format!("{} is not in 2..={}", p.max_slots, STAMP_SLOTS - 1)));
        }
        if p.max_label_bytes == 0 || p.max_label_bytes > 1 << 20 {
            return Err(("max_label_bytes", format!("{} is not in 1..=1048576", p.max_label_bytes)));
        }
        if p.max_cells <= RESERVED_CELLS || p.max_cells >= SERIES_OVERFLOW {
            return Err((
                "max_cells",
                format!("{} is not in {}..={}", p.max_cells, RESERVED_CELLS + 1, SERIES_OVERFLOW - 1),
            ));
        }
        if p.arena_bytes < 4096 || p.arena_bytes > u32::MAX as u64 {
            return Err(("arena_bytes", format!("{} is not in 4096..=4294967295", p.arena_bytes)));
        }
        let total = self.offsets().total;
        if total > 1 << 40 {
            return Err(("max_cells", format!("the region would need {total} bytes")));
        }
        Ok(())
    }

    /// Where each section starts. Every section is 64-byte aligned.
    pub fn offsets(&self) -> Offsets {
        let series_index_cap = (self.max_series as u64 * 2).next_power_of_two().max(16) as u32;
        let family_index_cap = (self.max_families as u64 * 2).next_power_of_two().max(16) as u32;
        let slots = HEADER_BYTES;
        let families = align_up(slots + self.max_slots as u64 * 64, 64);
        let family_index = align_up(families + self.max_families as u64 * 128, 64);
        let series = align_up(family_index + family_index_cap as u64 * 4, 64);
        let series_index = align_up(series + self.max_series as u64 * 24, 64);
        let arena = align_up(series_index + series_index_cap as u64 * 4, 64);
        let cells = align_up(arena + self.arena_bytes, 4096);
        let total = cells + self.max_slots as u64 * self.max_cells as u64 * 8;
        Offsets {
            series_index_cap,
            family_index_cap,
            slots,
            families,
            family_index,
            series,
            series_index,
            arena,
            cells,
            total,
        }
    }
}
