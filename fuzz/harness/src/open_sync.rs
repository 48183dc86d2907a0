//! Target `open_sync`: `qio_net_listener_open_sync` with arbitrary
//! `SocketAddress` values ([`crate::address`]), up to four on one
//! listener, each with an arbitrary backlog.
//!
//! Checked: 0 XOR -1 with a clear error; on success more channels, the
//! listener connected, and every new channel's local address allowed by
//! the safety rule and the one asked for (a unix path or abstract name
//! byte for byte); on failure nothing changed; no descriptor left open
//! once the listener is gone.

use std::{
    net::{Ipv4Addr, TcpListener},
    os::fd::OwnedFd,
    os::unix::{ffi::OsStrExt, net::UnixListener},
    ptr,
};

use arbitrary::{Arbitrary, Unstructured};
use qemucompat::sys;
use qio_net_listener::ffi::*;

use crate::{
    address::{check_bound, Addr, Bound, Expect},
    support::{process, take_error, FdCheck},
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bind a loopback TCP socket and a unix socket first, so that
    /// addresses can name a port or path in use.
    prebind: bool,
    name: Option<String>,
    opens: Vec<(Addr, i32)>,
}

/// Sockets bound outside the listener, so that addresses can collide.
fn prebind(bound: &mut Bound) -> Vec<OwnedFd> {
    let t = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("127.0.0.1:0");
    bound
        .ports
        .push(t.local_addr().expect("local address").port());
    let path = process().tmp.join("prebound");
    let _ = std::fs::remove_file(&path);
    let u = UnixListener::bind(&path).expect("unix socket in the temporary dir");
    bound.paths.push(path.as_os_str().as_bytes().to_vec());
    vec![t.into(), u.into()]
}

pub fn run(data: &[u8]) {
    let p = process();
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    crate::support::trace_input(&input);
    let fds = FdCheck::start();
    let mut bound = Bound::default();
    let pre = if input.prebind {
        prebind(&mut bound)
    } else {
        Vec::new()
    };
    let l = qio_net_listener_new();
    assert!(!l.is_null());
    if let Some(name) = &input.name {
        let name = crate::support::g_strdup_bytes(name.as_bytes());
        // SAFETY: a live listener and a C string, freed after the call.
        unsafe {
            qio_net_listener_set_name(l, name);
            sys::g_free(name.cast());
        }
    }
    let mut nsioc = 0;
    let mut connected = false;
    for (addr, num) in input.opens.iter().take(4) {
        let (c, expect) = addr.build(&mut bound);
        let mut err: *mut sys::Error = ptr::null_mut();
        // SAFETY: a live listener, a valid address, an unset error.
        let rc = unsafe {
            qio_net_listener_open_sync(l, c.0.cast(), *num, ptr::from_mut(&mut err).cast())
        };
        let msg = take_error(&mut err);
        // SAFETY: a live listener.
        let (n, now_connected) =
            unsafe { (qio_net_listener_nsioc(l), qio_net_listener_is_connected(l)) };
        match rc {
            0 => {
                assert!(
                    msg.is_none(),
                    "open_sync({addr:?}) = 0 with an error: {msg:?}"
                );
                assert!(n > nsioc, "open_sync({addr:?}) = 0 but no new channel");
                assert!(now_connected, "open_sync({addr:?}) = 0 but not connected");
                assert!(
                    expect != Expect::Fail,
                    "open_sync({addr:?}) = 0 for a bad address"
                );
                for i in nsioc..n {
                    // SAFETY: a live listener, an unset error; the address
                    // returned is ours to free.
                    unsafe {
                        let a = qio_net_listener_get_local_address(
                            l,
                            i,
                            ptr::from_mut(&mut err).cast(),
                        )
                        .cast::<sys::SocketAddress>();
                        let m = take_error(&mut err);
                        assert!(
                            !a.is_null(),
                            "channel {i} of {addr:?}: no local address: {m:?}"
                        );
                        check_bound(a, &expect);
                        bound.record(a);
                        sys::qapi_free_SocketAddress(a);
                    }
                }
                connected = true;
            }
            -1 => {
                assert!(msg.is_some(), "open_sync({addr:?}) = -1 without an error");
                assert_eq!(n, nsioc, "open_sync({addr:?}) failed but added a channel");
                assert_eq!(now_connected, connected, "failed open_sync({addr:?})");
            }
            rc => panic!("open_sync({addr:?}) = {rc}"),
        }
        nsioc = n;
    }
    // SAFETY: a live listener; this drops our only reference.
    unsafe {
        qio_net_listener_disconnect(l);
        assert!(!qio_net_listener_is_connected(l));
        sys::object_unref(l.cast());
    }
    drop(pre);
    drop(bound);
    p.clean_tmp();
    fds.finish();
}
