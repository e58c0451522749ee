//! `proxy-waiter kill SIGNAL`: what Argo Workflows runs in a proxy container to stop it (the
//! webhook names it in annotation `workflows.argoproj.io/kill-cmd-<container>`). No process is
//! signalled: PID 1 may not be the waiter (shared process namespace, or a host). The waiter of
//! this container gets a result as if its delegate container had been killed by SIGNAL, over
//! the same socket as `deliver`, and so exits 128+N with a termination message that says why.

use alloc::{collections::BTreeMap, format, string::String};

use contract::result::{ContainerResult, DelegateResult, FORMAT_VERSION, Phase};

use crate::{
    config::KillConfig,
    deliver::{ACCEPTED, REFUSED, UNREACHABLE, hand_over},
    sys,
    wait::ALREADY_FINISHED,
};

/// A signal, by number, with its name when it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub number: i32,
    pub name: Option<&'static str>,
}

/// Names without `SIG`, canonical first for each number; the default action of all but
/// [`NOT_ENDING`] ends a process.
const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Signals whose default action ignores, stops or continues a process: they never end one.
const NOT_ENDING: &[i32] = &[
    libc::SIGCHLD,
    libc::SIGCONT,
    libc::SIGSTOP,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGURG,
    libc::SIGWINCH,
];

impl Signal {
    /// The conventional exit status of a process this signal ended.
    pub fn exit_code(&self) -> i32 {
        128 + self.number
    }

    /// `SIGTERM`, or `signal 40` for a signal without a name.
    pub fn describe(&self) -> String {
        match self.name {
            Some(name) => format!("SIG{name}"),
            None => format!("signal {}", self.number),
        }
    }
}

/// Parses `15`, `TERM`, `SIGTERM`, `sigterm`, or the shell's `-15` / `-TERM`.
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let bare = text.strip_prefix('-').unwrap_or(text);
    let number = match bare.parse::<i32>() {
        Ok(number) => number,
        Err(_) => {
            let upper = bare.to_ascii_uppercase();
            let name = upper.strip_prefix("SIG").unwrap_or(&upper);
            NAMES
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, number)| *number)
                .ok_or_else(|| {
                    format!("unknown signal {text:?}: give a number or a name such as TERM or KILL")
                })?
        }
    };
    if !(1..=libc::SIGRTMAX()).contains(&number) {
        return Err(format!(
            "signal {text:?} is out of range 1..{}",
            libc::SIGRTMAX()
        ));
    }
    let signal = Signal {
        number,
        name: NAMES
            .iter()
            .find(|(_, n)| *n == number)
            .map(|(name, _)| *name),
    };
    if NOT_ENDING.contains(&number) {
        return Err(format!(
            "{} does not end a process, so there is nothing to do",
            signal.describe()
        ));
    }
    Ok(signal)
}

/// The result that ends `container`'s waiter as if `signal` had killed it.
pub fn result_for(container: &str, signal: Signal) -> String {
    DelegateResult {
        version: FORMAT_VERSION,
        phase: Phase::Failed,
        reason: None,
        message: None,
        containers: BTreeMap::from([(
            container.into(),
            ContainerResult {
                exit_code: signal.exit_code(),
                reason: Some("Stopped".into()),
                message: Some(format!("stopped by {} (kill command)", signal.describe())),
            },
        )]),
    }
    .encode()
}

pub fn run(config: &KillConfig) -> i32 {
    let signal = config.signal.describe();
    let text = result_for(&config.container, config.signal);
    match hand_over(&config.socket, config.timeout, &text) {
        Ok(reply) if reply.trim_end() == "accepted" => {
            sys::out(&format!(
                "proxy-waiter kill: the waiter of {} stops as if by {signal} (exit code {})",
                config.container,
                config.signal.exit_code()
            ));
            ACCEPTED
        }
        // The container is ending with its delegate's result: nothing left to stop.
        Ok(reply) if reply.trim_end() == ALREADY_FINISHED => {
            sys::out(&format!(
                "proxy-waiter kill: nothing to stop: the waiter of {} already accepted a result; {signal} ignored",
                config.container
            ));
            ACCEPTED
        }
        Ok(reply) => {
            sys::err(&format!(
                "proxy-waiter kill: the waiter of {} refused {signal}: {}",
                config.container,
                reply.trim_end()
            ));
            REFUSED
        }
        Err(e) => {
            sys::err(&format!(
                "proxy-waiter kill: cannot stop container {}: no waiter answered on @{} within {:?} ({e}); \
                 is this a proxy container, with proxy-waiter running as its main process?",
                config.container, config.socket, config.timeout
            ));
            UNREACHABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::outcome;

    fn number(text: &str) -> Result<i32, String> {
        parse_signal(text).map(|s| s.number)
    }

    #[test]
    fn numbers_names_and_shell_forms_are_signals() {
        for text in ["15", "TERM", "SIGTERM", "sigterm", "Term", "-15", "-TERM"] {
            assert_eq!(number(text), Ok(15), "{text}");
        }
        assert_eq!(number("9"), Ok(9));
        assert_eq!(number("KILL"), Ok(9));
        assert_eq!(number("INT"), Ok(2));
        assert_eq!(number("IOT"), Ok(libc::SIGABRT));
        assert_eq!(parse_signal("6").unwrap().describe(), "SIGABRT");
        let realtime = parse_signal("40").unwrap();
        assert_eq!(
            (realtime.name, realtime.describe().as_str()),
            (None, "signal 40")
        );
    }

    #[test]
    fn nonsense_and_signals_that_end_nothing_are_refused_with_a_reason() {
        for (text, why) in [
            ("", "unknown signal"),
            ("TERMINATE", "unknown signal"),
            ("SIG", "unknown signal"),
            ("--15", "out of range"),
            ("0", "out of range"),
            ("-0", "out of range"),
            ("65", "out of range"),
            ("99999999999", "unknown signal"),
            ("CHLD", "SIGCHLD does not end a process"),
            ("19", "SIGSTOP does not end a process"),
            ("WINCH", "does not end a process"),
        ] {
            let err = parse_signal(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_result_ends_the_waiter_with_128_plus_n_and_says_why() {
        for (text, code, message) in [
            ("15", 143, "stopped by SIGTERM (kill command)"),
            ("9", 137, "stopped by SIGKILL (kill command)"),
            ("INT", 130, "stopped by SIGINT (kill command)"),
            ("64", 192, "stopped by signal 64 (kill command)"),
        ] {
            let result = result_for("main", parse_signal(text).unwrap());
            let ended = outcome("main", &result).unwrap();
            assert_eq!(
                (i32::from(ended.exit_code), ended.message.as_str()),
                (code, message)
            );
            assert!(outcome("wait", &result).is_ok_and(|o| o.exit_code != 0));
        }
    }
}
