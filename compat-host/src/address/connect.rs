//! Connecting sockets: `socket_connect()`.

use std::os::fd::{AsFd, OwnedFd};

use super::{
    bytes, connect_fd, fd_from_str, new_socket,
    parse::{check_port, host_port},
    resolver::{ai_family, getaddrinfo},
    set_keepalive,
    sockaddr::{gai_error, vsock_sockaddr},
    text, Result, SockAddr,
};
use crate::{error::ErrorImpl, sys};

fn inet_connect(a: &sys::InetSocketAddress) -> Result<OwnedFd> {
    if a.host.is_null() || a.port.is_null() {
        return Err(ErrorImpl::new("host and/or port not specified"));
    }
    // SAFETY: the address owns NUL-terminated strings.
    let (host, port) = unsafe { (text(a.host), text(a.port)) };
    let what = host_port(&host, &port);
    check_port(port.as_bytes())?;
    let family = ai_family(a)?;
    let mut flags = libc::AI_V4MAPPED;
    if a.has_numeric && a.numeric {
        flags |= libc::AI_NUMERICHOST | libc::AI_NUMERICSERV;
    }
    let cands = getaddrinfo(
        (!host.is_empty()).then_some(host.as_str()),
        Some(&port),
        family,
        flags,
    )
    .map_err(|rc| {
        ErrorImpl::new(format!(
            "address resolution failed for {what}: {}",
            gai_error(rc)
        ))
    })?;
    let mut last = libc::ECONNREFUSED;
    for cand in &cands {
        let proto = if a.has_mptcp && a.mptcp {
            libc::IPPROTO_MPTCP
        } else {
            cand.protocol
        };
        let sock = match new_socket(cand.family, libc::SOCK_STREAM, proto) {
            Ok(s) => s,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match connect_fd(sock.as_fd(), &cand.addr) {
            Ok(()) => {
                set_keepalive(sock.as_fd(), a, &what)?;
                return Ok(sock);
            }
            Err(e) => last = e,
        }
    }
    Err(ErrorImpl::with_errno(
        last,
        format!("Failed to connect to '{what}'"),
    ))
}

fn unix_connect(a: &sys::UnixSocketAddress) -> Result<OwnedFd> {
    let abstract_ = a.has_abstract && a.abstract_;
    // SAFETY: the address owns a NUL-terminated path (or NULL).
    let path = unsafe { bytes(a.path) };
    if path.is_empty() && !abstract_ {
        return Err(ErrorImpl::new("unix connect: no path specified"));
    }
    let shown = String::from_utf8_lossy(path).into_owned();
    let sa = SockAddr::unix(path, abstract_, !a.has_tight || a.tight)
        .ok_or_else(|| ErrorImpl::new(format!("UNIX socket path '{shown}' is too long")))?;
    let sock = new_socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)
        .map_err(|e| ErrorImpl::with_errno(e, "Failed to create socket"))?;
    connect_fd(sock.as_fd(), &sa)
        .map_err(|e| ErrorImpl::with_errno(e, format!("Failed to connect to '{shown}'")))?;
    Ok(sock)
}

fn vsock_connect(a: &sys::VsockSocketAddress) -> Result<OwnedFd> {
    let (sa, what) = vsock_sockaddr(a)?;
    let sock = new_socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0)
        .map_err(|e| ErrorImpl::with_errno(e, format!("Failed to create socket for {what}")))?;
    connect_fd(sock.as_fd(), &sa)
        .map_err(|e| ErrorImpl::with_errno(e, format!("Failed to connect to '{what}'")))?;
    Ok(sock)
}

/// The Rust side of `socket_connect()`.
///
/// # Safety
/// `addr` is a valid `SocketAddress`.
pub unsafe fn connect(addr: *const sys::SocketAddress) -> Result<OwnedFd> {
    // SAFETY: caller's contract; the tag selects the union member.
    unsafe {
        match (*addr).type_ {
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET => inet_connect(&(*addr).u.inet),
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX => unix_connect(&(*addr).u.q_unix),
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK => vsock_connect(&(*addr).u.vsock),
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD => fd_from_str(&text((*addr).u.fd.str_)),
            t => Err(ErrorImpl::new(format!(
                "socket address type {t} unsupported"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        address::{testing::*, *},
        util::testing::isolated,
    };

    #[test]
    fn connect_refused_names_address() {
        if !isolated("address::connect::tests::connect_refused_names_address") {
            return;
        }
        // Find a free port, then connect to it once it is closed again.
        let a = parse_ok("127.0.0.1:0");
        // SAFETY: valid addresses.
        unsafe {
            let l = listen(a.0, 1).unwrap();
            let local = local_sockaddr(l.as_raw_fd()).unwrap().to_address().unwrap();
            drop(l);
            let u = uri(local.0);
            let before = open_fds();
            let e = connect(local.0).err().unwrap();
            assert_eq!(
                e.message(),
                format!("Failed to connect to '{}': Connection refused", &u[4..])
            );
            assert_eq!(open_fds(), before);
        }
    }
}
