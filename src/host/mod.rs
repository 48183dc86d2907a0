//! The host boundary: safe handles over the slice of QEMU's C API that the
//! listener calls (QOM references, `Error`, the DNS resolver,
//! `QIOChannelSocket`, GSource watches, AioContext fd handlers and bottom
//! halves).  The host is real QEMU or the standalone compat host; which one
//! is decided at link time, and the declarations come from its headers.
//!
//! All of the listener's raw-pointer work on host objects is here; the
//! state machine in `listener.rs` only sees the handles below.

pub mod bindings;

use std::{
    ffi::{c_char, c_int, c_void, CStr},
    panic::{catch_unwind, AssertUnwindSafe},
    ptr::{self, NonNull},
};

use bindings as sys;
// What the listener assumes about the host's types beyond what the
// generated declarations already type-check (TypeInfo's fields are all
// named in ffi.rs, callback signatures come from the headers): QOM
// subclasses start with their parent, so a QIOChannelSocket pointer is a
// QIOChannel pointer and a listener pointer an Object pointer.
const _: () = {
    assert!(std::mem::offset_of!(sys::QIOChannelSocket, parent) == 0);
    assert!(std::mem::offset_of!(sys::QIOChannel, parent) == 0);
};

pub use bindings::{
    gpointer, AioContext, Error, GDestroyNotify, GMainContext, Object, QIOChannelSocket,
    SocketAddress, TypeInfo,
};

/// Sets `*errp` QEMU-style (only if `errp` is not NULL and not yet set,
/// `&error_abort` aborts), with `msg` as the message.
///
/// # Safety
/// `errp` is NULL or a valid `Error **` as QEMU's convention requires.
pub unsafe fn set_error(errp: *mut *mut Error, msg: &str) {
    let msg = std::ffi::CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // SAFETY: the format is "%s" with one NUL-terminated string argument;
    // errp validity is the caller's contract.
    unsafe {
        sys::error_setg_internal(
            errp,
            c"qio-net-listener".as_ptr(),
            0,
            c"qio_net_listener".as_ptr(),
            c"%s".as_ptr(),
            msg.as_ptr(),
        )
    }
}

/// A locally owned `Error *` (NULL until something fails); freed on drop
/// unless propagated.
pub struct LocalError(*mut Error);

impl LocalError {
    pub fn new() -> Self {
        LocalError(ptr::null_mut())
    }

    pub fn is_set(&self) -> bool {
        !self.0.is_null()
    }

    /// A new error with `msg`, created by the host.
    pub fn with_message(msg: &str) -> Self {
        let mut e = LocalError::new();
        // SAFETY: e.errp() is a valid, unset Error **.
        unsafe { set_error(e.errp(), msg) };
        e
    }

    /// The `Error **` to hand to a host function.
    pub fn errp(&mut self) -> *mut *mut Error {
        &mut self.0
    }

    /// Moves the error (if any) into `errp` (QEMU's `error_propagate`).
    ///
    /// # Safety
    /// `errp` is NULL or a valid `Error **`.
    pub unsafe fn propagate(mut self, errp: *mut *mut Error) {
        let err = std::mem::replace(&mut self.0, ptr::null_mut());
        if !err.is_null() {
            // SAFETY: err is an Error we own; errp is the caller's contract.
            unsafe { sys::error_propagate(errp, err) }
        }
    }
}

impl Default for LocalError {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LocalError {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: we own the Error and nobody else points to it.
            unsafe { sys::error_free(self.0) }
        }
    }
}

/// A `SocketAddress` the listener owns (freed with
/// `qapi_free_SocketAddress`).
pub struct Address(NonNull<SocketAddress>);

impl Address {
    pub fn as_ptr(&self) -> *mut SocketAddress {
        self.0.as_ptr()
    }
}

impl Drop for Address {
    fn drop(&mut self) {
        // SAFETY: the resolver gave us this address and it is ours alone.
        unsafe { sys::qapi_free_SocketAddress(self.0.as_ptr()) }
    }
}

/// Resolves `addr` with the host's DNS resolver (one address per result).
///
/// # Safety
/// `addr` points to a valid `SocketAddress`; `errp` is NULL or valid.
pub unsafe fn resolve(addr: *mut SocketAddress, errp: *mut *mut Error) -> Option<Vec<Address>> {
    let mut n: usize = 0;
    let mut list: *mut *mut SocketAddress = ptr::null_mut();
    // SAFETY: the resolver is a process-wide singleton; addr and errp are
    // valid per our contract; n and list are valid out-pointers.
    let rc = unsafe {
        sys::qio_dns_resolver_lookup_sync(
            sys::qio_dns_resolver_get_instance(),
            addr,
            &mut n,
            &mut list,
            errp,
        )
    };
    if rc < 0 {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: on success list holds n addresses that we now own.
        let a = unsafe { *list.add(i) };
        if let Some(a) = NonNull::new(a) {
            out.push(Address(a));
        }
    }
    // SAFETY: the array itself was g_malloc'ed for us; its elements moved
    // into `out`.
    unsafe { sys::g_free(list.cast()) };
    Some(out)
}

/// A strong reference to a `QIOChannelSocket`.
pub struct Channel(NonNull<QIOChannelSocket>);

// SAFETY: QOM reference counts are atomic and the socket operations the
// listener performs (accept, close, watches) are valid from any thread.
unsafe impl Send for Channel {}
// SAFETY: as above; &Channel only exposes those same operations.
unsafe impl Sync for Channel {}

impl Channel {
    /// A new channel with no socket yet.
    pub fn new() -> Channel {
        // SAFETY: qio_channel_socket_new never fails and returns a new
        // reference, which this handle takes over.
        Channel(NonNull::new(unsafe { sys::qio_channel_socket_new() }).expect("channel"))
    }

    /// Takes a new reference to a channel the caller lends us.
    ///
    /// # Safety
    /// `p` is NULL or points to a live `QIOChannelSocket`.
    pub unsafe fn from_borrowed(p: *mut QIOChannelSocket) -> Option<Channel> {
        let p = NonNull::new(p)?;
        // SAFETY: p is live per the contract; object_ref adds our reference.
        unsafe { sys::object_ref(p.as_ptr().cast()) };
        Some(Channel(p))
    }

    pub fn as_ptr(&self) -> *mut QIOChannelSocket {
        self.0.as_ptr()
    }

    /// Hands this reference to C.
    pub fn into_raw(self) -> *mut QIOChannelSocket {
        std::mem::ManuallyDrop::new(self).0.as_ptr()
    }

    fn ioc(&self) -> *mut sys::QIOChannel {
        // A QIOChannelSocket starts with its QIOChannel parent (QOM).
        self.0.as_ptr().cast()
    }

    /// Listens on `addr` with backlog `num`; a failure is stored in `err`
    /// if given (and discarded otherwise).
    pub fn listen(&self, addr: &Address, num: c_int, err: Option<&mut LocalError>) -> bool {
        let errp = err.map_or(ptr::null_mut(), LocalError::errp);
        // SAFETY: the channel and address are live; errp is NULL or points
        // into a LocalError owned by our caller.
        unsafe { sys::qio_channel_socket_listen_sync(self.as_ptr(), addr.as_ptr(), num, errp) == 0 }
    }

    pub fn set_name(&self, name: &CStr) {
        // SAFETY: the channel is live; the host copies the name.
        unsafe { sys::qio_channel_set_name(self.ioc(), name.as_ptr()) }
    }

    /// Makes accept() return at once when nothing is pending.  Returns
    /// false (error discarded) if the host could not.
    pub fn set_nonblocking(&self) -> bool {
        // SAFETY: the channel is live; NULL errp discards any error.
        unsafe { sys::qio_channel_set_blocking(self.ioc(), false, ptr::null_mut()) }
    }

    /// Whether a client is waiting to be accepted (the socket is readable
    /// now).  After a failed accept this tells a resource shortage (EMFILE,
    /// ENFILE, ENOBUFS, ENOMEM: the client is still queued) from an empty
    /// queue, without relying on errno surviving the host's error path.
    pub fn pending(&self) -> bool {
        // SAFETY: the channel is live; fd is a plain int field.
        let fd = unsafe { (*self.as_ptr()).fd };
        if fd < 0 {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 && pfd.revents & libc::POLLIN != 0 }
    }

    /// Closes the socket; the listener has nothing to report a failure to.
    pub fn close(&self) {
        // SAFETY: the channel is live; NULL errp discards any error.
        unsafe { sys::qio_channel_close(self.ioc(), ptr::null_mut()) };
    }

    /// Accepts one pending client, or None (error discarded, as upstream).
    pub fn accept(&self) -> Option<Channel> {
        // SAFETY: the channel is live; a non-NULL result is a new reference
        // that the returned handle takes over.
        let p = unsafe { sys::qio_channel_socket_accept(self.as_ptr(), ptr::null_mut()) };
        NonNull::new(p).map(Channel)
    }

    /// A new `SocketAddress` for the local end (caller frees), or NULL.
    ///
    /// # Safety
    /// `errp` is NULL or a valid `Error **`.
    pub unsafe fn local_address(&self, errp: *mut *mut Error) -> *mut SocketAddress {
        // SAFETY: the channel is live; errp per contract.
        unsafe { sys::qio_channel_socket_get_local_address(self.as_ptr(), errp) }
    }
}

impl Default for Channel {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for Channel {
    fn clone(&self) -> Self {
        // SAFETY: self holds a reference, so the object is live.
        unsafe { sys::object_ref(self.0.as_ptr().cast()) };
        Channel(self.0)
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: drops the reference this handle owns.
        unsafe { sys::object_unref(self.0.as_ptr().cast()) }
    }
}

/// What a watch calls when its listening socket is readable.
pub trait ReadyHandler: Send + Sync + 'static {
    fn ready(&self, channel: &Channel);
}

struct WatchData<H> {
    handler: H,
    channel: Channel,
}

fn run_handler<H: ReadyHandler>(data: &WatchData<H>) {
    // Nothing may unwind into the C event loop.
    if catch_unwind(AssertUnwindSafe(|| data.handler.ready(&data.channel))).is_err() {
        eprintln!("qio-net-listener: internal error in the accept handler; continuing");
    }
}

/// GSource callback (QIOChannelFunc).
unsafe extern "C" fn source_ready<H: ReadyHandler>(
    _ioc: *mut sys::QIOChannel,
    _cond: sys::GIOCondition,
    opaque: gpointer,
) -> sys::gboolean {
    // SAFETY: opaque is the WatchData<H> we registered; GLib frees it (via
    // free_data) only after the source is destroyed and no dispatch of it
    // is running.
    run_handler(unsafe { &*(opaque as *const WatchData<H>) });
    1 // G_SOURCE_CONTINUE
}

/// AioContext fd handler (IOHandler).
unsafe extern "C" fn aio_ready<H: ReadyHandler>(opaque: *mut c_void) {
    // SAFETY: opaque is the WatchData<H> we registered; it is freed only by
    // a bottom half in this same AioContext scheduled after the handler was
    // removed, which cannot run while this handler runs.
    run_handler(unsafe { &*(opaque as *const WatchData<H>) });
}

/// GDestroyNotify / QEMUBHFunc that frees a boxed WatchData<H>.
unsafe extern "C" fn free_data<H>(opaque: *mut c_void) {
    // SAFETY: opaque came from Box::into_raw in a watch constructor and
    // this is its single release (GSource notify or the one-shot BH).
    drop(unsafe { Box::from_raw(opaque as *mut WatchData<H>) });
}

/// A GSource watch on a channel; destroyed (and its handler released once
/// no dispatch of it runs) when dropped.  Not `Clone`: it is destroyed once.
pub struct SourceWatch(NonNull<sys::GSource>);

// SAFETY: g_source_destroy and g_source_unref are thread-safe.
unsafe impl Send for SourceWatch {}

impl SourceWatch {
    /// Watches `channel` for incoming clients, dispatched from `ctx`
    /// (NULL: GLib's default context).
    pub fn new<H: ReadyHandler>(channel: &Channel, ctx: GlibContext, handler: H) -> SourceWatch {
        let data = Box::into_raw(Box::new(WatchData {
            handler,
            channel: channel.clone(),
        }));
        // SAFETY: the channel is live; data stays valid until GLib calls
        // free_data::<H>, exactly once; ctx is NULL or a live context (the
        // caller of set_client_func_full guarantees it).
        let src = unsafe {
            sys::qio_channel_add_watch_source(
                channel.ioc(),
                sys::G_IO_IN,
                Some(source_ready::<H>),
                data.cast(),
                Some(free_data::<H>),
                ctx.0,
            )
        };
        SourceWatch(NonNull::new(src).expect("qio_channel_add_watch_source"))
    }
}

impl Drop for SourceWatch {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the source; destroy detaches it
        // (GLib defers the data's notify until a running dispatch ends).
        unsafe {
            sys::g_source_destroy(self.0.as_ptr());
            sys::g_source_unref(self.0.as_ptr());
        }
    }
}

/// A `GMainContext *` the user chose (NULL: the default context).  The
/// listener never dereferences it and holds no reference: as in QEMU, the
/// context must outlive the registration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GlibContext(pub *mut GMainContext);
// SAFETY: GMainContext is thread-safe; we only pass the pointer to GLib.
unsafe impl Send for GlibContext {}
// SAFETY: as above.
unsafe impl Sync for GlibContext {}

/// An `AioContext *` the user chose.  As in QEMU, the listener holds no
/// reference: the context must outlive the registration and keep running
/// until the release bottom half of a removed watch has run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AioCtx(pub NonNull<AioContext>);
// SAFETY: AioContext functions used here are callable from any thread.
unsafe impl Send for AioCtx {}
// SAFETY: as above.
unsafe impl Sync for AioCtx {}

impl AioCtx {
    /// The main loop's AioContext, if the host has one yet.
    pub fn main() -> Option<AioCtx> {
        // SAFETY: plain getter without preconditions.
        NonNull::new(unsafe { sys::qemu_get_aio_context() }).map(AioCtx)
    }
}

/// An AioContext fd handler on a channel.  Dropping it removes the handler
/// and releases the handler's data in a one-shot bottom half of the same
/// AioContext: a BH of a context never runs while one of its handlers runs,
/// so the data outlives any callback in flight, whichever thread drops the
/// watch.  This is what lets any AioContext, in any thread, drive a listener.
pub struct AioWatch {
    ctx: AioCtx,
    channel: Channel,
    data: *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
}

// SAFETY: the data is only touched by the handler (in ctx's thread) and by
// the release BH (same thread); the raw pointer itself is just carried.
unsafe impl Send for AioWatch {}

impl AioWatch {
    pub fn new<H: ReadyHandler>(channel: &Channel, ctx: AioCtx, handler: H) -> AioWatch {
        let data = Box::into_raw(Box::new(WatchData {
            handler,
            channel: channel.clone(),
        }));
        // SAFETY: the channel and context are live; data stays valid until
        // the release BH scheduled by Drop frees it.
        unsafe {
            sys::qio_channel_set_aio_fd_handler(
                channel.ioc(),
                ctx.0.as_ptr(),
                Some(aio_ready::<H>),
                ptr::null_mut(),
                None,
                data.cast(),
            )
        };
        AioWatch {
            ctx,
            channel: channel.clone(),
            data: data.cast(),
            free: free_data::<H>,
        }
    }
}

impl Drop for AioWatch {
    fn drop(&mut self) {
        // SAFETY: removes the handler installed in new(); then hands the
        // data to a one-shot BH in the same context, its single release.
        unsafe {
            sys::qio_channel_set_aio_fd_handler(
                self.channel.ioc(),
                self.ctx.0.as_ptr(),
                None,
                ptr::null_mut(),
                None,
                ptr::null_mut(),
            );
            sys::aio_bh_schedule_oneshot_full(
                self.ctx.0.as_ptr(),
                Some(self.free),
                self.data,
                c"qio_net_listener_release_watch".as_ptr(),
            );
        }
    }
}

/// What a one-shot timer calls when it expires.
pub trait TimerHandler: Send + Sync + 'static {
    fn fire(&self);
}

fn run_timer<T: TimerHandler>(handler: &T) {
    if catch_unwind(AssertUnwindSafe(|| handler.fire())).is_err() {
        eprintln!("qio-net-listener: internal error in a timer; continuing");
    }
}

/// GSourceFunc of a GLib one-shot timer.
unsafe extern "C" fn glib_timer_fired<T: TimerHandler>(opaque: gpointer) -> sys::gboolean {
    // SAFETY: opaque is the Box<T> we registered; GLib frees it (via
    // free_box) only once the source is destroyed and not dispatching.
    run_timer(unsafe { &*(opaque as *const T) });
    0 // G_SOURCE_REMOVE: one-shot
}

/// QEMUTimerCB of an AioContext one-shot timer.
unsafe extern "C" fn aio_timer_fired<T: TimerHandler>(opaque: *mut c_void) {
    // SAFETY: opaque is the Box<T> we registered; it is freed only by a
    // bottom half of the same AioContext, which cannot run while this does.
    run_timer(unsafe { &*(opaque as *const T) });
}

unsafe extern "C" fn free_box<T>(opaque: *mut c_void) {
    // SAFETY: opaque came from Box::into_raw(Box<T>); this is its single
    // release (GSource notify, or the AioContext release BH).
    drop(unsafe { Box::from_raw(opaque as *mut T) });
}

/// What an AioContext timer's release BH frees: the timer and its data.
struct AioTimerRelease {
    timer: *mut sys::QEMUTimer,
    data: *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
}

unsafe extern "C" fn release_aio_timer(opaque: *mut c_void) {
    // SAFETY: opaque is the Box<AioTimerRelease> handed to this one-shot
    // BH; the timer was deleted before, and a BH of its AioContext never
    // runs during one of its timer callbacks, so nothing uses either now.
    unsafe {
        let r = Box::from_raw(opaque as *mut AioTimerRelease);
        sys::qio_nl_timer_free(r.timer);
        (r.free)(r.data);
    }
}

/// A one-shot timer in the listener's dispatch context: a GLib timeout
/// source on a GMainContext, or a QEMUTimer on an AioContext (so that it
/// also fires inside nested aio_poll loops).  Dropping it cancels it; what
/// it holds is released once no call of it can still be running, exactly
/// like the watches.
pub struct OneShotTimer(TimerInner);

enum TimerInner {
    Glib(NonNull<sys::GSource>),
    Aio {
        ctx: AioCtx,
        release: Option<Box<AioTimerRelease>>,
    },
}

// SAFETY: cancelling (g_source_destroy, timer_del, scheduling a BH) is
// thread-safe; the data is only touched in the context's own thread.
unsafe impl Send for OneShotTimer {}

impl OneShotTimer {
    pub fn glib<T: TimerHandler>(ctx: GlibContext, ms: u32, handler: T) -> OneShotTimer {
        let data = Box::into_raw(Box::new(handler));
        // SAFETY: a new source; data stays valid until GLib calls
        // free_box::<T> once; ctx is NULL or a live context.
        unsafe {
            let src = sys::g_timeout_source_new(ms);
            let func: unsafe extern "C" fn(gpointer) -> sys::gboolean = glib_timer_fired::<T>;
            sys::g_source_set_callback(src, Some(func), data.cast(), Some(free_box::<T>));
            sys::g_source_attach(src, ctx.0);
            OneShotTimer(TimerInner::Glib(
                NonNull::new(src).expect("g_timeout_source_new"),
            ))
        }
    }

    pub fn aio<T: TimerHandler>(ctx: AioCtx, ms: i64, handler: T) -> OneShotTimer {
        let data = Box::into_raw(Box::new(handler));
        // SAFETY: the context is live; data stays valid until the release
        // BH scheduled by Drop frees it (and the timer) once.
        unsafe {
            let timer = sys::qio_nl_aio_timer_new_ms(
                ctx.0.as_ptr(),
                Some(aio_timer_fired::<T>),
                data.cast(),
            );
            sys::timer_mod(timer, sys::qio_nl_clock_ms() + ms);
            OneShotTimer(TimerInner::Aio {
                ctx,
                release: Some(Box::new(AioTimerRelease {
                    timer,
                    data: data.cast(),
                    free: free_box::<T>,
                })),
            })
        }
    }
}

impl Drop for OneShotTimer {
    fn drop(&mut self) {
        match &mut self.0 {
            // SAFETY: we own one reference; destroy detaches the source and
            // GLib defers the data's release past a running dispatch.
            TimerInner::Glib(src) => unsafe {
                sys::g_source_destroy(src.as_ptr());
                sys::g_source_unref(src.as_ptr());
            },
            TimerInner::Aio { ctx, release } => {
                let Some(release) = release.take() else {
                    return;
                };
                // SAFETY: timer_del is thread-safe; the release BH (in the
                // timer's own context) frees the timer and its data once.
                unsafe {
                    sys::timer_del(release.timer);
                    sys::aio_bh_schedule_oneshot_full(
                        ctx.0.as_ptr(),
                        Some(release_aio_timer),
                        Box::into_raw(release).cast(),
                        c"qio_net_listener_release_timer".as_ptr(),
                    );
                }
            }
        }
    }
}

/// A private GMainContext iterated until `quit`, for `wait_client`.
///
/// Not a GMainLoop: g_main_loop_run() forgets a g_main_loop_quit() that
/// came before it, so a disconnect racing with the start of wait_client
/// would leave it blocked.  The flag cannot be missed, and
/// g_main_context_wakeup() interrupts (or pre-empts) a blocking iteration.
pub struct PrivateLoop {
    ctx: NonNull<GMainContext>,
    done: std::sync::atomic::AtomicBool,
}

// SAFETY: quit() only touches an atomic and calls the thread-safe
// g_main_context_wakeup; run() is called by the one thread that waits.
unsafe impl Send for PrivateLoop {}
// SAFETY: as above.
unsafe impl Sync for PrivateLoop {}

impl PrivateLoop {
    pub fn new() -> PrivateLoop {
        // SAFETY: a constructor without preconditions; GLib aborts on OOM.
        let ctx = unsafe { sys::g_main_context_new() };
        PrivateLoop {
            ctx: NonNull::new(ctx).expect("g_main_context_new"),
            done: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn context(&self) -> GlibContext {
        GlibContext(self.ctx.as_ptr())
    }

    /// Dispatches the context until `quit` (which may come before `run`).
    pub fn run(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        while !self.done.load(SeqCst) {
            // SAFETY: the context is live for as long as self; only this
            // thread iterates it.
            unsafe { sys::g_main_context_iteration(self.ctx.as_ptr(), 1) };
        }
    }

    pub fn quit(&self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: the context is live; waking it is thread-safe.
        unsafe { sys::g_main_context_wakeup(self.ctx.as_ptr()) }
    }
}

impl Default for PrivateLoop {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PrivateLoop {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in new().
        unsafe { sys::g_main_context_unref(self.ctx.as_ptr()) }
    }
}

/// Frees a string or array that the host g_malloc'ed.
///
/// # Safety
/// `p` is NULL or a live g_malloc'ed block that nobody else frees.
pub unsafe fn g_free(p: *mut c_void) {
    // SAFETY: per the contract.
    unsafe { sys::g_free(p) }
}

/// QOM: take or drop a reference to any object.
///
/// # Safety
/// `obj` points to a live QOM object.
pub unsafe fn object_ref(obj: *mut c_void) {
    // SAFETY: per the contract.
    unsafe { sys::object_ref(obj) };
}

/// # Safety
/// `obj` points to a live QOM object and the caller owns the reference.
pub unsafe fn object_unref(obj: *mut c_void) {
    // SAFETY: per the contract.
    unsafe { sys::object_unref(obj) }
}

/// QOM: a new instance of the type named `name`.
///
/// # Safety
/// `name` is a registered type.
pub unsafe fn object_new(name: &CStr) -> *mut Object {
    // SAFETY: per the contract.
    unsafe { sys::object_new(name.as_ptr()) }
}

/// QOM: registers `info` for `module_call_init(MODULE_INIT_QOM)` callers.
///
/// # Safety
/// `info` is 'static and valid.
pub unsafe fn type_register_static(info: *const TypeInfo) {
    // SAFETY: per the contract.
    unsafe { sys::type_register_static(info) };
}

/// Registers `f` to run at `module_call_init(MODULE_INIT_QOM)`.
pub fn register_qom_init(f: unsafe extern "C" fn()) {
    // SAFETY: f is a plain function without arguments.
    unsafe { sys::register_module_init(Some(f), sys::MODULE_INIT_QOM) }
}

/// A C string pointer as `&CStr`, or None for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for `'a`.
pub unsafe fn opt_cstr<'a>(p: *const c_char) -> Option<&'a CStr> {
    // SAFETY: per the contract.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) })
}
