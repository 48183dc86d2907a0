//! Name resolution: `getaddrinfo()` as the listen and connect paths use
//! it, and QEMU's `QIODNSResolver` (io/dns-resolver.h).

use std::{
    ffi::{c_int, CString},
    mem::{size_of, zeroed},
    ptr,
    sync::OnceLock,
};

use libc::{sockaddr_storage, socklen_t};

use super::{
    clone_address, new_address, parse::check_port, sockaddr::gai_error, text, AddrBox, Result,
    SockAddr,
};
use crate::{
    error::{ok_or_set, ErrorImpl},
    qom::{type_info, type_init},
    sys,
    util::g_strdup,
};

/// One `getaddrinfo()` result.
pub(super) struct Resolved {
    pub(super) family: c_int,
    pub(super) protocol: c_int,
    pub(super) addr: SockAddr,
}

pub(super) fn getaddrinfo(
    host: Option<&str>,
    port: Option<&str>,
    family: c_int,
    flags: c_int,
) -> std::result::Result<Vec<Resolved>, c_int> {
    let host = host.map(|h| CString::new(h).unwrap_or_default());
    let port = port.map(|p| CString::new(p).unwrap_or_default());
    // SAFETY: all-zero is a valid addrinfo hints value.
    let mut hints: libc::addrinfo = unsafe { zeroed() };
    hints.ai_flags = flags;
    hints.ai_family = family;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res: *mut libc::addrinfo = ptr::null_mut();
    // SAFETY: the strings are NULL or NUL-terminated; res is an out param.
    let rc = unsafe {
        libc::getaddrinfo(
            host.as_ref().map_or(ptr::null(), |h| h.as_ptr()),
            port.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
            &hints,
            &mut res,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    let mut out = Vec::new();
    let mut e = res;
    while !e.is_null() {
        // SAFETY: e is a node of the list getaddrinfo returned.
        let ai = unsafe { &*e };
        let mut addr = SockAddr::empty();
        let n = (ai.ai_addrlen as usize).min(size_of::<sockaddr_storage>());
        // SAFETY: ai_addr is valid for ai_addrlen bytes.
        unsafe {
            ptr::copy_nonoverlapping(
                ai.ai_addr.cast::<u8>(),
                ptr::addr_of_mut!(addr.storage).cast::<u8>(),
                n,
            );
        }
        addr.len = n as socklen_t;
        out.push(Resolved {
            family: ai.ai_family,
            protocol: ai.ai_protocol,
            addr,
        });
        e = ai.ai_next;
    }
    // SAFETY: res came from getaddrinfo and is not used afterwards.
    unsafe {
        libc::freeaddrinfo(res);
    }
    Ok(out)
}

/// QEMU's `inet_ai_family_from_address()`.
pub(super) fn ai_family(a: &sys::InetSocketAddress) -> Result<c_int> {
    let v4_on = a.has_ipv4 && a.ipv4;
    let v6_on = a.has_ipv6 && a.ipv6;
    let v4_off = a.has_ipv4 && !a.ipv4;
    let v6_off = a.has_ipv6 && !a.ipv6;
    if v4_off && v6_off {
        return Err(ErrorImpl::new("Cannot disable IPv4 and IPv6 at same time"));
    }
    Ok(if v4_on && v6_on {
        libc::AF_UNSPEC
    } else if v6_on || v4_off {
        libc::AF_INET6
    } else if v4_on || v6_off {
        libc::AF_INET
    } else {
        libc::AF_UNSPEC
    })
}

// ---------------------------------------------------------------------------
// The DNS resolver

const RESOLVER_INFO: sys::TypeInfo = type_info(
    c"qio-dns-resolver",
    Some(c"object"),
    size_of::<sys::QIODNSResolver>(),
);

unsafe extern "C" fn register_types() {
    // SAFETY: a constant TypeInfo with static strings.
    unsafe {
        sys::type_register_static(&RESOLVER_INFO);
    }
}
type_init!(register_types);

#[no_mangle]
pub extern "C" fn qio_dns_resolver_get_instance() -> *mut sys::QIODNSResolver {
    static INSTANCE: OnceLock<usize> = OnceLock::new();
    *INSTANCE.get_or_init(|| {
        // SAFETY: a built-in concrete type; the instance is never freed.
        unsafe { sys::object_new(RESOLVER_INFO.name) as usize }
    }) as *mut sys::QIODNSResolver
}

/// Resolves an inet address to one numeric address per distinct result.
fn resolve_inet(a: &sys::InetSocketAddress) -> Result<Vec<AddrBox>> {
    if a.host.is_null() {
        return Err(ErrorImpl::new("host not specified"));
    }
    // SAFETY: the address owns NUL-terminated strings (port may be NULL).
    let (host, port) = unsafe { (text(a.host), text(a.port)) };
    check_port(port.as_bytes())?;
    let family = ai_family(a)?;
    let mut flags = libc::AI_PASSIVE;
    if a.has_numeric && a.numeric {
        flags |= libc::AI_NUMERICHOST | libc::AI_NUMERICSERV;
    }
    let cands = getaddrinfo(
        (!host.is_empty()).then_some(host.as_str()),
        (!port.is_empty()).then_some(port.as_str()),
        family,
        flags,
    )
    .map_err(|rc| {
        ErrorImpl::new(format!(
            "address resolution failed for {host}:{port}: {}",
            gai_error(rc)
        ))
    })?;
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut out = Vec::new();
    for cand in &cands {
        let Ok(hp) = cand.addr.numeric() else {
            continue;
        };
        if seen.contains(&hp) {
            continue;
        }
        let b = AddrBox(new_address(sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET));
        // SAFETY: a fresh inet address that we own; the flags are copied
        // from the request, the strings are new.
        unsafe {
            let i = &mut (*b.0).u.inet;
            *i = *a;
            i.host = g_strdup(&hp.0);
            i.port = g_strdup(&hp.1);
            (i.has_numeric, i.numeric) = (true, true);
        }
        seen.push(hp);
        out.push(b);
    }
    Ok(out)
}

/// # Safety
/// `addr` is a valid `SocketAddress`; `naddrs`/`addrs` valid out
/// parameters; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_dns_resolver_lookup_sync(
    _resolver: *mut sys::QIODNSResolver,
    addr: *mut sys::SocketAddress,
    naddrs: *mut usize,
    addrs: *mut *mut *mut sys::SocketAddress,
    errp: *mut *mut sys::Error,
) -> c_int {
    // SAFETY: caller's contract.
    unsafe {
        *naddrs = 0;
        *addrs = ptr::null_mut();
    }
    // SAFETY: caller's contract; the tag selects the union member.
    let r = unsafe {
        if (*addr).type_ == sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET {
            resolve_inet(&(*addr).u.inet)
        } else {
            Ok(vec![AddrBox(clone_address(addr))])
        }
    };
    // SAFETY: caller's contract.
    let Some(list) = (unsafe { ok_or_set(r, errp) }) else {
        return -1;
    };
    let n = list.len();
    // SAFETY: g_malloc0 aborts rather than failing; the array has n slots.
    let arr = unsafe { sys::g_malloc0(n.max(1) * size_of::<*mut sys::SocketAddress>()) }
        .cast::<*mut sys::SocketAddress>();
    for (i, b) in list.into_iter().enumerate() {
        // SAFETY: i < n.
        unsafe {
            *arr.add(i) = b.into_raw();
        }
    }
    // SAFETY: caller's contract.
    unsafe {
        *naddrs = n;
        *addrs = arr;
    }
    0
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{testing::*, *};

    #[test]
    fn dns_lookup() {
        let r = qio_dns_resolver_get_instance();
        assert_eq!(r, qio_dns_resolver_get_instance());
        let a = parse_ok("localhost:4242,to=4250");
        let mut n = 0;
        let mut list = ptr::null_mut();
        let mut err = ptr::null_mut();
        // SAFETY: valid address and out parameters.
        unsafe {
            assert_eq!(
                qio_dns_resolver_lookup_sync(r, a.0, &mut n, &mut list, &mut err),
                0
            );
            assert!(n >= 1);
            let mut seen = Vec::new();
            for i in 0..n {
                let x = AddrBox(*list.add(i));
                let inet = &(*x.0).u.inet;
                let h = text(inet.host);
                assert!(h == "127.0.0.1" || h == "::1", "{h}");
                assert_eq!(text(inet.port), "4242");
                assert!(inet.has_to && inet.to == 4250 && inet.numeric);
                assert!(!seen.contains(&h), "duplicate {h}");
                // Every result can be listened on (if the family works).
                if let Ok(l) = listen(x.0, 1) {
                    drop(l);
                }
                seen.push(h);
            }
            sys::g_free(list.cast());

            let w = parse_ok(":0");
            assert_eq!(
                qio_dns_resolver_lookup_sync(r, w.0, &mut n, &mut list, &mut err),
                0
            );
            for i in 0..n {
                let x = AddrBox(*list.add(i));
                let h = text((*x.0).u.inet.host);
                assert!(h == "0.0.0.0" || h == "::", "{h}");
            }
            sys::g_free(list.cast());

            let u = parse_ok("unix:/tmp/x");
            assert_eq!(
                qio_dns_resolver_lookup_sync(r, u.0, &mut n, &mut list, &mut err),
                0
            );
            assert_eq!(n, 1);
            let x = AddrBox(*list);
            assert_eq!(uri(x.0), "unix:/tmp/x");
            sys::g_free(list.cast());

            let bad = parse_ok("no-such-host.invalid:80");
            assert_eq!(
                qio_dns_resolver_lookup_sync(r, bad.0, &mut n, &mut list, &mut err),
                -1
            );
            let e = crate::error::from_raw(err).unwrap();
            assert!(
                e.message()
                    .starts_with("address resolution failed for no-such-host.invalid:80: "),
                "{}",
                e.message()
            );
            assert!(n == 0 && list.is_null());
        }
    }
}
