//! Separate processes: the session start-up between client, servers and dealer over any
//! [`Channel`] (mutual TLS in deployments), then the same step messages as in one process.
//!
//! 1. The client sends `HELLO(capacity)` to both servers.
//! 2. P0 forwards the capacity to the dealer, which draws fresh KV cache masks for the session
//!    and sends each server its seeds (or an error text).
//! 3. Each server answers the client `OK` (or an error text) and serves the session with the
//!    dealer link as its correlation source ([`comet_dealer::RemoteSource`]).

use crate::error::{EngineError, Result};
use crate::kv::{start_kv_session, KvSessionSeeds};
use crate::model::ServerModel;
use crate::report::TimedSource;
use crate::session::{serve_session, Client, ServerSummary};
use crate::sparse::SessionMode;
use comet_core::{FixedPoint, PartyId, Prg};
use comet_dealer::{serve_party, Dealer, RemoteSource};
use comet_model::LlamaConfig;
use comet_net::codec::{Reader, Writer};
use comet_net::Channel;
use comet_protocols::Party;
use std::sync::{Arc, Mutex};

const HELLO: u8 = 7;
const OK: u8 = 0;
const ERROR: u8 = 1;

fn send_status(
    chan: &mut dyn Channel,
    result: &std::result::Result<Vec<u8>, String>,
) -> Result<()> {
    let mut msg = Vec::new();
    match result {
        Ok(body) => {
            msg.push(OK);
            msg.extend_from_slice(body);
        }
        Err(text) => {
            msg.push(ERROR);
            msg.extend_from_slice(text.as_bytes());
        }
    }
    chan.send(&msg)?;
    chan.flush()?;
    Ok(())
}

fn read_status(who: &str, msg: &[u8]) -> Result<Vec<u8>> {
    match msg.split_first() {
        Some((&OK, body)) => Ok(body.to_vec()),
        Some((&ERROR, text)) => Err(EngineError::Session(format!(
            "{who} refused: {}",
            String::from_utf8_lossy(text)
        ))),
        _ => Err(EngineError::Session(format!(
            "{who} sent a reply without a status"
        ))),
    }
}

fn parse_capacity(msg: &[u8]) -> Result<usize> {
    let mut r = Reader::new(msg);
    let bad = |e: comet_net::NetError| EngineError::Session(format!("session hello: {e}"));
    if r.u8().map_err(bad)? != HELLO {
        return Err(EngineError::Session(
            "the first client message is not a session hello".into(),
        ));
    }
    let capacity = r.u32().map_err(bad)? as usize;
    r.finish().map_err(bad)?;
    Ok(capacity)
}

/// Client side: opens a session of `capacity` positions on both servers.
pub fn client_connect(
    mut servers: [Box<dyn Channel>; 2],
    vocab: usize,
    fp: FixedPoint,
    capacity: usize,
) -> Result<Client> {
    let mut w = Writer::new();
    w.u8(HELLO).u32(capacity as u32);
    let hello = w.finish();
    for chan in &mut servers {
        chan.send(&hello)?;
        chan.flush()?;
    }
    for (i, chan) in servers.iter_mut().enumerate() {
        let reply = chan
            .recv()
            .map_err(|e| EngineError::Session(format!("server P{i} did not answer: {e}")))?;
        read_status(&format!("server P{i}"), &reply)?;
    }
    Ok(Client::new(servers, vocab, fp, capacity))
}

/// Server side of one session over separate links to the client, the other server and the
/// dealer.
pub fn server_session(
    id: PartyId,
    model: &ServerModel,
    mode: &SessionMode,
    mut client: Box<dyn Channel>,
    peer: Box<dyn Channel>,
    mut dealer: Box<dyn Channel>,
) -> Result<ServerSummary> {
    let hello = client.recv()?;
    let capacity = match parse_capacity(&hello).and_then(|c| {
        crate::local::check_capacity(&model.config, c)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            let _ = send_status(client.as_mut(), &Err(e.to_string()));
            return Err(e);
        }
    };
    if id == PartyId::P0 {
        let mut w = Writer::new();
        w.u32(capacity as u32);
        dealer.send(&w.finish())?;
        dealer.flush()?;
    }
    let seeds = match dealer
        .recv()
        .map_err(EngineError::from)
        .and_then(|m| read_status("the dealer", &m))
    {
        Ok(body) => KvSessionSeeds::decode(&body)?,
        Err(e) => {
            let _ = send_status(client.as_mut(), &Err(e.to_string()));
            return Err(e);
        }
    };
    if seeds.rows != capacity {
        let e = EngineError::Session(format!(
            "the dealer set up {} positions, the client asked {capacity}",
            seeds.rows
        ));
        let _ = send_status(client.as_mut(), &Err(e.to_string()));
        return Err(e);
    }
    send_status(client.as_mut(), &Ok(Vec::new()))?;
    let (source, clock) = TimedSource::new(Box::new(RemoteSource::new(dealer)));
    let mut party = Party::new(id, peer, Box::new(source), model.fp);
    serve_session(&mut party, model, &seeds, mode, client.as_mut(), &clock)
}

/// Dealer side of one session: reads the capacity from P0, sends both servers their KV seeds,
/// then answers both servers' correlation requests until they close their links.
pub fn dealer_session(
    dealer: Arc<Mutex<Dealer>>,
    config: &LlamaConfig,
    mut links: [Box<dyn Channel>; 2],
    prg: &mut Prg,
) -> Result<()> {
    let msg = links[0].recv()?;
    let mut r = Reader::new(&msg);
    let capacity = r
        .u32()
        .map_err(|e| EngineError::Session(format!("P0's session request: {e}")))?
        as usize;
    if let Err(e) = crate::local::check_capacity(config, capacity) {
        for link in &mut links {
            let _ = send_status(link.as_mut(), &Err(e.to_string()));
        }
        return Err(e);
    }
    let seeds = start_kv_session(
        &mut dealer.lock().unwrap_or_else(|e| e.into_inner()),
        config,
        capacity,
        prg,
    );
    for (link, s) in links.iter_mut().zip(&seeds) {
        send_status(link.as_mut(), &Ok(s.encode()))?;
    }
    let [mut l0, mut l1] = links;
    let d1 = dealer.clone();
    let handle = std::thread::spawn(move || serve_party(d1, PartyId::P1, l1.as_mut()));
    let r0 = serve_party(dealer, PartyId::P0, l0.as_mut());
    drop(l0);
    let r1 = handle.join().unwrap_or_else(|_| {
        Err(comet_dealer::DealerError::Malformed(
            "dealer thread panicked".into(),
        ))
    });
    r0?;
    r1?;
    Ok(())
}
