//! The waiter's decisions, free of IO so that they can be tested exhaustively: what to do with
//! a delivered result, a new annotations projection, or a signal.

use alloc::{
    format,
    string::{String, ToString},
};

use contract::{
    RESULT, downward,
    result::{DelegateResult, Outcome},
};

/// Something that happened to the waiter.
#[derive(Clone, Debug)]
pub enum Event {
    /// A result handed over by `deliver`.
    Delivered(String),
    /// The current content of the annotations projection.
    Annotations(String),
    Terminate,
    Interrupt,
}

/// What the waiter does about an [`Event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// End the container like the delegate container ended.
    Finish(Outcome),
    /// End because of a signal, with the conventional code.
    Stop { exit_code: u8, signal: &'static str },
    /// Tell the deliverer why its result is refused; keep waiting.
    Refuse(String),
    /// Nothing to act on yet (no result in the annotations); keep waiting.
    KeepWaiting,
    /// The annotations hold a result that cannot be used; log it and keep waiting.
    Unusable(String),
}

/// Decides for the container named `container`.
pub fn decide(container: &str, event: &Event) -> Decision {
    match event {
        Event::Terminate => Decision::Stop {
            exit_code: 143,
            signal: "SIGTERM",
        },
        Event::Interrupt => Decision::Stop {
            exit_code: 130,
            signal: "SIGINT",
        },
        Event::Delivered(text) => match outcome(container, text) {
            Ok(outcome) => Decision::Finish(outcome),
            Err(why) => Decision::Refuse(why),
        },
        Event::Annotations(text) => match downward::annotation(text, RESULT) {
            None => Decision::KeepWaiting,
            Some(Err(e)) => Decision::Unusable(format!("cannot read {RESULT}: {e}")),
            Some(Ok(value)) => match outcome(container, &value) {
                Ok(outcome) => Decision::Finish(outcome),
                Err(why) => Decision::Unusable(format!("{RESULT}: {why}")),
            },
        },
    }
}

/// The outcome a result gives `container`, or why it gives none.
pub fn outcome(container: &str, text: &str) -> Result<Outcome, String> {
    DelegateResult::decode(text)
        .and_then(|result| result.outcome_for(container))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic;

    const MAIN_3: &str =
        r#"{"v":1,"phase":"Failed","containers":{"main":{"exitCode":3,"message":"boom"}}}"#;

    #[test]
    fn delivered_results_finish_or_are_refused() {
        let Decision::Finish(outcome) = decide("main", &Event::Delivered(MAIN_3.into())) else {
            panic!()
        };
        assert_eq!(outcome.exit_code, 3);
        assert!(matches!(
            decide("main", &Event::Delivered("{".into())),
            Decision::Refuse(_)
        ));
        let Decision::Refuse(why) = decide(
            "other",
            &Event::Delivered(r#"{"v":1,"phase":"Succeeded"}"#.into()),
        ) else {
            panic!()
        };
        assert!(why.contains("\"other\""), "{why}");
    }

    #[test]
    fn annotations_without_a_result_keep_waiting() {
        assert_eq!(
            decide("main", &Event::Annotations("a=\"b\"\n".into())),
            Decision::KeepWaiting
        );
        assert_eq!(
            decide("main", &Event::Annotations(String::new())),
            Decision::KeepWaiting
        );
    }

    #[test]
    fn annotations_with_a_result_finish() {
        let quoted = format!("{RESULT}={MAIN_3:?}\n");
        let Decision::Finish(outcome) = decide("main", &Event::Annotations(quoted)) else {
            panic!()
        };
        assert_eq!((outcome.exit_code, outcome.message.as_str()), (3, "boom"));
    }

    #[test]
    fn signals_stop_with_conventional_codes() {
        assert!(matches!(
            decide("main", &Event::Terminate),
            Decision::Stop { exit_code: 143, .. }
        ));
        assert!(matches!(
            decide("main", &Event::Interrupt),
            Decision::Stop { exit_code: 130, .. }
        ));
    }
}
