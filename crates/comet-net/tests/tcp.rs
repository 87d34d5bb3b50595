//! TCP + mutual TLS transport: traffic, metering parity with memory, authentication and
//! faults over 127.0.0.1. Every fault must end in a named error within the test timeout.

mod common;

use comet_net::frame::{self, MAX_FRAME, PROTOCOL_VERSION};
use comet_net::{
    connect, listen, memory_pair, Channel, ChannelExt, Listener, NetError, TcpChannel, TcpOptions,
};
use common::{deployment, identity, opts, other_deployment, tcp_pair, TEST_TIMEOUT};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A fixed protocol-like script run by both endpoints; returns everything received.
fn script<C: Channel>(c: &mut C, me: u8) -> Vec<Vec<u8>> {
    let meter = c.meter().clone();
    let mut got = Vec::new();
    {
        let _s = meter.scope("layer.0");
        let _t = meter.scope("ffn");
        // Several messages in one flush, of very different sizes (one spans many TLS records).
        c.send(&[]).unwrap();
        c.send(&[me; 1]).unwrap();
        c.send(&vec![me; 3 << 20]).unwrap();
        c.flush().unwrap();
        for _ in 0..3 {
            got.push(c.recv().unwrap());
        }
    }
    {
        let _s = meter.scope("open");
        let values: Vec<u64> = (0..1000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ me as u64)
            .collect();
        let theirs = c.exchange_ring(&values, 37).unwrap();
        got.push(comet_net::codec::pack_ring(&theirs, 64));
    }
    got
}

/// What one endpoint received during the script, and the endpoint itself.
type Outcome<C> = (Vec<Vec<u8>>, C);

fn run_pair<C: Channel + 'static>(a: C, b: C) -> (Outcome<C>, Outcome<C>) {
    let tb = std::thread::spawn(move || {
        let mut b = b;
        (script(&mut b, 2), b)
    });
    let mut a = a;
    let ra = (script(&mut a, 1), a);
    (ra, tb.join().unwrap())
}

#[test]
fn tls_traffic_and_costs_match_the_memory_transport() {
    let (p0, p1) = tcp_pair(opts());
    assert_eq!(p0.peer_role(), "p1");
    assert_eq!(p1.peer_role(), "p0");
    let ((tcp_a, p0), (tcp_b, p1)) = run_pair(p0, p1);
    let (m0, m1) = memory_pair();
    let ((mem_a, m0), (mem_b, m1)) = run_pair(m0, m1);
    // Same messages arrive over both transports...
    assert_eq!(tcp_a, mem_a);
    assert_eq!(tcp_b, mem_b);
    assert_eq!(tcp_a[2], vec![2u8; 3 << 20]);
    // ...and the meters count identical bytes, messages and rounds per label.
    assert_eq!(p0.meter().by_label(), m0.meter().by_label());
    assert_eq!(p1.meter().by_label(), m1.meter().by_label());
    let total = p0.meter().total();
    let expected_sent =
        3 * frame::HEADER_LEN as u64 + 1 + (3 << 20) + frame::HEADER_LEN as u64 + 1000 * 5;
    assert_eq!(total.bytes_sent, expected_sent);
    assert_eq!(total.rounds, 2);
    assert_eq!(total.messages, 4);
}

#[test]
fn connect_retries_until_the_listener_appears() {
    // Reserve a free port, release it, and start the listener only after the client.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let addr_c = addr.clone();
    let client = std::thread::spawn(move || {
        let mut c = connect(addr_c.as_str(), &identity("p1"), "p0", opts()).unwrap();
        c.exchange(b"late listener").unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut server = listen(addr.as_str(), &identity("p0"), "p1", opts()).unwrap();
    assert_eq!(server.exchange(b"hi").unwrap(), b"late listener");
    assert_eq!(client.join().unwrap(), b"hi");
}

#[test]
fn dealer_accepts_both_parties_in_any_order() {
    let dealer = Listener::bind("127.0.0.1:0", &identity("dealer"), opts()).unwrap();
    let addr = dealer.local_addr();
    let mut parties = Vec::new();
    // p1 connects first; accept_all still returns [p0, p1].
    for (role, delay) in [("p1", 0u64), ("p0", 200)] {
        parties.push(std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            let mut c = connect(addr, &identity(role), "dealer", opts()).unwrap();
            c.exchange(role.as_bytes()).unwrap()
        }));
    }
    let mut chans = dealer.accept_all(&["p0", "p1"]).unwrap();
    assert_eq!(chans[0].peer_role(), "p0");
    assert_eq!(chans[1].peer_role(), "p1");
    for c in chans.iter_mut() {
        c.send(format!("material for {}", c.peer_role()).as_bytes())
            .unwrap();
        c.flush().unwrap();
    }
    assert_eq!(chans[0].recv().unwrap(), b"p0");
    assert_eq!(chans[1].recv().unwrap(), b"p1");
    let replies: Vec<Vec<u8>> = parties.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        replies,
        vec![b"material for p1".to_vec(), b"material for p0".to_vec()]
    );
}

/// Runs a listener expecting `expected_by_server` and a client expecting
/// `expected_by_client`; returns both outcomes and how long the slower side took.
fn handshake_outcome(
    server_id: comet_net::TlsIdentity,
    expected_by_server: &'static str,
    client_id: comet_net::TlsIdentity,
    expected_by_client: &'static str,
) -> (
    Result<TcpChannel, NetError>,
    Result<TcpChannel, NetError>,
    Duration,
) {
    let start = Instant::now();
    let listener = Listener::bind("127.0.0.1:0", &server_id, opts()).unwrap();
    let addr = listener.local_addr();
    let client = std::thread::spawn(move || connect(addr, &client_id, expected_by_client, opts()));
    let server = listener.accept(&[expected_by_server]);
    let client = client.join().unwrap();
    (server, client, start.elapsed())
}

fn tls_message(r: Result<TcpChannel, NetError>) -> String {
    match r {
        Err(NetError::Tls(msg)) => msg,
        Err(other) => panic!("expected a TLS error, got {other}"),
        Ok(c) => panic!("expected a TLS error, got a channel to {}", c.peer_role()),
    }
}

#[test]
fn client_certificate_from_another_ca_is_rejected_on_both_sides() {
    let (server, client, took) = handshake_outcome(
        identity("p0"),
        "p1",
        other_deployment().identity("p1").unwrap(),
        "p0",
    );
    // The client (from the other deployment) rejects the server's certificate first.
    let c = tls_message(client);
    assert!(c.contains("not signed by this deployment's CA"), "{c}");
    let s = tls_message(server);
    assert!(s.contains("peer rejected the TLS handshake"), "{s}");
    assert!(took < 2 * TEST_TIMEOUT, "took {took:?}");
}

#[test]
fn server_from_another_ca_is_rejected_on_both_sides() {
    let (server, client, took) = handshake_outcome(
        other_deployment().identity("p0").unwrap(),
        "p1",
        identity("p1"),
        "p0",
    );
    let c = tls_message(client);
    assert!(c.contains("not signed by this deployment's CA"), "{c}");
    let s = tls_message(server);
    assert!(s.contains("peer rejected the TLS handshake"), "{s}");
    assert!(took < 2 * TEST_TIMEOUT, "took {took:?}");
}

#[test]
fn client_certificate_signed_by_a_foreign_ca_is_rejected_by_the_server() {
    // A hand-built TLS client that trusts our CA (so it accepts p0) but presents a p1
    // certificate signed by another CA. The checked TlsIdentity API cannot build this mix.
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let foreign = other_deployment()
        .roles
        .iter()
        .find(|r| r.role == "p1")
        .unwrap()
        .clone();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(deployment().ca_cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(foreign.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(foreign.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let listener = Listener::bind("127.0.0.1:0", &identity("p0"), opts()).unwrap();
    let addr = listener.local_addr();
    let client = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(TEST_TIMEOUT))?;
        let name = ServerName::try_from("p0.comet").unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"COMET\x01")?;
        let mut hello = vec![0u8; 6];
        std::io::Read::read_exact(&mut tls, &mut hello)?;
        Ok(hello)
    });
    let s = tls_message(listener.accept(&["p1"]));
    assert!(s.contains("not signed by this deployment's CA"), "{s}");
    let client_err = client.join().unwrap().unwrap_err();
    assert!(
        client_err.to_string().contains("received fatal alert"),
        "{client_err}"
    );
}

#[test]
fn certificate_of_the_wrong_role_is_rejected_on_both_sides() {
    // The dealer's valid certificate connects where p0 expects p1.
    let (server, client, took) = handshake_outcome(identity("p0"), "p1", identity("dealer"), "p0");
    let s = tls_message(server);
    assert!(
        s.contains("does not name the expected role p1.comet"),
        "{s}"
    );
    let c = tls_message(client);
    assert!(c.contains("peer rejected the TLS handshake"), "{c}");
    assert!(took < 2 * TEST_TIMEOUT, "took {took:?}");

    // A client that expects the dealer but reaches p0 refuses p0's certificate.
    let (server, client, _) = handshake_outcome(identity("p0"), "p1", identity("p1"), "dealer");
    let c = tls_message(client);
    assert!(
        c.contains("does not name the expected role dealer.comet"),
        "{c}"
    );
    let s = tls_message(server);
    assert!(s.contains("peer rejected the TLS handshake"), "{s}");
}

#[test]
fn nobody_listening_fails_connect_within_its_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let o = opts().with_connect_timeout(Duration::from_millis(400));
    let err = connect(("127.0.0.1", port), &identity("p1"), "p0", o).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, NetError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("no p0 listening within"), "{err}");
    assert!(
        took >= Duration::from_millis(400) && took < TEST_TIMEOUT,
        "took {took:?}"
    );
}

#[test]
fn nobody_connecting_fails_accept_within_its_timeout() {
    let start = Instant::now();
    let o = opts().with_connect_timeout(Duration::from_millis(300));
    let err = listen("127.0.0.1:0", &identity("p0"), "p1", o).unwrap_err();
    assert!(matches!(err, NetError::AcceptTimeout { .. }), "{err}");
    assert!(err.to_string().contains("no peer (p1) connected"), "{err}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < TEST_TIMEOUT,
        "took {took:?}"
    );
}

#[test]
fn a_silent_tcp_peer_times_out_the_handshake() {
    let o = opts().with_timeout(Duration::from_millis(300));
    let listener = Listener::bind("127.0.0.1:0", &identity("p0"), o).unwrap();
    let addr = listener.local_addr();
    let _mute = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    let err = listener.accept(&["p1"]).unwrap_err();
    assert!(matches!(err, NetError::Timeout(_)), "{err}");
    assert!(start.elapsed() < TEST_TIMEOUT);
}

#[test]
fn a_non_tls_peer_is_a_tls_error() {
    let listener = Listener::bind("127.0.0.1:0", &identity("p0"), opts()).unwrap();
    let addr = listener.local_addr();
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: comet\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    let err = listener.accept(&["p1"]).unwrap_err();
    assert!(matches!(err, NetError::Tls(_)), "{err}");
    writer.join().unwrap();
}

#[test]
fn a_silent_authenticated_peer_times_out_recv() {
    let (mut p0, _p1) = tcp_pair(opts().with_timeout(Duration::from_millis(300)));
    let start = Instant::now();
    let err = p0.recv().unwrap_err();
    assert!(matches!(err, NetError::Timeout(_)), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(290) && start.elapsed() < TEST_TIMEOUT);
}

#[test]
fn truncated_frame_then_close_is_malformed() {
    let (mut p0, mut p1) = tcp_pair(opts());
    p1.send_raw_for_test(&[PROTOCOL_VERSION, 10, 0, 0, 0, 1, 2])
        .unwrap();
    drop(p1);
    let err = p0.recv().unwrap_err();
    assert!(
        matches!(err, NetError::Malformed(ref m) if m.contains("truncated frame")),
        "{err}"
    );
    // A cut inside the header is named as such too.
    let (mut p0, mut p1) = tcp_pair(opts());
    p1.send_raw_for_test(&[PROTOCOL_VERSION, 10]).unwrap();
    drop(p1);
    let err = p0.recv().unwrap_err();
    assert!(
        matches!(err, NetError::Malformed(ref m) if m.contains("header")),
        "{err}"
    );
}

#[test]
fn corrupted_headers_are_rejected() {
    let (mut p0, mut p1) = tcp_pair(opts());
    p1.send_raw_for_test(&[PROTOCOL_VERSION + 1, 0, 0, 0, 0])
        .unwrap();
    let err = p0.recv().unwrap_err();
    assert!(
        matches!(err, NetError::Version { got, expected } if got == PROTOCOL_VERSION + 1 && expected == PROTOCOL_VERSION)
    );

    let (mut p0, mut p1) = tcp_pair(opts());
    let too_long = (MAX_FRAME as u32 + 1).to_le_bytes();
    p1.send_raw_for_test(&[
        PROTOCOL_VERSION,
        too_long[0],
        too_long[1],
        too_long[2],
        too_long[3],
    ])
    .unwrap();
    let err = p0.recv().unwrap_err();
    assert!(
        matches!(err, NetError::TooLarge { len, max } if len == MAX_FRAME + 1 && max == MAX_FRAME),
        "{err}"
    );
    // A frame that announces more than it carries, from a peer that stays connected, times
    // out rather than hanging.
    let (p0, mut p1) = tcp_pair(opts());
    let mut p0 = p0;
    p0.set_timeout(Duration::from_millis(300)).unwrap();
    p1.send_raw_for_test(&[PROTOCOL_VERSION, 100, 0, 0, 0, 7])
        .unwrap();
    assert!(matches!(p0.recv(), Err(NetError::Timeout(_))));
}

#[test]
fn peer_closing_mid_protocol_is_reported() {
    let (mut p0, mut p1) = tcp_pair(opts());
    p1.send(b"first").unwrap();
    p1.flush().unwrap();
    drop(p1);
    // Data sent before the close is still delivered, then the close is named.
    assert_eq!(p0.recv().unwrap(), b"first");
    let err = p0.recv().unwrap_err();
    assert!(
        matches!(err, NetError::Closed(ref m) if m.contains("p1")),
        "{err}"
    );
    // Sending into the closed link fails too (after the kernel notices), and never hangs.
    let start = Instant::now();
    let mut send_err = None;
    for _ in 0..200 {
        if let Err(e) = p0.send(&[0u8; 4096]).and_then(|_| p0.flush()) {
            send_err = Some(e);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = send_err.expect("sending to a closed peer must fail");
    assert!(matches!(e, NetError::Closed(_)), "{e}");
    assert!(start.elapsed() < TEST_TIMEOUT);
}

#[test]
fn the_meter_ignores_tls_and_hello_overhead() {
    let (p0, p1) = tcp_pair(opts());
    assert_eq!(p0.meter().total(), comet_net::Costs::default());
    assert_eq!(p1.meter().total(), comet_net::Costs::default());
}

#[test]
fn keys_written_to_disk_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    comet_net::generate_keys(dir.path(), &["p0", "p1"], false).unwrap();
    let p0 = comet_net::TlsIdentity::load(dir.path(), "p0").unwrap();
    let p1 = comet_net::TlsIdentity::load(dir.path(), "p1").unwrap();
    let listener = Listener::bind("127.0.0.1:0", &p0, TcpOptions::default()).unwrap();
    let addr = listener.local_addr();
    let t = std::thread::spawn(move || {
        connect(addr, &p1, "p0", TcpOptions::default())
            .unwrap()
            .exchange(b"x")
            .unwrap()
    });
    let mut c = listener.accept(&["p1"]).unwrap();
    assert_eq!(c.exchange(b"y").unwrap(), b"x");
    assert_eq!(t.join().unwrap(), b"y");
}
