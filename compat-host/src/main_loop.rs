//! QEMU's main loop (`qemu/main-loop.h`) and the `IOThread` helper of
//! QEMU's unit tests (`iothread.h`), on top of the `AioContext` (`aio`).
//!
//! `qemu_init_main_loop()` makes the calling thread the main thread and
//! creates the main `AioContext`, whose `GSource` it attaches to `GLib`'s default
//! `GMainContext`: iterating that context (`g_main_loop_run`) also runs the `AioContext`, while `AIO_WAIT_WHILE` in
//! the main thread runs only the `AioContext`, as in QEMU.  Before
//! `qemu_init_main_loop()`, `qemu_get_aio_context()` is NULL (as the header
//! promises): programs and tests call it first, once, from the thread they
//! want as main thread.

use std::{ptr, sync::Mutex};

use crate::{
    aio::{self, main_context, PollThread},
    sys,
};

/// Serializes initialization.
static INIT: Mutex<()> = Mutex::new(());

/// # Safety
/// `errp` is NULL or a valid `Error **` (QEMU's conventions).
#[no_mangle]
pub unsafe extern "C" fn qemu_init_main_loop(errp: *mut *mut sys::Error) -> i32 {
    let _guard = INIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !main_context().is_null() {
        return 0;
    }
    // SAFETY: errp per the contract.
    let ctx = unsafe { aio::aio_context_new(errp) };
    if ctx.is_null() {
        return -1;
    }
    // SAFETY: `ctx` is live; GLib's default context takes its own
    // reference on attach, so ours can be dropped.
    unsafe {
        let source = aio::aio_get_g_source(ctx);
        sys::g_source_attach(source, ptr::null_mut());
        sys::g_source_unref(source);
    }
    // ctx keeps the reference from aio_context_new forever.
    aio::set_main_context(ctx);
    0
}

#[no_mangle]
pub extern "C" fn qemu_get_aio_context() -> *mut sys::AioContext {
    main_context()
}

/// Like QEMU's test helper (which uses `&error_abort`), aborts if the
/// thread or its context cannot be created.  C sees an opaque pointer to
/// a boxed [`PollThread`].
#[no_mangle]
pub extern "C" fn iothread_new() -> *mut sys::IOThread {
    match PollThread::spawn() {
        Ok(t) => Box::into_raw(Box::new(t)).cast(),
        Err(msg) => {
            eprintln!("iothread_new: {msg}");
            std::process::abort();
        }
    }
}

/// See [`PollThread::join`].
///
/// # Safety
/// `iothread` came from [`iothread_new`], is joined once and not used
/// afterwards; not called from the `IOThread` itself.
#[no_mangle]
pub unsafe extern "C" fn iothread_join(iothread: *mut sys::IOThread) {
    if !iothread.is_null() {
        // SAFETY: per the contract, we take back ownership.
        unsafe { Box::from_raw(iothread.cast::<PollThread>()) }.join();
    }
}

/// # Safety
/// `iothread` came from [`iothread_new`] and was not joined.
#[no_mangle]
pub unsafe extern "C" fn iothread_get_aio_context(
    iothread: *mut sys::IOThread,
) -> *mut sys::AioContext {
    // SAFETY: per the contract.
    unsafe { (*iothread.cast::<PollThread>()).ctx() }
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::c_void,
        os::fd::AsRawFd,
        sync::atomic::{AtomicUsize, Ordering},
        thread,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::aio::{
        aio_bh_schedule_oneshot_full, aio_set_fd_handler, aio_timer_new,
        in_aio_context_home_thread, in_main_thread, qemu_get_current_aio_context, timer_free,
        timer_mod,
    };

    unsafe extern "C" fn bump(opaque: *mut c_void) {
        // SAFETY: the tests pass an AtomicUsize that outlives the callback.
        unsafe {
            (*(opaque as *const AtomicUsize)).fetch_add(1, Ordering::SeqCst);
        }
    }

    struct SendPtr(*mut sys::AioContext, *const AtomicUsize);
    // SAFETY: scheduling BHs is thread-safe; AtomicUsize is Sync.
    unsafe impl Send for SendPtr {}

    /// Everything that needs the main loop, in one test: only one thread
    /// of the test process can be the main thread.
    #[test]
    fn main_loop_runs_main_context_from_glib() {
        // SAFETY: NULL errp is allowed.
        assert_eq!(unsafe { qemu_init_main_loop(ptr::null_mut()) }, 0);
        let main = qemu_get_aio_context();
        assert!(!main.is_null());
        // SAFETY: as above; a second call is a no-op.
        assert_eq!(unsafe { qemu_init_main_loop(ptr::null_mut()) }, 0);
        assert_eq!(qemu_get_aio_context(), main);
        assert!(in_main_thread());
        assert_eq!(qemu_get_current_aio_context(), main);
        // SAFETY: the main context lives forever.
        assert!(unsafe { in_aio_context_home_thread(main) });
        thread::spawn(move || {
            assert!(!in_main_thread());
            assert!(qemu_get_current_aio_context().is_null());
        })
        .join()
        .unwrap();

        // A safety net: if a wake-up were lost, this timer ends the wait.
        let never = AtomicUsize::new(0);
        // SAFETY: main is live; `never` outlives the timer (freed below).
        let watchdog = unsafe {
            aio_timer_new(
                main,
                sys::QEMUClockType_QEMU_CLOCK_REALTIME,
                sys::SCALE_MS as i32,
                Some(bump),
                &never as *const AtomicUsize as *mut c_void,
            )
        };
        // SAFETY: fresh timer.
        unsafe {
            timer_mod(watchdog, qemu_clock_ms() + 5000);
        }
        let start = Instant::now();

        // A BH from another thread wakes a blocking GLib iteration.
        let ran = AtomicUsize::new(0);
        let sp = SendPtr(main, &ran);
        let t = thread::spawn(move || {
            let sp = sp;
            thread::sleep(Duration::from_millis(30));
            // SAFETY: main lives forever; `ran` outlives the BH (the test
            // waits until it ran).
            unsafe {
                aio_bh_schedule_oneshot_full(sp.0, Some(bump), sp.1 as *mut c_void, ptr::null());
            }
        });
        while ran.load(Ordering::SeqCst) == 0 {
            iterate_default_context();
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        t.join().unwrap();

        // An fd handler of the main context runs from GLib too.
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let reads = AtomicUsize::new(0);
        // SAFETY: main is live; `reads` outlives the registration.
        unsafe {
            aio_set_fd_handler(
                main,
                r.as_raw_fd(),
                Some(bump),
                None,
                None,
                None,
                &reads as *const AtomicUsize as *mut c_void,
            );
        }
        assert_eq!(nix::unistd::write(&w, b"x"), Ok(1));
        while reads.load(Ordering::SeqCst) == 0 {
            iterate_default_context();
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        // SAFETY: as above.
        unsafe {
            aio_set_fd_handler(main, r.as_raw_fd(), None, None, None, None, ptr::null_mut());
        }

        // SAFETY: our timer.
        unsafe {
            timer_free(watchdog);
        }
        assert_eq!(never.load(Ordering::SeqCst), 0);
    }

    /// One blocking iteration of `GLib`'s default context.
    fn iterate_default_context() {
        // SAFETY: the default context may be iterated by any thread.
        unsafe {
            glib_sys::g_main_context_iteration(ptr::null_mut(), 1);
        }
    }

    fn qemu_clock_ms() -> i64 {
        aio::qemu_clock_get_ms(sys::QEMUClockType_QEMU_CLOCK_REALTIME)
    }

    unsafe extern "C" fn check_current(opaque: *mut c_void) {
        let ctx = qemu_get_current_aio_context();
        // SAFETY: `opaque` is the test's AtomicUsize; ctx is the
        // IOThread's live context.
        unsafe {
            let ok = in_aio_context_home_thread(ctx) && !in_main_thread();
            (*(opaque as *const AtomicUsize))
                .store(if ok { ctx as usize } else { 1 }, Ordering::SeqCst);
        }
    }

    #[test]
    fn iothread_runs_its_context_as_current() {
        let it = iothread_new();
        // SAFETY: live until joined.
        let ctx = unsafe { iothread_get_aio_context(it) };
        let seen = AtomicUsize::new(0);
        // SAFETY: live ctx; `seen` outlives the BH (we wait for it).
        unsafe {
            aio_bh_schedule_oneshot_full(
                ctx,
                Some(check_current),
                &seen as *const AtomicUsize as *mut c_void,
                ptr::null(),
            );
        }
        let start = Instant::now();
        while seen.load(Ordering::SeqCst) == 0 {
            assert!(start.elapsed() < Duration::from_secs(5));
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(seen.load(Ordering::SeqCst), ctx as usize);
        // SAFETY: as above; not this thread's context.
        assert!(!unsafe { in_aio_context_home_thread(ctx) });
        // SAFETY: joined once.
        unsafe {
            iothread_join(it);
        }
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// Runs in a child process (see below) so other tests' fds do not
    /// disturb the count.
    #[test]
    fn iothread_fd_leak_child() {
        if std::env::var_os("QEMUCOMPAT_FD_LEAK_CHILD").is_none() {
            return;
        }
        iothread_join_new();
        let before = open_fds();
        for _ in 0..20 {
            iothread_join_new();
        }
        assert_eq!(open_fds(), before);
    }

    fn iothread_join_new() {
        let it = iothread_new();
        let n = AtomicUsize::new(0);
        // SAFETY: live until joined; `n` outlives the BH, which runs
        // before the stop BH that iothread_join schedules.
        unsafe {
            let ctx = iothread_get_aio_context(it);
            aio_bh_schedule_oneshot_full(
                ctx,
                Some(bump),
                &n as *const AtomicUsize as *mut c_void,
                ptr::null(),
            );
            iothread_join(it);
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn iothread_new_join_leaks_no_fds() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "main_loop::tests::iothread_fd_leak_child",
                "--test-threads=1",
            ])
            .env("QEMUCOMPAT_FD_LEAK_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
}
