//! comet-net: how the parties talk.
//!
//! Every protocol in comet talks through the [`Channel`] trait: ordered, reliable, framed
//! messages between exactly two endpoints. Transports (in memory, TCP with mutual TLS) put the
//! same frames on the wire, count every byte and round in a [`CostMeter`] under scoped labels,
//! and can shape the link (bandwidth, latency).
//!
//! * [`memory_pair`] / [`memory_pair_shaped`]: two endpoints in one process.
//! * [`connect`], [`listen`] and [`Listener`]: TCP with mutual TLS 1.3 between roles of one
//!   deployment (keys from [`generate_keys`], loaded with [`TlsIdentity::load`]).
//! * [`NetProfile`]: `none`, `lan`, `wan`, `slow` or custom (`bw=1gbps,lat=5ms`), applied by
//!   the sending endpoint of either transport ([`shaping`] describes the link model).
//!
//! ```
//! use comet_net::{connect, Channel, ChannelExt, Deployment, Listener, NetProfile, TcpOptions};
//!
//! let keys = Deployment::generate(&["p0", "p1"])?; // or TlsIdentity::load(dir, "p0")
//! let opts = TcpOptions::default().with_profile("lan".parse::<NetProfile>()?);
//! let listener = Listener::bind("127.0.0.1:0", &keys.identity("p0")?, opts)?;
//! let addr = listener.local_addr();
//! let p1_id = keys.identity("p1")?;
//! let p1 = std::thread::spawn(move || -> Result<Vec<u8>, comet_net::NetError> {
//!     connect(addr, &p1_id, "p0", opts)?.exchange(b"from p1")
//! });
//! let mut p0 = listener.accept(&["p1"])?;
//! assert_eq!(p0.peer_role(), "p1");
//! assert_eq!(p0.exchange(b"from p0")?, b"from p1");
//! assert_eq!(p1.join().unwrap()?, b"from p0");
//! assert_eq!(p0.meter().total().rounds, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;
pub mod error;
pub mod frame;
pub mod memory;
pub mod meter;
pub mod shaping;
pub mod tcp;
pub mod tls;

pub use error::NetError;
pub use memory::{memory_pair, memory_pair_shaped, MemoryChannel};
pub use meter::{CostMeter, Costs, ScopeGuard};
pub use shaping::{LinkShaper, NetProfile, ParseProfileError};
pub use tcp::{connect, listen, Listener, TcpChannel, TcpOptions};
pub use tls::{generate_keys, Deployment, TlsIdentity, DEFAULT_ROLES};

use std::time::Duration;

/// Default time a receive waits for the peer before failing with [`NetError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// An ordered, reliable, framed, two-endpoint message link.
///
/// `send` may buffer; `flush` pushes everything buffered to the peer. A *round* is counted
/// when a `recv` follows a `flush` (DESIGN.md §8).
pub trait Channel: Send {
    /// Queues one message for the peer.
    fn send(&mut self, msg: &[u8]) -> Result<(), NetError>;
    /// Delivers all queued messages to the peer.
    fn flush(&mut self) -> Result<(), NetError>;
    /// Waits (up to the channel's timeout) for the peer's next message.
    fn recv(&mut self) -> Result<Vec<u8>, NetError>;
    /// The meter that counts this channel's traffic.
    fn meter(&self) -> &CostMeter;
}

impl<C: Channel + ?Sized> Channel for Box<C> {
    fn send(&mut self, msg: &[u8]) -> Result<(), NetError> {
        (**self).send(msg)
    }
    fn flush(&mut self) -> Result<(), NetError> {
        (**self).flush()
    }
    fn recv(&mut self) -> Result<Vec<u8>, NetError> {
        (**self).recv()
    }
    fn meter(&self) -> &CostMeter {
        (**self).meter()
    }
}

/// Convenience operations on any channel.
pub trait ChannelExt: Channel {
    /// Sends, flushes and receives: one symmetric exchange (one round).
    fn exchange(&mut self, msg: &[u8]) -> Result<Vec<u8>, NetError> {
        self.send(msg)?;
        self.flush()?;
        self.recv()
    }

    /// Exchanges ring elements reduced to `bits` bits, packed on the wire; returns the
    /// peer's `n` elements.
    fn exchange_ring(&mut self, values: &[u64], bits: u32) -> Result<Vec<u64>, NetError> {
        let reply = self.exchange(&codec::pack_ring(values, bits))?;
        codec::unpack_ring(&reply, values.len(), bits)
    }
}

impl<C: Channel + ?Sized> ChannelExt for C {}
