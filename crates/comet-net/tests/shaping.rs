//! Network shaping in both transports. Timing assertions are lower bounds taken from the
//! link model (so a slow machine cannot make them fail), plus generous upper bounds only
//! where the point is that latency must not serialise messages.

mod common;

use comet_net::{memory_pair_shaped, Channel, ChannelExt, NetProfile};
use common::{opts, tcp_pair};
use std::time::{Duration, Instant};

const MB: usize = 1_000_000;

/// Both sides exchange `bytes` bytes at once; returns each side's elapsed time.
fn timed_exchange<C: Channel + 'static>(a: C, b: C, bytes: usize) -> (Duration, Duration) {
    let start = Instant::now();
    let tb = std::thread::spawn(move || {
        let mut b = b;
        let got = b.exchange(&vec![2u8; bytes]).unwrap();
        assert_eq!(got.len(), bytes);
        start.elapsed()
    });
    let mut a = a;
    let got = a.exchange(&vec![1u8; bytes]).unwrap();
    assert_eq!(got, vec![2u8; bytes]);
    let ta = start.elapsed();
    (ta, tb.join().unwrap())
}

/// 1 MB at 100 Mbps is 80 ms on the link, plus 20 ms of flight.
const SLOW_1MB: Duration = Duration::from_millis(100);

#[test]
fn memory_one_megabyte_exchange_on_slow_takes_serialisation_plus_latency() {
    let (a, b) = memory_pair_shaped(NetProfile::slow());
    let (ta, tb) = timed_exchange(a, b, MB);
    eprintln!("memory, slow, 1 MB exchange: {ta:?} / {tb:?} (model: 100 ms)");
    assert!(ta >= SLOW_1MB && tb >= SLOW_1MB, "{ta:?} {tb:?}");
}

#[test]
fn tcp_one_megabyte_exchange_on_slow_takes_serialisation_plus_latency() {
    let (a, b) = tcp_pair(opts().with_profile(NetProfile::slow()));
    assert_eq!(a.profile(), NetProfile::slow());
    let (ta, tb) = timed_exchange(a, b, MB);
    eprintln!("tcp+tls, slow, 1 MB exchange: {ta:?} / {tb:?} (model: 100 ms)");
    assert!(ta >= SLOW_1MB && tb >= SLOW_1MB, "{ta:?} {tb:?}");
}

#[test]
fn unshaped_bulk_exchange_is_intact() {
    // 32 MB each way with no shaping: content arrives intact; prints the raw speed.
    let (a, b) = tcp_pair(opts());
    let (ta, _) = timed_exchange(a, b, 32 * MB);
    eprintln!(
        "tcp+tls, none, 32 MB exchange: {ta:?} ({:.0} MB/s per direction)",
        32.0 / ta.as_secs_f64()
    );
    let (a, b) = comet_net::memory_pair();
    let (tm, _) = timed_exchange(a, b, 32 * MB);
    eprintln!("memory, none, 32 MB exchange: {tm:?}");
}

#[test]
fn bandwidth_serialises_consecutive_flushes() {
    // Two half-megabyte flushes back to back: the second waits for the first on the link.
    let (mut a, mut b) = memory_pair_shaped(NetProfile::slow());
    let start = Instant::now();
    for _ in 0..2 {
        a.send(&vec![0u8; MB / 2 - 5]).unwrap();
        a.flush().unwrap();
    }
    let sender_time = start.elapsed();
    b.recv().unwrap();
    let first = start.elapsed();
    b.recv().unwrap();
    let second = start.elapsed();
    assert!(first >= Duration::from_millis(60), "{first:?}");
    assert!(second >= SLOW_1MB, "{second:?}");
    // Flushing never waits for the link.
    assert!(
        sender_time < Duration::from_millis(40),
        "sender blocked for {sender_time:?}"
    );
}

/// Sends ten one-byte flushes on a 50 ms link; the receiver must get the first after the
/// latency and the last long before ten latencies (latency pipelines).
fn latency_pipelines<C: Channel + 'static>(a: C, b: C) {
    let start = Instant::now();
    let tb = std::thread::spawn(move || {
        let mut b = b;
        let mut arrivals = Vec::new();
        for i in 0..10u8 {
            assert_eq!(b.recv().unwrap(), vec![i]);
            arrivals.push(start.elapsed());
        }
        arrivals
    });
    let mut a = a;
    for i in 0..10u8 {
        a.send(&[i]).unwrap();
        a.flush().unwrap();
    }
    let sender_time = start.elapsed();
    let arrivals = tb.join().unwrap();
    assert!(arrivals[0] >= Duration::from_millis(50), "{arrivals:?}");
    assert!(
        arrivals[9] < Duration::from_millis(450),
        "latency serialised messages: {arrivals:?}"
    );
    assert!(
        sender_time < Duration::from_millis(40),
        "sender blocked for {sender_time:?}"
    );
    drop(a);
}

#[test]
fn latency_does_not_block_the_sender_in_memory() {
    let p: NetProfile = "lat=50ms".parse().unwrap();
    let (a, b) = memory_pair_shaped(p);
    latency_pipelines(a, b);
}

#[test]
fn latency_does_not_block_the_sender_over_tcp() {
    let p: NetProfile = "lat=50ms".parse().unwrap();
    let (a, b) = tcp_pair(opts().with_profile(p));
    latency_pipelines(a, b);
}

/// Ping-pong: each reply can only leave after the request arrived, so `n` round trips take
/// at least `2 n` one-way latencies.
fn ping_pong<C: Channel + 'static>(a: C, b: C, n: usize) -> Duration {
    let tb = std::thread::spawn(move || {
        let mut b = b;
        for _ in 0..n {
            let m = b.recv().unwrap();
            b.send(&m).unwrap();
            b.flush().unwrap();
        }
        b
    });
    let mut a = a;
    let start = Instant::now();
    for i in 0..n {
        assert_eq!(a.exchange(&[i as u8]).unwrap(), vec![i as u8]);
    }
    let took = start.elapsed();
    drop(tb.join().unwrap());
    took
}

#[test]
fn round_trips_cost_two_latencies_in_both_transports() {
    let (a, b) = memory_pair_shaped(NetProfile::wan());
    let mem = ping_pong(a, b, 5);
    eprintln!("memory, wan, 5 round trips: {mem:?} (model: 200 ms)");
    assert!(mem >= Duration::from_millis(200), "{mem:?}");
    let (a, b) = tcp_pair(opts().with_profile(NetProfile::wan()));
    let tcp = ping_pong(a, b, 5);
    eprintln!("tcp+tls, wan, 5 round trips: {tcp:?} (model: 200 ms)");
    assert!(tcp >= Duration::from_millis(200), "{tcp:?}");
}

#[test]
fn shaped_data_is_delivered_before_the_close() {
    // Dropping a shaped sender waits for its queued chunks, so nothing is lost.
    let (mut a, mut b) = tcp_pair(opts().with_profile("bw=100mbps,lat=30ms".parse().unwrap()));
    a.send(&vec![7u8; 200_000]).unwrap();
    a.flush().unwrap();
    drop(a);
    assert_eq!(b.recv().unwrap(), vec![7u8; 200_000]);
    assert!(matches!(b.recv(), Err(comet_net::NetError::Closed(_))));
}

#[test]
fn unshaped_links_report_no_profile() {
    let (a, _b) = tcp_pair(opts());
    assert!(a.profile().is_none());
    let (m, _n) = comet_net::memory_pair();
    assert!(m.profile().is_none());
}
