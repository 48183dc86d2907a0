//! QEMU's address syntax: `socket_parse()` and `socket_uri()`.
//!
//! Both work on bytes, as QEMU's C does: a path or name that is not UTF-8
//! is kept byte for byte (Linux paths are bytes); only error messages
//! show it lossily.

use std::{borrow::Cow, ffi::c_char, ptr};

use super::{bytes, new_address, AddrBox, Result};
use crate::{
    error::{ok_or_set, ErrorImpl},
    sys,
    util::g_strdup_bytes,
};

/// Bytes for an error message.
fn shown(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

fn parse_bool(key: &str, v: &[u8]) -> Result<bool> {
    match v {
        b"on" | b"yes" | b"true" | b"y" => Ok(true),
        b"off" | b"no" | b"false" | b"n" => Ok(false),
        _ => Err(ErrorImpl::new(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

fn parse_u32(key: &str, v: &[u8]) -> Result<u32> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ErrorImpl::new(format!("Parameter '{key}' expects a number")))
}

/// Splits "key=value" / "key" / "nokey" into a key and a value; a bare
/// key means "on", as in QEMU's option syntax.
fn split_opt<'a>(opt: &'a [u8], bool_keys: &[&str]) -> (&'a [u8], &'a [u8]) {
    match opt.iter().position(|&b| b == b'=') {
        Some(i) => (&opt[..i], &opt[i + 1..]),
        None => match opt.strip_prefix(b"no") {
            Some(k) if bool_keys.iter().any(|b| b.as_bytes() == k) => (k, b"off"),
            _ => (opt, b"on"),
        },
    }
}

fn split_commas(s: &[u8]) -> Vec<&[u8]> {
    s.split(|&b| b == b',').collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// QEMU's `inet_parse()`: "HOST:PORT" or "[V6]:PORT", then options.
/// Returns the address with NULL strings plus the host and port.
fn parse_inet(s: &[u8]) -> Result<(sys::InetSocketAddress, Vec<u8>, Vec<u8>)> {
    let segs = split_commas(s);
    let addr_str = segs[0];
    if addr_str.is_empty() {
        return Err(ErrorImpl::new("error parsing address ''"));
    }
    let (host, port) = if addr_str.starts_with(b"[") {
        match find(addr_str, b"]:") {
            Some(end) if end >= 2 && addr_str.len() - end >= 3 => {
                (&addr_str[1..end], &addr_str[end + 2..])
            }
            _ => {
                return Err(ErrorImpl::new(format!(
                    "error parsing IPv6 address '{}'",
                    shown(addr_str)
                )))
            }
        }
    } else {
        match addr_str.iter().position(|&b| b == b':') {
            Some(i) if i + 1 < addr_str.len() => (&addr_str[..i], &addr_str[i + 1..]),
            _ => {
                return Err(ErrorImpl::new(format!(
                    "error parsing address '{}'",
                    shown(addr_str)
                )))
            }
        }
    };
    let mut a = sys::InetSocketAddress::default();
    const BOOLS: [&str; 5] = ["numeric", "ipv4", "ipv6", "keep-alive", "mptcp"];
    for opt in &segs[1..] {
        let (k, v) = split_opt(opt, &BOOLS);
        let k = std::str::from_utf8(k).unwrap_or("");
        match k {
            "numeric" => (a.has_numeric, a.numeric) = (true, parse_bool(k, v)?),
            "ipv4" => (a.has_ipv4, a.ipv4) = (true, parse_bool(k, v)?),
            "ipv6" => (a.has_ipv6, a.ipv6) = (true, parse_bool(k, v)?),
            "keep-alive" => (a.has_keep_alive, a.keep_alive) = (true, parse_bool(k, v)?),
            "mptcp" => (a.has_mptcp, a.mptcp) = (true, parse_bool(k, v)?),
            "to" => {
                let to = parse_u32(k, v)?;
                a.to = u16::try_from(to)
                    .map_err(|_| ErrorImpl::new(format!("port {to} out of range")))?;
                a.has_to = true;
            }
            "keep-alive-count" => {
                (a.has_keep_alive_count, a.keep_alive_count) = (true, parse_u32(k, v)?)
            }
            "keep-alive-idle" => {
                (a.has_keep_alive_idle, a.keep_alive_idle) = (true, parse_u32(k, v)?)
            }
            "keep-alive-interval" => {
                (a.has_keep_alive_interval, a.keep_alive_interval) = (true, parse_u32(k, v)?)
            }
            _ => {
                let (raw, _) = split_opt(opt, &BOOLS);
                return Err(ErrorImpl::new(format!(
                    "Invalid parameter '{}'",
                    shown(raw)
                )));
            }
        }
    }
    check_port(port)?;
    Ok((a, host.to_vec(), port.to_vec()))
}

/// Rejects a numeric port above 65535, which `getaddrinfo()` would silently
/// take modulo 65536 ("99999" is port 34463), with the message QEMU's
/// `inet_listen_saddr()` gives for its own range check.  Service names
/// ("http") are left to `getaddrinfo()`, which fails on unknown ones.
pub(super) fn check_port(port: &[u8]) -> Result<()> {
    // getaddrinfo() parses numeric services with strtoul(): leading
    // blanks (C's isspace(), vertical tab included) and a '+' are
    // accepted there too.
    let blank = |b: &u8| b" \t\n\x0b\x0c\r".contains(b);
    let t = &port[port.iter().position(|b| !blank(b)).unwrap_or(port.len())..];
    let digits = t.strip_prefix(b"+").unwrap_or(t);
    if !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(digits).map_or(true, |d| d.parse::<u16>().is_err())
    {
        return Err(ErrorImpl::new(format!("port {} out of range", shown(port))));
    }
    Ok(())
}

/// "PATH[,abstract=on|off][,tight=on|off]": only trailing segments that
/// are valid unix options count as options, so paths may contain commas.
fn parse_unix(s: &[u8]) -> Result<(sys::UnixSocketAddress, Vec<u8>)> {
    if s.is_empty() {
        return Err(ErrorImpl::new("invalid Unix socket address"));
    }
    const BOOLS: [&str; 2] = ["abstract", "tight"];
    let is_opt = |seg: &[u8]| {
        let (k, v) = split_opt(seg, &BOOLS);
        BOOLS.iter().any(|b| b.as_bytes() == k) && parse_bool("", v).is_ok()
    };
    let segs = split_commas(s);
    let mut first_opt = segs.len();
    while first_opt > 1 && is_opt(segs[first_opt - 1]) {
        first_opt -= 1;
    }
    let mut a = sys::UnixSocketAddress::default();
    for opt in &segs[first_opt..] {
        let (k, v) = split_opt(opt, &BOOLS);
        let b = parse_bool("", v)?;
        if k == b"abstract" {
            (a.has_abstract, a.abstract_) = (true, b);
        } else {
            (a.has_tight, a.tight) = (true, b);
        }
    }
    Ok((a, segs[..first_opt].join(&b',')))
}

/// QEMU's `vsock_parse()`: "CID:PORT", each at most 32 characters.
fn parse_vsock(s: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let err = || ErrorImpl::new(format!("error parsing address '{}'", shown(s)));
    let colon = s.iter().position(|&b| b == b':').ok_or_else(err)?;
    let (cid, rest) = (&s[..colon], &s[colon + 1..]);
    let port_end = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
    let port = &rest[..port_end];
    if cid.is_empty() || port.is_empty() {
        return Err(err());
    }
    if cid.len() > 32 || port.len() > 32 || port_end != rest.len() {
        return Err(ErrorImpl::new(format!(
            "trailing characters in address '{}'",
            shown(s)
        )));
    }
    Ok((cid.to_vec(), port.to_vec()))
}

pub(super) fn parse(s: &[u8]) -> Result<AddrBox> {
    if let Some(rest) = s.strip_prefix(b"unix:") {
        let (u, path) = parse_unix(rest)?;
        let a = AddrBox(new_address(sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX));
        // SAFETY: a fresh unix address that we own.
        unsafe {
            (*a.0).u.q_unix = u;
            (*a.0).u.q_unix.path = g_strdup_bytes(&path);
        }
        Ok(a)
    } else if let Some(rest) = s.strip_prefix(b"fd:") {
        if rest.is_empty() {
            return Err(ErrorImpl::new("invalid file descriptor address"));
        }
        let a = AddrBox(new_address(sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD));
        // SAFETY: a fresh fd address that we own.
        unsafe {
            (*a.0).u.fd.str_ = g_strdup_bytes(rest);
        }
        Ok(a)
    } else if let Some(rest) = s.strip_prefix(b"vsock:") {
        let (cid, port) = parse_vsock(rest)?;
        let a = AddrBox(new_address(
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK,
        ));
        // SAFETY: a fresh vsock address that we own.
        unsafe {
            (*a.0).u.vsock.cid = g_strdup_bytes(&cid);
            (*a.0).u.vsock.port = g_strdup_bytes(&port);
        }
        Ok(a)
    } else {
        let (inet, host, port) = parse_inet(s.strip_prefix(b"tcp:").unwrap_or(s))?;
        let a = AddrBox(new_address(sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET));
        // SAFETY: a fresh inet address that we own.
        unsafe {
            (*a.0).u.inet = inet;
            (*a.0).u.inet.host = g_strdup_bytes(&host);
            (*a.0).u.inet.port = g_strdup_bytes(&port);
        }
        Ok(a)
    }
}

/// # Safety
/// `str_` is a NUL-terminated string; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn socket_parse(
    str_: *const c_char,
    errp: *mut *mut sys::Error,
) -> *mut sys::SocketAddress {
    // SAFETY: caller's contract.
    let s = unsafe { bytes(str_) };
    // SAFETY: caller's contract.
    unsafe { ok_or_set(parse(s).map(AddrBox::into_raw), errp) }.unwrap_or(ptr::null_mut())
}

/// "HOST:PORT", with brackets around an IPv6 host.
pub(super) fn host_port(host: &str, port: &str) -> String {
    String::from_utf8_lossy(&host_port_bytes(host.as_bytes(), port.as_bytes())).into_owned()
}

fn host_port_bytes(host: &[u8], port: &[u8]) -> Vec<u8> {
    // A host that starts with '[' needs them too, or it would be taken
    // for an IPv6 literal when parsed back.
    if host.contains(&b':') || host.starts_with(b"[") {
        [b"[", host, b"]:", port].concat()
    } else {
        [host, b":", port].concat()
    }
}

/// The text of `addr` in `socket_parse()` syntax, byte for byte.  Like
/// QEMU's `socket_uri()` it leaves out inet flags (ipv4, ipv6, numeric,
/// keep-alive), but it keeps what changes the meaning: the port range and
/// abstract/tight.
///
/// # Safety
/// `addr` is a valid `SocketAddress`.
pub unsafe fn uri_bytes(addr: *const sys::SocketAddress) -> Vec<u8> {
    // SAFETY: caller's contract; the tag selects the union member.
    unsafe {
        match (*addr).type_ {
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET => {
                let i = &(*addr).u.inet;
                let mut s = b"tcp:".to_vec();
                s.extend(host_port_bytes(bytes(i.host), bytes(i.port)));
                if i.has_to {
                    s.extend(format!(",to={}", i.to).bytes());
                }
                s
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX => {
                let u = &(*addr).u.q_unix;
                let mut s = [b"unix:", bytes(u.path)].concat();
                if u.has_abstract && u.abstract_ {
                    s.extend_from_slice(b",abstract=on");
                    if u.has_tight && !u.tight {
                        s.extend_from_slice(b",tight=off");
                    }
                } else if bytes(u.path).is_empty() {
                    // "unix:" alone does not parse; an empty path (a
                    // temporary socket when listening) needs an option.
                    s.extend_from_slice(b",abstract=off");
                }
                s
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD => {
                [b"fd:", bytes((*addr).u.fd.str_)].concat()
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK => {
                let v = &(*addr).u.vsock;
                [b"vsock:", bytes(v.cid), b":", bytes(v.port)].concat()
            }
            _ => b"unknown address type".to_vec(),
        }
    }
}

/// [`uri_bytes`] as text (lossy), for tests.
///
/// # Safety
/// `addr` is a valid `SocketAddress`.
#[cfg(test)]
pub unsafe fn uri(addr: *const sys::SocketAddress) -> String {
    // SAFETY: caller's contract.
    String::from_utf8_lossy(&unsafe { uri_bytes(addr) }).into_owned()
}

/// # Safety
/// `addr` is a valid `SocketAddress`.
#[no_mangle]
pub unsafe extern "C" fn socket_uri(addr: *mut sys::SocketAddress) -> *mut c_char {
    // SAFETY: caller's contract.
    g_strdup_bytes(&unsafe { uri_bytes(addr) })
}
#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::{
        address::{testing::*, *},
        util::{g_strdup, testing::isolated},
    };

    fn parse_err(s: &str) -> String {
        match parse(s.as_bytes()) {
            // SAFETY: a valid address.
            Ok(a) => panic!("{s} parsed as {}", unsafe { uri(a.0) }),
            Err(e) => e.message().to_owned(),
        }
    }

    #[test]
    fn parse_and_uri_round_trip() {
        for s in [
            "tcp:127.0.0.1:5000",
            "tcp:[::1]:5000",
            "tcp:localhost:80,to=90",
            "tcp::0",
            "unix:/tmp/x.sock",
            "unix:/tmp/a,b.sock",
            "unix:name,abstract=on",
            "unix:name,abstract=on,tight=off",
            "fd:3",
            "fd:monitor-name",
            "vsock:2:1234",
            // Found by the socket_parse fuzz target: "unix:,tight=off"
            // parsed, but its socket_uri() "unix:" did not.
            "unix:,abstract=off",
            "unix:,abstract=on",
            // Found by the fuzz target too: the host "[x" was written
            // without brackets, which does not parse back.
            "tcp:[[x]:5001",
        ] {
            let a = parse_ok(s);
            // SAFETY: a valid address.
            assert_eq!(unsafe { uri(a.0) }, s);
            // SAFETY: as above; the copy is freed by its box.
            let c = AddrBox(unsafe { clone_address(a.0) });
            // SAFETY: as above.
            assert_eq!(unsafe { uri(c.0) }, s);
        }
        // SAFETY: valid addresses for the whole block.
        unsafe {
            let a = parse_ok(
                "10.0.0.1:22,ipv4=on,ipv6=off,numeric,keep-alive=on,keep-alive-count=3,to=30",
            );
            let i = &(*a.0).u.inet;
            assert_eq!(
                (*a.0).type_,
                sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET
            );
            assert_eq!(text(i.host), "10.0.0.1");
            assert_eq!(text(i.port), "22");
            assert!(i.has_ipv4 && i.ipv4 && i.has_ipv6 && !i.ipv6 && i.has_numeric && i.numeric);
            assert!(
                i.has_keep_alive
                    && i.keep_alive
                    && i.has_keep_alive_count
                    && i.keep_alive_count == 3
            );
            assert!(i.has_to && i.to == 30);
            let u = parse_ok("unix:@x,abstract=on");
            assert!((*u.0).u.q_unix.abstract_ && !(*u.0).u.q_unix.has_tight);
            assert_eq!(text((*u.0).u.q_unix.path), "@x");
        }
    }

    #[test]
    fn empty_unix_path_round_trips() {
        let a = parse_ok("unix:,tight=off");
        // SAFETY: a valid address.
        let u = unsafe { uri(a.0) };
        assert_eq!(u, "unix:,abstract=off");
        // SAFETY: as above.
        assert_eq!(unsafe { uri(parse_ok(&u).0) }, u);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse_err(""), "error parsing address ''");
        assert_eq!(parse_err("tcp:"), "error parsing address ''");
        assert_eq!(parse_err("localhost"), "error parsing address 'localhost'");
        assert_eq!(
            parse_err("localhost:"),
            "error parsing address 'localhost:'"
        );
        assert_eq!(parse_err("[::1]"), "error parsing IPv6 address '[::1]'");
        assert_eq!(parse_err("[]:80"), "error parsing IPv6 address '[]:80'");
        assert_eq!(parse_err("[::1]:"), "error parsing IPv6 address '[::1]:'");
        assert_eq!(parse_err("h:1,bogus=1"), "Invalid parameter 'bogus'");
        assert_eq!(
            parse_err("h:1,ipv4=maybe"),
            "Parameter 'ipv4' expects 'on' or 'off'"
        );
        assert_eq!(parse_err("h:1,to=x"), "Parameter 'to' expects a number");
        assert_eq!(parse_err("h:1,to=70000"), "port 70000 out of range");
        assert_eq!(parse_err("unix:"), "invalid Unix socket address");
        assert_eq!(parse_err("fd:"), "invalid file descriptor address");
        assert_eq!(parse_err("vsock:2"), "error parsing address '2'");
        assert_eq!(
            parse_err("vsock:2:3,x"),
            "trailing characters in address '2:3,x'"
        );
    }

    /// Found by the `socket_parse` fuzz target: strings were read lossily,
    /// so "fd:\xed" gave the name "\u{fffd}" and a unix path that is not
    /// UTF-8 named another file.  Bytes are kept, both ways.
    #[test]
    fn bytes_that_are_not_utf8_are_kept() {
        for (input, want) in [
            (&b"fd:\xed"[..], &b"\xed"[..]),
            (b"unix:/tmp/\xff\xfe.sock", b"/tmp/\xff\xfe.sock"),
            (b"unix:\xc3,abstract=on", b"\xc3"),
            (b"vsock:\x80:1", b"\x80"),
            (b"[\xe2\x82]:80", b"\xe2\x82"),
        ] {
            let a = parse(input).unwrap();
            // SAFETY: a valid address; the tag selects the member.
            unsafe {
                let got = match (*a.0).type_ {
                    sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD => (*a.0).u.fd.str_,
                    sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX => (*a.0).u.q_unix.path,
                    sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK => (*a.0).u.vsock.cid,
                    _ => (*a.0).u.inet.host,
                };
                assert_eq!(bytes(got), want);
                let u = uri_bytes(a.0);
                let b = parse(&u).unwrap();
                assert_eq!(uri_bytes(b.0), u);
            }
        }
    }

    #[test]
    fn c_entry_points() {
        let mut err = ptr::null_mut();
        // SAFETY: valid strings and out parameters for the whole block.
        unsafe {
            let a = socket_parse(c"[::1]:80".as_ptr(), &mut err);
            assert!(!a.is_null() && err.is_null());
            let s = socket_uri(a);
            assert_eq!(CStr::from_ptr(s).to_str().unwrap(), "tcp:[::1]:80");
            sys::g_free(s.cast());
            qapi_free_SocketAddress(a);
            qapi_free_SocketAddress(ptr::null_mut());
            assert!(socket_parse(c"nope".as_ptr(), &mut err).is_null());
            assert!(!err.is_null());
            crate::error::error_free(err);
        }
    }

    /// An inet address with `port` put in by hand, as QEMU code that
    /// builds an `InetSocketAddress` does (no `socket_parse()` check).
    fn inet_with_port(port: &str) -> AddrBox {
        let a = parse_ok("127.0.0.1:0");
        // SAFETY: a is an inet address we own; its old port is freed.
        unsafe {
            let i = &mut (*a.0).u.inet;
            sys::g_free(i.port.cast());
            i.port = g_strdup(port);
        }
        a
    }

    fn resolve_err(a: &AddrBox) -> String {
        let (mut n, mut list, mut err) = (0, ptr::null_mut(), ptr::null_mut());
        let r = qio_dns_resolver_get_instance();
        // SAFETY: a valid address and out parameters.
        unsafe {
            assert_eq!(
                qio_dns_resolver_lookup_sync(r, a.0, &mut n, &mut list, &mut err),
                -1
            );
            assert!(n == 0 && list.is_null());
            crate::error::from_raw(err).unwrap().message().to_owned()
        }
    }

    #[test]
    fn out_of_range_ports_are_rejected() {
        if !isolated("address::parse::tests::out_of_range_ports_are_rejected") {
            return;
        }
        assert_eq!(parse_err("127.0.0.1:99999"), "port 99999 out of range");
        assert_eq!(parse_err("tcp:[::1]:65536"), "port 65536 out of range");
        assert_eq!(parse_err("localhost:+70000"), "port +70000 out of range");
        assert_eq!(
            parse_err("h:99999999999999999999999"),
            "port 99999999999999999999999 out of range"
        );
        for ok in ["127.0.0.1:65535", "h:00080", "h:http", "h:-1"] {
            parse_ok(ok);
        }
        let before = open_fds();
        // "\x0b": the bytes rewrite of check_port() had left the vertical
        // tab out of the blanks, and getaddrinfo() took "\x0b70000" as
        // port 4464.
        for port in ["99999", "65536", " 70000", "\x0b70000", "\t+70000"] {
            let a = inet_with_port(port);
            let want = format!("port {port} out of range");
            assert_eq!(resolve_err(&a), want);
            // SAFETY: a valid address.
            unsafe {
                assert_eq!(listen(a.0, 1).err().unwrap().message(), want);
                assert_eq!(connect(a.0).err().unwrap().message(), want);
            }
        }
        assert_eq!(open_fds(), before);
        // A service name that does not resolve fails in getaddrinfo().
        let a = inet_with_port("no-such-service");
        let msg = resolve_err(&a);
        assert!(
            msg.starts_with("address resolution failed for 127.0.0.1:no-such-service: "),
            "{msg}"
        );
        // SAFETY: a valid address.
        let connect_msg = unsafe { connect(a.0) }.err().unwrap().message().to_owned();
        assert!(
            connect_msg.contains("127.0.0.1:no-such-service"),
            "{connect_msg}"
        );
        // One that resolves gives its number.
        let http = inet_with_port("http");
        let (mut n, mut list, mut err) = (0, ptr::null_mut(), ptr::null_mut());
        // SAFETY: a valid address and out parameters.
        unsafe {
            let r = qio_dns_resolver_get_instance();
            assert_eq!(
                qio_dns_resolver_lookup_sync(r, http.0, &mut n, &mut list, &mut err),
                0
            );
            assert_eq!(n, 1);
            let x = AddrBox(*list);
            assert_eq!(uri(x.0), "tcp:127.0.0.1:80");
            sys::g_free(list.cast());
        }
    }
}
