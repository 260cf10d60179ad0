//! The VXLAN device of a network on this node, in the network's bridge,
//! with one all-zeros flood entry per peer (head-end replication); unicast
//! MACs are learnt. Made with `ip` and `bridge` (iproute2).
//!
//! A directly routed network (`--opt routing=direct`) has no device: each
//! other node's block is routed via that node's underlay address
//! (`ip route … proto 211`, so that ours are told apart), and two iptables
//! rules, beside Docker's own, let task traffic cross as it is: one in
//! `DOCKER-USER` accepts what comes from the network's tasks on other
//! nodes into the bridge (Docker's `FORWARD` rules drop new connections to
//! a bridge's containers), and one masquerades what leaves for anywhere
//! but the network (the Docker network is made without Docker's own
//! masquerade, which would hide a task's address from the others).

use std::net::{IpAddr, Ipv4Addr};

use common::network::{bridge_name, vxlan_name, Subnet};
use tokio::process::Command;

use super::NetError;

/// The VXLAN UDP port (IANA's, as Swarm uses).
pub const VXLAN_PORT: u16 = 4789;

/// The Debian package with `program`.
fn package_of(program: &str) -> &'static str {
    if program == "iptables" {
        "iptables"
    } else {
        "iproute2"
    }
}

async fn run(program: &str, args: &[&str]) -> Result<(bool, String), NetError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| NetError::Link(format!("cannot run {program}: {e} (install {})", package_of(program))))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string()))
}

async fn must(program: &str, args: &[&str]) -> Result<(), NetError> {
    match run(program, args).await? {
        (true, _) => Ok(()),
        (false, err) => Err(NetError::Link(format!("{program} {}: {err}", args.join(" ")))),
    }
}

/// The device exists (sending to UDP `port`), is in the bridge, up, and
/// floods to exactly `peers`.
pub async fn ensure_vxlan(vni: u32, local: IpAddr, peers: &[IpAddr], port: u16) -> Result<(), NetError> {
    let dev = vxlan_name(vni);
    if !run("ip", &["link", "show", &dev]).await?.0 {
        let (id, port, local) = (vni.to_string(), port.to_string(), local.to_string());
        must("ip", &["link", "add", &dev, "type", "vxlan", "id", &id, "dstport", &port, "local", &local]).await?;
    }
    must("ip", &["link", "set", &dev, "master", &bridge_name(vni)]).await?;
    must("ip", &["link", "set", &dev, "up"]).await?;
    // Flood entries: replace the set wholesale (few peers).
    let (_, listing) = run_out("bridge", &["fdb", "show", "dev", &dev]).await?;
    for line in listing.lines().filter(|l| l.starts_with("00:00:00:00:00:00")) {
        if let Some(dst) = line.split_whitespace().skip_while(|w| *w != "dst").nth(1) {
            if !peers.iter().any(|p| p.to_string() == dst) {
                must("bridge", &["fdb", "del", "00:00:00:00:00:00", "dev", &dev, "dst", dst]).await?;
            }
        }
    }
    for p in peers {
        let p = p.to_string();
        if !listing.lines().any(|l| l.starts_with("00:00:00:00:00:00") && l.contains(&format!("dst {p} "))) {
            must("bridge", &["fdb", "append", "00:00:00:00:00:00", "dev", &dev, "dst", &p]).await?;
        }
    }
    Ok(())
}

async fn run_out(program: &str, args: &[&str]) -> Result<(bool, String), NetError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| NetError::Link(format!("cannot run {program}: {e} (install {})", package_of(program))))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + " "))
}

pub async fn remove_vxlan(vni: u32) -> Result<(), NetError> {
    let dev = vxlan_name(vni);
    if run("ip", &["link", "show", &dev]).await?.0 {
        must("ip", &["link", "del", &dev]).await?;
    }
    Ok(())
}

/// Marks shoal's routes of directly routed networks.
const ROUTE_PROTO: &str = "211";

/// The iptables rules of a directly routed network on this node, as
/// `(table, chain, rule)`.
pub fn direct_rules(bridge: &str, range: Subnet, block: Subnet) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let (range, block) = (range.to_string(), block.to_string());
    let v = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    vec![
        ("filter", "DOCKER-USER", v(&["-s", &range, "-d", &block, "-o", bridge, "-j", "ACCEPT"])),
        ("nat", "POSTROUTING", v(&["-s", &block, "!", "-d", &range, "!", "-o", bridge, "-j", "MASQUERADE"])),
    ]
}

/// The routes to the other nodes' blocks of a directly routed network are
/// exactly `routes`, and its iptables rules are in place.
pub async fn ensure_routes(
    vni: u32,
    range: Subnet,
    block: Subnet,
    routes: &[(Subnet, IpAddr)],
) -> Result<(), NetError> {
    let range_s = range.to_string();
    let (_, listing) = run_out("ip", &["-4", "-o", "route", "show", "proto", ROUTE_PROTO, "root", &range_s]).await?;
    for prefix in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        if !routes.iter().any(|(b, _)| b.to_string() == prefix) {
            must("ip", &["route", "del", prefix, "proto", ROUTE_PROTO]).await?;
        }
    }
    for (b, via) in routes {
        let (b, via) = (b.to_string(), via.to_string());
        must("ip", &["route", "replace", &b, "via", &via, "proto", ROUTE_PROTO]).await?;
    }
    for (table, chain, rule) in direct_rules(&bridge_name(vni), range, block) {
        if chain == "DOCKER-USER" && !run("iptables", &["-t", table, "-n", "-L", chain]).await?.0 {
            // Docker without its iptables rules (`--iptables=false`) drops nothing.
            continue;
        }
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        if !run("iptables", &[&["-t", table, "-C", chain][..], &rule].concat()).await?.0 {
            must("iptables", &[&["-t", table, "-I", chain, "1"][..], &rule].concat()).await?;
        }
    }
    Ok(())
}

/// Removes what [`ensure_routes`] made for a network.
pub async fn remove_routes(vni: u32, range: Subnet, block: Subnet) -> Result<(), NetError> {
    let range_s = range.to_string();
    let (_, listing) = run_out("ip", &["-4", "-o", "route", "show", "proto", ROUTE_PROTO, "root", &range_s]).await?;
    for prefix in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        must("ip", &["route", "del", prefix, "proto", ROUTE_PROTO]).await?;
    }
    for (table, chain, rule) in direct_rules(&bridge_name(vni), range, block) {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        while run("iptables", &[&["-t", table, "-C", chain][..], &rule].concat()).await?.0 {
            must("iptables", &[&["-t", table, "-D", chain][..], &rule].concat()).await?;
        }
    }
    Ok(())
}

/// Turns hairpin mode on for the containers' ports of `bridge`, so that a
/// task whose VIP connection is DNATed back to itself gets it (the frame
/// leaves by the port it came in on). The VXLAN port is left alone: frames
/// flooded back into it would go round the peers.
pub async fn hairpin(bridge: &str) -> Result<(), NetError> {
    let (ok, listing) = run_out("ip", &["-d", "-o", "link", "show", "master", bridge]).await?;
    if !ok {
        // No such bridge (yet): nothing to do.
        return Ok(());
    }
    for line in listing.lines().filter(|l| l.contains("hairpin off")) {
        // `12: vethab12@if11: <…> …`
        let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else { continue };
        if name.starts_with("veth") {
            must("bridge", &["link", "set", "dev", name, "hairpin", "on"]).await?;
        }
    }
    Ok(())
}

/// Routes each of `routes` (a network's VIP range, via its gateway) inside
/// the network namespace of process `pid`, a task's container. VIPs are off
/// the tasks' subnets; a task on several networks must send each network's
/// VIPs into that network's bridge, wherever its default route points.
pub async fn route_vips(pid: i64, routes: &[(Subnet, Ipv4Addr)]) -> Result<(), NetError> {
    let pid = pid.to_string();
    for (range, via) in routes {
        let (range, via) = (range.to_string(), via.to_string());
        must("nsenter", &["-t", &pid, "-n", "ip", "route", "replace", &range, "via", &via]).await?;
    }
    Ok(())
}
