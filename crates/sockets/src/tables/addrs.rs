//! The addresses of this network namespace's interfaces, from `getifaddrs(3)`.
//!
//! Invariants: `freeifaddrs` is called exactly once for every successful `getifaddrs`, also on
//! panic (a drop guard owns the list). Only `AF_INET` and `AF_INET6` entries are read; the
//! pointers are dereferenced only while the list is alive.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ptr;

use crate::error::{Error, Result};

/// Owns the list returned by `getifaddrs`; frees it on drop.
struct IfAddrs(*mut libc::ifaddrs);

impl Drop for IfAddrs {
    fn drop(&mut self) {
        // SAFETY: self.0 came from a successful getifaddrs and is freed only here.
        unsafe { libc::freeifaddrs(self.0) }
    }
}

/// Every IPv4 and IPv6 address of every interface of the calling thread's network namespace
/// (up or down), without duplicates, in the kernel's order. IPv6 link-local addresses are
/// included, without their scope.
pub fn local_addresses() -> Result<Vec<IpAddr>> {
    let list = get_ifaddrs()?;
    let mut out: Vec<IpAddr> = Vec::new();
    let mut cursor = list.0;
    while !cursor.is_null() {
        // SAFETY: cursor is a node of the live list owned by `list`.
        let node = unsafe { &*cursor };
        // SAFETY: ifa_addr is null or points to a sockaddr of the family it declares.
        if let Some(ip) = unsafe { ip_of(node.ifa_addr) } {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        cursor = node.ifa_next;
    }
    Ok(out)
}

fn get_ifaddrs() -> Result<IfAddrs> {
    let mut head: *mut libc::ifaddrs = ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head` on success.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        let source = io::Error::last_os_error();
        return Err(Error::Io {
            path: "getifaddrs".into(),
            source,
        });
    }
    Ok(IfAddrs(head))
}

/// The IP address in `addr`, if it is an IPv4 or IPv6 socket address.
///
/// # Safety
/// `addr` is null or points to a valid socket address whose length fits its `sa_family`.
unsafe fn ip_of(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: addr is non-null and valid per the contract; the family says which struct it is.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let sin = &*addr.cast::<libc::sockaddr_in>();
                Some(IpAddr::V4(Ipv4Addr::from(
                    sin.sin_addr.s_addr.to_ne_bytes(),
                )))
            }
            libc::AF_INET6 => {
                let sin6 = &*addr.cast::<libc::sockaddr_in6>();
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}
