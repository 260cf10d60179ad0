//! Overlay networks on real hosts (`deploy/hosts.sh`): tasks on different
//! hosts reach each other by address; networks are kept apart; bad input is
//! refused with nothing changed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tests::{busybox_image, require_hosts, task_host, wait_for, Hosts, Mesh};

const CONVERGE: Duration = Duration::from_secs(60);
const SERVE: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";

fn create(h: &Hosts, name: &str, flags: &[&str]) {
    let mut args = vec!["service", "create", "-d", "--name", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[busybox_image(), "sh", "-c", SERVE]);
    h.shoal_ok(1, &args);
}

/// Host → (container id, address on its first network) of `svc`'s running tasks.
fn addresses(svc: &str, tasks: &[Value]) -> BTreeMap<usize, (String, String)> {
    let mut out = BTreeMap::new();
    for t in tasks {
        let host = task_host(t).expect("a host");
        let addr = t["addresses"][0]["addr"].as_str().unwrap_or_else(|| panic!("no address: {t}")).to_string();
        let id = t["status"]["container_id"].as_str().unwrap_or_else(|| panic!("no container: {t}")).to_string();
        out.insert(host, (id, addr));
    }
    assert!(!out.is_empty(), "{svc}: no tasks");
    out
}

/// `wget` from a container on host `from` to `addr` (this busybox's wget
/// crashes with `-q` or `-T`: `timeout` bounds it instead).
fn fetch(h: &Hosts, from: usize, container: &str, addr: &str) -> Result<String, String> {
    // `addr` may carry a path (`ADDR/cgi-bin/who`).
    let url = if addr.contains('/') { format!("http://{addr}") } else { format!("http://{addr}/") };
    let out = h.docker(from, &["exec", container, "timeout", "3", "wget", "-O-", &url]);
    if out.success() {
        Ok(out.stdout.trim().to_string())
    } else {
        Err(out.to_string())
    }
}

#[test]
fn tasks_on_two_hosts_reach_each_other_and_networks_are_kept_apart() {
    if !require_hosts() {
        return;
    }
    let h = Hosts::up(2, 1, Mesh::Kernel);

    // Bad input first: clear errors, nothing written.
    let out = h.shoal(1, &["network", "create", "bad/name"]);
    assert!(!out.success() && out.stderr.contains("starts with a letter or digit and has only letters"), "{out}");
    h.shoal_ok(1, &["network", "create", "a"]);
    h.shoal_ok(1, &["network", "create", "--subnet", "10.50.0.0/16", "b"]);
    let out = h.shoal(1, &["network", "create", "--subnet", "10.50.3.0/24", "c"]);
    assert!(out.stderr.contains("subnet 10.50.3.0/24 overlaps network b's subnet 10.50.0.0/16"), "{out}");
    let out = h.shoal(1, &["service", "create", "-d", "--name", "x", "--network", "nope", busybox_image()]);
    assert!(out.stderr.contains("network nope not found"), "{out}");
    assert!(!h.shoal_ok(1, &["service", "ls"]).contains(" x "), "a service with an unknown network was written");
    let ls = h.shoal_ok(1, &["network", "ls"]);
    assert!(ls.contains(" a ") && ls.contains(" b ") && !ls.contains(" c "), "{ls}");

    // web ×2 on a (one per host), other ×1 on b only.
    create(&h, "web", &["--replicas", "2", "--network", "a"]);
    create(&h, "other", &["--network", "b"]);
    let web = h.wait_running_where(1, "web", 2, CONVERGE, |_| true);
    let web = addresses("web", &web);
    assert_eq!(web.len(), 2, "one web task per host: {web:?}");
    let (c1, a1) = &web[&1];
    let (c2, a2) = &web[&2];
    assert_ne!(a1, a2);

    // Across hosts, by address, both ways: each answer is the other's hostname.
    wait_for(Duration::from_secs(20), "host1's task to reach host2's", || fetch(&h, 1, c1, a2));
    assert_eq!(fetch(&h, 1, c1, a2).unwrap(), c2[..12], "host1 → host2");
    assert_eq!(fetch(&h, 2, c2, a1).unwrap(), c1[..12], "host2 → host1");

    // web's virtual IP, from host1's task: both tasks answer, in turn (one
    // of them is the caller itself).
    let info: Value = serde_json::from_str(&h.shoal_ok(1, &["service", "inspect", "web"])).expect("inspect json");
    let vip = info[0]["vips"][0]["addr"].as_str().unwrap_or_else(|| panic!("no VIP: {info}")).to_string();
    let seen = wait_for(Duration::from_secs(10), "both web tasks to answer through the VIP", || {
        let answers: BTreeSet<String> = (0..4).map(|_| fetch(&h, 1, c1, &vip)).collect::<Result<_, _>>()?;
        if answers.len() == 2 {
            Ok(answers)
        } else {
            Err(format!("only {answers:?}"))
        }
    });
    assert_eq!(seen, [c1[..12].to_string(), c2[..12].to_string()].into(), "through {vip}");

    // a cannot reach b.
    let other = h.wait_running(1, "other", 1, CONVERGE);
    let other = addresses("other", &other);
    let (host_b, (cb, ab)) = other.iter().next().unwrap();
    let from = if *host_b == 1 { 1 } else { 2 };
    let (ca, _) = &web[&from];
    assert!(fetch(&h, from, ca, ab).is_err(), "a task on a reached {ab} on b");
    assert!(fetch(&h, *host_b, cb, ab).is_ok(), "b's own task answers");

    // A task on both networks reaches either's services by name; a task
    // only on a does not even resolve b's.
    create(&h, "multi", &["--network", "a", "--network", "b"]);
    let multi = h.wait_running(1, "multi", 1, CONVERGE);
    let (mh, (mc, _)) = addresses("multi", &multi).into_iter().next().unwrap();
    let other_name = wait_for(Duration::from_secs(10), "multi to reach other by name", || fetch(&h, mh, &mc, "other"));
    assert_eq!(other_name, cb[..12], "other, on b");
    assert!(hostnames_of(&web).contains(&fetch(&h, mh, &mc, "web").unwrap()), "web, on a");
    assert!(nslookup(&h, from, ca, "other").map_or(true, |a| a.is_empty()), "a task only on a resolved b's other");
    h.shoal_ok(1, &["service", "rm", "multi"]);

    // A network in use stays.
    let out = h.shoal(1, &["network", "rm", "a"]);
    assert!(out.stderr.contains("network a is in use by service web"), "{out}");
    h.shoal_ok(1, &["service", "rm", "web", "other"]);
    h.shoal_ok(1, &["network", "rm", "a", "b"]);
    assert!(!h.shoal_ok(1, &["network", "ls"]).contains(" a "));

    // Host mode: published ports are refused, and a global task sees its
    // host's own interfaces.
    let out =
        h.shoal(1, &["service", "create", "-d", "--name", "hp", "--network", "host", "-p", "80", busybox_image()]);
    assert!(out.stderr.contains("published ports mean nothing with --network host"), "{out}");
    let flags = ["service", "create", "-d", "--name", "edge", "--mode", "global", "--network", "host"];
    h.shoal_ok(1, &[&flags[..], &[busybox_image(), "sleep", "100000"]].concat());
    let edge = h.wait_running(1, "edge", 2, CONVERGE);
    for t in &edge {
        let host = task_host(t).expect("a host");
        let id = t["status"]["container_id"].as_str().unwrap_or_else(|| panic!("no container: {t}"));
        let out = h.docker(host, &["exec", id, "ip", "-4", "-o", "addr"]);
        let want = format!("inet {}/", h.addr(host));
        assert!(out.stdout.contains(&want), "host{host}'s task does not see {want}: {out}");
    }
    h.shoal_ok(1, &["service", "rm", "edge"]);
}

fn hostnames_of(tasks: &BTreeMap<usize, (String, String)>) -> BTreeSet<String> {
    tasks.values().map(|(id, _)| id[..12].to_string()).collect()
}

/// The IPv4 addresses `nslookup NAME` prints from inside `container` (the
/// resolver's own address left out), or why it failed.
fn nslookup(h: &Hosts, host: usize, container: &str, name: &str) -> Result<BTreeSet<String>, String> {
    let out = h.docker(host, &["exec", container, "nslookup", name]);
    if !out.success() {
        return Err(out.to_string());
    }
    // `Name: tasks.back` then `Address: 10.0.0.2` (or `Address 1: …`).
    let addrs = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter(|l| l.starts_with("Address"))
        .filter_map(|l| l.split_whitespace().last())
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
        .collect();
    Ok(addrs)
}

#[test]
fn services_find_each_other_by_name_through_their_vip_and_dns() {
    if !require_hosts() {
        return;
    }
    let h = Hosts::up(3, 1, Mesh::Kernel);
    h.shoal_ok(1, &["network", "create", "app"]);
    create(&h, "back", &["--replicas", "3", "--replicas-max-per-node", "1", "--network", "app", "-p", "8080:80"]);
    let back = addresses("back", &h.wait_running(1, "back", 3, CONVERGE));
    let hostnames: BTreeSet<String> = back.values().map(|(id, _)| id[..12].to_string()).collect();
    let task_addrs: BTreeSet<String> = back.values().map(|(_, a)| a.clone()).collect();
    assert_eq!(hostnames.len(), 3, "{back:?}");

    // front loops over http://back/: its output shows every back task.
    let poll = "while true; do timeout 3 wget -O- http://back/ 2>&1; sleep 0.2; done";
    h.shoal_ok(
        1,
        &["service", "create", "-d", "--name", "front", "--network", "app", busybox_image(), "sh", "-c", poll],
    );
    let front = addresses("front", &h.wait_running(1, "front", 1, CONVERGE));
    let (&fh, (fc, _)) = front.iter().next().unwrap();
    wait_for(Duration::from_secs(20), "front's output to show all three back hostnames", || {
        let logs = h.docker(fh, &["logs", fc]);
        let seen: BTreeSet<String> = hostnames.iter().filter(|n| logs.stdout.contains(n.as_str())).cloned().collect();
        if seen == hostnames {
            Ok(())
        } else {
            Err(format!(
                "seen {seen:?}; log tail: {}",
                logs.stdout.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ))
        }
    });

    // DNS from inside a task: back is its VIP, tasks.back its three tasks.
    let info: Value = serde_json::from_str(&h.shoal_ok(1, &["service", "inspect", "back"])).expect("inspect json");
    let vip = info[0]["vips"][0]["addr"].as_str().unwrap_or_else(|| panic!("no VIP: {info}")).to_string();
    assert_eq!(nslookup(&h, fh, fc, "back").unwrap(), [vip.clone()].into());
    assert_eq!(nslookup(&h, fh, fc, "tasks.back").unwrap(), task_addrs);
    // Reverse lookups: the VIP names the service on its network; a task's
    // address its service too (ours: `back.app`; Docker's own resolver
    // answers for containers on its host: `back.SLOT.TASK.NETWORK`).
    let out = h.docker(fh, &["exec", fc, "nslookup", &vip]);
    assert!(out.stdout.contains("name = back.app\n"), "PTR of the VIP {vip}: {out}");
    for addr in &task_addrs {
        let out = h.docker(fh, &["exec", fc, "nslookup", addr]);
        assert!(out.stdout.contains("name = back."), "PTR of {addr}: {out}");
    }
    // The routing mesh still serves back's published port, from any host.
    let meshed = fetch(&h, fh, fc, &format!("{}:8080", h.addr(3))).expect("back's published port");
    assert!(hostnames.contains(&meshed), "{meshed} is not a back task");

    // A name that is not the cluster's goes to the host's resolvers; with
    // none reachable from a test host it fails, and soon.
    let started = std::time::Instant::now();
    assert!(nslookup(&h, fh, fc, "nowhere.invalid").map_or(true, |a| a.is_empty()));
    assert!(started.elapsed() < Duration::from_secs(15), "a forwarded query hung: {:?}", started.elapsed());

    // Scale to 1: within a second, DNS and the VIP give only the survivor.
    h.shoal_ok(1, &["service", "scale", "-d", "back=1"]);
    let started = std::time::Instant::now();
    let left = wait_for(Duration::from_secs(10), "tasks.back to list one address", || {
        let addrs = nslookup(&h, fh, fc, "tasks.back")?;
        if addrs.len() == 1 {
            Ok(addrs)
        } else {
            Err(format!("{addrs:?}"))
        }
    });
    let took = started.elapsed();
    eprintln!("scaled to 1: tasks.back listed one address after {took:?}");
    assert!(took < Duration::from_secs(3), "DNS followed the scale in {took:?}");
    let (sh, (sc, sa)) = back.iter().find(|(_, (_, a))| left.contains(a)).expect("the survivor is one of the three");
    for _ in 0..4 {
        assert_eq!(fetch(&h, fh, fc, "back").unwrap(), sc[..12], "only the survivor answers through the VIP");
    }

    // Kill it: the replacement answers.
    h.docker(*sh, &["kill", sc]);
    let replacement = wait_for(Duration::from_secs(30), "a replacement to answer through the VIP", || {
        match fetch(&h, fh, fc, "back") {
            Ok(name) if name != sc[..12] => Ok(name),
            other => Err(format!("{other:?} (the killed task was {sa})")),
        }
    });
    assert_eq!(replacement.len(), 12, "a container hostname: {replacement}");
    h.shoal_ok(1, &["service", "rm", "front", "back"]);
    h.shoal_ok(1, &["network", "rm", "app"]);
}

/// Whether `tool` is installed; in CI its absence fails the test.
fn require_tool(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(!tests::is_ci(), "{tool} is required when CI=true (deploy/install-deps.sh)");
        eprintln!("!!! SKIPPED: {tool} not found (deploy/install-deps.sh)");
    }
    found
}

/// A capture of host i's underlay (eth0), ended (by pid) when dropped.
struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(h: &Hosts, i: usize, name: &str) -> Capture {
        let file = std::env::temp_dir().join(format!("shoal-{name}-{}.pcap", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let path = file.to_string_lossy().into_owned();
        let mut child = h
            .spawn(i, "tcpdump", &["-i", "eth0", "-n", "-U", "--immediate-mode", "-s", "0", "-w", &path, "udp"])
            .expect("tcpdump starts");
        // tcpdump says "listening on eth0" once the capture is open.
        let mut stderr = child.stderr.take().expect("tcpdump's stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut seen = Vec::new();
            let mut buf = [0u8; 256];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(9).any(|w| w == b"listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("tcpdump to start listening");
        Capture { child, file }
    }

    /// Ends the capture; its bytes.
    fn finish(mut self) -> Vec<u8> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap_or_default()
    }

    /// Packets in the capture file matching a tcpdump filter.
    fn count(file: &std::path::Path, filter: &str) -> usize {
        let out = std::process::Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(file)
            .arg(filter)
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_encrypted_network_carries_nothing_in_the_clear_between_hosts() {
    if !require_hosts() || !require_tool("tcpdump") {
        return;
    }
    let h = Hosts::up(2, 1, Mesh::Kernel);
    h.shoal_ok(1, &["network", "create", "--opt", "encrypted", "sealed"]);
    h.shoal_ok(1, &["network", "create", "clear"]);
    let inspect: Value = serde_json::from_str(&h.shoal_ok(1, &["network", "inspect", "sealed"])).expect("json");
    assert!(inspect.to_string().contains("\"encrypted\""), "the option is kept: {inspect}");

    // Each service serves 20 kB of its own marker, one task per host.
    let serve = |marker: &str| {
        format!("mkdir -p /www && yes {marker} | head -c 20000 > /www/index.html && exec httpd -f -p 80 -h /www")
    };
    for (svc, net, marker) in [("sweb", "sealed", "SEALED-MARKER"), ("cweb", "clear", "CLEAR-MARKER")] {
        let flags = ["service", "create", "-d", "--name", svc, "--replicas", "2", "--replicas-max-per-node", "1"];
        let s = serve(marker);
        h.shoal_ok(1, &[&flags[..], &["--network", net, busybox_image(), "sh", "-c", &s]].concat());
    }
    let sweb = addresses("sweb", &h.wait_running(1, "sweb", 2, CONVERGE));
    let cweb = addresses("cweb", &h.wait_running(1, "cweb", 2, CONVERGE));
    assert_eq!((sweb.len(), cweb.len()), (2, 2), "one task per host: {sweb:?} {cweb:?}");

    // The encrypted network's MTU leaves room for the seal.
    let mtu = h.docker(1, &["exec", &sweb[&1].0, "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.stdout.trim(), "1318", "{mtu}");
    let mtu = h.docker(1, &["exec", &cweb[&1].0, "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.stdout.trim(), "1450", "{mtu}");

    let capture = Capture::start(&h, 1, "underlay");
    let file = capture.file.clone();
    // Across hosts, both ways, on each network.
    for (svc, tasks, marker) in [("sweb", &sweb, "SEALED-MARKER"), ("cweb", &cweb, "CLEAR-MARKER")] {
        for (from, to) in [(1, 2), (2, 1)] {
            let got = wait_for(Duration::from_secs(20), &format!("{svc}: host{from} to fetch from host{to}"), || {
                fetch(&h, from, &tasks[&from].0, &tasks[&to].1)
            });
            assert!(got.len() >= 19_990, "{svc} host{from}→host{to}: {} of 20000 bytes arrived", got.len());
            assert!(got.starts_with(marker), "{svc}: {}", &got[..40]);
        }
    }
    // The capture is written as packets come; wait for the clear one's.
    let clear_seen = wait_for(Duration::from_secs(10), "the capture to hold the clear network's payload", || {
        let bytes = std::fs::read(&file).unwrap_or_default();
        if bytes.windows(12).any(|w| w == b"CLEAR-MARKER") {
            Ok(true)
        } else {
            Err(format!("{} bytes captured", bytes.len()))
        }
    });
    let bytes = capture.finish();
    let has = |m: &str| bytes.windows(m.len()).any(|w| w == m.as_bytes());
    let summary = || {
        let c = |f: &str| Capture::count(&file, f);
        format!(
            "{} bytes; udp 4789: {}, 4788: {}, 4790: {}",
            bytes.len(),
            c("udp port 4789"),
            c("udp port 4788"),
            c("udp port 4790")
        )
    };
    assert!(
        clear_seen && has("CLEAR-MARKER"),
        "the capture sees the clear network's payload (else it proves nothing): {}",
        summary()
    );
    assert!(!has("SEALED-MARKER"), "the encrypted network's payload crossed the wire in the clear");
    assert!(Capture::count(&file, "udp port 4788") >= 20, "sealed datagrams on the wire");
    assert_eq!(Capture::count(&file, "udp port 4790"), 0, "VXLAN of the encrypted network in the clear");
    let _ = std::fs::remove_file(&file);

    // A VXLAN packet for the encrypted network's port that did not come
    // through the tunnel is dropped.
    let guard = h.exec(1, std::path::Path::new("nft"), &["list", "table", "inet", "shoal_crypt"], CONVERGE);
    assert!(guard.stdout.contains("udp dport 4790 iifname != \"shoal-crypt\""), "{guard}");

    // The tunnel goes with the node's last encrypted network.
    h.shoal_ok(1, &["service", "rm", "sweb", "cweb"]);
    h.shoal_ok(1, &["network", "rm", "sealed", "clear"]);
    wait_for(Duration::from_secs(20), "host1's tunnel rules to go", || {
        let rules = h.exec(1, std::path::Path::new("ip"), &["rule"], CONVERGE);
        let link = h.exec(1, std::path::Path::new("ip"), &["link", "show", "shoal-crypt"], CONVERGE);
        if rules.stdout.contains("4790") || link.success() {
            Err(format!("{rules}\n{link}"))
        } else {
            Ok(())
        }
    });
}

/// `--opt routing=direct`: no VXLAN device; each host routes the other's
/// block via the other's address; tasks reach each other across hosts by
/// address and through the VIP, and see each other's own address (nothing
/// on the way is masqueraded); the routes and rules go with the network.
#[test]
fn a_directly_routed_network_crosses_hosts_without_a_tunnel_and_keeps_addresses() {
    if !require_hosts() {
        return;
    }
    let h = Hosts::up(2, 1, Mesh::Kernel);
    let out = h.shoal(1, &["network", "create", "--opt", "routing=bogus", "x"]);
    assert!(
        !out.success()
            && out.stderr.contains("invalid --opt routing=\"bogus\": expected vxlan (the default) or direct"),
        "{out}"
    );
    let out = h.shoal(1, &["network", "create", "--opt", "routing=direct", "--opt", "encrypted", "x"]);
    assert!(!out.success() && out.stderr.contains("--opt encrypted needs the VXLAN overlay"), "{out}");
    assert!(!h.shoal_ok(1, &["network", "ls"]).contains(" x "), "a refused network was written");

    h.shoal_ok(1, &["network", "create", "--opt", "routing=direct", "flat"]);
    // httpd answers `/` with its hostname and `/cgi-bin/who` with the
    // caller's address as it sees it.
    let who = "mkdir -p /www/cgi-bin && hostname > /www/index.html \
               && printf '#!/bin/sh\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/who \
               && chmod +x /www/cgi-bin/who && exec httpd -f -p 80 -h /www";
    let flags = ["service", "create", "-d", "--name", "web", "--replicas", "2", "--replicas-max-per-node", "1"];
    h.shoal_ok(1, &[&flags[..], &["--network", "flat", busybox_image(), "sh", "-c", who]].concat());
    let web = addresses("web", &h.wait_running(1, "web", 2, CONVERGE));
    assert_eq!(web.len(), 2, "one task per host: {web:?}");
    let ((c1, a1), (c2, a2)) = (&web[&1], &web[&2]);

    // No tunnel: no VXLAN device on either host, and a route to the other
    // host's block via its address.
    let tasks: Vec<Value> =
        serde_json::from_str(&h.shoal_ok(1, &["service", "ps", "web", "--format", "json"])).expect("service ps json");
    let block_of = |addr: &str| {
        let t = tasks.iter().find(|t| t["addresses"][0]["addr"] == addr).expect("the task");
        t["addresses"][0]["block"].as_str().expect("a block").to_string()
    };
    for (host, other, other_addr) in [(1, 2, a2), (2, 1, a1)] {
        let links = h.exec(host, std::path::Path::new("ip"), &["-o", "link", "show", "type", "vxlan"], CONVERGE);
        assert!(!links.stdout.contains("shvx"), "host{host} has a VXLAN device: {links}");
        let want = format!("{} via {}", block_of(other_addr), h.addr(other));
        wait_for(Duration::from_secs(20), &format!("host{host}'s route to host{other}'s block"), || {
            let routes = h.exec(host, std::path::Path::new("ip"), &["-4", "route", "show", "proto", "211"], CONVERGE);
            if routes.stdout.contains(&want) {
                Ok(())
            } else {
                Err(format!("want {want:?}: {routes}"))
            }
        });
    }
    let mtu = h.docker(1, &["exec", c1, "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.stdout.trim(), "1500", "no VXLAN header to leave room for: {mtu}");

    // Across hosts by address, both ways; the server sees the caller's own
    // address.
    wait_for(Duration::from_secs(20), "host1's task to reach host2's", || fetch(&h, 1, c1, a2));
    assert_eq!(fetch(&h, 1, c1, a2).unwrap(), c2[..12], "host1 → host2");
    assert_eq!(fetch(&h, 2, c2, a1).unwrap(), c1[..12], "host2 → host1");
    // (busybox httpd gives REMOTE_ADDR as `[::ffff:10.0.1.2]`.)
    let who = |from: usize, c: &str, addr: &str| {
        fetch(&h, from, c, &format!("{addr}/cgi-bin/who"))
            .map(|a| a.trim_start_matches("[::ffff:").trim_end_matches(']').to_string())
    };
    assert_eq!(who(1, c1, a2).unwrap(), *a1, "host2's task sees host1's task");
    assert_eq!(who(2, c2, a1).unwrap(), *a2, "host1's task sees host2's task");

    // Through the VIP from host1's task: both answer; the one across the
    // hosts sees the caller's own address.
    let info: Value = serde_json::from_str(&h.shoal_ok(1, &["service", "inspect", "web"])).expect("inspect json");
    let vip = info[0]["vips"][0]["addr"].as_str().unwrap_or_else(|| panic!("no VIP: {info}")).to_string();
    let seen = wait_for(Duration::from_secs(10), "both web tasks to answer through the VIP", || {
        let answers: BTreeSet<String> = (0..4).map(|_| fetch(&h, 1, c1, &vip)).collect::<Result<_, _>>()?;
        if answers.len() == 2 {
            Ok(answers)
        } else {
            Err(format!("only {answers:?}"))
        }
    });
    assert_eq!(seen, [c1[..12].to_string(), c2[..12].to_string()].into(), "through {vip}");
    let callers: BTreeSet<String> = (0..4).map(|_| who(1, c1, &vip).expect("who through the VIP")).collect();
    assert!(callers.contains(a1.as_str()), "the task across the hosts sees the caller's address: {callers:?}");

    // The network's routes and rules go with it.
    h.shoal_ok(1, &["service", "rm", "web"]);
    h.shoal_ok(1, &["network", "rm", "flat"]);
    for host in [1, 2] {
        wait_for(Duration::from_secs(20), &format!("host{host}'s routes and rules to go"), || {
            let routes = h.exec(host, std::path::Path::new("ip"), &["-4", "route", "show", "proto", "211"], CONVERGE);
            let rules = h.exec(host, std::path::Path::new("iptables"), &["-S", "DOCKER-USER"], CONVERGE);
            if routes.stdout.trim().is_empty() && !rules.stdout.contains("shbr") {
                Ok(())
            } else {
                Err(format!("{routes}\n{rules}"))
            }
        });
    }
}
