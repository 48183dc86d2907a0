//! What every harness needs: the process set-up (main loop, private
//! contexts, a private temporary directory), descriptor counting, and
//! QEMU `Error` and string helpers.

use std::{
    ffi::{c_char, CStr},
    fs,
    path::PathBuf,
    ptr,
    sync::OnceLock,
};

use qemucompat::sys;

/// What the harnesses share for the life of the process.
pub struct Process {
    /// The private temporary directory: `TMPDIR` points there, so the
    /// compat host's own temporary sockets land in it too.
    pub(crate) tmp: PathBuf,
    /// Prefix of every abstract socket name (unique to this process).
    pub(crate) abstract_prefix: String,
    /// A `GMainContext` of our own (iterated without blocking).
    pub(crate) glib_ctx: usize,
    /// An `AioContext` of our own (polled without blocking).
    pub(crate) aio_ctx: usize,
    /// `RLIMIT_NOFILE`: no descriptor number at or above it is open.
    pub(crate) fd_limit: i32,
}

static PROCESS: OnceLock<Process> = OnceLock::new();

/// Sets the process up once; the calling thread becomes the main-loop
/// thread (every later call must come from it).
pub fn process() -> &'static Process {
    PROCESS.get_or_init(|| {
        let pid = std::process::id();
        let tmp = std::env::temp_dir().join(format!("qio-fuzz-{pid}"));
        fs::create_dir_all(&tmp).expect("creating the private temporary directory");
        // Before anything asks GLib for its temporary directory.
        std::env::set_var("TMPDIR", &tmp);
        let mut err = ptr::null_mut();
        // SAFETY: called once, before any other use of the host; the
        // contexts are never freed.
        let (glib_ctx, aio_ctx) = unsafe {
            assert_eq!(sys::qemu_init_main_loop(&mut err), 0, "qemu_init_main_loop");
            let aio = qemucompat::aio_context_new(&mut err);
            assert!(!aio.is_null(), "aio_context_new");
            (sys::g_main_context_new() as usize, aio as usize)
        };
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscall with an out parameter.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        Process {
            tmp,
            abstract_prefix: format!("qio-fuzz-{pid}-"),
            glib_ctx,
            aio_ctx,
            fd_limit: i32::try_from(lim.rlim_cur).unwrap_or(i32::MAX),
        }
    })
}

impl Process {
    pub(crate) fn glib(&self) -> *mut sys::GMainContext {
        self.glib_ctx as *mut sys::GMainContext
    }

    pub(crate) fn aio(&self) -> *mut sys::AioContext {
        self.aio_ctx as *mut sys::AioContext
    }

    /// Empties the private temporary directory (socket files outlive
    /// their sockets).
    pub(crate) fn clean_tmp(&self) {
        if let Ok(dir) = fs::read_dir(&self.tmp) {
            for e in dir.flatten() {
                let p = e.path();
                let _ = fs::remove_file(&p).or_else(|_| fs::remove_dir_all(&p));
            }
        }
    }
}

/// The open descriptors of the process, with what they are (for the
/// message when some were leaked).
pub fn open_fds() -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(e.path()).ok()?;
            Some((n, target.to_string_lossy().into_owned()))
        })
        .collect();
    v.sort();
    v
}

/// Counts the descriptors around one input: [`FdCheck::finish`] panics
/// if any opened during the input is still open.
pub struct FdCheck(Vec<(i32, String)>);

impl FdCheck {
    pub(crate) fn start() -> Self {
        FdCheck(open_fds())
    }

    pub(crate) fn finish(self) {
        let now = open_fds();
        // read_dir's own descriptor is open during both listings.
        if now.len() != self.0.len() {
            let leaked: Vec<_> = now.iter().filter(|e| !self.0.contains(e)).collect();
            let closed: Vec<_> = self.0.iter().filter(|e| !now.contains(e)).collect();
            panic!(
                "descriptor leak: {} open before the input, {} after; new: {leaked:?}; gone: {closed:?}",
                self.0.len(),
                now.len()
            );
        }
    }
}

/// Takes the error out of `err` (freeing it): its message, or None.
/// Panics on an error without a message or with a caught panic's.
pub fn take_error(err: &mut *mut sys::Error) -> Option<String> {
    if err.is_null() {
        return None;
    }
    // SAFETY: a set error, owned by the caller, freed here once.
    let msg = unsafe {
        let m = CStr::from_ptr(sys::error_get_pretty(*err))
            .to_string_lossy()
            .into_owned();
        sys::error_free(*err);
        m
    };
    *err = ptr::null_mut();
    assert!(!msg.trim().is_empty(), "an Error without a message");
    // The C ABI's message for a panic it caught ("<function>: internal
    // error"); fuzzed text quoted in a message cannot end it.
    assert!(
        !msg.ends_with(": internal error"),
        "a panic was caught below the C ABI: {msg}"
    );
    Some(msg)
}

/// A `g_malloc`ed copy of `bytes` with a NUL appended (any interior NUL
/// ends the C string early, as it would in C).
pub fn g_strdup_bytes(bytes: &[u8]) -> *mut c_char {
    // SAFETY: g_malloc aborts rather than failing; len + 1 bytes written.
    unsafe {
        let p = sys::g_malloc(bytes.len() + 1).cast::<u8>();
        ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
        p.cast()
    }
}

/// The bytes of a C string (None for NULL).
///
/// # Safety
/// `p` is NULL or NUL-terminated.
pub unsafe fn c_bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: caller's contract.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// With `QIO_FUZZ_TRACE` set, prints the decoded input (to triage a
/// finding: `QIO_FUZZ_TRACE=1 fuzz/target/.../<target> <file>`).
pub fn trace_input(input: &impl std::fmt::Debug) {
    if std::env::var_os("QIO_FUZZ_TRACE").is_some() {
        eprintln!("{input:#?}");
    }
}
