//! The host through QEMU's C API: QOM references, `Error`, the DNS
//! resolver, `QIOChannelSocket`, `GSource` watches, `AioContext` fd handlers,
//! bottom halves and timers.  The C API is provided by real QEMU or by the
//! standalone compat host; which one is decided at link time, and the
//! declarations come from its headers (bindgen, see `build.rs`).
//!
//! All of the listener's raw-pointer work on host objects is in this
//! module: `object.rs` (the QOM instance, owner references, the user's
//! callback triple), `watch.rs` (watches, timers, `wait_client`'s loop) and
//! the channel, error and address handles below.

mod object;
mod watch;

use std::{
    ffi::{c_char, c_int, c_uint, c_void, CStr, CString},
    marker::PhantomData,
    ptr::{self, NonNull},
};

/// The host API's declarations: `GLib`'s from glib-sys, QEMU's from the
/// io-sys bindings crate.  Nothing outside this module uses them directly.
pub(crate) mod sys {
    pub use glib_sys::*;
    pub use io_sys::*;
}
pub use object::{ClientSpec, Opaque, Owner, QIONetListener, QIONetListenerClientFunc};
pub use sys::{
    gpointer, AioContext, Error, GDestroyNotify, GMainContext, Object, SocketAddress, TypeInfo,
    Visitor,
};
pub use watch::{AioWatch, OneShotTimer, PrivateLoop, SourceWatch};

use crate::{
    host::{Host, HostError, ReadyHandler, SocketChannel, TimerHandler},
    listener::{Listener, ListenerHost, Target, Trace},
};

// What the listener assumes about the host's types beyond what the
// generated declarations already type-check (TypeInfo's fields are all
// named in ffi.rs, callback signatures come from the headers): QOM
// subclasses start with their parent, so a QIOChannelSocket pointer is a
// QIOChannel pointer and a listener pointer an Object pointer.
const _: () = {
    assert!(std::mem::offset_of!(sys::QIOChannelSocket, parent) == 0);
    assert!(std::mem::offset_of!(sys::QIOChannel, parent) == 0);
};

/// The QEMU C API host.
pub struct QemuHost;

impl Host for QemuHost {
    type Channel = Channel;
    type Owner = Owner;
    type Client = ClientSpec;
    type GlibCtx = GlibContext;
    type AioCtx = AioCtx;
    type SourceWatch = SourceWatch;
    type AioWatch = AioWatch;
    type Timer = OneShotTimer;
    type WaitLoop = PrivateLoop;
    type Error = LocalError;
    type Address = Address;

    fn new_channel() -> Channel {
        // SAFETY: qio_channel_socket_new never fails and returns a new
        // reference, which the handle takes over.
        unsafe { ObjectRef::from_new(sys::qio_channel_socket_new().cast()) }.expect("channel")
    }

    fn listen(
        channel: &Channel,
        addr: &Address,
        backlog: i32,
        err: Option<&mut LocalError>,
    ) -> bool {
        let errp = err.map_or(ptr::null_mut(), LocalError::errp);
        // SAFETY: the channel and address are live; errp is NULL or points
        // into a LocalError owned by our caller.
        unsafe {
            sys::qio_channel_socket_listen_sync(channel.raw(), addr.as_ptr(), backlog, errp) == 0
        }
    }

    fn watch_source<R: ReadyHandler<Self>>(ch: &Channel, ctx: GlibContext, h: R) -> SourceWatch {
        SourceWatch::new(ch, ctx, h)
    }

    fn watch_aio<R: ReadyHandler<Self>>(ch: &Channel, ctx: AioCtx, h: R) -> AioWatch {
        AioWatch::new(ch, ctx, h)
    }

    fn timer_glib<T: TimerHandler>(ctx: GlibContext, ms: u32, h: T) -> OneShotTimer {
        OneShotTimer::glib(ctx, ms, h)
    }

    fn timer_aio<T: TimerHandler>(ctx: AioCtx, ms: u32, h: T) -> OneShotTimer {
        OneShotTimer::aio(ctx, ms.into(), h)
    }

    fn report(msg: &str) {
        report(msg)
    }

    fn clock_ns() -> Option<u64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out pointer; CLOCK_MONOTONIC always exists (the
        // vDSO answers it without a system call).
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        }
        let ns = (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64);
        Some(ns | 1)
    }
}

impl ListenerHost for QemuHost {
    fn listener(owner: &Owner) -> &Listener<QemuHost> {
        owner.listener()
    }

    // Inlined: each call site passes one variant, so the match folds away
    // (the callback event fires for every client).
    #[inline]
    fn trace(listener: &Listener<QemuHost>, event: Trace<'_, QemuHost>) {
        // The QOM object that contains `listener` (no dereference).
        let obj = (listener as *const Listener<QemuHost>)
            .cast::<u8>()
            .wrapping_sub(std::mem::offset_of!(QIONetListener, listener))
            as *mut c_void;
        let ids = |client: &ClientSpec, target: Target<QemuHost>| {
            let func = client.func.map_or(ptr::null_mut(), |f| f as *mut c_void);
            let (gctx, actx) = match target {
                Target::Glib(c) => (c.0.cast(), ptr::null_mut()),
                Target::Aio(c) => (ptr::null_mut(), c.0.as_ptr().cast()),
            };
            (func, gctx, actx)
        };
        // SAFETY: the trace functions only format the pointers they get and
        // `by` is a 'static C string.
        unsafe {
            match event {
                Trace::Watch { client, target, by } | Trace::Unwatch { client, target, by } => {
                    let enabled = matches!(event, Trace::Watch { .. });
                    let (func, gctx, actx) = ids(client, target);
                    sys::qio_nl_trace_watch(obj, func, gctx, actx, by.as_ptr(), enabled)
                }
                Trace::Callback { client, target } => {
                    let (func, gctx, actx) = ids(client, target);
                    sys::qio_nl_trace_callback(obj, func, gctx, actx)
                }
                Trace::Batch { accepted } => {
                    // At most ACCEPT_BATCH.
                    sys::qio_nl_trace_batch(obj, accepted as c_uint)
                }
                Trace::Backoff { ms } => sys::qio_nl_trace_backoff(obj, ms),
                Trace::Release => sys::qio_nl_trace_release(obj),
            }
        }
    }
}

/// QEMU's `error_report("qio-net-listener: %s", msg)`.
pub fn report(msg: &str) {
    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // SAFETY: the format takes exactly one NUL-terminated string.
    unsafe { sys::error_report(c"qio-net-listener: %s".as_ptr(), msg.as_ptr()) }
}

/// A QOM object type the handles below may reference.
///
/// # Safety
/// Implementors are `#[repr(C)]` QOM instance structs whose first field is
/// (transitively) the QOM `Object` header.
pub unsafe trait QomType {}

/// A `QIOChannelSocket` instance as the listener shares it across threads.
/// C owns and mutates it (QEMU's Rust wraps such structs the same way, an
/// `Opaque<T>` in a newtype); Rust only passes its pointer to C and reads
/// `fd` (see [`Channel`]).  C signatures see the same type: the wrapper is
/// transparent.
#[repr(transparent)]
pub struct QIOChannelSocket(Opaque<sys::QIOChannelSocket>);

// SAFETY: a QOM instance struct from the host's headers, Object first.
unsafe impl QomType for QIOChannelSocket {}

// SAFETY: the channel functions the listener calls on a shared channel
// (accept, poll of its fd, close, shutdown, set_blocking, watches) are
// called from any thread by QEMU itself; the one field read from Rust,
// `fd`, is read only inside the socket's fd gate, where no close runs
// (the listener's disconnect rule, core/src/listener/gate.rs).
unsafe impl Sync for QIOChannelSocket {}

/// A strong reference to a QOM object (`object_ref`/`object_unref`), as
/// QEMU's Rust `Owned<T>`.  Not `Copy`: each handle releases its reference
/// once.
pub struct ObjectRef<T: QomType>(NonNull<T>, PhantomData<T>);

// SAFETY: QOM reference counts are atomic, and only objects that may be
// shared across threads (Sync) may be referenced from any thread, as in
// QEMU's own Owned<T>.
unsafe impl<T: QomType + Sync> Send for ObjectRef<T> {}
// SAFETY: as above; &ObjectRef gives only &T-level access.
unsafe impl<T: QomType + Sync> Sync for ObjectRef<T> {}

impl<T: QomType> ObjectRef<T> {
    /// Takes over a new reference (e.g. a constructor's result).
    ///
    /// # Safety
    /// `p` is NULL or a live object whose reference the caller gives up.
    pub unsafe fn from_new(p: *mut T) -> Option<Self> {
        NonNull::new(p).map(|p| ObjectRef(p, PhantomData))
    }

    /// Takes a new reference to an object the caller lends us.
    ///
    /// # Safety
    /// `p` is NULL or points to a live object.
    pub unsafe fn from_borrowed(p: *mut T) -> Option<Self> {
        let p = NonNull::new(p)?;
        // SAFETY: p is live per the contract; object_ref adds our reference.
        unsafe {
            sys::object_ref(p.as_ptr().cast());
        }
        Some(ObjectRef(p, PhantomData))
    }

    pub fn as_ptr(&self) -> *mut T {
        self.0.as_ptr()
    }

    /// Hands this reference to C.
    pub fn into_raw(self) -> *mut T {
        std::mem::ManuallyDrop::new(self).0.as_ptr()
    }
}

impl<T: QomType> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        // SAFETY: self holds a reference, so the object is live.
        unsafe {
            sys::object_ref(self.0.as_ptr().cast());
        }
        ObjectRef(self.0, PhantomData)
    }
}

impl<T: QomType> Drop for ObjectRef<T> {
    fn drop(&mut self) {
        // SAFETY: releases the reference this handle owns.
        unsafe { sys::object_unref(self.0.as_ptr().cast()) }
    }
}

/// Sets `*errp` QEMU-style (only if `errp` is not NULL and not yet set,
/// `&error_abort` aborts), with `msg` as the message.
///
/// # Safety
/// `errp` is NULL or a valid `Error **` as QEMU's convention requires.
pub unsafe fn set_error(errp: *mut *mut Error, msg: &str) {
    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
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

/// Whether `*errp` holds an error already (false for NULL `errp`).
///
/// # Safety
/// `errp` is NULL or a valid `Error **`.
pub unsafe fn error_is_set(errp: *mut *mut Error) -> bool {
    // SAFETY: per the contract; &error_abort and friends are valid to read.
    !errp.is_null() && unsafe { !(*errp).is_null() }
}

/// A locally owned `Error *` (NULL until something fails); freed on drop
/// unless propagated.
pub struct LocalError(*mut Error);

impl HostError for LocalError {
    fn new() -> Self {
        LocalError(ptr::null_mut())
    }

    fn is_set(&self) -> bool {
        !self.0.is_null()
    }

    fn with_message(msg: &str) -> Self {
        let mut e = LocalError::new();
        // SAFETY: e.errp() is a valid, unset Error **.
        unsafe {
            set_error(e.errp(), msg);
        }
        e
    }
}

impl LocalError {
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

/// Rejects an inet address whose numeric port is out of range, which
/// QEMU's resolver would wrap (99999 listens on 34463).  Service names and
/// everything else are left to the resolver.
///
/// # Safety
/// `addr` points to a valid `SocketAddress`.
pub unsafe fn check_port(addr: *const SocketAddress) -> Result<(), String> {
    // SAFETY: per the contract; the inet member is valid for that type and
    // its port is NULL or a C string.
    let port = unsafe {
        if (*addr).type_ != sys::SOCKET_ADDRESS_TYPE_INET {
            return Ok(());
        }
        opt_cstr((*addr).u.inet.port)
    };
    let Some(port) = port.and_then(|p| p.to_str().ok()) else {
        return Ok(());
    };
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_err()
    {
        return Err(format!("port {port} out of range"));
    }
    Ok(())
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
    unsafe {
        sys::g_free(list.cast());
    }
    Some(out)
}

/// A strong reference to a `QIOChannelSocket`.
pub type Channel = ObjectRef<QIOChannelSocket>;

impl ObjectRef<QIOChannelSocket> {
    /// The C instance, for the host's channel functions.
    fn raw(&self) -> *mut sys::QIOChannelSocket {
        self.as_ptr().cast()
    }

    fn ioc(&self) -> *mut sys::QIOChannel {
        // A QIOChannelSocket starts with its QIOChannel parent (QOM).
        self.as_ptr().cast()
    }

    /// A new `SocketAddress` for the local end (caller frees), or NULL.
    ///
    /// # Safety
    /// `errp` is NULL or a valid `Error **`.
    pub unsafe fn local_address(&self, errp: *mut *mut Error) -> *mut SocketAddress {
        // SAFETY: the channel is live; errp per contract.
        unsafe { sys::qio_channel_socket_get_local_address(self.raw(), errp) }
    }
}

impl SocketChannel for Channel {
    fn same(&self, other: &Self) -> bool {
        self.as_ptr() == other.as_ptr()
    }

    fn set_name(&self, name: &CStr) {
        // SAFETY: the channel is live; the host copies the name.
        unsafe { sys::qio_channel_set_name(self.ioc(), name.as_ptr()) }
    }

    fn set_nonblocking(&self) -> bool {
        // SAFETY: the channel is live; NULL errp discards any error.
        unsafe { sys::qio_channel_set_blocking(self.ioc(), false, ptr::null_mut()) }
    }

    fn pending(&self) -> bool {
        // Polled directly rather than relying on errno surviving the
        // host's error path after a failed accept.
        // SAFETY: the channel is live; fd is a plain int field.
        let fd = unsafe { (*self.raw()).fd };
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

    fn close(&self) {
        // SAFETY: the channel is live; NULL errp discards any error.
        unsafe {
            sys::qio_channel_close(self.ioc(), ptr::null_mut());
        }
    }

    fn shutdown(&self) {
        // SAFETY: the channel is live; NULL errp discards any error.
        unsafe {
            sys::qio_channel_shutdown(self.ioc(), sys::QIO_CHANNEL_SHUTDOWN_BOTH, ptr::null_mut());
        }
    }

    fn accept(&self) -> Option<Channel> {
        // SAFETY: the channel is live; a non-NULL result is a new reference
        // that the returned handle takes over.
        unsafe {
            ObjectRef::from_new(sys::qio_channel_socket_accept(self.raw(), ptr::null_mut()).cast())
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
    /// The main loop's `AioContext`, if the host has one yet.
    pub fn main() -> Option<AioCtx> {
        // SAFETY: plain getter without preconditions.
        NonNull::new(unsafe { sys::qemu_get_aio_context() }).map(AioCtx)
    }
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
    unsafe {
        sys::type_register_static(info);
    }
}

/// The signature of a QOM property getter (`ObjectPropertyAccessor`).
pub type PropertyGetter =
    unsafe extern "C" fn(*mut Object, *mut Visitor, *const c_char, *mut c_void, *mut *mut Error);

/// QOM: adds the read-only "uint64" property `name` to `obj`.
///
/// # Safety
/// `obj` is a live object; `get(obj, v, name, opaque, errp)` is safe to
/// call for as long as the object lives.
pub unsafe fn add_uint64_getter(
    obj: *mut Object,
    name: &'static CStr,
    get: PropertyGetter,
    opaque: *mut c_void,
) {
    // SAFETY: per the contract; QOM copies the name and type strings.
    unsafe {
        sys::object_property_add(
            obj,
            name.as_ptr(),
            c"uint64".as_ptr(),
            Some(get),
            None,
            None,
            opaque,
        );
    }
}

/// QAPI: visits a uint64 (the getter side: hands `*value` to the visitor).
///
/// # Safety
/// The arguments are those QOM passed to a property accessor.
pub unsafe fn visit_uint64(
    v: *mut Visitor,
    name: *const c_char,
    value: &mut u64,
    errp: *mut *mut Error,
) {
    // SAFETY: per the contract.
    unsafe {
        sys::visit_type_uint64(v, name, value, errp);
    }
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

/// Frees a string or array that the host `g_malloc`'ed.
///
/// # Safety
/// `p` is NULL or a live `g_malloc`'ed block that nobody else frees.
pub unsafe fn g_free(p: *mut c_void) {
    // SAFETY: per the contract.
    unsafe { sys::g_free(p) }
}

// c_int is what QEMU's backlog parameter is; the trait says i32.
const _: () = assert!(std::mem::size_of::<c_int>() == std::mem::size_of::<i32>());
