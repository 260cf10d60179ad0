//! The VXLAN device of a network on this node, in the network's bridge,
//! with one all-zeros flood entry per peer (head-end replication); unicast
//! MACs are learnt. Made with `ip` and `bridge` (iproute2).

use std::net::{IpAddr, Ipv4Addr};

use common::network::{bridge_name, vxlan_name, Subnet};
use tokio::process::Command;

use super::NetError;

/// The VXLAN UDP port (IANA's, as Swarm uses).
pub const VXLAN_PORT: u16 = 4789;

async fn run(program: &str, args: &[&str]) -> Result<(bool, String), NetError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| NetError::Link(format!("cannot run {program}: {e} (install iproute2)")))?;
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
        .map_err(|e| NetError::Link(format!("cannot run {program}: {e} (install iproute2)")))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + " "))
}

pub async fn remove_vxlan(vni: u32) -> Result<(), NetError> {
    let dev = vxlan_name(vni);
    if run("ip", &["link", "show", &dev]).await?.0 {
        must("ip", &["link", "del", &dev]).await?;
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
