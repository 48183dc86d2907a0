//! The scalar visitors of qapi/visitor.h, as property accessors use them.
//!
//! QEMU moves a property's value through a `QObject`: the getter visits it
//! into a `QObject` output visitor, the setter reads it from a `QObject` input
//! visitor, and `object_property_get_uint()` and friends convert between
//! the `QObject` and a C scalar.  Here the `QObject` is a [`Scalar`], and a
//! visitor is an input (one scalar to hand out, as often as asked, like a
//! `QObject` input visitor at its root) or an output (room for one scalar).
//! The conversions and error messages are those of QEMU 10.2's
//! `qobject-input-visitor.c` and `qapi-visit-core.c`.

use std::{
    ffi::{c_char, CStr, CString},
    io::Write,
};

use crate::{
    error::{ErrorImpl, QError},
    sys,
    util::cstr,
};

/// A value in transit between a property accessor and its caller (QEMU's
/// `QNum`, `QBool` and `QString`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scalar {
    Int(i64),
    Uint(u64),
    Bool(bool),
    Str(CString),
}

impl Scalar {
    /// QEMU's `qnum_get_try_uint()`.
    pub(crate) fn as_uint(&self) -> Option<u64> {
        match *self {
            Scalar::Uint(u) => Some(u),
            Scalar::Int(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }

    /// QEMU's `qnum_get_try_int()`.
    pub(crate) fn as_int(&self) -> Option<i64> {
        match *self {
            Scalar::Int(i) => Some(i),
            Scalar::Uint(u) => i64::try_from(u).ok(),
            _ => None,
        }
    }
}

/// What a C `Visitor *` points to.
pub enum VisitorImpl {
    Input(Scalar),
    Output(Option<Scalar>),
}

impl VisitorImpl {
    /// The C handle; valid while `self` is neither moved nor dropped.
    pub(crate) fn as_ptr(&mut self) -> *mut sys::Visitor {
        (self as *mut VisitorImpl).cast()
    }

    /// What an output visitor received.
    pub(crate) fn into_output(self) -> Option<Scalar> {
        match self {
            VisitorImpl::Output(v) => v,
            VisitorImpl::Input(_) => None,
        }
    }
}

/// Prints a visitor usage error and aborts, as QEMU's assertions do.
fn die(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr().lock(), "visitor: {msg}");
    std::process::abort();
}

/// # Safety
/// `v` is a live visitor handed out by this crate, used by this thread
/// only (an accessor's visitor lives on its caller's stack).
unsafe fn visitor<'a>(v: *mut sys::Visitor) -> &'a mut VisitorImpl {
    if v.is_null() {
        die("NULL visitor");
    }
    // SAFETY: caller's contract.
    unsafe { &mut *v.cast::<VisitorImpl>() }
}

/// QEMU's `full_name()` at the root of an input visit.
///
/// # Safety
/// `name` is NULL or NUL-terminated.
unsafe fn full_name(name: *const c_char) -> String {
    // SAFETY: caller's contract.
    unsafe { cstr(name) }.map_or_else(|| "<anonymous>".to_owned(), std::borrow::Cow::into_owned)
}

fn wrong_type(name: &str, expected: &str) -> QError {
    ErrorImpl::new(format!(
        "Invalid parameter type for '{name}', expected: {expected}"
    ))
}

/// `QERR_INVALID_PARAMETER_VALUE`.
fn bad_value(name: &str, expects: &str) -> QError {
    ErrorImpl::new(format!("Parameter '{name}' expects {expects}"))
}

/// Records `out` (output) or returns the input value (input).
///
/// # Safety
/// As [`visitor`].
unsafe fn exchange(v: *mut sys::Visitor, out: impl FnOnce() -> Scalar) -> Option<Scalar> {
    // SAFETY: caller's contract.
    match unsafe { visitor(v) } {
        VisitorImpl::Input(s) => Some(s.clone()),
        VisitorImpl::Output(slot @ None) => {
            *slot = Some(out());
            None
        }
        VisitorImpl::Output(Some(_)) => die("a property getter visited more than one value"),
    }
}

/// Stores the outcome of an input conversion into `*obj` / `errp`.
///
/// # Safety
/// `obj` is valid for writes; `errp` as for [`ErrorImpl::propagate`].
unsafe fn finish<T>(r: Result<T, QError>, obj: *mut T, errp: *mut *mut sys::Error) -> bool {
    match r {
        Ok(x) => {
            // SAFETY: caller's contract.
            unsafe {
                *obj = x;
            }
            true
        }
        Err(e) => {
            // SAFETY: caller's contract.
            unsafe {
                e.propagate(errp);
            }
            false
        }
    }
}

/// QEMU's `qobject_input_type_uint64()`: negative integers are accepted
/// (and wrap) for backward compatibility.
fn input_uint64(s: &Scalar, name: &str) -> Result<u64, QError> {
    match *s {
        Scalar::Uint(u) => Ok(u),
        Scalar::Int(i) => Ok(i as u64),
        _ => Err(bad_value(name, "uint64")),
    }
}

fn input_int64(s: &Scalar, name: &str) -> Result<i64, QError> {
    s.as_int().ok_or_else(|| wrong_type(name, "integer"))
}

/// An integer type of the visits, and how it travels as a [`Scalar`].
trait VisitInt: Copy {
    /// QEMU's name of the type in range errors ("`uint8_t`").
    const RANGE: &'static str;
    fn to_scalar(self) -> Scalar;
    /// QEMU's 64-bit input visit (`type_uint64` or `type_int64`), then the
    /// value if it fits the type.
    fn from_scalar(s: &Scalar, full_name: &str) -> Result<Option<Self>, QError>;
}

macro_rules! visit_int_impl {
    ($input:ident, $scalar:ident: $($t:ty => $range:literal),*) => {$(
        impl VisitInt for $t {
            const RANGE: &'static str = $range;
            fn to_scalar(self) -> Scalar {
                Scalar::$scalar(self.into())
            }
            fn from_scalar(s: &Scalar, full_name: &str) -> Result<Option<Self>, QError> {
                $input(s, full_name).map(|x| Self::try_from(x).ok())
            }
        }
    )*};
}

visit_int_impl!(input_uint64, Uint: u8 => "uint8_t", u64 => "uint64");
visit_int_impl!(input_int64, Int: i64 => "int64");

/// Every integer visit: a 64-bit visit, then (input only) QEMU's range
/// check of `visit_type_uintN/intN`, whose error names the field by its bare
/// name.
///
/// # Safety
/// `v` a live visitor, `name` NULL or NUL-terminated, `obj` valid,
/// `errp` as for [`ErrorImpl::propagate`].
unsafe fn visit_int<T: VisitInt>(
    v: *mut sys::Visitor,
    name: *const c_char,
    obj: *mut T,
    errp: *mut *mut sys::Error,
) -> bool {
    if obj.is_null() {
        die("NULL value pointer");
    }
    // SAFETY: caller's contract.
    let Some(input) = (unsafe { exchange(v, || (*obj).to_scalar()) }) else {
        return true;
    };
    // SAFETY: caller's contract.
    let r = T::from_scalar(&input, &unsafe { full_name(name) }).and_then(|x| {
        x.ok_or_else(|| {
            // SAFETY: as above.
            let n = unsafe { cstr(name) }
                .map_or_else(|| "null".to_owned(), std::borrow::Cow::into_owned);
            bad_value(&n, T::RANGE)
        })
    });
    // SAFETY: caller's contract.
    unsafe { finish(r, obj, errp) }
}

macro_rules! visit_fns {
    ($($(#[$attr:meta])* $vis:vis $name:ident: $t:ty;)*) => {$(
        /// QEMU's function of this name (see `qapi/visitor.h`).
        ///
        /// # Safety
        /// `v` is the visitor an accessor was given, `name` NULL or
        /// NUL-terminated, `obj` valid, `errp` NULL or a valid `Error **`.
        $(#[$attr])*
        $vis unsafe extern "C" fn $name(
            v: *mut sys::Visitor,
            name: *const c_char,
            obj: *mut $t,
            errp: *mut *mut sys::Error,
        ) -> bool {
            // SAFETY: caller's contract.
            unsafe { visit_int(v, name, obj, errp) }
        }
    )*};
}

visit_fns! {
    #[no_mangle]
    pub visit_type_uint64: u64;
    #[no_mangle]
    pub visit_type_int64: i64;
    // Not exported: only object_property_add_uint8_ptr() uses it.
    pub visit_type_uint8: u8;
}

/// # Safety
/// As the integer visits.
pub unsafe fn visit_type_bool(
    v: *mut sys::Visitor,
    name: *const c_char,
    obj: *mut bool,
    errp: *mut *mut sys::Error,
) -> bool {
    if obj.is_null() {
        die("NULL value pointer");
    }
    // SAFETY: caller's contract.
    let Some(input) = (unsafe { exchange(v, || Scalar::Bool(*obj)) }) else {
        return true;
    };
    let r = match input {
        Scalar::Bool(b) => Ok(b),
        // SAFETY: caller's contract.
        _ => Err(wrong_type(&unsafe { full_name(name) }, "boolean")),
    };
    // SAFETY: caller's contract.
    unsafe { finish(r, obj, errp) }
}

/// # Safety
/// As the integer visits; for output, `*obj` is NULL or NUL-terminated.
pub unsafe fn visit_type_str(
    v: *mut sys::Visitor,
    name: *const c_char,
    obj: *mut *mut c_char,
    errp: *mut *mut sys::Error,
) -> bool {
    if obj.is_null() {
        die("NULL value pointer");
    }
    // SAFETY: caller's contract: *obj is NULL or a C string.
    let out = || Scalar::Str(unsafe { cstr_owned(*obj) });
    // SAFETY: caller's contract.
    let Some(input) = (unsafe { exchange(v, out) }) else {
        return true;
    };
    let r = match input {
        // SAFETY: a NUL-terminated string; g_strdup copies it.
        Scalar::Str(s) => Ok(unsafe { sys::g_strdup(s.as_ptr()) }),
        // SAFETY: caller's contract.
        _ => Err(wrong_type(&unsafe { full_name(name) }, "string")),
    };
    if r.is_err() {
        // SAFETY: caller's contract.
        unsafe {
            *obj = std::ptr::null_mut();
        }
    }
    // SAFETY: caller's contract.
    unsafe { finish(r, obj, errp) }
}

/// An owned copy of a C string; NULL gives "" (QEMU's output visitors
/// treat NULL as "").
///
/// # Safety
/// `p` is NULL or NUL-terminated.
unsafe fn cstr_owned(p: *const c_char) -> CString {
    if p.is_null() {
        CString::default()
    } else {
        // SAFETY: caller's contract.
        unsafe { CStr::from_ptr(p) }.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::*;

    fn take_err(err: &mut *mut sys::Error) -> String {
        // SAFETY: a live error from this crate, freed here.
        let e = unsafe { crate::error::from_raw(*err) }.expect("an error");
        *err = ptr::null_mut();
        e.message().to_owned()
    }

    #[test]
    fn output_records_one_value() {
        {
            let mut v = VisitorImpl::Output(None);
            let mut x: u64 = 700;
            // SAFETY: a live visitor and value; errp NULL.
            assert!(unsafe {
                visit_type_uint64(v.as_ptr(), c"x".as_ptr(), &mut x, ptr::null_mut())
            });
            assert_eq!(x, 700, "output visits leave the value alone");
            assert_eq!(v.into_output(), Some(Scalar::Uint(700)));
        }

        {
            let mut v = VisitorImpl::Output(None);
            let mut i: i64 = -3;
            // SAFETY: as above.
            unsafe {
                visit_type_int64(v.as_ptr(), ptr::null(), &mut i, ptr::null_mut());
            }
            assert_eq!(v.into_output(), Some(Scalar::Int(-3)));
        }

        {
            let mut v = VisitorImpl::Output(None);
            let mut s: *mut c_char = ptr::null_mut();
            // SAFETY: as above; NULL records "".
            unsafe {
                visit_type_str(v.as_ptr(), c"s".as_ptr(), &mut s, ptr::null_mut());
            }
            assert_eq!(v.into_output(), Some(Scalar::Str(CString::default())));
        }
    }

    #[test]
    fn input_conversions_and_errors() {
        let mut err: *mut sys::Error = ptr::null_mut();
        // SAFETY: (whole test) live visitors and values, a valid errp.
        unsafe {
            {
                let mut v = VisitorImpl::Input(Scalar::Int(-1));
                let mut u: u64 = 0;
                assert!(visit_type_uint64(
                    v.as_ptr(),
                    c"p".as_ptr(),
                    &mut u,
                    &mut err
                ));
                assert_eq!(u, u64::MAX, "negative numbers wrap, as QEMU accepts them");
                // The root value can be visited again.
                let mut i: i64 = 0;
                assert!(visit_type_int64(
                    v.as_ptr(),
                    c"p".as_ptr(),
                    &mut i,
                    &mut err
                ));
                assert_eq!(i, -1);
            }

            {
                let mut v = VisitorImpl::Input(Scalar::Uint(300));
                let mut b8: u8 = 9;
                assert!(!visit_type_uint8(
                    v.as_ptr(),
                    c"p".as_ptr(),
                    &mut b8,
                    &mut err
                ));
                assert_eq!(b8, 9);
                assert_eq!(take_err(&mut err), "Parameter 'p' expects uint8_t");
                assert!(!visit_type_uint8(
                    v.as_ptr(),
                    ptr::null(),
                    &mut b8,
                    &mut err
                ));
                assert_eq!(take_err(&mut err), "Parameter 'null' expects uint8_t");
            }

            {
                let mut v = VisitorImpl::Input(Scalar::Uint(u64::MAX));
                let mut i: i64 = 0;
                assert!(!visit_type_int64(
                    v.as_ptr(),
                    c"p".as_ptr(),
                    &mut i,
                    &mut err
                ));
                assert_eq!(
                    take_err(&mut err),
                    "Invalid parameter type for 'p', expected: integer"
                );
            }

            {
                let mut v = VisitorImpl::Input(Scalar::Bool(true));
                let mut u: u64 = 0;
                assert!(!visit_type_uint64(
                    v.as_ptr(),
                    c"p".as_ptr(),
                    &mut u,
                    &mut err
                ));
                assert_eq!(take_err(&mut err), "Parameter 'p' expects uint64");
                let mut s: *mut c_char = c"junk".as_ptr().cast_mut();
                assert!(!visit_type_str(v.as_ptr(), ptr::null(), &mut s, &mut err));
                assert!(s.is_null(), "a failed string visit sets NULL");
                assert_eq!(
                    take_err(&mut err),
                    "Invalid parameter type for '<anonymous>', expected: string"
                );
                let mut b = false;
                assert!(visit_type_bool(v.as_ptr(), c"p".as_ptr(), &mut b, &mut err));
                assert!(b);
            }

            {
                let mut v = VisitorImpl::Input(Scalar::Str(c"hi".to_owned()));
                let mut b = true;
                assert!(!visit_type_bool(
                    v.as_ptr(),
                    c"p".as_ptr(),
                    &mut b,
                    &mut err
                ));
                assert_eq!(
                    take_err(&mut err),
                    "Invalid parameter type for 'p', expected: boolean"
                );
                let mut s: *mut c_char = ptr::null_mut();
                assert!(visit_type_str(v.as_ptr(), c"p".as_ptr(), &mut s, &mut err));
                assert_eq!(CStr::from_ptr(s).to_str().unwrap(), "hi");
                sys::g_free(s.cast());
            }
        }
        assert!(err.is_null());
    }

    #[test]
    fn scalar_conversions() {
        assert_eq!(Scalar::Int(5).as_uint(), Some(5));
        assert_eq!(Scalar::Int(-5).as_uint(), None);
        assert_eq!(Scalar::Uint(u64::MAX).as_int(), None);
        assert_eq!(Scalar::Uint(7).as_int(), Some(7));
        assert_eq!(Scalar::Bool(true).as_int(), None);
        assert_eq!(Scalar::Str(CString::default()).as_uint(), None);
    }
}
