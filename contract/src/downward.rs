//! Reading the kubelet's downward-API projection of a pod's annotations: one `key="value"`
//! line per annotation, sorted by key, the value quoted as Go's `%q` (strconv.Quote) does.

use alloc::{
    collections::BTreeMap,
    string::{String, ToString},
    vec::Vec,
};

/// Why a projection could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line} of the annotations file: {problem}")]
pub struct ParseError {
    pub line: usize,
    pub problem: &'static str,
}

/// Parses the whole projection.
pub fn parse_annotations(text: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let mut annotations = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let error = |problem| ParseError {
            line: index + 1,
            problem,
        };
        let (key, quoted) = line.split_once('=').ok_or(error("no `=`"))?;
        annotations.insert(key.to_string(), unquote_go(quoted).map_err(error)?);
    }
    Ok(annotations)
}

/// The value of one annotation, if present; other malformed lines do not prevent it.
pub fn annotation(text: &str, key: &str) -> Option<Result<String, ParseError>> {
    text.lines().enumerate().find_map(|(index, line)| {
        let quoted = line.strip_prefix(key)?.strip_prefix('=')?;
        Some(unquote_go(quoted).map_err(|problem| ParseError {
            line: index + 1,
            problem,
        }))
    })
}

/// Undoes Go's `strconv.Quote`.
pub fn unquote_go(quoted: &str) -> Result<String, &'static str> {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .ok_or("value is not a double-quoted string")?;
    let mut bytes = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let escaped = chars.next().ok_or("dangling backslash")?;
        match escaped {
            'a' => bytes.push(0x07),
            'b' => bytes.push(0x08),
            'f' => bytes.push(0x0c),
            'n' => bytes.push(b'\n'),
            'r' => bytes.push(b'\r'),
            't' => bytes.push(b'\t'),
            'v' => bytes.push(0x0b),
            '\\' => bytes.push(b'\\'),
            '"' => bytes.push(b'"'),
            '\'' => bytes.push(b'\''),
            // \xHH is a raw byte (Go quotes invalid UTF-8 that way).
            'x' => bytes.push(u8::try_from(hex(&mut chars, 2)?).map_err(|_| "bad \\x escape")?),
            'u' | 'U' => {
                let digits = if escaped == 'u' { 4 } else { 8 };
                let c = char::from_u32(hex(&mut chars, digits)?)
                    .ok_or("escape is not a Unicode scalar")?;
                let mut buf = [0; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            '0'..='7' => {
                let rest = hex_like(&mut chars, 2, 8)?;
                let value = (escaped as u32 - '0' as u32) * 64 + rest;
                bytes.push(u8::try_from(value).map_err(|_| "octal escape out of range")?);
            }
            _ => return Err("unknown escape"),
        }
    }
    // Annotation values are strings in the API, hence valid UTF-8 once unescaped.
    String::from_utf8(bytes).map_err(|_| "value is not UTF-8")
}

fn hex(chars: &mut core::str::Chars<'_>, digits: usize) -> Result<u32, &'static str> {
    hex_like(chars, digits, 16)
}

fn hex_like(
    chars: &mut core::str::Chars<'_>,
    digits: usize,
    radix: u32,
) -> Result<u32, &'static str> {
    let mut value = 0u32;
    for _ in 0..digits {
        let digit = chars
            .next()
            .and_then(|c| c.to_digit(radix))
            .ok_or("truncated escape")?;
        value = value * radix + digit;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Produced by Go: fmt.Sprintf("%v=%q\n", k, v) for each annotation, as the kubelet does.
    const PROJECTION: &str = concat!(
        "a.io/json=\"{\\\"v\\\":1,\\\"phase\\\":\\\"Failed\\\"}\"\n",
        "b.io/lines=\"first\\nsecond\\ttabbed\"\n",
        "c.io/unicode=\"héllo ✓ \\u200b\\x7f\"\n",
        "d.io/empty=\"\"\n",
    );

    #[test]
    fn reads_every_annotation_the_kubelet_writes() {
        let annotations = parse_annotations(PROJECTION).unwrap();
        assert_eq!(annotations["a.io/json"], r#"{"v":1,"phase":"Failed"}"#);
        assert_eq!(annotations["b.io/lines"], "first\nsecond\ttabbed");
        assert_eq!(annotations["c.io/unicode"], "héllo ✓ \u{200b}\u{7f}");
        assert_eq!(annotations["d.io/empty"], "");
    }

    #[test]
    fn finds_one_annotation_by_exact_key() {
        assert_eq!(
            annotation(PROJECTION, "b.io/lines"),
            Some(Ok("first\nsecond\ttabbed".into()))
        );
        assert_eq!(annotation(PROJECTION, "b.io/line"), None);
        assert_eq!(annotation(PROJECTION, "missing"), None);
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for bad in [
            "k=unquoted",
            "k=\"open",
            "k=\"bad \\q\"",
            "k=\"\\x4\"",
            "k=\"\\xff\"",
            "k=\"\\ud800\"",
            "no-equals",
        ] {
            assert!(parse_annotations(bad).is_err(), "{bad}");
        }
    }
}
