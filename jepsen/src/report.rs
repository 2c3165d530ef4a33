//! `report.html`: one self-contained page per run (no scripts, no external files). It shows the
//! verdict and summary, a timeline of the faults, and for workloads with timed operations the
//! completions per second (ok / failed / unknown) and the latency per second (median and p99), with
//! the fault windows shaded, so a glance shows what each fault did to the clients. A timeline of
//! operations per worker follows: on a linearizability violation, the operations of the smallest
//! window that cannot be linearized, the culprit in red; otherwise a few seconds around the first
//! fault. Hovering an operation shows what it was. The results follow as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::{Event, Kind};

/// A fault window: from the fault to its heal (or the end of the run), in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: f64,
    pub end: f64,
    pub label: String,
}

/// One timed operation: which worker ran it, invocation and completion in seconds since the
/// start, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    pub process: usize,
    pub invoke: f64,
    pub complete: f64,
    pub kind: Kind,
}

/// An operation on the per-worker timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Drawn {
    pub op: Timed,
    /// What it was, shown on hover.
    pub label: String,
    /// Drawn in red: the operation that could not be linearized.
    pub culprit: bool,
}

/// The per-worker timeline: a title and its operations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    pub title: String,
    pub ops: Vec<Drawn>,
}

/// Operations drawn at most on a default timeline.
const TIMELINE_MAX: usize = 1500;

/// The default timeline: the operations from half a second before the first fault (or the start)
/// until [`TIMELINE_MAX`] of them are drawn or 5 s have passed.
pub fn around_first_fault(ops: &[Timed], faults: &[Window]) -> Timeline {
    let from = faults.first().map_or(0.0, |w| (w.start - 0.5).max(0.0));
    let mut chosen: Vec<Drawn> = ops
        .iter()
        .filter(|o| o.complete >= from && o.invoke <= from + 5.0)
        .take(TIMELINE_MAX)
        .map(|o| Drawn {
            op: *o,
            label: format!("worker {}: {:?}", o.process, o.kind),
            culprit: false,
        })
        .collect();
    chosen.sort_by(|a, b| a.op.invoke.total_cmp(&b.op.invoke));
    Timeline {
        title: format!("Operations per worker from {from:.1} s"),
        ops: chosen,
    }
}

/// For an invalid register history, the operations of the first key's violation window: the
/// invocations concurrent with the one that could not be placed, which is marked as the culprit.
pub fn register_violation(
    events: &[Event],
    report: &crate::linearizable::Report,
) -> Option<Timeline> {
    let (key, op, window) = report.keys.iter().find_map(|(key, v)| match v {
        crate::linearizable::Verdict::Invalid { op, window } => Some((*key, *op, window)),
        _ => None,
    })?;
    let mut drawn = Vec::new();
    for &index in window
        .iter()
        .filter(|&&i| i != op)
        .chain(std::iter::once(&op))
    {
        let Some(invoke) = events.get(index) else {
            continue;
        };
        let completion = events[index + 1..]
            .iter()
            .find(|e| e.process == invoke.process && e.kind != Kind::Invoke);
        let end = completion.map_or(f64::INFINITY, |e| e.time_ns as f64 / 1e9);
        let outcome = completion.map_or(Kind::Info, |e| e.kind);
        let shown = completion
            .and_then(|e| e.op.as_ref())
            .or(invoke.op.as_ref());
        drawn.push(Drawn {
            op: Timed {
                process: invoke.process.unwrap_or(0),
                invoke: invoke.time_ns as f64 / 1e9,
                complete: end,
                kind: outcome,
            },
            label: format!(
                "worker {} key {key}: {} → {outcome:?}",
                invoke.process.unwrap_or(0),
                shown.map_or_else(String::new, |o| serde_json::to_string(o)
                    .unwrap_or_default())
            ),
            culprit: index == op,
        });
    }
    // An operation that never completed runs to the end of the window.
    let last = drawn
        .iter()
        .map(|d| d.op.complete)
        .filter(|t| t.is_finite())
        .chain(drawn.iter().map(|d| d.op.invoke))
        .fold(0.0_f64, f64::max);
    for d in &mut drawn {
        if !d.op.complete.is_finite() {
            d.op.complete = last + 0.001;
        }
    }
    Some(Timeline {
        title: format!(
            "Key {key}: the smallest window that cannot be linearized (red: cannot be placed)"
        ),
        ops: drawn,
    })
}

/// Everything the page shows.
pub struct Page<'a> {
    pub title: String,
    pub valid: bool,
    pub summary: &'a str,
    pub faults: Vec<Window>,
    pub ops: Vec<Timed>,
    /// The per-worker timeline (none drawn when empty).
    pub timeline: Timeline,
    pub results_json: &'a str,
}

/// Fault windows from nemesis events ("kill n2" … "heal n2").
pub fn windows(events: &[Event]) -> Vec<Window> {
    let mut open: BTreeMap<String, (f64, String)> = BTreeMap::new();
    let mut out = Vec::new();
    let mut last = 0.0;
    for e in events {
        let Some(what) = &e.nemesis else { continue };
        let at = e.time_ns as f64 / 1e9;
        last = at;
        let (action, node) = what.split_once(' ').unwrap_or((what, ""));
        if action == "heal" {
            if let Some((start, label)) = open.remove(node) {
                out.push(Window {
                    start,
                    end: at,
                    label,
                });
            }
        } else {
            open.insert(node.to_string(), (at, what.clone()));
        }
    }
    for (_, (start, label)) in open {
        out.push(Window {
            start,
            end: last.max(start),
            label,
        });
    }
    out.sort_by(|a, b| a.start.total_cmp(&b.start));
    out
}

/// Operations of a register history: each invocation paired with its process's next completion.
pub fn register_ops(events: &[Event]) -> Vec<Timed> {
    let mut pending: BTreeMap<usize, f64> = BTreeMap::new();
    let mut out = Vec::new();
    for e in events {
        let Some(process) = e.process else { continue };
        let at = e.time_ns as f64 / 1e9;
        if e.kind == Kind::Invoke {
            pending.insert(process, at);
        } else if let Some(invoke) = pending.remove(&process) {
            out.push(Timed {
                process,
                invoke,
                complete: at,
                kind: e.kind,
            });
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 60.0;

/// One chart: one value per second for each line over `end` seconds, fault windows shaded.
fn chart(
    out: &mut String,
    title: &str,
    end: f64,
    faults: &[Window],
    lines: &[(&str, &str, Vec<f64>)],
) {
    let max = lines
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let x = |t: f64| LEFT + t / end.max(1e-9) * WIDTH;
    let y = |v: f64| 10.0 + HEIGHT - v / max * HEIGHT;
    let _ = writeln!(out, "<h2>{}</h2>", escape(title));
    let _ = writeln!(
        out,
        "<svg width=\"{}\" height=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
        LEFT + WIDTH + 10.0,
        HEIGHT + 40.0
    );
    for w in faults {
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"10\" width=\"{:.1}\" height=\"{HEIGHT}\" fill=\"#f4cccc\"><title>{}</title></rect>",
            x(w.start),
            (x(w.end) - x(w.start)).max(1.0),
            escape(&w.label)
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#888\"/>",
        10.0 + HEIGHT,
        LEFT + WIDTH
    );
    let _ = writeln!(
        out,
        "<text x=\"2\" y=\"20\" font-size=\"11\">{}</text><text x=\"2\" y=\"{}\" font-size=\"11\">0</text>",
        fmt_value(max),
        10.0 + HEIGHT
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\">{:.0} s</text>",
        LEFT + WIDTH - 30.0,
        HEIGHT + 30.0,
        end
    );
    for (i, (name, color, values)) in lines.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(s, v)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y(*v)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{color}\">{}</text>",
            LEFT + 10.0 + 110.0 * i as f64,
            HEIGHT + 30.0,
            escape(name)
        );
    }
    let _ = writeln!(out, "</svg>");
}

/// One lane per worker; each operation a bar from invocation to completion, coloured by outcome
/// (ok green, failed orange, unknown grey, culprit red), with its label on hover.
fn draw_timeline(out: &mut String, timeline: &Timeline, faults: &[Window]) {
    const LANE: f64 = 16.0;
    let from = timeline
        .ops
        .iter()
        .map(|d| d.op.invoke)
        .fold(f64::INFINITY, f64::min);
    let to = timeline
        .ops
        .iter()
        .map(|d| d.op.complete)
        .fold(from, f64::max);
    let span = (to - from).max(1e-6);
    let mut lanes: Vec<usize> = timeline.ops.iter().map(|d| d.op.process).collect();
    lanes.sort_unstable();
    lanes.dedup();
    let x = |t: f64| LEFT + (t - from) / span * WIDTH;
    let height = LANE * lanes.len() as f64;
    let _ = writeln!(out, "<h2>{}</h2>", escape(&timeline.title));
    let _ = writeln!(
        out,
        "<svg width=\"{}\" height=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
        LEFT + WIDTH + 10.0,
        height + 30.0
    );
    for w in faults.iter().filter(|w| w.end >= from && w.start <= to) {
        let (a, b) = (x(w.start.max(from)), x(w.end.min(to)));
        let _ = writeln!(
            out,
            "<rect x=\"{a:.1}\" y=\"0\" width=\"{:.1}\" height=\"{height}\" fill=\"#f4cccc\"><title>{}</title></rect>",
            (b - a).max(1.0),
            escape(&w.label)
        );
    }
    for (i, lane) in lanes.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"2\" y=\"{:.1}\" font-size=\"11\">worker {lane}</text>",
            LANE * i as f64 + 12.0
        );
    }
    for d in &timeline.ops {
        let lane = lanes.partition_point(|l| *l < d.op.process);
        let color = match (d.culprit, d.op.kind) {
            (true, _) => "#c22",
            (false, Kind::Ok) => "#2a7",
            (false, Kind::Fail) => "#e90",
            (false, _) => "#999",
        };
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{}</title></rect>",
            x(d.op.invoke),
            LANE * lane as f64 + 2.0,
            (x(d.op.complete) - x(d.op.invoke)).max(1.0),
            LANE - 4.0,
            escape(&d.label)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{0}\" font-size=\"11\">{from:.3} s</text><text x=\"{1}\" y=\"{0}\" font-size=\"11\">{to:.3} s</text>\n</svg>",
        height + 22.0,
        LEFT + WIDTH - 50.0
    );
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Renders the page.
pub fn render(page: &Page<'_>) -> String {
    let end = page
        .ops
        .iter()
        .map(|o| o.complete)
        .chain(page.faults.iter().map(|w| w.end))
        .fold(1.0_f64, f64::max);
    let seconds = end.ceil() as usize;
    // The charts' time axis: whole seconds, so every per-second point falls inside it.
    let span = seconds as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}.valid{{color:#2a7}}.invalid{{color:#c22}}\
         pre{{background:#f6f6f6;padding:1em;overflow:auto;max-height:40em}}</style></head><body>\n<h1>{0}</h1>",
        escape(&page.title)
    );
    let (class, word) = if page.valid {
        ("valid", "valid")
    } else {
        ("invalid", "INVALID")
    };
    let _ = writeln!(
        out,
        "<p class=\"{class}\"><b>{word}</b></p>\n<p>{}</p>",
        escape(page.summary)
    );
    let _ = writeln!(out, "<h2>Faults</h2>\n<table>");
    for w in &page.faults {
        let _ = writeln!(
            out,
            "<tr><td>{:.1} s – {:.1} s</td><td>{}</td></tr>",
            w.start,
            w.end,
            escape(&w.label)
        );
    }
    let _ = writeln!(out, "</table>");
    if !page.ops.is_empty() {
        let mut ok = vec![0.0; seconds];
        let mut failed = vec![0.0; seconds];
        let mut unknown = vec![0.0; seconds];
        let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); seconds];
        for o in &page.ops {
            let s = (o.complete as usize).min(seconds - 1);
            match o.kind {
                Kind::Ok => ok[s] += 1.0,
                Kind::Fail => failed[s] += 1.0,
                Kind::Info | Kind::Invoke => unknown[s] += 1.0,
            }
            if o.kind == Kind::Ok {
                latencies[s].push((o.complete - o.invoke) * 1000.0);
            }
        }
        chart(
            &mut out,
            "Completions per second",
            span,
            &page.faults,
            &[
                ("ok", "#2a7", ok),
                ("failed", "#e90", failed),
                ("unknown", "#c22", unknown),
            ],
        );
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for mut l in latencies {
            l.sort_by(f64::total_cmp);
            p50.push(percentile(&l, 0.5));
            p99.push(percentile(&l, 0.99));
        }
        chart(
            &mut out,
            "Latency of successful operations (ms)",
            span,
            &page.faults,
            &[("p50", "#26c", p50), ("p99", "#a3c", p99)],
        );
    }
    if !page.timeline.ops.is_empty() {
        draw_timeline(&mut out, &page.timeline, &page.faults);
    }
    let _ = writeln!(
        out,
        "<h2>Results</h2>\n<pre>{}</pre>\n</body></html>",
        escape(page.results_json)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nemesis(what: &str, secs: f64) -> Event {
        Event {
            index: 0,
            process: None,
            kind: Kind::Info,
            key: None,
            op: None,
            nemesis: Some(what.into()),
            time_ns: (secs * 1e9) as u64,
        }
    }

    #[test]
    fn faults_pair_with_their_heals() {
        let events = vec![
            nemesis("kill n2", 1.0),
            nemesis("heal n2", 3.0),
            nemesis("pause n1", 5.0),
        ];
        let w = windows(&events);
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].start, w[0].end, w[0].label.as_str()),
            (1.0, 3.0, "kill n2")
        );
        assert_eq!(
            (w[1].start, w[1].end),
            (5.0, 5.0),
            "unhealed: ends at the last event"
        );
    }

    #[test]
    fn the_page_shows_verdict_charts_and_escaped_results() {
        let ops = vec![
            Timed {
                process: 0,
                invoke: 0.1,
                complete: 0.2,
                kind: Kind::Ok,
            },
            Timed {
                process: 1,
                invoke: 1.1,
                complete: 1.9,
                kind: Kind::Info,
            },
        ];
        let faults = vec![Window {
            start: 1.0,
            end: 2.0,
            label: "kill n1".into(),
        }];
        let timeline = around_first_fault(&ops, &faults);
        assert_eq!(timeline.ops.len(), 1, "only operations from 0.5 s on");
        let page = Page {
            title: "register on conclave".into(),
            valid: false,
            summary: "2 operations",
            faults,
            ops,
            timeline,
            results_json: "{\"why\": \"<lost>\"}",
        };
        let html = render(&page);
        assert!(html.contains("<b>INVALID</b>"));
        assert!(html.contains("Completions per second"));
        assert!(html.contains("<title>kill n1</title>"));
        assert!(html.contains("&lt;lost&gt;"), "results are escaped");
        assert!(!html.contains("<lost>"));
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("worker 1: Info"));
    }

    #[test]
    fn a_violation_window_is_drawn_with_its_culprit() {
        use crate::history::Op;
        let at = |index: usize, process: usize, kind: Kind, op: Op, secs: f64| Event {
            index,
            process: Some(process),
            kind,
            key: Some(3),
            op: Some(op),
            nemesis: None,
            time_ns: (secs * 1e9) as u64,
        };
        // Worker 0 writes 1; worker 1 then reads a value nobody wrote.
        let events = vec![
            at(0, 0, Kind::Invoke, Op::Write { value: 1 }, 0.0),
            at(1, 0, Kind::Ok, Op::Write { value: 1 }, 0.1),
            at(2, 1, Kind::Invoke, Op::Read { value: None }, 0.2),
            at(3, 1, Kind::Ok, Op::Read { value: Some(7) }, 0.3),
        ];
        let report = crate::linearizable::check(&events, 1000);
        assert!(!report.valid);
        let timeline = register_violation(&events, &report).unwrap();
        let culprit: Vec<_> = timeline.ops.iter().filter(|d| d.culprit).collect();
        assert_eq!(culprit.len(), 1);
        assert!(culprit[0].label.contains("key 3"), "{}", culprit[0].label);
        let page = Page {
            title: "t".into(),
            valid: false,
            summary: "s",
            faults: Vec::new(),
            ops: Vec::new(),
            timeline,
            results_json: "{}",
        };
        assert!(render(&page).contains("fill=\"#c22\""));
    }
}
