//! QAPI `SocketAddress` and the socket helpers of qemu/sockets.h, plus the
//! DNS resolver of io/dns-resolver.h.
//!
//! Every string a `SocketAddress` owns is `g_malloc`ed, so C code may free
//! or replace it.  Sockets are created close-on-exec and held as `OwnedFd`
//! until handed to the caller, so no error path can leak one.  Error
//! messages name the address and end with the errno text, as QEMU's do.

use std::{
    ffi::{c_char, c_int, CStr, CString},
    mem::{size_of, zeroed},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
    ptr,
    sync::OnceLock,
};

use libc::{sockaddr_storage, socklen_t};

use crate::{
    error::{errno, ok_or_set, ErrorImpl, QError},
    sys,
    util::{cstr, g_strdup},
};

type Result<T> = std::result::Result<T, QError>;

// ---------------------------------------------------------------------------
// Allocation, copying and freeing

/// `g_strdup` of a C string that may be NULL.
///
/// # Safety
/// `p` is NULL or NUL-terminated.
unsafe fn dup(p: *const c_char) -> *mut c_char {
    // SAFETY: g_strdup accepts NULL and NUL-terminated strings.
    unsafe { sys::g_strdup(p) }
}

/// The text of a C string owned by an address (NULL reads as "").
///
/// # Safety
/// `p` is NULL or NUL-terminated.
unsafe fn text(p: *const c_char) -> String {
    // SAFETY: caller's contract.
    unsafe { cstr(p) }
        .map(|s| s.into_owned())
        .unwrap_or_default()
}

/// A zeroed, `g_malloc`ed SocketAddress of type `ty`.
fn new_address(ty: sys::SocketAddressType) -> *mut sys::SocketAddress {
    // SAFETY: g_malloc0 aborts rather than returning NULL; all-zero is a
    // valid SocketAddress (NULL strings, false flags).
    let a = unsafe { sys::g_malloc0(size_of::<sys::SocketAddress>()) }.cast::<sys::SocketAddress>();
    // SAFETY: a is a fresh allocation.
    unsafe { (*a).type_ = ty };
    a
}

/// A deep copy of `src` (every string duplicated).
///
/// # Safety
/// `src` is a valid SocketAddress.
pub(crate) unsafe fn clone_address(src: *const sys::SocketAddress) -> *mut sys::SocketAddress {
    // SAFETY: caller's contract; the union member read is the one the tag
    // selects, and the copy's strings are replaced by duplicates.
    unsafe {
        let dst = new_address((*src).type_);
        (*dst).u = (*src).u;
        match (*src).type_ {
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET => {
                (*dst).u.inet.host = dup((*src).u.inet.host);
                (*dst).u.inet.port = dup((*src).u.inet.port);
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX => {
                (*dst).u.q_unix.path = dup((*src).u.q_unix.path);
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK => {
                (*dst).u.vsock.cid = dup((*src).u.vsock.cid);
                (*dst).u.vsock.port = dup((*src).u.vsock.port);
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD => {
                (*dst).u.fd.str_ = dup((*src).u.fd.str_);
            }
            _ => {}
        }
        dst
    }
}

/// Frees the strings of an inet address (not the struct).
///
/// # Safety
/// The strings are NULL or `g_malloc`ed and not used afterwards.
unsafe fn free_inet_members(a: &mut sys::InetSocketAddress) {
    // SAFETY: caller's contract.
    unsafe {
        sys::g_free(a.host.cast());
        sys::g_free(a.port.cast());
    }
}

/// # Safety
/// `obj` is NULL or a `g_malloc`ed InetSocketAddress with owned strings.
#[no_mangle]
pub unsafe extern "C" fn qapi_free_InetSocketAddress(obj: *mut sys::InetSocketAddress) {
    if !obj.is_null() {
        // SAFETY: caller's contract: we own all of it.
        unsafe {
            free_inet_members(&mut *obj);
            sys::g_free(obj.cast());
        }
    }
}

/// # Safety
/// `obj` is NULL or a `g_malloc`ed UnixSocketAddress with an owned path.
#[no_mangle]
pub unsafe extern "C" fn qapi_free_UnixSocketAddress(obj: *mut sys::UnixSocketAddress) {
    if !obj.is_null() {
        // SAFETY: caller's contract: we own all of it.
        unsafe {
            sys::g_free((*obj).path.cast());
            sys::g_free(obj.cast());
        }
    }
}

/// # Safety
/// `obj` is NULL or a `g_malloc`ed VsockSocketAddress with owned strings.
#[no_mangle]
pub unsafe extern "C" fn qapi_free_VsockSocketAddress(obj: *mut sys::VsockSocketAddress) {
    if !obj.is_null() {
        // SAFETY: caller's contract: we own all of it.
        unsafe {
            sys::g_free((*obj).cid.cast());
            sys::g_free((*obj).port.cast());
            sys::g_free(obj.cast());
        }
    }
}

/// # Safety
/// `obj` is NULL or a `g_malloc`ed FdSocketAddress with an owned string.
#[no_mangle]
pub unsafe extern "C" fn qapi_free_FdSocketAddress(obj: *mut sys::FdSocketAddress) {
    if !obj.is_null() {
        // SAFETY: caller's contract: we own all of it.
        unsafe {
            sys::g_free((*obj).str_.cast());
            sys::g_free(obj.cast());
        }
    }
}

/// # Safety
/// `obj` is NULL or a `g_malloc`ed SocketAddress owning its strings.
#[no_mangle]
pub unsafe extern "C" fn qapi_free_SocketAddress(obj: *mut sys::SocketAddress) {
    if obj.is_null() {
        return;
    }
    // SAFETY: caller's contract; the tag selects the live union member.
    unsafe {
        match (*obj).type_ {
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET => {
                free_inet_members(&mut (*obj).u.inet)
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX => {
                sys::g_free((*obj).u.q_unix.path.cast())
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK => {
                sys::g_free((*obj).u.vsock.cid.cast());
                sys::g_free((*obj).u.vsock.port.cast());
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD => sys::g_free((*obj).u.fd.str_.cast()),
            _ => {}
        }
        sys::g_free(obj.cast());
    }
}

/// Owns a C SocketAddress until it is handed out, so error paths free it.
#[derive(Debug)]
pub(crate) struct AddrBox(pub(crate) *mut sys::SocketAddress);

impl AddrBox {
    pub(crate) fn into_raw(self) -> *mut sys::SocketAddress {
        let p = self.0;
        std::mem::forget(self);
        p
    }
}

impl Drop for AddrBox {
    fn drop(&mut self) {
        // SAFETY: we own the address.
        unsafe { qapi_free_SocketAddress(self.0) };
    }
}

// ---------------------------------------------------------------------------
// Parsing and printing

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(ErrorImpl::new(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

fn parse_u32(key: &str, v: &str) -> Result<u32> {
    v.parse()
        .map_err(|_| ErrorImpl::new(format!("Parameter '{key}' expects a number")))
}

/// Splits "key=value" / "key" / "nokey" into a key and a value; a bare
/// key means "on", as in QEMU's option syntax.
fn split_opt<'a>(opt: &'a str, bool_keys: &[&str]) -> (&'a str, &'a str) {
    match opt.split_once('=') {
        Some((k, v)) => (k, v),
        None => match opt.strip_prefix("no") {
            Some(k) if bool_keys.contains(&k) => (k, "off"),
            _ => (opt, "on"),
        },
    }
}

/// QEMU's inet_parse(): "HOST:PORT" or "[V6]:PORT", then options.
/// Returns the address with NULL strings plus the host and port.
fn parse_inet(s: &str) -> Result<(sys::InetSocketAddress, String, String)> {
    let mut parts = s.split(',');
    let addr_str = parts.next().unwrap_or("");
    if addr_str.is_empty() {
        return Err(ErrorImpl::new("error parsing address ''"));
    }
    let (host, port) = if addr_str.starts_with('[') {
        match addr_str.find("]:") {
            Some(end) if end >= 2 && addr_str.len() - end >= 3 => {
                (&addr_str[1..end], &addr_str[end + 2..])
            }
            _ => {
                return Err(ErrorImpl::new(format!(
                    "error parsing IPv6 address '{addr_str}'"
                )))
            }
        }
    } else {
        match addr_str.split_once(':') {
            Some((h, p)) if !p.is_empty() => (h, p),
            _ => {
                return Err(ErrorImpl::new(format!(
                    "error parsing address '{addr_str}'"
                )))
            }
        }
    };
    let mut a = sys::InetSocketAddress::default();
    const BOOLS: [&str; 5] = ["numeric", "ipv4", "ipv6", "keep-alive", "mptcp"];
    for opt in parts {
        let (k, v) = split_opt(opt, &BOOLS);
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
            _ => return Err(ErrorImpl::new(format!("Invalid parameter '{k}'"))),
        }
    }
    check_port(port)?;
    Ok((a, host.to_owned(), port.to_owned()))
}

/// Rejects a numeric port above 65535, which getaddrinfo() would silently
/// take modulo 65536 ("99999" is port 34463), with the message QEMU's
/// inet_listen_saddr() gives for its own range check.  Service names
/// ("http") are left to getaddrinfo(), which fails on unknown ones.
fn check_port(port: &str) -> Result<()> {
    // getaddrinfo() parses numeric services with strtoul(): leading
    // blanks and a '+' are accepted there too.
    let t = port.trim_start();
    let digits = t.strip_prefix('+').unwrap_or(t);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u16>().is_err()
    {
        return Err(ErrorImpl::new(format!("port {port} out of range")));
    }
    Ok(())
}

/// "PATH[,abstract=on|off][,tight=on|off]": only trailing segments that
/// are valid unix options count as options, so paths may contain commas.
fn parse_unix(s: &str) -> Result<(sys::UnixSocketAddress, String)> {
    if s.is_empty() {
        return Err(ErrorImpl::new("invalid Unix socket address"));
    }
    const BOOLS: [&str; 2] = ["abstract", "tight"];
    let segs: Vec<&str> = s.split(',').collect();
    let mut first_opt = segs.len();
    while first_opt > 1 {
        let (k, v) = split_opt(segs[first_opt - 1], &BOOLS);
        if BOOLS.contains(&k) && parse_bool(k, v).is_ok() {
            first_opt -= 1;
        } else {
            break;
        }
    }
    let mut a = sys::UnixSocketAddress::default();
    for opt in &segs[first_opt..] {
        let (k, v) = split_opt(opt, &BOOLS);
        let b = parse_bool(k, v)?;
        if k == "abstract" {
            (a.has_abstract, a.abstract_) = (true, b);
        } else {
            (a.has_tight, a.tight) = (true, b);
        }
    }
    Ok((a, segs[..first_opt].join(",")))
}

/// QEMU's vsock_parse(): "CID:PORT", each at most 32 characters.
fn parse_vsock(s: &str) -> Result<(String, String)> {
    let err = || ErrorImpl::new(format!("error parsing address '{s}'"));
    let (cid, rest) = s.split_once(':').ok_or_else(err)?;
    let port_end = rest.find(',').unwrap_or(rest.len());
    let port = &rest[..port_end];
    if cid.is_empty() || port.is_empty() {
        return Err(err());
    }
    if cid.len() > 32 || port.len() > 32 || port_end != rest.len() {
        return Err(ErrorImpl::new(format!(
            "trailing characters in address '{s}'"
        )));
    }
    Ok((cid.to_owned(), port.to_owned()))
}

fn parse(s: &str) -> Result<AddrBox> {
    if let Some(rest) = s.strip_prefix("unix:") {
        let (u, path) = parse_unix(rest)?;
        let a = AddrBox(new_address(sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX));
        // SAFETY: a fresh unix address that we own.
        unsafe {
            (*a.0).u.q_unix = u;
            (*a.0).u.q_unix.path = g_strdup(&path);
        }
        Ok(a)
    } else if let Some(rest) = s.strip_prefix("fd:") {
        if rest.is_empty() {
            return Err(ErrorImpl::new("invalid file descriptor address"));
        }
        let a = AddrBox(new_address(sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD));
        // SAFETY: a fresh fd address that we own.
        unsafe { (*a.0).u.fd.str_ = g_strdup(rest) };
        Ok(a)
    } else if let Some(rest) = s.strip_prefix("vsock:") {
        let (cid, port) = parse_vsock(rest)?;
        let a = AddrBox(new_address(
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK,
        ));
        // SAFETY: a fresh vsock address that we own.
        unsafe {
            (*a.0).u.vsock.cid = g_strdup(&cid);
            (*a.0).u.vsock.port = g_strdup(&port);
        }
        Ok(a)
    } else {
        let (inet, host, port) = parse_inet(s.strip_prefix("tcp:").unwrap_or(s))?;
        let a = AddrBox(new_address(sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET));
        // SAFETY: a fresh inet address that we own.
        unsafe {
            (*a.0).u.inet = inet;
            (*a.0).u.inet.host = g_strdup(&host);
            (*a.0).u.inet.port = g_strdup(&port);
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
    let s = unsafe { text(str_) };
    // SAFETY: caller's contract.
    unsafe { ok_or_set(parse(&s).map(AddrBox::into_raw), errp) }.unwrap_or(ptr::null_mut())
}

/// "HOST:PORT", with brackets around an IPv6 host.
fn host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The text of `addr` in socket_parse() syntax.  Like QEMU's socket_uri()
/// it leaves out inet flags (ipv4, ipv6, numeric, keep-alive), but it
/// keeps what changes the meaning: the port range and abstract/tight.
///
/// # Safety
/// `addr` is a valid SocketAddress.
pub(crate) unsafe fn uri(addr: *const sys::SocketAddress) -> String {
    // SAFETY: caller's contract; the tag selects the union member.
    unsafe {
        match (*addr).type_ {
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET => {
                let i = &(*addr).u.inet;
                let mut s = format!("tcp:{}", host_port(&text(i.host), &text(i.port)));
                if i.has_to {
                    s += &format!(",to={}", i.to);
                }
                s
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX => {
                let u = &(*addr).u.q_unix;
                let mut s = format!("unix:{}", text(u.path));
                if u.has_abstract && u.abstract_ {
                    s += ",abstract=on";
                    if u.has_tight && !u.tight {
                        s += ",tight=off";
                    }
                }
                s
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD => {
                format!("fd:{}", text((*addr).u.fd.str_))
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK => {
                let v = &(*addr).u.vsock;
                format!("vsock:{}:{}", text(v.cid), text(v.port))
            }
            _ => "unknown address type".to_owned(),
        }
    }
}

/// # Safety
/// `addr` is a valid SocketAddress.
#[no_mangle]
pub unsafe extern "C" fn socket_uri(addr: *mut sys::SocketAddress) -> *mut c_char {
    // SAFETY: caller's contract.
    g_strdup(&unsafe { uri(addr) })
}

// ---------------------------------------------------------------------------
// sockaddr <-> SocketAddress

/// A socket address in the kernel's format.
#[derive(Clone, Copy)]
pub(crate) struct SockAddr {
    pub(crate) storage: sockaddr_storage,
    pub(crate) len: socklen_t,
}

impl SockAddr {
    fn empty() -> Self {
        SockAddr {
            // SAFETY: all-zero is a valid sockaddr_storage.
            storage: unsafe { zeroed() },
            len: size_of::<sockaddr_storage>() as socklen_t,
        }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        ptr::addr_of!(self.storage).cast()
    }

    fn family(&self) -> c_int {
        self.storage.ss_family as c_int
    }

    fn set_port(&mut self, port: u16) {
        let p = ptr::addr_of_mut!(self.storage);
        match self.family() {
            // SAFETY: the family says which sockaddr the storage holds.
            libc::AF_INET => unsafe { (*p.cast::<libc::sockaddr_in>()).sin_port = port.to_be() },
            // SAFETY: as above.
            libc::AF_INET6 => unsafe { (*p.cast::<libc::sockaddr_in6>()).sin6_port = port.to_be() },
            _ => {}
        }
    }

    /// A unix address; `None` if `path` does not fit.
    fn unix(path: &[u8], abstract_: bool, tight: bool) -> Option<Self> {
        let mut sa = SockAddr::empty();
        // SAFETY: sockaddr_un fits in sockaddr_storage.
        let un = unsafe { &mut *ptr::addr_of_mut!(sa.storage).cast::<libc::sockaddr_un>() };
        un.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let off = usize::from(abstract_);
        if path.len() + off > un.sun_path.len() {
            return None;
        }
        for (d, s) in un.sun_path[off..].iter_mut().zip(path) {
            *d = *s as c_char;
        }
        let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        sa.len = if abstract_ && tight {
            base + 1 + path.len()
        } else {
            size_of::<libc::sockaddr_un>()
        } as socklen_t;
        Some(sa)
    }

    fn vsock(cid: u32, port: u32) -> Self {
        let mut sa = SockAddr::empty();
        // SAFETY: sockaddr_vm fits in sockaddr_storage.
        let vm = unsafe { &mut *ptr::addr_of_mut!(sa.storage).cast::<libc::sockaddr_vm>() };
        vm.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        vm.svm_cid = cid;
        vm.svm_port = port;
        sa.len = size_of::<libc::sockaddr_vm>() as socklen_t;
        sa
    }

    /// Numeric host and port text of an inet address.
    fn numeric(&self) -> std::result::Result<(String, String), c_int> {
        let mut host = [0 as c_char; libc::NI_MAXHOST as usize];
        let mut serv = [0 as c_char; 32];
        // SAFETY: the buffers are writable for the lengths given; the
        // address is valid for self.len bytes.
        let rc = unsafe {
            libc::getnameinfo(
                self.as_ptr(),
                self.len,
                host.as_mut_ptr(),
                host.len() as socklen_t,
                serv.as_mut_ptr(),
                serv.len() as socklen_t,
                libc::NI_NUMERICHOST | libc::NI_NUMERICSERV,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        // SAFETY: getnameinfo NUL-terminated both buffers.
        unsafe { Ok((text(host.as_ptr()), text(serv.as_ptr()))) }
    }

    /// QEMU's socket_sockaddr_to_address().
    pub(crate) fn to_address(self) -> Result<AddrBox> {
        match self.family() {
            libc::AF_INET | libc::AF_INET6 => {
                let (host, port) = self.numeric().map_err(|rc| {
                    ErrorImpl::new(format!(
                        "Cannot format numeric socket address: {}",
                        gai_error(rc)
                    ))
                })?;
                let a = AddrBox(new_address(sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET));
                // SAFETY: a fresh inet address that we own.
                let i = unsafe { &mut (*a.0).u.inet };
                i.host = g_strdup(&host);
                i.port = g_strdup(&port);
                if self.family() == libc::AF_INET {
                    (i.has_ipv4, i.ipv4) = (true, true);
                } else {
                    (i.has_ipv6, i.ipv6) = (true, true);
                }
                Ok(a)
            }
            libc::AF_UNIX => {
                // SAFETY: the family says the storage holds a sockaddr_un.
                let un = unsafe { &*ptr::addr_of!(self.storage).cast::<libc::sockaddr_un>() };
                let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
                let n = (self.len as usize)
                    .saturating_sub(base)
                    .min(un.sun_path.len());
                let bytes: Vec<u8> = un.sun_path[..n].iter().map(|&c| c as u8).collect();
                let a = AddrBox(new_address(sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX));
                // SAFETY: a fresh unix address that we own.
                let u = unsafe { &mut (*a.0).u.q_unix };
                if n > 0 && bytes[0] == 0 {
                    // Linux abstract namespace: the name may hold any byte.
                    u.path = g_strdup(&String::from_utf8_lossy(&bytes[1..]));
                    (u.has_abstract, u.abstract_) = (true, true);
                    (u.has_tight, u.tight) = (true, n < un.sun_path.len());
                } else {
                    let end = bytes.iter().position(|&b| b == 0).unwrap_or(n);
                    u.path = g_strdup(&String::from_utf8_lossy(&bytes[..end]));
                }
                Ok(a)
            }
            libc::AF_VSOCK => {
                // SAFETY: the family says the storage holds a sockaddr_vm.
                let vm = unsafe { &*ptr::addr_of!(self.storage).cast::<libc::sockaddr_vm>() };
                let a = AddrBox(new_address(
                    sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK,
                ));
                // SAFETY: a fresh vsock address that we own.
                unsafe {
                    (*a.0).u.vsock.cid = g_strdup(&vm.svm_cid.to_string());
                    (*a.0).u.vsock.port = g_strdup(&vm.svm_port.to_string());
                }
                Ok(a)
            }
            f => Err(ErrorImpl::new(format!("socket family {f} unsupported"))),
        }
    }
}

fn gai_error(rc: c_int) -> String {
    if rc == libc::EAI_SYSTEM {
        return crate::error::strerror(errno());
    }
    // SAFETY: gai_strerror returns a static string for any code.
    unsafe { text(libc::gai_strerror(rc)) }
}

/// # Safety
/// `sa` is valid for `salen` bytes; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn socket_sockaddr_to_address(
    sa: *mut sys::sockaddr_storage,
    salen: sys::socklen_t,
    errp: *mut *mut sys::Error,
) -> *mut sys::SocketAddress {
    let mut s = SockAddr::empty();
    let n = (salen as usize).min(size_of::<sockaddr_storage>());
    // SAFETY: sa is valid for salen bytes; we copy at most the storage.
    unsafe {
        ptr::copy_nonoverlapping(
            sa.cast::<u8>(),
            ptr::addr_of_mut!(s.storage).cast::<u8>(),
            n,
        )
    };
    s.len = n as socklen_t;
    // SAFETY: caller's contract.
    unsafe { ok_or_set(s.to_address().map(AddrBox::into_raw), errp) }.unwrap_or(ptr::null_mut())
}

pub(crate) fn local_sockaddr(fd: RawFd) -> std::result::Result<SockAddr, c_int> {
    let mut s = SockAddr::empty();
    // SAFETY: the storage and length are valid out parameters.
    if unsafe { libc::getsockname(fd, ptr::addr_of_mut!(s.storage).cast(), &mut s.len) } < 0 {
        return Err(errno());
    }
    Ok(s)
}

pub(crate) fn remote_sockaddr(fd: RawFd) -> std::result::Result<SockAddr, c_int> {
    let mut s = SockAddr::empty();
    // SAFETY: the storage and length are valid out parameters.
    if unsafe { libc::getpeername(fd, ptr::addr_of_mut!(s.storage).cast(), &mut s.len) } < 0 {
        return Err(errno());
    }
    Ok(s)
}

/// # Safety
/// `errp` is a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn socket_local_address(
    fd: c_int,
    errp: *mut *mut sys::Error,
) -> *mut sys::SocketAddress {
    let r = local_sockaddr(fd)
        .map_err(|e| ErrorImpl::with_errno(e, "Unable to query local socket address"))
        .and_then(|s| s.to_address());
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r.map(AddrBox::into_raw), errp) }.unwrap_or(ptr::null_mut())
}

/// # Safety
/// `errp` is a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn socket_remote_address(
    fd: c_int,
    errp: *mut *mut sys::Error,
) -> *mut sys::SocketAddress {
    let r = remote_sockaddr(fd)
        .map_err(|e| ErrorImpl::with_errno(e, "Unable to query remote socket address"))
        .and_then(|s| s.to_address());
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r.map(AddrBox::into_raw), errp) }.unwrap_or(ptr::null_mut())
}

// ---------------------------------------------------------------------------
// Small safe wrappers of the socket calls

fn new_socket(family: c_int, ty: c_int, proto: c_int) -> std::result::Result<OwnedFd, c_int> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        Err(errno())
    } else {
        // SAFETY: a new descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    val: c_int,
) -> std::result::Result<(), c_int> {
    // SAFETY: val is a valid c_int for the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            ptr::addr_of!(val).cast(),
            size_of::<c_int>() as socklen_t,
        )
    };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn bind_fd(fd: BorrowedFd<'_>, sa: &SockAddr) -> std::result::Result<(), c_int> {
    // SAFETY: sa is valid for sa.len bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), sa.as_ptr(), sa.len) } < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn listen_fd(fd: BorrowedFd<'_>, num: c_int) -> std::result::Result<(), c_int> {
    // SAFETY: plain syscall.
    if unsafe { libc::listen(fd.as_raw_fd(), num) } < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn connect_fd(fd: BorrowedFd<'_>, sa: &SockAddr) -> std::result::Result<(), c_int> {
    loop {
        // SAFETY: sa is valid for sa.len bytes.
        if unsafe { libc::connect(fd.as_raw_fd(), sa.as_ptr(), sa.len) } == 0 {
            return Ok(());
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// One getaddrinfo() result.
struct Resolved {
    family: c_int,
    protocol: c_int,
    addr: SockAddr,
}

fn getaddrinfo(
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
            )
        };
        addr.len = n as socklen_t;
        out.push(Resolved {
            family: ai.ai_family,
            protocol: ai.ai_protocol,
            addr,
        });
        e = ai.ai_next;
    }
    // SAFETY: res came from getaddrinfo and is not used afterwards.
    unsafe { libc::freeaddrinfo(res) };
    Ok(out)
}

/// QEMU's inet_ai_family_from_address().
fn ai_family(a: &sys::InetSocketAddress) -> Result<c_int> {
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

fn set_keepalive(fd: BorrowedFd<'_>, a: &sys::InetSocketAddress, what: &str) -> Result<()> {
    if !(a.has_keep_alive && a.keep_alive) {
        return Ok(());
    }
    let fail = |e| {
        ErrorImpl::with_errno(
            e,
            format!("Unable to set keep-alive option on socket for {what}"),
        )
    };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1).map_err(fail)?;
    for (has, val, opt) in [
        (
            a.has_keep_alive_count,
            a.keep_alive_count,
            libc::TCP_KEEPCNT,
        ),
        (a.has_keep_alive_idle, a.keep_alive_idle, libc::TCP_KEEPIDLE),
        (
            a.has_keep_alive_interval,
            a.keep_alive_interval,
            libc::TCP_KEEPINTVL,
        ),
    ] {
        if has && val != 0 {
            setsockopt_int(fd, libc::IPPROTO_TCP, opt, val as c_int).map_err(fail)?;
        }
    }
    Ok(())
}

fn parse_port(port: &str) -> Result<u16> {
    if port.is_empty() {
        return Err(ErrorImpl::new("port not specified"));
    }
    check_port(port)?;
    let n: u64 = port
        .parse()
        .map_err(|_| ErrorImpl::new(format!("can't convert to a number: {port}")))?;
    u16::try_from(n).map_err(|_| ErrorImpl::new(format!("port {port} out of range")))
}

// ---------------------------------------------------------------------------
// Listening

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
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(|e| {
                ErrorImpl::with_errno(e, format!("Failed to set SO_REUSEADDR for {what}"))
            })?;
            if cand.family == libc::AF_INET6 {
                setsockopt_int(
                    fd,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_V6ONLY,
                    c_int::from(!dual),
                )
                .map_err(|e| {
                    ErrorImpl::with_errno(e, format!("Failed to set IPV6_V6ONLY for {what}"))
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
    // SAFETY: all-zero is a valid stat buffer.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: path is NUL-terminated; st is an out parameter.
    if unsafe { libc::lstat(path.as_ptr(), &mut st) } < 0 {
        return None;
    }
    Some(st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

fn unlink(path: &CStr) -> std::result::Result<(), c_int> {
    // SAFETY: path is NUL-terminated.
    if unsafe { libc::unlink(path.as_ptr()) } < 0 && errno() != libc::ENOENT {
        Err(errno())
    } else {
        Ok(())
    }
}

/// A fresh, unused path for a socket in the temporary directory.
fn temp_socket_path() -> Result<String> {
    // SAFETY: g_get_tmp_dir returns a string GLib keeps alive.
    let dir = unsafe { text(sys::g_get_tmp_dir()) };
    let templ = format!("{dir}/qemu-socket-XXXXXX");
    let mut buf = CString::new(templ.clone())
        .unwrap_or_default()
        .into_bytes_with_nul();
    // SAFETY: buf is a writable NUL-terminated template.
    let fd = unsafe { libc::mkstemp(buf.as_mut_ptr().cast()) };
    if fd < 0 {
        return Err(ErrorImpl::with_errno(
            errno(),
            format!("Failed to make a temporary socket {templ}"),
        ));
    }
    // SAFETY: fd is the file mkstemp just created for us.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    buf.pop();
    let path = CString::new(buf).unwrap_or_default();
    // bind() needs the name free: the file only reserved a unique name.
    unlink(&path).map_err(|e| {
        ErrorImpl::with_errno(
            e,
            format!("Failed to unlink socket {}", path.to_string_lossy()),
        )
    })?;
    Ok(path.to_string_lossy().into_owned())
}

fn unix_listen(a: &sys::UnixSocketAddress, num: c_int) -> Result<OwnedFd> {
    let abstract_ = a.has_abstract && a.abstract_;
    let tight = !a.has_tight || a.tight;
    // SAFETY: the address owns a NUL-terminated path (or NULL).
    let mut path: Vec<u8> = unsafe { cstr(a.path) }
        .map(|p| p.as_bytes().to_vec())
        .unwrap_or_default();
    let sock = new_socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)
        .map_err(|e| ErrorImpl::with_errno(e, "Failed to create Unix socket"))?;
    if path.is_empty() && !abstract_ {
        path = temp_socket_path()?.into_bytes();
    }
    let shown = String::from_utf8_lossy(&path).into_owned();
    let too_long = || ErrorImpl::new(format!("UNIX socket path '{shown}' is too long"));
    if path.len() > SUN_PATH_LEN || (abstract_ && path.len() > SUN_PATH_LEN - 1) {
        return Err(too_long());
    }
    let sa = SockAddr::unix(&path, abstract_, tight).ok_or_else(too_long)?;
    let cpath = CString::new(path.clone())
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

fn vsock_sockaddr(a: &sys::VsockSocketAddress) -> Result<(SockAddr, String)> {
    // SAFETY: the address owns NUL-terminated strings (or NULL).
    let (cid, port) = unsafe { (text(a.cid), text(a.port)) };
    let c: u32 = cid
        .parse()
        .map_err(|_| ErrorImpl::new(format!("Failed to parse cid '{cid}'")))?;
    let p: u32 = port
        .parse()
        .map_err(|_| ErrorImpl::new(format!("Failed to parse port '{port}'")))?;
    Ok((SockAddr::vsock(c, p), format!("vsock:{cid}:{port}")))
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

/// Whether `fd` is an open socket.
fn is_socket(fd: RawFd) -> bool {
    // SAFETY: all-zero is a valid stat buffer.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: st is an out parameter; fstat checks fd itself.
    unsafe { libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK }
}

/// QEMU's socket_get_fd(): the address owns the descriptor, so one that
/// turns out not to be a socket is closed, as QEMU does.
fn fd_from_str(s: &str) -> Result<OwnedFd> {
    let fd: RawFd = s.parse().map_err(|_| {
        ErrorImpl::with_errno(libc::EINVAL, format!("Unable to parse FD number {s}"))
    })?;
    if !is_socket(fd) {
        if fd >= 0 {
            // SAFETY: the descriptor was handed to us; closing an invalid
            // number is harmless (EBADF).
            unsafe { libc::close(fd) };
        }
        return Err(ErrorImpl::new(format!(
            "File descriptor '{s}' is not a socket"
        )));
    }
    // SAFETY: the caller hands the socket over to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_cloexec(fd: BorrowedFd<'_>) -> std::result::Result<(), c_int> {
    // SAFETY: plain fcntl calls on a valid descriptor.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) < 0 {
            return Err(errno());
        }
    }
    Ok(())
}

fn set_blocking(fd: RawFd, block: bool) -> Result<()> {
    let fail = |e| {
        ErrorImpl::with_errno(
            e,
            format!(
                "Can't set file descriptor {fd} {}",
                if block { "blocking" } else { "non-blocking" }
            ),
        )
    };
    // SAFETY: plain fcntl calls; fcntl checks fd itself.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(fail(errno()));
    }
    let new = if block {
        flags & !libc::O_NONBLOCK
    } else {
        flags | libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if new != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
        return Err(fail(errno()));
    }
    Ok(())
}

/// The Rust side of socket_listen().
///
/// # Safety
/// `addr` is a valid SocketAddress.
pub(crate) unsafe fn listen(addr: *const sys::SocketAddress, num: c_int) -> Result<OwnedFd> {
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

/// # Safety
/// `addr` is a valid SocketAddress; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn socket_listen(
    addr: *mut sys::SocketAddress,
    num: c_int,
    errp: *mut *mut sys::Error,
) -> c_int {
    // SAFETY: caller's contract.
    unsafe { ok_or_set(listen(addr, num).map(IntoRawFd::into_raw_fd), errp) }.unwrap_or(-1)
}

// ---------------------------------------------------------------------------
// Connecting

fn inet_connect(a: &sys::InetSocketAddress) -> Result<OwnedFd> {
    if a.host.is_null() || a.port.is_null() {
        return Err(ErrorImpl::new("host and/or port not specified"));
    }
    // SAFETY: the address owns NUL-terminated strings.
    let (host, port) = unsafe { (text(a.host), text(a.port)) };
    let what = host_port(&host, &port);
    check_port(&port)?;
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
    let path: Vec<u8> = unsafe { cstr(a.path) }
        .map(|p| p.as_bytes().to_vec())
        .unwrap_or_default();
    if path.is_empty() && !abstract_ {
        return Err(ErrorImpl::new("unix connect: no path specified"));
    }
    let shown = String::from_utf8_lossy(&path).into_owned();
    let sa = SockAddr::unix(&path, abstract_, !a.has_tight || a.tight)
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

/// The Rust side of socket_connect().
///
/// # Safety
/// `addr` is a valid SocketAddress.
pub(crate) unsafe fn connect(addr: *const sys::SocketAddress) -> Result<OwnedFd> {
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

/// # Safety
/// `addr` is a valid SocketAddress; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn socket_connect(
    addr: *mut sys::SocketAddress,
    errp: *mut *mut sys::Error,
) -> c_int {
    // SAFETY: caller's contract.
    unsafe { ok_or_set(connect(addr).map(IntoRawFd::into_raw_fd), errp) }.unwrap_or(-1)
}

/// # Safety
/// `errp` is a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qemu_set_blocking(
    fd: c_int,
    block: bool,
    errp: *mut *mut sys::Error,
) -> bool {
    // SAFETY: caller's contract.
    unsafe { ok_or_set(set_blocking(fd, block), errp) }.is_some()
}

/// QEMU's socket_init(): nothing to set up outside Windows.
#[no_mangle]
pub extern "C" fn socket_init() -> c_int {
    0
}

/// QEMU's qemu_socket(): socket(2) with close-on-exec; -1 and errno on
/// failure.
#[no_mangle]
pub extern "C" fn qemu_socket(domain: c_int, type_: c_int, protocol: c_int) -> c_int {
    match new_socket(domain, type_, protocol) {
        Ok(fd) => fd.into_raw_fd(),
        Err(e) => {
            // SAFETY: errno is thread-local; new_socket read it already.
            unsafe { *libc::__errno_location() = e };
            -1
        }
    }
}

#[no_mangle]
pub extern "C" fn fd_is_socket(fd: c_int) -> bool {
    is_socket(fd)
}

// ---------------------------------------------------------------------------
// The DNS resolver

const RESOLVER_INFO: sys::TypeInfo = sys::TypeInfo {
    name: c"qio-dns-resolver".as_ptr(),
    parent: c"object".as_ptr(),
    instance_size: size_of::<sys::QIODNSResolver>(),
    instance_align: 0,
    instance_init: None,
    instance_post_init: None,
    instance_finalize: None,
    abstract_: false,
    class_size: 0,
    class_init: None,
    class_base_init: None,
    class_data: ptr::null(),
    interfaces: ptr::null(),
};

/// The QOM types this module implements, registered by the type registry
/// itself.
pub(crate) fn type_infos() -> Vec<sys::TypeInfo> {
    vec![RESOLVER_INFO]
}

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
    check_port(&port)?;
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
/// `addr` is a valid SocketAddress; `naddrs`/`addrs` valid out
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
        unsafe { *arr.add(i) = b.into_raw() };
    }
    // SAFETY: caller's contract.
    unsafe {
        *naddrs = n;
        *addrs = arr;
    }
    0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::util::testing::isolated;

    /// How many descriptors this process has open.
    pub(crate) fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub(crate) fn parse_ok(s: &str) -> AddrBox {
        parse(s).unwrap_or_else(|e| panic!("{s}: {}", e.message()))
    }

    fn parse_err(s: &str) -> String {
        match parse(s) {
            // SAFETY: a valid address.
            Ok(a) => panic!("{s} parsed as {}", unsafe { uri(a.0) }),
            Err(e) => e.message().to_owned(),
        }
    }

    pub(crate) fn listen_err(s: &str) -> String {
        let a = parse_ok(s);
        // SAFETY: a valid address.
        match unsafe { listen(a.0, 5) } {
            Ok(_) => panic!("listening on {s} worked"),
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
                    let v = setsockopt_get(l6.as_raw_fd());
                    assert_eq!(v, 1, "IPv6 listeners are v6-only");
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

    fn setsockopt_get(fd: RawFd) -> c_int {
        let mut v: c_int = -1;
        let mut len = size_of::<c_int>() as socklen_t;
        // SAFETY: v and len are valid out parameters.
        unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                ptr::addr_of_mut!(v).cast(),
                &mut len,
            )
        };
        v
    }

    #[test]
    fn listen_errors_leak_no_fds() {
        if !isolated("address::tests::listen_errors_leak_no_fds") {
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
        let m = listen_err("unix:/nonexistent-dir-qemucompat/x.sock");
        assert_eq!(m, "Failed to bind socket to /nonexistent-dir-qemucompat/x.sock: No such file or directory");
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
        let m = listen_err("vsock:x:1");
        assert_eq!(m, "Failed to parse cid 'x'");
        assert_eq!(open_fds(), before);
    }

    #[test]
    fn fd_listen() {
        // SAFETY: a fresh socket we hand over to listen().
        unsafe {
            let s = new_socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
            let raw = s.into_raw_fd();
            assert!(fd_is_socket(raw));
            let a = parse_ok(&format!("fd:{raw}"));
            let l = listen(a.0, 3).unwrap();
            assert_eq!(l.as_raw_fd(), raw);
            // A regular file is refused and, as in QEMU, closed.
            let f = std::fs::File::open("/proc/self/stat")
                .unwrap()
                .into_raw_fd();
            assert!(!fd_is_socket(f));
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
            let l = listen(a.0, 5).unwrap();
            drop(l);
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
            let t = parse_ok("unix:,abstract=off");
            let l = listen(t.0, 5).unwrap();
            let local = local_sockaddr(l.as_raw_fd()).unwrap().to_address().unwrap();
            let path = text((*local.0).u.q_unix.path);
            assert!(path.contains("qemu-socket-"), "{path}");
            drop(l);
            let _ = std::fs::remove_file(path);

            // Abstract, tight and not.
            let name = format!("qemucompat-test-{}", std::process::id());
            for tight in ["", ",tight=off"] {
                let s = format!("unix:{name},abstract=on{tight}");
                let a = parse_ok(&s);
                let l = listen(a.0, 5).unwrap();
                let local = local_sockaddr(l.as_raw_fd()).unwrap().to_address().unwrap();
                assert_eq!(uri(local.0), s);
                drop(connect(a.0).unwrap());
            }
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn vsock_is_clear() {
        if !isolated("address::tests::vsock_is_clear") {
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

    #[test]
    fn connect_refused_names_address() {
        if !isolated("address::tests::connect_refused_names_address") {
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

    /// An inet address with `port` put in by hand, as QEMU code that
    /// builds an InetSocketAddress does (no socket_parse() check).
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
        if !isolated("address::tests::out_of_range_ports_are_rejected") {
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
        for port in ["99999", "65536", " 70000"] {
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
        let msg = unsafe { connect(a.0) }.err().unwrap().message().to_owned();
        assert!(msg.contains("127.0.0.1:no-such-service"), "{msg}");
        // One that resolves gives its number.
        let a = inet_with_port("http");
        let (mut n, mut list, mut err) = (0, ptr::null_mut(), ptr::null_mut());
        // SAFETY: a valid address and out parameters.
        unsafe {
            let r = qio_dns_resolver_get_instance();
            assert_eq!(
                qio_dns_resolver_lookup_sync(r, a.0, &mut n, &mut list, &mut err),
                0
            );
            assert_eq!(n, 1);
            let x = AddrBox(*list);
            assert_eq!(uri(x.0), "tcp:127.0.0.1:80");
            sys::g_free(list.cast());
        }
    }

    #[test]
    fn socket_init_and_qemu_socket() {
        assert_eq!(socket_init(), 0);
        let fd = qemu_socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        // SAFETY: fd is ours; plain fcntl.
        unsafe {
            assert!(libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0);
            libc::close(fd);
        }
        assert_eq!(qemu_socket(-1, libc::SOCK_STREAM, 0), -1);
        assert_eq!(crate::error::errno(), libc::EAFNOSUPPORT);
    }

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
