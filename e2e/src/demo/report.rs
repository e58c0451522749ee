//! What the demo prints and draws from the runs of a scenario: the blog-like table, the text
//! timeline, the SVG timeline and the waves. Pure: no cluster, no clock.

use std::fmt::Write as _;

/// One pod of a scenario, as it ran. Offsets are whole seconds from the scenario's start
/// (Kubernetes status times have a resolution of one second).
#[derive(Clone, Debug)]
pub struct Run {
    /// The step, e.g. `sleep(3)` or `B`.
    pub step: String,
    /// The pod the Job created in the source cluster (a proxy when elected).
    pub pod: String,
    /// Where the work ran: the proxy's target cluster, or the pod's own cluster.
    pub cluster: String,
    pub node: String,
    /// When the pod (or proxy) was created.
    pub created: i64,
    /// When the pod that did the work (the delegate when elected) started and ended.
    pub start: i64,
    pub end: i64,
}

impl Run {
    pub fn duration(&self) -> i64 {
        self.end - self.start
    }
}

/// Runs that started together: a new wave begins when a pod starts at least this long after
/// the first start of the current wave (half the 10 s the demo's pods run).
const WAVE_GAP_SECONDS: i64 = 5;

/// The waves of a scenario: (first start offset, pods started in it).
pub fn waves(runs: &[Run]) -> Vec<(i64, usize)> {
    let mut starts: Vec<i64> = runs.iter().map(|r| r.start).collect();
    starts.sort_unstable();
    let mut waves: Vec<(i64, usize)> = Vec::new();
    for start in starts {
        match waves.last_mut() {
            Some((first, count)) if start - *first < WAVE_GAP_SECONDS => *count += 1,
            _ => waves.push((start, 1)),
        }
    }
    waves
}

/// `4 (3 at +0s, 3 at +11s, 3 at +22s, 1 at +33s)`.
pub fn describe_waves(runs: &[Run]) -> String {
    let waves = waves(runs);
    let parts: Vec<String> = waves
        .iter()
        .map(|(start, count)| format!("{count} at +{start}s"))
        .collect();
    format!("{} ({})", waves.len(), parts.join(", "))
}

/// The blog-like table: step, pod, cluster, node, start offset, duration.
pub fn table(runs: &[Run]) -> String {
    let header = ["STEP", "POD", "RAN IN", "NODE", "START", "DURATION"];
    let rows: Vec<[String; 6]> = runs
        .iter()
        .map(|r| {
            [
                r.step.clone(),
                r.pod.clone(),
                r.cluster.clone(),
                r.node.clone(),
                format!("+{}s", r.start),
                format!("{}s", r.duration()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let mut text = String::from("  ");
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            // START and DURATION are numbers: right-aligned.
            if i >= 4 {
                let _ = write!(text, "{cell:>width$}  ");
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, &header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    out
}

/// One row per pod, one column per second: `█` running, `·` created but waiting to start;
/// the last row counts the pods running in each second, which shows the waves.
pub fn text_timeline(runs: &[Run]) -> String {
    let horizon = runs.iter().map(|r| r.end).max().unwrap_or(0).max(1);
    let width = usize::try_from(horizon).unwrap_or(0);
    let labels: Vec<String> = runs
        .iter()
        .map(|r| format!("{} {}", r.step, r.cluster))
        .collect();
    let label_width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .max("running".len());
    let mut out = String::new();

    // Axis: a tick label every 10 s.
    let mut axis = vec![' '; width + 4];
    for tick in (0..=width).step_by(10) {
        for (i, c) in format!("{tick}s").chars().enumerate() {
            if let Some(slot) = axis.get_mut(tick + i) {
                *slot = c;
            }
        }
    }
    let axis: String = axis.into_iter().collect();
    let _ = writeln!(out, "  {:label_width$} |{}", "", axis.trim_end());

    for (run, label) in runs.iter().zip(&labels) {
        let bar: String = (0..horizon)
            .map(|s| {
                if s >= run.start && s < run.end {
                    '█'
                } else if s >= run.created && s < run.start {
                    '·'
                } else {
                    ' '
                }
            })
            .collect();
        let _ = writeln!(out, "  {label:label_width$} |{}", bar.trim_end());
    }
    let counts: String = (0..horizon)
        .map(|s| {
            let n = runs.iter().filter(|r| s >= r.start && s < r.end).count();
            match n {
                0 => ' ',
                1..=9 => char::from(b'0' + n as u8),
                _ => '+',
            }
        })
        .collect();
    let _ = writeln!(out, "  {:label_width$} |{}", "running", counts.trim_end());
    out
}

fn colour(cluster: &str) -> &'static str {
    match cluster {
        "cluster1" => "#4e79a7",
        "cluster2" => "#f28e2b",
        "cluster3" => "#59a14f",
        _ => "#9c755f",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The timeline as an SVG picture: a bar per pod, coloured by the cluster it ran in, with a
/// grey lead while it waited to start; a grid line every 5 s and a dashed line when the
/// scenario was complete (`total`, in seconds).
pub fn svg(title: &str, runs: &[Run], total: f64) -> String {
    const LABEL: i64 = 220;
    const PER_SECOND: i64 = 16;
    const ROW: i64 = 22;
    const TOP: i64 = 48;
    // Whole seconds of a scenario that lasts minutes at most.
    let total_end = total.ceil().clamp(0.0, 3600.0) as i64;
    let horizon = (runs.iter().map(|r| r.end).max().unwrap_or(0).max(total_end) + 1).max(10);
    let width = LABEL + horizon * PER_SECOND + 20;
    let rows = i64::try_from(runs.len()).unwrap_or(0);
    let height = TOP + rows * ROW + 60;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{width}" height="{height}" fill="white"/><text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let bottom = TOP + rows * ROW;
    for s in (0..=horizon).step_by(5) {
        let x = LABEL + s * PER_SECOND;
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{bottom}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle" fill="#555">{s}s</text>"##,
            TOP - 6,
            bottom + 16
        );
    }
    for (i, run) in runs.iter().enumerate() {
        let y = TOP + i64::try_from(i).unwrap_or(0) * ROW;
        let _ = writeln!(
            out,
            r#"<text x="10" y="{}">{}</text><text x="110" y="{}" fill="{}">{}</text>"#,
            y + 15,
            escape(&run.step),
            y + 15,
            colour(&run.cluster),
            escape(&run.cluster),
        );
        if run.start > run.created {
            let _ = writeln!(
                out,
                r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#e3e3e3"/>"##,
                LABEL + run.created * PER_SECOND,
                y + 8,
                (run.start - run.created) * PER_SECOND,
                ROW - 16
            );
        }
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="{}" height="{}" rx="3" fill="{}"><title>{} ({}): +{}s for {}s on {}</title></rect>"#,
            LABEL + run.start * PER_SECOND,
            y + 3,
            (run.duration() * PER_SECOND).max(2),
            ROW - 6,
            colour(&run.cluster),
            escape(&run.pod),
            escape(&run.step),
            run.start,
            run.duration(),
            escape(&run.node),
        );
    }
    let x = LABEL as f64 + total * PER_SECOND as f64;
    let _ = writeln!(
        out,
        r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{bottom}" stroke="#c0392b" stroke-dasharray="4 3"/><text x="{x:.1}" y="{}" text-anchor="end" fill="#c0392b">complete {total:.1} s</text>"##,
        TOP - 18,
        TOP - 22
    );
    let mut clusters: Vec<&str> = runs.iter().map(|r| r.cluster.as_str()).collect();
    clusters.sort_unstable();
    clusters.dedup();
    let mut x = 10;
    let y = bottom + 36;
    for cluster in clusters {
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="14" height="10" fill="{}"/><text x="{}" y="{y}">ran in {}</text>"#,
            y - 9,
            colour(cluster),
            x + 20,
            escape(cluster)
        );
        x += 130;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{x}" y="{}" width="14" height="10" fill="#e3e3e3"/><text x="{}" y="{y}">waiting to start</text>"##,
        y - 9,
        x + 20
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(step: &str, cluster: &str, created: i64, start: i64) -> Run {
        Run {
            step: step.into(),
            pod: format!("pod-{step}"),
            cluster: cluster.into(),
            node: format!("{cluster}-kwok1"),
            created,
            start,
            end: start + 10,
        }
    }

    #[test]
    fn pods_starting_within_a_few_seconds_form_one_wave() {
        let runs = [
            run("a", "cluster1", 0, 1),
            run("b", "cluster2", 0, 2),
            run("c", "cluster1", 0, 12),
            run("d", "cluster1", 0, 13),
            run("e", "cluster2", 0, 23),
        ];
        assert_eq!(waves(&runs), vec![(1, 2), (12, 2), (23, 1)]);
        assert_eq!(describe_waves(&runs), "3 (2 at +1s, 2 at +12s, 1 at +23s)");
    }

    #[test]
    fn the_timeline_draws_waiting_and_running_seconds_and_counts_them() {
        let runs = [run("A", "cluster1", 0, 0), run("C", "cluster2", 0, 3)];
        let text = text_timeline(&runs);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("|0s        10s"), "{text}");
        assert!(
            lines[1].ends_with(&format!("|{}", "█".repeat(10))),
            "{text}"
        );
        assert!(
            lines[2].ends_with(&format!("|···{}", "█".repeat(10))),
            "{text}"
        );
        assert!(lines[3].ends_with("|1112222222111"), "{text}");
    }

    #[test]
    fn the_table_has_a_row_per_run_with_offsets_and_durations() {
        let text = table(&[run("sleep(0)", "cluster2", 0, 1)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].trim_start().starts_with("STEP"));
        assert!(lines[1].contains("pod-sleep(0)") && lines[1].contains("cluster2"));
        assert!(lines[1].trim_end().ends_with("+1s       10s"), "{text}");
    }

    #[test]
    fn the_svg_is_one_document_with_a_bar_per_run() {
        let svg = svg(
            "A <&> B",
            &[run("A", "cluster1", 0, 2), run("B", "cluster2", 0, 0)],
            12.4,
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("A &lt;&amp;&gt; B"));
        assert_eq!(svg.matches("rx=\"3\"").count(), 2);
        assert!(svg.contains("complete 12.4 s"));
    }
}
