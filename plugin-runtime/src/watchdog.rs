//! Wall-clock limits without reading the clock in the VM.
//!
//! Luau calls the interrupt at loop back-edges and calls, very often: reading the clock
//! there is slow. Instead a [`Guard`] holds a deadline and an `expired` flag; one thread
//! per process checks the armed deadlines every few milliseconds and sets the flag, and
//! the interrupt only loads it.
//!
//! The clock stops while the host awaits I/O for the call's own thread (the host decides
//! which waits qualify: one from a coroutine of the plugin's gives control back to the
//! plugin, so it stays on the clock). A resume that belongs to an earlier call (a
//! coroutine left pending) changes nothing.
//!
//! A single C call (a quadratic `string.find`) runs no interrupt at all. In the worker
//! process the watchdog ends that from outside ([`enforce_hard_deadlines`]): a call still
//! running well past its deadline aborts the process, and the supervisor, which knows
//! which plugin was running, strikes it and restarts the worker.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How often deadlines are checked: a 50 ms limit fires by 55 ms.
const RESOLUTION: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// Microseconds since the watchdog's epoch; 0 = not armed.
    deadline_us: AtomicU64,
    /// The wall limit of the armed call, for the hard deadline's grace.
    wall_us: AtomicU64,
    expired: AtomicBool,
    ticks: AtomicU64,
    tick_budget: AtomicU64,
    /// Which call is armed: pauses of an earlier call are recognised and ignored.
    call: AtomicU64,
    /// I/O waits in progress, and when the first began (0: the clock runs).
    pauses: AtomicU32,
    paused_at_us: AtomicU64,
}

/// A pause of one call, to give back to [`Guard::resume`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pause {
    call: u64,
}

impl Guard {
    /// A guard the process's watchdog thread watches for as long as it lives.
    pub(crate) fn new() -> Arc<Guard> {
        let guard = Arc::new(Guard::default());
        watchdog().guards.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Arc::downgrade(&guard));
        guard
    }

    /// Starts a limited call.
    pub(crate) fn arm(&self, wall: Duration, ticks: u64) {
        let w = watchdog();
        let deadline = (w.epoch.elapsed() + wall).as_micros() as u64;
        self.call.fetch_add(1, Ordering::AcqRel);
        self.pauses.store(0, Ordering::Relaxed);
        self.paused_at_us.store(0, Ordering::Relaxed);
        self.expired.store(false, Ordering::Relaxed);
        self.ticks.store(0, Ordering::Relaxed);
        self.tick_budget.store(ticks, Ordering::Relaxed);
        self.wall_us.store(wall.as_micros() as u64, Ordering::Relaxed);
        self.deadline_us.store(deadline.max(1), Ordering::Release);
    }

    /// Stops the clock of an armed, unexpired call while the host awaits I/O for it.
    pub(crate) fn pause(&self) -> Option<Pause> {
        if self.deadline_us.load(Ordering::Acquire) == 0 || self.expired.load(Ordering::Relaxed) {
            return None;
        }
        if self.pauses.fetch_add(1, Ordering::AcqRel) == 0 {
            self.paused_at_us.store(now_us().max(1), Ordering::Release);
        }
        Some(Pause { call: self.call.load(Ordering::Acquire) })
    }

    /// Time left to an armed call, if any.
    pub(crate) fn left(&self) -> Option<Duration> {
        let deadline = self.deadline_us.load(Ordering::Acquire);
        (deadline != 0).then(|| Duration::from_micros(deadline.saturating_sub(now_us())))
    }

    /// Marks the call out of time now, for a wait the host cut at the deadline (the
    /// watchdog's next round might come a little later).
    pub(crate) fn expire(&self) {
        if self.deadline_us.load(Ordering::Acquire) != 0 {
            self.expired.store(true, Ordering::Relaxed);
        }
    }

    /// Ends a pause: when the last wait of the call ends, the deadline moves by the time
    /// the clock stood still.
    pub(crate) fn resume(&self, pause: Pause) {
        if pause.call != self.call.load(Ordering::Acquire) {
            return;
        }
        let before = self.pauses.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if before != Ok(1) {
            return;
        }
        let since = self.paused_at_us.swap(0, Ordering::AcqRel);
        if since != 0 {
            let _ = self.deadline_us.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d != 0).then(|| d + now_us().saturating_sub(since))
            });
        }
    }

    pub(crate) fn disarm(&self) {
        self.call.fetch_add(1, Ordering::AcqRel);
        self.deadline_us.store(0, Ordering::Release);
        self.pauses.store(0, Ordering::Relaxed);
        self.paused_at_us.store(0, Ordering::Relaxed);
        self.expired.store(false, Ordering::Relaxed);
    }

    /// Called from the VM's interrupt: which limit, if any, the call has hit.
    pub(crate) fn check(&self) -> Option<Exceeded> {
        if self.deadline_us.load(Ordering::Relaxed) == 0 {
            return None;
        }
        if self.expired.load(Ordering::Relaxed) {
            return Some(Exceeded::Time);
        }
        // Only the VM's own thread counts ticks: a plain load and store, not a locked add.
        let ticks = self.ticks.load(Ordering::Relaxed) + 1;
        self.ticks.store(ticks, Ordering::Relaxed);
        (ticks > self.tick_budget.load(Ordering::Relaxed)).then_some(Exceeded::Ticks)
    }
}

/// Makes `guard` the VM's interrupt, called at every loop turn and call of the plugin.
///
/// Not `Lua::set_interrupt`: mlua wraps each interrupt in its callback machinery (error
/// protection, a reference-counted closure, its state lock), which cost more than the
/// check itself and, profiled, about a sixth of a worker's time on a simple plugin. The
/// guard's address rides in the main thread's data (mlua uses the callbacks' userdata
/// and no thread data), read back by a plain C function that only loads its atomics and
/// raises a Lua error when a limit is hit. The thread data holds a reference of its own
/// to the guard, given back by [`release`].
pub(crate) fn install(lua: &mlua::Lua, guard: &Arc<Guard>) -> mlua::Result<()> {
    let data = Arc::into_raw(guard.clone()) as *mut std::ffi::c_void;
    // SAFETY: the main thread's data and the interrupt slot are set on the VM's own
    // state, which mlua holds locked while `exec_raw` runs; the pointer is a strong
    // reference, valid until `release` takes it back.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            use mlua::ffi;
            ffi::lua_setthreaddata(ffi::lua_mainthread(state), data);
            (*ffi::lua_callbacks(state)).interrupt = Some(interrupt);
        })
    }
}

/// Takes the interrupt and the guard's reference back from the VM.
pub(crate) fn release(lua: &mlua::Lua) {
    let mut data: *mut std::ffi::c_void = std::ptr::null_mut();
    // SAFETY: as in `install`.
    let _ = unsafe {
        lua.exec_raw::<()>((), |state| {
            use mlua::ffi;
            (*ffi::lua_callbacks(state)).interrupt = None;
            data = ffi::lua_getthreaddata(ffi::lua_mainthread(state));
            ffi::lua_setthreaddata(ffi::lua_mainthread(state), std::ptr::null_mut());
        })
    };
    if !data.is_null() {
        // SAFETY: the reference `install` leaked into the thread data, taken out once.
        drop(unsafe { Arc::from_raw(data as *const Guard) });
    }
}

unsafe extern "C-unwind" fn interrupt(state: *mut mlua::ffi::lua_State, gc: std::ffi::c_int) {
    use mlua::ffi;
    // GC steps interrupt too; an error cannot be raised from there.
    if gc >= 0 {
        return;
    }
    let guard = ffi::lua_getthreaddata(ffi::lua_mainthread(state)) as *const Guard;
    // SAFETY: set by `install` to a live guard, cleared by `release` before it drops.
    let Some(guard) = (unsafe { guard.as_ref() }) else { return };
    let message: &std::ffi::CStr = match guard.check() {
        None => return,
        Some(Exceeded::Time) => c"time limit exceeded",
        Some(Exceeded::Ticks) => c"tick budget exceeded",
    };
    // Raises (a C++ exception in Luau's build, which "C-unwind" lets pass): nothing here
    // has a destructor to run.
    unsafe { ffi::luaL_error(state, message.as_ptr()) }
}

impl Guard {
    /// After a call: which limit it hit, without counting a tick.
    pub(crate) fn hit(&self) -> Option<Exceeded> {
        if self.expired.load(Ordering::Relaxed) {
            Some(Exceeded::Time)
        } else if self.ticks.load(Ordering::Relaxed) > self.tick_budget.load(Ordering::Relaxed) {
            Some(Exceeded::Ticks)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Time,
    Ticks,
}

struct Watchdog {
    epoch: Instant,
    guards: Mutex<Vec<Weak<Guard>>>,
    /// Abort the process when a call runs past its deadline by this much more than its
    /// own limit (`None`: never, as in tests and the `sluice-plugin` tool).
    hard_grace_us: AtomicU64,
}

fn now_us() -> u64 {
    watchdog().epoch.elapsed().as_micros() as u64
}

/// In the worker process: a call that runs past its deadline by its own limit plus
/// `grace` without ending (a single C call never reaches an interrupt) aborts the
/// process. The supervisor sees the worker die while that plugin runs.
pub(crate) fn enforce_hard_deadlines(grace: Duration) {
    watchdog().hard_grace_us.store(grace.as_micros().max(1) as u64, Ordering::Relaxed);
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let w: &'static Watchdog = Box::leak(Box::new(Watchdog {
            epoch: Instant::now(),
            guards: Mutex::default(),
            hard_grace_us: AtomicU64::new(0),
        }));
        std::thread::Builder::new()
            .name("plugin-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(RESOLUTION);
                let now = w.epoch.elapsed().as_micros() as u64;
                let hard_grace = w.hard_grace_us.load(Ordering::Relaxed);
                let mut guards = w.guards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                guards.retain(|g| match g.upgrade() {
                    Some(g) => {
                        let deadline = g.deadline_us.load(Ordering::Acquire);
                        let paused = g.paused_at_us.load(Ordering::Acquire) != 0;
                        if deadline != 0 && !paused && now >= deadline {
                            g.expired.store(true, Ordering::Relaxed);
                            let limit = g.wall_us.load(Ordering::Relaxed);
                            if hard_grace != 0 && now >= deadline + limit + hard_grace {
                                eprintln!(
                                    "plugin-watchdog: a plugin call ran {} ms past its deadline without \
                                     reaching an interrupt; aborting the worker",
                                    (now - deadline) / 1000
                                );
                                std::process::abort();
                            }
                        }
                        true
                    }
                    None => false,
                });
            })
            .expect("watchdog thread starts");
        w
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_expires_and_a_budget_runs_out() {
        let g = Guard::new();
        assert_eq!(g.check(), None, "not armed");
        g.arm(Duration::from_millis(20), u64::MAX);
        assert_eq!(g.check(), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(g.check(), Some(Exceeded::Time));
        g.arm(Duration::from_secs(10), 3);
        assert_eq!((g.check(), g.check(), g.check(), g.check()), (None, None, None, Some(Exceeded::Ticks)));
        g.disarm();
        assert_eq!(g.check(), None);
    }

    #[test]
    fn a_paused_clock_does_not_run_out() {
        let g = Guard::new();
        g.arm(Duration::from_millis(30), u64::MAX);
        let pause = g.pause().expect("armed");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(g.hit(), None, "paused");
        g.resume(pause);
        assert_eq!(g.check(), None, "the time left is still there");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(g.check(), Some(Exceeded::Time));
        assert!(g.pause().is_none(), "an expired call stays expired");
    }

    #[test]
    fn a_pause_of_an_earlier_call_changes_nothing() {
        let g = Guard::new();
        g.arm(Duration::from_secs(30), u64::MAX);
        let stale = g.pause().expect("armed");
        g.disarm();
        g.arm(Duration::from_millis(20), u64::MAX);
        std::thread::sleep(Duration::from_millis(10));
        g.resume(stale);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(g.check(), Some(Exceeded::Time), "the earlier call's time did not carry over");
    }
}
