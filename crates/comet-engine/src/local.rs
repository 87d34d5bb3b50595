//! The default deployment: client, P0, P1 and the dealer in one process, the servers on their
//! own threads, every link an in-memory channel (shaped by a [`NetProfile`] if asked).

use crate::error::{EngineError, Result};
use crate::model::{share_model, ServerModel};
use crate::remote::{client_connect, dealer_session, server_session};
use crate::report::GenerationReport;
use crate::session::{Client, ServerSummary};
use crate::sparse::SessionMode;
use comet_core::{FixedPoint, PartyId, Prg};
use comet_dealer::{Dealer, InProcessDealer};
use comet_model::heads::HeadPredictor;
use comet_model::predictor::Predictor;
use comet_model::{LlamaConfig, Model, Sampler};
use comet_net::{memory_pair_shaped, NetProfile};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A model shared between two in-process servers, with the dealer that holds its masks.
#[derive(Debug)]
pub struct LocalDeployment {
    config: LlamaConfig,
    fp: FixedPoint,
    dealer: InProcessDealer,
    models: [Arc<ServerModel>; 2],
    prg: Prg,
}

impl LocalDeployment {
    /// Shares `model` at fixed-point format `fp` with a dealer seeded from the OS.
    pub fn share(model: &Model, fp: FixedPoint) -> Result<Self> {
        Self::share_with(model, fp, Dealer::new(), Prg::from_entropy())
    }

    /// Shares `model` with a given dealer and session PRG (deterministic tests).
    pub fn share_with(model: &Model, fp: FixedPoint, mut dealer: Dealer, prg: Prg) -> Result<Self> {
        let [m0, m1] = share_model(model, fp, &mut dealer)?;
        Ok(Self {
            config: model.config().clone(),
            fp,
            dealer: InProcessDealer::new(dealer),
            models: [Arc::new(m0), Arc::new(m1)],
            prg,
        })
    }

    /// The shared model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Starts a session of up to `capacity` positions: fresh KV cache masks at the dealer,
    /// both servers on their own threads, and the client's end returned.
    ///
    /// The parties run the same session code and exchange the same messages as separate
    /// processes (`crate::remote`). The KV cache masks live under fixed dealer ids, so a
    /// deployment runs one session at a time: starting a new one replaces the previous
    /// session's masks.
    pub fn session(&mut self, capacity: usize, net: NetProfile) -> Result<LocalSession> {
        self.session_with(capacity, net, SessionMode::default())
    }

    /// Gives the dealer the model's plaintext FFN weights, which sparse sessions need (the
    /// dealer re-permutes and re-masks them per session, DESIGN.md §7.5).
    pub fn enable_sparse(&mut self, model: &Model) -> Result<()> {
        self.enable_sparse_with(model, None)
    }

    /// [`LocalDeployment::enable_sparse`] with a trained predictor the dealer also permutes
    /// per session (for the MLP gate).
    pub fn enable_sparse_with(
        &mut self,
        model: &Model,
        predictor: Option<&Predictor>,
    ) -> Result<()> {
        let c = model.config();
        if c != &self.config {
            return Err(EngineError::ShareMismatch(
                "enable_sparse got a model other than the shared one".into(),
            ));
        }
        for l in 0..c.n_layers {
            let mut plain = crate::model::plain_ffn(model, self.fp, l);
            plain.predictor =
                predictor.map(|pr| crate::model::plain_predictor(model, pr, self.fp, l));
            self.dealer.with(|d| d.insert_plain_ffn(l as u32, plain));
        }
        Ok(())
    }

    /// The secret neuron order of layer `layer` in the current sparse session, as only the
    /// dealer knows it (tests map the servers' opened bits back to neurons with it).
    pub fn ffn_permutation(&self, layer: usize) -> Option<Vec<usize>> {
        self.dealer
            .with(|d| d.ffn_permutation(layer as u32).map(<[usize]>::to_vec))
    }

    /// Gives the dealer the model's plaintext attention weights, which head-sparse sessions
    /// need (permuted per session), with the trained head predictor if the gate uses one.
    pub fn enable_sparse_heads(
        &mut self,
        model: &Model,
        predictor: Option<&HeadPredictor>,
    ) -> Result<()> {
        let c = model.config();
        if c != &self.config {
            return Err(EngineError::ShareMismatch(
                "enable_sparse_heads got a model other than the shared one".into(),
            ));
        }
        for l in 0..c.n_layers {
            let mut plain = crate::model::plain_attn(model, self.fp, l);
            plain.predictor = predictor
                .map(|pr| crate::model::plain_head_predictor(model, pr, self.fp, l))
                .transpose()?;
            self.dealer.with(|d| d.insert_plain_attn(l as u32, plain));
        }
        Ok(())
    }

    /// The secret head order of layer `layer` in the current head-sparse session, as only
    /// the dealer knows it (position `i` of the servers' order holds head `perm[i]`).
    pub fn head_permutation(&self, layer: usize) -> Option<Vec<usize>> {
        self.dealer
            .with(|d| d.head_permutation(layer as u32).map(<[usize]>::to_vec))
    }

    /// [`LocalDeployment::session`] with the FFN and attention run as `mode` says.
    pub fn session_with(
        &mut self,
        capacity: usize,
        net: NetProfile,
        mode: impl Into<SessionMode>,
    ) -> Result<LocalSession> {
        let mode: SessionMode = mode.into();
        check_capacity(&self.config, capacity)?;
        let spawn_err =
            |e: std::io::Error| EngineError::Session(format!("cannot start a party thread: {e}"));
        let (s0, s1) = memory_pair_shaped(net);
        let (c0, k0) = client_pair(net);
        let (c1, k1) = client_pair(net);
        let (d0, dd0) = client_pair(NetProfile::none());
        let (d1, dd1) = client_pair(NetProfile::none());
        let shared = self.dealer.shared();
        let config = self.config.clone();
        let mut dealer_prg = Prg::from_seed(self.prg.next_seed());
        let dealer = std::thread::Builder::new()
            .name("comet-dealer".into())
            .spawn(move || {
                dealer_session(
                    shared,
                    &config,
                    [Box::new(dd0), Box::new(dd1)],
                    &mut dealer_prg,
                )
            })
            .map_err(spawn_err)?;
        let mut handles = Vec::with_capacity(2);
        for (((id, link), client_end), dealer_end) in [PartyId::P0, PartyId::P1]
            .into_iter()
            .zip([s0, s1])
            .zip([k0, k1])
            .zip([d0, d1])
        {
            let model = self.models[id.index()].clone();
            let mode = mode.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("comet-{}", crate::session::party_name(id)))
                    .spawn(move || {
                        server_session(
                            id,
                            &model,
                            &mode,
                            Box::new(client_end),
                            Box::new(link),
                            Box::new(dealer_end),
                        )
                    })
                    .map_err(spawn_err)?,
            );
        }
        let mut session = LocalSession {
            client: None,
            handles,
            dealer: Some(dealer),
        };
        match client_connect(
            [Box::new(c0), Box::new(c1)],
            self.config.vocab_size,
            self.fp,
            capacity,
        ) {
            Ok(client) => {
                session.client = Some(client);
                Ok(session)
            }
            Err(e) => {
                let _ = session.abort();
                Err(e)
            }
        }
    }
}

/// How long a client or server waits on the client link: a step runs the whole model between
/// two messages, so this is much longer than the per-protocol-step timeout between servers.
pub const CLIENT_LINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

fn client_pair(net: NetProfile) -> (comet_net::MemoryChannel, comet_net::MemoryChannel) {
    let (a, b) = memory_pair_shaped(net);
    (
        a.with_timeout(CLIENT_LINK_TIMEOUT),
        b.with_timeout(CLIENT_LINK_TIMEOUT),
    )
}

/// Fails unless a session of `capacity` positions fits the model.
pub fn check_capacity(config: &LlamaConfig, capacity: usize) -> Result<()> {
    if capacity == 0 || capacity > config.context_length {
        return Err(EngineError::InvalidRequest(format!(
            "a session of {capacity} positions; the model's context is {} tokens",
            config.context_length
        )));
    }
    Ok(())
}

/// A running in-process session.
#[derive(Debug)]
pub struct LocalSession {
    client: Option<Client>,
    handles: Vec<JoinHandle<Result<ServerSummary>>>,
    dealer: Option<JoinHandle<Result<()>>>,
}

impl LocalSession {
    /// The client's end.
    pub fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("the client lives until finish")
    }

    /// Ends the session and waits for both servers; returns the first server error, if any.
    pub fn finish(mut self) -> Result<[ServerSummary; 2]> {
        let client = self.client.take().expect("finish runs once");
        let sent = client.finish();
        let results = self.join();
        let dealer = self.join_dealer();
        sent?;
        let mut it = results.into_iter();
        let a = it.next().expect("two servers")?;
        let b = it.next().expect("two servers")?;
        dealer?;
        Ok([a, b])
    }

    /// Drops the client's links (as a crashed client would) and waits for both servers;
    /// returns their results.
    pub fn abort(mut self) -> Vec<Result<ServerSummary>> {
        self.client.take();
        let results = self.join();
        let _ = self.join_dealer();
        results
    }

    fn join_dealer(&mut self) -> Result<()> {
        match self.dealer.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(EngineError::Session("the dealer thread panicked".into()))),
            None => Ok(()),
        }
    }

    fn join(&mut self) -> Vec<Result<ServerSummary>> {
        std::mem::take(&mut self.handles)
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(EngineError::Session("a server thread panicked".into()))
                })
            })
            .collect()
    }
}

/// What a generation produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The generated token ids.
    pub tokens: Vec<u32>,
    /// True when generation stopped at a stop token.
    pub stopped_at_stop_token: bool,
    /// Costs per step.
    pub report: GenerationReport,
}

/// Generates up to `max_tokens` after `prompt` through `client` (prefill in one step, then
/// one token per step), calling `on_token` as soon as each token is chosen.
pub fn generate(
    client: &mut Client,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    stop_tokens: &[u32],
    net: &str,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(EngineError::InvalidRequest("the prompt is empty".into()));
    }
    let mut report = GenerationReport {
        net: net.to_string(),
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let mut tokens = Vec::new();
    let mut stopped = false;
    if max_tokens == 0 {
        return Ok(Generation {
            tokens,
            stopped_at_stop_token: false,
            report,
        });
    }
    let first = client.step(prompt, false)?;
    report.push(first.costs);
    let mut logits = first.logits;
    loop {
        let next = sampler.sample(&logits);
        tokens.push(next);
        on_token(next)?;
        if stop_tokens.contains(&next) {
            stopped = true;
            break;
        }
        if tokens.len() >= max_tokens {
            break;
        }
        let step = client.step(&[next], false)?;
        report.push(step.costs);
        logits = step.logits;
    }
    report.generated_tokens = tokens.len();
    Ok(Generation {
        tokens,
        stopped_at_stop_token: stopped,
        report,
    })
}

/// Session capacity for a prompt and a token budget: every generated token but the last is
/// fed back, so `prompt + max_tokens − 1` positions (at least the prompt).
pub fn capacity_for(prompt_tokens: usize, max_tokens: usize) -> usize {
    prompt_tokens + max_tokens.saturating_sub(1)
}
