//! `report.html`: one self-contained page per run (no scripts, no external files). It shows the
//! verdict and summary, a timeline of the faults, and for workloads with timed operations the
//! completions per second (ok / failed / unknown) and the latency per second (median and p99), with
//! the fault windows shaded, so a glance shows what each fault did to the clients. The results
//! follow as JSON.

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

/// One timed operation: invocation and completion in seconds since the start, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    pub invoke: f64,
    pub complete: f64,
    pub kind: Kind,
}

/// Everything the page shows.
pub struct Page<'a> {
    pub title: String,
    pub valid: bool,
    pub summary: &'a str,
    pub faults: Vec<Window>,
    pub ops: Vec<Timed>,
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
                invoke: 0.1,
                complete: 0.2,
                kind: Kind::Ok,
            },
            Timed {
                invoke: 1.1,
                complete: 1.9,
                kind: Kind::Info,
            },
        ];
        let page = Page {
            title: "register on conclave".into(),
            valid: false,
            summary: "2 operations",
            faults: vec![Window {
                start: 1.0,
                end: 2.0,
                label: "kill n1".into(),
            }],
            ops,
            results_json: "{\"why\": \"<lost>\"}",
        };
        let html = render(&page);
        assert!(html.contains("<b>INVALID</b>"));
        assert!(html.contains("Completions per second"));
        assert!(html.contains("<title>kill n1</title>"));
        assert!(html.contains("&lt;lost&gt;"), "results are escaped");
        assert!(!html.contains("<lost>"));
        assert_eq!(html.matches("<svg").count(), 2);
    }
}
