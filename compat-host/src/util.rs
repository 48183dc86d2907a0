//! Small helpers shared by the compat host's modules.

use std::ffi::{c_char, CStr};

use crate::sys;

/// A new `g_malloc`ed copy of `s` (C code frees it with `g_free`).
pub fn g_strdup(s: &str) -> *mut c_char {
    let len = s.len();
    // SAFETY: g_malloc never returns NULL (it aborts); we write len bytes
    // plus the terminator into the len + 1 bytes it returned.
    unsafe {
        let p = sys::g_malloc((len + 1) as sys::gsize) as *mut u8;
        std::ptr::copy_nonoverlapping(s.as_ptr(), p, len);
        *p.add(len) = 0;
        p as *mut c_char
    }
}

/// Borrow a C string as `&str` (lossy for invalid UTF-8); `None` for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that outlives the result.
pub unsafe fn cstr<'a>(p: *const c_char) -> Option<std::borrow::Cow<'a, str>> {
    if p.is_null() {
        None
    } else {
        // SAFETY: the caller guarantees a valid NUL-terminated string.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy())
    }
}
