//! The C ABI: QEMU 10.2's `qio_net_listener_*` functions, the
//! `"qio-net-listener"` QOM type, and the glue between C pointers and the
//! state machine.  cbindgen turns this file into `include/io/net-listener.h`.
//!
//! No panic crosses into C: every export runs under `guard`, which turns a
//! panic into the function's documented failure value.

use std::{
    ffi::{c_char, c_int, c_void, CStr},
    mem::{align_of, size_of, ManuallyDrop},
    panic::{catch_unwind, AssertUnwindSafe},
    ptr::{self, addr_of_mut, NonNull},
    sync::Once,
};

pub use crate::host::qemu::{QIONetListener, QIONetListenerClientFunc};
use crate::{
    host::{
        qemu::{
            self as host, gpointer, AioContext, AioCtx, Channel, ClientSpec, Error, GDestroyNotify,
            GMainContext, GlibContext, Object, Owner, QIOChannelSocket, QemuHost, SocketAddress,
            TypeInfo,
        },
        Host,
    },
    listener::{Listener, Target},
};

const TYPE_QIO_NET_LISTENER: &CStr = c"qio-net-listener";

struct StaticTypeInfo(TypeInfo);
// SAFETY: the TypeInfo only holds pointers to 'static strings and functions.
unsafe impl Sync for StaticTypeInfo {}

// Filling every field by name makes the build fail if the host's TypeInfo
// has other fields than the ones we know of.
static TYPE_INFO: StaticTypeInfo = StaticTypeInfo(TypeInfo {
    name: TYPE_QIO_NET_LISTENER.as_ptr(),
    parent: c"object".as_ptr(),
    instance_size: size_of::<QIONetListener>() as _,
    instance_align: align_of::<QIONetListener>() as _,
    instance_init: Some(instance_init),
    instance_post_init: None,
    instance_finalize: Some(instance_finalize),
    abstract_: false,
    class_size: 0,
    class_init: None,
    class_base_init: None,
    class_data: ptr::null(),
    interfaces: ptr::null(),
});

static REGISTERED: Once = Once::new();

/// Registers the type once, whether reached through module_call_init() or
/// directly from qio_net_listener_new() (when a static link dropped the
/// load-time constructor).
unsafe extern "C" fn register_types() {
    // SAFETY: TYPE_INFO is 'static; Once makes this the only registration.
    REGISTERED.call_once(|| unsafe { host::type_register_static(&TYPE_INFO.0) });
}

unsafe extern "C" fn register_at_load() {
    host::register_qom_init(register_types);
}

/// QEMU's `type_init()`: a load-time constructor registering the type for
/// `module_call_init(MODULE_INIT_QOM)`.
#[used]
#[link_section = ".init_array"]
static REGISTER_AT_LOAD: unsafe extern "C" fn() = register_at_load;

unsafe extern "C" fn instance_init(obj: *mut Object) {
    let this = obj as *mut QIONetListener;
    // SAFETY: QOM allocated instance_size zeroed bytes for this instance and
    // calls instance_init once, before anyone else sees the object.
    unsafe { addr_of_mut!((*this).listener).write(Listener::new()) };
}

unsafe extern "C" fn instance_finalize(obj: *mut Object) {
    let this = obj as *mut QIONetListener;
    // SAFETY: the last reference is gone, so nothing else uses the state;
    // QOM calls finalize once, after instance_init.
    let r = catch_unwind(AssertUnwindSafe(|| unsafe {
        ptr::drop_in_place(addr_of_mut!((*this).listener))
    }));
    if r.is_err() {
        QemuHost::report("internal error while finalizing");
    }
}

/// Runs `f`, turning a panic into `default` so nothing unwinds into C.
fn guard<R>(what: &str, default: R, f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        QemuHost::report(&format!("internal error in {what}"));
        default
    })
}

/// Sets a clear error after a panic was caught in `what` (unless the
/// function had set one already), and returns `default`.
///
/// # Safety
/// `errp` is NULL or a valid `Error **`.
unsafe fn internal_error<R>(what: &str, errp: *mut *mut Error, default: R) -> R {
    // SAFETY: errp per the contract.
    unsafe {
        if !host::error_is_set(errp) {
            host::set_error(errp, &format!("{what}: internal error"));
        }
    }
    default
}

/// Borrows the caller's reference to `l` for the duration of a call.
fn borrowed(l: *mut QIONetListener) -> Option<ManuallyDrop<Owner>> {
    Owner::borrow_c(l)
}

/// Creates a new listener with no sockets, not connected.  Release it with
/// `object_unref(OBJECT(listener))`.
#[no_mangle]
pub extern "C" fn qio_net_listener_new() -> *mut QIONetListener {
    guard("qio_net_listener_new", ptr::null_mut(), || {
        // SAFETY: register_types is idempotent; afterwards the type exists.
        unsafe {
            register_types();
            host::object_new(TYPE_QIO_NET_LISTENER) as *mut QIONetListener
        }
    })
}

/// Sets the name given to every listening channel added from now on (the
/// name is copied; NULL clears it).
///
/// # Safety
/// `listener` is NULL or a live listener; `name` is NULL or a C string.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_set_name(
    listener: *mut QIONetListener,
    name: *const c_char,
) {
    guard("qio_net_listener_set_name", (), || {
        if let Some(l) = borrowed(listener) {
            // SAFETY: name is NULL or a valid C string (caller contract).
            l.listener().set_name(unsafe { host::opt_cstr(name) });
        }
    })
}

/// Resolves `addr` (a name may give several addresses) and listens on each
/// with backlog `num`.  Returns 0 if at least one address listened (the
/// others' errors are dropped), or -1 with the first error in `errp`.  May
/// be called several times to add addresses.
///
/// # Safety
/// `listener` is NULL or live; `addr` is NULL or a valid SocketAddress;
/// `errp` follows QEMU's Error convention.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_open_sync(
    listener: *mut QIONetListener,
    addr: *mut SocketAddress,
    num: c_int,
    errp: *mut *mut Error,
) -> c_int {
    let rc = guard("qio_net_listener_open_sync", None, || {
        let Some(l) = borrowed(listener).filter(|_| !addr.is_null()) else {
            // SAFETY: errp follows the Error convention (caller contract).
            unsafe {
                host::set_error(errp, "qio_net_listener_open_sync: NULL listener or address")
            };
            return Some(-1);
        };
        // SAFETY: addr is a valid SocketAddress, errp a valid Error **.
        let Some(addrs) = (unsafe { host::resolve(addr, errp) }) else {
            return Some(-1);
        };
        match l.listener().open(&l, &addrs, num) {
            Ok(()) => Some(0),
            Err(e) => {
                // SAFETY: errp follows the Error convention.
                unsafe { e.propagate(errp) };
                Some(-1)
            }
        }
    });
    // SAFETY: errp follows the Error convention (caller contract).
    rc.unwrap_or_else(|| unsafe { internal_error("qio_net_listener_open_sync", errp, -1) })
}

/// Adopts an already listening channel: the listener takes its own
/// reference, makes it non-blocking (each wake-up accepts every pending
/// client, up to a bound), becomes connected and watches it if a callback
/// is set.
///
/// # Safety
/// `listener` and `sioc` are NULL or live objects.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_add(
    listener: *mut QIONetListener,
    sioc: *mut QIOChannelSocket,
) {
    guard("qio_net_listener_add", (), || {
        // SAFETY: sioc is NULL or a live channel (caller contract).
        let channel = unsafe { Channel::from_borrowed(sioc) };
        if let (Some(l), Some(channel)) = (borrowed(listener), channel) {
            l.listener().add(&l, channel);
        }
    })
}

/// Sets (or with `func` NULL clears) the client callback, dispatched from
/// GMainContext `context` (NULL: the default context), which may run in
/// any thread.  The previous registration's `notify(data)` runs once, after
/// any callback still using it has returned.  Setting the identical
/// (func, data, notify, context) again does nothing.
///
/// # Safety
/// `listener` is NULL or live; `context` is NULL or a live GMainContext that
/// outlives the registration; `notify(data)` is safe to call once.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_set_client_func_full(
    listener: *mut QIONetListener,
    func: QIONetListenerClientFunc,
    data: gpointer,
    notify: GDestroyNotify,
    context: *mut GMainContext,
) {
    guard("qio_net_listener_set_client_func_full", (), || {
        if let Some(l) = borrowed(listener) {
            let spec = ClientSpec { func, data, notify };
            l.listener()
                .set_client(&l, spec, Target::Glib(GlibContext(context)));
        }
    })
}

/// As qio_net_listener_set_client_func_full() with the default context.
///
/// # Safety
/// As qio_net_listener_set_client_func_full().
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_set_client_func(
    listener: *mut QIONetListener,
    func: QIONetListenerClientFunc,
    data: gpointer,
    notify: GDestroyNotify,
) {
    // SAFETY: same contract, default context.
    unsafe { qio_net_listener_set_client_func_full(listener, func, data, notify, ptr::null_mut()) }
}

/// Sets (or with `func` NULL clears) the client callback, dispatched by the
/// fd handlers of AioContext `context` (NULL: the main-loop AioContext), so
/// that a nested aio_poll() loop such as AIO_WAIT_WHILE accepts clients.
/// Any AioContext works, IOThreads' included, and the call is safe from any
/// thread: what a removed handler holds is released by a bottom half in its
/// AioContext, so `context` must keep running until then.  If `context` is
/// NULL and the main loop has no AioContext yet, a callback cannot be set:
/// the call prints an error and changes nothing (clearing still works).
///
/// # Safety
/// `listener` is NULL or live; `context` is NULL or a live AioContext.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_set_client_aio_func(
    listener: *mut QIONetListener,
    func: QIONetListenerClientFunc,
    data: *mut c_void,
    context: *mut AioContext,
) {
    guard("qio_net_listener_set_client_aio_func", (), || {
        let Some(l) = borrowed(listener) else { return };
        let spec = ClientSpec {
            func,
            data,
            notify: None,
        };
        let target = match NonNull::new(context).map(AioCtx).or_else(AioCtx::main) {
            Some(ctx) => Target::Aio(ctx),
            None if func.is_none() => Target::Glib(GlibContext(ptr::null_mut())),
            None => {
                QemuHost::report("qio_net_listener_set_client_aio_func: no main-loop AioContext (qemu_init_main_loop not called)");
                return;
            }
        };
        l.listener().set_client(&l, spec, target);
    })
}

/// Blocks until one client connects on any of the listener's sockets and
/// returns it (the caller owns the reference).  Async watches are suspended
/// meanwhile and restored after.  Exactly one client is accepted; others
/// stay queued.  Returns NULL at once if the listener has no open socket,
/// and NULL if it is disconnected while waiting.
///
/// # Safety
/// `listener` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_wait_client(
    listener: *mut QIONetListener,
) -> *mut QIOChannelSocket {
    guard("qio_net_listener_wait_client", ptr::null_mut(), || {
        borrowed(listener)
            .and_then(|l| l.listener().wait_client(&l))
            .map_or(ptr::null_mut(), Channel::into_raw)
    })
}

/// Removes all watches and closes all channels; the listener is then not
/// connected.  Idempotent.
///
/// # Safety
/// `listener` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_disconnect(listener: *mut QIONetListener) {
    guard("qio_net_listener_disconnect", (), || {
        if let Some(l) = borrowed(listener) {
            l.listener().disconnect();
        }
    })
}

/// Whether the listener has sockets and has not been disconnected since
/// (false for NULL).
///
/// # Safety
/// `listener` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_is_connected(listener: *mut QIONetListener) -> bool {
    guard("qio_net_listener_is_connected", false, || {
        borrowed(listener).is_some_and(|l| l.listener().is_connected())
    })
}

/// The number of channels the listener holds (0 for NULL).
///
/// # Safety
/// `listener` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_nsioc(listener: *mut QIONetListener) -> usize {
    guard("qio_net_listener_nsioc", 0, || {
        borrowed(listener).map_or(0, |l| l.listener().nsioc())
    })
}

/// The nth channel, borrowed (valid while the listener lives), or NULL if
/// `n` is out of range.
///
/// # Safety
/// `listener` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_sioc(
    listener: *mut QIONetListener,
    n: usize,
) -> *mut QIOChannelSocket {
    guard("qio_net_listener_sioc", ptr::null_mut(), || {
        borrowed(listener)
            .and_then(|l| l.listener().sioc(n))
            .map_or(ptr::null_mut(), |c| c.as_ptr())
    })
}

/// A new SocketAddress for the nth channel's local address (free it with
/// qapi_free_SocketAddress), or NULL with an error if `n` is out of range.
///
/// # Safety
/// `listener` is NULL or live; `errp` follows QEMU's Error convention.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_get_local_address(
    listener: *mut QIONetListener,
    n: usize,
    errp: *mut *mut Error,
) -> *mut SocketAddress {
    let r = guard("qio_net_listener_get_local_address", None, || {
        match borrowed(listener).and_then(|l| l.listener().sioc(n)) {
            // SAFETY: errp follows the Error convention (caller contract).
            Some(c) => Some(unsafe { c.local_address(errp) }),
            None => {
                // SAFETY: as above.
                unsafe { host::set_error(errp, "Listener index out of range") };
                Some(ptr::null_mut())
            }
        }
    });
    // SAFETY: errp follows the Error convention (caller contract).
    r.unwrap_or_else(|| unsafe {
        internal_error("qio_net_listener_get_local_address", errp, ptr::null_mut())
    })
}
