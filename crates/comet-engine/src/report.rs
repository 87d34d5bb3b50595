//! Cost report (DESIGN.md §8): wall time, online bytes, offline bytes and rounds per step
//! (prefill, each decode token), broken down per layer and per op label.
//!
//! Bytes are what both servers *sent* (each byte on a link is sent by one side), so the
//! online figure of a step is P0's plus P1's sent bytes on their link, and the offline figure
//! is the requests plus the halves on both servers' dealer links. The client's links (masked
//! one-hots out, logit shares back) are their own line. Rounds are P0's (both servers see
//! the same rounds).

use comet_dealer::{CorrelationSource, DealerError};
use comet_net::{CostMeter, Costs};
use comet_protocols::Party;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Total time a server spent waiting for correlations (in one process this includes the
/// dealer's generation of FSS keys, which a deployment does ahead of time).
#[derive(Clone, Debug, Default)]
pub struct DealerClock(Arc<AtomicU64>);

impl DealerClock {
    /// Milliseconds spent in correlation requests so far.
    pub fn millis(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// A correlation source that measures the time spent in its requests.
pub struct TimedSource {
    inner: Box<dyn CorrelationSource>,
    clock: DealerClock,
}

impl TimedSource {
    /// Wraps `inner`; the returned clock reads the accumulated time.
    pub fn new(inner: Box<dyn CorrelationSource>) -> (Self, DealerClock) {
        let clock = DealerClock::default();
        (
            Self {
                inner,
                clock: clock.clone(),
            },
            clock,
        )
    }
}

impl CorrelationSource for TimedSource {
    fn fetch_raw(&mut self, request: &[u8]) -> Result<Vec<u8>, DealerError> {
        let start = std::time::Instant::now();
        let out = self.inner.fetch_raw(request);
        self.clock
            .0
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    fn meter(&self) -> &CostMeter {
        self.inner.meter()
    }
}

/// Bytes and rounds of one link endpoint over a span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostRecord {
    /// Bytes sent, frame headers included.
    pub sent: u64,
    /// Bytes received.
    pub received: u64,
    /// Rounds (receives after a flush).
    pub rounds: u64,
}

impl From<Costs> for CostRecord {
    fn from(c: Costs) -> Self {
        Self {
            sent: c.bytes_sent,
            received: c.bytes_received,
            rounds: c.rounds,
        }
    }
}

impl CostRecord {
    fn minus(&self, o: &CostRecord) -> CostRecord {
        CostRecord {
            sent: self.sent.saturating_sub(o.sent),
            received: self.received.saturating_sub(o.received),
            rounds: self.rounds.saturating_sub(o.rounds),
        }
    }

    fn add(&mut self, o: &CostRecord) {
        self.sent += o.sent;
        self.received += o.received;
        self.rounds += o.rounds;
    }
}

/// One server's costs, in total and per label (`layer.3/attn.qkv`, `embed`, `lm_head`, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartyCosts {
    /// Wall time of the span on this server, milliseconds.
    pub wall_ms: f64,
    /// Part of the wall time spent waiting for correlations, milliseconds.
    pub dealer_ms: f64,
    /// Link to the other server.
    pub online: CostRecord,
    /// Link to the dealer.
    pub offline: CostRecord,
    /// Per label: `[online, offline]`.
    pub labels: BTreeMap<String, [CostRecord; 2]>,
    /// Sparse FFN: active (token, neuron) pairs per layer in this step (empty when dense).
    #[serde(default)]
    pub ffn_active: Vec<u64>,
    /// Offline bytes of the session's set-up (the permuted FFN weights), on the first step.
    #[serde(default)]
    pub setup_offline_bytes: u64,
    /// Time of that set-up, milliseconds (inside the client's wall time of the step).
    #[serde(default)]
    pub setup_ms: f64,
    /// Head sparsity: active (token, head) pairs per layer in this step (empty otherwise).
    #[serde(default)]
    pub attn_active: Vec<u64>,
    /// Head sparsity: key/value rows × groups left unwritten (holes) in this step.
    #[serde(default)]
    pub kv_holes: u64,
    /// Head sparsity: holes of earlier steps refilled in this step (KV misses).
    #[serde(default)]
    pub kv_refilled: u64,
}

impl PartyCosts {
    /// Current cumulative counters of `p`'s meters.
    pub fn snapshot(p: &Party, clock: &DealerClock) -> Self {
        let mut labels: BTreeMap<String, [CostRecord; 2]> = BTreeMap::new();
        for (label, c) in p.online_meter().by_label() {
            labels.entry(label).or_default()[0] = c.into();
        }
        for (label, c) in p.offline_meter().by_label() {
            labels.entry(label).or_default()[1] = c.into();
        }
        Self {
            wall_ms: 0.0,
            dealer_ms: clock.millis(),
            online: p.online_meter().total().into(),
            offline: p.offline_meter().total().into(),
            labels,
            ..Default::default()
        }
    }

    /// The costs between `earlier` and `self`, with the span's wall time.
    pub fn since(&self, earlier: &PartyCosts, wall: Duration) -> Self {
        let mut labels = BTreeMap::new();
        for (label, [on, off]) in &self.labels {
            let zero = [CostRecord::default(); 2];
            let [on0, off0] = earlier.labels.get(label).unwrap_or(&zero);
            let diff = [on.minus(on0), off.minus(off0)];
            if diff != zero {
                labels.insert(label.clone(), diff);
            }
        }
        Self {
            wall_ms: wall.as_secs_f64() * 1e3,
            dealer_ms: self.dealer_ms - earlier.dealer_ms,
            online: self.online.minus(&earlier.online),
            offline: self.offline.minus(&earlier.offline),
            labels,
            ..Default::default()
        }
    }
}

/// Costs of one step (prefill or one decode token), as the client assembles them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepCosts {
    /// Tokens processed in this step.
    pub tokens: usize,
    /// Client-side wall time, milliseconds.
    pub wall_ms: f64,
    /// Wall time minus the longer of the two servers' waits for correlations (session set-up
    /// included): the step's time when the dealer's material is ready ahead of time, ms.
    pub online_ms: f64,
    /// Online bytes sent by both servers to each other.
    pub online_bytes: u64,
    /// Offline bytes on both servers' dealer links (requests and halves).
    pub offline_bytes: u64,
    /// Online rounds between the servers.
    pub rounds: u64,
    /// Bytes on the client's links (both directions, both servers).
    pub client_bytes: u64,
    /// Sparse FFN: active (token, neuron) pairs per layer (empty when dense).
    #[serde(default)]
    pub ffn_active: Vec<u64>,
    /// Offline bytes of the session set-up delivered with this step (both servers).
    #[serde(default)]
    pub setup_offline_bytes: u64,
    /// Head sparsity: active (token, head) pairs per layer (empty otherwise).
    #[serde(default)]
    pub attn_active: Vec<u64>,
    /// Head sparsity: key/value rows × groups left as holes in this step.
    #[serde(default)]
    pub kv_holes: u64,
    /// Head sparsity: holes refilled in this step (KV misses); refills ride the step's own
    /// truncation and opening rounds.
    #[serde(default)]
    pub kv_refilled: u64,
    /// Each server's record (P0, P1).
    pub servers: Vec<PartyCosts>,
}

impl StepCosts {
    /// Combines the servers' records with the client's own link counters.
    pub fn new(
        tokens: usize,
        wall: Duration,
        servers: Vec<PartyCosts>,
        client_links: &[Costs],
    ) -> Self {
        let dealer_ms = servers
            .iter()
            .map(|s| s.dealer_ms + s.setup_ms)
            .fold(0.0, f64::max);
        Self {
            tokens,
            wall_ms: wall.as_secs_f64() * 1e3,
            online_ms: (wall.as_secs_f64() * 1e3 - dealer_ms).max(0.0),
            online_bytes: servers.iter().map(|s| s.online.sent).sum(),
            offline_bytes: servers
                .iter()
                .map(|s| s.offline.sent + s.offline.received)
                .sum(),
            rounds: servers.first().map_or(0, |s| s.online.rounds),
            client_bytes: client_links
                .iter()
                .map(|c| c.bytes_sent + c.bytes_received)
                .sum(),
            ffn_active: servers
                .first()
                .map_or_else(Vec::new, |s| s.ffn_active.clone()),
            setup_offline_bytes: servers.iter().map(|s| s.setup_offline_bytes).sum(),
            attn_active: servers
                .first()
                .map_or_else(Vec::new, |s| s.attn_active.clone()),
            kv_holes: servers.first().map_or(0, |s| s.kv_holes),
            kv_refilled: servers.first().map_or(0, |s| s.kv_refilled),
            servers,
        }
    }

    /// Per label (summed over both servers): `[online sent, offline both ways, rounds]`.
    pub fn by_label(&self) -> BTreeMap<String, [u64; 3]> {
        let mut out: BTreeMap<String, [u64; 3]> = BTreeMap::new();
        for (i, s) in self.servers.iter().enumerate() {
            for (label, [on, off]) in &s.labels {
                let e = out.entry(label.clone()).or_default();
                e[0] += on.sent;
                e[1] += off.sent + off.received;
                if i == 0 {
                    e[2] += on.rounds;
                }
            }
        }
        out
    }

    /// Per layer (`layer.N`), other top-level labels as they are: `[online, offline, rounds]`.
    pub fn by_layer(&self) -> BTreeMap<String, [u64; 3]> {
        let mut out: BTreeMap<String, [u64; 3]> = BTreeMap::new();
        for (label, v) in self.by_label() {
            let top = label.split('/').next().unwrap_or("").to_string();
            let top = if top.is_empty() {
                "(unlabelled)".to_string()
            } else {
                top
            };
            let e = out.entry(top).or_default();
            for k in 0..3 {
                e[k] += v[k];
            }
        }
        out
    }

    /// Per op (the label below the layer, e.g. `attn.softmax`), summed over layers.
    pub fn by_op(&self) -> BTreeMap<String, [u64; 3]> {
        let mut out: BTreeMap<String, [u64; 3]> = BTreeMap::new();
        for (label, v) in self.by_label() {
            let mut parts = label.split('/');
            let first = parts.next().unwrap_or("");
            let op = if first.starts_with("layer.") {
                parts.next().unwrap_or("(layer)").to_string()
            } else if first.is_empty() {
                "(unlabelled)".to_string()
            } else {
                first.to_string()
            };
            let e = out.entry(op).or_default();
            for k in 0..3 {
                e[k] += v[k];
            }
        }
        out
    }
}

/// The report of a whole generation: prefill, every decode step, and their averages.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GenerationReport {
    /// Network profile of the server links (`none`, `lan`, `wan`, `slow`, or custom).
    pub net: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub generated_tokens: usize,
    /// The prefill step.
    pub prefill: Option<StepCosts>,
    /// One entry per decode step.
    pub decode: Vec<StepCosts>,
}

/// Averages over the decode steps: `(wall ms, online bytes, offline bytes, rounds, client bytes)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecodeAverage {
    /// Mean wall time per decode token, milliseconds.
    pub wall_ms: f64,
    /// Mean wall time without the waits for correlations, milliseconds.
    pub online_ms: f64,
    /// Mean online bytes per decode token (both servers).
    pub online_bytes: f64,
    /// Mean offline bytes per decode token.
    pub offline_bytes: f64,
    /// Mean rounds per decode token.
    pub rounds: f64,
    /// Mean client-link bytes per decode token.
    pub client_bytes: f64,
}

impl GenerationReport {
    /// Mean costs of a decode token, if any was decoded.
    pub fn decode_average(&self) -> Option<DecodeAverage> {
        let n = self.decode.len();
        if n == 0 {
            return None;
        }
        let mean =
            |f: &dyn Fn(&StepCosts) -> f64| self.decode.iter().map(f).sum::<f64>() / n as f64;
        Some(DecodeAverage {
            wall_ms: mean(&|s| s.wall_ms),
            online_ms: mean(&|s| s.online_ms),
            online_bytes: mean(&|s| s.online_bytes as f64),
            offline_bytes: mean(&|s| s.offline_bytes as f64),
            rounds: mean(&|s| s.rounds as f64),
            client_bytes: mean(&|s| s.client_bytes as f64),
        })
    }

    /// The report as JSON, with the decode average added.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("report serialises");
        v["decode_average"] = serde_json::to_value(self.decode_average()).expect("serialises");
        if let Some(last) = self.decode.last() {
            v["last_decode_by_layer"] = serde_json::to_value(last.by_layer()).expect("serialises");
            v["last_decode_by_op"] = serde_json::to_value(last.by_op()).expect("serialises");
        }
        if let Some(pre) = &self.prefill {
            v["prefill_by_op"] = serde_json::to_value(pre.by_op()).expect("serialises");
        }
        v
    }

    /// A compact human-readable table: prefill and mean decode, then the per-op breakdown of
    /// the last decode step (or of the prefill when nothing was decoded).
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cost report (net: {}; online ms = wall minus waits for dealer material)",
            self.net
        );
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>10} {:>12} {:>12} {:>8} {:>12}",
            "step", "wall ms", "online ms", "online MB", "offline MB", "rounds", "client MB"
        );
        let mb = |b: f64| b / 1e6;
        if let Some(p) = &self.prefill {
            let _ = writeln!(
                out,
                "{:<22} {:>10.1} {:>10.1} {:>12.3} {:>12.3} {:>8} {:>12.3}",
                format!("prefill ({} tok)", p.tokens),
                p.wall_ms,
                p.online_ms,
                mb(p.online_bytes as f64),
                mb(p.offline_bytes as f64),
                p.rounds,
                mb(p.client_bytes as f64)
            );
        }
        if let Some(a) = self.decode_average() {
            let _ = writeln!(
                out,
                "{:<22} {:>10.1} {:>10.1} {:>12.3} {:>12.3} {:>8.0} {:>12.3}",
                format!("decode (mean of {})", self.decode.len()),
                a.wall_ms,
                a.online_ms,
                mb(a.online_bytes),
                mb(a.offline_bytes),
                a.rounds,
                mb(a.client_bytes)
            );
        }
        let detail = self.decode.last().or(self.prefill.as_ref());
        if let Some(step) = detail {
            let which = if self.decode.is_empty() {
                "prefill"
            } else {
                "last decode step"
            };
            let _ = writeln!(out, "per op, {which} (all layers):");
            let _ = writeln!(
                out,
                "  {:<20} {:>12} {:>12} {:>8}",
                "op", "online KB", "offline KB", "rounds"
            );
            for (op, [on, off, r]) in step.by_op() {
                let _ = writeln!(
                    out,
                    "  {:<20} {:>12.1} {:>12.1} {:>8}",
                    op,
                    on as f64 / 1e3,
                    off as f64 / 1e3,
                    r
                );
            }
        }
        out
    }

    /// Adds a step: the first is the prefill, the others decode steps.
    pub fn push(&mut self, step: StepCosts) {
        if self.prefill.is_none() {
            self.prefill = Some(step);
        } else {
            self.decode.push(step);
        }
    }

    /// Sum of the online bytes of all steps.
    pub fn total_online(&self) -> CostRecord {
        let mut sum = CostRecord::default();
        for s in self.prefill.iter().chain(&self.decode) {
            sum.add(&CostRecord {
                sent: s.online_bytes,
                received: 0,
                rounds: s.rounds,
            });
        }
        sum
    }
}
