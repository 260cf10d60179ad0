//! `shoal network …`, and the network flags of `service create/update`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use common::api::NetworkPatch;
use common::network::{EndpointMode, Network, NetworkAttachment, NetworkSpec};
use common::spec::parse_label;

use crate::client::Client;
use crate::list::ListFlags;
use crate::output;

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create an overlay network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(ListFlags),
    /// Show networks in detail (JSON).
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// The driver: overlay.
    #[arg(short, long, default_value = "overlay")]
    driver: String,
    /// The network's range (CIDR, /8 to /26); default: the next free subnet of the cluster's default address pool (a /16 of 10.0.0.0/8 unless `--default-addr-pool` was given at `--init`).
    #[arg(long)]
    subnet: Option<String>,
    /// Let containers not started by shoal join.
    #[arg(long)]
    attachable: bool,
    #[arg(long)]
    label: Vec<String>,
    /// A driver option, KEY[=VALUE]. `--opt encrypted` seals the network's traffic between nodes (a userspace tunnel with the cluster's gossip key; the MTU is 132 bytes smaller).
    #[arg(short, long = "opt")]
    opt: Vec<String>,
    name: String,
}

fn spec(a: &CreateArgs) -> Result<NetworkSpec> {
    let kv = |list: &[String]| list.iter().map(|s| parse_label(s)).collect::<Result<_, _>>();
    let spec = NetworkSpec {
        name: a.name.clone(),
        driver: a.driver.parse()?,
        subnet: a.subnet.as_deref().map(str::parse).transpose()?,
        attachable: a.attachable,
        labels: kv(&a.label)?,
        options: kv(&a.opt)?,
    };
    spec.validate()?;
    Ok(spec)
}

pub fn run(c: &Client, cmd: NetworkCmd) -> Result<ExitCode> {
    match cmd {
        NetworkCmd::Create(a) => {
            let net: Network = c.post("/v1/networks", &spec(&a)?)?;
            println!("{}", net.id);
        }
        NetworkCmd::Ls(flags) => {
            let mut nets: Vec<Network> = c.get("/v1/networks")?;
            nets.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            flags.print(&nets, quiet, ls)?;
        }
        NetworkCmd::Inspect { networks } => {
            return c.inspect::<Network>(&networks, |n| format!("/v1/networks/{n}"), None)
        }
        NetworkCmd::Rm { networks } => {
            return Ok(c.delete_each::<Network>(&networks, |n| format!("/v1/networks/{n}")));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn quiet(nets: &[Network]) -> String {
    nets.iter().map(|n| format!("{}\n", n.id.short())).collect()
}

/// `docker network ls`, plus the range.
fn ls(nets: &[Network]) -> String {
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| {
            vec![
                n.id.short().to_string(),
                n.spec.name.clone(),
                n.spec.driver.to_string(),
                "swarm".into(),
                n.subnet.to_string(),
            ]
        })
        .collect();
    output::table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"], &rows)
}

/// `service create`'s network flags.
#[derive(Args, Default)]
pub struct NetworkFlags {
    /// Join a network: NAME, or name=NAME,alias=ALIAS (repeatable); `host` shares the node's network stack.
    #[arg(long = "network")]
    network: Vec<String>,
    /// vip (a virtual IP spread over the tasks) or dnsrr (the name resolves to the tasks).
    #[arg(long)]
    endpoint_mode: Option<String>,
}

impl NetworkFlags {
    pub fn attachments(&self) -> Result<Vec<NetworkAttachment>> {
        Ok(self.network.iter().map(|n| n.parse()).collect::<Result<_, _>>()?)
    }

    pub fn endpoint_mode(&self) -> Result<EndpointMode> {
        Ok(self.endpoint_mode.as_deref().map(str::parse).transpose()?.unwrap_or_default())
    }
}

/// `service update`'s network flags.
#[derive(Args, Default)]
pub struct NetworkUpdateFlags {
    /// Join a network (same forms as create's --network).
    #[arg(long)]
    network_add: Vec<String>,
    /// Leave a network, by name.
    #[arg(long)]
    network_rm: Vec<String>,
    #[arg(long)]
    endpoint_mode: Option<String>,
}

impl NetworkUpdateFlags {
    pub fn patch(&self) -> Result<NetworkPatch> {
        let add: Vec<NetworkAttachment> = self.network_add.iter().map(|n| n.parse()).collect::<Result<_, _>>()?;
        if let Some(both) = add.iter().find(|a| self.network_rm.contains(&a.network)) {
            bail!("network {:?} is both added and removed", both.network);
        }
        Ok(NetworkPatch {
            add,
            rm: self.network_rm.clone(),
            endpoint_mode: self.endpoint_mode.as_deref().map(str::parse).transpose()?,
        })
    }
}
