//! A change of role (promote/demote): a certificate for the new role, then
//! the process replaces itself with the same command line minus the
//! one-off flags.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, Result};
use common::node::Role;
use common::wire::{Frame, Hello};
use common::NodeId;
use worker::node::net;
use worker::node::tls::{CertificateRequest, Fingerprint, NodeIdentity, Tls};

use super::state::tls_dir;

/// Asks a manager for a certificate for `role` (signed from a fresh key's
/// CSR with the role the store gives this node) and saves it.
pub(crate) async fn renew_certificate(
    tls: &Tls,
    data_dir: &Path,
    node: &NodeId,
    role: Role,
    managers: &[SocketAddr],
) -> Result<()> {
    let dir = tls_dir(data_dir);
    let pinned =
        NodeIdentity::load(&dir)?.ok_or_else(|| anyhow!("{} holds no certificate", dir.display()))?.ca_fingerprint()?;
    let (identity, addr) = request_certificate(tls, pinned, node, role, managers).await?;
    identity.save(&dir)?;
    tracing::info!(%role, manager = %addr, "certificate renewed for the new role");
    Ok(())
}

/// A new identity from the first of `managers` that certifies this node
/// as `role`: a fresh key, its CSR sent over the cluster port with the
/// current certificate (which proves who asks), the answer checked against
/// the CA `pinned`. Says which manager answered.
pub(crate) async fn request_certificate(
    tls: &Tls,
    pinned: Fingerprint,
    node: &NodeId,
    role: Role,
    managers: &[SocketAddr],
) -> Result<(NodeIdentity, SocketAddr)> {
    let mut last = anyhow!("no manager to ask");
    for addr in managers {
        let request = CertificateRequest::new()?;
        let hello = Hello::Renew { node_id: node.clone(), csr: request.csr_der().to_vec() };
        let (certificate, ca_certificate) = match net::dial(tls, *addr, hello).await {
            Ok((_conn, Frame::Certificate { certificate, ca_certificate })) => (certificate, ca_certificate),
            Ok((_conn, other)) => {
                last = anyhow!("{addr} answered {other:?}");
                continue;
            }
            Err(e) => {
                last = anyhow!("{addr}: {e}");
                continue;
            }
        };
        let identity = request.complete(certificate, ca_certificate, Some(pinned))?;
        let got = identity.peer()?.role;
        if got != role {
            // That manager has not applied a change of role yet, or has
            // applied one this node has not acted on yet.
            last = anyhow!("{addr} certifies this node as a {got}, not a {role}");
            continue;
        }
        return Ok((identity, *addr));
    }
    Err(last)
}

/// Replaces this process with `shoal daemon` on the same data directory and
/// options, without the one-off flags (`--init`, `--join`, `--token`,
/// `--cert-expiry`, `--force-new-cluster`). Returns only if exec failed.
pub(crate) fn reexec() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return anyhow!("cannot restart in the new role: {e}"),
    };
    let args = restart_args(std::env::args_os().skip(1).collect());
    tracing::info!(?args, "restarting");
    let err = std::process::Command::new(exe).args(args).exec();
    anyhow!("cannot restart in the new role: {err}")
}

fn restart_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let s = a.to_string_lossy();
        match s.as_ref() {
            "--init" | "--force-new-cluster" => {}
            "--join" | "--token" | "--cert-expiry" => skip_value = true,
            _ if s.starts_with("--join=") || s.starts_with("--token=") || s.starts_with("--cert-expiry=") => {}
            _ => out.push(a),
        }
    }
    out
}
