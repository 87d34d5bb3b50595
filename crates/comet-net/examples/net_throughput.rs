//! Measures the transports on this machine: bulk exchange time and ping-pong round-trip time,
//! unshaped and under each preset.
//!
//! `cargo run -p comet-net --release --example net_throughput [MB] [round_trips]`

use comet_net::{
    connect, memory_pair_shaped, Channel, ChannelExt, Deployment, Listener, NetProfile, TcpChannel,
    TcpOptions,
};
use std::time::{Duration, Instant};

fn tcp_pair(keys: &Deployment, profile: NetProfile) -> (TcpChannel, TcpChannel) {
    let opts = TcpOptions::default().with_profile(profile);
    let listener = Listener::bind("127.0.0.1:0", &keys.identity("p0").unwrap(), opts).unwrap();
    let addr = listener.local_addr();
    let id = keys.identity("p1").unwrap();
    let t = std::thread::spawn(move || connect(addr, &id, "p0", opts).unwrap());
    let a = listener.accept(&["p1"]).unwrap();
    (a, t.join().unwrap())
}

/// Both sides exchange `bytes` at once; returns the slower side's time.
fn bulk<C: Channel + 'static>(a: C, b: C, bytes: usize) -> Duration {
    let start = Instant::now();
    let t = std::thread::spawn(move || {
        let mut b = b;
        b.exchange(&vec![2u8; bytes]).unwrap();
        start.elapsed()
    });
    let mut a = a;
    assert_eq!(a.exchange(&vec![1u8; bytes]).unwrap().len(), bytes);
    start.elapsed().max(t.join().unwrap())
}

/// Mean time of one request/reply round trip of a 64-byte message.
fn ping<C: Channel + 'static>(a: C, b: C, n: usize) -> Duration {
    let t = std::thread::spawn(move || {
        let mut b = b;
        for _ in 0..n {
            let m = b.recv().unwrap();
            b.send(&m).unwrap();
            b.flush().unwrap();
        }
    });
    let mut a = a;
    let start = Instant::now();
    for _ in 0..n {
        a.exchange(&[7u8; 64]).unwrap();
    }
    let took = start.elapsed();
    t.join().unwrap();
    took / n as u32
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mb: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let trips: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let keys = Deployment::generate(&["p0", "p1"]).unwrap();
    let bytes = mb * 1_000_000;
    println!("transport  profile  {mb} MB exchange  MB/s/dir  round trip (64 B)");
    for name in NetProfile::PRESETS {
        let profile: NetProfile = name.parse().unwrap();
        let n = if profile.one_way_latency >= Duration::from_millis(1) {
            20
        } else {
            trips
        };
        let (a, b) = memory_pair_shaped(profile);
        let t_mem = bulk(a, b, bytes);
        let (a, b) = memory_pair_shaped(profile);
        let r_mem = ping(a, b, n);
        println!(
            "memory     {name:<7}  {:>14.1?}  {:>8.0}  {:>10.1?}",
            t_mem,
            mb as f64 / t_mem.as_secs_f64(),
            r_mem
        );
        let (a, b) = tcp_pair(&keys, profile);
        let t_tcp = bulk(a, b, bytes);
        let (a, b) = tcp_pair(&keys, profile);
        let r_tcp = ping(a, b, n);
        println!(
            "tcp+tls    {name:<7}  {:>14.1?}  {:>8.0}  {:>10.1?}",
            t_tcp,
            mb as f64 / t_tcp.as_secs_f64(),
            r_tcp
        );
    }
}
