//! Structure-aware mutations: a JSON input is parsed, changed as a tree (wrong types, numbers
//! at limits, huge and unusual strings, deep nesting, deleted and added members, subtrees
//! spliced from other seeds), written back (sometimes with duplicate keys, which a tree cannot
//! hold), then sometimes damaged byte by byte (truncation, invalid UTF-8, bad escapes). Text
//! inputs get the byte-level mutations plus tokens of their format.

use serde_json::{Map, Number, Value};

use crate::rng::Rng;

/// What a target's JSON looks like: the paths worth mutating more often than random nodes
/// (a path step that is a number indexes an array; missing members are created), and words
/// worth writing as keys or values.
pub struct Shape {
    pub hot_paths: &'static [&'static [&'static str]],
    pub words: &'static [&'static str],
}

/// A mutated copy of `input` (or of a seed, when `input` is not JSON), at most `max_len` bytes
/// when that is possible.
pub fn mutate_json(
    input: &[u8],
    rng: &mut Rng,
    shape: &Shape,
    seeds: &[Value],
    max_len: usize,
) -> Vec<u8> {
    let mut value = match serde_json::from_slice::<Value>(input) {
        Ok(value) if !rng.one_in(16) => value,
        _ => rng.pick(seeds).clone(),
    };
    for _ in 0..1 + rng.below(3) {
        mutate_tree(&mut value, rng, shape, seeds);
    }
    let duplicates = rng.one_in(6);
    let mut out = render(&value, rng, duplicates);
    if rng.one_in(5) {
        mutate_bytes(&mut out, rng, JSON_TOKENS);
    }
    if out.len() > max_len {
        out.truncate(max_len);
    }
    out
}

/// A mutated copy of a text input (or of a seed).
pub fn mutate_text(
    input: &[u8],
    rng: &mut Rng,
    seeds: &[Vec<u8>],
    tokens: &[&[u8]],
    max_len: usize,
) -> Vec<u8> {
    let mut out = if input.is_empty() || rng.one_in(16) {
        rng.pick(seeds).clone()
    } else {
        input.to_vec()
    };
    for _ in 0..1 + rng.below(4) {
        if rng.one_in(8) {
            // Splice: the head of this input and the tail of a seed.
            let other = rng.pick(seeds);
            let (cut, from) = (rng.below(out.len() + 1), rng.below(other.len() + 1));
            out.truncate(cut);
            out.extend_from_slice(&other[from..]);
        } else {
            mutate_bytes(&mut out, rng, tokens);
        }
    }
    out.truncate(max_len);
    out
}

/// Tokens of JSON worth inserting at random places.
pub const JSON_TOKENS: &[&[u8]] = &[
    b"\\ud800",
    b"\\udc00\\ud800",
    b"\\u0000",
    b"\\",
    b"\"",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\x00",
    b"null",
    b"{}",
    b"[]",
    b",",
    b":",
    b"}",
    b"]",
];

/// One tree-level change somewhere in `value`.
pub fn mutate_tree(value: &mut Value, rng: &mut Rng, shape: &Shape, seeds: &[Value]) {
    let path: Vec<String> = if !shape.hot_paths.is_empty() && rng.one_in(2) {
        let hot = rng.pick(shape.hot_paths);
        // Sometimes stop short, so that parents get replaced as well as leaves.
        let depth = if rng.one_in(4) {
            rng.below(hot.len() + 1)
        } else {
            hot.len()
        };
        hot[..depth].iter().map(|s| s.to_string()).collect()
    } else {
        random_path(value, rng)
    };
    if !path.is_empty() && rng.one_in(8) {
        let (last, parent) = path.split_last().unwrap_or((&path[0], &[]));
        match navigate(value, parent) {
            Value::Object(map) => {
                map.remove(last);
            }
            Value::Array(items) => {
                if let Ok(i) = last.parse::<usize>()
                    && i < items.len()
                {
                    items.remove(i);
                }
            }
            _ => {}
        }
        return;
    }
    let node = navigate(value, &path);
    match rng.below(9) {
        0..=2 => *node = interesting(rng, shape),
        3 => confuse_type(node, rng),
        4 => match node {
            Value::String(s) => tweak_string(s, rng, shape),
            Value::Number(_) => *node = limit_number(rng),
            _ => *node = interesting(rng, shape),
        },
        5 => match node {
            Value::Object(map) => {
                let key = word_or_unusual(rng, shape);
                map.insert(key, interesting(rng, shape));
            }
            Value::Array(items) => {
                let copies = if rng.one_in(8) { 100 } else { 1 };
                let item = if items.is_empty() || rng.one_in(3) {
                    interesting(rng, shape)
                } else {
                    rng.pick(items).clone()
                };
                for _ in 0..copies {
                    let at = rng.below(items.len() + 1);
                    items.insert(at, item.clone());
                }
            }
            _ => *node = interesting(rng, shape),
        },
        6 => {
            // Splice: a subtree of a seed.
            let donor = rng.pick(seeds);
            let donor_path = random_path(donor, rng);
            let mut walk = donor;
            for step in &donor_path {
                walk = match walk {
                    Value::Object(m) => m.get(step).unwrap_or(walk),
                    Value::Array(a) => step
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| a.get(i))
                        .unwrap_or(walk),
                    _ => walk,
                };
            }
            *node = walk.clone();
        }
        7 => *node = nested(rng, node.take()),
        _ => {
            if let Value::Object(map) = node
                && !map.is_empty()
            {
                // Rename a member (the same value under an unexpected key, or vice versa).
                let keys: Vec<String> = map.keys().cloned().collect();
                let from = rng.pick(&keys).clone();
                if let Some(v) = map.remove(&from) {
                    let to = if rng.one_in(2) {
                        word_or_unusual(rng, shape)
                    } else {
                        case_variant(&from, rng)
                    };
                    map.insert(to, v);
                }
            } else {
                *node = interesting(rng, shape);
            }
        }
    }
}

/// The node at `path`, creating missing object members (as null) on the way; stops early at
/// a scalar or an out-of-range index.
fn navigate<'a>(value: &'a mut Value, path: &[String]) -> &'a mut Value {
    let Some((step, rest)) = path.split_first() else {
        return value;
    };
    let index = step.parse::<usize>().ok();
    let descend = match &*value {
        Value::Object(_) => true,
        Value::Array(items) => index.is_some_and(|i| i < items.len()),
        _ => false,
    };
    if !descend {
        return value;
    }
    match value {
        Value::Object(map) => navigate(map.entry(step.clone()).or_insert(Value::Null), rest),
        Value::Array(items) => navigate(&mut items[index.unwrap_or(0)], rest),
        _ => unreachable!("checked above"),
    }
}

/// A path to a random node (each level descends with probability 3/4).
fn random_path(value: &Value, rng: &mut Rng) -> Vec<String> {
    let mut path = Vec::new();
    let mut node = value;
    while !rng.one_in(4) {
        match node {
            Value::Object(map) if !map.is_empty() => {
                let i = rng.below(map.len());
                let Some((k, v)) = map.iter().nth(i) else {
                    break;
                };
                path.push(k.clone());
                node = v;
            }
            Value::Array(items) if !items.is_empty() => {
                let i = rng.below(items.len());
                path.push(i.to_string());
                node = &items[i];
            }
            _ => break,
        }
    }
    path
}

fn word_or_unusual(rng: &mut Rng, shape: &Shape) -> String {
    if !shape.words.is_empty() && rng.one_in(2) {
        rng.pick(shape.words).to_string()
    } else {
        unusual_string(rng)
    }
}

fn case_variant(key: &str, rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => key.to_uppercase(),
        1 => format!("{key} "),
        2 => format!("{key}\u{0}"),
        _ => {
            let mut chars: Vec<char> = key.chars().collect();
            if let Some(c) = chars.first_mut() {
                *c = c.to_ascii_uppercase();
            }
            chars.into_iter().collect()
        }
    }
}

/// A value of any type, biased towards the words of the target and towards limits.
pub fn interesting(rng: &mut Rng, shape: &Shape) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => limit_number(rng),
        3 | 4 if !shape.words.is_empty() => Value::String(rng.pick(shape.words).to_string()),
        5 => Value::String(unusual_string(rng)),
        6 => Value::String(huge_string(rng)),
        7 => Value::Array(vec![]),
        8 => Value::Object(Map::new()),
        9 => {
            let mut map = Map::new();
            for _ in 0..rng.below(4) {
                let key = word_or_unusual(rng, shape);
                let value = if rng.one_in(2) {
                    Value::String(String::new())
                } else {
                    limit_number(rng)
                };
                map.insert(key, value);
            }
            Value::Object(map)
        }
        10 => nested(rng, Value::Null),
        _ => Value::String(unusual_string(rng)),
    }
}

/// Numbers at the edges of what JSON, i32, i64, u64 and f64 hold.
pub fn limit_number(rng: &mut Rng) -> Value {
    const INTS: &[i64] = &[
        0,
        1,
        -1,
        2,
        3,
        127,
        128,
        255,
        256,
        -129,
        65535,
        i32::MAX as i64,
        i32::MIN as i64,
        i32::MAX as i64 + 1,
        i32::MIN as i64 - 1,
        u32::MAX as i64,
        i64::MAX,
        i64::MIN,
    ];
    const FLOATS: &[f64] = &[0.5, -0.0, 1.0, 1e308, -1e308, 5e-324, 2.5e9, f64::EPSILON];
    match rng.below(4) {
        0 => Value::Number(Number::from(u64::MAX - rng.below(2) as u64)),
        1 => Number::from_f64(*rng.pick(FLOATS)).map_or(Value::Null, Value::Number),
        _ => Value::Number(Number::from(*rng.pick(INTS))),
    }
}

/// Strings that trip naive code: control characters, bidi overrides, combining marks,
/// astral-plane characters, separators, quotes and escapes, lookalike keys.
pub fn unusual_string(rng: &mut Rng) -> String {
    const STRINGS: &[&str] = &[
        "",
        " ",
        "\u{0}",
        "a\u{0}b",
        "\u{202e}gnp.exe",
        "\u{200b}",
        "\u{feff}",
        "e\u{301}",
        "😀",
        "\u{10ffff}",
        "\u{fffd}",
        "\u{2028}\u{2029}",
        "line\nbreak",
        "\r\n",
        "\t",
        "\u{7f}",
        "\"quoted\"\\",
        "\\u0000",
        "../../etc/passwd",
        "%00",
        "multicluster.admiralty.io/",
        "MULTICLUSTER.ADMIRALTY.IO/ELECT",
        "multicluster.admiralty.io/elect ",
        "multicluster.admiralty.io\u{0}/elect",
        "ｍulticluster.admiralty.io/elect",
        "~1",
        "/",
        "-",
        "0",
        "kube-system",
        "KUBE-SYSTEM",
        "kube-system ",
        "v1.",
        "v1..",
        "v1.AAAA.{}",
        "v2.AAAA.{}",
        "v10.x.{}",
        "v1.@@@.{}",
    ];
    let mut s = rng.pick(STRINGS).to_string();
    if rng.one_in(3) {
        let more: &&str = rng.pick(STRINGS);
        s.push_str(more);
    }
    s
}

/// Long strings: mostly a few KiB, sometimes past the 256 KiB annotation limit.
pub fn huge_string(rng: &mut Rng) -> String {
    let len = match rng.below(16) {
        0 => 300 * 1024,
        1..=3 => 64 * 1024,
        _ => 4096,
    };
    match rng.below(3) {
        0 => "é".repeat(len / 2),
        1 => "\"\\".repeat(len / 2),
        _ => "x".repeat(len),
    }
}

/// `inner` wrapped in 10 to 140 levels of arrays or objects (serde_json refuses past 128).
fn nested(rng: &mut Rng, inner: Value) -> Value {
    let depth = 10 + rng.below(131);
    let object = rng.one_in(2);
    (0..depth).fold(inner, |v, _| {
        if object {
            Value::Object(Map::from_iter([("a".to_string(), v)]))
        } else {
            Value::Array(vec![v])
        }
    })
}

fn confuse_type(node: &mut Value, rng: &mut Rng) {
    *node = match node.take() {
        Value::String(s) => match rng.below(3) {
            0 => s
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map_or(Value::Null, Value::Number),
            1 => Value::Array(vec![Value::String(s)]),
            _ => Value::Object(Map::from_iter([(s, Value::Null)])),
        },
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Null => Value::String("null".into()),
        Value::Array(items) => match rng.below(2) {
            0 => Value::Object(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect(),
            ),
            _ => items.into_iter().next().unwrap_or(Value::Null),
        },
        Value::Object(map) => match rng.below(3) {
            0 => Value::Array(map.into_iter().map(|(_, v)| v).collect()),
            1 => Value::String(serde_json::to_string(&map).unwrap_or_default()),
            _ => Value::Array(vec![Value::Object(map)]),
        },
    };
}

fn tweak_string(s: &mut String, rng: &mut Rng, shape: &Shape) {
    match rng.below(6) {
        0 => {
            let mut cut = rng.below(s.len() + 1);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        1 => s.push_str(&unusual_string(rng)),
        2 => s.insert_str(0, &unusual_string(rng)),
        3 => *s = s.repeat(2 + rng.below(50)),
        4 => *s = s.to_uppercase(),
        _ => {
            if !shape.words.is_empty() {
                let word: &&str = rng.pick(shape.words);
                s.push_str(word);
            }
        }
    }
}

/// JSON text of `value`; with `duplicates`, some objects get a member written twice (first
/// or last with another value), which JSON allows and parsers resolve in different ways.
pub fn render(value: &Value, rng: &mut Rng, duplicates: bool) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out, rng, duplicates);
    out
}

fn write(value: &Value, out: &mut Vec<u8>, rng: &mut Rng, duplicates: bool) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out, rng, duplicates);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            let duplicate = (duplicates && !map.is_empty() && rng.one_in(3))
                .then(|| {
                    let (k, _) = map.iter().nth(rng.below(map.len()))?;
                    let other = match rng.below(3) {
                        0 => Value::Null,
                        1 => Value::Object(Map::new()),
                        _ => Value::String(unusual_string(rng)),
                    };
                    Some((k.clone(), other, rng.one_in(2)))
                })
                .flatten();
            let mut first = true;
            let mut member = |k: &str, v: &Value, out: &mut Vec<u8>, rng: &mut Rng| {
                if !first {
                    out.push(b',');
                }
                first = false;
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write(v, out, rng, duplicates);
            };
            if let Some((k, v, true)) = &duplicate {
                member(k, v, out, rng);
            }
            for (k, v) in map {
                member(k, v, out, rng);
            }
            if let Some((k, v, false)) = &duplicate {
                member(k, v, out, rng);
            }
            out.push(b'}');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// One byte-level change: truncation, a flipped or replaced byte, an inserted token or random
/// bytes, a deleted or repeated range.
pub fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut Rng, tokens: &[&[u8]]) {
    let len = bytes.len();
    match rng.below(7) {
        0 => bytes.truncate(rng.below(len + 1)),
        1 if len > 0 => {
            let at = rng.below(len);
            bytes[at] ^= 1 << rng.below(8);
        }
        2 if len > 0 => {
            let at = rng.below(len);
            bytes[at] = *rng.pick(&[0x00, 0xff, 0x80, b'"', b'\\', b'{', b'[', b'\n', b'=', b'.']);
        }
        3 if !tokens.is_empty() => {
            let at = rng.below(len + 1);
            let token = rng.pick(tokens);
            bytes.splice(at..at, token.iter().copied());
        }
        4 if len > 0 => {
            let from = rng.below(len);
            let to = (from + 1 + rng.below(64)).min(len);
            bytes.drain(from..to);
        }
        5 if len > 0 => {
            let from = rng.below(len);
            let to = (from + 1 + rng.below(64)).min(len);
            let copy = bytes[from..to].to_vec();
            let at = rng.below(len + 1);
            bytes.splice(at..at, copy);
        }
        _ => {
            let at = rng.below(len + 1);
            let random: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.byte()).collect();
            bytes.splice(at..at, random);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        hot_paths: &[&["a", "b"]],
        words: &["w"],
    };

    #[test]
    fn duplicate_keys_are_written_when_asked() {
        let value: Value = serde_json::from_str(r#"{"k":{"x":1}}"#).unwrap();
        let found = (0..200).any(|seed| {
            let text = render(&value, &mut Rng::new(seed), true);
            let text = String::from_utf8(text).unwrap();
            text.matches("\"k\"").count() == 2 || text.matches("\"x\"").count() == 2
        });
        assert!(found);
    }

    #[test]
    fn mutations_are_deterministic_and_bounded() {
        let seeds = vec![serde_json::json!({"a": {"b": "c"}})];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..100)
                .map(|_| mutate_json(br#"{"a":1}"#, &mut rng, &SHAPE, &seeds, 1000))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert!(run(7).iter().all(|m| m.len() <= 1000));
        assert_ne!(run(7), run(8));
    }
}
