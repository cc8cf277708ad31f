//! The TUN interface, through tun-rs: created with its addresses and MTU, with the kernel's
//! TCP/UDP segmentation offloads when asked (virtio-net headers: one read returns up to 64 KiB
//! of TCP segments, one write takes coalesced segments). Removed when dropped: the device is
//! not persistent, so closing it deletes the interface.

use std::io;
use std::net::IpAddr;

use sessionkey_proto::vpn::Cidr;
use tun_rs::{DeviceBuilder, SyncDevice};

/// Room tun-rs needs in front of each packet it writes (the virtio-net header).
pub(crate) const VNET_HDR_LEN: usize = tun_rs::VIRTIO_NET_HDR_LEN;
/// Packets tun-rs returns from one offloaded read, at most.
pub(crate) const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;

/// Why the interface could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// Creating a TUN device needs CAP_NET_ADMIN.
    #[error(
        "no permission to create the TUN interface {name}: run vpn up as root, or from a \
         systemd unit with AmbientCapabilities=CAP_NET_ADMIN (docs/VPN.md, Privileges); do \
         not setcap the binary: that gives every local user the capability"
    )]
    Permission {
        /// The interface name.
        name: String,
    },
    /// /dev/net/tun is missing.
    #[error(
        "cannot create the TUN interface {name}: /dev/net/tun is missing; load the module \
         with: modprobe tun (in a container, pass the device through: --device /dev/net/tun)"
    )]
    NoDevice {
        /// The interface name.
        name: String,
    },
    /// The name is taken.
    #[error(
        "the interface {name} already exists; stop the VPN using it (sessionkey vpn down \
         {name}) or choose another name"
    )]
    Busy {
        /// The interface name.
        name: String,
    },
    /// Anything else.
    #[error("cannot create the TUN interface {name}: {source}")]
    Other {
        /// The interface name.
        name: String,
        /// The cause.
        source: io::Error,
    },
}

fn classify(name: &str, e: io::Error) -> TunError {
    let name = name.to_string();
    match e.raw_os_error() {
        Some(nix::libc::EPERM) | Some(nix::libc::EACCES) => TunError::Permission { name },
        Some(nix::libc::ENOENT) | Some(nix::libc::ENODEV) | Some(nix::libc::ENXIO) => {
            TunError::NoDevice { name }
        }
        Some(nix::libc::EBUSY) | Some(nix::libc::EEXIST) => TunError::Busy { name },
        _ if e.kind() == io::ErrorKind::PermissionDenied => TunError::Permission { name },
        _ => TunError::Other { name, source: e },
    }
}

/// Create the interface `name`, up, with `addresses` and `mtu`; with offloads if `offload`
/// (falls back to plain reads and writes if the kernel refuses them).
pub(crate) fn create(
    name: &str,
    addresses: &[Cidr],
    mtu: u16,
    offload: bool,
) -> Result<SyncDevice, TunError> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(TunError::NoDevice {
            name: name.to_string(),
        });
    }
    let build = |offload: bool| {
        let mut b = DeviceBuilder::new().name(name).mtu(mtu).offload(offload);
        // The builder takes one IPv4 address; further ones are added after creation.
        let first_v4 = addresses.iter().find_map(|a| match a.addr() {
            IpAddr::V4(v4) => Some((v4, a.prefix())),
            IpAddr::V6(_) => None,
        });
        if let Some((v4, prefix)) = first_v4 {
            b = b.ipv4(v4, prefix, None);
        }
        let v6: Vec<_> = addresses
            .iter()
            .filter_map(|a| match a.addr() {
                IpAddr::V6(v6) => Some((v6, a.prefix())),
                IpAddr::V4(_) => None,
            })
            .collect();
        if !v6.is_empty() {
            b = b.ipv6_tuple(&v6);
        }
        b.build_sync()
    };
    let device = match build(offload) {
        Ok(d) => d,
        Err(e) if offload && e.raw_os_error() == Some(nix::libc::EINVAL) => {
            build(false).map_err(|e| classify(name, e))?
        }
        Err(e) => return Err(classify(name, e)),
    };
    // More IPv4 addresses than the first.
    let mut v4 = addresses.iter().filter(|a| a.addr().is_ipv4()).skip(1);
    for a in &mut v4 {
        if let IpAddr::V4(addr) = a.addr() {
            device
                .add_address_v4(addr, a.prefix())
                .map_err(|e| classify(name, e))?;
        }
    }
    Ok(device)
}
