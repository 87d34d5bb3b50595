//! comet-engine: secure generation with a llama-family model (DESIGN.md §4–§8), dense and
//! with a sparse FFN.
//!
//! * [`model`]: sharing a model once — fixed-point weights masked by the dealer as
//!   `F = W − B`, each server holding `F` and its share of `B`.
//! * [`kv`]: the secret-shared KV cache, each row opened once against its own fixed mask.
//! * [`forward`]: the secure forward of one server (embedding from a client-masked one-hot,
//!   RMSNorm, Q/K/V, RoPE, causal GQA softmax attention, Wo, SwiGLU, LM head).
//! * [`nl`]: the nonlinear steps with the ranges the model needs.
//! * [`session`]: the client ↔ server messages of a generation session.
//! * [`local`]: the default one-process deployment and the generation driver.
//! * [`shares`]: model shares on disk (`comet share-model`), checked against the model hash.
//! * [`remote`]: session start-up between separate processes (client, servers, dealer).
//! * [`report`]: per-step cost records and the cost report.
//! * [`sparse`]: the self-gated sparse FFN on per-session permuted weights (DESIGN.md §7).

pub mod error;
pub mod forward;
pub mod heads;
pub mod kv;
pub mod local;
pub mod model;
pub mod nl;
pub mod remote;
pub mod report;
pub mod session;
pub mod shares;
pub mod sparse;

pub use error::{EngineError, Result};
pub use local::{generate, Generation, LocalDeployment, LocalSession};
pub use model::{share_model, ServerModel};
pub use report::{GenerationReport, StepCosts};
pub use session::{serve_session, Client};
