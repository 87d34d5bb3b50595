//! TCP transport with mutual TLS 1.3.
//!
//! A [`TcpChannel`] carries exactly the frames of the in-memory transport inside a TLS
//! stream, and its [`CostMeter`] counts the same bytes (frame header + payload; TLS record
//! overhead is not counted). `send` buffers; `flush` encrypts and hands the ciphertext to the
//! channel's writer thread, so a flush never blocks on the peer and a symmetric exchange of
//! large messages cannot deadlock on full socket buffers; `recv` waits up to the channel's
//! timeout *per read* (an inactivity timeout). Sockets use `TCP_NODELAY`.
//!
//! Setting up a link:
//! * one side [`listen`]s (or binds a [`Listener`] to accept several peers, e.g. the dealer
//!   serving `p0` and `p1`), the other [`connect`]s, retrying until its connect timeout so
//!   that processes can start in any order;
//! * both present their role's certificate; each checks that the other's chains to the
//!   deployment CA and names the expected role (see [`crate::tls`]);
//! * both then exchange a 6-byte hello (`COMET` + protocol version), not metered, which
//!   rejects other protocol versions early and makes a TLS 1.3 client learn at once when the
//!   server refused its certificate.
//!
//! Shaping: with a [`NetProfile`] other than `none`, the sending side stamps each flushed
//! chunk with the instant the [`LinkShaper`] says it may reach the peer (accounted on the
//! frame bytes, exactly as in memory), and the writer thread holds the ciphertext until then.
//! The sender therefore never waits for latency, bandwidth serialises chunks, and the
//! receiver sees data when the model says it arrives, whichever process it is in. The TLS
//! handshake itself is not shaped.

use crate::shaping::{sleep_until, LinkShaper, NetProfile};
use crate::tls::{self, TlsIdentity};
use crate::{frame, Channel, CostMeter, NetError, DEFAULT_TIMEOUT};
use rustls::{ClientConnection, Connection, ServerConnection};
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The hello both sides send after the TLS handshake: magic and protocol version.
const HELLO_MAGIC: &[u8; 5] = b"COMET";
/// Plaintext is handed to TLS and written out in pieces of this size, bounding buffers.
const WRITE_PIECE: usize = 1 << 20;
/// Socket read buffer size.
const READ_BUFFER: usize = 256 << 10;
/// How often a listener polls for a pending connection.
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// Pause between connection attempts while the peer is not listening yet.
const CONNECT_RETRY: Duration = Duration::from_millis(50);

/// Timeouts and shaping of a TCP link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// Longest wait for any single read or write, and for each step of the TLS handshake.
    pub timeout: Duration,
    /// How long [`connect`] keeps retrying, and how long a listener waits for its peers.
    pub connect_timeout: Duration,
    /// Shaping of what this endpoint sends.
    pub profile: NetProfile,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_TIMEOUT,
            profile: NetProfile::none(),
        }
    }
}

impl TcpOptions {
    /// Sets the per-read/write timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Sets how long connecting and accepting may take.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sets the shaping of what this endpoint sends.
    pub fn with_profile(mut self, profile: NetProfile) -> Self {
        self.profile = profile;
        self
    }
}

/// A socket timeout must be non-zero.
fn socket_timeout(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

/// Ciphertext and the instant it may reach the peer, for the shaping writer thread.
type TimedChunk = (Instant, Vec<u8>);

/// Writer thread that puts ciphertext on the socket, each chunk no earlier than its
/// delivery instant (immediately when unshaped).
struct WriterThread {
    shaper: LinkShaper,
    queue: Option<Sender<TimedChunk>>,
    thread: Option<JoinHandle<()>>,
    failure: Arc<Mutex<Option<(io::ErrorKind, String)>>>,
}

impl WriterThread {
    fn start(stream: TcpStream, profile: NetProfile) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<TimedChunk>();
        let failure = Arc::new(Mutex::new(None));
        let failure_w = Arc::clone(&failure);
        let thread = std::thread::Builder::new()
            .name("comet-net-writer".into())
            .spawn(move || run_writer(stream, rx, failure_w))?;
        Ok(Self {
            shaper: LinkShaper::new(profile),
            queue: Some(tx),
            thread: Some(thread),
            failure,
        })
    }

    fn failure(&self) -> io::Error {
        let f = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match f {
            Some((kind, msg)) => io::Error::new(kind, msg),
            None => io::Error::new(io::ErrorKind::BrokenPipe, "writer thread stopped"),
        }
    }

    /// Queues `bytes` of ciphertext carrying `accounted` frame bytes.
    fn ship(&mut self, bytes: Vec<u8>, accounted: usize) -> io::Result<()> {
        if self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Err(self.failure());
        }
        let at = self.shaper.schedule(accounted);
        let queue = self.queue.as_ref().expect("queue lives until drop");
        queue.send((at, bytes)).map_err(|_| self.failure())
    }

    /// Delivers what is queued (at its scheduled instants) and stops the thread.
    fn finish(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_writer(
    mut stream: TcpStream,
    rx: Receiver<TimedChunk>,
    failure: Arc<Mutex<Option<(io::ErrorKind, String)>>>,
) {
    while let Ok((at, bytes)) = rx.recv() {
        sleep_until(at);
        if let Err(e) = stream.write_all(&bytes) {
            tracing::debug!("writer thread: {e}");
            *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some((e.kind(), e.to_string()));
            return;
        }
    }
}

/// The socket under the TLS connection: reads on the caller's thread; writes straight out
/// during the handshake, then through the writer thread.
struct Link {
    /// The socket, read through a large buffer: rustls asks for at most one record (often
    /// 4 KiB) per read, which would otherwise cost a system call each.
    stream: BufReader<TcpStream>,
    writer: Option<WriterThread>,
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

/// A connected, authenticated TLS link to one peer. Implements [`Channel`].
pub struct TcpChannel {
    conn: Connection,
    link: Link,
    pending: Vec<u8>,
    peer_role: String,
    peer_addr: SocketAddr,
    timeout: Duration,
    meter: CostMeter,
}

impl fmt::Debug for TcpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpChannel")
            .field("peer_role", &self.peer_role)
            .field("peer_addr", &self.peer_addr)
            .field("timeout", &self.timeout)
            .field("profile", &self.profile())
            .finish_non_exhaustive()
    }
}

impl TcpChannel {
    /// The role the peer authenticated as (from its certificate).
    pub fn peer_role(&self) -> &str {
        &self.peer_role
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The shaping applied to what this endpoint sends.
    pub fn profile(&self) -> NetProfile {
        self.link
            .writer
            .as_ref()
            .map(|s| s.shaper.profile())
            .unwrap_or_default()
    }

    /// Changes the per-read/write timeout.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), NetError> {
        let t = socket_timeout(timeout);
        self.link.stream.get_ref().set_read_timeout(Some(t))?;
        self.link.stream.get_ref().set_write_timeout(Some(t))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Sends raw bytes through TLS, bypassing framing and the meter (fault-injection tests).
    pub fn send_raw_for_test(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.write_plain(bytes, bytes.len())
    }

    fn closed(&self) -> NetError {
        NetError::Closed(format!(" ({} at {})", self.peer_role, self.peer_addr))
    }

    fn map_io(&self, e: io::Error) -> NetError {
        if let Some(t) = tls::describe_tls_io_error(&e, &[&self.peer_role]) {
            return t;
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => NetError::Timeout(self.timeout),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => self.closed(),
            _ => NetError::Io(e),
        }
    }

    /// Writes out whatever TLS has ready; `accounted` frame bytes are charged to the shaper.
    fn push_tls(&mut self, accounted: usize) -> Result<(), NetError> {
        let res = match self.link.writer.as_mut() {
            Some(writer) => {
                let mut cipher = Vec::new();
                while self.conn.wants_write() {
                    self.conn
                        .write_tls(&mut cipher)
                        .expect("writing to a Vec cannot fail");
                }
                if cipher.is_empty() {
                    Ok(())
                } else {
                    writer.ship(cipher, accounted)
                }
            }
            None => {
                let mut res = Ok(());
                while self.conn.wants_write() {
                    if let Err(e) = self.conn.write_tls(self.link.stream.get_mut()) {
                        res = Err(e);
                        break;
                    }
                }
                res
            }
        };
        res.map_err(|e| self.map_io(e))
    }

    /// Encrypts and writes `bytes`, charging the shaper `accounted` bytes in total.
    fn write_plain(&mut self, bytes: &[u8], accounted: usize) -> Result<(), NetError> {
        let mut charged = 0;
        let pieces = bytes.len().div_ceil(WRITE_PIECE);
        for (i, piece) in bytes.chunks(WRITE_PIECE).enumerate() {
            self.conn.writer().write_all(piece)?;
            let left = accounted - charged;
            let charge = if i + 1 == pieces {
                left
            } else {
                piece.len().min(left)
            };
            charged += charge;
            self.push_tls(charge)?;
        }
        Ok(())
    }

    /// Reads one more batch of TLS records from the socket and processes them.
    fn pull_tls(&mut self) -> Result<(), NetError> {
        match self.conn.read_tls(&mut self.link) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(self.map_io(e)),
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Tell the peer why (best effort), then report the cause here.
            let _ = self.push_tls(0);
            return Err(tls::describe_tls_error(&e, &[&self.peer_role]));
        }
        if self.conn.wants_write() {
            self.push_tls(0)?;
        }
        Ok(())
    }

    /// Fills `out` with plaintext; returns how many bytes arrived before the peer closed.
    fn fill(&mut self, out: &mut [u8]) -> Result<usize, NetError> {
        let mut got = 0;
        while got < out.len() {
            match self.conn.reader().read(&mut out[got..]) {
                Ok(0) => return Ok(got),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.pull_tls()?,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(got),
                Err(e) => return Err(self.map_io(e)),
            }
        }
        Ok(got)
    }

    /// Exchanges the unmetered hello and checks the peer's.
    fn hello(&mut self) -> Result<(), NetError> {
        let mut hello = HELLO_MAGIC.to_vec();
        hello.push(frame::PROTOCOL_VERSION);
        self.write_plain(&hello, 0)?;
        let mut got = [0u8; 6];
        let n = self.fill(&mut got)?;
        if n < got.len() {
            return Err(self.closed());
        }
        if &got[..5] != HELLO_MAGIC {
            return Err(NetError::Malformed(format!(
                "peer {} is not a comet endpoint",
                self.peer_addr
            )));
        }
        if got[5] != frame::PROTOCOL_VERSION {
            return Err(NetError::Version {
                got: got[5],
                expected: frame::PROTOCOL_VERSION,
            });
        }
        Ok(())
    }

    /// Runs the TLS handshake and hello on a fresh socket; the peer's role is read from its
    /// certificate and must be one of `expected`.
    fn establish(
        mut conn: Connection,
        stream: TcpStream,
        expected: &[&str],
        opts: TcpOptions,
    ) -> Result<Self, NetError> {
        let peer_addr = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(socket_timeout(opts.timeout)))?;
        stream.set_write_timeout(Some(socket_timeout(opts.timeout)))?;
        conn.set_buffer_limit(None);
        let mut channel = TcpChannel {
            conn,
            link: Link {
                stream: BufReader::with_capacity(READ_BUFFER, stream),
                writer: None,
            },
            pending: Vec::new(),
            peer_role: expected.join("|"),
            peer_addr,
            timeout: opts.timeout,
            meter: CostMeter::new(),
        };
        while channel.conn.is_handshaking() {
            if let Err(e) = channel.conn.complete_io(&mut channel.link) {
                let err = match tls::describe_tls_io_error(&e, expected) {
                    Some(t) => t,
                    None => channel.map_io(e),
                };
                return Err(err);
            }
        }
        let cert = channel
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| NetError::Tls("peer presented no certificate".into()))?;
        channel.peer_role = tls::role_of(cert, expected).ok_or_else(|| {
            NetError::Tls(format!(
                "peer certificate names none of the roles {expected:?}"
            ))
        })?;
        channel.hello()?;
        let writer_stream = channel.link.stream.get_ref().try_clone()?;
        channel.link.writer = Some(WriterThread::start(writer_stream, opts.profile)?);
        tracing::debug!(peer = %channel.peer_role, addr = %peer_addr, "TLS link up");
        Ok(channel)
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Only the handshake and hello write through here.
        self.stream.get_mut().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.get_mut().flush()
    }
}

impl Channel for TcpChannel {
    fn send(&mut self, msg: &[u8]) -> Result<(), NetError> {
        if msg.len() > frame::MAX_FRAME {
            return Err(NetError::TooLarge {
                len: msg.len(),
                max: frame::MAX_FRAME,
            });
        }
        frame::encode_into(msg, &mut self.pending);
        self.meter.record_send(frame::HEADER_LEN + msg.len());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), NetError> {
        self.meter.record_flush();
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.write_plain(&pending, pending.len())
    }

    fn recv(&mut self) -> Result<Vec<u8>, NetError> {
        let mut header = [0u8; frame::HEADER_LEN];
        let n = self.fill(&mut header)?;
        if n == 0 {
            return Err(self.closed());
        }
        if n < header.len() {
            return Err(NetError::Malformed(format!(
                "truncated frame: peer closed after {n} bytes of a {}-byte header",
                frame::HEADER_LEN
            )));
        }
        let len = frame::parse_header(&header, frame::MAX_FRAME)?;
        // Grow the buffer as bytes arrive rather than trusting the announced length.
        let mut payload = Vec::with_capacity(len.min(WRITE_PIECE));
        while payload.len() < len {
            let start = payload.len();
            let step = (len - start).min(WRITE_PIECE);
            payload.resize(start + step, 0);
            let got = self.fill(&mut payload[start..])?;
            if got < step {
                return Err(NetError::Malformed(format!(
                    "truncated frame: peer closed after {} of {len} payload bytes",
                    start + got
                )));
            }
        }
        self.meter.record_recv(frame::HEADER_LEN + len);
        Ok(payload)
    }

    fn meter(&self) -> &CostMeter {
        &self.meter
    }
}

impl Drop for TcpChannel {
    fn drop(&mut self) {
        // Best effort: tell the peer we are done, after everything queued has reached it.
        self.conn.send_close_notify();
        let _ = self.push_tls(0);
        if let Some(mut writer) = self.link.writer.take() {
            writer.finish();
        }
    }
}

fn display_addr(addr: &impl ToSocketAddrs) -> String {
    match addr.to_socket_addrs() {
        Ok(mut a) => a
            .next()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "<no address>".into()),
        Err(e) => format!("<unresolvable: {e}>"),
    }
}

/// Connects to the peer `expected_peer` at `addr`, retrying while nobody listens yet (up to
/// `opts.connect_timeout`), then authenticates both sides.
pub fn connect(
    addr: impl ToSocketAddrs,
    identity: &TlsIdentity,
    expected_peer: &str,
    opts: TcpOptions,
) -> Result<TcpChannel, NetError> {
    let name = tls::server_name(expected_peer)?;
    let config = identity.client_config()?;
    let shown = display_addr(&addr);
    let deadline = Instant::now() + opts.connect_timeout;
    let last_error = loop {
        let mut last = String::from("address resolved to nothing");
        match addr.to_socket_addrs() {
            Ok(list) => {
                for sa in list {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match TcpStream::connect_timeout(&sa, socket_timeout(left)) {
                        Ok(s) => return finish_connect(s, config, name, expected_peer, opts),
                        Err(e) => last = e.to_string(),
                    }
                }
            }
            Err(e) => {
                return Err(NetError::Connect {
                    addr: shown,
                    reason: format!("cannot resolve address: {e}"),
                });
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break last;
        }
        std::thread::sleep(CONNECT_RETRY.min(deadline - now));
    };
    Err(NetError::Connect {
        addr: shown,
        reason: format!(
            "no {expected_peer} listening within {:?} (last error: {last_error})",
            opts.connect_timeout
        ),
    })
}

fn finish_connect(
    stream: TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    expected_peer: &str,
    opts: TcpOptions,
) -> Result<TcpChannel, NetError> {
    let conn = ClientConnection::new(config, name).map_err(|e| NetError::Tls(e.to_string()))?;
    TcpChannel::establish(Connection::Client(conn), stream, &[expected_peer], opts)
}

/// A bound TCP port that accepts authenticated peers (e.g. the dealer serving `p0` and `p1`).
pub struct Listener {
    inner: TcpListener,
    local: SocketAddr,
    identity: TlsIdentity,
    opts: TcpOptions,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .field("role", &self.identity.role())
            .finish()
    }
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port; see [`Listener::local_addr`]).
    pub fn bind(
        addr: impl ToSocketAddrs,
        identity: &TlsIdentity,
        opts: TcpOptions,
    ) -> Result<Self, NetError> {
        let shown = display_addr(&addr);
        let inner = TcpListener::bind(addr).map_err(|e| NetError::Connect {
            addr: shown,
            reason: format!("cannot listen: {e}"),
        })?;
        inner.set_nonblocking(true)?;
        let local = inner.local_addr()?;
        Ok(Self {
            inner,
            local,
            identity: identity.clone(),
            opts,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Accepts one peer whose certificate names one of `expected_peers` (see
    /// [`TcpChannel::peer_role`] for which), waiting up to `opts.connect_timeout`. A peer that
    /// fails authentication ends the wait with its error.
    pub fn accept(&self, expected_peers: &[&str]) -> Result<TcpChannel, NetError> {
        self.accept_until(Instant::now() + self.opts.connect_timeout, expected_peers)
    }

    /// Accepts one connection from each of `peers`, in any arrival order, within one
    /// `opts.connect_timeout`; returns the channels in the order of `peers`.
    pub fn accept_all(&self, peers: &[&str]) -> Result<Vec<TcpChannel>, NetError> {
        let deadline = Instant::now() + self.opts.connect_timeout;
        let mut got: Vec<Option<TcpChannel>> = peers.iter().map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let waiting: Vec<&str> = peers
                .iter()
                .zip(&got)
                .filter(|(_, c)| c.is_none())
                .map(|(p, _)| *p)
                .collect();
            let channel = self.accept_until(deadline, &waiting)?;
            let slot = peers
                .iter()
                .position(|p| *p == channel.peer_role())
                .expect("role is one of waiting");
            got[slot] = Some(channel);
        }
        Ok(got.into_iter().map(|c| c.expect("all accepted")).collect())
    }

    fn accept_until(&self, deadline: Instant, expected: &[&str]) -> Result<TcpChannel, NetError> {
        for role in expected {
            tls::validate_role(role)?;
        }
        let config = self.identity.server_config(expected)?;
        loop {
            match self.inner.accept() {
                Ok((stream, from)) => {
                    stream.set_nonblocking(false)?;
                    tracing::debug!(%from, "accepted TCP connection");
                    let conn =
                        ServerConnection::new(config).map_err(|e| NetError::Tls(e.to_string()))?;
                    return TcpChannel::establish(
                        Connection::Server(conn),
                        stream,
                        expected,
                        self.opts,
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(NetError::AcceptTimeout {
                            addr: self.local.to_string(),
                            expected: expected.join(" or "),
                            waited: self.opts.connect_timeout,
                        });
                    }
                    std::thread::sleep(ACCEPT_POLL.min(deadline - now));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NetError::Io(e)),
            }
        }
    }
}

/// Binds `addr`, accepts one peer that authenticates as `expected_peer`, and returns the
/// channel (the common two-party case).
pub fn listen(
    addr: impl ToSocketAddrs,
    identity: &TlsIdentity,
    expected_peer: &str,
    opts: TcpOptions,
) -> Result<TcpChannel, NetError> {
    Listener::bind(addr, identity, opts)?.accept(&[expected_peer])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Deployment;
    use std::net::Shutdown;

    fn pair() -> (TcpChannel, TcpChannel) {
        let d = Deployment::generate(&["p0", "p1"]).unwrap();
        let opts = TcpOptions::default()
            .with_timeout(Duration::from_secs(2))
            .with_connect_timeout(Duration::from_secs(2));
        let listener = Listener::bind("127.0.0.1:0", &d.identity("p0").unwrap(), opts).unwrap();
        let addr = listener.local_addr();
        let p1 = d.identity("p1").unwrap();
        let t = std::thread::spawn(move || connect(addr, &p1, "p0", opts).unwrap());
        let p0 = listener.accept(&["p1"]).unwrap();
        (p0, t.join().unwrap())
    }

    #[test]
    fn abrupt_close_without_close_notify_is_closed_or_truncated() {
        // At a frame boundary: the peer vanished (e.g. its process was killed).
        let (mut p0, p1) = pair();
        p1.link.stream.get_ref().shutdown(Shutdown::Both).unwrap();
        drop(p1);
        assert!(matches!(p0.recv(), Err(NetError::Closed(_))));
        // Inside a frame: the partial frame is named.
        let (mut p0, mut p1) = pair();
        p1.send_raw_for_test(&[frame::PROTOCOL_VERSION, 9, 0, 0, 0, 1])
            .unwrap();
        // Let the writer thread put the partial frame on the wire, then cut the socket.
        p1.link.writer.take().unwrap().finish();
        p1.link.stream.get_ref().shutdown(Shutdown::Both).unwrap();
        drop(p1);
        let err = p0.recv().unwrap_err();
        assert!(
            matches!(err, NetError::Malformed(ref m) if m.contains("1 of 9")),
            "{err}"
        );
    }

    #[test]
    fn write_pieces_charge_exactly_the_accounted_bytes() {
        // A flush larger than one piece still reaches the peer intact.
        let (mut p0, mut p1) = pair();
        let big: Vec<u8> = (0..(3 * WRITE_PIECE + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        p0.send(&big).unwrap();
        p0.flush().unwrap();
        assert_eq!(p1.recv().unwrap(), big);
    }
}
