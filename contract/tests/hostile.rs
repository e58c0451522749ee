//! Hostile input for the contract's decoders, table by table: each input with the exact
//! answer expected. The fuzz targets (`fuzz/`, `make fuzz`) check the same decoders on
//! millions of generated inputs; these rows pin the cases worth naming.

use contract::{
    downward::{ParseError, annotation, parse_annotations, unquote_go},
    result::{
        ContainerResult, DelegateResult, FORMAT_VERSION, POD_FAILED_EXIT_CODE, Phase, ResultError,
        TERMINATION_MESSAGE_LIMIT, truncate_termination_message,
    },
};

/// `n` nested arrays.
fn nested(n: usize) -> String {
    "[".repeat(n) + &"]".repeat(n)
}

#[test]
fn hostile_results_are_refused_with_a_reason_or_read_exactly() {
    enum Want {
        Malformed(&'static str),
        UnknownVersion(u64),
        /// Decoded; the exit status of container `main` (or of the pod, if it has none).
        Exit(u8),
    }
    use Want::*;
    let deep = format!(r#"{{"v":1,"phase":"Failed","x":{}}}"#, nested(100_000));
    let huge = "m".repeat(1 << 20);
    let rows: Vec<(&str, String, Want)> = vec![
        ("empty", String::new(), Malformed("EOF while parsing")),
        ("truncated", r#"{"v":1,"phase":"Fai"#.into(), Malformed("EOF while parsing")),
        ("an array of the fields", "[1,\"Failed\"]".into(), Malformed("trailing characters")),
        ("an array of one field", "[1]".into(), Malformed("invalid length 1")),
        ("v missing", r#"{"phase":"Succeeded"}"#.into(), Malformed("missing field `v`")),
        ("v as a string", r#"{"v":"1","phase":"Succeeded"}"#.into(), Malformed("invalid type: string")),
        ("v as a float", r#"{"v":1.0,"phase":"Succeeded"}"#.into(), Malformed("invalid type: floating point")),
        ("v negative", r#"{"v":-1,"phase":"Succeeded"}"#.into(), Malformed("invalid value: integer `-1`")),
        ("v of a future format", r#"{"v":2,"phase":"Whatever"}"#.into(), UnknownVersion(2)),
        ("v at u64::MAX", r#"{"v":18446744073709551615}"#.into(), UnknownVersion(u64::MAX)),
        ("v past u64", r#"{"v":18446744073709551616}"#.into(), Malformed("invalid type: floating point")),
        ("v twice", r#"{"v":1,"v":1,"phase":"Succeeded"}"#.into(), Malformed("duplicate field `v`")),
        ("phase twice", r#"{"v":1,"phase":"Failed","phase":"Succeeded"}"#.into(), Malformed("duplicate field `phase`")),
        ("an unknown phase", r#"{"v":1,"phase":"Running"}"#.into(), Malformed("unknown variant `Running`")),
        ("the phase in lower case", r#"{"v":1,"phase":"succeeded"}"#.into(), Malformed("unknown variant")),
        ("exitCode as a string", r#"{"v":1,"phase":"Failed","containers":{"main":{"exitCode":"0"}}}"#.into(), Malformed("invalid type: string")),
        ("exitCode past i32", r#"{"v":1,"phase":"Failed","containers":{"main":{"exitCode":2147483648}}}"#.into(), Malformed("invalid value: integer `2147483648`")),
        ("exitCode as a float", r#"{"v":1,"phase":"Failed","containers":{"main":{"exitCode":0.0}}}"#.into(), Malformed("invalid type: floating point")),
        ("exitCode twice, 0 last", r#"{"v":1,"phase":"Failed","containers":{"main":{"exitCode":1,"exitCode":0}}}"#.into(), Malformed("duplicate field `exitCode`")),
        ("containers as an array", r#"{"v":1,"phase":"Failed","containers":[{"exitCode":0}]}"#.into(), Malformed("invalid type: sequence")),
        ("a lone surrogate in a message", r#"{"v":1,"phase":"Failed","message":"\ud800"}"#.into(), Malformed("unexpected end of hex escape")),
        ("100k nested arrays in an unknown field (skipped)", deep, Exit(POD_FAILED_EXIT_CODE)),
        ("unknown fields are ignored", r#"{"v":1,"phase":"Succeeded","future":{"x":1},"containers":{"main":{"exitCode":0,"new":true}}}"#.into(), Exit(0)),
        ("main twice: the last entry wins", r#"{"v":1,"phase":"Failed","containers":{"main":{"exitCode":0},"main":{"exitCode":3}}}"#.into(), Exit(3)),
        ("exit code -1 is never success", r#"{"v":1,"phase":"Succeeded","containers":{"main":{"exitCode":-1}}}"#.into(), Exit(255)),
        ("exit code 256 is never success", r#"{"v":1,"phase":"Succeeded","containers":{"main":{"exitCode":256}}}"#.into(), Exit(255)),
        ("exit code i32::MIN", r#"{"v":1,"phase":"Succeeded","containers":{"main":{"exitCode":-2147483648}}}"#.into(), Exit(255)),
        ("a 1 MiB message", format!(r#"{{"v":1,"phase":"Failed","containers":{{"main":{{"exitCode":1,"message":"{huge}"}}}}}}"#), Exit(1)),
        ("a byte-order mark first", format!("\u{feff}{}", r#"{"v":1,"phase":"Succeeded"}"#), Malformed("expected value")),
    ];
    for (name, text, want) in rows {
        let decoded = DelegateResult::decode(&text);
        match (want, decoded) {
            (Malformed(message), Err(ResultError::Malformed(m))) => {
                assert!(m.contains(message), "{name}: {m}");
                assert!(m.len() < 300, "{name}: the error echoes {} bytes", m.len());
            }
            (UnknownVersion(v), Err(ResultError::UnknownVersion { found })) => {
                assert_eq!(found, v, "{name}")
            }
            (Exit(code), Ok(result)) => {
                let outcome = result.outcome_for("main").unwrap();
                assert_eq!(outcome.exit_code, code, "{name}");
                assert_eq!(
                    DelegateResult::decode(&result.encode()),
                    Ok(result),
                    "{name}"
                );
                let cut = truncate_termination_message(&outcome.message);
                assert!(cut.len() <= TERMINATION_MESSAGE_LIMIT, "{name}");
            }
            (_, other) => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn results_round_trip_whatever_their_strings_hold() {
    let strings = [
        "",
        "\u{0}",
        "\"quoted\" and \\backslashed\\",
        "line\nbreak\r\n",
        "\u{202e}\u{200b}\u{feff}",
        "😀\u{10ffff}",
        "</script>",
    ];
    for s in strings {
        let result = DelegateResult {
            version: FORMAT_VERSION,
            phase: Phase::Failed,
            reason: Some(s.into()),
            message: Some(s.into()),
            containers: [(
                s.to_string(),
                ContainerResult {
                    exit_code: i32::MIN,
                    reason: Some(s.into()),
                    message: Some(s.into()),
                },
            )]
            .into(),
        };
        let encoded = result.encode();
        assert_eq!(
            DelegateResult::decode(&encoded),
            Ok(result.clone()),
            "{s:?}"
        );
        assert_eq!(result.outcome_for(s).unwrap().exit_code, 255, "{s:?}");
        assert_eq!(
            result.outcome_for("absent").unwrap().exit_code,
            POD_FAILED_EXIT_CODE
        );
    }
}

#[test]
fn hostile_projections_are_refused_with_the_line_or_read_exactly() {
    /// The annotations read, or the error.
    type Want = Result<Vec<(&'static str, String)>, ParseError>;
    let rows: Vec<(&str, String, Want)> = vec![
        ("empty", String::new(), Ok(vec![])),
        ("blank lines", "\n\n\r\n".into(), Ok(vec![])),
        (
            "CRLF line ends",
            "a=\"1\"\r\nb=\"2\"\r\n".into(),
            Ok(vec![("a", "1".into()), ("b", "2".into())]),
        ),
        (
            "no final newline",
            "a=\"1\"".into(),
            Ok(vec![("a", "1".into())]),
        ),
        (
            "every escape Go writes",
            r#"k="\a\b\f\n\r\t\v\\\"\x00\x7f\u200b\U0001f600""#.into(),
            Ok(vec![(
                "k",
                "\u{7}\u{8}\u{c}\n\r\t\u{b}\\\"\u{0}\u{7f}\u{200b}😀".into(),
            )]),
        ),
        (
            "UTF-8 written as raw bytes",
            r#"k="\xc3\xa9\303\251""#.into(),
            Ok(vec![("k", "éé".into())]),
        ),
        (
            "= inside the value",
            "k=\"a=b\"".into(),
            Ok(vec![("k", "a=b".into())]),
        ),
        (
            "a 1 MiB value",
            format!("k=\"{}\"", "v".repeat(1 << 20)),
            Ok(vec![("k", "v".repeat(1 << 20))]),
        ),
        (
            "a line without =",
            "a=\"1\"\nno-equals\n".into(),
            Err(ParseError {
                line: 2,
                problem: "no `=`",
            }),
        ),
        (
            "an unquoted value",
            "k=1".into(),
            Err(ParseError {
                line: 1,
                problem: "value is not a double-quoted string",
            }),
        ),
        (
            "an unterminated quote",
            "k=\"open".into(),
            Err(ParseError {
                line: 1,
                problem: "value is not a double-quoted string",
            }),
        ),
        (
            "a lone quote",
            "k=\"".into(),
            Err(ParseError {
                line: 1,
                problem: "value is not a double-quoted string",
            }),
        ),
        (
            "a dangling backslash",
            "k=\"a\\\"".into(),
            Err(ParseError {
                line: 1,
                problem: "dangling backslash",
            }),
        ),
        (
            "an unknown escape",
            r#"k="\q""#.into(),
            Err(ParseError {
                line: 1,
                problem: "unknown escape",
            }),
        ),
        (
            "a short \\x",
            r#"k="\x4""#.into(),
            Err(ParseError {
                line: 1,
                problem: "truncated escape",
            }),
        ),
        (
            "a short \\u",
            r#"k="\u12""#.into(),
            Err(ParseError {
                line: 1,
                problem: "truncated escape",
            }),
        ),
        (
            "a surrogate \\u",
            r#"k="\ud800""#.into(),
            Err(ParseError {
                line: 1,
                problem: "escape is not a Unicode scalar",
            }),
        ),
        (
            "\\U past Unicode",
            r#"k="\U00110000""#.into(),
            Err(ParseError {
                line: 1,
                problem: "escape is not a Unicode scalar",
            }),
        ),
        (
            "octal past a byte",
            r#"k="\777""#.into(),
            Err(ParseError {
                line: 1,
                problem: "octal escape out of range",
            }),
        ),
        (
            "a raw byte that is not UTF-8",
            r#"k="\xff""#.into(),
            Err(ParseError {
                line: 1,
                problem: "value is not UTF-8",
            }),
        ),
        (
            "half a character in raw bytes",
            r#"k="\xc3""#.into(),
            Err(ParseError {
                line: 1,
                problem: "value is not UTF-8",
            }),
        ),
    ];
    for (name, text, want) in rows {
        let want = want.map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        assert_eq!(parse_annotations(&text), want, "{name}");
    }
}

#[test]
fn one_annotation_is_read_even_beside_malformed_lines() {
    let text = "garbage\na=\"\\q\"\nmulticluster.admiralty.io/result=\"{}\"\nmulticluster.admiralty.io/result2=\"x\"\n";
    assert_eq!(
        annotation(text, "multicluster.admiralty.io/result"),
        Some(Ok("{}".into()))
    );
    assert_eq!(
        annotation(text, "a"),
        Some(Err(ParseError {
            line: 2,
            problem: "unknown escape"
        }))
    );
    assert_eq!(annotation(text, "multicluster.admiralty.io/res"), None);
    // The kubelet writes a map: a key never appears twice. If it did, the lookup would take
    // the first line and the whole-file parse the last; this pins that behaviour.
    let twice = "k=\"first\"\nk=\"second\"\n";
    assert_eq!(annotation(twice, "k"), Some(Ok("first".into())));
    assert_eq!(parse_annotations(twice).unwrap()["k"], "second");
    assert_eq!(
        unquote_go("\"\\'\""),
        Ok("'".into()),
        "Go refuses \\' in \"\"; we accept it"
    );
}

#[cfg(feature = "integrity")]
mod manifest {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use contract::manifest::{ManifestError, ManifestKey, open_with_any};

    fn key() -> ManifestKey {
        ManifestKey::from_bytes(b"contract-hostile-tests-key-0123456789").unwrap()
    }

    const POD: &str = r#"{"metadata":{"name":"p","namespace":"team-a"},"spec":{"containers":[{"name":"main","image":"busybox"}]}}"#;

    #[test]
    fn hostile_saved_manifests_never_open() {
        let sealed = key().seal("team-a", POD);
        let (tag, _) = sealed[3..].split_once('.').unwrap();
        let rows: Vec<(&str, String, ManifestError)> = vec![
            ("empty", String::new(), ManifestError::Malformed),
            ("only the version", "v1".into(), ManifestError::Malformed),
            ("no MAC", format!("v1.{POD}"), ManifestError::Malformed),
            (
                "an empty MAC",
                format!("v1..{POD}"),
                ManifestError::BadSignature,
            ),
            (
                "a MAC that is not base64url",
                format!(
                    "v1.{}.{POD}",
                    tag.replace(|c: char| c.is_ascii_alphanumeric(), "*")
                ),
                ManifestError::Malformed,
            ),
            (
                "the MAC in standard base64 with padding",
                format!("v1.{tag}=.{POD}"),
                ManifestError::Malformed,
            ),
            (
                "a MAC two characters short (not a base64 length)",
                format!("v1.{}.{POD}", &tag[2..]),
                ManifestError::Malformed,
            ),
            (
                "the MAC truncated to 16 bytes",
                format!(
                    "v1.{}.{POD}",
                    URL_SAFE_NO_PAD.encode(&URL_SAFE_NO_PAD.decode(tag).unwrap()[..16])
                ),
                ManifestError::BadSignature,
            ),
            (
                "an edited image",
                sealed.replace("busybox", "evil/miner"),
                ManifestError::BadSignature,
            ),
            (
                "an extra space in the JSON",
                sealed.replace(r#""spec":"#, r#""spec": "#),
                ManifestError::BadSignature,
            ),
            (
                "a trailing newline",
                format!("{sealed}\n"),
                ManifestError::BadSignature,
            ),
            (
                "a future version",
                sealed.replacen("v1.", "v2.", 1),
                ManifestError::UnknownVersion("v2".into()),
            ),
            (
                "V1 in capitals",
                sealed.replacen("v1.", "V1.", 1),
                ManifestError::Malformed,
            ),
            (
                "a long version-like prefix",
                sealed.replacen("v1.", "v123456789.", 1),
                ManifestError::Malformed,
            ),
        ];
        for (name, text, want) in rows {
            assert_eq!(key().open("team-a", &text), Err(want), "{name}");
        }
        assert_eq!(key().open("team-a", &sealed), Ok(POD));
    }

    #[test]
    fn a_manifest_opens_in_its_own_namespace_with_its_own_key_only() {
        let sealed = key().seal("team-a", POD);
        for namespace in ["team-b", "Team-a", "team-a ", "", "team-a\u{0}"] {
            assert_eq!(
                key().open(namespace, &sealed),
                Err(ManifestError::BadSignature),
                "{namespace:?}"
            );
        }
        let whitespace_key = ManifestKey::from_bytes(&[b'\t'; 32]);
        assert_eq!(whitespace_key.err(), Some(ManifestError::ShortKey(0)));
        let other = ManifestKey::from_bytes(&[b'k'; 32]).unwrap();
        assert_eq!(
            other.open("team-a", &sealed),
            Err(ManifestError::BadSignature)
        );
        assert_eq!(open_with_any(&[other, key()], "team-a", &sealed), Ok(POD));
        // The MAC covers tag ‖ namespace ‖ NUL ‖ JSON. Kubernetes namespaces (DNS labels) and
        // serde_json's output never hold a NUL, so the split is unambiguous in practice; with
        // a NUL in both it would not be, which this pins.
        let crafted = key().seal("a", "b\u{0}c");
        assert_eq!(
            key().open("a\u{0}b", &crafted.replace("b\u{0}c", "c")),
            Ok("c")
        );
    }

    #[test]
    fn anything_sealed_round_trips() {
        for json in [
            "",
            "{}",
            "\u{0}",
            "v1.x.y",
            "é😀\u{202e}",
            &"x".repeat(300_000),
        ] {
            for namespace in ["", "team-a", "a.b", "é"] {
                let sealed = key().seal(namespace, json);
                assert_eq!(key().open(namespace, &sealed), Ok(json));
            }
        }
    }
}
