//! Watches on a channel's fd: `GSource`s like QEMU's io/channel-watch.c,
//! and `AioContext` fd handlers.

use std::{ffi::c_void, ptr};

use super::socket_of;
use crate::{sys, util::new_fd_source};

/// QEMU's `QIOChannelFDSource`, with the fd registered through
/// `g_source_add_unix_fd()`.
#[repr(C)]
struct FdSource {
    parent: sys::GSource,
    tag: sys::gpointer,
    ioc: *mut sys::QIOChannel,
    condition: sys::GIOCondition,
}

unsafe extern "C" fn fd_source_prepare(
    _source: *mut sys::GSource,
    timeout: *mut sys::gint,
) -> sys::gboolean {
    // SAFETY: GLib passes a valid out pointer.
    unsafe {
        *timeout = -1;
    }
    0
}

unsafe extern "C" fn fd_source_check(source: *mut sys::GSource) -> sys::gboolean {
    let s = source.cast::<FdSource>();
    // SAFETY: source is one of our FdSources; tag is its fd's tag.
    let revents = unsafe { sys::g_source_query_unix_fd(source, (*s).tag) };
    // SAFETY: as above.
    sys::gboolean::from(revents & unsafe { (*s).condition } != 0)
}

unsafe extern "C" fn fd_source_dispatch(
    source: *mut sys::GSource,
    callback: sys::GSourceFunc,
    user_data: sys::gpointer,
) -> sys::gboolean {
    let s = source.cast::<FdSource>();
    // SAFETY: every callback set on our sources is a QIOChannelFunc
    // stored as a GSourceFunc (see add_watch_source); the two are
    // function pointers of the same size.
    let func: sys::QIOChannelFunc =
        unsafe { std::mem::transmute::<sys::GSourceFunc, sys::QIOChannelFunc>(callback) };
    let Some(func) = func else {
        return 0;
    };
    // SAFETY: the source holds a reference to ioc until finalize.
    unsafe {
        let revents = sys::g_source_query_unix_fd(source, (*s).tag);
        func((*s).ioc, revents & (*s).condition, user_data)
    }
}

unsafe extern "C" fn fd_source_finalize(source: *mut sys::GSource) {
    let s = source.cast::<FdSource>();
    // SAFETY: drops the reference taken in create_watch.
    unsafe {
        sys::object_unref((*s).ioc.cast());
        (*s).ioc = ptr::null_mut();
    }
}

static FD_SOURCE_FUNCS: sys::GSourceFuncs = sys::GSourceFuncs {
    prepare: Some(fd_source_prepare),
    check: Some(fd_source_check),
    dispatch: Some(fd_source_dispatch),
    finalize: Some(fd_source_finalize),
    closure_callback: None,
    closure_marshal: None,
};

/// # Safety
/// `ioc` is a live socket channel.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_create_watch(
    ioc: *mut sys::QIOChannel,
    condition: sys::GIOCondition,
) -> *mut sys::GSource {
    // SAFETY: caller's contract.
    let sioc = match unsafe { socket_of(ioc) } {
        Ok(s) => s,
        Err(e) => {
            // SAFETY: &error_abort is a valid destination: a watch on a
            // channel type we cannot poll is a programming error.
            unsafe {
                e.propagate(ptr::addr_of_mut!(crate::error::error_abort));
            }
            return ptr::null_mut();
        }
    };
    // SAFETY: FdSource is repr(C) with the GSource first and valid
    // zero-filled; FD_SOURCE_FUNCS are its callbacks; sioc is live.
    let (s, tag) = unsafe {
        new_fd_source::<FdSource>(
            &FD_SOURCE_FUNCS,
            c"QIOChannelFDSource",
            (*sioc).fd,
            condition,
        )
    };
    // SAFETY: a fresh source nobody else sees yet; the reference taken on
    // ioc is dropped in fd_source_finalize.
    unsafe {
        (*s).ioc = sys::object_ref(ioc.cast()).cast();
        (*s).condition = condition;
        (*s).tag = tag;
    }
    s.cast()
}

/// # Safety
/// As [`qio_channel_add_watch_full`].
#[no_mangle]
pub unsafe extern "C" fn qio_channel_add_watch(
    ioc: *mut sys::QIOChannel,
    condition: sys::GIOCondition,
    func: sys::QIOChannelFunc,
    user_data: sys::gpointer,
    notify: sys::GDestroyNotify,
) -> sys::guint {
    // SAFETY: caller's contract.
    unsafe { qio_channel_add_watch_full(ioc, condition, func, user_data, notify, ptr::null_mut()) }
}

/// # Safety
/// `ioc` is a live socket channel; `func`/`user_data`/`notify` follow
/// `GLib`'s callback rules; `context` NULL or a live `GMainContext`.
pub unsafe fn qio_channel_add_watch_full(
    ioc: *mut sys::QIOChannel,
    condition: sys::GIOCondition,
    func: sys::QIOChannelFunc,
    user_data: sys::gpointer,
    notify: sys::GDestroyNotify,
    context: *mut sys::GMainContext,
) -> sys::guint {
    // SAFETY: caller's contract.
    let source =
        unsafe { qio_channel_add_watch_source(ioc, condition, func, user_data, notify, context) };
    // SAFETY: the context holds its own reference once attached.
    unsafe {
        let id = sys::g_source_get_id(source);
        sys::g_source_unref(source);
        id
    }
}

/// # Safety
/// As [`qio_channel_add_watch_full`].
#[no_mangle]
pub unsafe extern "C" fn qio_channel_add_watch_source(
    ioc: *mut sys::QIOChannel,
    condition: sys::GIOCondition,
    func: sys::QIOChannelFunc,
    user_data: sys::gpointer,
    notify: sys::GDestroyNotify,
    context: *mut sys::GMainContext,
) -> *mut sys::GSource {
    // SAFETY: caller's contract.
    let source = unsafe { qio_channel_create_watch(ioc, condition) };
    // SAFETY: dispatch turns the callback back into a QIOChannelFunc;
    // GLib calls notify(user_data) once the source no longer needs it.
    // The reference from g_source_new goes to the caller.
    unsafe {
        let cb = std::mem::transmute::<sys::QIOChannelFunc, sys::GSourceFunc>(func);
        sys::g_source_set_callback(source, cb, user_data, notify);
        sys::g_source_attach(source, context);
    }
    source
}

/// # Safety
/// `ioc` is a live socket channel; the contexts are NULL or live; the
/// handlers follow `aio_set_fd_handler()`'s rules.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_set_aio_fd_handler(
    ioc: *mut sys::QIOChannel,
    read_ctx: *mut sys::AioContext,
    io_read: sys::IOHandler,
    write_ctx: *mut sys::AioContext,
    io_write: sys::IOHandler,
    opaque: *mut c_void,
) {
    // SAFETY: caller's contract.
    let Ok(sioc) = (unsafe { socket_of(ioc) }) else {
        return;
    };
    // SAFETY: caller's contract.
    let fd = unsafe { (*sioc).fd };
    // SAFETY: the contexts are live (caller's contract); the AioContext
    // implementation copies what it needs.
    unsafe {
        if read_ctx == write_ctx {
            if !read_ctx.is_null() {
                sys::aio_set_fd_handler(read_ctx, fd, io_read, io_write, None, None, opaque);
            }
        } else {
            if !read_ctx.is_null() {
                sys::aio_set_fd_handler(read_ctx, fd, io_read, None, None, None, opaque);
            }
            if !write_ctx.is_null() {
                sys::aio_set_fd_handler(write_ctx, fd, None, io_write, None, None, opaque);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::{
        address,
        channel::{testing::*, *},
    };

    static FIRED: AtomicUsize = AtomicUsize::new(0);
    static NOTIFIED: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn on_incoming(
        ioc: *mut sys::QIOChannel,
        cond: sys::GIOCondition,
        data: sys::gpointer,
    ) -> sys::gboolean {
        assert_eq!(cond, sys::G_IO_IN);
        assert_eq!(data as usize, 0x1234);
        let mut err = ptr::null_mut();
        // SAFETY: ioc is the listening channel the watch holds.
        let s = unsafe { qio_channel_socket_accept(ioc.cast(), &mut err) };
        assert!(!s.is_null());
        // SAFETY: our new channel.
        unsafe {
            sys::object_unref(s.cast());
        }
        FIRED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        0 // G_SOURCE_REMOVE
    }

    unsafe extern "C" fn on_destroy(data: sys::gpointer) {
        assert_eq!(data as usize, 0x1234);
        NOTIFIED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn watch_on_private_context() {
        use std::sync::atomic::Ordering::SeqCst;
        let (l, addr) = listener();
        // SAFETY: live channel, context and callbacks for the whole block.
        unsafe {
            let ctx = sys::g_main_context_new();
            let src = qio_channel_add_watch_source(
                l.cast(),
                sys::G_IO_IN,
                Some(on_incoming),
                0x1234 as sys::gpointer,
                Some(on_destroy),
                ctx,
            );
            assert_eq!((*l).parent.parent.ref_, 2, "the watch holds a reference");
            // Nothing pending: the watch does not fire.
            assert_eq!(sys::g_main_context_iteration(ctx, 0), 0);
            assert_eq!(FIRED.load(SeqCst), 0);

            let c = address::connect(addr).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while FIRED.load(SeqCst) == 0 && std::time::Instant::now() < deadline {
                sys::g_main_context_iteration(ctx, 1);
            }
            assert_eq!(FIRED.load(SeqCst), 1);
            assert_eq!(NOTIFIED.load(SeqCst), 1);
            assert!(sys::g_source_is_destroyed(src) != 0);
            sys::g_source_unref(src);
            assert_eq!(
                (*l).parent.parent.ref_,
                1,
                "finalizing the source dropped its reference"
            );
            drop(c);

            // add_watch_full returns an id that removes the watch.
            let id = qio_channel_add_watch_full(
                l.cast(),
                sys::G_IO_IN,
                Some(on_incoming),
                0x1234 as sys::gpointer,
                Some(on_destroy),
                ctx,
            );
            assert!(id > 0);
            let s = sys::g_main_context_find_source_by_id(ctx, id);
            sys::g_source_destroy(s);
            assert_eq!(NOTIFIED.load(SeqCst), 2);
            assert_eq!((*l).parent.parent.ref_, 1);

            sys::g_main_context_unref(ctx);
            sys::object_unref(l.cast());
            address::qapi_free_SocketAddress(addr);
        }
    }

    unsafe extern "C" fn aio_on_read(opaque: *mut c_void) {
        let l = opaque.cast::<sys::QIOChannelSocket>();
        let mut err = ptr::null_mut();
        // SAFETY: opaque is the live listener (see the test).
        unsafe {
            let s = qio_channel_socket_accept(l, &mut err);
            assert!(!s.is_null());
            sys::object_unref(s.cast());
        }
        AIO_FIRED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    static AIO_FIRED: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn aio_fd_handler_in_one_or_two_contexts() {
        use std::sync::atomic::Ordering::SeqCst;
        let (l, addr) = listener();
        let mut err = ptr::null_mut();
        // SAFETY: live channel and contexts for the whole block.
        unsafe {
            let ctx = check(crate::aio::aio_context_new(&mut err), &mut err);
            let other = check(crate::aio::aio_context_new(&mut err), &mut err);
            for (rctx, wctx) in [(ctx, ctx), (ctx, other)] {
                let before = AIO_FIRED.load(SeqCst);
                qio_channel_set_aio_fd_handler(
                    l.cast(),
                    rctx,
                    Some(aio_on_read),
                    wctx,
                    None,
                    l.cast(),
                );
                let c = address::connect(addr).unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while AIO_FIRED.load(SeqCst) == before && std::time::Instant::now() < deadline {
                    sys::aio_poll(ctx, true);
                }
                assert_eq!(AIO_FIRED.load(SeqCst), before + 1);
                qio_channel_set_aio_fd_handler(l.cast(), rctx, None, wctx, None, ptr::null_mut());
                drop(c);
            }
            // Removed: a new connection no longer runs the handler.
            let c = address::connect(addr).unwrap();
            let n = AIO_FIRED.load(SeqCst);
            sys::aio_poll(ctx, false);
            assert_eq!(AIO_FIRED.load(SeqCst), n);
            drop(c);
            crate::aio::aio_context_unref(other);
            crate::aio::aio_context_unref(ctx);
            sys::object_unref(l.cast());
            address::qapi_free_SocketAddress(addr);
        }
    }
}
