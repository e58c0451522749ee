//! `testbed-gateway`: the one door out of a real node's pod network, to what pods of a real
//! cluster reach: their apiserver, and the test bed's artifact store.
//!
//! The pods of a real node sit on an isolated bridge: no address on the host, no route off it.
//! In-cluster clients such as Argo's executor still need their apiserver, at the `kubernetes`
//! Service's ClusterIP (`KUBERNETES_SERVICE_HOST`, port 443), and Argo's artifacts need their
//! bucket. This process makes a network namespace of its own, joins it to the bridge by a veth
//! pair, gives it the bridge's gateway address and the addresses it relays from, and relays
//! every TCP connection to each of those to a server on the host's loopback
//! (`--relay 10.96.0.1:443=127.0.0.1:PORT`). The namespace forwards no packet, so pods reach
//! those servers and nothing else, and no address is added to the host: test beds running
//! side by side may use the same subnets.
//!
//! The namespace lives as long as this process; when it ends, the veth pair goes with it.

use std::{
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    str::FromStr,
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;

/// Relays TCP connections from a real node's pod network to servers on the host's loopback.
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
    /// ADDRESS:PORT=127.0.0.1:PORT: pods' connections to ADDRESS:PORT go to the server on the
    /// loopback (the apiserver at the `kubernetes` Service's ClusterIP, say). Repeatable.
    #[arg(long, required = true)]
    relay: Vec<Relay>,
    /// Written once the gateway accepts connections.
    #[arg(long)]
    ready_file: PathBuf,
}

/// One address pods connect to, and the loopback server their connections go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Relay {
    from: SocketAddr,
    to: SocketAddr,
}

impl FromStr for Relay {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (from, to) = text
            .split_once('=')
            .ok_or_else(|| format!("expected ADDRESS:PORT=127.0.0.1:PORT, not {text:?}"))?;
        let parse = |a: &str| {
            a.parse::<SocketAddr>()
                .map_err(|e| format!("{a:?} is not an IP:PORT ({e})"))
        };
        let (from, to) = (parse(from)?, parse(to)?);
        if !to.ip().is_loopback() {
            return Err(format!("relays go to loopback addresses only, not {to}"));
        }
        Ok(Self { from, to })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure_bridge(&cli.bridge)?;
    let listeners = listen_in_own_namespace(&cli)?;
    ip(&["link", "set", &cli.host_link, "master", &cli.bridge])?;
    ip(&["link", "set", &cli.host_link, "up"])?;
    std::fs::write(&cli.ready_file, b"ready\n")
        .with_context(|| format!("cannot write {}", cli.ready_file.display()))?;
    let accepting: Vec<_> = listeners
        .into_iter()
        .zip(cli.relay.clone())
        .map(|(listener, relay)| {
            eprintln!(
                "gateway {}: {} relays to {}",
                cli.gateway, relay.from, relay.to
            );
            // Accepted on a thread of the host's namespace: the connections to the server are
            // made by threads spawned from it, so they leave from the host's loopback.
            thread::spawn(move || accept(listener, relay.to))
        })
        .collect();
    for thread in accepting {
        let _ = thread.join();
    }
    Ok(())
}

fn accept(listener: TcpListener, to: SocketAddr) {
    for client in listener.incoming() {
        match client {
            Ok(client) => {
                thread::spawn(move || {
                    if let Err(e) = relay(client, to) {
                        eprintln!("relay to {to} ended: {e}");
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
}

/// Makes the namespace on a thread of its own (a network namespace belongs to a thread), sets
/// up its side there and returns the listening sockets, one per relay, which stay in that
/// namespace.
fn listen_in_own_namespace(cli: &Cli) -> anyhow::Result<Vec<TcpListener>> {
    let (sent, received) = mpsc::channel();
    let host_namespace = format!("/proc/{}/ns/net", std::process::id());
    let (host_link, gateway, relays) = (
        cli.host_link.clone(),
        cli.gateway.clone(),
        cli.relay.clone(),
    );
    thread::spawn(move || {
        let made = (|| -> anyhow::Result<Vec<TcpListener>> {
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
            let gateway_ip = gateway.split('/').next().unwrap_or_default();
            let mut own: Vec<String> = relays
                .iter()
                .map(|r| r.from.ip().to_string())
                .filter(|a| a != gateway_ip)
                .collect();
            own.sort();
            own.dedup();
            for address in &own {
                ip(&["address", "add", &format!("{address}/32"), "dev", "lo"])?;
            }
            ip(&["link", "set", "eth0", "up"])?;
            relays
                .iter()
                .map(|r| {
                    TcpListener::bind(r.from).with_context(|| {
                        format!("cannot listen on {} in the gateway's namespace", r.from)
                    })
                })
                .collect()
        })();
        let failed = made.is_err();
        let _ = sent.send(made);
        if !failed {
            // Kept alive with the process, so the namespace never has fewer holders than the
            // listening sockets.
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
fn relay(client: TcpStream, to: SocketAddr) -> io::Result<()> {
    let server = TcpStream::connect(to)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_goes_from_any_address_to_a_loopback_one() {
        let relay: Relay = "10.96.0.1:443=127.0.0.1:6443".parse().unwrap();
        assert_eq!(relay.from, "10.96.0.1:443".parse().unwrap());
        assert_eq!(relay.to, "127.0.0.1:6443".parse().unwrap());
        assert!("10.96.0.1:443=10.0.0.1:6443".parse::<Relay>().is_err());
        assert!("10.96.0.1:443".parse::<Relay>().is_err());
        assert!("10.96.0.1=127.0.0.1:1".parse::<Relay>().is_err());
    }
}
