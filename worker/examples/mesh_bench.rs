//! Serves one published port through the routing mesh, for
//! `deploy/bench-mesh.sh`: the MeshProgrammer of a made-up node, with one
//! table entry, until SIGINT or SIGTERM; then it shuts the mesh
//! down (removing the nft table in the kernel path).
//!
//! usage: mesh_bench kernel|userspace NODE_IP PORT BACKEND [BACKEND…]
//!   (MESH_SPLICE=1: the userspace proxy uses splice(2) instead of copying)
//!   e.g. mesh_bench userspace 127.0.0.201 8080 127.0.0.200:32768

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use actix::prelude::*;
use tokio::signal::unix::{signal, SignalKind};

use common::ids::{NodeId, ServiceId};
use common::mesh::{MeshEntry, MeshTable, Protocol};
use worker::mesh::proxy::Splice;
use worker::mesh::{preflight, DataPath, GetStatus, MeshConfig, MeshProgrammer, SetTable, Shutdown};

fn usage() -> ExitCode {
    eprintln!("usage: mesh_bench kernel|userspace NODE_IP PORT BACKEND_IP:PORT [BACKEND_IP:PORT...]");
    ExitCode::from(2)
}

#[actix::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return usage();
    }
    let (Ok(path), Ok(node_ip), Ok(port)) =
        (args[0].parse::<DataPath>(), args[1].parse::<IpAddr>(), args[2].parse::<u16>())
    else {
        return usage();
    };
    let Ok(backends) = args[3..].iter().map(|b| b.parse::<SocketAddr>()).collect::<Result<Vec<_>, _>>() else {
        return usage();
    };
    let node_id = NodeId::random();
    if let Err(e) = preflight(path, &node_id, node_ip).await {
        eprintln!("mesh_bench: {e}");
        return ExitCode::FAILURE;
    }
    let mut config = MeshConfig::new(node_id, node_ip, path);
    // MESH_SPLICE=never|bulk|always: when the userspace proxy moves bytes
    // with splice(2); MESH_BUFFER: its read size; MESH_THREADS: its threads.
    match std::env::var("MESH_SPLICE").as_deref() {
        Ok("never") | Ok("0") => config.proxy.splice = Splice::Never,
        Ok("bulk") => config.proxy.splice = Splice::Bulk,
        Ok("always") | Ok("1") => config.proxy.splice = Splice::Always,
        _ => {}
    }
    if let Some(n) = std::env::var("MESH_BUFFER").ok().and_then(|v| v.parse().ok()) {
        config.proxy.buffer = n;
    }
    if let Some(n) = std::env::var("MESH_THREADS").ok().and_then(|v| v.parse().ok()) {
        config.proxy.threads = n;
    }
    let (programmer, _status) = MeshProgrammer::new(config);
    let mesh = programmer.start();
    let table = MeshTable {
        entries: vec![MeshEntry {
            service_id: ServiceId::from("bench"),
            service_name: "bench".into(),
            protocol: Protocol::Tcp,
            published: port,
            backends,
            direct: Default::default(),
            preserve_source: false,
            proxy_protocol: None,
        }],
        ..Default::default()
    };
    if mesh.send(SetTable(table)).await.is_err() {
        eprintln!("mesh_bench: the mesh actor died");
        return ExitCode::FAILURE;
    }
    let st = match mesh.send(GetStatus).await {
        Ok(st) => st,
        Err(e) => {
            eprintln!("mesh_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(e) = st.error.or_else(|| st.failures.first().map(|f| f.error.clone())) {
        eprintln!("mesh_bench: {e}");
        return ExitCode::FAILURE;
    }
    println!("ready {path} {node_ip}:{port}");

    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        eprintln!("mesh_bench: cannot handle signals");
        return ExitCode::FAILURE;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    match mesh.send(Shutdown).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("mesh_bench: shutdown: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mesh_bench: shutdown: {e}");
            ExitCode::FAILURE
        }
    }
}
