//! Measures the FSS gates of `compare` and `lut` in one process (two threads over memory
//! channels, in-process dealer): online bytes and rounds per party, offline (dealer) bytes per
//! party, total wall time with a live dealer, and online wall time (a second run replays the
//! recorded dealer halves, so it covers key decoding plus the protocol, not key generation;
//! fastest of 5 replays).
//!
//! Run: `cargo run -p comet-protocols --release --example gate_costs`

use comet_core::{FixedPoint, PartyId, Prg};
use comet_dealer::{CorrelationSource, Dealer, DealerError, InProcessDealer, LocalSource};
use comet_net::{memory_pair, CostMeter};
use comet_protocols::testing::share_for_test;
use comet_protocols::{compare, lut, Party, ProtocolError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Replays per gate; the online time is the minimum.
const REPLAYS: usize = 5;

/// Costs of one gate run, seen by P0 (online) and by both parties (offline).
struct Row {
    name: String,
    n: usize,
    rounds: u64,
    online_sent: u64,
    offline: [u64; 2],
    total_ms: f64,
    online_ms: f64,
}

/// Forwards requests to the in-process dealer and records every half it returns.
struct Recorder {
    inner: LocalSource,
    halves: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl CorrelationSource for Recorder {
    fn fetch_raw(&mut self, request: &[u8]) -> Result<Vec<u8>, DealerError> {
        let half = self.inner.fetch_raw(request)?;
        self.halves.lock().expect("recorder").push(half.clone());
        Ok(half)
    }
    fn meter(&self) -> &CostMeter {
        self.inner.meter()
    }
}

/// Replays recorded halves in order: the party still decodes them, the dealer is idle.
struct Replay {
    halves: std::vec::IntoIter<Vec<u8>>,
    meter: CostMeter,
}

impl CorrelationSource for Replay {
    fn fetch_raw(&mut self, _request: &[u8]) -> Result<Vec<u8>, DealerError> {
        self.halves
            .next()
            .ok_or_else(|| DealerError::Malformed("replay ran out of halves".into()))
    }
    fn meter(&self) -> &CostMeter {
        &self.meter
    }
}

/// Runs `f` as both parties (two threads, memory channels) with the given sources.
fn run_with<R: Send>(
    sources: [Box<dyn CorrelationSource>; 2],
    f: &(impl Fn(&mut Party) -> Result<R, ProtocolError> + Sync),
) -> [R; 2] {
    let (c0, c1) = memory_pair();
    let [s0, s1] = sources;
    let mut p0 = Party::new(PartyId::P0, Box::new(c0), s0, FixedPoint::default());
    let mut p1 = Party::new(PartyId::P1, Box::new(c1), s1, FixedPoint::default());
    std::thread::scope(|s| {
        let h = s.spawn(move || f(&mut p1).expect("P1"));
        let r0 = f(&mut p0).expect("P0");
        [r0, h.join().expect("P1 thread")]
    })
}

/// Runs `op` once with a live dealer (total time, offline bytes) and once replaying the same
/// halves [`REPLAYS`] times (online time, the minimum: key decoding plus the protocol).
fn measure<R: Send>(
    name: &str,
    n: usize,
    op: impl Fn(&mut Party) -> Result<R, ProtocolError> + Sync,
) -> Row {
    let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([2; 16])));
    let recorded = [
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    ];
    let sources: [Box<dyn CorrelationSource>; 2] = [0, 1].map(|b| {
        Box::new(Recorder {
            inner: dealer.source(PartyId::from_index(b)),
            halves: recorded[b].clone(),
        }) as Box<dyn CorrelationSource>
    });
    let costs = |p: &mut Party| {
        op(p)?;
        Ok((p.online_meter().total(), p.offline_meter().total()))
    };
    let t = Instant::now();
    let [(on0, off0), (_, off1)] = run_with(sources, &costs);
    let total_ms = t.elapsed().as_secs_f64() * 1e3;
    let halves: [Vec<Vec<u8>>; 2] =
        [0, 1].map(|b| std::mem::take(&mut *recorded[b].lock().expect("recorder")));
    // The machine is shared: report the fastest of a few replays.
    let mut online_ms = f64::INFINITY;
    for _ in 0..REPLAYS {
        let replays: [Box<dyn CorrelationSource>; 2] = [0, 1].map(|b| {
            Box::new(Replay {
                halves: halves[b].clone().into_iter(),
                meter: CostMeter::new(),
            }) as Box<dyn CorrelationSource>
        });
        let t = Instant::now();
        run_with(replays, &|p: &mut Party| op(p).map(drop));
        online_ms = online_ms.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Row {
        name: name.to_string(),
        n,
        rounds: on0.rounds,
        online_sent: on0.bytes_sent,
        offline: [off0.bytes_received, off1.bytes_received],
        total_ms,
        online_ms,
    }
}

fn print(rows: &[Row]) {
    println!(
        "| gate | n | rounds | online B sent/party (per elem) | offline B P0 / P1 (per elem) | total ms (dealer + online) | online ms (decode + protocol) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let n = r.n as f64;
        println!(
            "| {} | {} | {} | {} ({:.1}) | {} / {} ({:.0} / {:.0}) | {:.1} | {:.1} |",
            r.name,
            r.n,
            r.rounds,
            r.online_sent,
            r.online_sent as f64 / n,
            r.offline[0],
            r.offline[1],
            r.offline[0] as f64 / n,
            r.offline[1] as f64 / n,
            r.total_ms,
            r.online_ms,
        );
    }
}

fn main() {
    let bits = 32u32;
    let mut rows = Vec::new();
    let mut prg = Prg::from_seed([9; 16]);
    for n in [576usize, 1536, 9 * 128] {
        let x: Vec<u64> = (0..n)
            .map(|_| comet_core::ring::sign_extend(prg.next_u64() >> 34, 30))
            .collect();
        let y: Vec<u64> = (0..n)
            .map(|_| comet_core::ring::sign_extend(prg.next_u64() >> 34, 30))
            .collect();
        let bit: Vec<u64> = (0..n).map(|_| prg.next_u64() & 1).collect();
        let xs = share_for_test(&x, &mut prg);
        let ys = share_for_test(&y, &mut prg);
        let bs = share_for_test(&bit, &mut prg);
        rows.push(measure(&format!("drelu bits={bits}"), n, |p| {
            compare::drelu(p, &xs[p.id.index()], bits)
        }));
        rows.push(measure(&format!("drelu_compact bits={bits}"), n, |p| {
            compare::drelu_compact(p, &xs[p.id.index()], bits)
        }));
        rows.push(measure(&format!("less_than bits={bits}"), n, |p| {
            compare::less_than(p, &xs[p.id.index()], &ys[p.id.index()], bits)
        }));
        rows.push(measure("select", n, |p| {
            compare::select(p, &bs[p.id.index()], &xs[p.id.index()])
        }));
        rows.push(measure(&format!("relu bits={bits}"), n, |p| {
            compare::relu(p, &xs[p.id.index()], bits)
        }));
        rows.push(measure(&format!("relu_compact bits={bits}"), n, |p| {
            compare::relu_compact(p, &xs[p.id.index()], bits)
        }));
        rows.push(measure("drelu bits=64", n, |p| {
            compare::drelu(p, &xs[p.id.index()], 64)
        }));
        for m in [8u32, 10, 12, 13] {
            let table: Vec<u64> = (0..1u64 << m)
                .map(|i| i.wrapping_mul(0x9e37_79b9))
                .collect();
            rows.push(measure(&format!("lookup m={m}"), n, |p| {
                lut::lookup(p, &xs[p.id.index()], m, &table)
            }));
        }
        let t1: Vec<u64> = (0..256u64).collect();
        let t2: Vec<u64> = (0..256u64).map(|i| i * 3).collect();
        rows.push(measure("lookup_many m=8, 2 tables", n, |p| {
            lut::lookup_many(p, &xs[p.id.index()], 8, &[&t1, &t2])
        }));
    }
    // Row maxima: 9 rows of 128 (e.g. 9 heads × 128 scores) and 1 row of 576.
    for (r, c) in [(9usize, 128usize), (1, 576), (9, 1536)] {
        let x: Vec<u64> = (0..r * c)
            .map(|_| comet_core::ring::sign_extend(prg.next_u64() >> 34, 30))
            .collect();
        let xs = share_for_test(&x, &mut prg);
        rows.push(measure(
            &format!("max_rows {r}x{c} bits={bits}"),
            r * c,
            |p| compare::max_rows(p, &xs[p.id.index()], r, c, bits),
        ));
        rows.push(measure(
            &format!("max_rows compact {r}x{c} bits={bits}"),
            r * c,
            |p| {
                compare::max_rows_with(
                    p,
                    &xs[p.id.index()],
                    r,
                    c,
                    bits,
                    compare::ReluGate::CompactKey,
                )
            },
        ));
    }
    println!(
        "threads: {}, party P0 view; bytes include 5-byte frame headers",
        rayon::current_num_threads()
    );
    print(&rows);
}
