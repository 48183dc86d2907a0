//! The kernel's socket addresses (`sockaddr_storage`) and their
//! conversion to and from `SocketAddress`.

use std::{
    ffi::{c_char, c_int},
    mem::{size_of, zeroed},
    os::fd::RawFd,
    ptr,
};

use libc::{sockaddr_storage, socklen_t};

use super::{new_address, text, AddrBox, Result};
use crate::{
    error::{errno, ErrorImpl},
    sys,
    util::{g_strdup, g_strdup_bytes},
};

/// A socket address in the kernel's format.
#[derive(Clone, Copy)]
pub struct SockAddr {
    pub(crate) storage: sockaddr_storage,
    pub(crate) len: socklen_t,
}

impl SockAddr {
    pub(super) fn empty() -> Self {
        SockAddr {
            // SAFETY: all-zero is a valid sockaddr_storage.
            storage: unsafe { zeroed() },
            len: size_of::<sockaddr_storage>() as socklen_t,
        }
    }

    pub(super) fn as_ptr(&self) -> *const libc::sockaddr {
        ptr::addr_of!(self.storage).cast()
    }

    pub(super) fn family(&self) -> c_int {
        c_int::from(self.storage.ss_family)
    }

    pub(super) fn set_port(&mut self, port: u16) {
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
    pub(super) fn unix(path: &[u8], abstract_: bool, tight: bool) -> Option<Self> {
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

    pub(super) fn vsock(cid: u32, port: u32) -> Self {
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
    pub(super) fn numeric(&self) -> std::result::Result<(String, String), c_int> {
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

    /// QEMU's `socket_sockaddr_to_address()`.
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
                    u.path = g_strdup_bytes(&bytes[1..]);
                    (u.has_abstract, u.abstract_) = (true, true);
                    (u.has_tight, u.tight) = (true, n < un.sun_path.len());
                } else {
                    let end = bytes.iter().position(|&b| b == 0).unwrap_or(n);
                    u.path = g_strdup_bytes(&bytes[..end]);
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

pub(super) fn gai_error(rc: c_int) -> String {
    if rc == libc::EAI_SYSTEM {
        return crate::error::strerror(errno());
    }
    // SAFETY: gai_strerror returns a static string for any code.
    unsafe { text(libc::gai_strerror(rc)) }
}

/// `getsockname()` or `getpeername()` of `fd`.  Inlined, so each caller
/// calls its function directly.
#[inline(always)]
fn query(
    fd: RawFd,
    call: unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut socklen_t) -> c_int,
) -> std::result::Result<SockAddr, c_int> {
    let mut s = SockAddr::empty();
    // SAFETY: the storage and length are valid out parameters.
    if unsafe { call(fd, ptr::addr_of_mut!(s.storage).cast(), &mut s.len) } < 0 {
        return Err(errno());
    }
    Ok(s)
}

pub fn local_sockaddr(fd: RawFd) -> std::result::Result<SockAddr, c_int> {
    query(fd, libc::getsockname)
}

pub fn remote_sockaddr(fd: RawFd) -> std::result::Result<SockAddr, c_int> {
    query(fd, libc::getpeername)
}

pub(super) fn vsock_sockaddr(a: &sys::VsockSocketAddress) -> Result<(SockAddr, String)> {
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
