//! Argo's own examples (`examples/*.yaml` of the Argo module `make tools` builds), each run twice
//! on the test bed's real nodes with Argo's real executor: as Argo runs it in cluster1, and
//! with every step elected (`spec.podMetadata`) and sent to cluster2. What Argo records of each
//! node (phase, message, exit code, result, output parameters) must be the same, or be a known
//! limit this file names with its reason. The table is written to
//! `target/argo-examples/summary-<version>.md`. `make test` runs the whole list on 3.7 and the
//! examples that touch what 4.0 changed on 4.0 ([`ON_4_0_IN_MAKE_TEST`]);
//! `make argo-examples` (`ARGO_EXAMPLES_FULL=1`) runs the whole list on both, and
//! `ARGO_EXAMPLES=retry-backoff.yaml,…` only those. Both releases the test bed builds run them
//! (3.7.18 and 4.0.5, each with its own examples), one after the other.
//!
//! What changes in an example before it runs (nothing can be pulled here): every image becomes
//! the nodes' `busybox:1.35` (the examples' alpine, debian and busybox images run `sh`, `echo`
//! and `sleep`, which busybox has), `cowsay` becomes `echo`, Python programs and Argo's
//! `argosay` become `sh` programs that end the same way (a random exit code becomes a fixed
//! sequence: [`PYTHON_AS_SH`]), and the workflow gets the real nodes' selector and toleration.
//! Where the test stops or terminates `timeouts-workflow.yaml` it also drops the example's 30 s
//! deadline.
//!
//! Artifacts go to the test bed's artifact store (an S3-compatible server, `e2e/tools/
//! artifact-store`), the controllers' default repository; delegate-sync copies its Secret to
//! the delegates' namespace (`--copy-references`).

mod pieces;

use std::{collections::BTreeSet, fmt::Write as _, time::Duration};

use e2e::{
    TestNamespace,
    argo::{self, Release, StepOutcome, WorkflowStatus},
    nodes,
};
use futures::StreamExt as _;
use kube::Client;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(240);
const LABEL: &str = "argo-examples";
/// Examples run at once (each as two workflows): one real node per cluster runs them, with
/// 940m of CPU for steps that request 100m each (Argo's `wait`).
const AT_ONCE: usize = 2;

/// What the test does to a running example.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Nothing: it runs to its end.
    Wait,
    /// `argo resume` once it is suspended.
    Resume,
    /// `argo stop` once its pods run.
    Stop,
    /// `argo terminate` once its pods run.
    Terminate,
}

struct Example {
    file: &'static str,
    act: Act,
    /// What it shows.
    about: &'static str,
}

const EXAMPLES: &[Example] = &[
    Example {
        file: "hello-world.yaml",
        act: Act::Wait,
        about: "one container",
    },
    Example {
        file: "steps.yaml",
        act: Act::Wait,
        about: "sequential and parallel steps",
    },
    Example {
        file: "dag-diamond.yaml",
        act: Act::Wait,
        about: "a DAG",
    },
    Example {
        file: "output-parameter.yaml",
        act: Act::Wait,
        about: "an output parameter from a file",
    },
    Example {
        file: "exit-code-output-variable.yaml",
        act: Act::Wait,
        about: "a step's exit code as the next one's input",
    },
    Example {
        file: "exit-handlers.yaml",
        act: Act::Wait,
        about: "a failing step and exit handlers",
    },
    Example {
        file: "conditionals.yaml",
        act: Act::Wait,
        about: "`when` conditions",
    },
    Example {
        file: "loops.yaml",
        act: Act::Wait,
        about: "`withItems`",
    },
    Example {
        file: "loops-sequence.yaml",
        act: Act::Wait,
        about: "`withSequence`",
    },
    Example {
        file: "parameter-aggregation.yaml",
        act: Act::Wait,
        about: "`withParam` over the outputs of a loop",
    },
    Example {
        file: "dag-disable-failFast.yaml",
        act: Act::Wait,
        about: "a DAG that goes on past a failure; a step retried 3 times",
    },
    Example {
        file: "timeouts-workflow.yaml",
        act: Act::Wait,
        about: "`activeDeadlineSeconds` on the workflow",
    },
    Example {
        file: "suspend-template.yaml",
        act: Act::Resume,
        about: "suspend, then `argo resume`",
    },
    Example {
        file: "timeouts-workflow.yaml",
        act: Act::Stop,
        about: "`argo stop` while steps run",
    },
    Example {
        file: "timeouts-workflow.yaml",
        act: Act::Terminate,
        about: "`argo terminate` while steps run",
    },
    Example {
        file: "retry-backoff.yaml",
        act: Act::Wait,
        about: "`retryStrategy` with a backoff",
    },
    Example {
        file: "retry-with-steps.yaml",
        act: Act::Wait,
        about: "retried steps, `{{retries}}`",
    },
    Example {
        file: "retry-on-error.yaml",
        act: Act::Wait,
        about: "`retryPolicy: Always`",
    },
    Example {
        file: "retry-conditional.yaml",
        act: Act::Wait,
        about: "a retry `expression` on `lastRetry`",
    },
    Example {
        file: "artifact-passing.yaml",
        act: Act::Wait,
        about: "an output artifact as the next step's input (S3)",
    },
    Example {
        file: "artifact-passing-subpath.yaml",
        act: Act::Wait,
        about: "a directory artifact, unarchived, and a `subPath` of it",
    },
    Example {
        file: "artifact-disable-archive.yaml",
        act: Act::Wait,
        about: "artifacts with `archive: none` and tar",
    },
    Example {
        file: "key-only-artifact.yaml",
        act: Act::Wait,
        about: "an artifact by key in the default repository",
    },
    Example {
        file: "input-artifact-raw.yaml",
        act: Act::Wait,
        about: "a raw input artifact",
    },
    Example {
        file: "exit-handler-with-param.yaml",
        act: Act::Wait,
        about: "an exit hook given a step's output parameter",
    },
    Example {
        file: "exit-handler-with-artifacts.yaml",
        act: Act::Wait,
        about: "an exit hook given a step's artifact",
    },
];

/// The examples' Python programs (no Python image is on the nodes) as `sh` programs that end
/// the same way, except that a random exit code becomes a fixed sequence of the same codes:
/// fail twice, then end as the example's good outcome (a random choice cannot be seeded from
/// outside, and two runs must count the same retries).
const PYTHON_AS_SH: &[(&str, &str)] = &[
    // retry-backoff, retry-with-steps: exit 0 or 1.
    (
        "random.choice([0, 1, 1])",
        "echo retries: {{retries}}; [ {{retries}} -ge 2 ]",
    ),
    // retry-on-error: exit 0 to 4.
    (
        "random.choice(range(0, 5))",
        "[ {{retries}} -ge 2 ] || exit 3",
    ),
    // retry-conditional: exit 1 or 2, retried while 2.
    (
        "random.choice([1, 2])",
        "if [ {{retries}} -ge 2 ]; then exit 1; fi; exit 2",
    ),
    // retry-conditional's safe-to-retry.
    ("print(\"true\")", "echo true"),
    // exit-handler-with-param's exit hook.
    (
        "print(\"{{inputs.parameters.message}}\")",
        "echo \"{{inputs.parameters.message}}\"",
    ),
    // exit-handler-with-artifacts: a file in the working directory.
    ("f.write(\"Welcome\")", "printf Welcome > result.txt"),
];

/// The example as it runs here: images the nodes have, on real nodes, elected when `elect`.
fn localize(mut workflow: Value, elect: bool, act: Act) -> Value {
    let spec = &mut workflow["spec"];
    if matches!(act, Act::Stop | Act::Terminate) {
        // Stopped by the test, not by its deadline.
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("activeDeadlineSeconds");
        }
    }
    for template in spec["templates"].as_array_mut().into_iter().flatten() {
        if let Some(container) = template.get_mut("container") {
            localize_container(container, false);
        }
        if let Some(script) = template.get_mut("script") {
            localize_container(script, true);
        }
    }
    argo::on_real_nodes(&mut workflow);
    if elect {
        argo::elect_every_step(&mut workflow, "cluster2");
    }
    workflow
}

fn localize_container(container: &mut Value, script: bool) {
    let image = container["image"].as_str().unwrap_or_default().to_string();
    let command = container["command"][0].as_str().unwrap_or_default();
    if command == "python" {
        python_as_sh(container, script);
    } else if image.starts_with("argoproj/argosay") && container.get("command").is_none() {
        argosay_as_sh(container);
    }
    container["image"] = json!(nodes::BUSYBOX_IMAGE);
    for key in ["command", "args"] {
        for word in container
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(text) = word.as_str() {
                *word = json!(text.replace("cowsay", "echo"));
            }
        }
    }
}

/// A Python container (`python -c PROGRAM`) or script as the `sh` one [`PYTHON_AS_SH`] gives.
fn python_as_sh(container: &mut Value, script: bool) {
    let program = if script {
        container["source"].as_str()
    } else {
        container["args"][0].as_str()
    }
    .unwrap_or_default()
    .to_string();
    let Some((_, sh)) = PYTHON_AS_SH
        .iter()
        .find(|(python, _)| program.contains(python))
    else {
        panic!("no sh program stands for this Python program of an example: {program:?}");
    };
    if script {
        container["command"] = json!(["sh"]);
        container["source"] = json!(sh);
    } else {
        container["command"] = json!(["sh", "-c"]);
        container["args"] = json!([sh]);
    }
}

/// Argo's `argosay` image as `sh`: `echo MESSAGE FILE` writes the message to the file, `cat
/// FILE` prints it.
fn argosay_as_sh(container: &mut Value) {
    let args: Vec<&str> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let sh = match args.as_slice() {
        ["echo", message, file] => {
            format!("mkdir -p \"$(dirname {file})\" && echo {message} > {file}")
        }
        ["cat", file] => format!("cat {file}"),
        other => panic!("no sh program stands for `argosay {}`", other.join(" ")),
    };
    container["command"] = json!(["sh", "-c"]);
    container["args"] = json!([sh]);
}

fn read_example(release: Release, file: &str) -> Value {
    let path = argo::binaries_of(release).unwrap().examples.join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs one variant of an example to its end, acting on it as `act` says.
async fn run(
    client: &Client,
    ns: &TestNamespace,
    workflow: &Value,
    act: Act,
) -> (String, WorkflowStatus) {
    let name = argo::submit(client, &ns.name, workflow).await.unwrap();
    let ready: fn(&WorkflowStatus) -> bool = match act {
        Act::Wait => |_| true,
        Act::Resume => |s| {
            s.nodes
                .values()
                .any(|n| n.type_ == "Suspend" && n.phase == "Running")
        },
        // Every pod of the `sleep` template runs.
        Act::Stop | Act::Terminate => |s| {
            let sleeping: Vec<_> = s
                .nodes
                .values()
                .filter(|n| n.type_ == "Pod" && n.display_name.starts_with("sleep-one-day"))
                .collect();
            sleeping.len() == 3 && sleeping.iter().all(|n| n.phase == "Running")
        },
    };
    let before = argo::wait_status(client, &ns.name, &name, TIMEOUT, |s| {
        ready(s) || s.finished()
    })
    .await
    .unwrap();
    if !before.finished() {
        match act {
            Act::Wait => {}
            Act::Resume => argo::resume(client, &ns.name, &name).await.unwrap(),
            Act::Stop => argo::stop(client, &ns.name, &name).await.unwrap(),
            Act::Terminate => argo::terminate(client, &ns.name, &name).await.unwrap(),
        }
    }
    let status = argo::wait_finished(client, &ns.name, &name, TIMEOUT)
        .await
        .unwrap();
    (name, status)
}

/// One example's row: what differs between home and proxied, node by node.
struct Row {
    example: String,
    phases: (String, String),
    nodes: usize,
    differences: Vec<String>,
    /// Differences that are known limits ([`stopped_exit_code_race`], [`deadline_race`]).
    known: Vec<String>,
}

/// What must agree when the message and exit code race: phase, result, output parameters.
fn phase_and_outputs(outcome: &StepOutcome) -> StepOutcome {
    StepOutcome {
        exit_code: None,
        message: String::new(),
        ..outcome.clone()
    }
}

/// A step still running at the workflow's `activeDeadlineSeconds`: Argo's controller marks it
/// "Step exceeded its deadline", and the kubelet kills its pod at the same moment (Argo gives
/// step pods the remaining time as their own `activeDeadlineSeconds`), whose message and 143
/// win when the kubelet is first. That races at home too. A proxy runs even while its delegate
/// cannot be scheduled (a step that stays Pending at home), so its kubelet ends it there too.
fn deadline_race(home: &StepOutcome, proxied: &StepOutcome) -> bool {
    const MESSAGES: [&str; 2] = [
        "Step exceeded its deadline",
        "Pod was active on the node longer than the specified deadline",
    ];
    [home, proxied]
        .iter()
        .all(|o| o.phase == "Failed" && MESSAGES.contains(&o.message.as_str()))
        && phase_and_outputs(home) == phase_and_outputs(proxied)
}

/// A step stopped by `argo stop` or `argo terminate`: Argo marks its node Failed "workflow
/// shutdown with strategy: …" at once, unless the pod ended first, and records the pod's exit
/// code only if it ended before. That races at home too (of three pods killed together, some
/// get 143 and some none). A proxy ends 1 to 4 s after Argo's kill command, and when it wins,
/// its message says so: "main: Error (exit code 143): stopped by SIGTERM (kill command)" where
/// a local pod's says "main: Error (exit code 143)". Phase and outputs must agree.
fn stopped_exit_code_race(home: &StepOutcome, proxied: &StepOutcome) -> bool {
    let stopped = |o: &StepOutcome| {
        o.message.starts_with("workflow shutdown with strategy")
            || o.message.ends_with("(kill command)")
    };
    (stopped(home) || stopped(proxied))
        && home.phase == "Failed"
        && phase_and_outputs(home) == phase_and_outputs(proxied)
}

async fn compare(client: &Client, ns: &TestNamespace, release: Release, example: &Example) -> Row {
    let mut source = read_example(release, example.file);
    release.claim(&mut source);
    let (home, proxied) = (
        localize(source.clone(), false, example.act),
        localize(source, true, example.act),
    );
    let (home, proxied) = tokio::join!(
        run(client, ns, &home, example.act),
        run(client, ns, &proxied, example.act),
    );
    let (at_home, through_proxies) = (
        home.1.step_outcomes(&home.0),
        proxied.1.step_outcomes(&proxied.0),
    );
    let (mut differences, mut known) = (Vec::new(), Vec::new());
    for name in at_home
        .keys()
        .chain(through_proxies.keys())
        .collect::<BTreeSet<_>>()
    {
        let (a, b) = (at_home.get(name), through_proxies.get(name));
        if a == b {
            continue;
        }
        let line = format!("{name}: home {} / proxied {}", describe(a), describe(b));
        match (a, b) {
            (Some(a), Some(b)) if stopped_exit_code_race(a, b) || deadline_race(a, b) => {
                known.push(line)
            }
            _ => differences.push(line),
        }
    }
    Row {
        example: format!("{} ({:?}): {}", example.file, example.act, example.about),
        phases: (home.1.phase, proxied.1.phase),
        nodes: at_home.len(),
        differences,
        known,
    }
}

fn describe(outcome: Option<&StepOutcome>) -> String {
    outcome.map_or("(none)".into(), |o| format!("{o:?}"))
}

/// What `make test` runs on Argo 4.0 (the whole list runs on 3.7; `make argo-examples` runs it
/// on both): the examples that touch what 4.0 changed for proxies (outputs under an instance
/// ID, artifacts, retries, suspend and stop).
const ON_4_0_IN_MAKE_TEST: &[&str] = &[
    "output-parameter.yaml",
    "exit-code-output-variable.yaml",
    "dag-disable-failFast.yaml",
    "retry-conditional.yaml",
    "suspend-template.yaml",
    "timeouts-workflow.yaml",
    "artifact-passing.yaml",
    "key-only-artifact.yaml",
    "exit-handler-with-artifacts.yaml",
];

/// The examples named in `$ARGO_EXAMPLES` (file names, comma-separated); else all of them, but
/// on 4.0 only [`ON_4_0_IN_MAKE_TEST`] unless `$ARGO_EXAMPLES_FULL` is set.
fn chosen_examples(release: Release) -> Vec<&'static Example> {
    let chosen = std::env::var("ARGO_EXAMPLES").unwrap_or_default();
    let mut names: Vec<&str> = chosen
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let full = std::env::var_os("ARGO_EXAMPLES_FULL").is_some();
    if names.is_empty() && release == Release::V4_0 && !full {
        names = ON_4_0_IN_MAKE_TEST.to_vec();
    }
    let examples: Vec<&Example> = EXAMPLES
        .iter()
        .filter(|e| names.is_empty() || names.contains(&e.file))
        .collect();
    assert!(
        !examples.is_empty(),
        "ARGO_EXAMPLES={chosen} names no example of the list"
    );
    examples
}

/// One release at a time: both at once would overload the one real node of each cluster.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn on_argo_3_7_the_examples_end_through_proxies_as_they_end_at_home() {
    examples_end_as_at_home(Release::V3_7).await;
}

#[tokio::test]
async fn on_argo_4_0_the_examples_end_through_proxies_as_they_end_at_home() {
    examples_end_as_at_home(Release::V4_0).await;
}

async fn examples_end_as_at_home(release: Release) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((ns, client, _pieces)) =
        pieces::argo_scene(LABEL, LABEL, pieces::Proxies::OnRealNodes, release).await
    else {
        return;
    };
    let started = std::time::Instant::now();
    let rows: Vec<Row> = futures::stream::iter(chosen_examples(release))
        .map(|example| compare(&client, &ns, release, example))
        .buffered(AT_ONCE)
        .collect()
        .await;

    let mut table = String::from(
        "| example | home | proxied | nodes | differences | known limits |\n|---|---|---|---|---|---|\n",
    );
    let cell = |lines: &[String]| {
        if lines.is_empty() {
            "none".to_string()
        } else {
            lines.join("<br>")
        }
    };
    for row in &rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} |",
            row.example,
            row.phases.0,
            row.phases.1,
            row.nodes,
            cell(&row.differences),
            cell(&row.known),
        );
    }
    let _ = writeln!(
        table,
        "\n{} examples in {:.0} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    let dir = e2e::testbed::workspace_target_dir().join("argo-examples");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("summary-{}.md", release.version())),
        &table,
    )
    .unwrap();
    eprintln!("{table}");
    let differing: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.differences.is_empty() || r.phases.0 != r.phases.1)
        .collect();
    assert!(
        differing.is_empty(),
        "examples end differently through proxies:\n{table}"
    );
}

/// Every example of both releases becomes one the nodes can run: only their busybox image, no
/// Python and no `argosay` left (a new example in the list with a program nobody translated
/// fails here, not after minutes on the nodes).
#[test]
fn every_example_runs_on_what_the_nodes_have() {
    for release in [Release::V3_7, Release::V4_0] {
        if argo::binaries_of(release).is_err() {
            eprintln!("skipping {release:?}: its tools are not built");
            continue;
        }
        for example in EXAMPLES {
            for elect in [false, true] {
                let workflow = localize(read_example(release, example.file), elect, example.act);
                for template in workflow["spec"]["templates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    for key in ["container", "script"] {
                        let Some(container) = template.get(key) else {
                            continue;
                        };
                        let what = format!("{} {}", example.file, template["name"]);
                        assert_eq!(container["image"], json!(nodes::BUSYBOX_IMAGE), "{what}");
                        let text = container.to_string();
                        for gone in ["python", "random.", "cowsay"] {
                            assert!(!text.contains(gone), "{what}: {text}");
                        }
                    }
                }
            }
        }
    }
}
