//! Low-overhead fork-join for the small, frequent kernels of decode.
//!
//! A decode step runs ~200 matmuls of a few to a few hundred microseconds each. Handing
//! each to rayon costs a futex wake-up and a context switch whenever the workers have gone to
//! sleep in between, so parallel regions run on the calling thread plus process-wide
//! helper threads that spin briefly (about a millisecond) on an epoch counter before
//! parking, like llama.cpp's thread pool. Chunks are handed out by an atomic counter, so a
//! helper that starts late or shares its core does less; which thread runs a chunk never
//! affects its result. A helper joins a region only while it is open: once the calling
//! thread has run out of chunks it closes the region and waits only for the helpers that
//! joined, so a helper descheduled on a busy machine does not hold up the barrier. When another thread is already dispatching, the backend's rayon
//! pool runs the chunks instead.

use rayon::ThreadPool;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper spins before parking.
const SPIN: Duration = Duration::from_millis(1);

/// Runs `f(i)` for every `i < num_chunks`, on the calling thread and up to
/// `pool.current_num_threads() - 1` helpers.
pub fn for_each_chunk(pool: &ThreadPool, num_chunks: usize, f: impl Fn(usize) + Sync) {
    let helpers = pool
        .current_num_threads()
        .saturating_sub(1)
        .min(num_chunks.saturating_sub(1));
    if helpers == 0 {
        (0..num_chunks).for_each(f);
        return;
    }
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= num_chunks {
            break;
        }
        f(i);
    };
    let spin = SPIN_POOL.get_or_init(|| Mutex::new(Helpers::default()));
    match spin.try_lock() {
        Ok(mut h) => h.run(helpers, &work),
        Err(_) => pool.in_place_scope(|s| {
            for _ in 0..helpers {
                s.spawn(|_| work());
            }
            work();
        }),
    }
}

static SPIN_POOL: OnceLock<Mutex<Helpers>> = OnceLock::new();

/// State shared by the dispatcher and the helper threads.
struct Shared {
    /// `epoch << 16 | active helpers`; the epoch is bumped (Release) after `job` is set
    /// for a new parallel region, helpers with index below the count take part.
    epoch: AtomicU64,
    /// `epoch << 17 | open << 16 | joined helpers` of the current region: a helper joins
    /// (increments the count) only while the region of the epoch it saw is open.
    gate: AtomicU64,
    /// The region's work; valid from an epoch bump until every joined helper has finished.
    job: UnsafeCell<Option<&'static (dyn Fn() + Sync)>>,
    /// Joined helpers that have finished the current region.
    finished: AtomicUsize,
    /// Set when the work panicked on a helper.
    panicked: AtomicBool,
    /// Helpers parked right now (idle past the spin time).
    parked: AtomicUsize,
    /// Set when the helpers should exit (their owner was dropped).
    stop: AtomicBool,
}

// SAFETY: `job` is written only by the dispatcher while no region is in flight (under the
// `SPIN_POOL` lock, after the region was closed and every joined helper finished) and read
// by helpers only between joining the open region that publishes it and their increment of
// `finished`.
unsafe impl Sync for Shared {}

#[derive(Default)]
struct Helpers {
    shared: Option<Arc<Shared>>,
    threads: Vec<Thread>,
}

impl Helpers {
    /// Runs `work` on this thread and `n` helpers; returns when all are done.
    fn run(&mut self, n: usize, work: &(dyn Fn() + Sync)) {
        let shared = self
            .shared
            .get_or_insert_with(|| {
                Arc::new(Shared {
                    epoch: AtomicU64::new(0),
                    gate: AtomicU64::new(0),
                    job: UnsafeCell::new(None),
                    finished: AtomicUsize::new(0),
                    panicked: AtomicBool::new(false),
                    parked: AtomicUsize::new(0),
                    stop: AtomicBool::new(false),
                })
            })
            .clone();
        while self.threads.len() < n {
            let index = self.threads.len();
            let s = shared.clone();
            // The helper must treat the next bump as new even if it starts after it.
            let seen = shared.epoch.load(Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name(format!("ember-cpu-spin-{index}"))
                .spawn(move || helper_loop(&s, index, seen));
            match spawned {
                Ok(handle) => self.threads.push(handle.thread().clone()),
                Err(_) => break,
            }
        }
        let n = n.min(self.threads.len()).min(0xffff);
        // SAFETY: the region's work outlives the region: this function does not return
        // before the region is closed and every helper that joined it has finished, and the
        // reference is cleared before returning. No region is in flight now (we hold the lock
        // and the previous `run` waited for its joined helpers).
        unsafe {
            *shared.job.get() = Some(std::mem::transmute::<
                &(dyn Fn() + Sync),
                &'static (dyn Fn() + Sync),
            >(work));
        }
        shared.finished.store(0, Ordering::Relaxed);
        let epoch = (shared.epoch.load(Ordering::Relaxed) >> 16) + 1;
        shared.gate.store(epoch << 17 | OPEN, Ordering::Release);
        shared.epoch.store(epoch << 16 | n as u64, Ordering::Release);
        for t in &self.threads[..n] {
            t.unpark();
        }
        work();
        // Every chunk is taken: close the region, then wait for the helpers that joined.
        let joined = (shared.gate.fetch_and(!OPEN, Ordering::AcqRel) & 0xffff) as usize;
        // Spin while they finish; yield if one seems descheduled (a shared core).
        let mut spins = 0u32;
        while shared.finished.load(Ordering::Acquire) != joined {
            spins = spins.saturating_add(1);
            if spins > 1 << 14 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: every joined helper is done with the job and no other can join (see above).
        unsafe { *shared.job.get() = None };
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a parallel CPU kernel panicked on a helper thread");
        }
    }
}

impl Drop for Helpers {
    /// Stops the helper threads (the process-wide pool lives until exit; test pools do not).
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.stop.store(true, Ordering::Release);
            for t in &self.threads {
                t.unpark();
            }
        }
    }
}

/// The open bit of `Shared::gate`.
const OPEN: u64 = 1 << 16;

/// Joins region `epoch` if it is still open; false when it was closed or has been replaced.
fn join(s: &Shared, epoch: u64) -> bool {
    let mut gate = s.gate.load(Ordering::Acquire);
    while gate >> 17 == epoch && gate & OPEN != 0 {
        match s
            .gate
            .compare_exchange_weak(gate, gate + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return true,
            Err(now) => gate = now,
        }
    }
    false
}

/// A helper: waits for epochs, runs the job when it is among the active helpers. Idle for
/// longer than [`SPIN`], it parks (waking every 50 ms to look again, or when unparked).
fn helper_loop(s: &Shared, index: usize, mut seen: u64) {
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e >> 16 != seen >> 16 {
                break e;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                s.parked.fetch_add(1, Ordering::Relaxed);
                std::thread::park_timeout(Duration::from_millis(50));
                s.parked.fetch_sub(1, Ordering::Relaxed);
            } else {
                std::hint::spin_loop();
            }
        };
        seen = epoch;
        if (index as u64) < epoch & 0xffff && join(s, epoch >> 16) {
            // SAFETY: published before the region opened (Acquire in `join`) and kept alive
            // until this helper increments `finished`; the next region cannot start before
            // that, so this is the job of the region just joined.
            let job = unsafe { *s.job.get() };
            if let Some(job) = job {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    s.panicked.store(true, Ordering::Relaxed);
                }
            }
            s.finished.fetch_add(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one region of `num_chunks` chunks on this thread and `n` helpers; true when every
    /// chunk ran exactly once.
    fn run_counted(helpers: &mut Helpers, n: usize, num_chunks: usize) -> bool {
        let hits: Vec<AtomicUsize> = (0..num_chunks).map(|_| AtomicUsize::new(0)).collect();
        let next = AtomicUsize::new(0);
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= hits.len() {
                break;
            }
            hits[i].fetch_add(1, Ordering::Relaxed);
        };
        helpers.run(n, &work);
        hits.iter().all(|h| h.load(Ordering::Relaxed) == 1)
    }

    #[test]
    fn helpers_run_every_chunk_then_park_when_idle() {
        let mut helpers = Helpers::default();
        assert!(run_counted(&mut helpers, 3, 64));
        // Idle helpers stop spinning: all three park within a bounded wait.
        let shared = helpers.shared.clone().expect("started");
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared.parked.load(Ordering::Relaxed) != 3 {
            assert!(Instant::now() < deadline, "idle helpers keep spinning");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(helpers);
    }

    #[test]
    fn back_to_back_regions_run_every_chunk_once() {
        // Helpers join late or not at all (the dispatcher often finishes first); every
        // region must still run each chunk exactly once and return.
        let mut helpers = Helpers::default();
        for region in 0..5000usize {
            assert!(
                run_counted(&mut helpers, 1 + region % 3, 1 + region % 9),
                "region {region}"
            );
        }
        drop(helpers);
    }
}
