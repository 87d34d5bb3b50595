//! comet-net: how the parties talk.
//!
//! Every protocol in comet talks through the [`Channel`] trait: ordered, reliable, framed
//! messages between exactly two endpoints. Transports (in memory, TCP with mutual TLS) put the
//! same frames on the wire, count every byte and round in a [`CostMeter`] under scoped labels,
//! and can shape the link (bandwidth, latency).

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
