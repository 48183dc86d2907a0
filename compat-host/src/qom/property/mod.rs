//! QOM properties of qom/object.h: object properties with visitor-based
//! accessors, the scalar getters and setters, and the str/bool/integer-
//! pointer helpers.  No class properties: the only one QEMU code here
//! relies on, "type", is one property shared by every object.
//!
//! An object's properties live in a [`PropTable`] that its (otherwise
//! unused) `Object::properties` field points to, created at the first
//! `object_property_add`.  Each property is a boxed `ObjectProperty` with
//! QEMU's layout, so the pointer returned by `object_property_add` stays
//! valid until the property is deleted, and C code may read and set its
//! fields as in QEMU.
//!
//! The semantics follow QEMU 10.2's `qom/object.c`: at finalize every
//! property's release runs once, before the first `instance_finalize`;
//! the scalar getters and setters convert values as QEMU's `QObject` visitors
//! do, with QEMU's error messages.  Table locks are never held while an
//! accessor or release function runs, so those may use QOM freely,
//! including on the same object.

use std::{
    ffi::{c_char, c_void, CStr},
    io::Write,
    ptr::{self, addr_of_mut},
    sync::{
        atomic::{AtomicPtr, Ordering},
        Mutex,
    },
};

use crate::{
    error::{error_abort, ErrorImpl},
    qom::types::object_get_typename,
    sys,
    util::cstr,
};

mod access;
mod helpers;
#[cfg(test)]
use self::{access::*, helpers::*};
#[cfg(test)]
mod tests;

type Errp = *mut *mut sys::Error;

/// The name of the property every object has.
const TYPE_PROPERTY: &CStr = c"type";

/// One property: QEMU's struct, owning its strings (`g_malloc`'ed, since C
/// may replace `description` the QEMU way).
#[repr(transparent)]
struct Prop(sys::ObjectProperty);

impl Drop for Prop {
    fn drop(&mut self) {
        // SAFETY: the strings are NULL or g_malloc'ed and owned by us.
        unsafe {
            sys::g_free(self.0.name.cast());
            sys::g_free(self.0.type_.cast());
            sys::g_free(self.0.description.cast());
        }
    }
}

/// The properties of one object or class, in the order they were added.
/// Boxed, because C holds `ObjectProperty *` pointers across insertions.
#[derive(Default)]
#[allow(clippy::vec_box)]
struct PropTable(Mutex<Vec<Box<Prop>>>);

impl PropTable {
    #[allow(clippy::vec_box)]
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<Prop>>> {
        // No critical section runs foreign code, so the data is consistent
        // even after a panic elsewhere.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn find(&self, name: &CStr) -> Option<*mut sys::ObjectProperty> {
        self.lock()
            .iter_mut()
            .find(|p| prop_name(p) == name)
            .map(|p| ptr::addr_of_mut!(p.0))
    }
}

fn prop_name(p: &Prop) -> &CStr {
    // SAFETY: every Prop has a NUL-terminated name for its whole life.
    unsafe { CStr::from_ptr(p.0.name) }
}

/// Prints a QOM usage error and aborts, as QEMU's assertions do.
fn die(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr().lock(), "qom: {msg}");
    std::process::abort();
}

/// The table a `properties` field points to, created if `create`.
///
/// # Safety
/// `slot` is the `properties` field of a live object or class created by
/// this crate (NULL or a leaked `PropTable`), and stays valid for `'a`.
unsafe fn table<'a>(slot: *mut *mut sys::GHashTable, create: bool) -> Option<&'a PropTable> {
    // SAFETY: caller's contract; the field is only accessed atomically
    // once an object is shared.
    let slot = unsafe { AtomicPtr::from_ptr(slot.cast::<*mut PropTable>()) };
    let cur = slot.load(Ordering::Acquire);
    if !cur.is_null() {
        // SAFETY: a non-NULL slot holds a leaked PropTable.
        return Some(unsafe { &*cur });
    }
    if !create {
        return None;
    }
    let new = Box::into_raw(Box::default());
    match slot.compare_exchange(ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: just published, freed only at finalize.
        Ok(_) => Some(unsafe { &*new }),
        Err(other) => {
            // SAFETY: new was never published.
            drop(unsafe { Box::from_raw(new) });
            // SAFETY: the winner's table, as above.
            Some(unsafe { &*other })
        }
    }
}

/// # Safety
/// `obj` is a live object.
unsafe fn object_table<'a>(obj: *mut sys::Object, create: bool) -> Option<&'a PropTable> {
    // SAFETY: caller's contract.
    unsafe { table(addr_of_mut!((*obj).properties), create) }
}

/// # Safety
/// `p` is NULL or NUL-terminated and outlives `'a`.
unsafe fn name_arg<'a>(p: *const c_char, what: &str) -> &'a CStr {
    if p.is_null() {
        die(&format!("{what}: NULL property name"));
    }
    // SAFETY: caller's contract.
    unsafe { CStr::from_ptr(p) }
}

fn live<T>(p: *mut T, what: &str) -> *mut T {
    if p.is_null() {
        die(&format!("{what}: NULL object"));
    }
    p
}

/// # Safety
/// `obj` is a live object.
unsafe fn typename(obj: *mut sys::Object) -> String {
    // SAFETY: caller's contract; type names are static.
    unsafe { cstr(object_get_typename(obj)) }
        .unwrap_or_default()
        .into_owned()
}

/// # Safety
/// The strings are NULL or NUL-terminated.
unsafe fn new_prop(
    name: &CStr,
    type_: *const c_char,
    get: sys::ObjectPropertyAccessor,
    set: sys::ObjectPropertyAccessor,
    release: sys::ObjectPropertyRelease,
    opaque: *mut c_void,
) -> Box<Prop> {
    Box::new(Prop(sys::ObjectProperty {
        // SAFETY: NUL-terminated strings (or NULL, which g_strdup keeps).
        name: unsafe { sys::g_strdup(name.as_ptr()) },
        // SAFETY: as above.
        type_: unsafe { sys::g_strdup(type_) },
        description: ptr::null_mut(),
        get,
        set,
        resolve: None,
        release,
        init: None,
        opaque,
        defval: ptr::null_mut(),
    }))
}

// ---------------------------------------------------------------------------
// Lookup

/// # Safety
/// `obj` is a live object.
unsafe fn find(obj: *mut sys::Object, name: &CStr) -> *mut sys::ObjectProperty {
    if name == TYPE_PROPERTY {
        return helpers::type_property();
    }
    // SAFETY: caller's contract.
    unsafe { object_table(obj, false) }
        .and_then(|t| t.find(name))
        .unwrap_or(ptr::null_mut())
}

/// # Safety
/// `obj` is NULL or a live object; `name` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn object_property_find(
    obj: *mut sys::Object,
    name: *const c_char,
) -> *mut sys::ObjectProperty {
    let obj = live(obj, "object_property_find");
    // SAFETY: caller's contract.
    unsafe { find(obj, name_arg(name, "object_property_find")) }
}

/// # Safety
/// As [`object_property_find`]; `errp` NULL or a valid `Error **`.
#[no_mangle]
pub unsafe extern "C" fn object_property_find_err(
    obj: *mut sys::Object,
    name: *const c_char,
    errp: Errp,
) -> *mut sys::ObjectProperty {
    // SAFETY: caller's contract.
    let p = unsafe { object_property_find(obj, name) };
    if p.is_null() {
        // SAFETY: obj is live and name valid (checked by the call above).
        let msg = unsafe {
            format!(
                "Property '{}.{}' not found",
                typename(obj),
                CStr::from_ptr(name).to_string_lossy()
            )
        };
        // SAFETY: caller's contract.
        unsafe {
            ErrorImpl::new(msg).propagate(errp);
        }
    }
    p
}

// ---------------------------------------------------------------------------
// Adding and deleting

/// Adds the property unless the object already has one of that name.
///
/// # Safety
/// `obj` is a live object; the strings NULL or NUL-terminated.
unsafe fn insert(
    obj: *mut sys::Object,
    name: &CStr,
    type_: *const c_char,
    get: sys::ObjectPropertyAccessor,
    set: sys::ObjectPropertyAccessor,
    release: sys::ObjectPropertyRelease,
    opaque: *mut c_void,
) -> Option<*mut sys::ObjectProperty> {
    if name == TYPE_PROPERTY {
        return None;
    }
    // SAFETY: caller's contract.
    let t = unsafe { object_table(obj, true) }?;
    let mut props = t.lock();
    if props.iter().any(|p| prop_name(p) == name) {
        return None;
    }
    // SAFETY: caller's contract.
    let mut p = unsafe { new_prop(name, type_, get, set, release, opaque) };
    let ret = ptr::addr_of_mut!(p.0);
    props.push(p);
    drop(props);
    Some(ret)
}

/// # Safety
/// `obj` is a live object; `name` and `type_` NULL or NUL-terminated;
/// the accessors and `opaque` are valid for as long as the property
/// exists; `errp` NULL or a valid `Error **`.
#[no_mangle]
pub unsafe extern "C" fn object_property_try_add(
    obj: *mut sys::Object,
    name: *const c_char,
    type_: *const c_char,
    get: sys::ObjectPropertyAccessor,
    set: sys::ObjectPropertyAccessor,
    release: sys::ObjectPropertyRelease,
    opaque: *mut c_void,
    errp: Errp,
) -> *mut sys::ObjectProperty {
    let obj = live(obj, "object_property_try_add");
    // SAFETY: caller's contract.
    let name = unsafe { name_arg(name, "object_property_try_add") };
    if name.to_bytes().ends_with(b"[*]") {
        die(&format!(
            "property '{}': array properties are not supported",
            name.to_string_lossy()
        ));
    }
    // SAFETY: caller's contract.
    if let Some(p) = unsafe { insert(obj, name, type_, get, set, release, opaque) } {
        return p;
    }
    // SAFETY: obj is live.
    let ty = unsafe { typename(obj) };
    let msg = format!(
        "attempt to add duplicate property '{}' to object (type '{ty}')",
        name.to_string_lossy()
    );
    // SAFETY: caller's contract.
    unsafe {
        ErrorImpl::new(msg).propagate(errp);
    }
    ptr::null_mut()
}

/// # Safety
/// As [`object_property_try_add`].
#[no_mangle]
pub unsafe extern "C" fn object_property_add(
    obj: *mut sys::Object,
    name: *const c_char,
    type_: *const c_char,
    get: sys::ObjectPropertyAccessor,
    set: sys::ObjectPropertyAccessor,
    release: sys::ObjectPropertyRelease,
    opaque: *mut c_void,
) -> *mut sys::ObjectProperty {
    // SAFETY: caller's contract; &error_abort is a valid destination.
    unsafe {
        object_property_try_add(
            obj,
            name,
            type_,
            get,
            set,
            release,
            opaque,
            addr_of_mut!(error_abort),
        )
    }
}

/// # Safety
/// `obj` is a live object; `name` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn object_property_del(obj: *mut sys::Object, name: *const c_char) {
    let obj = live(obj, "object_property_del");
    // SAFETY: caller's contract.
    let cname = unsafe { name_arg(name, "object_property_del") };
    // SAFETY: caller's contract.
    let table = unsafe { object_table(obj, false) };
    let Some(p) = table.and_then(|t| t.find(cname)) else {
        die(&format!(
            "object_property_del: object of type '{}' has no property '{}'",
            // SAFETY: obj is live.
            unsafe { typename(obj) },
            cname.to_string_lossy()
        ));
    };
    // SAFETY: p stays in the table until removed below (the caller must
    // not delete it concurrently, as in QEMU).
    let (release, opaque) = unsafe { ((*p).release, (*p).opaque) };
    if let Some(release) = release {
        // SAFETY: the release function registered with the property.
        unsafe {
            release(obj, name, opaque);
        }
    }
    if let Some(t) = table {
        let removed = {
            let mut props = t.lock();
            let i = props.iter().position(|q| ptr::eq(&q.0, p));
            let removed = i.map(|i| props.remove(i));
            drop(props);
            removed
        };
        drop(removed);
    }
}

/// Runs every release function once and frees the object's own table:
/// QEMU's `object_property_del_all()`, called before `instance_finalize`.
/// A release function may add or delete properties; each property is
/// released at most once.
///
/// # Safety
/// `obj` is an object being finalized (no other user).
#[inline]
pub unsafe fn finalize(obj: *mut sys::Object) {
    // SAFETY: caller's contract.
    if unsafe { object_table(obj, false) }.is_some() {
        // SAFETY: caller's contract.
        unsafe { release_all(obj) }
    }
}

/// # Safety
/// As [`finalize`].
#[cold]
#[inline(never)]
unsafe fn release_all(obj: *mut sys::Object) {
    let mut done: Vec<*const sys::ObjectProperty> = Vec::new();
    loop {
        // SAFETY: caller's contract.
        let next = unsafe { next_release(obj, &done) };
        let Some((p, release)) = next else { break };
        done.push(p);
        // SAFETY: p is live until deleted; its name and opaque are read
        // before the call.
        unsafe {
            release(obj, (*p).name, (*p).opaque);
        }
    }
    // SAFETY: caller's contract: nobody else uses the object.
    let slot =
        unsafe { AtomicPtr::from_ptr(addr_of_mut!((*obj).properties).cast::<*mut PropTable>()) };
    let t = slot.swap(ptr::null_mut(), Ordering::AcqRel);
    if !t.is_null() {
        // SAFETY: a leaked PropTable that only this object referenced.
        drop(unsafe { Box::from_raw(t) });
    }
}

type Release = unsafe extern "C" fn(*mut sys::Object, *const c_char, *mut c_void);

/// The first of the object's properties with a release function not yet
/// in `done`.
///
/// # Safety
/// `obj` is a live object.
unsafe fn next_release(
    obj: *mut sys::Object,
    done: &[*const sys::ObjectProperty],
) -> Option<(*const sys::ObjectProperty, Release)> {
    let pick = |t: &PropTable| {
        t.lock().iter().find_map(|p| {
            let q: *const sys::ObjectProperty = &p.0;
            p.0.release.filter(|_| !done.contains(&q)).map(|r| (q, r))
        })
    };
    // SAFETY: caller's contract.
    unsafe { object_table(obj, false) }.and_then(pick)
}
