//! QEMU's `Error` conventions (qapi/error.h, qemu/error-report.h).
//!
//! An `Error` is a boxed [`ErrorImpl`]; C only ever sees the pointer.  The
//! variadic functions (`error_setg_internal`, `error_report`) are C, in
//! `varargs.c`, which formats the message and hands it to the
//! non-variadic [`compat_error_set`] / [`compat_report`] here.  Rust code
//! in this crate builds a [`QError`] and stores it with
//! [`ErrorImpl::propagate`], so every module follows the same "set `*errp`
//! only if it is NULL" rule.

use std::{
    ffi::{c_char, c_int, CStr, CString},
    io::Write,
    panic::Location,
    ptr::{self, addr_of_mut},
};

use crate::{sys, util::cstr};

/// What an `Error *` points to.
#[derive(Debug)]
pub struct ErrorImpl {
    msg: CString,
    src: String,
    line: u32,
    func: Option<String>,
}

/// A Rust-side error on its way to an `Error **`.
pub(crate) type QError = Box<ErrorImpl>;

/// `&error_abort`: an error stored here aborts at the failure site.
#[no_mangle]
pub static mut error_abort: *mut sys::Error = ptr::null_mut();

/// `&error_fatal`: an error stored here is printed and exits with status 1.
#[no_mangle]
pub static mut error_fatal: *mut sys::Error = ptr::null_mut();

/// A C string from arbitrary text; an interior NUL (which C could never
/// have produced) ends the message there rather than losing it.
fn to_cstring(s: String) -> CString {
    CString::new(s).unwrap_or_else(|e| {
        let n = e.nul_position();
        let mut v = e.into_vec();
        v.truncate(n);
        // The vector has no NUL left after truncating at the first one.
        CString::new(v).unwrap_or_default()
    })
}

/// `g_strerror(errno)` as text, the wording `error_setg_errno` uses.
pub(crate) fn strerror(errno: c_int) -> String {
    // SAFETY: g_strerror returns a static, NUL-terminated string for any
    // value.
    unsafe { cstr(sys::g_strerror(errno)) }
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_default()
}

/// The calling thread's `errno`.
pub(crate) fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl ErrorImpl {
    /// A generic error, located at the caller.
    #[track_caller]
    pub(crate) fn new(msg: impl Into<String>) -> QError {
        let loc = Location::caller();
        Box::new(ErrorImpl {
            msg: to_cstring(msg.into()),
            src: loc.file().to_owned(),
            line: loc.line(),
            func: None,
        })
    }

    /// As `error_setg_errno`: "MSG: <strerror(errno)>" (no suffix for 0).
    #[track_caller]
    pub(crate) fn with_errno(errno: c_int, msg: impl Into<String>) -> QError {
        let msg = msg.into();
        if errno == 0 {
            Self::new(msg)
        } else {
            Self::new(format!("{msg}: {}", strerror(errno)))
        }
    }

    /// The message.
    pub(crate) fn message(&self) -> &str {
        self.msg.to_str().unwrap_or("<invalid UTF-8>")
    }

    /// Stores `self` into `errp` with QEMU's semantics (see
    /// [`error_propagate`]).
    ///
    /// # Safety
    /// `errp` is NULL, `&error_abort`, `&error_fatal` or a valid
    /// `Error **` that only this thread uses for the duration of the call.
    pub(crate) unsafe fn propagate(self: Box<Self>, errp: *mut *mut sys::Error) {
        // SAFETY: forwarded from the caller.
        unsafe { handle(errp, self) }
    }

    /// Hands ownership to C.
    pub(crate) fn into_raw(self: Box<Self>) -> *mut sys::Error {
        Box::into_raw(self).cast()
    }
}

fn prgname() -> Option<String> {
    // SAFETY: g_get_prgname returns NULL or a string GLib keeps alive.
    unsafe { cstr(sys::g_get_prgname()) }.map(std::borrow::Cow::into_owned)
}

/// One line on stderr, written in one call so concurrent reports do not
/// interleave.
fn print_line(level: Option<&str>, msg: &str) {
    let mut line = String::new();
    if let Some(p) = prgname() {
        line.push_str(&p);
        line.push_str(": ");
    }
    if let Some(level) = level {
        line.push_str(level);
        line.push_str(": ");
    }
    line.push_str(msg);
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// QEMU's `error_handle()`: the one place an error reaches its destination.
///
/// # Safety
/// As [`ErrorImpl::propagate`].
unsafe fn handle(errp: *mut *mut sys::Error, err: QError) {
    if errp == addr_of_mut!(error_abort) {
        let where_ = match &err.func {
            Some(f) => format!("in {f}() at {}:{}", err.src, err.line),
            None => format!("at {}:{}", err.src, err.line),
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "Unexpected error {where_}:\n{}",
            err.message()
        );
        std::process::abort();
    }
    if errp == addr_of_mut!(error_fatal) {
        print_line(None, err.message());
        std::process::exit(1);
    }
    if errp.is_null() {
        return;
    }
    // SAFETY: errp is a valid Error ** (caller's contract).
    if unsafe { !(*errp).is_null() } {
        // Overwriting an error loses the first one: QEMU asserts here.
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}:{}: error set twice; the second one was: {}",
            err.src,
            err.line,
            err.message()
        );
        std::process::abort();
    }
    // SAFETY: as above.
    unsafe {
        *errp = err.into_raw();
    }
}

/// Sets `*errp` from a `Result`: `Ok(v)` gives `Some(v)`, `Err` is stored
/// (QEMU's convention) and gives `None`.
///
/// # Safety
/// As [`ErrorImpl::propagate`].
pub(crate) unsafe fn ok_or_set<T>(r: Result<T, QError>, errp: *mut *mut sys::Error) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            // SAFETY: forwarded from the caller.
            unsafe {
                e.propagate(errp);
            }
            None
        }
    }
}

/// Takes back ownership of a C `Error *` (NULL gives `None`).
///
/// # Safety
/// `err` is NULL or came from this module and is not used afterwards.
pub(crate) unsafe fn from_raw(err: *mut sys::Error) -> Option<QError> {
    if err.is_null() {
        None
    } else {
        // SAFETY: every non-NULL Error * is a leaked Box<ErrorImpl>.
        Some(unsafe { Box::from_raw(err.cast::<ErrorImpl>()) })
    }
}

/// Borrows a C `Error *`.
///
/// # Safety
/// `err` is non-NULL, came from this module and outlives `'a`.
unsafe fn borrow<'a>(err: *const sys::Error) -> &'a ErrorImpl {
    // SAFETY: see the function's contract.
    unsafe { &*err.cast::<ErrorImpl>() }
}

/// Called by `varargs.c` with a `g_malloc`ed message that we take over.
///
/// # Safety
/// `src` and `func` are NULL or NUL-terminated; `msg` is a `g_malloc`ed
/// NUL-terminated string; `errp` as for [`ErrorImpl::propagate`].
#[no_mangle]
pub unsafe extern "C" fn compat_error_set(
    errp: *mut *mut sys::Error,
    src: *const c_char,
    line: c_int,
    func: *const c_char,
    msg: *mut c_char,
) {
    // SAFETY: msg is a NUL-terminated g_malloc'ed string we own.
    let text = unsafe { CStr::from_ptr(msg) }.to_owned();
    // SAFETY: we own msg and are done with it.
    unsafe {
        sys::g_free(msg.cast());
    }
    if errp.is_null() {
        return;
    }
    let err = Box::new(ErrorImpl {
        msg: text,
        // SAFETY: src/func are NULL or NUL-terminated (caller's contract).
        src: unsafe { cstr(src) }
            .map(std::borrow::Cow::into_owned)
            .unwrap_or_default(),
        line: line.max(0) as u32,
        // SAFETY: as above.
        func: unsafe { cstr(func) }.map(std::borrow::Cow::into_owned),
    });
    // SAFETY: errp validity is the caller's contract.
    unsafe {
        handle(errp, err);
    }
}

/// Called by `error_report()`.
///
/// # Safety
/// `level` is a NUL-terminated string; `msg` a `g_malloc`ed NUL-terminated
/// string that we take over.
#[no_mangle]
pub unsafe extern "C" fn compat_report(level: *const c_char, msg: *mut c_char) {
    // SAFETY: both are NUL-terminated (caller's contract).
    let (level, text) = unsafe { (cstr(level), cstr(msg)) };
    print_line(level.as_deref(), text.as_deref().unwrap_or(""));
    // SAFETY: we own msg and are done with it.
    unsafe {
        sys::g_free(msg.cast());
    }
}

/// # Safety
/// `err` is a live `Error *`.
#[no_mangle]
pub unsafe extern "C" fn error_get_pretty(err: *const sys::Error) -> *const c_char {
    // SAFETY: caller's contract.
    unsafe { borrow(err) }.msg.as_ptr()
}

/// Moves `local_err` into `*dst_errp`: aborts/exits for `&error_abort` /
/// `&error_fatal`, and frees it when `dst_errp` is NULL.  Unlike a fresh
/// error, one propagated onto an already set `*dst_errp` is dropped, as
/// QEMU does.
///
/// # Safety
/// `local_err` is NULL or a live `Error *` that the caller gives up;
/// `dst_errp` as for [`ErrorImpl::propagate`].
#[no_mangle]
pub unsafe extern "C" fn error_propagate(
    dst_errp: *mut *mut sys::Error,
    local_err: *mut sys::Error,
) {
    // SAFETY: caller gives up local_err.
    let Some(err) = (unsafe { from_raw(local_err) }) else {
        return;
    };
    let special = dst_errp == addr_of_mut!(error_abort) || dst_errp == addr_of_mut!(error_fatal);
    // SAFETY: dst_errp is NULL, a special destination, or valid.
    if !dst_errp.is_null() && !special && unsafe { !(*dst_errp).is_null() } {
        return;
    }
    // SAFETY: as above.
    unsafe {
        handle(dst_errp, err);
    }
}

/// # Safety
/// `err` is NULL or a live `Error *` not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn error_free(err: *mut sys::Error) {
    // SAFETY: caller's contract.
    drop(unsafe { from_raw(err) });
}

/// # Safety
/// `err` is NULL or a live `Error *` not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn error_report_err(err: *mut sys::Error) {
    // SAFETY: caller's contract.
    if let Some(e) = unsafe { from_raw(err) } {
        print_line(Some("error"), e.message());
    }
}

/// # Safety
/// `err` is NULL or a live `Error *` not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn warn_report_err(err: *mut sys::Error) {
    // SAFETY: caller's contract.
    if let Some(e) = unsafe { from_raw(err) } {
        print_line(Some("warning"), e.message());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::{abort_message, in_child, run_child};

    fn pretty(e: *mut sys::Error) -> String {
        // SAFETY: e is a live error from this module.
        unsafe { CStr::from_ptr(error_get_pretty(e)) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn set_through_c_varargs() {
        let mut err: *mut sys::Error = ptr::null_mut();
        // SAFETY: valid errp and format strings with matching arguments.
        unsafe {
            sys::error_setg_internal(
                &mut err,
                c"f.c".as_ptr(),
                7,
                c"fn".as_ptr(),
                c"bad %d %s".as_ptr(),
                42 as c_int,
                c"thing".as_ptr(),
            );
            // A NULL errp drops the error.
            sys::error_setg_internal(
                ptr::null_mut(),
                c"f.c".as_ptr(),
                1,
                c"fn".as_ptr(),
                c"x".as_ptr(),
            );
        }
        assert!(!err.is_null());
        assert_eq!(pretty(err), "bad 42 thing");
        // SAFETY: err is live, freed once; NULL is allowed.
        unsafe {
            error_free(err);
            error_free(ptr::null_mut());
        }
    }

    #[test]
    fn propagate_rules() {
        let mut dst: *mut sys::Error = ptr::null_mut();
        let a = ErrorImpl::new("first").into_raw();
        let b = ErrorImpl::new("second").into_raw();
        // SAFETY: a and b are given up; dst is valid.
        unsafe {
            error_propagate(&mut dst, a);
            error_propagate(&mut dst, b);
            error_propagate(&mut dst, ptr::null_mut());
            error_propagate(ptr::null_mut(), ErrorImpl::new("dropped").into_raw());
        }
        assert_eq!(pretty(dst), "first");
        // SAFETY: dst is live.
        unsafe {
            error_free(dst);
        }
    }

    #[test]
    fn rust_helpers() {
        let mut dst: *mut sys::Error = ptr::null_mut();
        let r: Result<i32, QError> = Err(ErrorImpl::with_errno(libc::ENOENT, "open x"));
        // SAFETY: dst is valid.
        assert_eq!(unsafe { ok_or_set(r, &mut dst) }, None);
        assert_eq!(pretty(dst), "open x: No such file or directory");
        // SAFETY: dst is live.
        let e = unsafe { from_raw(dst) }.unwrap();
        assert!(e.src.ends_with("error.rs"));
        // SAFETY: NULL errp is fine.
        let v = unsafe { ok_or_set(Ok::<_, QError>(3), ptr::null_mut()) };
        assert_eq!(v, Some(3));
    }

    #[test]
    fn error_abort_in_child() {
        if in_child() {
            // SAFETY: &error_abort is a valid destination.
            unsafe {
                sys::error_setg_internal(
                    addr_of_mut!(error_abort),
                    c"src.c".as_ptr(),
                    12,
                    c"myfunc".as_ptr(),
                    c"boom".as_ptr(),
                )
            }
            return;
        }
        let err = abort_message("error::tests::error_abort_in_child");
        assert!(
            err.contains("Unexpected error in myfunc() at src.c:12:\nboom"),
            "{err}"
        );
    }

    #[test]
    fn error_fatal_in_child() {
        if in_child() {
            // SAFETY: &error_fatal is a valid destination.
            unsafe {
                ErrorImpl::new("fatal one").propagate(addr_of_mut!(error_fatal));
            }
            return;
        }
        let out = run_child("error::tests::error_fatal_in_child");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("fatal one"), "{err}");
    }

    #[test]
    fn error_set_twice_aborts() {
        if in_child() {
            let mut err: *mut sys::Error = ptr::null_mut();
            // SAFETY: valid errp; the second set aborts.
            unsafe {
                ErrorImpl::new("one").propagate(&mut err);
                ErrorImpl::new("two").propagate(&mut err);
            }
            return;
        }
        abort_message("error::tests::error_set_twice_aborts");
    }
}
