//! User names for uids, from the host's user database (`getpwuid_r`: `/etc/passwd`, and
//! LDAP or sssd where NSS is set up so).
//!
//! Invariants: a lookup can block (NSS may ask a server), so it is only ever made on the
//! refresher's thread ([`UserNames::resolve`]), never on the capture thread or a tokio
//! worker; queries read what is cached ([`UserNames::name`]) and get `None` for a uid not
//! resolved yet. A uid the database does not know is remembered as such. At most
//! [`MAX_USERS`] uids are cached; beyond, the cache starts again.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Uids remembered at once.
pub const MAX_USERS: usize = 65_536;

/// See the module doc. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct UserNames {
    names: Arc<Mutex<HashMap<u32, Option<Arc<str>>>>>,
}

impl UserNames {
    fn inner(&self) -> MutexGuard<'_, HashMap<u32, Option<Arc<str>>>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached name of `uid`; `None` when unknown or not resolved yet. Never blocks on
    /// the user database.
    pub fn name(&self, uid: u32) -> Option<Arc<str>> {
        self.inner().get(&uid).cloned().flatten()
    }

    /// Looks up every uid of `uids` not cached yet (blocking: call it on the refresher's
    /// thread only).
    pub fn resolve(&self, uids: impl IntoIterator<Item = u32>) {
        let missing: Vec<u32> = {
            let names = self.inner();
            uids.into_iter()
                .filter(|u| !names.contains_key(u))
                .collect()
        };
        for uid in missing {
            let name = lookup(uid).map(Arc::from);
            let mut names = self.inner();
            if names.len() >= MAX_USERS {
                names.clear();
            }
            names.insert(uid, name);
        }
    }
}

/// The user database's name for `uid`, if it has one.
fn lookup(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids); it is only read
        // after getpwuid_r filled it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `pwd`, `buf` and `result` outlive the call; `buf.len()` is its size.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named_and_an_unused_uid_is_not() {
        let users = UserNames::default();
        assert_eq!(users.name(0), None, "nothing before resolve");
        users.resolve([0, 4_000_000_000]);
        assert_eq!(users.name(0).as_deref(), Some("root"));
        assert_eq!(users.name(4_000_000_000), None);
        assert_eq!(users.inner().len(), 2, "the unknown uid is remembered too");
    }
}
