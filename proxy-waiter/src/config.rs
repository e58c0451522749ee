//! Modes and settings, from arguments and environment variables (no CLI framework: size).

use alloc::{
    format,
    string::{String, ToString},
};
use core::time::Duration;

pub const USAGE: &str = "\
Usage: proxy-waiter [wait]      wait for this container's delegate result, then exit like it
       proxy-waiter init        exit 0 at once (proxy init containers)
       proxy-waiter deliver [--container NAME] [--timeout SECONDS] [RESULT | -]
                                hand a result (JSON, from the argument or stdin) to the waiter

Settings (environment):
  PROXY_WAITER_CONTAINER        this container's name (required to wait or deliver)
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
        "deliver" => parse_deliver(rest, &env).map(Mode::Deliver),
        other => Err(format!("unknown mode {other:?}")),
    }
}

fn parse_deliver(
    args: &[String],
    env: &impl Fn(&str) -> Option<String>,
) -> Result<DeliverConfig, String> {
    let mut container_flag = None;
    let mut timeout = Duration::from_secs(10);
    let mut result = None;
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
            "-" if result.is_none() => result = Some(None),
            value if !value.starts_with("--") && result.is_none() => {
                result = Some(Some(value.to_string()))
            }
            other => return Err(format!("unexpected argument {other:?} for deliver")),
        }
    }
    let container = container(container_flag, env)?;
    Ok(DeliverConfig {
        socket: socket(&container, env),
        container,
        result: result.flatten(),
        timeout,
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
