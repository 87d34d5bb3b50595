//! Helpers shared by the integration tests: a deployment made once per test binary and a
//! connected TLS pair over 127.0.0.1.

#![allow(dead_code)]

use comet_net::{connect, Deployment, Listener, TcpChannel, TcpOptions, TlsIdentity};
use std::sync::OnceLock;
use std::time::Duration;

/// Short timeouts so that fault tests end quickly.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(2);

pub fn opts() -> TcpOptions {
    TcpOptions::default()
        .with_timeout(TEST_TIMEOUT)
        .with_connect_timeout(TEST_TIMEOUT)
}

/// One deployment with all default roles, shared by the tests of a binary.
pub fn deployment() -> &'static Deployment {
    static D: OnceLock<Deployment> = OnceLock::new();
    D.get_or_init(|| Deployment::generate(&["p0", "p1", "dealer", "client"]).unwrap())
}

/// A second, unrelated deployment (another CA).
pub fn other_deployment() -> &'static Deployment {
    static D: OnceLock<Deployment> = OnceLock::new();
    D.get_or_init(|| Deployment::generate(&["p0", "p1", "dealer", "client"]).unwrap())
}

pub fn identity(role: &str) -> TlsIdentity {
    deployment().identity(role).unwrap()
}

/// `p0` listens on a free port, `p1` connects; returns (p0's channel, p1's channel).
pub fn tcp_pair(options: TcpOptions) -> (TcpChannel, TcpChannel) {
    let listener = Listener::bind("127.0.0.1:0", &identity("p0"), options).unwrap();
    let addr = listener.local_addr();
    let client = std::thread::spawn(move || connect(addr, &identity("p1"), "p0", options).unwrap());
    let server = listener.accept(&["p1"]).unwrap();
    (server, client.join().unwrap())
}
