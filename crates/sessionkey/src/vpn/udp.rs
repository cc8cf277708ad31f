//! The UDP socket: dual-stack, with large buffers of its own (SO_RCVBUFFORCE when allowed,
//! so the machine's default 208 KiB does not drop bursts), batched receives (recvmmsg with
//! UDP GRO) and segmented sends (UDP GSO), through quinn-udp.
//!
//! The socket is non-blocking (quinn-udp's requirement); [`Udp::wait`] polls it with a
//! timeout so the data threads can notice a stop.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

/// Socket buffer size asked for, each way: room for about 20 ms at 10 Gbit/s.
const BUFFER_BYTES: usize = 32 << 20;

/// The VPN's UDP socket.
#[derive(Debug)]
pub(crate) struct Udp {
    socket: UdpSocket,
    state: UdpSocketState,
    v6: bool,
}

impl Udp {
    /// Bind `[::]:port` (dual-stack), else `0.0.0.0:port` where IPv6 is off; mark the
    /// socket's packets with `fwmark` if given (SO_MARK, for policy routing).
    pub(crate) fn bind(port: u16, fwmark: Option<u32>) -> io::Result<Self> {
        let socket = match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let holder = port_holder(port)
                    .map(|(pid, comm)| format!(" by {comm} (pid {pid})"))
                    .unwrap_or_default();
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "UDP port {port} is in use{holder}; stop what uses it \
                         (ss -lunp 'sport = :{port}') or set another listen_port"
                    ),
                ));
            }
            Err(_) => UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, port))?,
        };
        let v6 = socket.local_addr()?.is_ipv6();
        if let Some(mark) = fwmark {
            setsockopt(&socket.as_fd(), sockopt::Mark, &mark).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "cannot set fwmark {mark} on the UDP socket: {e} (needs CAP_NET_ADMIN)"
                    ),
                )
            })?;
        }
        // Root (CAP_NET_ADMIN) may exceed net.core.rmem_max; others get what the limit allows.
        let fd = socket.as_fd();
        if setsockopt(&fd, sockopt::RcvBufForce, &BUFFER_BYTES).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &BUFFER_BYTES);
        }
        if setsockopt(&fd, sockopt::SndBufForce, &BUFFER_BYTES).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &BUFFER_BYTES);
        }
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self { socket, state, v6 })
    }

    /// The port bound.
    pub(crate) fn port(&self) -> u16 {
        self.socket.local_addr().map_or(0, |a| a.port())
    }

    /// The receive buffer size the kernel granted (doubled by the kernel's accounting).
    pub(crate) fn recv_buffer(&self) -> usize {
        self.state
            .recv_buffer_size((&self.socket).into())
            .unwrap_or(0)
    }

    /// Segments one send may carry with GSO (1 without).
    pub(crate) fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Segments one receive may return with GRO (1 without).
    pub(crate) fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn map(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(a) if self.v6 => {
                SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
            }
            other => other,
        }
    }

    /// Wait up to `timeout` until the socket is readable (or writable).
    pub(crate) fn wait(&self, writable: bool, timeout: Duration) -> io::Result<()> {
        let flags = if writable {
            PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        };
        let mut fds = [PollFd::new(self.socket.as_fd(), flags)];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Receive a batch; `Ok(0)` when nothing is waiting. Sources come back as plain IPv4
    /// addresses, not IPv4-mapped IPv6 ones.
    pub(crate) fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        match self.state.recv((&self.socket).into(), bufs, meta) {
            Ok(n) => {
                for m in &mut meta[..n] {
                    m.addr = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Send `contents` to `to`: one datagram, or with `segment` several of that size (the
    /// last may be shorter) in one GSO send. Waits while the socket buffer is full, up to
    /// about a second, then drops (UDP's contract).
    pub(crate) fn send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let transmit = Transmit {
            destination: self.map(to),
            ecn: None,
            contents,
            segment_size: segment.filter(|s| *s < contents.len()),
            src_ip: None,
        };
        for _ in 0..100 {
            match self.state.try_send((&self.socket).into(), &transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.wait(true, Duration::from_millis(10));
                }
                Err(e) => {
                    // UDP gives no delivery promise: the peers' timers and TCP recover.
                    tracing::debug!("UDP send to {to} failed: {e}");
                    return;
                }
                Ok(()) => return,
            }
        }
    }
}

/// The process holding UDP port `port`, if /proc says (it shows other users' processes'
/// sockets only to root): the socket inode from /proc/net/udp{,6}, then the process with a
/// descriptor on it. Best effort, for the error message only.
fn port_holder(port: u16) -> Option<(u32, String)> {
    let inodes: Vec<String> = ["/proc/net/udp6", "/proc/net/udp"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    (u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| fields.get(9).map(|i| (*i).to_string()))
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .filter(|i| i != "0")
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if targets.iter().any(|t| link.as_os_str() == t.as_str()) {
                let comm = std::fs::read_to_string(proc_entry.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Some((pid, comm));
            }
        }
    }
    None
}

/// The most one GSO send carries: a UDP datagram's limit, less the headers.
const MAX_GSO_BYTES: usize = 65_000;

/// Packets sealed for sending, gathered into runs of equal size to one destination so each
/// run leaves in one GSO send. Holds one buffer, reused: no allocation per packet.
pub(crate) struct GsoBatch {
    buf: Vec<u8>,
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
    max_segments: usize,
    closed: bool,
}

impl GsoBatch {
    /// A batch of up to `max_segments` packets of at most `max_packet` bytes.
    pub(crate) fn new(max_segments: usize, max_packet: usize) -> Self {
        let max_segments = max_segments.clamp(1, 64);
        Self {
            buf: Vec::with_capacity(max_segments * max_packet),
            to: None,
            segment: 0,
            count: 0,
            max_segments,
            closed: false,
        }
    }

    /// Add a packet for `to`, sending what is gathered first if the packet cannot join it.
    pub(crate) fn push(&mut self, udp: &Udp, to: SocketAddr, packet: &[u8]) {
        let joins = self.count > 0
            && !self.closed
            && self.to == Some(to)
            && packet.len() <= self.segment
            && self.count < self.max_segments
            && self.buf.len() + packet.len() <= MAX_GSO_BYTES;
        if !joins {
            self.flush(udp);
            self.to = Some(to);
            self.segment = packet.len();
        }
        self.buf.extend_from_slice(packet);
        self.count += 1;
        // A shorter packet must be the run's last.
        if packet.len() < self.segment {
            self.closed = true;
        }
    }

    /// Send what is gathered.
    pub(crate) fn flush(&mut self, udp: &Udp) {
        if let (Some(to), true) = (self.to, self.count > 0) {
            udp.send(to, &self.buf, (self.count > 1).then_some(self.segment));
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}
