//! The secure CLI end to end on a tiny model: one-process generation, separate processes over
//! mutual TLS on loopback, and the faults every party must survive with a clear error.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_comet");

fn comet(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs comet")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: String,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let model = root.join("tiny.gguf");
        comet_model::testing::write_tiny_llama_gguf(&model, 8).unwrap();
        let model = model.display().to_string();
        let certs = root.join("certs").display().to_string();
        let out = comet(&["keys", "--out", &certs]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let shares = root.join("shares").display().to_string();
        let out = comet(&["share-model", "--model", &model, "--out", &shares]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        Self {
            _dir: dir,
            root,
            model,
        }
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Parties {
    children: Vec<(String, Child)>,
    p0: String,
    p1: String,
}

impl Drop for Parties {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_parties(s: &Setup, net: &str) -> Parties {
    let [p0, p1, dealer] =
        [free_port(), free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
    let peers = format!("p0={p0},p1={p1},dealer={dealer}");
    let mut children = Vec::new();
    for (role, listen) in [("dealer", &dealer), ("p1", &p1), ("p0", &p0)] {
        let child = Command::new(BIN)
            .args([
                "party", "--role", role, "--listen", listen, "--peers", &peers,
            ])
            .args([
                "--certs",
                &s.path("certs"),
                "--shares",
                &s.path("shares"),
                "--model",
                &s.model,
                "--net",
                net,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push((role.to_string(), child));
    }
    Parties { children, p0, p1 }
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn remote_args<'a>(s: &'a Setup, parties: &'a Parties, certs: &'a str) -> Vec<String> {
    vec![
        "generate".into(),
        "--model".into(),
        s.model.clone(),
        "--remote".into(),
        format!("p0={},p1={}", parties.p0, parties.p1),
        "--certs".into(),
        certs.into(),
        "--quiet".into(),
    ]
}

#[test]
fn one_process_and_multi_process_secure_generation_match_plaintext() {
    let s = Setup::new();
    let prompt = "the cat";
    let plain = comet(&[
        "generate",
        prompt,
        "--model",
        &s.model,
        "--max-tokens",
        "6",
        "--plaintext",
    ]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let local = comet(&[
        "generate",
        prompt,
        "--model",
        &s.model,
        "--max-tokens",
        "6",
        "--quiet",
    ]);
    assert!(local.status.success(), "{}", text(&local.stderr));
    assert_eq!(text(&local.stdout), text(&plain.stdout));

    let mut parties = start_parties(&s, "none");
    let certs = s.path("certs");
    let mut args = remote_args(&s, &parties, &certs);
    args.extend([prompt.to_string(), "--max-tokens".into(), "6".into()]);
    let remote = Command::new(BIN).args(&args).output().unwrap();
    assert!(remote.status.success(), "{}", text(&remote.stderr));
    assert_eq!(text(&remote.stdout), text(&plain.stdout));
    for (role, child) in &mut parties.children {
        let status = wait_with_timeout(child, Duration::from_secs(60)).expect("party exits");
        assert!(status.success(), "{role}: {}", stderr_of(child));
    }
}

#[test]
fn bad_requests_fail_with_clear_errors() {
    let s = Setup::new();
    let empty = comet(&["generate", "", "--model", &s.model]);
    assert!(!empty.status.success());
    assert!(
        text(&empty.stderr).contains("empty"),
        "{}",
        text(&empty.stderr)
    );
    let long_prompt = "a b ".repeat(200);
    let long = comet(&[
        "generate",
        &long_prompt,
        "--model",
        &s.model,
        "--max-tokens",
        "2",
    ]);
    assert!(!long.status.success());
    assert!(
        text(&long.stderr).contains("context"),
        "{}",
        text(&long.stderr)
    );
    // Shares of this model used with another model file are refused.
    let other = s.root.join("other.gguf");
    comet_model::testing::write_tiny_llama_gguf(&other, 99).unwrap();
    let out = comet(&[
        "party",
        "--role",
        "p0",
        "--listen",
        "127.0.0.1:0",
        "--peers",
        "p1=127.0.0.1:1,dealer=127.0.0.1:1",
        "--certs",
        &s.path("certs"),
        "--shares",
        &s.path("shares"),
        "--model",
        &other.display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("do not match"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn certificate_from_another_deployment_is_rejected() {
    let s = Setup::new();
    let foreign = s.path("foreign");
    assert!(comet(&["keys", "--out", &foreign]).status.success());
    let mut parties = start_parties(&s, "none");
    let mut args = remote_args(&s, &parties, &foreign);
    args.extend(["hello".to_string(), "--max-tokens".into(), "2".into()]);
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("error"), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).trim().is_empty(),
        "no output may be printed: {}",
        text(&out.stdout)
    );
    // p0 refused the handshake and stops with an error.
    let (_, p0) = parties
        .children
        .iter_mut()
        .find(|(r, _)| r == "p0")
        .unwrap();
    let status = wait_with_timeout(p0, Duration::from_secs(60)).expect("p0 exits");
    assert!(!status.success());
}

#[test]
fn killing_a_server_mid_generation_stops_every_party_with_an_error() {
    let s = Setup::new();
    let mut parties = start_parties(&s, "slow");
    let certs = s.path("certs");
    let mut args = remote_args(&s, &parties, &certs);
    args.extend([
        "the cat sat".to_string(),
        "--max-tokens".into(),
        "60".into(),
    ]);
    let mut client = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let (_, p1) = parties
        .children
        .iter_mut()
        .find(|(r, _)| r == "p1")
        .unwrap();
    p1.kill().unwrap();
    let status =
        wait_with_timeout(&mut client, Duration::from_secs(120)).expect("the client exits");
    let err = stderr_of(&mut client);
    eprintln!("client after the kill: {err}");
    assert!(!status.success(), "the client must fail: {err}");
    assert!(err.contains("error"), "{err}");
    for role in ["p0", "dealer"] {
        let (_, child) = parties
            .children
            .iter_mut()
            .find(|(r, _)| r == role)
            .unwrap();
        let status = wait_with_timeout(child, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("{role} hangs"));
        if role == "p0" {
            assert!(!status.success(), "p0 must report the lost peer");
        }
    }
    let _ = Path::new(&certs);
}
