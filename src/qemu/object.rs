//! The listener's QOM instance and the two values the state machine holds
//! of the C world: references to the instance ([`Owner`]) and the user's
//! (func, data, notify) triple ([`ClientSpec`]).

use std::{
    cell::UnsafeCell,
    marker::PhantomPinned,
    mem::{ManuallyDrop, MaybeUninit},
    ptr::{self, NonNull},
};

use super::{
    gpointer, Channel, GDestroyNotify, Object, ObjectRef, QIOChannelSocket, QemuHost, QomType,
};
use crate::{host::ClientCallback, listener::Listener};

/// A C struct that C code mutates behind Rust's back (QEMU's Rust
/// `Opaque<T>`): Rust never makes a reference to its contents and never
/// assumes it initialized or unmoved; C reaches it through the pointer to
/// the containing instance.
#[repr(transparent)]
pub struct Opaque<T> {
    _value: UnsafeCell<MaybeUninit<T>>,
    _pin: PhantomPinned,
}

/// The QOM instance: QEMU's `Object` header followed by the Rust state.
/// C code only ever sees pointers to it.  QOM owns the header (reference
/// count, properties, class pointer) and changes it from C at any time.
#[repr(C)]
pub struct QIONetListener {
    pub(crate) parent: Opaque<Object>,
    pub(crate) listener: Listener<QemuHost>,
}

// QOM casts OBJECT(listener) by pointer: the Object header must come first.
const _: () = assert!(std::mem::offset_of!(QIONetListener, parent) == 0);

// SAFETY: repr(C) with the Object header first (asserted above).
unsafe impl QomType for QIONetListener {}

// SAFETY: shared across threads, the instance is only used through QOM's
// atomic reference count and the Rust state, which is Sync; the header's
// other fields are QOM's own (set up at creation, read by QOM calls that
// QEMU makes from any thread, e.g. object_unref).
unsafe impl Sync for QIONetListener {}

/// QIONetListenerClientFunc:
/// @listener: the network listener object
/// @sioc: the new client; the listener drops its reference when the
///        callback returns (take one to keep the client)
/// @data: the opaque data given with the callback
///
/// Callback type for a new client connection.  It may call any
/// qio_net_listener_*() function on @listener, drop the last reference to
/// it and run nested event loops: the listener stays alive until the
/// callback returns.
// The C header's gtk-doc (cbindgen copies it), not Markdown: see ffi.rs.
#[allow(clippy::doc_markdown)]
pub type QIONetListenerClientFunc = Option<
    unsafe extern "C" fn(
        listener: *mut QIONetListener,
        sioc: *mut QIOChannelSocket,
        data: gpointer,
    ),
>;

/// A strong reference to a listener object (QOM reference count).
pub type Owner = ObjectRef<QIONetListener>;

impl ObjectRef<QIONetListener> {
    pub fn listener(&self) -> &Listener<QemuHost> {
        // SAFETY: while we hold a reference the instance is initialized and
        // not finalized.
        unsafe { &(*self.as_ptr()).listener }
    }

    /// Borrows the caller's reference to `l` for the duration of a call
    /// (never released: `ManuallyDrop`).
    ///
    /// # Safety
    /// `l` is NULL or a live listener on which the caller holds a
    /// reference for as long as the result is used (what QEMU's API asks
    /// of every `qio_net_listener_*` caller).
    pub unsafe fn borrow_c(l: *mut QIONetListener) -> Option<ManuallyDrop<Owner>> {
        let l = NonNull::new(l)?;
        // SAFETY: per the contract the pointer is a live, referenced
        // listener; from_new only wraps it, and ManuallyDrop keeps the
        // handle from releasing the caller's reference.
        unsafe { Owner::from_new(l.as_ptr()) }.map(ManuallyDrop::new)
    }
}

/// The user's (func, data, notify) triple, as passed in.
#[derive(Clone, Copy, Debug)]
pub struct ClientSpec {
    pub func: QIONetListenerClientFunc,
    pub data: gpointer,
    pub notify: GDestroyNotify,
}

// SAFETY: QEMU's API lets the listener call func and notify from the
// thread that dispatches the context; the data is the user's to make safe.
unsafe impl Send for ClientSpec {}
// SAFETY: as above.
unsafe impl Sync for ClientSpec {}

impl ClientCallback<QemuHost> for ClientSpec {
    fn none() -> Self {
        ClientSpec {
            func: None,
            data: ptr::null_mut(),
            notify: None,
        }
    }

    fn has_func(&self) -> bool {
        self.func.is_some()
    }

    /// Same function, data and notify (by address, as QEMU compares them).
    fn same(&self, other: &ClientSpec) -> bool {
        self.func.map(|f| f as usize) == other.func.map(|f| f as usize)
            && self.data == other.data
            && self.notify.map(|f| f as usize) == other.notify.map(|f| f as usize)
    }

    fn call(&self, owner: &Owner, client: &Channel) {
        if let Some(func) = self.func {
            // SAFETY: the user registered func for exactly this call; the
            // listener and client stay referenced for the whole call.
            unsafe { func(owner.as_ptr(), client.as_ptr(), self.data) }
        }
    }

    fn notify(&self) {
        if let Some(notify) = self.notify {
            // SAFETY: the user registered notify to release data, and no
            // callback using data runs any more.
            unsafe { notify(self.data) }
        }
    }
}
