//! `shoal node …` and `shoal join-token`.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use common::api::{Info, JoinTokens, NodeInfo, NodeUpdate};
use common::node::Availability;
use common::sched::{format_bytes, format_cpus, NodeResources};
use common::spec::parse_label;

use crate::client::{seg, Client};
use crate::list::ListFlags;
use crate::output;

#[derive(Subcommand)]
pub enum NodeCmd {
    /// List nodes.
    #[command(alias = "list")]
    Ls(ListFlags),
    /// Change a node's availability or labels.
    Update {
        /// active, pause or drain
        #[arg(long)]
        availability: Option<String>,
        #[arg(long)]
        label_add: Vec<String>,
        #[arg(long)]
        label_rm: Vec<String>,
        node: String,
    },
    /// Make workers managers (raft voters).
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers; refused for the last manager or when it would lose quorum.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes that are down from the cluster.
    #[command(alias = "remove")]
    Rm {
        /// Remove a node even if it is not down.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Show details of one or more nodes.
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
        #[arg(long)]
        pretty: bool,
    },
}

pub fn run(c: &Client, cmd: NodeCmd) -> Result<ExitCode> {
    match cmd {
        NodeCmd::Ls(list) => {
            let nodes: Vec<NodeInfo> = c.get("/v1/nodes")?;
            list.print(&nodes, output::node_ls_quiet, output::node_ls)?;
        }
        NodeCmd::Update { availability, label_add, label_rm, node } => {
            let update = NodeUpdate {
                availability: availability
                    .as_deref()
                    .map(str::parse::<Availability>)
                    .transpose()
                    .map_err(|e| anyhow!(e))?,
                label_add: label_add
                    .iter()
                    .map(|l| parse_label(l).map_err(|e| anyhow!("{e}")))
                    .collect::<Result<_>>()?,
                label_rm,
            };
            c.post::<_, NodeInfo>(&format!("/v1/nodes/{}/update", seg(&node)), &update)?;
            println!("{node}");
        }
        NodeCmd::Promote { nodes } => return Ok(change_roles(c, &nodes, "promote")),
        NodeCmd::Demote { nodes } => return Ok(change_roles(c, &nodes, "demote")),
        NodeCmd::Rm { force, nodes } => {
            return Ok(c.delete_each::<NodeInfo>(&nodes, |n| format!("/v1/nodes/{n}?force={force}")));
        }
        NodeCmd::Inspect { nodes, pretty } => {
            return c.inspect::<NodeInfo>(
                &nodes,
                |n| format!("/v1/nodes/{n}"),
                pretty.then_some(pretty_node as fn(&NodeInfo) -> String),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One request per node, in order, as `docker node promote/demote` does;
/// non-zero if any failed.
fn change_roles(c: &Client, nodes: &[String], verb: &str) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for n in nodes {
        match c.post::<_, NodeInfo>(&format!("/v1/nodes/{}/{verb}", seg(n)), &serde_json::json!({})) {
            Ok(info) if verb == "promote" => {
                println!("Node {} promoted to a manager in the cluster.", info.node.hostname)
            }
            Ok(info) => println!("Manager {} demoted in the cluster.", info.node.hostname),
            Err(e) => {
                eprintln!("Error: {e:#}");
                code = ExitCode::FAILURE;
            }
        }
    }
    code
}

fn pretty_node(n: &NodeInfo) -> String {
    let mut s = format!(
        "ID:\t\t\t{}\nHostname:\t\t{}\nJoined at:\t\t{}\nStatus:\n State:\t\t\t{}\n Availability:\t\t{}\n Address:\t\t{}\n",
        n.node.id,
        n.node.hostname,
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(n.node.created_at)),
        n.status,
        n.node.availability,
        n.node.addr.ip()
    );
    if !n.manager_status.is_empty() {
        s.push_str(&format!("Manager Status:\n Address:\t\t{}\n Raft Status:\t\t{}\n", n.node.addr, n.manager_status));
    }
    if let Some(why) = &n.disk_alarm {
        s.push_str(&format!("Disk alarm:\t\t{why}\n"));
    }
    s.push_str(&format!("Role:\t\t\t{}\n", n.node.role));
    if !n.node.labels.is_empty() {
        s.push_str("Labels:\n");
        for (k, v) in &n.node.labels {
            s.push_str(&format!(" - {k}={v}\n"));
        }
    }
    if let Some(r) = &n.resources {
        s.push_str(&pretty_resources(r));
    }
    s
}

/// Docker's Platform and Resources sections, with what the node's tasks
/// reserve beside each capacity.
fn pretty_resources(r: &NodeResources) -> String {
    let d = &r.description;
    let c = &d.resources;
    let mut s = format!("Platform:\n Operating System:\t{}\n Architecture:\t\t{}\n", d.os, d.arch);
    s.push_str(&format!(
        "Resources:\n CPUs:\t\t\t{} ({} reserved)\n Memory:\t\t{} ({} reserved)\n",
        format_cpus(c.nano_cpus),
        format_cpus(r.reserved.nano_cpus),
        format_bytes(c.memory_bytes),
        format_bytes(r.reserved.memory_bytes)
    ));
    for (kind, n) in &c.generic {
        let used = r.reserved.generic.get(kind).copied().unwrap_or(0);
        s.push_str(&format!(" {kind}:\t\t\t{n} ({used} reserved)\n"));
    }
    if !d.engine_labels.is_empty() {
        s.push_str("Engine Labels:\n");
        for (k, v) in &d.engine_labels {
            s.push_str(&format!(" - {k}={v}\n"));
        }
    }
    s
}

#[derive(clap::Subcommand, Debug)]
pub enum GossipKeyCmd {
    /// Make a new gossip key; nodes seal with it a few seconds from now.
    Rotate,
}

/// `shoal gossip-key rotate`.
pub fn gossip_key(c: &Client, cmd: GossipKeyCmd) -> Result<ExitCode> {
    match cmd {
        GossipKeyCmd::Rotate => {
            let r: common::api::GossipKeyRotated = c.post("/v1/gossip-key/rotate", &())?;
            println!("{}", gossip_key_rotated_text(&r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn gossip_key_rotated_text(r: &common::api::GossipKeyRotated) -> String {
    format!(
        "Successfully rotated the gossip key (key {}). Nodes seal with it within {} s; the old key is refused {} s later.",
        r.key_id,
        common::gossip_key::SWITCH_DELAY / 1000,
        common::gossip_key::RETIRE_DELAY / 1000
    )
}

/// `shoal join-token [--rotate] [-q] worker|manager`.
pub fn join_token(c: &Client, role: &str, quiet: bool, rotate: bool) -> Result<ExitCode> {
    if role != "worker" && role != "manager" {
        bail!("unknown role {role:?}: expected worker or manager");
    }
    let tokens: JoinTokens =
        if rotate { c.post(&format!("/v1/join-tokens/rotate?role={role}"), &())? } else { c.get("/v1/join-tokens")? };
    let token = if role == "worker" { tokens.worker } else { tokens.manager };
    if quiet {
        println!("{token}");
        return Ok(ExitCode::SUCCESS);
    }
    let info: Info = c.get("/v1/info")?;
    let nodes: Vec<NodeInfo> = c.get("/v1/nodes")?;
    let addr = nodes.iter().find(|n| n.node.id == info.node_id).map(|n| n.node.addr.to_string()).unwrap_or_default();
    print!("{}", join_token_text(role, &addr, &token, rotate));
    Ok(ExitCode::SUCCESS)
}

fn join_token_text(role: &str, addr: &str, token: &str, rotated: bool) -> String {
    let mut s = String::new();
    if rotated {
        s.push_str(&format!("Successfully rotated {role} join token.\n\n"));
    }
    s.push_str(&format!("To add a {role} to this cluster, run the following command:\n\n"));
    s.push_str(&format!("    shoal daemon --join {addr} --token {token} --advertise-addr <IP>\n\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::sched::{NodeDescription, Resources};

    #[test]
    fn resources_show_capacity_and_reservations() {
        let r = NodeResources {
            description: NodeDescription {
                resources: Resources {
                    nano_cpus: 2_000_000_000,
                    memory_bytes: 4 << 30,
                    generic: [("gpu".to_string(), 2)].into(),
                },
                os: "linux".into(),
                arch: "x86_64".into(),
                engine_labels: [("storage".to_string(), "ssd".to_string())].into(),
            },
            reserved: Resources {
                nano_cpus: 1_500_000_000,
                memory_bytes: 512 << 20,
                generic: [("gpu".to_string(), 1)].into(),
            },
        };
        assert_eq!(
            pretty_resources(&r),
            "Platform:\n Operating System:\tlinux\n Architecture:\t\tx86_64\n\
             Resources:\n CPUs:\t\t\t2 (1.5 reserved)\n Memory:\t\t4GiB (512MiB reserved)\n gpu:\t\t\t2 (1 reserved)\n\
             Engine Labels:\n - storage=ssd\n"
        );
    }

    #[test]
    fn gossip_key_rotated_output() {
        let r = common::api::GossipKeyRotated { key_id: 3, switch_at: 0 };
        assert_eq!(
            gossip_key_rotated_text(&r),
            "Successfully rotated the gossip key (key 3). Nodes seal with it within 4 s; the old key is refused 4 s later."
        );
    }

    #[test]
    fn join_token_output() {
        assert_eq!(
            join_token_text("worker", "10.0.0.1:4242", "SHTKN-1-a-b", true),
            "Successfully rotated worker join token.\n\n\
             To add a worker to this cluster, run the following command:\n\n\
             \x20   shoal daemon --join 10.0.0.1:4242 --token SHTKN-1-a-b --advertise-addr <IP>\n\n"
        );
        assert!(join_token_text("manager", "a", "t", false).starts_with("To add a manager"));
    }
}
