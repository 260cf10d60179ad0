//! `shoal cert issue`: a client bundle for the API over TLS, in the docker
//! CLI's file names. The key is made here and never sent; the manager signs
//! its CSR with the cluster CA.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use common::api::{CertIssued, CertRequest};
use worker::node::api_tls::{ApiRole, ClientRequest};

use crate::client::Client;

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Issue a client certificate: writes DIR/ca.pem, DIR/cert.pem and DIR/key.pem.
    Issue {
        /// Who it is for (the certificate's CN).
        #[arg(long)]
        name: String,
        /// admin (everything) or readonly (reads only).
        #[arg(long, default_value = "admin", value_parser = |s: &str| s.parse::<ApiRole>())]
        role: ApiRole,
        /// The directory to write the bundle to (made if missing).
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
    },
}

pub fn run(client: &Client, cmd: CertCmd) -> Result<ExitCode> {
    match cmd {
        CertCmd::Issue { name, role, output } => {
            let req = ClientRequest::new().context("cannot make a key")?;
            let body = CertRequest { name: name.clone(), role: role.to_string(), csr: req.csr_pem().to_string() };
            let issued: CertIssued = client.post("/v1/certs", &body)?;
            std::fs::create_dir_all(&output).with_context(|| format!("cannot make {}", output.display()))?;
            write(&output.join("key.pem"), &req.key_pem(), 0o600)?;
            write(&output.join("cert.pem"), &issued.certificate, 0o644)?;
            write(&output.join("ca.pem"), &issued.ca_certificate, 0o644)?;
            println!("Issued a {role} certificate for {name} in {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}
