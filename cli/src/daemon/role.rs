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
/// `--force-new-cluster` and the other `--init` settings). Returns only if
/// exec failed.
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

/// Flags of the first start only (`--init` and what requires it, `--join`):
/// switches, and options with a value (`--opt V` or `--opt=V`).
const ONE_OFF_SWITCHES: &[&str] = &["--init", "--force-new-cluster", "--autolock"];
const ONE_OFF_OPTIONS: &[&str] = &[
    "--join",
    "--token",
    "--cert-expiry",
    "--test-cert-expiry-secs",
    "--default-addr-pool",
    "--default-addr-pool-mask-length",
];

fn restart_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let s = a.to_string_lossy();
        let name = s.split_once('=').map_or(s.as_ref(), |(n, _)| n);
        match name {
            _ if ONE_OFF_SWITCHES.contains(&name) => {}
            _ if ONE_OFF_OPTIONS.contains(&name) => skip_value = !s.contains('='),
            _ => out.push(a),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::restart_args;

    #[test]
    fn a_restart_drops_the_first_start_flags_and_keeps_the_rest() {
        let args = "daemon --init --autolock --cert-expiry 3h --default-addr-pool=10.9.0.0/16 --data-dir /d \
                    --join 1.2.3.4:4242 --token=T --test-cert-expiry-secs 30 --api-tls --hostname n1";
        let out = restart_args(args.split(' ').filter(|s| !s.is_empty()).map(Into::into).collect());
        let out: Vec<String> = out.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(out, ["daemon", "--data-dir", "/d", "--api-tls", "--hostname", "n1"]);
    }
}
