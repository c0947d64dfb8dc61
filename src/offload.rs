//! Rendering on a thread of the library, so that a scrape holds its nginx
//! worker's event loop only while it copies a finished piece.
//!
//! One render thread per process, started by the first [`Job::start`] in that
//! process (in nginx: the first scrape a worker serves, never in the master,
//! which the Lua module checks). Each job owns a queue of at most `depth`
//! finished pieces; the thread renders a piece for every job whose queue has
//! room, in turn, and sleeps when none has. The handler takes pieces with
//! [`Job::poll`] and yields to the event loop in between.
//!
//! Memory per concurrent scrape is bounded: `depth` queued pieces plus the one
//! handed out, each `hint` bytes plus at most one series' lines, besides the
//! renderer's list of series ids (4 bytes a series), which the synchronous path
//! has too.
//!
//! Stopping a job ([`Job::stop`], or dropping it) marks it closed: the thread
//! drops its renderer and queue before rendering anything else, so an abandoned
//! scrape costs at most the piece being rendered at that moment.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::scrape::Render;

/// What [`Job::poll`] found.
#[derive(Debug, PartialEq)]
pub enum Poll {
    /// A piece is in [`Job::current`].
    Piece,
    /// Not rendered yet: try again after yielding.
    Pending,
    /// The exposition is complete.
    Done,
    /// Rendering failed (a bug): the message.
    Failed(String),
}

/// Jobs whose renderer the thread still holds, in this process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Jobs started in this process whose renderer is not dropped yet.
pub fn live_jobs() -> usize {
    // Relaxed: a statistic for tests and diagnostics; nothing is published
    // through it.
    LIVE.load(Ordering::Relaxed)
}

/// A job's state shared between the handler and the thread.
#[derive(Default)]
struct Queue {
    pieces: VecDeque<Vec<u8>>,
    done: bool,
    failed: Option<String>,
    closed: bool,
}

/// A scrape rendered on the thread; the handler's side.
pub struct Job {
    queue: Arc<Mutex<Queue>>,
    pool: Arc<Pool>,
    /// The piece the last [`Job::poll`] returned (valid until the next call).
    pub current: Vec<u8>,
}

/// A job on the thread's side.
struct Task {
    queue: Arc<Mutex<Queue>>,
    /// Built on the thread (listing the series is work too); `None` before.
    make: Option<Box<dyn FnOnce() -> Render + Send>>,
    render: Option<Render>,
    hint: usize,
    depth: usize,
}

impl Drop for Task {
    fn drop(&mut self) {
        // Relaxed: see live_jobs.
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The render thread of one process: new tasks, and the signal that a queue
/// has room or a job was closed.
struct Pool {
    pid: u32,
    incoming: Mutex<Vec<Task>>,
    wake: Condvar,
    /// Set when the thread ended (it never does, short of a bug): its jobs
    /// fail instead of waiting forever, and the next job starts a new thread.
    dead: AtomicBool,
}

/// Marks the pool dead when the thread's loop ends, by return or by panic.
struct Obituary(Arc<Pool>);

impl Drop for Obituary {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `Job::poll`/`pool`; orders nothing
        // else (the flag alone is the message).
        self.0.dead.store(true, Ordering::Release);
    }
}

/// This process's pool. A pool inherited across `fork` (its thread did not
/// come along) is left alone, never locked: a lock its thread held at the
/// fork would stay held forever. The child starts its own.
static POOL: Mutex<Option<Arc<Pool>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a lock is held (caught by the FFI guard) leaves plain data
    // behind: nothing here has an invariant spanning a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pool() -> Result<Arc<Pool>, String> {
    let mut slot = lock(&POOL);
    let pid = std::process::id();
    // Acquire: see Obituary.
    if let Some(p) = slot.as_ref().filter(|p| p.pid == pid && !p.dead.load(Ordering::Acquire)) {
        return Ok(p.clone());
    }
    if let Some(stale) = slot.take() {
        std::mem::forget(stale);
    }
    let p =
        Arc::new(Pool { pid, incoming: Mutex::new(Vec::new()), wake: Condvar::new(), dead: AtomicBool::new(false) });
    spawn(p.clone())?;
    *slot = Some(p.clone());
    Ok(p)
}

/// Starts the thread with every signal blocked: nginx's handlers set flags
/// that only its own event loop reads, and a signal delivered to this thread
/// would not interrupt that loop's `epoll_wait` (a reload or a graceful stop
/// would wait for the next event). The mask is inherited from the thread that
/// spawns, so it is set around the spawn.
fn spawn(p: Arc<Pool>) -> Result<(), String> {
    // SAFETY: sigset_t is plain data; sigfillset initialises it fully and
    // pthread_sigmask only reads `all` and writes `old`, both live locals.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
    }
    let r = std::thread::Builder::new().name("shmetrics-render".into()).spawn(move || run(p));
    // SAFETY: restores the mask saved above; `old` is a live local.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r.map(|_| ()).map_err(|e| format!("cannot start the render thread: {e}"))
}

/// The thread's loop: take new tasks, drop closed ones, render one piece for
/// each task with room in its queue, sleep when there is none.
fn run(p: Arc<Pool>) {
    let _obituary = Obituary(p.clone());
    lower_priority();
    let mut tasks: Vec<Task> = Vec::new();
    loop {
        let mut gone = Vec::new();
        {
            let mut incoming = lock(&p.incoming);
            loop {
                tasks.append(&mut incoming);
                // Closed jobs leave the list here; they are freed below,
                // after the lock (a renderer holds a list of every series).
                let (keep, closed): (Vec<Task>, Vec<Task>) = tasks.drain(..).partition(|t| !lock(&t.queue).closed);
                tasks = keep;
                gone.extend(closed);
                // Checked under `incoming`'s lock, which every waker takes
                // before notifying: no wake-up is lost between check and wait.
                if tasks.iter().any(runnable) {
                    break;
                }
                if !gone.is_empty() {
                    break;
                }
                incoming = p.wake.wait(incoming).unwrap_or_else(|e| e.into_inner());
            }
        }
        drop(gone);
        for t in tasks.iter_mut() {
            if runnable(t) {
                step(t);
            }
        }
        tasks.retain(|t| {
            let q = lock(&t.queue);
            !q.closed && !q.done && q.failed.is_none()
        });
    }
}

/// Rendering gives way to request handling: the thread runs at a lower
/// priority (nice + 10) than the worker's event loop, which shares its CPUs
/// (it inherits the worker's affinity).
fn lower_priority() {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
    // SAFETY: getpriority/setpriority read and set this thread's nice value
    // (Linux: PRIO_PROCESS with a thread id names that thread only).
    unsafe {
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + 10).min(19));
    }
}

fn runnable(t: &Task) -> bool {
    let q = lock(&t.queue);
    !q.closed && !q.done && q.failed.is_none() && q.pieces.len() < t.depth
}

/// Renders one piece of `t` into its queue (outside every lock but the
/// renderer's own), or records the end or a panic.
fn step(t: &mut Task) {
    let hint = t.hint;
    let res = catch_unwind(AssertUnwindSafe(|| {
        if let Some(make) = t.make.take() {
            t.render = Some(make());
        }
        let r = t.render.as_mut().expect("built above");
        // A fresh buffer per piece: the previous one is in the queue. Sized
        // so that a piece of about `hint` bytes needs no reallocation.
        r.buf = Vec::with_capacity(hint.saturating_add(64 * 1024).min(1 << 30));
        if r.next_chunk(hint) {
            Some(std::mem::take(&mut r.buf))
        } else {
            None
        }
    }));
    let mut q = lock(&t.queue);
    match res {
        Ok(Some(piece)) => q.pieces.push_back(piece),
        Ok(None) => q.done = true,
        Err(p) => q.failed = Some(crate::error::panic_message(&*p)),
    }
    if q.done || q.failed.is_some() {
        // Nothing more to render: free the renderer now, not when the handler stops.
        drop(q);
        t.render = None;
    }
}

impl Job {
    /// Hands a scrape to this process's render thread (started if needed).
    /// `make` builds the renderer on the thread; `depth` (at least 1) pieces
    /// of about `hint` bytes may wait in the queue.
    pub fn start(make: Box<dyn FnOnce() -> Render + Send>, hint: usize, depth: usize) -> Result<Job, String> {
        let pool = pool()?;
        let queue = Arc::new(Mutex::new(Queue::default()));
        // Relaxed: see live_jobs.
        LIVE.fetch_add(1, Ordering::Relaxed);
        let task =
            Task { queue: queue.clone(), make: Some(make), render: None, hint: hint.max(1), depth: depth.max(1) };
        lock(&pool.incoming).push(task);
        pool.wake.notify_one();
        Ok(Job { queue, pool, current: Vec::new() })
    }

    /// Takes the next piece into [`Job::current`] if one is ready.
    pub fn poll(&mut self) -> Poll {
        let mut q = lock(&self.queue);
        if let Some(piece) = q.pieces.pop_front() {
            drop(q);
            self.current = piece;
            self.wake();
            return Poll::Piece;
        }
        self.current = Vec::new();
        if let Some(m) = &q.failed {
            return Poll::Failed(m.clone());
        }
        if q.done {
            Poll::Done
        // Acquire: see Obituary.
        } else if self.pool.dead.load(Ordering::Acquire) {
            Poll::Failed("internal error (a bug in shmetrics): the render thread ended".into())
        } else {
            Poll::Pending
        }
    }

    /// Closes the job: the thread drops its renderer and queue at once.
    pub fn stop(&mut self) {
        let mut q = lock(&self.queue);
        if !q.closed {
            q.closed = true;
            q.pieces.clear();
            drop(q);
            self.wake();
        }
        self.current = Vec::new();
    }

    fn wake(&self) {
        // Taking the thread's lock orders this notification after its check
        // of the queues, or before it: never in between (no lost wake-up).
        let _g = lock(&self.pool.incoming);
        self.pool.wake.notify_one();
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.stop();
    }
}
