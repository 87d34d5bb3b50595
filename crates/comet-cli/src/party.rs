//! Separate processes over mutual TLS: `comet share-model`, `comet party --role ...` and the
//! client side of `comet generate --remote`.
//!
//! Topology of one session (each process serves one session and exits):
//! * dealer listens for `p0` and `p1`;
//! * p1 listens for `p0` and `client`, and connects to the dealer;
//! * p0 listens for `client`, and connects to p1 and to the dealer;
//! * the client connects to p0 and p1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use comet_core::{FixedPoint, PartyId, Prg};
use comet_engine::local::capacity_for;
use comet_engine::remote::{client_connect, dealer_session, server_session};
use comet_engine::shares::{file_sha256, load_dealer, load_server_model, write_shares};
use comet_engine::sparse::SessionMode;
use comet_model::{GgufFile, LlamaConfig, Sampler};
use comet_net::{connect, Channel, Listener, NetProfile, TcpOptions, TlsIdentity};

/// How long a party waits on the client link (a step runs the whole model) and for peers.
const LONG_WAIT: Duration = Duration::from_secs(900);
/// How long a server waits for one message of the other server or of the dealer.
const STEP_WAIT: Duration = Duration::from_secs(300);

/// Arguments of `comet share-model`.
#[derive(Args, Debug)]
pub struct ShareModelArgs {
    /// GGUF model file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf, or $COMET_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Directory to write the shares into (manifest.json, masked.bin, p0/p1/dealer seeds).
    #[arg(long)]
    pub out: PathBuf,
}

/// `comet share-model`: masks the model's weights once and writes each party's share.
pub fn share_model(args: ShareModelArgs) -> anyhow::Result<()> {
    let (model, _, path) = crate::secure::load_model(args.model.as_deref())?;
    let hash = file_sha256(&path)?;
    let manifest = write_shares(
        &model,
        &hash,
        FixedPoint::new(12),
        &args.out,
        &mut Prg::from_entropy(),
    )
    .with_context(|| format!("writing shares to {}", args.out.display()))?;
    println!(
        "wrote shares of {} ({} weights, sha256 {}) to {}",
        path.display(),
        manifest.weights.len(),
        hash,
        args.out.display()
    );
    println!("p0 needs manifest.json, masked.bin, p0.seeds; p1 the same with p1.seeds; the dealer manifest.json and dealer.seeds");
    Ok(())
}

/// Arguments of `comet party`.
#[derive(Args, Debug)]
pub struct PartyArgs {
    /// Which party this process is: p0, p1 or dealer.
    #[arg(long)]
    pub role: String,
    /// Address to listen on (p0: for the client; p1: for p0 and the client; dealer: for p0 and p1).
    #[arg(long)]
    pub listen: String,
    /// Addresses of the other parties, e.g. `p1=127.0.0.1:7001,dealer=127.0.0.1:7002`.
    #[arg(long, default_value = "")]
    pub peers: String,
    /// Directory with ca.pem and this role's certificate and key (`comet keys`).
    #[arg(long)]
    pub certs: PathBuf,
    /// Share directory written by `comet share-model`.
    #[arg(long)]
    pub shares: PathBuf,
    /// GGUF model file the shares must belong to (its hash is checked against the manifest).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Network shaping of what this party sends: none, lan, wan, slow.
    #[arg(long, default_value = "none")]
    pub net: String,
}

/// Parses `name=addr,name=addr`.
pub fn parse_peers(text: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, addr)) = item.split_once('=') else {
            bail!("peer `{item}` is not of the form role=host:port");
        };
        out.insert(name.trim().to_string(), addr.trim().to_string());
    }
    Ok(out)
}

fn peer<'a>(peers: &'a HashMap<String, String>, role: &str) -> anyhow::Result<&'a str> {
    peers
        .get(role)
        .map(String::as_str)
        .with_context(|| format!("--peers lacks the address of {role}"))
}

fn model_config(model: Option<&Path>) -> anyhow::Result<(LlamaConfig, String, PathBuf)> {
    let path = model
        .map(Path::to_path_buf)
        .unwrap_or_else(comet_model::default_model_path);
    let gguf = GgufFile::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let config = LlamaConfig::from_gguf(&gguf)?;
    Ok((config, file_sha256(&path)?, path))
}

fn boxed(c: comet_net::TcpChannel) -> Box<dyn Channel> {
    Box::new(c)
}

/// `comet party`: runs one session as p0, p1 or the dealer, then exits.
pub fn party(args: PartyArgs) -> anyhow::Result<()> {
    let net = crate::secure::parse_net(&args.net)?;
    let peers = parse_peers(&args.peers)?;
    let identity = TlsIdentity::load(&args.certs, &args.role).with_context(|| {
        format!(
            "loading the {} certificate from {}",
            args.role,
            args.certs.display()
        )
    })?;
    let (config, hash, _) = model_config(args.model.as_deref())?;
    let step = TcpOptions::default()
        .with_profile(net)
        .with_timeout(STEP_WAIT)
        .with_connect_timeout(LONG_WAIT);
    let long = step.with_timeout(LONG_WAIT);
    match args.role.as_str() {
        "dealer" => {
            let dealer = load_dealer(&args.shares, &config, &hash)?;
            let listener = Listener::bind(&args.listen, &identity, step)?;
            eprintln!("dealer listening on {}", listener.local_addr());
            let mut links = listener.accept_all(&["p0", "p1"])?.into_iter().map(boxed);
            let links = [links.next().expect("p0"), links.next().expect("p1")];
            dealer_session(
                Arc::new(Mutex::new(dealer)),
                &config,
                links,
                &mut Prg::from_entropy(),
            )?;
            eprintln!("dealer: session finished");
        }
        "p0" | "p1" => {
            let id = if args.role == "p0" {
                PartyId::P0
            } else {
                PartyId::P1
            };
            let model = load_server_model(&args.shares, id, &config, &hash)?;
            let listener = Listener::bind(&args.listen, &identity, long)?;
            eprintln!("{} listening on {}", args.role, listener.local_addr());
            let dealer = connect(peer(&peers, "dealer")?, &identity, "dealer", step)?;
            let (client, other) = if id == PartyId::P0 {
                let other = connect(peer(&peers, "p1")?, &identity, "p1", step)?;
                (listener.accept(&["client"])?, other)
            } else {
                let mut got = listener.accept_all(&["p0", "client"])?.into_iter();
                let other = got.next().expect("p0");
                (got.next().expect("client"), other)
            };
            let summary = server_session(
                id,
                &model,
                &SessionMode::default(),
                boxed(client),
                boxed(other),
                boxed(dealer),
            )
            .with_context(|| format!("{} failed", args.role))?;
            eprintln!(
                "{}: session finished after {} steps",
                args.role, summary.steps
            );
        }
        other => bail!("--role {other}: expected p0, p1 or dealer"),
    }
    Ok(())
}

/// Options of the remote client.
#[derive(Debug)]
pub struct RemoteClientOptions {
    /// `p0=ADDR,p1=ADDR`.
    pub remote: String,
    /// Directory with ca.pem and the client's certificate.
    pub certs: PathBuf,
    /// Shaping of what the client sends.
    pub net: NetProfile,
}

/// `comet generate --remote`: the client of a session with separate server processes.
pub fn remote_generate(
    opts: RemoteClientOptions,
    gen: crate::secure::SecureGenerateOptions,
) -> anyhow::Result<()> {
    use std::io::Write;
    let peers = parse_peers(&opts.remote)?;
    let identity = TlsIdentity::load(&opts.certs, "client").with_context(|| {
        format!(
            "loading the client certificate from {}",
            opts.certs.display()
        )
    })?;
    let path = gen
        .model
        .clone()
        .unwrap_or_else(comet_model::default_model_path);
    let gguf = GgufFile::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let config = LlamaConfig::from_gguf(&gguf)?;
    let tokenizer = comet_model::Tokenizer::from_gguf(&gguf)?;
    let prompt = tokenizer
        .encode(&gen.text)
        .context("tokenizing the prompt")?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if prompt.len() > config.context_length {
        bail!(
            "the prompt has {} tokens, longer than the model's context of {}",
            prompt.len(),
            config.context_length
        );
    }
    let capacity = capacity_for(prompt.len(), gen.max_tokens).min(config.context_length);
    let tcp = TcpOptions::default()
        .with_profile(opts.net)
        .with_timeout(LONG_WAIT);
    let p0 = connect(peer(&peers, "p0")?, &identity, "p0", tcp).context("connecting to p0")?;
    let p1 = connect(peer(&peers, "p1")?, &identity, "p1", tcp).context("connecting to p1")?;
    let mut client = client_connect(
        [boxed(p0), boxed(p1)],
        config.vocab_size,
        FixedPoint::new(12),
        capacity,
    )?;
    let mut sampler = Sampler::new(gen.sampling);
    let stops = tokenizer.stop_token_ids();
    let mut streamer = tokenizer.streamer();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Some(echo) = &gen.echo {
        write!(out, "{echo}")?;
    }
    let max_tokens = gen.max_tokens.min(config.context_length + 1 - prompt.len());
    let result = comet_engine::generate(
        &mut client,
        &prompt,
        max_tokens,
        &mut sampler,
        &stops,
        &gen.net_name,
        |id| {
            if !stops.contains(&id) {
                let piece = streamer.push(id)?;
                let _ = write!(out, "{piece}").and_then(|_| out.flush());
            }
            Ok(())
        },
    );
    writeln!(out)?;
    let generation = result.context("secure generation failed")?;
    client.finish()?;
    if gen.print_table {
        eprint!("{}", generation.report.table());
    }
    if let Some(path) = &gen.report {
        crate::secure::write_json(path, &generation.report.to_json())?;
    }
    Ok(())
}
