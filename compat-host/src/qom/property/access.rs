//! Reading and writing properties: QEMU's `object_property_get`_*() and
//! `object_property_set`_*(), which move one scalar through a visitor and
//! convert it as QEMU's `QObject` visitors do.

use std::{
    ffi::{c_char, CStr},
    ptr::{self},
};

use super::{die, live, name_arg, object_property_find_err, typename, Errp};
use crate::{
    error::{error_propagate, ErrorImpl},
    sys,
    visitor::{Scalar, VisitorImpl},
};

/// # Safety
/// `obj` is a live object, `name` NUL-terminated, `errp` NULL or valid.
unsafe fn get_scalar(obj: *mut sys::Object, name: *const c_char, errp: Errp) -> Option<Scalar> {
    // SAFETY: caller's contract.
    let p = unsafe { object_property_find_err(obj, name, errp) };
    if p.is_null() {
        return None;
    }
    // SAFETY: a live property; name was checked by the lookup.
    let (get, opaque, shown) = unsafe {
        (
            (*p).get,
            (*p).opaque,
            format!(
                "{}.{}",
                typename(obj),
                CStr::from_ptr(name).to_string_lossy()
            ),
        )
    };
    let Some(get) = get else {
        let e = ErrorImpl::new(format!("Property '{shown}' is not readable"));
        // SAFETY: caller's contract.
        unsafe {
            e.propagate(errp);
        }
        return None;
    };
    let mut v = VisitorImpl::Output(None);
    let mut err: *mut sys::Error = ptr::null_mut();
    // SAFETY: the getter registered for this property, with a visitor
    // that outlives the call.
    unsafe {
        get(obj, v.as_ptr(), name, opaque, &mut err);
    }
    if !err.is_null() {
        // SAFETY: err is ours to pass on.
        unsafe {
            error_propagate(errp, err);
        }
        return None;
    }
    let got = v.into_output();
    if got.is_none() {
        let e = ErrorImpl::new(format!("Property '{shown}' produced no value"));
        // SAFETY: caller's contract.
        unsafe {
            e.propagate(errp);
        }
    }
    got
}

/// # Safety
/// As [`get_scalar`].
unsafe fn set_scalar(
    obj: *mut sys::Object,
    name: *const c_char,
    value: Scalar,
    errp: Errp,
) -> bool {
    // SAFETY: caller's contract.
    let p = unsafe { object_property_find_err(obj, name, errp) };
    if p.is_null() {
        return false;
    }
    // SAFETY: a live property.
    let (set, opaque) = unsafe { ((*p).set, (*p).opaque) };
    let Some(set) = set else {
        // SAFETY: obj is live, name checked by the lookup.
        let msg = unsafe {
            format!(
                "Property '{}.{}' is not writable",
                typename(obj),
                CStr::from_ptr(name).to_string_lossy()
            )
        };
        // SAFETY: caller's contract.
        unsafe {
            ErrorImpl::new(msg).propagate(errp);
        }
        return false;
    };
    let mut v = VisitorImpl::Input(value);
    let mut err: *mut sys::Error = ptr::null_mut();
    // SAFETY: the setter registered for this property.
    unsafe {
        set(obj, v.as_ptr(), name, opaque, &mut err);
    }
    let ok = err.is_null();
    // SAFETY: err is NULL or ours to pass on.
    unsafe {
        error_propagate(errp, err);
    }
    ok
}

/// The getter's value converted by `conv`, or `fail` and "Invalid
/// parameter type" when it does not convert.
///
/// # Safety
/// As [`get_scalar`]; `obj` may also be NULL (aborts).
unsafe fn get_as<T>(
    obj: *mut sys::Object,
    name: *const c_char,
    errp: Errp,
    expected: &str,
    fail: T,
    conv: impl FnOnce(Scalar) -> Option<T>,
) -> T {
    let obj = live(obj, "object_property_get");
    // SAFETY: caller's contract.
    let name_c = unsafe { name_arg(name, "object_property_get") };
    // SAFETY: caller's contract.
    let Some(s) = (unsafe { get_scalar(obj, name, errp) }) else {
        return fail;
    };
    conv(s).unwrap_or_else(|| {
        let e = ErrorImpl::new(format!(
            "Invalid parameter type for '{}', expected: {expected}",
            name_c.to_string_lossy()
        ));
        // SAFETY: caller's contract.
        unsafe {
            e.propagate(errp);
        }
        fail
    })
}

/// # Safety
/// `obj` is a live object, `name` NUL-terminated, `errp` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn object_property_get_uint(
    obj: *mut sys::Object,
    name: *const c_char,
    errp: Errp,
) -> u64 {
    // SAFETY: caller's contract.
    unsafe { get_as(obj, name, errp, "uint", 0, |s| s.as_uint()) }
}

/// # Safety
/// As [`object_property_get_uint`].
#[no_mangle]
pub unsafe extern "C" fn object_property_get_int(
    obj: *mut sys::Object,
    name: *const c_char,
    errp: Errp,
) -> i64 {
    // SAFETY: caller's contract.
    unsafe { get_as(obj, name, errp, "int", -1, |s| s.as_int()) }
}

/// # Safety
/// As [`object_property_get_uint`].
#[no_mangle]
pub unsafe extern "C" fn object_property_get_bool(
    obj: *mut sys::Object,
    name: *const c_char,
    errp: Errp,
) -> bool {
    // SAFETY: caller's contract.
    unsafe {
        get_as(obj, name, errp, "boolean", false, |s| match s {
            Scalar::Bool(b) => Some(b),
            _ => None,
        })
    }
}

/// # Safety
/// As [`object_property_get_uint`].
#[no_mangle]
pub unsafe extern "C" fn object_property_get_str(
    obj: *mut sys::Object,
    name: *const c_char,
    errp: Errp,
) -> *mut c_char {
    // SAFETY: caller's contract.
    unsafe {
        get_as(obj, name, errp, "string", ptr::null_mut(), |s| match s {
            Scalar::Str(s) => Some(sys::g_strdup(s.as_ptr())),
            _ => None,
        })
    }
}

/// # Safety
/// `obj` is a live object, `name` NUL-terminated, `errp` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn object_property_set_uint(
    obj: *mut sys::Object,
    name: *const c_char,
    value: u64,
    errp: Errp,
) -> bool {
    let obj = live(obj, "object_property_set_uint");
    // SAFETY: caller's contract.
    unsafe {
        set_scalar(
            obj,
            name_arg(name, "object_property_set").as_ptr(),
            Scalar::Uint(value),
            errp,
        )
    }
}

/// # Safety
/// As [`object_property_set_uint`].
#[no_mangle]
pub unsafe extern "C" fn object_property_set_int(
    obj: *mut sys::Object,
    name: *const c_char,
    value: i64,
    errp: Errp,
) -> bool {
    let obj = live(obj, "object_property_set_int");
    // SAFETY: caller's contract.
    unsafe {
        set_scalar(
            obj,
            name_arg(name, "object_property_set").as_ptr(),
            Scalar::Int(value),
            errp,
        )
    }
}

/// # Safety
/// As [`object_property_set_uint`].
#[no_mangle]
pub unsafe extern "C" fn object_property_set_bool(
    obj: *mut sys::Object,
    name: *const c_char,
    value: bool,
    errp: Errp,
) -> bool {
    let obj = live(obj, "object_property_set_bool");
    // SAFETY: caller's contract.
    unsafe {
        set_scalar(
            obj,
            name_arg(name, "object_property_set").as_ptr(),
            Scalar::Bool(value),
            errp,
        )
    }
}

/// # Safety
/// As [`object_property_set_uint`]; `value` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn object_property_set_str(
    obj: *mut sys::Object,
    name: *const c_char,
    value: *const c_char,
    errp: Errp,
) -> bool {
    let obj = live(obj, "object_property_set_str");
    if value.is_null() {
        die("object_property_set_str: NULL value");
    }
    // SAFETY: caller's contract.
    let value = Scalar::Str(unsafe { CStr::from_ptr(value) }.to_owned());
    // SAFETY: caller's contract.
    unsafe {
        set_scalar(
            obj,
            name_arg(name, "object_property_set").as_ptr(),
            value,
            errp,
        )
    }
}

/// # Safety
/// `obj` is a live object, `name` NUL-terminated, `errp` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn object_property_get_type(
    obj: *mut sys::Object,
    name: *const c_char,
    errp: Errp,
) -> *const c_char {
    // SAFETY: caller's contract.
    let p = unsafe { object_property_find_err(obj, name, errp) };
    if p.is_null() {
        return ptr::null();
    }
    // SAFETY: a live property.
    unsafe { (*p).type_ }
}
