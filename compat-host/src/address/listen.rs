//! Listening sockets: `socket_listen()` for inet (port ranges, dual
//! stack), unix (path and abstract), vsock and fd addresses.

use std::{
    ffi::{c_int, CStr, CString, OsStr},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
};

use nix::{
    errno::Errno,
    sys::{
        socket::{setsockopt, sockopt},
        stat::lstat,
    },
    unistd,
};

use super::{
    bind_fd, bytes, fd_from_str, listen_fd, new_socket,
    parse::{check_port, host_port},
    resolver::{ai_family, getaddrinfo},
    set_blocking, set_cloexec, set_keepalive,
    sockaddr::{gai_error, vsock_sockaddr},
    text, Result, SockAddr,
};
use crate::{error::ErrorImpl, sys};

fn parse_port(port: &str) -> Result<u16> {
    if port.is_empty() {
        return Err(ErrorImpl::new("port not specified"));
    }
    check_port(port.as_bytes())?;
    let n: u64 = port
        .parse()
        .map_err(|_| ErrorImpl::new(format!("can't convert to a number: {port}")))?;
    u16::try_from(n).map_err(|_| ErrorImpl::new(format!("port {port} out of range")))
}

fn inet_listen(a: &sys::InetSocketAddress, num: c_int) -> Result<OwnedFd> {
    if a.host.is_null() {
        return Err(ErrorImpl::new("host not specified"));
    }
    // SAFETY: the address owns NUL-terminated strings.
    let (host, port) = unsafe { (text(a.host), text(a.port)) };
    let family = ai_family(a)?;
    let first = parse_port(&port)?;
    let last = if a.has_to { a.to.max(first) } else { first };
    let what = if last > first {
        format!("{}-{last}", host_port(&host, &port))
    } else {
        host_port(&host, &port)
    };
    let flags = libc::AI_PASSIVE | libc::AI_NUMERICHOST | libc::AI_NUMERICSERV;
    let host_opt = (!host.is_empty()).then_some(host.as_str());
    let mut cands =
        getaddrinfo(host_opt, Some(&first.to_string()), family, flags).map_err(|rc| {
            if rc == libc::EAI_NONAME && host_opt.is_some() {
                ErrorImpl::new(format!(
                "Failed to listen on {what}: '{host}' is not a numeric address (resolve it first)"
            ))
            } else {
                ErrorImpl::new(format!(
                    "address resolution failed for {}: {}",
                    host_port(&host, &port),
                    gai_error(rc)
                ))
            }
        })?;
    // An empty host that is not limited to one family asks for both: one
    // IPv6 socket that also accepts IPv4 when the system has IPv6, else
    // IPv4.  Any other IPv6 socket is IPv6-only, so that separate IPv4
    // and IPv6 listeners can share a port.
    let dual = host.is_empty() && family == libc::AF_UNSPEC;
    if dual {
        cands.sort_by_key(|c| c.family != libc::AF_INET6);
    }
    let proto_override = (a.has_mptcp && a.mptcp).then_some(libc::IPPROTO_MPTCP);
    let mut last_err = None;
    for cand in &cands {
        let mut sa = cand.addr;
        for p in first..=last {
            sa.set_port(p);
            let sock = match new_socket(
                cand.family,
                libc::SOCK_STREAM,
                proto_override.unwrap_or(cand.protocol),
            ) {
                Ok(s) => s,
                Err(e) => {
                    last_err = Some(ErrorImpl::with_errno(
                        e,
                        format!("Failed to create socket for {what}"),
                    ));
                    break;
                }
            };
            let fd = sock.as_fd();
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| {
                ErrorImpl::with_errno(e as c_int, format!("Failed to set SO_REUSEADDR for {what}"))
            })?;
            if cand.family == libc::AF_INET6 {
                setsockopt(&fd, sockopt::Ipv6V6Only, &!dual).map_err(|e| {
                    ErrorImpl::with_errno(
                        e as c_int,
                        format!("Failed to set IPV6_V6ONLY for {what}"),
                    )
                })?;
            }
            let shown = host_port(&host, &p.to_string());
            match bind_fd(fd, &sa) {
                Ok(()) => {}
                Err(e) if e == libc::EADDRINUSE => {
                    last_err = Some(ErrorImpl::with_errno(
                        e,
                        format!("Failed to bind socket to {what}"),
                    ));
                    continue;
                }
                Err(e) => {
                    return Err(ErrorImpl::with_errno(
                        e,
                        format!("Failed to bind socket to {shown}"),
                    ))
                }
            }
            match listen_fd(fd, num) {
                Ok(()) => {}
                Err(e) if e == libc::EADDRINUSE => {
                    last_err = Some(ErrorImpl::with_errno(
                        e,
                        format!("Failed to listen on {what}"),
                    ));
                    continue;
                }
                Err(e) => {
                    return Err(ErrorImpl::with_errno(
                        e,
                        format!("Failed to listen on socket bound to {shown}"),
                    ))
                }
            }
            set_keepalive(fd, a, &shown)?;
            return Ok(sock);
        }
    }
    Err(last_err.unwrap_or_else(|| ErrorImpl::new(format!("Failed to create a socket for {what}"))))
}

const SUN_PATH_LEN: usize = 108;

fn lstat_is_socket(path: &CStr) -> Option<bool> {
    let st = lstat(path).ok()?;
    Some(st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

fn unlink(path: &CStr) -> std::result::Result<(), c_int> {
    match unistd::unlink(path) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e as c_int),
    }
}

/// A fresh, unused path for a socket in the temporary directory.
fn temp_socket_path() -> Result<Vec<u8>> {
    // SAFETY: g_get_tmp_dir returns a string GLib keeps alive.
    let dir = unsafe { bytes(sys::g_get_tmp_dir()) };
    let templ = [dir, b"/qemu-socket-XXXXXX"].concat();
    let (fd, path) = unistd::mkstemp(OsStr::from_bytes(&templ)).map_err(|e| {
        ErrorImpl::with_errno(
            e as c_int,
            format!(
                "Failed to make a temporary socket {}",
                String::from_utf8_lossy(&templ)
            ),
        )
    })?;
    drop(fd);
    let path = CString::new(path.into_os_string().into_vec()).unwrap_or_default();
    // bind() needs the name free: the file only reserved a unique name.
    unlink(&path).map_err(|e| {
        ErrorImpl::with_errno(
            e,
            format!("Failed to unlink socket {}", path.to_string_lossy()),
        )
    })?;
    Ok(path.into_bytes())
}

fn unix_listen(a: &sys::UnixSocketAddress, num: c_int) -> Result<OwnedFd> {
    let abstract_ = a.has_abstract && a.abstract_;
    let tight = !a.has_tight || a.tight;
    // SAFETY: the address owns a NUL-terminated path (or NULL).
    let mut path: Vec<u8> = unsafe { bytes(a.path) }.to_vec();
    let sock = new_socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)
        .map_err(|e| ErrorImpl::with_errno(e, "Failed to create Unix socket"))?;
    if path.is_empty() && !abstract_ {
        path = temp_socket_path()?;
    }
    let shown = String::from_utf8_lossy(&path).into_owned();
    let too_long = || ErrorImpl::new(format!("UNIX socket path '{shown}' is too long"));
    if path.len() > SUN_PATH_LEN || (abstract_ && path.len() > SUN_PATH_LEN - 1) {
        return Err(too_long());
    }
    let sa = SockAddr::unix(&path, abstract_, tight).ok_or_else(too_long)?;
    let cpath = CString::new(path)
        .map_err(|_| ErrorImpl::new(format!("invalid UNIX socket path '{shown}'")))?;
    if !abstract_ && lstat_is_socket(&cpath) == Some(true) {
        // A socket file left by an earlier listener; anything else that
        // is not a socket stays, and bind() reports the conflict.
        unlink(&cpath)
            .map_err(|e| ErrorImpl::with_errno(e, format!("Failed to unlink socket {shown}")))?;
    }
    bind_fd(sock.as_fd(), &sa)
        .map_err(|e| ErrorImpl::with_errno(e, format!("Failed to bind socket to {shown}")))?;
    if let Err(e) = listen_fd(sock.as_fd(), num) {
        if !abstract_ {
            let _ = unlink(&cpath);
        }
        return Err(ErrorImpl::with_errno(
            e,
            format!("Failed to listen on socket bound to {shown}"),
        ));
    }
    Ok(sock)
}

fn vsock_listen(a: &sys::VsockSocketAddress, num: c_int) -> Result<OwnedFd> {
    let (sa, what) = vsock_sockaddr(a)?;
    let sock = new_socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0)
        .map_err(|e| ErrorImpl::with_errno(e, format!("Failed to create socket for {what}")))?;
    bind_fd(sock.as_fd(), &sa)
        .map_err(|e| ErrorImpl::with_errno(e, format!("Failed to bind socket to {what}")))?;
    listen_fd(sock.as_fd(), num).map_err(|e| {
        ErrorImpl::with_errno(e, format!("Failed to listen on socket bound to {what}"))
    })?;
    Ok(sock)
}

/// The Rust side of `socket_listen()`.
///
/// # Safety
/// `addr` is a valid `SocketAddress`.
pub unsafe fn listen(addr: *const sys::SocketAddress, num: c_int) -> Result<OwnedFd> {
    // SAFETY: caller's contract; the tag selects the union member.
    unsafe {
        match (*addr).type_ {
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET => inet_listen(&(*addr).u.inet, num),
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX => unix_listen(&(*addr).u.q_unix, num),
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK => vsock_listen(&(*addr).u.vsock, num),
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD => {
                let s = text((*addr).u.fd.str_);
                let sock = fd_from_str(&s)?;
                let fail = |e| ErrorImpl::with_errno(e, format!("Failed to listen on fd:{s}"));
                set_cloexec(sock.as_fd()).map_err(fail)?;
                set_blocking(sock.as_raw_fd(), true)?;
                // Also updates the backlog of a socket already listening.
                listen_fd(sock.as_fd(), num).map_err(fail)?;
                Ok(sock)
            }
            t => Err(ErrorImpl::new(format!(
                "socket address type {t} unsupported"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;
    use crate::{
        address::{testing::*, *},
        util::testing::isolated,
    };

    #[test]
    fn listen_connect_inet() {
        let a = parse_ok("127.0.0.1:0");
        // SAFETY: valid addresses; descriptors are owned.
        unsafe {
            let l = listen(a.0, 5).unwrap();
            let local = local_sockaddr(l.as_raw_fd()).unwrap().to_address().unwrap();
            let u = uri(local.0);
            assert!(u.starts_with("tcp:127.0.0.1:") && !u.ends_with(":0"), "{u}");
            let flags = libc::fcntl(l.as_raw_fd(), libc::F_GETFD);
            assert!(flags & libc::FD_CLOEXEC != 0);
            let c = connect(local.0).unwrap();
            let peer = remote_sockaddr(c.as_raw_fd())
                .unwrap()
                .to_address()
                .unwrap();
            assert_eq!(uri(peer.0), u);

            // The same port again is in use.
            let msg = listen_err(&u);
            assert_eq!(
                msg,
                format!(
                    "Failed to bind socket to {}: Address already in use",
                    &u[4..]
                )
            );

            // A range skips the port in use.
            let port: u16 = u.rsplit(':').next().unwrap().parse().unwrap();
            if port < 65535 {
                let r = parse_ok(&format!("127.0.0.1:{port},to={}", port + 1));
                match listen(r.0, 1) {
                    Ok(l2) => {
                        let p2 = local_sockaddr(l2.as_raw_fd())
                            .unwrap()
                            .to_address()
                            .unwrap();
                        assert_eq!(uri(p2.0), format!("tcp:127.0.0.1:{}", port + 1));
                    }
                    Err(e) => assert!(e.message().contains("Address already in use")),
                }
            }
        }
    }

    #[test]
    fn listen_v4_and_v6_separately() {
        let a = parse_ok("127.0.0.1:0");
        // SAFETY: valid addresses; descriptors are owned.
        unsafe {
            let l4 = listen(a.0, 5).unwrap();
            let port = local_sockaddr(l4.as_raw_fd())
                .unwrap()
                .to_address()
                .unwrap();
            let p = text((*port.0).u.inet.port);
            let v6 = parse_ok(&format!("[::]:{p}"));
            match listen(v6.0, 5) {
                Ok(l6) => {
                    let v = nix::sys::socket::getsockopt(&l6, sockopt::Ipv6V6Only);
                    assert_eq!(v, Ok(true), "IPv6 listeners are v6-only");
                }
                // Hosts without IPv6.
                Err(e) => assert!(
                    e.message().contains("Address family not supported"),
                    "{}",
                    e.message()
                ),
            }
        }
    }

    #[test]
    fn listen_errors_leak_no_fds() {
        if !isolated("address::listen::tests::listen_errors_leak_no_fds") {
            return;
        }
        let before = open_fds();
        let m = listen_err("example.invalid:80");
        assert!(m.contains("is not a numeric address"), "{m}");
        assert_eq!(listen_err("127.0.0.1:x"), "can't convert to a number: x");
        assert_eq!(
            listen_err("127.0.0.1:1,ipv4=off,ipv6=off"),
            "Cannot disable IPv4 and IPv6 at same time"
        );
        let unix_err = listen_err("unix:/nonexistent-dir-qemucompat/x.sock");
        assert_eq!(unix_err, "Failed to bind socket to /nonexistent-dir-qemucompat/x.sock: No such file or directory");
        let long = format!("unix:/tmp/{}", "x".repeat(120));
        assert_eq!(
            listen_err(&long),
            format!("UNIX socket path '{}' is too long", &long[5..])
        );
        assert_eq!(
            listen_err("fd:999999"),
            "File descriptor '999999' is not a socket"
        );
        assert_eq!(
            listen_err("fd:abc"),
            "Unable to parse FD number abc: Invalid argument"
        );
        let vsock_err = listen_err("vsock:x:1");
        assert_eq!(vsock_err, "Failed to parse cid 'x'");
        assert_eq!(open_fds(), before);
    }

    #[test]
    fn fd_listen() {
        // Checks that an fd is closed: another test thread could reuse its
        // number meanwhile.
        if !isolated("address::listen::tests::fd_listen") {
            return;
        }
        // SAFETY: a fresh socket we hand over to listen().
        unsafe {
            let s = new_socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
            let raw = s.into_raw_fd();
            let a = parse_ok(&format!("fd:{raw}"));
            let l = listen(a.0, 3).unwrap();
            assert_eq!(l.as_raw_fd(), raw);
            // A regular file is refused and, as in QEMU, closed.
            let f = std::fs::File::open("/proc/self/stat")
                .unwrap()
                .into_raw_fd();
            assert_eq!(
                listen_err(&format!("fd:{f}")),
                format!("File descriptor '{f}' is not a socket")
            );
            assert!(libc::fcntl(f, libc::F_GETFD) < 0);
        }
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("qemucompat-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn unix_listen_paths() {
        let d = tmpdir("addr");
        let p = d.join("s.sock");
        let s = format!("unix:{}", p.display());
        let a = parse_ok(&s);
        // SAFETY: valid addresses; descriptors are owned.
        unsafe {
            let l = listen(a.0, 5).unwrap();
            let local = local_sockaddr(l.as_raw_fd()).unwrap().to_address().unwrap();
            assert_eq!(uri(local.0), s);
            let c = connect(a.0).unwrap();
            drop((c, l));
            // A stale socket file is replaced.
            drop(listen(a.0, 5).unwrap());
            // A regular file is not.
            std::fs::remove_file(&p).unwrap();
            std::fs::write(&p, b"data").unwrap();
            assert_eq!(
                listen_err(&s),
                format!(
                    "Failed to bind socket to {}: Address already in use",
                    p.display()
                )
            );
            assert_eq!(std::fs::read(&p).unwrap(), b"data");

            // An empty path gets a fresh temporary one.
            let unnamed = parse_ok("unix:,abstract=off");
            let ul = listen(unnamed.0, 5).unwrap();
            let ulocal = local_sockaddr(ul.as_raw_fd())
                .unwrap()
                .to_address()
                .unwrap();
            let path = text((*ulocal.0).u.q_unix.path);
            assert!(path.contains("qemu-socket-"), "{path}");
            drop(ul);
            let _ = std::fs::remove_file(path);

            // Abstract, tight and not.
            let name = format!("qemucompat-test-{}", std::process::id());
            for tight in ["", ",tight=off"] {
                let abs_uri = format!("unix:{name},abstract=on{tight}");
                let abs = parse_ok(&abs_uri);
                let al = listen(abs.0, 5).unwrap();
                let alocal = local_sockaddr(al.as_raw_fd())
                    .unwrap()
                    .to_address()
                    .unwrap();
                assert_eq!(uri(alocal.0), abs_uri);
                drop(connect(abs.0).unwrap());
            }
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    /// Found by the `open_sync` fuzz target: a unix path or abstract name
    /// that is not UTF-8 was bound as its lossy text ("\xff" became
    /// "\u{fffd}") and reported so.  Bytes are kept when binding,
    /// connecting and in the local address.
    #[test]
    fn unix_names_that_are_not_utf8() {
        let d = tmpdir("bytes");
        let mut path = d.as_os_str().as_bytes().to_vec();
        path.extend_from_slice(b"/\xff\xfe.sock");
        let name = format!("qemucompat-test-{}-", std::process::id()).into_bytes();
        for (spec, want, abstract_) in [
            ([b"unix:", &path[..]].concat(), path.clone(), false),
            (
                [b"unix:", &name[..], b"\xc3,abstract=on"].concat(),
                [&name[..], b"\xc3"].concat(),
                true,
            ),
        ] {
            let a = parse::parse(&spec).unwrap();
            // SAFETY: valid addresses; descriptors are owned.
            unsafe {
                let l = listen(a.0, 5).unwrap();
                let local = local_sockaddr(l.as_raw_fd()).unwrap().to_address().unwrap();
                assert_eq!(bytes((*local.0).u.q_unix.path), &want[..]);
                assert_eq!((*local.0).u.q_unix.abstract_, abstract_);
                drop(connect(a.0).unwrap());
            }
            if !abstract_ {
                assert!(lstat_is_socket(&CString::new(want).unwrap()) == Some(true));
            }
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn vsock_is_clear() {
        if !isolated("address::listen::tests::vsock_is_clear") {
            return;
        }
        let a = parse_ok("vsock:1:12345");
        let before = open_fds();
        // SAFETY: a valid address.
        match unsafe { listen(a.0, 1) } {
            Ok(_) => {}
            Err(e) => assert!(
                e.message().starts_with("Failed to ") && e.message().contains("vsock:1:12345: "),
                "{}",
                e.message()
            ),
        }
        assert_eq!(open_fds(), before);
    }
}
