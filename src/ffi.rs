//! The C ABI: QEMU 10.2's `qio_net_listener_*` functions, the
//! `"qio-net-listener"` QOM type, and the glue between C pointers and the
//! state machine.  cbindgen turns this file into `include/io/net-listener.h`.
//!
//! No panic crosses into C: every export runs under `guard`, which turns a
//! panic into the function's documented failure value (and an `Error` where
//! the function has an `errp`).
//!
//! The exports' doc comments are the C header's, in QEMU's gtk-doc style.
//! Their safety contract is the C one, stated once in the header preamble
//! (cbindgen.toml): every object pointer is NULL (where documented) or a
//! live object of its type, `errp` follows QEMU's Error convention.  Hence
//! no rustdoc `# Safety` sections on the exports.  Nor Markdown: gtk-doc
//! marks a function's comment with its bare name (`name:`), so the
//! backticks `doc_markdown` asks for would break the header.
#![allow(clippy::missing_safety_doc, clippy::doc_markdown)]

use std::{
    ffi::{c_char, c_int, c_void, CStr},
    mem::{align_of, size_of, ManuallyDrop},
    panic::{catch_unwind, AssertUnwindSafe},
    ptr::{self, addr_of_mut, NonNull},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Once,
    },
};

pub use crate::qemu::{QIONetListener, QIONetListenerClientFunc};
use crate::{
    host::Host,
    listener::{Counters, Listener, Target},
    qemu::{
        self as host, gpointer, AioContext, AioCtx, Channel, ClientSpec, Error, GDestroyNotify,
        GMainContext, GlibContext, Object, Owner, QIOChannelSocket, QemuHost, SocketAddress,
        TypeInfo, Visitor,
    },
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
    instance_size: size_of::<QIONetListener>(),
    instance_align: align_of::<QIONetListener>(),
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

extern "C" fn register_at_load() {
    host::register_qom_init(register_types);
}

/// QEMU's `type_init()`, as QEMU's own Rust does it (`module_init!`): a
/// load-time constructor registering the type for
/// `module_call_init(MODULE_INIT_QOM)`, in the section where the target's
/// loader finds constructors.
#[used]
#[cfg_attr(
    not(any(target_vendor = "apple", target_os = "windows")),
    link_section = ".init_array"
)]
#[cfg_attr(target_vendor = "apple", link_section = "__DATA,__mod_init_func")]
#[cfg_attr(target_os = "windows", link_section = ".CRT$XCU")]
static REGISTER_AT_LOAD: extern "C" fn() = register_at_load;

/// The listener's counters, read-only QOM properties of type "uint64"
/// (beyond QEMU's API: `object_property_get_uint(OBJECT(l), "accepted",
/// &err)`); see `listener::Counters` for what each counts.
type CounterField = fn(&Counters) -> &AtomicU64;
const COUNTERS: [(&CStr, CounterField); 6] = [
    (c"accepted", |c| &c.accepted),
    (c"accept-errors-resource", |c| &c.accept_errors_resource),
    (c"accept-errors-other", |c| &c.accept_errors_other),
    (c"backoffs", |c| &c.backoffs),
    (c"wakeups", |c| &c.wakeups),
    (c"max-batch", |c| &c.max_batch),
];

/// ObjectPropertyAccessor of the counters; `opaque` is the index into
/// COUNTERS.
unsafe extern "C" fn get_counter(
    obj: *mut Object,
    v: *mut Visitor,
    name: *const c_char,
    opaque: *mut c_void,
    errp: *mut *mut Error,
) {
    let this = obj as *const QIONetListener;
    let field = COUNTERS[opaque as usize].1;
    // SAFETY: QOM calls the getter on a live instance of our type.
    let mut value = field(unsafe { &(*this).listener }.counters()).load(Relaxed);
    // SAFETY: v, name and errp come from QOM for this very call.
    unsafe {
        host::visit_uint64(v, name, &mut value, errp);
    }
}

unsafe extern "C" fn instance_init(obj: *mut Object) {
    let this = obj.cast::<QIONetListener>();
    // SAFETY: QOM allocated instance_size zeroed bytes for this instance and
    // calls instance_init once, before anyone else sees the object.
    unsafe {
        addr_of_mut!((*this).listener).write(Listener::new());
    }
    for (i, (name, _)) in COUNTERS.iter().enumerate() {
        // SAFETY: obj is being initialized; the names are 'static; the
        // getter reads only the state written above; no setter: read-only.
        unsafe {
            host::add_uint64_getter(obj, name, get_counter, i as *mut c_void);
        }
    }
}

unsafe extern "C" fn instance_finalize(obj: *mut Object) {
    let this = obj.cast::<QIONetListener>();
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
///
/// # Safety
/// `l` is NULL or a live listener the caller holds a reference on, as the
/// header requires of every listener argument.
unsafe fn borrowed(l: *mut QIONetListener) -> Option<ManuallyDrop<Owner>> {
    // SAFETY: per the contract.
    unsafe { Owner::borrow_c(l) }
}

/// qio_net_listener_new:
///
/// Create a new network listener service, which is not listening on any
/// sockets initially.  Release it with object_unref(OBJECT(listener)).
///
/// Returns: the new listener
#[no_mangle]
pub extern "C" fn qio_net_listener_new() -> *mut QIONetListener {
    guard("qio_net_listener_new", ptr::null_mut(), || {
        // SAFETY: register_types is idempotent; afterwards the type exists.
        unsafe {
            register_types();
            host::object_new(TYPE_QIO_NET_LISTENER).cast::<QIONetListener>()
        }
    })
}

/// qio_net_listener_set_name:
/// @listener: the network listener object, or %NULL (nothing happens)
/// @name: the listener name, or %NULL to clear it; copied
///
/// Set the name of the listener.  Every listening channel added from now on
/// gets it as its channel name (qio_channel_set_name()), a debugging aid.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_set_name(
    listener: *mut QIONetListener,
    name: *const c_char,
) {
    guard("qio_net_listener_set_name", (), || {
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        if let Some(l) = unsafe { borrowed(listener) } {
            // SAFETY: name is NULL or a valid C string (caller contract).
            l.listener().set_name(unsafe { host::opt_cstr(name) });
        }
    })
}

/// qio_net_listener_open_sync:
/// @listener: the network listener object
/// @addr: the address to listen on
/// @num: the backlog: the amount of expected connections
/// @errp: pointer to a NULL initialized error object
///
/// Synchronously open a listening connection on all addresses associated
/// with @addr (a host name may resolve to several).  It succeeds if at least
/// one address listened; the other addresses' errors are dropped.  This
/// method may also be invoked multiple times, in order to have a single
/// listener on multiple distinct addresses.  A %NULL @listener or @addr is
/// an error.
///
/// Returns: 0 on success, -1 with the first error in @errp otherwise
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_open_sync(
    listener: *mut QIONetListener,
    addr: *mut SocketAddress,
    num: c_int,
    errp: *mut *mut Error,
) -> c_int {
    let rc = guard("qio_net_listener_open_sync", None, || {
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        let Some(l) = unsafe { borrowed(listener) }.filter(|_| !addr.is_null()) else {
            // SAFETY: errp follows the Error convention (caller contract).
            unsafe {
                host::set_error(errp, "qio_net_listener_open_sync: NULL listener or address");
            }
            return Some(-1);
        };
        // SAFETY: addr is a valid SocketAddress (caller contract).
        if let Err(msg) = unsafe { host::check_port(addr) } {
            // SAFETY: errp follows the Error convention.
            unsafe {
                host::set_error(errp, &msg);
            }
            return Some(-1);
        }
        // SAFETY: addr is a valid SocketAddress, errp a valid Error **.
        let Some(addrs) = (unsafe { host::resolve(addr, errp) }) else {
            return Some(-1);
        };
        match l.listener().open(&l, &addrs, num) {
            Ok(()) => Some(0),
            Err(e) => {
                // SAFETY: errp follows the Error convention.
                unsafe {
                    e.propagate(errp);
                }
                Some(-1)
            }
        }
    });
    // SAFETY: errp follows the Error convention (caller contract).
    rc.unwrap_or_else(|| unsafe { internal_error("qio_net_listener_open_sync", errp, -1) })
}

/// qio_net_listener_add:
/// @listener: the network listener object
/// @sioc: the socket I/O channel, already listening
///
/// Associate a listening socket I/O channel with the listener.  The
/// listener will acquire a new reference on @sioc, so the caller should
/// release its own reference if it no longer requires the object.  The
/// socket is made non-blocking (each wake-up accepts the pending clients,
/// up to a bound), the listener becomes connected, and the socket is
/// watched at once if a client callback is set.  Nothing happens if either
/// argument is %NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_add(
    listener: *mut QIONetListener,
    sioc: *mut QIOChannelSocket,
) {
    guard("qio_net_listener_add", (), || {
        // SAFETY: sioc is NULL or a live channel (caller contract).
        let channel = unsafe { Channel::from_borrowed(sioc) };
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        if let (Some(l), Some(channel)) = (unsafe { borrowed(listener) }, channel) {
            l.listener().add(&l, channel);
        }
    })
}

/// qio_net_listener_set_client_func_full:
/// @listener: the network listener object
/// @func: the callback function, or %NULL to stop accepting
/// @data: opaque data to pass to @func
/// @notify: callback to free @data, or %NULL
/// @context: the context that the sources will be bound to.  If %NULL,
///           the default context will be used.
///
/// Register @func to be invoked whenever a new client connects to the
/// listener.  @func will be invoked passing in the QIOChannelSocket
/// instance for the client; the listener drops its reference to it when
/// @func returns.  Each wake-up accepts up to 32 pending clients,
/// re-checking before each that @func is still the current callback.  When
/// accept fails for lack of file descriptors or memory with clients still
/// queued, the socket pauses for 100 ms (a timer in @context) instead of
/// spinning, and no client is lost.
///
/// The previous registration's @notify runs exactly once, after any call of
/// its callback (in any thread) has returned; the last registration's runs
/// when the listener is finalized.  Registering the identical (@func,
/// @data, @notify, @context) again does nothing.  @context must outlive the
/// registration.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_set_client_func_full(
    listener: *mut QIONetListener,
    func: QIONetListenerClientFunc,
    data: gpointer,
    notify: GDestroyNotify,
    context: *mut GMainContext,
) {
    guard("qio_net_listener_set_client_func_full", (), || {
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        if let Some(l) = unsafe { borrowed(listener) } {
            let spec = ClientSpec { func, data, notify };
            l.listener()
                .set_client(&l, spec, Target::Glib(GlibContext(context)));
        }
    })
}

/// qio_net_listener_set_client_func:
/// @listener: the network listener object
/// @func: the callback function, or %NULL to stop accepting
/// @data: opaque data to pass to @func
/// @notify: callback to free @data, or %NULL
///
/// Wrapper of qio_net_listener_set_client_func_full(), only that the
/// sources will always be bound to default main context.
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

/// qio_net_listener_set_client_aio_func:
/// @listener: the network listener object
/// @func: the callback function, or %NULL to stop accepting
/// @data: opaque data to pass to @func
/// @context: the AioContext whose fd handlers will accept clients.  If
///           %NULL, the main-loop AioContext is used.
///
/// Like qio_net_listener_set_client_func_full(), but clients are accepted
/// by fd handlers of @context, so that a nested aio_poll() loop such as
/// AIO_WAIT_WHILE() serves them.  Any AioContext works, IOThreads'
/// included, and the call is safe from any thread, even while @func runs
/// in another: what a removed handler holds is released by a bottom half
/// in @context, so @context must keep running until then.  There is no
/// notify for @data.  If @context is %NULL and the main loop has no
/// AioContext yet, a callback cannot be set: an error is reported and
/// nothing changes (clearing still works).
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_set_client_aio_func(
    listener: *mut QIONetListener,
    func: QIONetListenerClientFunc,
    data: *mut c_void,
    context: *mut AioContext,
) {
    guard("qio_net_listener_set_client_aio_func", (), || {
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        let Some(l) = (unsafe { borrowed(listener) }) else {
            return;
        };
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

/// qio_net_listener_wait_client:
/// @listener: the network listener object
///
/// Block execution of the caller until a new client arrives on one of the
/// listening sockets.  If there was previously a callback registered with
/// qio_net_listener_set_client_func() it will be temporarily disabled, and
/// re-enabled afterwards.  Exactly one client is accepted; others stay
/// queued.  When accept fails for lack of file descriptors, it retries
/// after 100 ms instead of spinning.
///
/// Returns: the new client socket (the caller owns the reference), or
/// %NULL at once if the listener has no open socket, or %NULL if it is
/// disconnected while waiting
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_wait_client(
    listener: *mut QIONetListener,
) -> *mut QIOChannelSocket {
    guard("qio_net_listener_wait_client", ptr::null_mut(), || {
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        unsafe { borrowed(listener) }
            .and_then(|l| l.listener().wait_client(&l))
            .map_or(ptr::null_mut(), Channel::into_raw)
    })
}

/// qio_net_listener_disconnect:
/// @listener: the network listener object
///
/// Disconnect the listener, removing all I/O callback watches and closing
/// the socket channels.  Synchronous, from any thread: when it returns no
/// accept or poll of the sockets runs any more in any thread (one in
/// flight is waited for) and the ports are free.  A wait_client in
/// progress returns %NULL (or the client it accepted before the
/// disconnect began).  The registration stays (its notify runs at
/// finalize or when it is replaced).  Idempotent; concurrent calls each
/// return once the sockets are closed.
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_disconnect(listener: *mut QIONetListener) {
    guard("qio_net_listener_disconnect", (), || {
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        if let Some(l) = unsafe { borrowed(listener) } {
            l.listener().disconnect();
        }
    })
}

/// qio_net_listener_is_connected:
/// @listener: the network listener object
///
/// Determine if the listener is connected to any socket channels.
///
/// Returns: true if connected (after a successful open or add, until
/// disconnect), false otherwise or for %NULL
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_is_connected(listener: *mut QIONetListener) -> bool {
    guard("qio_net_listener_is_connected", false, || {
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        unsafe { borrowed(listener) }.is_some_and(|l| l.listener().is_connected())
    })
}

/// qio_net_listener_nsioc:
/// @listener: the network listener object
///
/// Returns: the number of socket channels of the listener, closed ones
/// included (0 for %NULL)
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_nsioc(listener: *mut QIONetListener) -> usize {
    guard("qio_net_listener_nsioc", 0, || {
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        unsafe { borrowed(listener) }.map_or(0, |l| l.listener().nsioc())
    })
}

/// qio_net_listener_sioc:
/// @listener: the network listener object
/// @n: the index of the channel
///
/// Returns: the @n-th socket channel, borrowed (valid while the listener
/// lives), or %NULL if @n is out of range
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_sioc(
    listener: *mut QIONetListener,
    n: usize,
) -> *mut QIOChannelSocket {
    guard("qio_net_listener_sioc", ptr::null_mut(), || {
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        unsafe { borrowed(listener) }
            .and_then(|l| l.listener().sioc(n))
            .map_or(ptr::null_mut(), |c| c.as_ptr())
    })
}

/// qio_net_listener_get_local_address:
/// @listener: the network listener object
/// @n: the index of the channel
/// @errp: pointer to a NULL initialized error object
///
/// Returns: a new SocketAddress for the local end of the @n-th channel
/// (free it with qapi_free_SocketAddress()), or %NULL with an error in
/// @errp if @n is out of range
#[no_mangle]
pub unsafe extern "C" fn qio_net_listener_get_local_address(
    listener: *mut QIONetListener,
    n: usize,
    errp: *mut *mut Error,
) -> *mut SocketAddress {
    let r = guard("qio_net_listener_get_local_address", None, || {
        // SAFETY: the listener argument is NULL or a listener the caller
        // holds a reference on (the header's rule for arguments).
        match unsafe { borrowed(listener) }.and_then(|l| l.listener().sioc(n)) {
            // SAFETY: errp follows the Error convention (caller contract).
            Some(c) => Some(unsafe { c.local_address(errp) }),
            None => {
                // SAFETY: as above.
                unsafe {
                    host::set_error(errp, "Listener index out of range");
                }
                Some(ptr::null_mut())
            }
        }
    });
    // SAFETY: errp follows the Error convention (caller contract).
    r.unwrap_or_else(|| unsafe {
        internal_error("qio_net_listener_get_local_address", errp, ptr::null_mut())
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::{host::HostError, qemu::LocalError};

    fn message(e: &mut LocalError) -> String {
        // SAFETY: the error is set and owned by `e`.
        unsafe { CStr::from_ptr(qemucompat::error::error_get_pretty((*e.errp()).cast())) }
            .to_string_lossy()
            .into_owned()
    }

    /// A panic inside an export with an errp returns failure *and* a clear
    /// error, never failure with *errp unset.
    #[test]
    fn a_caught_panic_sets_an_error() {
        let mut err = LocalError::new();
        let r = guard("qio_net_listener_open_sync", None, || -> Option<i32> {
            panic!("injected")
        });
        assert!(r.is_none());
        // SAFETY: err.errp() is a valid, unset Error **.
        let rc = unsafe { internal_error("qio_net_listener_open_sync", err.errp(), -1) };
        assert_eq!(rc, -1);
        assert!(err.is_set());
        assert_eq!(
            message(&mut err),
            "qio_net_listener_open_sync: internal error"
        );
        // An error the function had set already is kept.
        // SAFETY: as above; the error is set, so nothing is overwritten.
        unsafe {
            internal_error("again", err.errp(), ());
        }
        assert_eq!(
            message(&mut err),
            "qio_net_listener_open_sync: internal error"
        );
        // NULL errp: failure value only.
        // SAFETY: NULL is a valid errp.
        let p: *mut u8 = unsafe { internal_error("x", ptr::null_mut(), ptr::null_mut()) };
        assert!(p.is_null());
    }
}
