//! Dropping root once the VPN is set up (docs/VPN.md, "Privileges"), as boringtun does by
//! default: the TUN device, the UDP socket (with its forced buffer sizes and fwmark), the
//! routes and the control socket need CAP_NET_ADMIN or root to create; afterwards the
//! process only reads and writes descriptors it holds, so it becomes an unprivileged user
//! (`user`, default `nobody`) and a compromise of the packet path gets no root.
//!
//! Becoming another user clears every capability (capabilities(7): a change from uid 0 to
//! all-nonzero uids clears the permitted, effective and ambient sets), and glibc applies
//! setuid to every thread of the process. The check afterwards proves root cannot be
//! regained.

use nix::unistd::{getgid, getuid, setgid, setgroups, setuid, Uid, User};

use super::VpnError;

/// What the process runs as after [`drop_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// `user = "root"`: nothing dropped.
    KeptRoot,
    /// Not root to begin with (capabilities from systemd's AmbientCapabilities, say):
    /// nothing to drop by changing user.
    NotRoot,
    /// Now this user.
    To {
        /// The name.
        user: String,
        /// Its uid.
        uid: u32,
    },
}

fn fail(user: &str, what: &str, e: impl std::fmt::Display) -> VpnError {
    VpnError::Privileges(format!(
        "cannot become user {user}: {what}: {e}; set user = \"root\" in [interface] to keep \
         root (not recommended)"
    ))
}

/// Become `user` (its uid, its primary group, no supplementary groups), unless it is
/// `root` or the process is not root.
pub(crate) fn drop_to(user: &str) -> Result<Dropped, VpnError> {
    if user == "root" {
        return Ok(Dropped::KeptRoot);
    }
    if !getuid().is_root() {
        return Ok(Dropped::NotRoot);
    }
    let entry = User::from_name(user)
        .map_err(|e| fail(user, "looking it up", e))?
        .ok_or_else(|| {
            VpnError::Privileges(format!(
                "no user {user} on this system: create it (useradd --system {user}) or set \
                 user in [interface] to an existing one"
            ))
        })?;
    if entry.uid.is_root() {
        return Ok(Dropped::KeptRoot);
    }
    setgroups(&[entry.gid]).map_err(|e| fail(user, "setgroups", e))?;
    setgid(entry.gid).map_err(|e| fail(user, "setgid", e))?;
    setuid(entry.uid).map_err(|e| fail(user, "setuid", e))?;
    // Root must be gone for good.
    if getuid() != entry.uid || getgid() != entry.gid || setuid(Uid::from_raw(0)).is_ok() {
        return Err(VpnError::Privileges(format!(
            "became user {user} but root can still be regained; stopping"
        )));
    }
    Ok(Dropped::To {
        user: user.to_string(),
        uid: entry.uid.as_raw(),
    })
}
