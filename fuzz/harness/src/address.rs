//! Arbitrary QAPI `SocketAddress` values (every type, with arbitrary
//! strings, ports, flags and descriptor numbers), built under the network
//! safety rule of the crate doc:
//!
//! - inet hosts are numeric loopback or wildcard addresses, `localhost`
//!   (forced to IPv4, which /etc/hosts answers), NULL, or fuzzed text that
//!   starts with a letter that no numeric address has and is looked up as
//!   numeric only, so it fails without DNS;
//! - inet ports are 0, ports this input already bound (to hit "in use"),
//!   a port range starting there, malformed or out-of-range numbers, or
//!   text that is no service name;
//! - unix paths are under the private temporary directory ('/' in fuzzed
//!   names becomes '_'), abstract names carry the process's prefix;
//! - vsock CIDs are the local CID 1 in a few spellings or unparsable;
//! - fd numbers are negative, at or above `RLIMIT_NOFILE` (never open), or
//!   descriptors the harness created for this (listening, bound, unbound,
//!   UDP and connected sockets, a pipe); fuzzed text that would parse as
//!   another open descriptor gets a letter in front.

use std::{
    ffi::c_int,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr, TcpListener},
    os::{
        fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, net::UnixListener},
    },
    ptr,
};

use arbitrary::Arbitrary;
use qemucompat::sys;

use crate::support::{c_bytes, g_strdup_bytes, process};

#[derive(Arbitrary, Debug, Clone)]
pub enum Addr {
    Inet(Inet),
    Unix(Unix),
    Vsock {
        cid: Cid,
        port: Text,
    },
    Fd(Fd),
    /// A type tag outside the enum (C callers are not checked by QAPI).
    BadType(u8),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Inet {
    host: Host,
    port: Port,
    /// `to`: for a port bound earlier, that port plus this modulo 8;
    /// otherwise the value itself.
    to: Option<u16>,
    numeric: Option<bool>,
    ipv4: Option<bool>,
    ipv6: Option<bool>,
    keep_alive: Option<bool>,
    keep_alive_count: Option<u32>,
    keep_alive_idle: Option<u32>,
    keep_alive_interval: Option<u32>,
    mptcp: Option<bool>,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Host {
    Ipv4Loopback,
    Ipv6Loopback,
    /// 127.a.b.c
    Loopback(u8, u8, u8),
    V4MappedLoopback,
    Localhost,
    Empty,
    Ipv4Any,
    Ipv6Any,
    Null,
    /// Fails as a numeric address: `z` + the text.
    Garbage(String),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Port {
    Zero,
    /// The port of the nth inet socket this input bound (0 if none).
    Bound(u8),
    Empty,
    Null,
    /// One of [`ODD_PORTS`].
    Odd(u8),
    /// No service name: `zz` + the text.
    Garbage(String),
}

/// Ports whose text is unusual: zero in other spellings, out of range,
/// negative, not decimal.
pub const ODD_PORTS: [&str; 16] = [
    "+0",
    " 0",
    "00",
    "0 ",
    "65536",
    "99999",
    "4294967296",
    "18446744073709551616",
    "-1",
    "-65535",
    "+65536",
    " 65536",
    "0x10",
    "1e3",
    "\x0b70000",
    "\t+70000",
];

#[derive(Arbitrary, Debug, Clone)]
pub struct Unix {
    path: UnixPath,
    abstract_: Option<bool>,
    tight: Option<bool>,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum UnixPath {
    /// "": the compat host picks a temporary path.
    Empty,
    Null,
    /// A name in the temporary directory (or after the abstract prefix).
    Name(Vec<u8>),
    /// A name of 80 + n % 48 bytes, around the 108-byte limit.
    Long(u8),
    /// The path of the nth unix socket this input bound.
    Bound(u8),
    /// A regular file in the temporary directory.
    RegularFile,
    /// A directory that does not exist.
    MissingDir,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Cid {
    Local,
    LocalPlus,
    LocalZeros,
    TooLarge,
    Garbage(String),
}

/// A vsock port: a number, any text, empty or NULL.
#[derive(Arbitrary, Debug, Clone)]
pub enum Text {
    Num(u32),
    Str(String),
    Empty,
    Null,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Fd {
    /// A descriptor the harness creates and hands over.
    Made(Made, FdSpelling),
    Negative(i32),
    /// `RLIMIT_NOFILE` + n: never open.
    Unopened(u16),
    /// Text with a letter in front if it would parse as an open number.
    Garbage(String),
    Null,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Made {
    TcpListening,
    Tcp6Listening,
    TcpBound,
    TcpUnbound,
    UnixListening,
    Udp,
    Connected,
    Pipe,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FdSpelling {
    Plain,
    Plus,
    LeadingZero,
}

/// What one input has bound so far, and the descriptors it made.
#[derive(Default)]
pub struct Bound {
    pub ports: Vec<u16>,
    pub paths: Vec<Vec<u8>>,
    /// Peers of connected sockets handed over (kept open until the end).
    pub peers: Vec<OwnedFd>,
}

impl Bound {
    /// Records what `a` (a local address of a listening socket) bound.
    ///
    /// # Safety
    /// `a` is a valid `SocketAddress`.
    pub unsafe fn record(&mut self, a: *const sys::SocketAddress) {
        // SAFETY: caller's contract; the tag selects the union member.
        unsafe {
            match (*a).type_ {
                INET => {
                    if let Some(p) = c_bytes((*a).u.inet.port)
                        .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())
                    {
                        self.ports.push(p);
                    }
                }
                UNIX if !((*a).u.q_unix.has_abstract && (*a).u.q_unix.abstract_) => {
                    if let Some(p) = c_bytes((*a).u.q_unix.path) {
                        self.paths.push(p.to_vec());
                    }
                }
                _ => {}
            }
        }
    }
}

pub(crate) const INET: u32 = sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET;
pub(crate) const UNIX: u32 = sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX;
pub(crate) const VSOCK: u32 = sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK;
pub(crate) const FD: u32 = sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD;

/// A C `SocketAddress` we own, freed with `qapi_free_SocketAddress`.
pub struct CAddr(pub *mut sys::SocketAddress);

impl Drop for CAddr {
    fn drop(&mut self) {
        // SAFETY: we own the address and its g_malloc'ed strings.
        unsafe { sys::qapi_free_SocketAddress(self.0) }
    }
}

fn opt_dup(s: Option<&[u8]>) -> *mut std::ffi::c_char {
    s.map_or(ptr::null_mut(), g_strdup_bytes)
}

/// What the harness expects of a listener bound to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Nothing specific beyond the safety check.
    Any,
    /// A unix socket at exactly this path (not abstract).
    UnixPath(Vec<u8>),
    /// An abstract socket with exactly this name.
    Abstract(Vec<u8>),
    /// An inet socket on a port in this range.
    Ports(u16, u16),
    /// No socket: the address is invalid.
    Fail,
}

/// The port `getaddrinfo()` reads from `text` as a number (`strtoul()`:
/// blanks, a sign, decimal digits to the end), when that is a port: a
/// negative or too large number is not (`getaddrinfo()` would wrap it), nor
/// is text that is not a number (no service has the names used here).
pub fn numeric_port(text: &[u8]) -> Option<u16> {
    let blank = |b: &u8| b" \t\n\x0b\x0c\r".contains(b);
    let t = &text[text.iter().position(|b| !blank(b)).unwrap_or(text.len())..];
    let (negative, digits) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let zero = digits.iter().all(|&d| d == b'0');
    if negative && !zero {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl Addr {
    /// Builds the C address (making any descriptor it names) and says
    /// what a socket bound to it must look like.
    pub fn build(&self, bound: &mut Bound) -> (CAddr, Expect) {
        let (ty, expect) = match self {
            Addr::Inet(i) => (INET, i.expect(bound)),
            Addr::Unix(_) => (UNIX, Expect::Any),
            Addr::Vsock { .. } => (VSOCK, Expect::Any),
            Addr::Fd(_) => (FD, Expect::Any),
            Addr::BadType(t) => (4 + u32::from(*t), Expect::Any),
        };
        // SAFETY: g_malloc0 aborts rather than failing; all-zero is a
        // valid SocketAddress (NULL strings, flags off).
        let a = CAddr(unsafe { sys::g_malloc0(size_of::<sys::SocketAddress>()) }.cast());
        // SAFETY: a fresh address; each arm writes the union member its
        // tag selects.
        let expect = unsafe {
            (*a.0).type_ = ty;
            match self {
                Addr::Inet(i) => {
                    (*a.0).u.inet = i.build(bound);
                    expect
                }
                Addr::Unix(u) => {
                    let (c, e) = u.build(bound);
                    (*a.0).u.q_unix = c;
                    e
                }
                Addr::Vsock { cid, port } => {
                    (*a.0).u.vsock.cid = cid.build();
                    (*a.0).u.vsock.port = port.build();
                    expect
                }
                Addr::Fd(f) => {
                    (*a.0).u.fd.str_ = f.build(bound);
                    expect
                }
                Addr::BadType(_) => expect,
            }
        };
        (a, expect)
    }

    /// The same address, but a vsock one with a CID that does not parse:
    /// where clients must reach every bound socket, none is vsock.
    #[must_use]
    pub fn without_vsock(self) -> Addr {
        match self {
            Addr::Vsock { port, .. } => Addr::Vsock {
                cid: Cid::Garbage(String::new()),
                port,
            },
            a => a,
        }
    }
}

impl Inet {
    /// The ports a socket bound to this address may have.
    fn expect(&self, bound: &Bound) -> Expect {
        let range = |p: u16, to: Option<u16>| match (p, to) {
            (0, _) => Expect::Any,
            (p, Some(t)) => Expect::Ports(p, t.max(p)),
            (p, None) => Expect::Ports(p, p),
        };
        match &self.port {
            Port::Zero | Port::Empty | Port::Null => Expect::Any,
            Port::Bound(n) => {
                let p = pick(&bound.ports, *n).copied().unwrap_or(0);
                range(p, self.to.map(|t| p.saturating_add(t % 8)))
            }
            Port::Odd(n) => {
                match numeric_port(ODD_PORTS[usize::from(*n) % ODD_PORTS.len()].as_bytes()) {
                    Some(p) => range(p, self.to),
                    None => Expect::Fail,
                }
            }
            Port::Garbage(_) => Expect::Fail,
        }
    }

    fn build(&self, bound: &Bound) -> sys::InetSocketAddress {
        let mut numeric = self.numeric;
        let (mut ipv4, mut ipv6) = (self.ipv4, self.ipv6);
        let host: Option<Vec<u8>> = match &self.host {
            Host::Ipv4Loopback => Some(b"127.0.0.1".to_vec()),
            Host::Ipv6Loopback => Some(b"::1".to_vec()),
            Host::Loopback(a, b, c) => Some(format!("127.{a}.{b}.{c}").into_bytes()),
            Host::V4MappedLoopback => Some(b"::ffff:127.0.0.1".to_vec()),
            Host::Localhost => {
                // /etc/hosts has it for IPv4; an IPv6 lookup could go on
                // to DNS.
                (ipv4, ipv6) = (Some(true), Some(false));
                Some(b"localhost".to_vec())
            }
            Host::Empty => Some(Vec::new()),
            Host::Ipv4Any => Some(b"0.0.0.0".to_vec()),
            Host::Ipv6Any => Some(b"::".to_vec()),
            Host::Null => None,
            Host::Garbage(s) => {
                numeric = Some(true);
                Some(format!("z{s}").into_bytes())
            }
        };
        let mut to = self.to;
        let port: Option<Vec<u8>> = match &self.port {
            Port::Zero => Some(b"0".to_vec()),
            Port::Bound(n) => {
                let p = pick(&bound.ports, *n).copied().unwrap_or(0);
                to = to.map(|t| p.saturating_add(t % 8));
                Some(p.to_string().into_bytes())
            }
            Port::Empty => Some(Vec::new()),
            Port::Null => None,
            Port::Odd(n) => Some(ODD_PORTS[usize::from(*n) % ODD_PORTS.len()].into()),
            Port::Garbage(s) => Some(format!("zz{s}").into_bytes()),
        };
        let mut a = sys::InetSocketAddress {
            host: opt_dup(host.as_deref()),
            port: opt_dup(port.as_deref()),
            ..Default::default()
        };
        (a.has_numeric, a.numeric) = split(numeric);
        (a.has_ipv4, a.ipv4) = split(ipv4);
        (a.has_ipv6, a.ipv6) = split(ipv6);
        (a.has_keep_alive, a.keep_alive) = split(self.keep_alive);
        (a.has_mptcp, a.mptcp) = split(self.mptcp);
        (a.has_to, a.to) = split(to);
        (a.has_keep_alive_count, a.keep_alive_count) = split(self.keep_alive_count);
        (a.has_keep_alive_idle, a.keep_alive_idle) = split(self.keep_alive_idle);
        (a.has_keep_alive_interval, a.keep_alive_interval) = split(self.keep_alive_interval);
        a
    }
}

fn split<T: Default>(v: Option<T>) -> (bool, T) {
    v.map_or_else(|| (false, T::default()), |v| (true, v))
}

fn pick<T>(v: &[T], n: u8) -> Option<&T> {
    (!v.is_empty()).then(|| &v[usize::from(n) % v.len()])
}

impl Unix {
    fn build(&self, bound: &Bound) -> (sys::UnixSocketAddress, Expect) {
        let p = process();
        let abstract_ = self.abstract_ == Some(true);
        let in_tmp = |name: &[u8]| {
            let mut v = p.tmp.as_os_str().as_bytes().to_vec();
            v.push(b'/');
            v.extend(name.iter().map(|&b| if b == b'/' { b'_' } else { b }));
            v
        };
        let named = |name: &[u8]| {
            if abstract_ {
                let mut v = p.abstract_prefix.as_bytes().to_vec();
                v.extend_from_slice(name);
                v
            } else {
                in_tmp(name)
            }
        };
        let path: Option<Vec<u8>> = match &self.path {
            // An empty abstract name would be shared with anyone's.
            UnixPath::Empty if abstract_ => Some(named(b"")),
            UnixPath::Empty => Some(Vec::new()),
            UnixPath::Null if abstract_ => Some(named(b"null")),
            UnixPath::Null => None,
            UnixPath::Name(n) => Some(named(n)),
            UnixPath::Long(n) => {
                let len = 80 + usize::from(*n % 48);
                let mut v = named(b"");
                v.resize(len.max(v.len()), b'l');
                Some(v)
            }
            UnixPath::Bound(n) if abstract_ => Some(named(&[*n])),
            UnixPath::Bound(n) => Some(
                pick(&bound.paths, *n)
                    .cloned()
                    .unwrap_or_else(|| in_tmp(b"bound")),
            ),
            UnixPath::RegularFile if abstract_ => Some(named(b"regular-file")),
            UnixPath::RegularFile => {
                let f = in_tmp(b"regular-file");
                let _ = std::fs::write(std::ffi::OsStr::from_bytes(&f), b"x");
                Some(f)
            }
            UnixPath::MissingDir if abstract_ => Some(named(b"missing-dir/sock")),
            UnixPath::MissingDir => Some([in_tmp(b"missing-dir"), b"/sock".to_vec()].concat()),
        };
        // The C string ends at an interior NUL, as in C.
        let path = path.map(|mut v| {
            if let Some(i) = v.iter().position(|&b| b == 0) {
                v.truncate(i);
            }
            v
        });
        let expect = match &path {
            Some(v) if abstract_ => Expect::Abstract(v.clone()),
            Some(v) if !v.is_empty() => Expect::UnixPath(v.clone()),
            _ => Expect::Any,
        };
        let mut a = sys::UnixSocketAddress {
            path: opt_dup(path.as_deref()),
            ..Default::default()
        };
        (a.has_abstract, a.abstract_) = split(self.abstract_);
        (a.has_tight, a.tight) = split(self.tight);
        (a, expect)
    }
}

impl Cid {
    fn build(&self) -> *mut std::ffi::c_char {
        match self {
            Cid::Local => g_strdup_bytes(b"1"),
            Cid::LocalPlus => g_strdup_bytes(b"+1"),
            Cid::LocalZeros => g_strdup_bytes(b"001"),
            Cid::TooLarge => g_strdup_bytes(b"4294967296"),
            Cid::Garbage(s) => g_strdup_bytes(format!("z{s}").as_bytes()),
        }
    }
}

impl Text {
    fn build(&self) -> *mut std::ffi::c_char {
        match self {
            Text::Num(n) => g_strdup_bytes(n.to_string().as_bytes()),
            Text::Str(s) => g_strdup_bytes(s.as_bytes()),
            Text::Empty => g_strdup_bytes(b""),
            Text::Null => ptr::null_mut(),
        }
    }
}

impl Fd {
    fn build(&self, bound: &mut Bound) -> *mut std::ffi::c_char {
        let lim = process().fd_limit;
        let text = match self {
            Fd::Made(m, s) => {
                let fd = m.make(bound);
                match s {
                    FdSpelling::Plain => fd.to_string(),
                    FdSpelling::Plus => format!("+{fd}"),
                    FdSpelling::LeadingZero => format!("0{fd}"),
                }
            }
            Fd::Negative(n) => (-(i64::from(*n).abs()).max(1)).to_string(),
            Fd::Unopened(n) => (i64::from(lim) + i64::from(*n)).to_string(),
            Fd::Garbage(s) => {
                // What C sees: the text up to a NUL.
                let c = s.split('\0').next().unwrap_or("");
                match c.trim().parse::<i64>() {
                    Ok(n) if (0..i64::from(lim)).contains(&n) => format!("z{s}"),
                    _ => s.clone(),
                }
            }
            Fd::Null => return ptr::null_mut(),
        };
        g_strdup_bytes(text.as_bytes())
    }
}

impl Made {
    /// A descriptor of this kind, handed over (the listener or the compat
    /// host closes it).
    fn make(self, bound: &mut Bound) -> RawFd {
        let p = process();
        let fd: OwnedFd = match self {
            Made::TcpListening => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .expect("127.0.0.1:0")
                .into(),
            Made::Tcp6Listening => match TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
                Ok(l) => l.into(),
                Err(_) => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .expect("127.0.0.1:0")
                    .into(),
            },
            Made::TcpBound => {
                let s = socket(libc::AF_INET, libc::SOCK_STREAM);
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sa is a valid sockaddr_in of that length.
                let rc = unsafe {
                    libc::bind(
                        s.as_raw_fd(),
                        ptr::from_ref(&sa).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0, "bind 127.0.0.1:0");
                s
            }
            // listen() on it binds the wildcard address: allowed.
            Made::TcpUnbound => socket(libc::AF_INET, libc::SOCK_STREAM),
            Made::UnixListening => {
                let path = p.tmp.join(format!("made-{}", bound.paths.len()));
                let _ = std::fs::remove_file(&path);
                let l = UnixListener::bind(&path).expect("unix listener in the temporary dir");
                bound.paths.push(path.as_os_str().as_bytes().to_vec());
                l.into()
            }
            Made::Udp => socket(libc::AF_INET, libc::SOCK_DGRAM),
            Made::Connected => {
                let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
                bound.peers.push(b.into());
                a.into()
            }
            Made::Pipe => {
                let (r, w) = pipe();
                bound.peers.push(w);
                r
            }
        };
        fd.into_raw_fd()
    }
}

fn socket(family: c_int, ty: c_int) -> OwnedFd {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket()");
    // SAFETY: a new descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: two new descriptors nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A client connection, kept until the end of the input.
pub struct Client(#[allow(dead_code)] OwnedFd);

/// Checks a local address of a listening socket against the safety rule
/// and `expect`; panics on a violation.  Returns where a client can
/// connect to it (None for vsock and closed sockets).
///
/// # Safety
/// `a` is a valid `SocketAddress`.
pub unsafe fn check_bound(a: *const sys::SocketAddress, expect: &Expect) -> Option<Target> {
    // SAFETY: caller's contract; the tag selects the union member, whose
    // strings are NULL or NUL-terminated.
    unsafe {
        match (*a).type_ {
            INET => {
                let host = c_bytes((*a).u.inet.host).expect("local address: host");
                let port = c_bytes((*a).u.inet.port).expect("local address: port");
                let host = std::str::from_utf8(host).expect("numeric host");
                let port: u16 = std::str::from_utf8(port)
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .expect("numeric port");
                let ip: std::net::IpAddr = host.parse().expect("numeric host");
                let ok = match ip {
                    std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
                    std::net::IpAddr::V6(v6) => {
                        v6.is_loopback()
                            || v6.is_unspecified()
                            || v6.to_ipv4_mapped().is_some_and(|m| m.is_loopback())
                    }
                };
                assert!(ok, "SAFETY RULE BROKEN: bound to {host}:{port}");
                match *expect {
                    Expect::Any => {}
                    Expect::Ports(lo, hi) if (lo..=hi).contains(&port) => {}
                    _ => panic!("expected {expect:?}, bound {host}:{port}"),
                }
                // Clients go to the bound address itself (127.x.y.z is
                // not 127.0.0.1), or to loopback for a wildcard one.
                let target = match ip {
                    std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                        std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port))
                    }
                    std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                        std::net::SocketAddr::from((Ipv6Addr::LOCALHOST, port))
                    }
                    ip => std::net::SocketAddr::from((ip, port)),
                };
                Some(Target::Inet(target))
            }
            UNIX => {
                let u = &(*a).u.q_unix;
                let path = c_bytes(u.path).expect("local address: path").to_vec();
                let abstract_ = u.has_abstract && u.abstract_;
                if abstract_ {
                    let prefix = process().abstract_prefix.as_bytes();
                    assert!(
                        path.starts_with(prefix),
                        "SAFETY RULE BROKEN: abstract name {:?}",
                        String::from_utf8_lossy(&path)
                    );
                } else if !path.is_empty() {
                    assert!(
                        path.starts_with(process().tmp.as_os_str().as_bytes()),
                        "unix socket bound outside the temporary dir: {:?}",
                        String::from_utf8_lossy(&path)
                    );
                }
                match expect {
                    Expect::Any => {}
                    Expect::Ports(..) | Expect::Fail => panic!(
                        "expected {expect:?}, bound unix {:?}",
                        String::from_utf8_lossy(&path)
                    ),
                    Expect::UnixPath(p) => assert!(
                        !abstract_ && &path == p,
                        "asked for unix path {:?}, bound {:?} (abstract: {abstract_})",
                        String::from_utf8_lossy(p),
                        String::from_utf8_lossy(&path)
                    ),
                    Expect::Abstract(p) => assert!(
                        abstract_ && &path == p,
                        "asked for abstract name {:?}, bound {:?} (abstract: {abstract_})",
                        String::from_utf8_lossy(p),
                        String::from_utf8_lossy(&path)
                    ),
                }
                Some(Target::Unix {
                    path,
                    abstract_,
                    tight: !u.has_tight || u.tight,
                })
            }
            VSOCK => {
                let cid = c_bytes((*a).u.vsock.cid).unwrap_or_default();
                assert!(
                    cid == b"1",
                    "SAFETY RULE BROKEN: vsock bound to CID {:?}",
                    String::from_utf8_lossy(cid)
                );
                None
            }
            t => panic!("a local address of type {t}"),
        }
    }
}

/// Where a client may connect: loopback or a unix socket we bound.
#[derive(Debug, Clone)]
pub enum Target {
    Inet(std::net::SocketAddr),
    Unix {
        path: Vec<u8>,
        abstract_: bool,
        tight: bool,
    },
}

impl Target {
    /// Connects without blocking (a full backlog fails rather than
    /// waits); None if the connection was refused or is not complete
    /// within 200 ms.
    pub fn connect(&self) -> Option<Client> {
        let (fd, storage, len) = match self {
            Target::Inet(sa) => {
                let loopback = match sa.ip() {
                    std::net::IpAddr::V4(v4) => v4.is_loopback(),
                    std::net::IpAddr::V6(v6) => {
                        v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|m| m.is_loopback())
                    }
                };
                assert!(loopback, "SAFETY RULE: connect to {sa}");
                let s = socket(
                    if sa.is_ipv4() {
                        libc::AF_INET
                    } else {
                        libc::AF_INET6
                    },
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
                );
                let (st, len) = sockaddr_inet(sa);
                (s, st, len)
            }
            Target::Unix {
                path,
                abstract_,
                tight,
            } => {
                let s = socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
                // SAFETY: all-zero is a valid sockaddr_storage.
                let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                // SAFETY: sockaddr_un fits in sockaddr_storage.
                let un = unsafe { &mut *ptr::addr_of_mut!(st).cast::<libc::sockaddr_un>() };
                un.sun_family = libc::AF_UNIX as libc::sa_family_t;
                let off = usize::from(*abstract_);
                let n = path.len().min(un.sun_path.len() - off);
                for (d, b) in un.sun_path[off..].iter_mut().zip(&path[..n]) {
                    *d = *b as libc::c_char;
                }
                let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
                // A path of the full 108 bytes has no room for a NUL.
                let len = if *abstract_ && !*tight {
                    size_of::<libc::sockaddr_un>()
                } else {
                    (base + off + n + usize::from(!*abstract_)).min(size_of::<libc::sockaddr_un>())
                };
                (s, st, len as libc::socklen_t)
            }
        };
        // SAFETY: storage holds a valid address of `len` bytes.
        let rc = unsafe { libc::connect(fd.as_raw_fd(), ptr::from_ref(&storage).cast(), len) };
        if rc == 0 {
            return Some(Client(fd));
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 200) } != 1 {
            return None;
        }
        let mut err: c_int = 0;
        let mut l = size_of::<c_int>() as libc::socklen_t;
        // SAFETY: err/l are valid out parameters of that size.
        unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                ptr::from_mut(&mut err).cast(),
                &mut l,
            );
        }
        (err == 0).then_some(Client(fd))
    }
}

fn sockaddr_inet(sa: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match sa {
        std::net::SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            let sin = unsafe { &mut *ptr::addr_of_mut!(st).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            let sin6 = unsafe { &mut *ptr::addr_of_mut!(st).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (st, len as libc::socklen_t)
}
