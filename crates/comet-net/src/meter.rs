//! Byte and round accounting under scoped labels.
//!
//! Each channel endpoint owns a [`CostMeter`]. Protocol code opens scopes
//! (`let _s = meter.scope("layer.3"); let _t = meter.scope("ffn");`) and every byte sent or
//! received, and every round, is added to the innermost full label (`layer.3/ffn`).

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Costs accumulated under one label (or in total).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Costs {
    /// Bytes this endpoint put on the wire, frame headers included.
    pub bytes_sent: u64,
    /// Bytes this endpoint took off the wire, frame headers included.
    pub bytes_received: u64,
    /// Rounds: receives that followed a flush.
    pub rounds: u64,
    /// Messages (frames) sent.
    pub messages: u64,
}

impl Costs {
    /// Adds another cost record to this one.
    pub fn add(&mut self, other: &Costs) {
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.rounds += other.rounds;
        self.messages += other.messages;
    }

    /// `self - earlier`, for measuring a span between two snapshots.
    pub fn since(&self, earlier: &Costs) -> Costs {
        Costs {
            bytes_sent: self.bytes_sent - earlier.bytes_sent,
            bytes_received: self.bytes_received - earlier.bytes_received,
            rounds: self.rounds - earlier.rounds,
            messages: self.messages - earlier.messages,
        }
    }
}

#[derive(Debug, Default)]
struct MeterState {
    labels: Vec<String>,
    by_label: BTreeMap<String, Costs>,
    total: Costs,
    flushed_since_recv: bool,
    unflushed: bool,
}

impl MeterState {
    fn current(&mut self) -> &mut Costs {
        let key = self.labels.join("/");
        self.by_label.entry(key).or_default()
    }
}

/// Shared, cloneable cost counter of one channel endpoint.
#[derive(Clone, Debug, Default)]
pub struct CostMeter {
    state: Arc<Mutex<MeterState>>,
}

/// Pops its label from the meter when dropped.
#[must_use = "the scope ends when the guard is dropped"]
#[derive(Debug)]
pub struct ScopeGuard {
    meter: CostMeter,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        self.meter.lock().labels.pop();
    }
}

impl CostMeter {
    /// A fresh meter with no costs.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MeterState> {
        // A poisoned meter only means another thread panicked while counting; the counts
        // themselves are still consistent integers.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a nested label; costs go to it until the guard is dropped.
    pub fn scope(&self, label: impl Into<String>) -> ScopeGuard {
        self.lock().labels.push(label.into());
        ScopeGuard {
            meter: self.clone(),
        }
    }

    /// The current full label (`a/b/c`), empty at top level.
    pub fn current_label(&self) -> String {
        self.lock().labels.join("/")
    }

    /// Records a frame of `bytes` bytes sent.
    pub fn record_send(&self, bytes: usize) {
        let mut s = self.lock();
        s.unflushed = true;
        s.total.bytes_sent += bytes as u64;
        s.total.messages += 1;
        let c = s.current();
        c.bytes_sent += bytes as u64;
        c.messages += 1;
    }

    /// Records a flush; a later receive then completes a round.
    pub fn record_flush(&self) {
        let mut s = self.lock();
        if s.unflushed {
            s.flushed_since_recv = true;
            s.unflushed = false;
        }
    }

    /// Records a frame of `bytes` bytes received.
    pub fn record_recv(&self, bytes: usize) {
        let mut s = self.lock();
        let round = std::mem::take(&mut s.flushed_since_recv);
        s.total.bytes_received += bytes as u64;
        s.total.rounds += round as u64;
        let c = s.current();
        c.bytes_received += bytes as u64;
        c.rounds += round as u64;
    }

    /// Costs since the meter was created.
    pub fn total(&self) -> Costs {
        self.lock().total
    }

    /// Costs per full label.
    pub fn by_label(&self) -> BTreeMap<String, Costs> {
        self.lock().by_label.clone()
    }

    /// Sum of the costs of every label equal to `prefix` or below it.
    pub fn under(&self, prefix: &str) -> Costs {
        let s = self.lock();
        let mut sum = Costs::default();
        for (label, c) in &s.by_label {
            if label == prefix || label.starts_with(&format!("{prefix}/")) {
                sum.add(c);
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_rounds() {
        let m = CostMeter::new();
        {
            let _a = m.scope("layer.0");
            let _b = m.scope("ffn");
            m.record_send(10);
            m.record_flush();
            m.record_recv(10);
            // A receive without a preceding flush is not a new round.
            m.record_recv(3);
            assert_eq!(m.current_label(), "layer.0/ffn");
        }
        m.record_send(1);
        m.record_flush();
        m.record_recv(1);
        let by = m.by_label();
        assert_eq!(
            by["layer.0/ffn"],
            Costs {
                bytes_sent: 10,
                bytes_received: 13,
                rounds: 1,
                messages: 1
            }
        );
        assert_eq!(by[""].rounds, 1);
        assert_eq!(m.total().rounds, 2);
        assert_eq!(m.under("layer.0").bytes_received, 13);
        assert_eq!(m.current_label(), "");
    }
}
