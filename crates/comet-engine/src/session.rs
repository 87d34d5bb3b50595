//! A generation session: the client and the two servers, and the messages between them.
//!
//! Per step the client sends `STEP(m, all_logits)` to both servers; each server fetches its
//! half of a [`ClientInputMask`] for the embedding and replies with the seed of its share of
//! `A`; the client, knowing `A = A_0 + A_1`, sends the same `E = onehot − A` to both; the
//! servers run the secure forward and reply with their shares of the logits (scale `2f`) and
//! the step's costs. Any failure is replied as an error message where the link still works,
//! so every surviving party stops with the cause. The same bytes cross in-memory channels
//! (the default, one process) and TLS links (separate processes).

use crate::error::{EngineError, Result};
use crate::forward;
use crate::heads::HeadSession;
use crate::kv::{KvSessionSeeds, SecureKvCache};
use crate::model::ServerModel;
use crate::report::{DealerClock, PartyCosts, StepCosts};
use crate::sparse::{FfnSession, SessionMode};
use comet_core::{FixedPoint, PartyId, Seed};
use comet_dealer::kinds::attention::ClientInputMask;
use comet_dealer::kinds::expand;
use comet_dealer::kinds::matmul::MatmulParams;
use comet_net::codec::{Reader, Writer};
use comet_net::{Channel, NetError};
use comet_protocols::Party;
use std::time::Instant;

const MSG_STEP: u8 = 1;
const MSG_END: u8 = 2;
const REPLY_OK: u8 = 0;
const REPLY_ERROR: u8 = 1;

/// What a server did in a session.
#[derive(Clone, Debug, Default)]
pub struct ServerSummary {
    /// Steps served (prefill and decode).
    pub steps: usize,
    /// Positions in the KV cache at the end.
    pub positions: usize,
    /// Sparse FFN only: per step, per layer, the opened self-gate bits (`tokens × ffn_dim`,
    /// in the session's secret neuron order) — what this server learned.
    pub ffn_masks: Vec<Vec<Vec<bool>>>,
    /// Head sparsity only: per step, per layer, the heads that ran (`tokens × n_heads`, in the
    /// session's secret head order) — what this server learned.
    pub head_masks: Vec<Vec<Vec<bool>>>,
    /// This server's share of the KV cache at the end of the session (after `END`).
    pub cache: Option<SecureKvCache>,
}

/// Serves one client session on one server until the client sends `END` (or fails).
pub fn serve_session(
    p: &mut Party,
    model: &ServerModel,
    seeds: &KvSessionSeeds,
    mode: &SessionMode,
    client: &mut dyn Channel,
    clock: &DealerClock,
) -> Result<ServerSummary> {
    if model.party != p.id {
        return Err(EngineError::ShareMismatch(format!(
            "this server is {:?} but holds {:?}'s model shares",
            p.id, model.party
        )));
    }
    let mut cache = SecureKvCache::new(&model.config, seeds)?;
    let mut ffn: Option<FfnSession> = None;
    let mut heads: Option<HeadSession> = None;
    let mut summary = ServerSummary::default();
    loop {
        let msg = match client.recv() {
            Ok(msg) => msg,
            Err(NetError::Closed(_)) => {
                return Err(EngineError::Session(
                    "the client closed the session without END".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let request = parse_request(&msg)?;
        let Some((m, all_logits)) = request else {
            summary.positions = cache.len;
            summary.cache = Some(cache);
            return Ok(summary);
        };
        let step = StepContext {
            m,
            all_logits,
            mode,
            clock,
        };
        match serve_step(p, model, &mut cache, &mut ffn, &mut heads, client, &step) {
            Ok(()) => {
                summary.steps += 1;
                if let Some(h) = &heads {
                    summary.head_masks.push(h.state.masks().to_vec());
                }
                if let Some(f) = &ffn {
                    if !f.last_masks().is_empty() {
                        summary.ffn_masks.push(f.last_masks().to_vec());
                    }
                    if f.repermute_due(summary.steps) {
                        // The next step fetches freshly permuted weights.
                        ffn = None;
                    }
                }
            }
            Err(e) => {
                // Tell the client why, if the link still works; the original error wins.
                let _ = reply_error(client, &e.to_string());
                return Err(e);
            }
        }
    }
}

fn parse_request(msg: &[u8]) -> Result<Option<(usize, bool)>> {
    let mut r = Reader::new(msg);
    let bad = |e: NetError| EngineError::Session(format!("client request: {e}"));
    match r.u8().map_err(bad)? {
        MSG_STEP => {
            let m = r.u32().map_err(bad)? as usize;
            let all = r.u8().map_err(bad)? != 0;
            r.finish().map_err(bad)?;
            Ok(Some((m, all)))
        }
        MSG_END => Ok(None),
        other => Err(EngineError::Session(format!(
            "unknown client message {other}"
        ))),
    }
}

fn reply_error(chan: &mut dyn Channel, text: &str) -> Result<()> {
    let mut msg = vec![REPLY_ERROR];
    msg.extend_from_slice(text.as_bytes());
    chan.send(&msg)?;
    chan.flush()?;
    Ok(())
}

/// The public parameters of one step.
struct StepContext<'a> {
    m: usize,
    all_logits: bool,
    mode: &'a SessionMode,
    clock: &'a DealerClock,
}

fn serve_step(
    p: &mut Party,
    model: &ServerModel,
    cache: &mut SecureKvCache,
    ffn: &mut Option<FfnSession>,
    heads: &mut Option<HeadSession>,
    client: &mut dyn Channel,
    step: &StepContext,
) -> Result<()> {
    let StepContext {
        m,
        all_logits,
        mode,
        clock,
    } = *step;
    if m == 0 {
        return Err(EngineError::InvalidRequest("a step with no tokens".into()));
    }
    cache.check_room(m)?;
    // The first step (and the first after an FFN re-permutation) sets up the session's FFN
    // and head state (sparse modes: the permuted weights); its bytes and time are reported
    // apart.
    let (mut setup_offline_bytes, mut setup_ms) = (0, 0.0);
    if ffn.is_none() || (heads.is_none() && mode.heads.is_some()) {
        let (before, setup_started) = (p.offline_meter().total(), Instant::now());
        if ffn.is_none() {
            *ffn = Some(FfnSession::start(p, &mode.ffn, &model.config)?);
        }
        if let (None, Some(policy)) = (&heads, &mode.heads) {
            *heads = Some(HeadSession::start(p, policy, &model.config)?);
        }
        let spent = p.offline_meter().total().since(&before);
        setup_offline_bytes = spent.bytes_sent + spent.bytes_received;
        setup_ms = setup_started.elapsed().as_secs_f64() * 1e3;
    }
    let ffn = ffn.as_mut().expect("started above");
    if let Some(h) = heads.as_mut() {
        h.state.begin_step(model.config.n_layers);
    }
    let before = PartyCosts::snapshot(p, clock);
    let started = Instant::now();
    let vocab = model.config.vocab_size;
    let mask: ClientInputMask = {
        let _s = p.scope("embed");
        p.correlation(&MatmulParams {
            m,
            k: vocab,
            weights: vec![(model.embedding.id, model.embedding.n)],
        })?
    };
    let mut w = Writer::new();
    w.u8(REPLY_OK).bytes(&mask.a_seed);
    client.send(&w.finish())?;
    client.flush()?;
    let e_msg = client.recv()?;
    let e = comet_net::codec::unpack_ring(&e_msg, m * vocab, 64)
        .map_err(|err| EngineError::Session(format!("masked one-hots: {err}")))?;
    let x = forward::embed(p, model, &e, &mask.mask, m)?;
    let rows = if all_logits { m } else { 1 };
    let sessions = forward::Sessions {
        ffn,
        heads: heads.as_mut(),
    };
    let logits = forward::forward(p, model, cache, sessions, x, m, rows)?;
    let mut costs = PartyCosts::snapshot(p, clock).since(&before, started.elapsed());
    costs.ffn_active = ffn.last_active_counts();
    if let Some(h) = heads.as_mut() {
        let stats = h.state.stats();
        costs.attn_active = stats.active.clone();
        costs.kv_holes = stats.holes;
        costs.kv_refilled = stats.refilled;
        h.state.end_step();
    }
    costs.setup_offline_bytes = setup_offline_bytes;
    costs.setup_ms = setup_ms;
    let mut w = Writer::new();
    w.u8(REPLY_OK)
        .ring(&logits, 64)
        .bytes(&serde_json::to_vec(&costs).expect("costs serialise"));
    client.send(&w.finish())?;
    client.flush()?;
    Ok(())
}

/// The client's end of a session: holds the two server links and samples from the logits.
pub struct Client {
    servers: [Box<dyn Channel>; 2],
    vocab: usize,
    fp: FixedPoint,
    capacity: usize,
    len: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The client's view of one step: plaintext logits and what the step cost.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// Logits (`rows × vocab`), decoded from the servers' shares.
    pub logits: Vec<f32>,
    /// Costs of this step on both servers and the client links.
    pub costs: StepCosts,
}

impl Client {
    /// A client over links to P0 and P1, for a model with `vocab` tokens, in format `fp`, in a
    /// session of `capacity` positions.
    pub fn new(
        servers: [Box<dyn Channel>; 2],
        vocab: usize,
        fp: FixedPoint,
        capacity: usize,
    ) -> Self {
        Self {
            servers,
            vocab,
            fp,
            capacity,
            len: 0,
        }
    }

    /// Positions processed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs `tokens` through the secure model; returns the logits of the last token (or of
    /// every token with `all_logits`).
    pub fn step(&mut self, tokens: &[u32], all_logits: bool) -> Result<StepResult> {
        let m = tokens.len();
        if m == 0 {
            return Err(EngineError::InvalidRequest(
                "no tokens to run (empty prompt?)".into(),
            ));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.vocab
            )));
        }
        if self.len + m > self.capacity {
            return Err(EngineError::InvalidRequest(format!(
                "{} processed + {m} new tokens exceed the session's context of {} tokens",
                self.len, self.capacity
            )));
        }
        let started = Instant::now();
        let before: Vec<_> = self.servers.iter().map(|c| c.meter().total()).collect();
        let mut w = Writer::new();
        w.u8(MSG_STEP).u32(m as u32).u8(all_logits as u8);
        let request = w.finish();
        for chan in &mut self.servers {
            chan.send(&request)?;
            chan.flush()?;
        }
        let mut a = vec![0u64; m * self.vocab];
        for (i, chan) in self.servers.iter_mut().enumerate() {
            let reply = chan.recv().map_err(|e| server_gone(i, e))?;
            let body = check_reply(i, &reply)?;
            let seed: Seed = Reader::new(body)
                .bytes()
                .ok()
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| EngineError::Session(format!("P{i} sent a malformed mask seed")))?;
            comet_core::ring::add_assign(&mut a, &expand(&seed, m * self.vocab));
        }
        // E = onehot − A: the servers see only a uniformly random matrix.
        let mut e: Vec<u64> = a.iter().map(|v| v.wrapping_neg()).collect();
        for (r, &t) in tokens.iter().enumerate() {
            let slot = &mut e[r * self.vocab + t as usize];
            *slot = slot.wrapping_add(1);
        }
        let packed = comet_net::codec::pack_ring(&e, 64);
        for chan in &mut self.servers {
            chan.send(&packed)?;
            chan.flush()?;
        }
        let rows = if all_logits { m } else { 1 };
        let mut logits = vec![0u64; rows * self.vocab];
        let mut server_costs = Vec::with_capacity(2);
        for (i, chan) in self.servers.iter_mut().enumerate() {
            let reply = chan.recv().map_err(|e| server_gone(i, e))?;
            let body = check_reply(i, &reply)?;
            let mut r = Reader::new(body);
            let bad = |e: NetError| EngineError::Session(format!("P{i}'s logits: {e}"));
            let share = r.ring().map_err(bad)?;
            let costs: PartyCosts = serde_json::from_slice(r.bytes().map_err(bad)?)
                .map_err(|e| EngineError::Session(format!("P{i}'s cost record: {e}")))?;
            r.finish().map_err(bad)?;
            if share.len() != logits.len() {
                return Err(EngineError::Session(format!(
                    "P{i} sent {} logits, expected {}",
                    share.len(),
                    logits.len()
                )));
            }
            comet_core::ring::add_assign(&mut logits, &share);
            server_costs.push(costs);
        }
        self.len += m;
        let scale = 2.0f64.powi(2 * self.fp.frac_bits as i32);
        let logits = logits
            .iter()
            .map(|&v| (v as i64 as f64 / scale) as f32)
            .collect();
        let client_links: Vec<_> = self
            .servers
            .iter()
            .zip(&before)
            .map(|(c, b)| c.meter().total().since(b))
            .collect();
        let costs = StepCosts::new(m, started.elapsed(), server_costs, &client_links);
        Ok(StepResult { logits, costs })
    }

    /// Ends the session on both servers.
    pub fn finish(mut self) -> Result<()> {
        for chan in &mut self.servers {
            chan.send(&[MSG_END])?;
            chan.flush()?;
        }
        Ok(())
    }
}

fn server_gone(i: usize, e: NetError) -> EngineError {
    EngineError::Session(format!("server P{i} stopped answering: {e}"))
}

fn check_reply(i: usize, reply: &[u8]) -> Result<&[u8]> {
    match reply.split_first() {
        Some((&REPLY_OK, body)) => Ok(body),
        Some((&REPLY_ERROR, text)) => Err(EngineError::Session(format!(
            "server P{i} failed: {}",
            String::from_utf8_lossy(text)
        ))),
        _ => Err(EngineError::Session(format!(
            "server P{i} sent a reply without a status"
        ))),
    }
}

/// Which server a party index names.
pub fn party_name(id: PartyId) -> &'static str {
    match id {
        PartyId::P0 => "p0",
        PartyId::P1 => "p1",
    }
}
