//! In-memory transport: two endpoints in one process, exchanging the same frames a TCP link
//! would carry.
//!
//! Shaping ([`NetProfile`]): each flushed chunk is stamped by the sender's [`LinkShaper`] with
//! the instant it may be read, and the receiver sleeps until then. The sender never waits.

use crate::shaping::{sleep_until, LinkShaper, NetProfile};
use crate::{frame, Channel, CostMeter, NetError, DEFAULT_TIMEOUT};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// A flushed chunk of frames and the instant the receiver may read it.
type Chunk = (Instant, Vec<u8>);

/// One endpoint of an in-memory link.
pub struct MemoryChannel {
    tx: Sender<Chunk>,
    rx: Receiver<Chunk>,
    pending: Vec<u8>,
    inbox: Vec<u8>,
    timeout: Duration,
    shaper: LinkShaper,
    meter: CostMeter,
}

impl std::fmt::Debug for MemoryChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryChannel")
            .field("timeout", &self.timeout)
            .field("profile", &self.shaper.profile())
            .finish_non_exhaustive()
    }
}

/// Creates a connected pair of in-memory endpoints with the default timeout and no shaping.
pub fn memory_pair() -> (MemoryChannel, MemoryChannel) {
    let (tx_a, rx_b) = mpsc::channel();
    let (tx_b, rx_a) = mpsc::channel();
    let make = |tx, rx| MemoryChannel {
        tx,
        rx,
        pending: Vec::new(),
        inbox: Vec::new(),
        timeout: DEFAULT_TIMEOUT,
        shaper: LinkShaper::new(NetProfile::none()),
        meter: CostMeter::new(),
    };
    (make(tx_a, rx_a), make(tx_b, rx_b))
}

/// Creates a connected pair of in-memory endpoints whose two directions are each shaped by
/// `profile` (bandwidth and latency per direction, as on a full-duplex link).
pub fn memory_pair_shaped(profile: NetProfile) -> (MemoryChannel, MemoryChannel) {
    let (a, b) = memory_pair();
    (a.with_profile(profile), b.with_profile(profile))
}

impl MemoryChannel {
    /// Sets how long `recv` waits for the peer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Shapes what this endpoint sends (the peer's direction is shaped by the peer's own
    /// profile); see [`memory_pair_shaped`] for both at once.
    pub fn with_profile(mut self, profile: NetProfile) -> Self {
        self.shaper = LinkShaper::new(profile);
        self
    }

    /// The profile applied to what this endpoint sends.
    pub fn profile(&self) -> NetProfile {
        self.shaper.profile()
    }

    /// Sends raw bytes that bypass framing (for fault-injection tests).
    pub fn send_raw_for_test(&mut self, bytes: Vec<u8>) -> Result<(), NetError> {
        let at = self.shaper.schedule(bytes.len());
        self.tx
            .send((at, bytes))
            .map_err(|_| NetError::Closed(String::new()))
    }

    fn pull(&mut self) -> Result<(), NetError> {
        match self.rx.recv_timeout(self.timeout) {
            Ok((deliver_at, chunk)) => {
                sleep_until(deliver_at);
                self.inbox.extend_from_slice(&chunk);
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Err(NetError::Timeout(self.timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                if self.inbox.is_empty() {
                    Err(NetError::Closed(String::new()))
                } else {
                    Err(NetError::Malformed(format!(
                        "truncated frame: peer closed after {} bytes of an incomplete frame",
                        self.inbox.len()
                    )))
                }
            }
        }
    }
}

impl Channel for MemoryChannel {
    fn send(&mut self, msg: &[u8]) -> Result<(), NetError> {
        frame::encode_into(msg, &mut self.pending);
        self.meter.record_send(frame::HEADER_LEN + msg.len());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), NetError> {
        self.meter.record_flush();
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.pending);
        let at = self.shaper.schedule(chunk.len());
        self.tx
            .send((at, chunk))
            .map_err(|_| NetError::Closed(String::new()))
    }

    fn recv(&mut self) -> Result<Vec<u8>, NetError> {
        while self.inbox.len() < frame::HEADER_LEN {
            self.pull()?;
        }
        let header: [u8; frame::HEADER_LEN] = self.inbox[..frame::HEADER_LEN]
            .try_into()
            .expect("length checked");
        let len = frame::parse_header(&header, frame::MAX_FRAME)?;
        while self.inbox.len() < frame::HEADER_LEN + len {
            self.pull()?;
        }
        let payload = self.inbox[frame::HEADER_LEN..frame::HEADER_LEN + len].to_vec();
        self.inbox.drain(..frame::HEADER_LEN + len);
        self.meter.record_recv(frame::HEADER_LEN + len);
        Ok(payload)
    }

    fn meter(&self) -> &CostMeter {
        &self.meter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChannelExt;

    #[test]
    fn exchange_counts_one_round_each() {
        let (mut a, mut b) = memory_pair();
        let t = std::thread::spawn(move || {
            let got = b.exchange(b"pong").unwrap();
            (got, b.meter().total())
        });
        assert_eq!(a.exchange(b"ping!").unwrap(), b"pong");
        let (got, costs_b) = t.join().unwrap();
        assert_eq!(got, b"ping!");
        assert_eq!(a.meter().total().rounds, 1);
        assert_eq!(costs_b.rounds, 1);
        assert_eq!(a.meter().total().bytes_sent, 10);
        assert_eq!(costs_b.bytes_sent, 9);
    }

    #[test]
    fn peer_gone_is_closed_not_hang() {
        let (mut a, b) = memory_pair();
        drop(b);
        assert!(matches!(a.recv(), Err(NetError::Closed(_))));
        assert!(matches!(
            a.send(b"x").and_then(|_| a.flush()),
            Err(NetError::Closed(_))
        ));
    }

    #[test]
    fn silent_peer_times_out() {
        let (a, _b) = memory_pair();
        let mut a = a.with_timeout(Duration::from_millis(50));
        assert!(matches!(a.recv(), Err(NetError::Timeout(_))));
    }

    #[test]
    fn truncated_and_wrong_version_frames_are_errors() {
        let (mut a, mut b) = memory_pair();
        b.send_raw_for_test(vec![frame::PROTOCOL_VERSION, 10, 0, 0, 0, 1, 2])
            .unwrap();
        drop(b);
        assert!(matches!(a.recv(), Err(NetError::Malformed(_))));
        let (mut a, mut b) = memory_pair();
        b.send_raw_for_test(vec![42, 0, 0, 0, 0]).unwrap();
        assert!(matches!(a.recv(), Err(NetError::Version { got: 42, .. })));
        let (mut a, mut b) = memory_pair();
        let len = (frame::MAX_FRAME as u32 + 1).to_le_bytes();
        b.send_raw_for_test(vec![
            frame::PROTOCOL_VERSION,
            len[0],
            len[1],
            len[2],
            len[3],
        ])
        .unwrap();
        assert!(matches!(a.recv(), Err(NetError::TooLarge { .. })));
    }

    #[test]
    fn shaped_data_sent_before_a_close_still_arrives_late() {
        let profile: NetProfile = "lat=30ms".parse().unwrap();
        let (mut a, b) = memory_pair_shaped(profile);
        let start = Instant::now();
        let mut b = b;
        b.send(b"last words").unwrap();
        b.flush().unwrap();
        drop(b);
        assert_eq!(a.recv().unwrap(), b"last words");
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(matches!(a.recv(), Err(NetError::Closed(_))));
    }
}
