//! Measures the plaintext forward's speed: prefill of a 150-token prompt and greedy decode.
//!
//! `cargo run --release -p comet-model --example speed [MODEL.gguf] [prompt_tokens] [decode_tokens]`
//! Reports wall-clock rates and, because a shared machine distorts wall time, rates per CPU
//! second of this process (× cores = the rate an otherwise idle machine of that many cores gives).

use std::time::Instant;

use comet_model::sampling::argmax;

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`), if readable.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .map(Into::into)
        .unwrap_or_else(comet_model::default_model_path);
    let prompt_len: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(150);
    let decode_len: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let (model, tok) = comet_model::load(&path)?;
    let text =
        "Private inference keeps the prompt hidden from the servers, and the weights hidden \
                from the user. Two servers hold additive shares of every value; a dealer prepares \
                correlated randomness ahead of time. ";
    let mut prompt = Vec::new();
    while prompt.len() < prompt_len {
        prompt.extend(tok.encode(text)?);
    }
    prompt.truncate(prompt_len);
    println!(
        "model {} | threads {}",
        path.display(),
        rayon::current_num_threads()
    );

    let mut best = f64::INFINITY;
    let mut logits = Vec::new();
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let runs = 3;
    for _ in 0..runs {
        let t = Instant::now();
        logits = model.forward(&prompt, &mut model.new_cache())?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    println!(
        "prefill {prompt_len} tokens: best {:.3} s = {:.1} tok/s wall (mean {:.1} tok/s){}",
        best,
        prompt_len as f64 / best,
        (runs * prompt_len) as f64 / wall,
        cpu.map(|c| format!(", {:.1} tok per CPU-s", (runs * prompt_len) as f64 / c))
            .unwrap_or_default()
    );

    let mut cache = model.new_cache();
    model.forward(&prompt, &mut cache)?;
    let mut next = argmax(&logits);
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    for _ in 0..decode_len {
        let l = model.forward(&[next], &mut cache)?;
        next = argmax(&l);
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    println!(
        "decode {decode_len} tokens after {prompt_len}: {:.3} s = {:.1} tok/s wall{}",
        wall,
        decode_len as f64 / wall,
        cpu.map(|c| format!(", {:.1} tok per CPU-s", decode_len as f64 / c))
            .unwrap_or_default()
    );
    Ok(())
}
