//! Modes and settings, from arguments and environment variables (no CLI framework: size).

use alloc::{
    format,
    string::{String, ToString},
};
use core::time::Duration;

use crate::kill::{Signal, parse_signal};

pub const USAGE: &str = "\
Usage: proxy-waiter [wait]      wait for this container's delegate result, then exit like it
       proxy-waiter init        exit 0 at once (proxy init containers)
       proxy-waiter deliver [--container NAME] [--timeout SECONDS] [RESULT | -]
                                hand a result (JSON, from the argument or stdin) to the waiter
       proxy-waiter kill [--container NAME] [--timeout SECONDS] SIGNAL
                                make the waiter exit as if SIGNAL (15, TERM, SIGKILL...) had
                                killed it: exit code 128+N; no process is signalled
       proxy-waiter relay [--container NAME] [--timeout SECONDS]
                                relay a log to the waiter, which writes it as its own (what
                                delegate-sync execs; the protocol is in the docs)

Settings (environment):
  PROXY_WAITER_CONTAINER        this container's name (required to wait, deliver or kill)
  PROXY_WAITER_ANNOTATIONS      downward-API file of the pod's annotations
                                (default /etc/proxy-waiter/annotations)
  PROXY_WAITER_TERMINATION_LOG  where the delegate's termination message goes
                                (default /dev/termination-log)
  PROXY_WAITER_SOCKET           abstract socket name (default proxy-waiter/<container>)
";

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    Wait(WaitConfig),
    Init,
    Deliver(DeliverConfig),
    Kill(KillConfig),
    Relay(RelayConfig),
    Help,
    Version,
}

#[derive(Debug, PartialEq, Eq)]
pub struct WaitConfig {
    pub container: String,
    pub annotations: String,
    pub termination_log: String,
    pub socket: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct DeliverConfig {
    pub container: String,
    pub socket: String,
    /// The result itself, or `None` to read it from stdin.
    pub result: Option<String>,
    /// How long to keep trying while the waiter is not (yet) listening.
    pub timeout: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub struct KillConfig {
    pub container: String,
    pub socket: String,
    pub signal: Signal,
    /// How long to keep trying while the waiter is not (yet) listening.
    pub timeout: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub struct RelayConfig {
    pub container: String,
    pub socket: String,
    /// How long to keep trying while the waiter is not (yet) listening.
    pub timeout: Duration,
}

/// Parses arguments (without the program name) with `env` for environment variables.
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Mode, String> {
    let (mode, rest) = match args.first().map(String::as_str) {
        None => ("wait", args),
        Some(first) => (first, &args[1..]),
    };
    match mode {
        "-h" | "--help" | "help" => Ok(Mode::Help),
        "-V" | "--version" => Ok(Mode::Version),
        "init" => Ok(Mode::Init),
        "wait" => {
            if let Some(extra) = rest.first() {
                return Err(format!("unexpected argument {extra:?} for wait"));
            }
            let container = container(None, &env)?;
            Ok(Mode::Wait(WaitConfig {
                socket: socket(&container, &env),
                annotations: env("PROXY_WAITER_ANNOTATIONS")
                    .unwrap_or_else(|| "/etc/proxy-waiter/annotations".into()),
                termination_log: env("PROXY_WAITER_TERMINATION_LOG")
                    .unwrap_or_else(|| "/dev/termination-log".into()),
                container,
            }))
        }
        "deliver" => {
            let delivery = parse_delivery("deliver", rest, &env)?;
            Ok(Mode::Deliver(DeliverConfig {
                container: delivery.container,
                socket: delivery.socket,
                // `-` (or nothing): read the result from stdin.
                result: delivery.positional.filter(|p| p != "-"),
                timeout: delivery.timeout,
            }))
        }
        "kill" => {
            let delivery = parse_delivery("kill", rest, &env)?;
            let signal = delivery
                .positional
                .ok_or_else(|| String::from("kill needs a SIGNAL, e.g. 15 or TERM"))
                .and_then(|text| parse_signal(&text))?;
            Ok(Mode::Kill(KillConfig {
                container: delivery.container,
                socket: delivery.socket,
                signal,
                timeout: delivery.timeout,
            }))
        }
        "relay" => {
            let delivery = parse_delivery("relay", rest, &env)?;
            if let Some(extra) = delivery.positional {
                return Err(format!("unexpected argument {extra:?} for relay"));
            }
            Ok(Mode::Relay(RelayConfig {
                container: delivery.container,
                socket: delivery.socket,
                timeout: delivery.timeout,
            }))
        }
        other => Err(format!("unknown mode {other:?}")),
    }
}

/// What `deliver` and `kill` share: the options, and their one positional argument.
struct Delivery {
    container: String,
    socket: String,
    timeout: Duration,
    positional: Option<String>,
}

fn parse_delivery(
    mode: &str,
    args: &[String],
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Delivery, String> {
    let mut container_flag = None;
    let mut timeout = Duration::from_secs(10);
    let mut positional = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--container" => {
                container_flag = Some(args.next().ok_or("--container needs a value")?.clone())
            }
            "--timeout" => {
                let value = args.next().ok_or("--timeout needs a value in seconds")?;
                let seconds: f64 = value
                    .parse()
                    .map_err(|_| format!("--timeout {value:?} is not a number of seconds"))?;
                timeout = Duration::try_from_secs_f64(seconds)
                    .map_err(|_| format!("--timeout {value:?} is out of range"))?;
            }
            value if !value.starts_with("--") && positional.is_none() => {
                positional = Some(value.to_string())
            }
            other => return Err(format!("unexpected argument {other:?} for {mode}")),
        }
    }
    let container = container(container_flag, env)?;
    Ok(Delivery {
        socket: socket(&container, env),
        container,
        timeout,
        positional,
    })
}

fn container(
    flag: Option<String>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    flag.or_else(|| env("PROXY_WAITER_CONTAINER"))
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            "PROXY_WAITER_CONTAINER is not set: which container's result should this wait for?"
                .into()
        })
}

fn socket(container: &str, env: &impl Fn(&str) -> Option<String>) -> String {
    env("PROXY_WAITER_SOCKET").unwrap_or_else(|| format!("proxy-waiter/{container}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{panic, vec::Vec};

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn env(key: &str) -> Option<String> {
        (key == "PROXY_WAITER_CONTAINER").then(|| "main".to_string())
    }

    #[test]
    fn wait_is_the_default_and_reads_the_environment() {
        let Mode::Wait(config) = parse(&[], env).unwrap() else {
            panic!("not wait")
        };
        assert_eq!(config.container, "main");
        assert_eq!(config.socket, "proxy-waiter/main");
        assert_eq!(config.annotations, "/etc/proxy-waiter/annotations");
    }

    #[test]
    fn deliver_takes_a_result_a_container_and_a_timeout() {
        let mode = parse(
            &args(&["deliver", "--container", "wait", "--timeout", "0.5", "{}"]),
            env,
        )
        .unwrap();
        assert_eq!(
            mode,
            Mode::Deliver(DeliverConfig {
                container: "wait".into(),
                socket: "proxy-waiter/wait".into(),
                result: Some("{}".into()),
                timeout: Duration::from_millis(500),
            })
        );
        let Mode::Deliver(stdin) = parse(&args(&["deliver", "-"]), env).unwrap() else {
            panic!("not deliver")
        };
        assert_eq!(stdin.result, None);
    }

    #[test]
    fn kill_takes_a_signal_a_container_and_a_timeout() {
        let mode = parse(
            &args(&["kill", "--container", "wait", "--timeout", "2", "SIGKILL"]),
            env,
        )
        .unwrap();
        let Mode::Kill(config) = mode else {
            panic!("not kill")
        };
        assert_eq!(
            (config.container.as_str(), config.socket.as_str()),
            ("wait", "proxy-waiter/wait")
        );
        assert_eq!(
            (config.signal.number, config.timeout),
            (9, Duration::from_secs(2))
        );
        let Mode::Kill(shell) = parse(&args(&["kill", "-15"]), env).unwrap() else {
            panic!("not kill")
        };
        assert_eq!(
            (shell.signal.number, shell.container.as_str()),
            (15, "main")
        );
    }

    #[test]
    fn kill_mistakes_are_explained() {
        for (list, why) in [
            (&["kill"][..], "kill needs a SIGNAL"),
            (&["kill", "TERMINATE"], "unknown signal"),
            (&["kill", "0"], "out of range"),
            (&["kill", "CONT"], "does not end a process"),
            (&["kill", "15", "9"], "unexpected argument \"9\" for kill"),
        ] {
            let err = parse(&args(list), env).unwrap_err();
            assert!(err.contains(why), "{list:?}: {err}");
        }
        assert!(
            parse(&args(&["kill", "15"]), |_| None)
                .unwrap_err()
                .contains("PROXY_WAITER_CONTAINER")
        );
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(
            parse(&[], |_| None)
                .unwrap_err()
                .contains("PROXY_WAITER_CONTAINER")
        );
        assert!(
            parse(&args(&["deliver", "--timeout", "soon"]), env)
                .unwrap_err()
                .contains("soon")
        );
        assert!(
            parse(&args(&["deliver", "a", "b"]), env)
                .unwrap_err()
                .contains("\"b\"")
        );
        assert!(
            parse(&args(&["sleep"]), env)
                .unwrap_err()
                .contains("unknown mode")
        );
        assert_eq!(parse(&args(&["init"]), |_| None), Ok(Mode::Init));
    }
}
