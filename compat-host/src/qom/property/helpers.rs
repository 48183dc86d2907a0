//! The helpers of qom/object.h that build a property from plain
//! functions (string and bool properties) or from an integer in memory,
//! and the "type" property every object has.

use std::{
    ffi::{c_char, c_void, CStr},
    ptr,
    sync::OnceLock,
};

use super::{live, new_prop, object_property_add, Errp, TYPE_PROPERTY};
use crate::{
    error::error_propagate,
    qom::types::object_get_typename,
    sys,
    visitor::{visit_type_bool, visit_type_str, visit_type_uint64, visit_type_uint8},
};

/// A value type of the function-backed helpers (string and bool): how it
/// is visited and what its C getter and setter look like.
trait FnValue: Copy {
    /// What the C setter takes (`const char *` for a `char *` value).
    type Arg;
    const TYPE: &'static CStr;
    /// The value an input visit starts from.
    const EMPTY: Self;
    /// # Safety
    /// As `visit_type_bool`.
    unsafe fn visit(v: *mut sys::Visitor, name: *const c_char, obj: *mut Self, errp: Errp) -> bool;
    fn arg(self) -> Self::Arg;
    /// Frees a value returned by a getter or an input visit.
    ///
    /// # Safety
    /// `self` came from one of those and is not used again.
    unsafe fn free(self);
}

impl FnValue for *mut c_char {
    type Arg = *const c_char;
    const TYPE: &'static CStr = c"string";
    const EMPTY: Self = ptr::null_mut();
    unsafe fn visit(v: *mut sys::Visitor, name: *const c_char, obj: *mut Self, errp: Errp) -> bool {
        // SAFETY: caller's contract.
        unsafe { visit_type_str(v, name, obj, errp) }
    }
    fn arg(self) -> Self::Arg {
        self
    }
    unsafe fn free(self) {
        // SAFETY: a g_malloc'ed string (caller's contract).
        unsafe { sys::g_free(self.cast()) }
    }
}

impl FnValue for bool {
    type Arg = bool;
    const TYPE: &'static CStr = c"bool";
    const EMPTY: Self = false;
    unsafe fn visit(v: *mut sys::Visitor, name: *const c_char, obj: *mut Self, errp: Errp) -> bool {
        // SAFETY: caller's contract.
        unsafe { visit_type_bool(v, name, obj, errp) }
    }
    fn arg(self) -> Self::Arg {
        self
    }
    unsafe fn free(self) {}
}

type Getter<T> = unsafe extern "C" fn(*mut sys::Object, Errp) -> T;
type Setter<T> = unsafe extern "C" fn(*mut sys::Object, <T as FnValue>::Arg, Errp);
// The same, spelled out for the exported signatures.
type StrGetter = unsafe extern "C" fn(*mut sys::Object, Errp) -> *mut c_char;
type StrSetter = unsafe extern "C" fn(*mut sys::Object, *const c_char, Errp);
type BoolGetter = unsafe extern "C" fn(*mut sys::Object, Errp) -> bool;
type BoolSetter = unsafe extern "C" fn(*mut sys::Object, bool, Errp);

/// The opaque of a string or bool property.
struct Funcs<T: FnValue> {
    get: Option<Getter<T>>,
    set: Option<Setter<T>>,
}

/// # Safety
/// `opaque` is the `Funcs` its property was added with.
unsafe fn funcs<'a, T: FnValue>(opaque: *mut c_void) -> &'a Funcs<T> {
    // SAFETY: caller's contract.
    unsafe { &*opaque.cast::<Funcs<T>>() }
}

unsafe extern "C" fn release_funcs<T: FnValue>(
    _o: *mut sys::Object,
    _n: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: the Funcs boxed when the property was added, released once.
    drop(unsafe { Box::from_raw(opaque.cast::<Funcs<T>>()) });
}

unsafe extern "C" fn property_get_fn<T: FnValue>(
    obj: *mut sys::Object,
    v: *mut sys::Visitor,
    name: *const c_char,
    opaque: *mut c_void,
    errp: Errp,
) {
    // SAFETY: this accessor is only registered with a getter present.
    let Some(get) = (unsafe { funcs::<T>(opaque) }).get else {
        return;
    };
    let mut err: *mut sys::Error = ptr::null_mut();
    // SAFETY: the user's getter.
    let mut value = unsafe { get(obj, &mut err) };
    if !err.is_null() {
        // SAFETY: err is ours to pass on.
        unsafe {
            error_propagate(errp, err);
        }
        return;
    }
    // SAFETY: an output visit of a local, then it is freed.
    unsafe {
        T::visit(v, name, &mut value, errp);
        value.free();
    }
}

unsafe extern "C" fn property_set_fn<T: FnValue>(
    obj: *mut sys::Object,
    v: *mut sys::Visitor,
    name: *const c_char,
    opaque: *mut c_void,
    errp: Errp,
) {
    // SAFETY: this accessor is only registered with a setter present.
    let Some(set) = (unsafe { funcs::<T>(opaque) }).set else {
        return;
    };
    let mut value = T::EMPTY;
    // SAFETY: an input visit into a local.
    if unsafe { !T::visit(v, name, &mut value, errp) } {
        return;
    }
    // SAFETY: the user's setter, then our copy is freed.
    unsafe {
        set(obj, value.arg(), errp);
        value.free();
    }
}

/// A string or bool property through `get` and `set`.
///
/// # Safety
/// `obj` is live; `name` NUL-terminated; the functions are valid while the
/// property exists.
unsafe fn add_fn<T: FnValue>(
    obj: *mut sys::Object,
    name: *const c_char,
    get: Option<Getter<T>>,
    set: Option<Setter<T>>,
) -> *mut sys::ObjectProperty {
    let (has_get, has_set) = (get.is_some(), set.is_some());
    let opaque = Box::into_raw(Box::new(Funcs { get, set })).cast();
    let getter: sys::ObjectPropertyAccessor = has_get.then_some(property_get_fn::<T>);
    let setter: sys::ObjectPropertyAccessor = has_set.then_some(property_set_fn::<T>);
    // SAFETY: caller's contract; the accessors match the opaque.
    unsafe {
        object_property_add(
            obj,
            name,
            T::TYPE.as_ptr(),
            getter,
            setter,
            Some(release_funcs::<T>),
            opaque,
        )
    }
}

/// # Safety
/// `obj` is a live object, `name` NUL-terminated, the functions valid
/// while the property exists.
#[no_mangle]
pub unsafe extern "C" fn object_property_add_str(
    obj: *mut sys::Object,
    name: *const c_char,
    get: Option<StrGetter>,
    set: Option<StrSetter>,
) -> *mut sys::ObjectProperty {
    // SAFETY: caller's contract.
    unsafe { add_fn(live(obj, "object_property_add_str"), name, get, set) }
}

/// # Safety
/// As [`object_property_add_str`].
#[no_mangle]
pub unsafe extern "C" fn object_property_add_bool(
    obj: *mut sys::Object,
    name: *const c_char,
    get: Option<BoolGetter>,
    set: Option<BoolSetter>,
) -> *mut sys::ObjectProperty {
    // SAFETY: caller's contract.
    unsafe { add_fn(live(obj, "object_property_add_bool"), name, get, set) }
}

/// An unsigned integer type that a `*_ptr` property can be backed by.
trait PtrInt: Copy {
    const TYPE: &'static CStr;
    /// # Safety
    /// As `visit_type_uint64`.
    unsafe fn visit(v: *mut sys::Visitor, name: *const c_char, obj: *mut Self, errp: Errp) -> bool;
}

macro_rules! ptr_int {
    ($($t:ty => $name:literal, $visit:ident;)*) => {$(
        impl PtrInt for $t {
            const TYPE: &'static CStr = $name;
            unsafe fn visit(v: *mut sys::Visitor, name: *const c_char, obj: *mut Self, errp: Errp) -> bool {
                // SAFETY: caller's contract.
                unsafe { $visit(v, name, obj, errp) }
            }
        }
    )*};
}

ptr_int! {
    u8 => c"uint8", visit_type_uint8;
    u64 => c"uint64", visit_type_uint64;
}

unsafe extern "C" fn property_get_ptr<T: PtrInt>(
    _obj: *mut sys::Object,
    v: *mut sys::Visitor,
    name: *const c_char,
    opaque: *mut c_void,
    errp: Errp,
) {
    // SAFETY: opaque is the integer the property was added with, which
    // the caller keeps alive.
    let mut value = unsafe { *opaque.cast::<T>() };
    // SAFETY: an output visit of a local.
    unsafe {
        T::visit(v, name, &mut value, errp);
    }
}

unsafe extern "C" fn property_set_ptr<T: PtrInt>(
    _obj: *mut sys::Object,
    v: *mut sys::Visitor,
    name: *const c_char,
    opaque: *mut c_void,
    errp: Errp,
) {
    // SAFETY: as in property_get_ptr; the caller allowed writes (flags).
    unsafe {
        let mut value = *opaque.cast::<T>();
        if T::visit(v, name, &mut value, errp) {
            *opaque.cast::<T>() = value;
        }
    }
}

/// # Safety
/// The owner is live, `name` NUL-terminated, `v` valid while the property
/// exists.
unsafe fn add_ptr<T: PtrInt>(
    obj: *mut sys::Object,
    name: *const c_char,
    v: *const T,
    flags: sys::ObjectPropertyFlags,
) -> *mut sys::ObjectProperty {
    let read = flags & sys::ObjectPropertyFlags_OBJ_PROP_FLAG_READ != 0;
    let write = flags & sys::ObjectPropertyFlags_OBJ_PROP_FLAG_WRITE != 0;
    let get: sys::ObjectPropertyAccessor = read.then_some(property_get_ptr::<T>);
    let set: sys::ObjectPropertyAccessor = write.then_some(property_set_ptr::<T>);
    // SAFETY: caller's contract; no release (QEMU's neither).
    unsafe {
        object_property_add(
            obj,
            name,
            T::TYPE.as_ptr(),
            get,
            set,
            None,
            v.cast_mut().cast(),
        )
    }
}

macro_rules! ptr_fns {
    ($($fname:ident: $t:ty;)*) => {$(
        /// QEMU's function of this name (see `qom/object.h`).
        ///
        /// # Safety
        /// `obj` is a live object, `name` NUL-terminated, `v` valid (and
        /// writable with `OBJ_PROP_FLAG_WRITE`) while the property exists.
        #[no_mangle]
        pub unsafe extern "C" fn $fname(
            obj: *mut sys::Object,
            name: *const c_char,
            v: *const $t,
            flags: sys::ObjectPropertyFlags,
        ) -> *mut sys::ObjectProperty {
            // SAFETY: caller's contract.
            unsafe { add_ptr(live(obj, stringify!($fname)), name, v, flags) }
        }
    )*};
}

ptr_fns! {
    object_property_add_uint8_ptr: u8;
    object_property_add_uint64_ptr: u64;
}

unsafe extern "C" fn object_get_type(obj: *mut sys::Object, _errp: Errp) -> *mut c_char {
    // SAFETY: obj is the live object whose property is read.
    unsafe { sys::g_strdup(object_get_typename(obj)) }
}

/// The "type" property every object has: in QEMU a class property of
/// `TYPE_OBJECT`, here one property that every object shares (the compat
/// host has no class properties), created at first use and never freed.
pub(super) fn type_property() -> *mut sys::ObjectProperty {
    static TYPE: OnceLock<usize> = OnceLock::new();
    *TYPE.get_or_init(|| {
        let funcs: Box<Funcs<*mut c_char>> = Box::new(Funcs {
            get: Some(object_get_type),
            set: None,
        });
        // SAFETY: static strings; the accessor matches the opaque, which
        // lives for the rest of the process like the property.
        let p = unsafe {
            new_prop(
                TYPE_PROPERTY,
                <*mut c_char as FnValue>::TYPE.as_ptr(),
                Some(property_get_fn::<*mut c_char>),
                None,
                None,
                Box::into_raw(funcs).cast(),
            )
        };
        Box::into_raw(p) as usize
    }) as *mut sys::ObjectProperty
}
