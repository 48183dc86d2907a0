//! Target `socket_parse`: the compat host's parser of QEMU's address
//! syntax (`HOST:PORT[,opts]`, `tcp:`, `unix:PATH[,abstract][,tight]`,
//! `vsock:CID:PORT`, `fd:N`) on arbitrary bytes.
//!
//! Checked: success XOR a clear error; a parsed address is well formed;
//! the text it gives back (`socket_uri`) parses to the same text; and the
//! parsed strings are the input's own bytes (nothing re-encoded).  Nothing
//! is resolved, bound or connected.

use std::{ffi::CString, ptr};

use qemucompat::sys;

use crate::support::{c_bytes, take_error};

const INET: u32 = sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET;
const UNIX: u32 = sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX;
const VSOCK: u32 = sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK;
const FD: u32 = sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD;

/// An address from `socket_parse`, freed on drop.
struct Parsed(*mut sys::SocketAddress);

impl Drop for Parsed {
    fn drop(&mut self) {
        // SAFETY: we own the address.
        unsafe { sys::qapi_free_SocketAddress(self.0) }
    }
}

/// `socket_parse(text)`: the address, or the error's message.
fn parse(text: &CString) -> Result<Parsed, String> {
    let mut err = ptr::null_mut();
    // SAFETY: a C string and an out parameter.
    let a = unsafe { sys::socket_parse(text.as_ptr(), &mut err) };
    let msg = take_error(&mut err);
    match (a.is_null(), msg) {
        (false, None) => Ok(Parsed(a)),
        (true, Some(m)) => Err(m),
        (true, None) => panic!("socket_parse({text:?}) failed without an error"),
        (false, Some(m)) => panic!("socket_parse({text:?}) succeeded with an error: {m}"),
    }
}

fn uri(a: &Parsed) -> Vec<u8> {
    // SAFETY: a valid address; the string is ours to free.
    unsafe {
        let s = sys::socket_uri(a.0);
        assert!(!s.is_null(), "socket_uri returned NULL");
        let v = c_bytes(s).unwrap_or_default().to_vec();
        sys::g_free(s.cast());
        v
    }
}

/// The strings of a parsed address, by type; panics on a malformed one.
fn fields(a: &Parsed) -> (u32, Vec<&[u8]>) {
    // SAFETY: a valid address: the tag selects the union member, whose
    // strings are NULL or NUL-terminated.
    unsafe {
        let t = (*a.0).type_;
        let strs = match t {
            INET => vec![(*a.0).u.inet.host, (*a.0).u.inet.port],
            UNIX => vec![(*a.0).u.q_unix.path],
            VSOCK => vec![(*a.0).u.vsock.cid, (*a.0).u.vsock.port],
            FD => vec![(*a.0).u.fd.str_],
            _ => panic!("socket_parse gave address type {t}"),
        };
        let strs = strs
            .into_iter()
            .map(|p| c_bytes(p).unwrap_or_else(|| panic!("type {t}: a NULL string")))
            .collect();
        (t, strs)
    }
}

/// Where `needle` occurs in `hay` (empty: everywhere).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

pub fn run(data: &[u8]) {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let input = &data[..end];
    let text = CString::new(input).expect("no interior NUL");
    let Ok(a) = parse(&text) else { return };
    let (t, strs) = fields(&a);
    // The parser only cuts the input into pieces: every string it
    // returns is a piece of the input, byte for byte.
    for s in &strs {
        assert!(
            contains(input, s),
            "socket_parse({text:?}): {:?} is not part of the input",
            String::from_utf8_lossy(s)
        );
    }
    if t == UNIX && !input.contains(&b',') {
        assert_eq!(strs[0], &input[5..], "socket_parse({text:?}): unix path");
    }
    if t == FD {
        assert_eq!(strs[0], &input[3..], "socket_parse({text:?}): fd name");
    }
    // What socket_uri() gives back parses, to the same text.
    let u = uri(&a);
    let u_text = CString::new(u.clone()).expect("socket_uri has no interior NUL");
    match parse(&u_text) {
        Ok(b) => {
            let (t2, _) = fields(&b);
            assert_eq!(
                t, t2,
                "socket_parse({u_text:?}) from {text:?}: another type"
            );
            assert_eq!(
                uri(&b),
                u,
                "socket_uri of socket_parse({u_text:?}) (from {text:?}) differs"
            );
        }
        Err(m) => panic!("socket_uri of socket_parse({text:?}) is {u_text:?}, which fails: {m}"),
    }
}
