//! What the kernel data path needs from the host beyond its own nft table:
//! a connection DNATed to a task on another node is *forwarded* by this
//! node, so
//!
//! - IP forwarding must be on (`net.ipv4.ip_forward`, or
//!   `net.ipv6.conf.all.forwarding`): [`enable_forwarding`] turns it on, or
//!   says why it cannot;
//! - the filter `FORWARD` chain must let those flows through. Docker sets
//!   that chain's policy to DROP when it turns forwarding on, and a drop in
//!   any base chain is final, whatever our own table accepts; so
//!   [`ensure_accept`] adds one rule, in `DOCKER-USER` (the chain Docker
//!   leaves to its users) when it exists, else in `FORWARD`, accepting
//!   flows that were DNATed from this node's address (both directions:
//!   conntrack matches the replies too). [`remove_accept`] takes it out
//!   when the node stops; a killed node's rule is the same rule, found and
//!   kept by the next start.
//!
//! Reverse-path filtering needs nothing: every mesh flow is SNATed to the
//! node's address, so its replies come back on the interface the route to
//! the peer names, which strict `rp_filter` (1) accepts.
//!
//! A loopback advertise address (the one-machine test harness) is never
//! forwarded (the kernel drops a loopback address arriving on a real
//! interface), so nothing here touches the host then.

use std::net::IpAddr;
use std::process::Stdio;

use super::MeshError;

/// The chain Docker keeps for its users' rules, consulted first in `FORWARD`.
pub const DOCKER_USER: &str = "DOCKER-USER";

/// Whether this address's traffic can be forwarded at all.
pub fn applies_to(addr: IpAddr) -> bool {
    !addr.is_loopback() && !addr.is_unspecified()
}

/// `iptables` or `ip6tables`.
fn tool(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "iptables"
    } else {
        "ip6tables"
    }
}

/// The sysctl that turns forwarding on for the address family.
pub fn forwarding_sysctl(addr: IpAddr) -> (&'static str, &'static str) {
    if addr.is_ipv4() {
        ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward")
    } else {
        ("net.ipv6.conf.all.forwarding", "/proc/sys/net/ipv6/conf/all/forwarding")
    }
}

/// The rule's match and target (after `-I CHAIN`, `-C CHAIN` or `-D CHAIN`):
/// flows DNATed from `addr`, which only the mesh makes to other hosts.
pub fn accept_rule(addr: IpAddr) -> Vec<String> {
    [
        "-m",
        "conntrack",
        "--ctstate",
        "DNAT",
        "--ctorigdst",
        &addr.to_string(),
        "-m",
        "comment",
        "--comment",
        &format!("shoal mesh {addr}"),
        "-j",
        "ACCEPT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Turns IP forwarding on if it is off. Returns whether it changed it.
pub fn enable_forwarding(addr: IpAddr) -> Result<bool, MeshError> {
    if !applies_to(addr) {
        return Ok(false);
    }
    let (name, path) = forwarding_sysctl(addr);
    let now =
        std::fs::read_to_string(path).map_err(|e| MeshError::Forward(format!("cannot read {name} ({path}): {e}")))?;
    if now.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(path, "1").map_err(|e| {
        MeshError::Forward(format!(
            "the kernel mesh forwards connections to tasks on other nodes, but {name} is {} and cannot be \
             turned on ({e}): run `sysctl -w {name}=1` as root, or use --mesh userspace",
            now.trim()
        ))
    })?;
    Ok(true)
}

/// Where the accept went, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Nothing to do: a loopback address.
    NotNeeded,
    /// Already there (from an earlier start, or a killed one).
    Present(&'static str),
    Added(&'static str),
}

/// Makes sure the accept for `addr` is in `DOCKER-USER` (or `FORWARD`).
pub async fn ensure_accept(addr: IpAddr) -> Result<Accept, MeshError> {
    if !applies_to(addr) {
        return Ok(Accept::NotNeeded);
    }
    let chain = if run(addr, &["-S", DOCKER_USER]).await?.0 { DOCKER_USER } else { "FORWARD" };
    let rule = accept_rule(addr);
    let mut check = vec!["-C", chain];
    check.extend(rule.iter().map(String::as_str));
    if run(addr, &check).await?.0 {
        return Ok(Accept::Present(chain));
    }
    let mut insert = vec!["-I", chain];
    insert.extend(rule.iter().map(String::as_str));
    match run(addr, &insert).await? {
        (true, _) => Ok(Accept::Added(chain)),
        (false, err) => Err(MeshError::Forward(format!(
            "cannot add the mesh's accept to the {chain} chain ({} -I {chain} {}): {}",
            tool(addr),
            rule.join(" "),
            err.trim()
        ))),
    }
}

/// Removes every copy of the accept for `addr` from both chains (blocking:
/// the node is stopping).
pub fn remove_accept(addr: IpAddr) {
    if !applies_to(addr) {
        return;
    }
    let rule = accept_rule(addr);
    for chain in [DOCKER_USER, "FORWARD"] {
        // At most a few copies; bounded so a strange iptables cannot spin us.
        for _ in 0..8 {
            let ok = std::process::Command::new(tool(addr))
                .args(["-w", "5", "-D", chain])
                .args(&rule)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
}

/// Runs iptables with `-w 5` (wait for the xtables lock): success and stderr.
async fn run(addr: IpAddr, args: &[&str]) -> Result<(bool, String), MeshError> {
    let out = tokio::process::Command::new(tool(addr))
        .args(["-w", "5"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            MeshError::Forward(if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} not found: the kernel mesh needs it to let forwarded connections through the \
                     FORWARD chain (apt-get install iptables), or use --mesh userspace",
                    tool(addr)
                )
            } else {
                format!("cannot run {}: {e}", tool(addr))
            })
        })?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_matches_flows_dnated_from_the_node_address() {
        let a: IpAddr = "10.231.0.11".parse().unwrap();
        assert_eq!(
            accept_rule(a).join(" "),
            "-m conntrack --ctstate DNAT --ctorigdst 10.231.0.11 -m comment --comment shoal mesh 10.231.0.11 -j ACCEPT"
        );
        assert_eq!(tool(a), "iptables");
        assert_eq!(forwarding_sysctl(a).0, "net.ipv4.ip_forward");
        let v6: IpAddr = "fd00::11".parse().unwrap();
        assert_eq!(tool(v6), "ip6tables");
        assert_eq!(forwarding_sysctl(v6).0, "net.ipv6.conf.all.forwarding");
    }

    #[test]
    fn loopback_addresses_leave_the_host_alone() {
        for a in ["127.0.0.11", "127.0.5.12", "::1", "0.0.0.0"] {
            let a: IpAddr = a.parse().unwrap();
            assert!(!applies_to(a), "{a}");
            assert_eq!(enable_forwarding(a), Ok(false));
        }
        assert!(applies_to("10.231.0.11".parse().unwrap()));
    }
}
