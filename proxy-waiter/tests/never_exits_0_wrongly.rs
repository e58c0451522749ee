//! Property: whatever sequence of deliveries, annotation updates and signals arrives, the
//! waiter exits 0 only if the input that ended it says its own container exited 0. Random
//! sequences from a fixed-seed generator (so failures reproduce), judged by an oracle that
//! reads the JSON independently of the contract's decoder.

use proxy_waiter::decide::{Decision, Event, decide};

const CONTAINER: &str = "main";
const KEY: &str = "multicluster.admiralty.io/result";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn random_result(rng: &mut Rng) -> String {
    let version = rng.pick(&["1", "1", "1", "2", "0", "\"1\""]);
    let phase = rng.pick(&["Succeeded", "Failed", "Running", ""]);
    let mut containers = Vec::new();
    for name in ["main", "wait", "init", "Main"] {
        if rng.below(2) == 0 {
            let code = rng.pick(&[
                "0", "0", "1", "3", "255", "256", "-1", "\"0\"", "null", "0.0",
            ]);
            containers.push(format!(r#""{name}":{{"exitCode":{code}}}"#));
        }
    }
    let mut text = format!(
        r#"{{"v":{version},"phase":"{phase}","containers":{{{}}}}}"#,
        containers.join(",")
    );
    match rng.below(6) {
        0 => text.truncate(rng.below(text.len() as u64) as usize),
        1 => {
            let at = rng.below(text.len() as u64) as usize;
            let mut bytes = text.into_bytes();
            bytes[at] = b"{}\":,0123456789xv"[rng.below(17) as usize];
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        _ => {}
    }
    text
}

fn random_event(rng: &mut Rng) -> Event {
    match rng.below(10) {
        0 => Event::Terminate,
        1 => Event::Interrupt,
        2..=5 => Event::Delivered(random_result(rng)),
        6 => Event::Annotations(format!("other=\"x\"\n{KEY}={:?}\n", random_result(rng))),
        7 => Event::Annotations(format!("{KEY}=\"{}\"\n", random_result(rng))), // not re-quoted: often malformed
        8 => Event::Annotations(String::new()),
        _ => Event::Delivered(String::from_utf8_lossy(&rng.next().to_le_bytes()).into_owned()),
    }
}

/// True only if `text` is a version-1 result whose `main` container has exit code exactly 0.
fn says_main_exited_0(text: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    value["v"] == serde_json::json!(1)
        && value["containers"][CONTAINER]["exitCode"] == serde_json::json!(0)
}

fn result_text(event: &Event) -> Option<String> {
    match event {
        Event::Delivered(text) => Some(text.clone()),
        Event::Annotations(text) => contract::downward::annotation(text, KEY)?.ok(),
        _ => None,
    }
}

#[test]
fn waiter_exits_0_only_when_its_containers_result_says_0() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut zero_exits, mut other_exits) = (0, 0);
    for _ in 0..20_000 {
        let length = 1 + rng.below(8);
        for _ in 0..length {
            let event = random_event(&mut rng);
            match decide(CONTAINER, &event) {
                Decision::Finish(outcome) => {
                    if outcome.exit_code == 0 {
                        let text = result_text(&event).unwrap_or_default();
                        assert!(says_main_exited_0(&text), "exit 0 from {event:?}");
                        zero_exits += 1;
                    } else {
                        other_exits += 1;
                    }
                    break;
                }
                Decision::Stop { exit_code, .. } => {
                    assert_ne!(exit_code, 0);
                    other_exits += 1;
                    break;
                }
                Decision::Refuse(_) | Decision::KeepWaiting | Decision::Unusable(_) => {}
            }
        }
    }
    // The generator must actually exercise both outcomes, or the property proves nothing.
    assert!(
        zero_exits > 100 && other_exits > 100,
        "{zero_exits} zero exits, {other_exits} others"
    );
}
