//! Model shares on disk (`comet share-model`): one directory with
//!
//! * `manifest.json`: format, SHA-256 of the model file, fixed-point bits, weight shapes;
//! * `masked.bin`: every weight's `F = W − B` (u64 little-endian, registration order), public
//!   to both servers;
//! * `p0.seeds`, `p1.seeds`: per weight the 16-byte seed of that server's share `B_i` of the
//!   fixed mask (`B = PRG(s0) + PRG(s1)`), so a server stores `F` plus seeds only;
//! * `dealer.seeds`: both seeds per weight, from which the dealer rebuilds `B`.
//!
//! A party refuses shares whose manifest names another model (hash mismatch) or whose files
//! do not have the sizes the manifest implies.

use crate::error::{EngineError, Result};
use crate::model::{fixed_point_weight, from_weights, weight_count, ServerModel};
use comet_core::{FixedPoint, PartyId, Prg, Seed};
use comet_dealer::kinds::expand;
use comet_dealer::weights::WeightMask;
use comet_dealer::{Dealer, FixedWeight, WeightId};
use comet_model::{LlamaConfig, Model};
use sha2::{Digest, Sha256};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// Version of the share directory layout.
pub const SHARES_FORMAT: u64 = 1;

/// The manifest of a share directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Layout version ([`SHARES_FORMAT`]).
    pub format: u64,
    /// Hex SHA-256 of the model file the shares were made from.
    pub model_sha256: String,
    /// Fixed-point fractional bits of the weights.
    pub frac_bits: u32,
    /// `(k, n)` of every weight in registration order.
    pub weights: Vec<(usize, usize)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Hex SHA-256 of a file.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = BufReader::new(std::fs::File::open(path).map_err(io_err(path))?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Writes the shares of `model` (whose file hashes to `model_sha256`) into `dir`.
pub fn write_shares(
    model: &Model,
    model_sha256: &str,
    fp: FixedPoint,
    dir: &Path,
    prg: &mut Prg,
) -> Result<Manifest> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let create = |name: &str| -> Result<BufWriter<std::fs::File>> {
        let path = dir.join(name);
        Ok(BufWriter::new(
            std::fs::File::create(&path).map_err(io_err(&path))?,
        ))
    };
    let mut masked = create("masked.bin")?;
    let mut seeds = [create("p0.seeds")?, create("p1.seeds")?];
    let mut dealer = create("dealer.seeds")?;
    let mut shapes = Vec::new();
    for i in 0..weight_count(model.config()) {
        let (w, k, n) = fixed_point_weight(model, fp, i);
        let s = [prg.next_seed(), prg.next_seed()];
        let mask = comet_core::ring::add(&expand(&s[0], k * n), &expand(&s[1], k * n));
        let f = comet_core::ring::sub(&w, &mask);
        let mut bytes = Vec::with_capacity(f.len() * 8);
        for v in &f {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let path = dir.join("masked.bin");
        masked.write_all(&bytes).map_err(io_err(&path))?;
        for (party, file) in seeds.iter_mut().enumerate() {
            file.write_all(&s[party]).map_err(io_err(dir))?;
        }
        dealer
            .write_all(&s[0])
            .and_then(|_| dealer.write_all(&s[1]))
            .map_err(io_err(dir))?;
        shapes.push((k, n));
    }
    for mut file in [masked, dealer].into_iter().chain(seeds) {
        file.flush().map_err(io_err(dir))?;
    }
    let manifest = Manifest {
        format: SHARES_FORMAT,
        model_sha256: model_sha256.to_string(),
        frac_bits: fp.frac_bits,
        weights: shapes,
    };
    let path = dir.join("manifest.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&manifest).expect("manifest serialises"),
    )
    .map_err(io_err(&path))?;
    Ok(manifest)
}

/// Reads the manifest of `dir` and checks it belongs to the model with hash `model_sha256`
/// and configuration `config`.
pub fn read_manifest(dir: &Path, model_sha256: &str, config: &LlamaConfig) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = std::fs::read(&path).map_err(io_err(&path))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        EngineError::ShareMismatch(format!("{}: not a share manifest: {e}", path.display()))
    })?;
    if manifest.format != SHARES_FORMAT {
        return Err(EngineError::ShareMismatch(format!(
            "{} has layout version {}, this build reads {SHARES_FORMAT}",
            path.display(),
            manifest.format
        )));
    }
    if manifest.model_sha256 != model_sha256 {
        return Err(EngineError::ShareMismatch(format!(
            "the shares in {} were made from model {}, but the model given has hash {model_sha256}",
            dir.display(),
            manifest.model_sha256
        )));
    }
    if manifest.weights.len() != weight_count(config) {
        return Err(EngineError::ShareMismatch(format!(
            "{} lists {} weights, the model has {}",
            path.display(),
            manifest.weights.len(),
            weight_count(config)
        )));
    }
    Ok(manifest)
}

fn read_exact_file(path: &Path, expected: usize) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    if bytes.len() != expected {
        return Err(EngineError::ShareMismatch(format!(
            "{} has {} bytes, the manifest implies {expected}",
            path.display(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn seeds_of(bytes: &[u8]) -> Vec<Seed> {
    bytes
        .chunks_exact(16)
        .map(|c| c.try_into().expect("16 bytes"))
        .collect()
}

/// Loads server `party`'s model from a share directory made for the model with hash
/// `model_sha256`.
pub fn load_server_model(
    dir: &Path,
    party: PartyId,
    config: &LlamaConfig,
    model_sha256: &str,
) -> Result<ServerModel> {
    let manifest = read_manifest(dir, model_sha256, config)?;
    let count = manifest.weights.len();
    let seeds = seeds_of(&read_exact_file(
        &dir.join(format!("p{}.seeds", party.index())),
        16 * count,
    )?);
    let total: usize = manifest.weights.iter().map(|(k, n)| k * n).sum();
    let path = dir.join("masked.bin");
    let mut file = BufReader::new(std::fs::File::open(&path).map_err(io_err(&path))?);
    let len = file.get_ref().metadata().map_err(io_err(&path))?.len() as usize;
    if len != 8 * total {
        return Err(EngineError::ShareMismatch(format!(
            "{} has {len} bytes, the manifest implies {}",
            path.display(),
            8 * total
        )));
    }
    let mut weights = Vec::with_capacity(count);
    for (j, (&(k, n), seed)) in manifest.weights.iter().zip(&seeds).enumerate() {
        let mut bytes = vec![0u8; 8 * k * n];
        file.read_exact(&mut bytes).map_err(io_err(&path))?;
        let masked = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        weights.push(FixedWeight {
            id: WeightId(j as u32),
            k,
            n,
            masked,
            mask_share: expand(seed, k * n),
        });
    }
    from_weights(party, config, FixedPoint::new(manifest.frac_bits), weights)
}

/// Builds the dealer's state (every weight's mask `B`) from a share directory.
pub fn load_dealer(dir: &Path, config: &LlamaConfig, model_sha256: &str) -> Result<Dealer> {
    let manifest = read_manifest(dir, model_sha256, config)?;
    let seeds = seeds_of(&read_exact_file(
        &dir.join("dealer.seeds"),
        32 * manifest.weights.len(),
    )?);
    let mut dealer = Dealer::new();
    for (j, &(k, n)) in manifest.weights.iter().enumerate() {
        let mask = comet_core::ring::add(
            &expand(&seeds[2 * j], k * n),
            &expand(&seeds[2 * j + 1], k * n),
        );
        dealer.insert_weight_mask(WeightId(j as u32), WeightMask { k, n, mask });
    }
    Ok(dealer)
}
