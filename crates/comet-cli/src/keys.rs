//! `comet keys`: TLS material for a deployment — a private CA and one certificate per role.
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `comet keys`.
#[derive(Args, Debug)]
pub struct KeysArgs {
    /// Directory to write `ca.pem`, `ca.key`, `<role>.pem` and `<role>.key` into.
    #[arg(long)]
    pub out: PathBuf,
    /// Roles to make certificates for (each gets the name `<role>.comet`).
    #[arg(long, value_delimiter = ',', default_value = "p0,p1,dealer,client")]
    pub roles: Vec<String>,
    /// Replace the files of an existing deployment in `--out`.
    #[arg(long)]
    pub force: bool,
}

/// Generates the deployment CA and role certificates and prints what was written.
pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let roles: Vec<&str> = args.roles.iter().map(|r| r.trim()).collect();
    let written = comet_net::generate_keys(&args.out, &roles, args.force)
        .with_context(|| format!("generating keys in {}", args.out.display()))?;
    println!("wrote {} files to {}:", written.len(), args.out.display());
    for path in &written {
        println!("  {}", path.display());
    }
    println!("each role needs ca.pem, <role>.pem and <role>.key; keep ca.key offline (it only signs new roles)");
    Ok(())
}
