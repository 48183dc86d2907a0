//! Small helpers shared by the compat host's modules.

use std::{
    ffi::{c_char, CStr},
    mem::size_of,
    os::fd::RawFd,
    ptr,
};

use crate::sys;

/// A new `g_malloc`ed copy of `s` (C code frees it with `g_free`).
pub fn g_strdup(s: &str) -> *mut c_char {
    g_strdup_bytes(s.as_bytes())
}

/// A new `g_malloc`ed, NUL-terminated copy of `b` (which may hold any
/// byte but NUL: a NUL would end the C string early).
pub fn g_strdup_bytes(b: &[u8]) -> *mut c_char {
    let len = b.len();
    // SAFETY: g_malloc never returns NULL (it aborts); we write len bytes
    // plus the terminator into the len + 1 bytes it returned.
    unsafe {
        let p = sys::g_malloc(len + 1).cast::<u8>();
        std::ptr::copy_nonoverlapping(b.as_ptr(), p, len);
        *p.add(len) = 0;
        p.cast::<c_char>()
    }
}

/// A new `GSource` of the `#[repr(C)]` type `T` (whose first field is the
/// `GSource`, the rest zero-filled by `GLib`), named `name`, that polls `fd`
/// for `condition`: the `AioContext`'s and the channel watches' shape.
/// Returns the source and the tag of its fd.
///
/// # Safety
/// `T` is `#[repr(C)]`, starts with a `sys::GSource` and is valid
/// all-zero; `funcs` are callbacks for a source of type `T`.
pub unsafe fn new_fd_source<T>(
    funcs: &'static sys::GSourceFuncs,
    name: &CStr,
    fd: RawFd,
    condition: sys::GIOCondition,
) -> (*mut T, sys::gpointer) {
    // SAFETY: GLib only reads `funcs` (the pointer is `*mut` for
    // historical reasons) and it lives forever; the size covers T, which
    // starts with the GSource header (caller's contract).
    let source = unsafe {
        sys::g_source_new(
            ptr::from_ref(funcs).cast_mut(),
            size_of::<T>() as sys::guint,
        )
    };
    // SAFETY: a fresh source nobody else sees yet.
    let tag = unsafe {
        sys::g_source_set_name(source, name.as_ptr());
        sys::g_source_add_unix_fd(source, fd, condition)
    };
    (source.cast(), tag)
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

/// Test helpers.
#[cfg(test)]
pub mod testing {
    use std::process::{Command, Output};

    const CHILD_ENV: &str = "QEMUCOMPAT_TEST_CHILD";

    /// Whether this process is a child started by [`run_child`].
    pub fn in_child() -> bool {
        std::env::var_os(CHILD_ENV).is_some()
    }

    /// For tests that must run alone in their process (counting open
    /// descriptors): in the test harness, runs test `name` in a child and
    /// checks that it passed, returning false; in that child, returns true
    /// so the caller goes on with the real test.
    pub fn isolated(name: &str) -> bool {
        if in_child() {
            return true;
        }
        let out = run_child(name);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{name} in a child process: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        false
    }

    /// Runs test `name` in a child (see [`run_child`]), checks that it
    /// aborted, and returns what it printed on stderr.
    pub fn abort_message(name: &str) -> String {
        use std::os::unix::process::ExitStatusExt;

        let out = run_child(name);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{name}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs the single test `name` of this test binary in a new process
    /// (where [`in_child`] is true), for behaviour that ends the process
    /// (abort, exit).  A fresh process instead of `fork()`, because a forked
    /// child of the multi-threaded harness can inherit held locks.
    pub fn run_child(name: &str) -> Output {
        Command::new(std::env::current_exe().expect("test binary path"))
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .expect("run the test binary")
    }
}
