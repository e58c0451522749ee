//! `testbed-gateway`: the one door out of a real node's pod network, to its cluster's apiserver.
//!
//! The pods of a real node sit on an isolated bridge: no address on the host, no route off it.
//! In-cluster clients such as Argo's executor still need their apiserver, at the `kubernetes`
//! Service's ClusterIP (`KUBERNETES_SERVICE_HOST`, port 443). This process makes a network
//! namespace of its own, joins it to the bridge by a veth pair, gives it the bridge's gateway
//! address and that ClusterIP, and relays every TCP connection to port 443 there to the
//! apiserver on the host's loopback. The namespace forwards no packet, so pods reach their
//! apiserver and nothing else, and no address is added to the host: test beds running side by
//! side may use the same subnets.
//!
//! The namespace lives as long as this process; when it ends, the veth pair goes with it.

use std::{
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;

/// Relays TCP connections from a real node's pod network to its cluster's apiserver.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The pods' bridge (made here if the CNI plugin has not made it yet).
    #[arg(long)]
    bridge: String,
    /// Name of the veth end left on the host, joined to the bridge.
    #[arg(long)]
    host_link: String,
    /// The gateway's address on the pods' subnet, with its prefix length (10.244.1.1/24).
    #[arg(long)]
    gateway: String,
    /// Further addresses pods reach through the gateway (the `kubernetes` Service's ClusterIP).
    #[arg(long)]
    service_ip: Vec<String>,
    /// Port to listen on, at every address of the gateway.
    #[arg(long, default_value_t = 443)]
    port: u16,
    /// Where connections go: the apiserver on the host's loopback (127.0.0.1:PORT).
    #[arg(long)]
    apiserver: SocketAddr,
    /// Written once the gateway accepts connections.
    #[arg(long)]
    ready_file: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.apiserver.ip().is_loopback() {
        bail!(
            "--apiserver must be a loopback address, not {}",
            cli.apiserver
        );
    }
    ensure_bridge(&cli.bridge)?;
    let listener = listen_in_own_namespace(&cli)?;
    ip(&["link", "set", &cli.host_link, "master", &cli.bridge])?;
    ip(&["link", "set", &cli.host_link, "up"])?;
    std::fs::write(&cli.ready_file, b"ready\n")
        .with_context(|| format!("cannot write {}", cli.ready_file.display()))?;
    eprintln!(
        "gateway on {} port {} ({}) relays to {}",
        cli.gateway,
        cli.port,
        cli.service_ip.join(", "),
        cli.apiserver
    );
    // Accepted here, on a thread of the host's namespace: the connections to the apiserver
    // are made by threads spawned from this one, so they leave from the host's loopback.
    for client in listener.incoming() {
        match client {
            Ok(client) => {
                let apiserver = cli.apiserver;
                thread::spawn(move || {
                    if let Err(e) = relay(client, apiserver) {
                        eprintln!("relay ended: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors, say: do not spin on it.
                eprintln!("accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

/// Makes the namespace on a thread of its own (a network namespace belongs to a thread), sets
/// up its side there and returns the listening socket, which stays in that namespace.
fn listen_in_own_namespace(cli: &Cli) -> anyhow::Result<TcpListener> {
    let (sent, received) = mpsc::channel();
    let host_namespace = format!("/proc/{}/ns/net", std::process::id());
    let (host_link, gateway, service_ips, port) = (
        cli.host_link.clone(),
        cli.gateway.clone(),
        cli.service_ip.clone(),
        cli.port,
    );
    thread::spawn(move || {
        let made = (|| -> anyhow::Result<TcpListener> {
            // SAFETY: unshare only changes this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).context("cannot make a network namespace");
            }
            // Children of this thread (the `ip` commands) start in the new namespace.
            ip(&["link", "set", "lo", "up"])?;
            ip(&[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &host_link,
                "netns",
                &host_namespace,
            ])?;
            ip(&["address", "add", &gateway, "dev", "eth0"])?;
            for address in &service_ips {
                ip(&["address", "add", &format!("{address}/32"), "dev", "lo"])?;
            }
            ip(&["link", "set", "eth0", "up"])?;
            TcpListener::bind(("0.0.0.0", port)).context("cannot listen in the gateway's namespace")
        })();
        let failed = made.is_err();
        let _ = sent.send(made);
        if !failed {
            // Kept alive with the process, so the namespace never has fewer holders than the
            // listening socket.
            loop {
                thread::park();
            }
        }
    });
    received
        .recv()
        .context("the namespace thread ended without an answer")?
}

fn ensure_bridge(name: &str) -> anyhow::Result<()> {
    if !std::path::Path::new("/sys/class/net").join(name).exists() {
        ip(&["link", "add", name, "type", "bridge"])?;
    }
    ip(&["link", "set", name, "up"])
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Copies both ways until each side has ended its half.
fn relay(client: TcpStream, apiserver: SocketAddr) -> io::Result<()> {
    let server = TcpStream::connect(apiserver)?;
    let (client_out, server_out) = (client.try_clone()?, server.try_clone()?);
    let upstream = thread::spawn(move || pump(client_out, server_out));
    let downstream = pump(server, client);
    downstream.and(upstream.join().unwrap_or(Ok(())))
}

/// Copies `from` to `to`, then ends `to`'s half. A failure ends both connections, so the
/// other direction never waits on a peer that is gone (a pod deleted with its end of the
/// bridge).
fn pump(mut from: TcpStream, mut to: TcpStream) -> io::Result<()> {
    match io::copy(&mut from, &mut to) {
        Ok(_) => {
            let _ = to.shutdown(Shutdown::Write);
            Ok(())
        }
        Err(e) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            Err(e)
        }
    }
}
