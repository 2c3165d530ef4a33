//! Output formats shared by every command: `simple` (etcdctl's line format), `json` (the protobuf
//! message as etcdctl prints it: snake_case fields, zero values omitted, bytes in base64, 64-bit
//! ids as plain numbers), and `table` (boxed columns with human sizes and durations). Commands
//! build their simple lines, JSON values and table rows; this module only renders them.

use std::fmt::Write as _;
use std::time::Duration;

use conclave_client::mvccpb::{Event, KeyValue, event::EventType};
use conclave_client::proto::ResponseHeader;
use serde_json::{Map, Value, json};

/// `-w` / `--write-out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// etcdctl's line format.
    Simple,
    /// The protobuf message as JSON, one object per response.
    Json,
    /// Boxed columns.
    Table,
}

/// Base64 (standard alphabet, padded), as Go's encoding/json writes `[]byte`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Lossy UTF-8 text of a key or value.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A JSON object builder that leaves out zero values, like Go's `omitempty`.
#[derive(Default)]
pub struct Obj(Map<String, Value>);

impl Obj {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn int(mut self, name: &str, v: i64) -> Self {
        if v != 0 {
            self.0.insert(name.into(), json!(v));
        }
        self
    }

    pub fn uint(mut self, name: &str, v: u64) -> Self {
        if v != 0 {
            self.0.insert(name.into(), json!(v));
        }
        self
    }

    pub fn bool(mut self, name: &str, v: bool) -> Self {
        if v {
            self.0.insert(name.into(), json!(true));
        }
        self
    }

    pub fn bytes(mut self, name: &str, v: &[u8]) -> Self {
        if !v.is_empty() {
            self.0.insert(name.into(), json!(base64(v)));
        }
        self
    }

    pub fn str(mut self, name: &str, v: &str) -> Self {
        if !v.is_empty() {
            self.0.insert(name.into(), json!(v));
        }
        self
    }

    pub fn value(mut self, name: &str, v: Value) -> Self {
        let empty = match &v {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !empty {
            self.0.insert(name.into(), v);
        }
        self
    }

    pub fn build(self) -> Value {
        Value::Object(self.0)
    }
}

pub fn header(h: &Option<ResponseHeader>) -> Value {
    let h = h.unwrap_or_default();
    Obj::new()
        .uint("cluster_id", h.cluster_id)
        .uint("member_id", h.member_id)
        .int("revision", h.revision)
        .uint("raft_term", h.raft_term)
        .build()
}

pub fn kv(kv: &KeyValue) -> Value {
    Obj::new()
        .bytes("key", &kv.key)
        .int("create_revision", kv.create_revision)
        .int("mod_revision", kv.mod_revision)
        .int("version", kv.version)
        .bytes("value", &kv.value)
        .int("lease", kv.lease)
        .build()
}

pub fn kvs(list: &[KeyValue]) -> Value {
    Value::Array(list.iter().map(kv).collect())
}

pub fn event(e: &Event) -> Value {
    let mut o = Obj::new().int("type", i64::from(e.r#type));
    if let Some(k) = &e.kv {
        o = o.value("kv", kv(k));
    }
    if let Some(p) = &e.prev_kv {
        o = o.value("prev_kv", kv(p));
    }
    o.build()
}

/// `PUT` / `DELETE`.
pub fn event_type(e: &Event) -> &'static str {
    if e.r#type == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    }
}

/// etcdctl's simple lines of a key-value: the key, then the value (or only one of them).
pub fn kv_lines(out: &mut Vec<String>, kv: &KeyValue, keys_only: bool, value_only: bool) {
    if !value_only {
        out.push(text(&kv.key));
    }
    if !keys_only {
        out.push(text(&kv.value));
    }
}

/// Sizes as etcdctl's table shows them (SI units: "20 kB", "1.2 MB").
pub fn human_size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    if b < 1000.0 {
        return format!("{bytes} B");
    }
    let units = ["kB", "MB", "GB", "TB", "PB"];
    let mut v = b / 1000.0;
    let mut unit = units[0];
    for u in &units[1..] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    if v < 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

/// Durations for tables: "45s", "3m20s", "2h0m5s".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 && d.subsec_millis() > 0 && s < 10 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// A boxed table: header row, then rows; numbers and sizes right-aligned as etcdctl's.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let rule: String = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s
    };
    let mut out = String::new();
    let _ = writeln!(out, "{rule}");
    let mut line = String::from("|");
    for (h, w) in headers.iter().zip(&widths) {
        let _ = write!(line, " {h:^w$} |");
    }
    let _ = writeln!(out, "{line}");
    let _ = writeln!(out, "{rule}");
    for r in rows {
        let mut line = String::from("|");
        for (i, w) in widths.iter().enumerate() {
            let cell = r.get(i).map_or("", String::as_str);
            let _ = write!(line, " {cell:>w$} |");
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "{rule}");
    out
}

/// Writes one line to stdout. A closed stdout (e.g. `kvctl watch … | head`) is an error for the
/// caller to stop on, never a panic.
pub fn line(s: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout(), "{s}")
}

/// Prints a response in the chosen format: `simple` lines, the JSON value, or a table (commands
/// without a table of their own fall back to their simple lines, as etcdctl does).
pub fn emit(format: Format, simple: Vec<String>, json: Value, table: Option<String>) {
    // Nothing useful can be done when stdout is closed; the exit code still tells the outcome.
    let _ = match (format, table) {
        (Format::Json, _) => line(&json.to_string()),
        (Format::Table, Some(t)) => line(t.trim_end()),
        _ => simple.iter().try_for_each(|l| line(l)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_go() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"hello world"), "aGVsbG8gd29ybGQ=");
    }

    #[test]
    fn zero_fields_are_omitted() {
        let v = kv(&KeyValue {
            key: b"k".to_vec(),
            mod_revision: 5,
            ..Default::default()
        });
        assert_eq!(v.to_string(), r#"{"key":"aw==","mod_revision":5}"#);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(20_480), "20 kB");
        assert_eq!(human_size(1_234_567), "1.2 MB");
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(200)), "3m20s");
        assert_eq!(human_duration(Duration::from_secs(7205)), "2h0m5s");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], &[vec!["x".into(), "12".into()]]);
        assert_eq!(
            t,
            "+---+--------+\n| A | LONGER |\n+---+--------+\n| x |     12 |\n+---+--------+\n"
        );
    }
}
