//! etcdctl's transaction text: compares, a blank line, the success requests, a blank line, the
//! failure requests. A compare is `TARGET("KEY") OP VALUE` with TARGET one of value/val/v,
//! version/ver, create/c, mod/m, lease and OP one of `=`, `!=`, `<`, `>` (values of `value`
//! compares are quoted strings, the others integers). A request is a `put`, `get` or `del`
//! command line with its flags, shell-style quoting allowed.

use conclave_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};

/// The three sections of a transaction, as text lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sections {
    pub compares: Vec<String>,
    pub success: Vec<String>,
    pub failure: Vec<String>,
}

/// Splits input into sections: each empty line ends one (etcdctl's format), so an input that
/// starts with an empty line has no compares.
pub fn sections(input: &str) -> Sections {
    let mut s = Sections::default();
    let mut part = 0;
    for line in input.lines() {
        let line = line.trim();
        if line.is_empty() {
            part += 1;
            continue;
        }
        match part {
            0 => s.compares.push(line.to_string()),
            1 => s.success.push(line.to_string()),
            _ => s.failure.push(line.to_string()),
        }
    }
    s
}

/// Splits a command line into words, honouring double and single quotes and backslash escapes
/// inside double quotes.
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => cur.push('\n'),
                            Some('t') => cur.push('\t'),
                            Some(other) => cur.push(other),
                            None => return Err(format!("unterminated quote in {line:?}")),
                        },
                        Some(other) => cur.push(other),
                        None => return Err(format!("unterminated quote in {line:?}")),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(other) => cur.push(other),
                        None => return Err(format!("unterminated quote in {line:?}")),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn unquote(v: &str) -> Result<String, String> {
    let w = words(v)?;
    match w.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!("bad value {v:?}: quote it, e.g. \"v\"")),
    }
}

/// Parses one compare line.
pub fn compare(line: &str) -> Result<Compare, String> {
    let bad = || format!("bad compare {line:?}: expected e.g. mod(\"key\") > \"0\"");
    let open = line.find('(').ok_or_else(bad)?;
    let close = line.rfind(')').ok_or_else(bad)?;
    if close < open {
        return Err(bad());
    }
    let target = line[..open].trim();
    let key = unquote(&line[open + 1..close])?;
    let rest = line[close + 1..].trim();
    let (op, value) = [
        ("!=", CompareOp::NotEqual),
        ("=", CompareOp::Equal),
        ("<", CompareOp::Less),
        (">", CompareOp::Greater),
    ]
    .into_iter()
    .find_map(|(sym, op)| rest.strip_prefix(sym).map(|v| (op, v.trim())))
    .ok_or_else(bad)?;
    let value = unquote(value)?;
    let int = |v: &str| -> Result<i64, String> {
        v.parse()
            .map_err(|_| format!("bad compare {line:?}: {v:?} is not an integer"))
    };
    Ok(match target {
        "value" | "val" | "v" => Compare::value(key, op, value),
        "version" | "ver" => Compare::version(key, op, int(&value)?),
        "create" | "c" => Compare::create_revision(key, op, int(&value)?),
        "mod" | "m" => Compare::mod_revision(key, op, int(&value)?),
        "lease" => Compare::lease(
            key,
            op,
            i64::from_str_radix(value.trim_start_matches("0x"), 16)
                .map_err(|_| format!("bad compare {line:?}: {value:?} is not a hex lease id"))?,
        ),
        other => {
            return Err(format!(
                "bad compare {line:?}: unknown target {other:?} (value, version, create, mod, lease)"
            ));
        }
    })
}

/// Parses one request line (`put K V [--lease=ID] [--prev-kv]`, `get K [END] [--prefix]
/// [--from-key] [--limit=N] [--rev=N] [--keys-only] [--count-only]`, `del K [END] [--prefix]
/// [--from-key] [--prev-kv]`).
pub fn op(line: &str) -> Result<TxnOp, String> {
    let w = words(line)?;
    let (cmd, args) = w
        .split_first()
        .ok_or_else(|| format!("empty request {line:?}"))?;
    let mut positional = Vec::new();
    let mut flags = Vec::new();
    for a in args {
        if let Some(f) = a.strip_prefix("--") {
            flags.push(f.split_once('=').map_or((f, ""), |(k, v)| (k, v)));
        } else {
            positional.push(a.as_str());
        }
    }
    let bad_flag = |f: &str| format!("bad request {line:?}: unknown flag --{f}");
    let num = |v: &str| -> Result<i64, String> {
        v.parse()
            .map_err(|_| format!("bad request {line:?}: {v:?} is not a number"))
    };
    match cmd.as_str() {
        "put" => {
            let [key, value] = positional.as_slice() else {
                return Err(format!("bad request {line:?}: put needs KEY and VALUE"));
            };
            let mut o = PutOptions::new();
            for (f, v) in flags {
                o = match f {
                    "lease" => o.with_lease(
                        i64::from_str_radix(v, 16)
                            .map_err(|_| format!("bad request {line:?}: bad lease id {v:?}"))?,
                    ),
                    "prev-kv" => o.with_prev_kv(),
                    "ignore-value" => o.with_ignore_value(),
                    "ignore-lease" => o.with_ignore_lease(),
                    other => return Err(bad_flag(other)),
                };
            }
            Ok(TxnOp::put(key.to_string(), value.to_string(), o))
        }
        "get" => {
            let (key, end) = match positional.as_slice() {
                [k] => (k.to_string(), None),
                [k, e] => (k.to_string(), Some(e.to_string())),
                _ => return Err(format!("bad request {line:?}: get needs KEY [END]")),
            };
            let mut o = GetOptions::new();
            if let Some(e) = end {
                o = o.with_range_end(e);
            }
            for (f, v) in flags {
                o = match f {
                    "prefix" => o.with_prefix(),
                    "from-key" => o.with_from_key(),
                    "limit" => o.with_limit(num(v)?),
                    "rev" => o.with_revision(num(v)?),
                    "keys-only" => o.with_keys_only(),
                    "count-only" => o.with_count_only(),
                    other => return Err(bad_flag(other)),
                };
            }
            Ok(TxnOp::get(key, o))
        }
        "del" | "delete" => {
            let (key, end) = match positional.as_slice() {
                [k] => (k.to_string(), None),
                [k, e] => (k.to_string(), Some(e.to_string())),
                _ => return Err(format!("bad request {line:?}: del needs KEY [END]")),
            };
            let mut o = DeleteOptions::new();
            if let Some(e) = end {
                o = o.with_range_end(e);
            }
            for (f, _) in flags {
                o = match f {
                    "prefix" => o.with_prefix(),
                    "from-key" => o.with_from_key(),
                    "prev-kv" => o.with_prev_kv(),
                    other => return Err(bad_flag(other)),
                };
            }
            Ok(TxnOp::delete(key, o))
        }
        other => Err(format!(
            "bad request {line:?}: unknown command {other:?} (put, get, del)"
        )),
    }
}

/// Builds the transaction from etcdctl's text.
pub fn parse(input: &str) -> Result<Txn, String> {
    let s = sections(input);
    let compares = s
        .compares
        .iter()
        .map(|l| compare(l))
        .collect::<Result<Vec<_>, _>>()?;
    let success = s
        .success
        .iter()
        .map(|l| op(l))
        .collect::<Result<Vec<_>, _>>()?;
    let failure = s
        .failure
        .iter()
        .map(|l| op(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Txn::new().when(compares).and_then(success).or_else(failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_split_at_blank_lines() {
        let s = sections("mod(\"a\") > \"0\"\n\nput a 1\n\nput a 2\nput b 3\n");
        assert_eq!(s.compares, vec!["mod(\"a\") > \"0\""]);
        assert_eq!(s.success, vec!["put a 1"]);
        assert_eq!(s.failure, vec!["put a 2", "put b 3"]);
        let no_compares = sections("\nput a 1\n\n");
        assert!(no_compares.compares.is_empty());
        assert_eq!(no_compares.success, vec!["put a 1"]);
    }

    #[test]
    fn words_honour_quotes() {
        assert_eq!(
            words(r#"put k "a b \"c\"" 'd e'"#).unwrap(),
            vec!["put", "k", "a b \"c\"", "d e"]
        );
        assert!(words("put k \"open").is_err());
    }

    #[test]
    fn compares_and_ops_parse_like_etcdctl() {
        let req = parse(
            "value(\"k\") = \"v 1\"\nmod(\"k\") > \"3\"\nversion(\"k\") != 2\n\n\
             put k \"new\" --prev-kv\nget k --prefix --limit=2\n\ndel k --prefix\n",
        )
        .unwrap()
        .into_request();
        assert_eq!(req.compare.len(), 3);
        assert_eq!(req.compare[0].key, b"k");
        assert_eq!(req.success.len(), 2);
        assert_eq!(req.failure.len(), 1);
        assert!(compare("nope(\"k\") = 1").is_err());
        assert!(compare("mod(\"k\") > x").is_err());
        assert!(op("put onlykey").is_err());
        assert!(op("get k --bogus").is_err());
    }
}
