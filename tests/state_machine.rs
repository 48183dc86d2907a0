//! Rust tests of the listener's state machine through its C ABI, on the
//! compat host: registration lifetimes (notify exactly once, never while a
//! callback runs), idempotent set/disconnect, `wait_client` on a dead
//! listener, `AioContext` watches in an `IOThread`, cross-thread churn.
//! Real loopback sockets and real event loops throughout.

use std::{
    ffi::{c_void, CString},
    io::Read,
    net::TcpStream,
    ptr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use qemucompat::sys as compat;
use qio_net_listener::{ffi::*, qemu::QIOChannelSocket as Sioc};

/// Tests share the main loop and count process-wide things; run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn setup() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // SAFETY: qemu_init_main_loop is idempotent; NULL errp is allowed.
    unsafe {
        compat::qemu_init_main_loop(ptr::null_mut());
    }
    g
}

/// A listener on 127.0.0.1:0 and its port.
fn open_loopback() -> (*mut QIONetListener, u16) {
    open_loopback_backlog(8)
}

fn open_loopback_backlog(backlog: i32) -> (*mut QIONetListener, u16) {
    let l = qio_net_listener_new();
    let spec = CString::new("127.0.0.1:0").unwrap();
    // SAFETY: valid C string; the listener is live; addr is freed after use.
    unsafe {
        let addr = compat::socket_parse(spec.as_ptr(), ptr::null_mut());
        assert!(!addr.is_null());
        let rc = qio_net_listener_open_sync(l, addr.cast(), backlog, ptr::null_mut());
        compat::qapi_free_SocketAddress(addr);
        assert_eq!(rc, 0);
        let local = qio_net_listener_get_local_address(l, 0, ptr::null_mut())
            .cast::<compat::SocketAddress>();
        assert!(!local.is_null());
        let port = std::ffi::CStr::from_ptr((*local).u.inet.port)
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        compat::qapi_free_SocketAddress(local);
        (l, port)
    }
}

fn unref(l: *mut QIONetListener) {
    // SAFETY: drops the test's reference.
    unsafe { compat::object_unref(l.cast()) }
}

/// Iterates `ctx` (NULL: default) until `done` or a 5 s deadline.
fn iterate_until(ctx: *mut compat::GMainContext, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        // SAFETY: ctx is NULL or a live context owned by the test.
        unsafe {
            compat::g_main_context_iteration(ctx, 0);
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

struct Counters {
    calls: AtomicUsize,
    notifies: AtomicUsize,
    in_callback: AtomicBool,
    notified_during_callback: AtomicBool,
}

impl Counters {
    const fn new() -> Self {
        Counters {
            calls: AtomicUsize::new(0),
            notifies: AtomicUsize::new(0),
            in_callback: AtomicBool::new(false),
            notified_during_callback: AtomicBool::new(false),
        }
    }
}

unsafe extern "C" fn count_cb(_l: *mut QIONetListener, _s: *mut Sioc, d: *mut c_void) {
    // SAFETY: the tests pass a &'static Counters as data.
    let c = unsafe { &*(d as *const Counters) };
    c.in_callback.store(true, SeqCst);
    c.calls.fetch_add(1, SeqCst);
    thread::sleep(Duration::from_millis(2));
    c.in_callback.store(false, SeqCst);
}

/// A callback that clears itself, as char-socket.c does after one client.
unsafe extern "C" fn clearing_cb(l: *mut QIONetListener, s: *mut Sioc, d: *mut c_void) {
    // SAFETY: same data contract as count_cb; l is live during the call.
    unsafe {
        count_cb(l, s, d);
        let c = &*(d as *const Counters);
        c.in_callback.store(true, SeqCst);
        qio_net_listener_set_client_func(l, None, ptr::null_mut(), None);
        // notify must not have run yet: this callback still uses data.
        if c.notifies.load(SeqCst) > 0 {
            c.notified_during_callback.store(true, SeqCst);
        }
        c.in_callback.store(false, SeqCst);
    }
}

unsafe extern "C" fn count_notify(d: *mut c_void) {
    // SAFETY: same data contract as count_cb.
    let c = unsafe { &*(d as *const Counters) };
    if c.in_callback.load(SeqCst) {
        c.notified_during_callback.store(true, SeqCst);
    }
    c.notifies.fetch_add(1, SeqCst);
}

fn as_data(c: &'static Counters) -> *mut c_void {
    c as *const Counters as *mut c_void
}

type Cb = unsafe extern "C" fn(*mut QIONetListener, *mut Sioc, *mut c_void);

fn cb(f: Cb) -> QIONetListenerClientFunc {
    Some(f)
}

#[test]
fn notify_once_per_registration_and_identical_set_is_noop() {
    let _g = setup();
    static A: Counters = Counters::new();
    static B: Counters = Counters::new();
    let (l, _port) = open_loopback();
    // SAFETY: live listener; data are statics; notify is safe at any time.
    unsafe {
        qio_net_listener_set_client_func(l, cb(count_cb), as_data(&A), Some(count_notify));
        qio_net_listener_set_client_func(l, cb(count_cb), as_data(&A), Some(count_notify));
        assert_eq!(A.notifies.load(SeqCst), 0, "identical set must be a no-op");
        qio_net_listener_set_client_func(l, cb(count_cb), as_data(&B), Some(count_notify));
        assert_eq!(A.notifies.load(SeqCst), 1, "replacement notifies once");
        // While a callback is set its watches keep the listener alive (as
        // in QEMU); disconnecting removes them, so the unref finalizes.
        qio_net_listener_disconnect(l);
    }
    assert_eq!(
        B.notifies.load(SeqCst),
        0,
        "disconnect keeps the registration"
    );
    unref(l);
    assert_eq!(
        B.notifies.load(SeqCst),
        1,
        "finalize notifies the last registration"
    );
    assert_eq!(A.notifies.load(SeqCst), 1);
}

#[test]
fn self_clearing_callback_notifies_after_it_returns() {
    let _g = setup();
    static C: Counters = Counters::new();
    let (l, port) = open_loopback();
    // SAFETY: live listener; static data.
    unsafe {
        qio_net_listener_set_client_func(l, cb(clearing_cb), as_data(&C), Some(count_notify));
    }
    let _c1 = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _c2 = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(iterate_until(ptr::null_mut(), || C.notifies.load(SeqCst) == 1));
    // More iterations: the cleared callback accepts nobody else.
    for _ in 0..20 {
        // SAFETY: default context.
        unsafe {
            compat::g_main_context_iteration(ptr::null_mut(), 0);
        }
    }
    assert_eq!(
        C.calls.load(SeqCst),
        1,
        "one client, then the callback cleared itself"
    );
    assert!(!C.notified_during_callback.load(SeqCst));
    // The second client is still queued: wait_client gets it.
    // SAFETY: live listener; the returned reference is ours.
    let s = unsafe { qio_net_listener_wait_client(l) };
    assert!(!s.is_null());
    unref(s.cast());
    unref(l);
    assert_eq!(C.notifies.load(SeqCst), 1);
}

#[test]
fn wait_client_on_dead_listener_returns_null() {
    let _g = setup();
    let l = qio_net_listener_new();
    // SAFETY: live listener.
    unsafe {
        assert!(qio_net_listener_wait_client(l).is_null(), "no sockets");
        assert!(!qio_net_listener_is_connected(l));
    }
    unref(l);
    let (bound, _) = open_loopback();
    // SAFETY: live listener.
    unsafe {
        qio_net_listener_disconnect(bound);
        qio_net_listener_disconnect(bound);
        assert!(!qio_net_listener_is_connected(bound));
        assert!(
            qio_net_listener_wait_client(bound).is_null(),
            "disconnected"
        );
        assert_eq!(qio_net_listener_nsioc(bound), 1);
    }
    unref(bound);
}

#[test]
fn wait_client_is_released_by_disconnect_from_another_thread() {
    let _g = setup();
    let (l, _) = open_loopback();
    let addr = l as usize;
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        // SAFETY: the main thread holds its reference until after join.
        unsafe {
            qio_net_listener_disconnect(addr as *mut QIONetListener);
        }
    });
    // SAFETY: live listener.
    let s = unsafe { qio_net_listener_wait_client(l) };
    t.join().unwrap();
    assert!(s.is_null());
    unref(l);
}

#[test]
fn aio_callback_in_iothread_and_cross_thread_clear() {
    let _g = setup();
    static D: Counters = Counters::new();
    // SAFETY: the IOThread is joined at the end of the test.
    let iothread = unsafe { compat::iothread_new() };
    // SAFETY: iothread is live.
    let ctx = unsafe { compat::iothread_get_aio_context(iothread) };
    let (l, port) = open_loopback();
    // SAFETY: live listener and context; static data.
    unsafe {
        qio_net_listener_set_client_aio_func(l, cb(count_cb), as_data(&D), ctx.cast());
    }
    let clients: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while D.calls.load(SeqCst) < clients.len() {
        assert!(Instant::now() < deadline, "IOThread did not accept");
        thread::sleep(Duration::from_millis(1));
    }
    // Clear from this thread while the IOThread runs; drop our reference:
    // the release BH in the IOThread's context finalizes the listener.
    // SAFETY: live listener.
    unsafe {
        qio_net_listener_set_client_aio_func(l, None, ptr::null_mut(), ctx.cast());
    }
    unref(l);
    let mut buf = [0u8; 1];
    let mut c = TcpStream::connect(("127.0.0.1", port));
    // Once finalized the socket is closed: connecting fails or reads EOF.
    let eof_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match &mut c {
            Err(_) => break,
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                if let Ok(0) = s.read(&mut buf) {
                    break;
                }
            }
        }
        assert!(Instant::now() < eof_deadline, "listener never finalized");
        c = TcpStream::connect(("127.0.0.1", port));
    }
    // SAFETY: joins and frees the IOThread.
    unsafe {
        compat::iothread_join(iothread);
    }
    assert_eq!(D.calls.load(SeqCst), 5);
}

#[test]
fn cross_thread_churn_balances_notifies() {
    let _g = setup();
    // SAFETY: a new context owned by this test.
    let ctx = unsafe { compat::g_main_context_new() };
    let ctx_addr = ctx as usize;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let runner = thread::spawn(move || {
        while !stop2.load(SeqCst) {
            // SAFETY: the context outlives this thread (joined below).
            unsafe {
                compat::g_main_context_iteration(ctx_addr as *mut _, 0);
            }
        }
    });
    let (l, port) = open_loopback();
    // One data block per registration, so each notify is checked on its own.
    let regs: Vec<&'static Counters> = (0..200)
        .map(|_| &*Box::leak(Box::new(Counters::new())))
        .collect();
    let mut clients = Vec::new();
    for (i, c) in regs.iter().enumerate() {
        // SAFETY: live listener and context; leaked (never freed) data.
        unsafe {
            qio_net_listener_set_client_func_full(
                l,
                cb(count_cb),
                as_data(c),
                Some(count_notify),
                ctx.cast(),
            );
        }
        if i % 10 == 0 {
            clients.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
    }
    // SAFETY: live listener.
    unsafe {
        qio_net_listener_set_client_func_full(l, None, ptr::null_mut(), None, ctx.cast());
    }
    unref(l);
    stop.store(true, SeqCst);
    runner.join().unwrap();
    // SAFETY: the test's context reference.
    unsafe {
        compat::g_main_context_unref(ctx);
    }
    for (i, c) in regs.iter().enumerate() {
        assert_eq!(
            c.notifies.load(SeqCst),
            1,
            "registration {i}: notify exactly once"
        );
        assert!(
            !c.notified_during_callback.load(SeqCst),
            "registration {i}: notify during callback"
        );
    }
    let calls: usize = regs.iter().map(|c| c.calls.load(SeqCst)).sum();
    assert!(calls <= clients.len());
}

#[test]
fn null_listener_gives_documented_results() {
    let _g = setup();
    let n = ptr::null_mut();
    let mut err: *mut compat::Error = ptr::null_mut();
    let errp = &mut err as *mut *mut compat::Error;
    // SAFETY: every function accepts a NULL listener (documented); errp
    // points to a NULL Error * owned by this test.
    unsafe {
        qio_net_listener_set_name(n, c"x".as_ptr());
        assert_eq!(
            qio_net_listener_open_sync(n, ptr::null_mut(), 1, errp.cast()),
            -1
        );
        assert!(!err.is_null(), "open_sync on NULL sets an error");
        compat::error_free(err);
        err = ptr::null_mut();
        qio_net_listener_add(n, ptr::null_mut());
        qio_net_listener_set_client_func_full(n, None, ptr::null_mut(), None, ptr::null_mut());
        qio_net_listener_set_client_func(n, None, ptr::null_mut(), None);
        qio_net_listener_set_client_aio_func(n, None, ptr::null_mut(), ptr::null_mut());
        assert!(qio_net_listener_wait_client(n).is_null());
        qio_net_listener_disconnect(n);
        assert!(!qio_net_listener_is_connected(n));
        assert_eq!(qio_net_listener_nsioc(n), 0);
        assert!(qio_net_listener_sioc(n, 0).is_null());
        assert!(qio_net_listener_get_local_address(n, 0, errp.cast()).is_null());
        assert!(!err.is_null(), "get_local_address on NULL sets an error");
        compat::error_free(err);
    }
    // A NULL address on a real listener is an error too, not a crash.
    let l = qio_net_listener_new();
    let mut addr_err: *mut compat::Error = ptr::null_mut();
    // SAFETY: live listener; addr_err is a NULL Error * owned by this test.
    unsafe {
        assert_eq!(
            qio_net_listener_open_sync(
                l,
                ptr::null_mut(),
                1,
                (&mut addr_err as *mut *mut compat::Error).cast()
            ),
            -1
        );
        assert!(!addr_err.is_null());
        compat::error_free(addr_err);
        qio_net_listener_add(l, ptr::null_mut());
        assert_eq!(qio_net_listener_nsioc(l), 0);
    }
    unref(l);
}

#[test]
fn one_wakeup_accepts_a_bounded_batch() {
    let _g = setup();
    static G: Counters = Counters::new();
    // SAFETY: a new context owned by this test, iterated only here.
    let ctx = unsafe { compat::g_main_context_new() };
    let (l, port) = open_loopback_backlog(128);
    let n = qio_net_listener::listener::ACCEPT_BATCH + 8;
    // connect() on loopback returns once the connection is in the backlog.
    let clients: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // SAFETY: live listener and context; static data, no notify.
    unsafe {
        qio_net_listener_set_client_func_full(l, cb(count_cb), as_data(&G), None, ctx.cast());
        // One dispatch of the watch: a full batch, not one client.
        while compat::g_main_context_iteration(ctx, 0) == 0 {}
    }
    assert_eq!(
        G.calls.load(SeqCst),
        qio_net_listener::listener::ACCEPT_BATCH
    );
    assert!(
        iterate_until(ctx, || G.calls.load(SeqCst) == n),
        "the rest on the next wake-up"
    );
    // SAFETY: live listener; then the test's own references.
    unsafe {
        qio_net_listener_disconnect(l);
        compat::g_main_context_unref(ctx);
    }
    unref(l);
    drop(clients);
}

/// Fills every free fd number below a lowered `RLIMIT_NOFILE`, so that the
/// next accept fails with EMFILE; dropping the result frees them again.
struct FdExhaustion {
    fds: Vec<i32>,
    old: libc::rlimit,
}

impl FdExhaustion {
    fn start() -> Self {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on this process's own limits and fds.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
            let highest = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap();
            let low = libc::rlimit {
                rlim_cur: highest + 16,
                rlim_max: old.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
            let mut fds = Vec::new();
            loop {
                let fd = libc::dup(0);
                if fd < 0 {
                    break;
                }
                fds.push(fd);
            }
            FdExhaustion { fds, old }
        }
    }
}

impl Drop for FdExhaustion {
    fn drop(&mut self) {
        // SAFETY: closes the fds start() opened and restores the limit.
        unsafe {
            for fd in &self.fds {
                libc::close(*fd);
            }
            libc::setrlimit(libc::RLIMIT_NOFILE, &self.old);
        }
    }
}

/// Out of fds with clients queued: the watch backs off instead of spinning
/// (a handful of dispatches where a retrying watch would dispatch on every
/// loop iteration), and once fds are free again every queued client is
/// accepted.  Runs in a child process: it lowers the process's fd limit.
fn backoff_case(aio: bool) {
    static H: Counters = Counters::new();
    let (l, port) = open_loopback_backlog(16);
    // SAFETY: a private context, iterated only by this thread.
    let ctx = unsafe { compat::g_main_context_new() };
    // SAFETY: the main AioContext exists (setup) and runs in this thread.
    let aio_ctx = unsafe { compat::qemu_get_aio_context() };
    // One iteration of the loop that dispatches the listener.
    let iterate = || -> bool {
        // SAFETY: contexts owned by / running in this thread.
        unsafe {
            if aio {
                compat::aio_poll(aio_ctx, false)
            } else {
                compat::g_main_context_iteration(ctx, 0) != 0
            }
        }
    };
    // SAFETY: live listener and contexts; static data.
    unsafe {
        if aio {
            qio_net_listener_set_client_aio_func(l, cb(count_cb), as_data(&H), aio_ctx.cast());
        } else {
            qio_net_listener_set_client_func_full(l, cb(count_cb), as_data(&H), None, ctx.cast());
        }
    }
    let first = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while H.calls.load(SeqCst) < 1 {
        assert!(Instant::now() < deadline);
        iterate();
    }
    let queued: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let exhausted = FdExhaustion::start();
    let dispatches = (0..2000).filter(|_| iterate()).count();
    assert_eq!(H.calls.load(SeqCst), 1, "nothing accepted without fds");
    assert!(
        dispatches < 20,
        "{dispatches} dispatches in 2000 iterations: the watch spins"
    );
    drop(exhausted);
    let refill_deadline = Instant::now() + Duration::from_secs(5);
    while H.calls.load(SeqCst) < 4 {
        assert!(
            Instant::now() < refill_deadline,
            "queued clients lost after the back-off"
        );
        iterate();
        thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: live listener; the test's own context reference.
    unsafe {
        qio_net_listener_disconnect(l);
        while compat::aio_poll(aio_ctx, false) {}
        compat::g_main_context_unref(ctx);
    }
    unref(l);
    drop((first, queued));
}

/// The child process of `out_of_fds_backs_off_and_loses_no_client`, which
/// runs it (`--ignored`) with `QIO_TEST_BACKOFF_CHILD` set to the mode.
#[test]
#[ignore = "the child process of out_of_fds_backs_off_and_loses_no_client"]
fn backoff_child_entry() {
    let mode = std::env::var("QIO_TEST_BACKOFF_CHILD").expect(
        "run by out_of_fds_backs_off_and_loses_no_client, which sets QIO_TEST_BACKOFF_CHILD",
    );
    let _g = setup();
    backoff_case(mode == "aio");
}

#[test]
fn out_of_fds_backs_off_and_loses_no_client() {
    for mode in ["glib", "aio"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "backoff_child_entry",
                "--ignored",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("QIO_TEST_BACKOFF_CHILD", mode)
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{mode}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn disconnect_racing_with_wait_client_start_never_hangs() {
    let _g = setup();
    for i in 0..1000u64 {
        let (l, _) = open_loopback();
        let addr = l as usize;
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = thread::spawn(move || {
            // SAFETY: the test holds its reference until after the join.
            let s = unsafe { qio_net_listener_wait_client(addr as *mut QIONetListener) };
            tx.send(s as usize).unwrap();
        });
        // Spread the disconnect over the first ~100 µs of wait_client.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_nanos(i * 100) {
            std::hint::spin_loop();
        }
        // SAFETY: live listener; races with the start of wait_client.
        unsafe {
            qio_net_listener_disconnect(l);
        }
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("wait_client hung");
        assert_eq!(got, 0);
        waiter.join().unwrap();
        unref(l);
    }
}
