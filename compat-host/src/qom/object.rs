//! Instances (qom/object.h): `object_new` with QEMU's `instance_init`
//! order, reference counts, finalize (properties first, then every
//! `instance_finalize`, most derived first), dynamic casts; and the root
//! type `object`.

use std::{
    ffi::{c_char, c_int, c_void, CStr},
    io::Write,
    mem::size_of,
    ptr,
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
};

use super::{
    property,
    types::{class_type, die, lookup, type_info, type_init, type_register_static, TypeImpl},
};
use crate::{sys, util::cstr};

/// QEMU's `TYPE_OBJECT`, the root of every type.
const OBJECT_INFO: sys::TypeInfo = sys::TypeInfo {
    abstract_: true,
    class_size: size_of::<sys::ObjectClass>(),
    ..type_info(c"object", None, size_of::<sys::Object>())
};

unsafe extern "C" fn register_types() {
    // SAFETY: a constant TypeInfo with static strings.
    unsafe {
        type_register_static(&OBJECT_INFO);
    }
}
type_init!(register_types);

/// # Safety
/// `typename` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn object_new(typename: *const c_char) -> *mut sys::Object {
    if typename.is_null() {
        die("object_new: NULL type name");
    }
    // SAFETY: caller's contract.
    Layout::of(lookup_for_new(unsafe { CStr::from_ptr(typename) })).instantiate()
}

fn lookup_for_new(name: &CStr) -> &'static TypeImpl {
    match lookup(name) {
        Some(t) => t,
        None => die(&format!(
            "object_new: unknown type '{}'",
            name.to_string_lossy()
        )),
    }
}

/// A type that a hot path instantiates by its constant name, looked up
/// (and its layout worked out) once: `object_new` by name costs a
/// registry lookup, a lock and string comparisons, per object, which is
/// most of what creating an accepted client's channel costs otherwise.
pub struct CachedType {
    name: &'static CStr,
    layout: OnceLock<Layout>,
}

impl CachedType {
    pub(crate) const fn new(name: &'static CStr) -> CachedType {
        CachedType {
            name,
            layout: OnceLock::new(),
        }
    }

    /// As `object_new(name)`.
    pub(crate) fn object_new(&self) -> *mut sys::Object {
        self.layout
            .get_or_init(|| Layout::of(lookup_for_new(self.name)))
            .instantiate()
    }
}

type InstanceFn = unsafe extern "C" fn(*mut sys::Object);

/// What creating an instance of a type takes, as QEMU's
/// `object_new_with_type()` works it out.
struct Layout {
    /// The class, as an address (`*mut ObjectClass`).
    class: usize,
    size: usize,
    align: usize,
    /// The types' `instance_init`, the root's first.
    init: Vec<InstanceFn>,
    /// Their `instance_post_init`, the most derived first.
    post_init: Vec<InstanceFn>,
}

impl Layout {
    fn of(t: &'static TypeImpl) -> Layout {
        if t.info.abstract_ {
            die(&format!(
                "object_new: cannot instantiate abstract type '{}'",
                t.name_str()
            ));
        }
        let size = t.instance_size();
        if size < size_of::<sys::Object>() {
            die(&format!(
                "object_new: instance size {size} of '{}' is smaller than Object",
                t.name_str()
            ));
        }
        let mut init: Vec<InstanceFn> = t.ancestry().filter_map(|a| a.info.instance_init).collect();
        init.reverse();
        Layout {
            class: t.class() as usize,
            size,
            align: t.instance_align(),
            init,
            post_init: t
                .ancestry()
                .filter_map(|a| a.info.instance_post_init)
                .collect(),
        }
    }

    fn instantiate(&self) -> *mut sys::Object {
        let size = self.size;
        // glibc's malloc aligns to 16 bytes; larger alignments need
        // posix_memalign and therefore free() instead of g_free().
        let (obj, free): (*mut sys::Object, sys::ObjectFree) = if self.align <= 16 {
            // As QEMU: g_malloc then zeroing (glibc's calloc skips the
            // thread's cache of freed blocks, which is where an accepted
            // client's channel finds the last one's memory).
            // SAFETY: g_malloc aborts rather than returning NULL.
            let p = unsafe { sys::g_malloc(size) };
            (p.cast(), Some(sys::g_free))
        } else {
            let mut p: *mut c_void = ptr::null_mut();
            // SAFETY: p is a valid out pointer; align is a power of two
            // per TypeInfo's contract (posix_memalign checks it).
            if unsafe { libc::posix_memalign(&mut p, self.align, size) } != 0 {
                die("object_new: out of memory");
            }
            (p.cast(), Some(libc::free))
        };
        // SAFETY: obj has size writable bytes, at least an Object.
        unsafe {
            ptr::write_bytes(obj.cast::<u8>(), 0, size);
            (*obj).class = self.class as *mut sys::ObjectClass;
            (*obj).free = free;
            (*obj).ref_ = 1;
        }
        for f in self.init.iter().chain(&self.post_init) {
            // SAFETY: registered C callbacks, called on a fresh instance
            // of their type, in QEMU's order.
            unsafe {
                f(obj);
            }
        }
        obj
    }
}

/// # Safety
/// `obj` is NULL or a live object.
#[no_mangle]
pub unsafe extern "C" fn object_ref(obj: *mut c_void) -> *mut sys::Object {
    let obj = obj.cast::<sys::Object>();
    if obj.is_null() {
        return obj;
    }
    // SAFETY: obj is live, its `ref` field is only accessed atomically.
    let r = unsafe { AtomicU32::from_ptr(ptr::addr_of_mut!((*obj).ref_)) };
    // As Arc: a new reference is derived from an existing one, so no
    // ordering is needed here.
    r.fetch_add(1, Ordering::Relaxed);
    obj
}

/// # Safety
/// `obj` is NULL or a live object whose reference the caller gives up.
#[no_mangle]
pub unsafe extern "C" fn object_unref(obj: *mut c_void) {
    let obj = obj.cast::<sys::Object>();
    if obj.is_null() {
        return;
    }
    // SAFETY: obj is live, its `ref` field is only accessed atomically.
    let r = unsafe { AtomicU32::from_ptr(ptr::addr_of_mut!((*obj).ref_)) };
    match r.fetch_sub(1, Ordering::AcqRel) {
        0 => die(&format!(
            "object_unref: object {obj:p} has no references left"
        )),
        1 => {}
        _ => return,
    }
    // SAFETY: that was the last reference: nobody else uses obj.
    let t = unsafe { class_type((*obj).class) };
    // As QEMU's object_finalize(): properties go first, so their release
    // functions see the object before any instance_finalize.
    // SAFETY: as above.
    unsafe {
        property::finalize(obj);
    }
    for ty in t.ancestry() {
        if let Some(fin) = ty.info.instance_finalize {
            // SAFETY: registered C callback on an instance of its type.
            unsafe {
                fin(obj);
            }
        }
    }
    // Properties added by a finalizer would otherwise leak.
    // SAFETY: as above.
    unsafe {
        property::finalize(obj);
    }
    // SAFETY: as above.
    if let Some(free) = unsafe { (*obj).free } {
        // SAFETY: `free` matches how object_new allocated obj.
        unsafe {
            free(obj.cast());
        }
    }
}

/// # Safety
/// `klass` is NULL or a live class; `typename` NULL or NUL-terminated.
pub unsafe fn object_class_dynamic_cast(
    klass: *mut sys::ObjectClass,
    typename: *const c_char,
) -> *mut sys::ObjectClass {
    if klass.is_null() || typename.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: caller's contract.
    let (t, name) = unsafe { (class_type(klass), CStr::from_ptr(typename)) };
    match lookup(name) {
        Some(target) if t.is_a(target) => klass,
        _ => ptr::null_mut(),
    }
}

/// # Safety
/// `obj` is NULL or a live object; `typename` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn object_dynamic_cast(
    obj: *mut sys::Object,
    typename: *const c_char,
) -> *mut sys::Object {
    if obj.is_null() {
        return obj;
    }
    // SAFETY: caller's contract.
    if unsafe { object_class_dynamic_cast((*obj).class, typename) }.is_null() {
        ptr::null_mut()
    } else {
        obj
    }
}

/// # Safety
/// As [`object_dynamic_cast`]; `file`/`func` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn object_dynamic_cast_assert(
    obj: *mut sys::Object,
    typename: *const c_char,
    file: *const c_char,
    line: c_int,
    func: *const c_char,
) -> *mut sys::Object {
    // SAFETY: caller's contract.
    let ret = unsafe { object_dynamic_cast(obj, typename) };
    if ret.is_null() && !obj.is_null() {
        // SAFETY: caller's contract.
        unsafe {
            cast_failure(obj.cast(), typename, file, line, func);
        }
    }
    ret
}

/// # Safety
/// The strings are NULL or NUL-terminated.
unsafe fn cast_failure(
    what: *const c_void,
    typename: *const c_char,
    file: *const c_char,
    line: c_int,
    func: *const c_char,
) -> ! {
    // SAFETY: caller's contract.
    let (file, func, ty) = unsafe { (cstr(file), cstr(func), cstr(typename)) };
    let _ = writeln!(
        std::io::stderr().lock(),
        "{}:{line}:{}: Object {what:p} is not an instance of type {}",
        file.unwrap_or_default(),
        func.unwrap_or_default(),
        ty.unwrap_or_default()
    );
    std::process::abort();
}
