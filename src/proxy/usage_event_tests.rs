//! The strict usage-event reader against serde's deserializer: provider
//! events, what it leaves to the deserializer, and every one-byte change.

use super::*;
use crate::proxy::usage::deserialize_members;

/// Events as the providers send them: Moonshot's last chunk (usage in the
/// choice, members in either order), OpenAI's `include_usage` chunk and
/// the chunks before it (`"usage": null`), escapes and non-ASCII text.
const EVENTS: [&str; 6] = [
    r#"{"choices":[{"delta":{},"finish_reason":"stop","index":0,"usage":{"cached_tokens":2,"completion_tokens":3,"prompt_tokens":22,"total_tokens":25}}],"created":1767765293,"id":"chatcmpl-mock","model":"kimi-k2-turbo-preview","object":"chat.completion.chunk"}"#,
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767765293,"model":"kimi-k2","choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11,"cached_tokens":1}}]}"#,
    r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":null,"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}}"#,
    r#"{"id":"chatcmpl-3","choices":[{"index":0,"delta":{"content":"a \"quoted\" word\n\u00e9 é ☃","tool_calls":[{"index":0,"function":{"arguments":"{\"x\":[1,2.5e-3,-0,true,false,null]}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#" { "id" : "x" , "choices" : [ { "usage" : 7 } , { "usage" : { "total_tokens" : 9 } } ] , "usage" : null } "#,
    r#"{"usage":{"prompt_tokens":1},"choices":[{"usage":{"prompt_tokens":2}}],"model":"kimi","created":-1.5E+2}"#,
];

#[test]
fn provider_events_are_read_as_deserializing_reads_them() {
    for event in EVENTS {
        let read = read(event.as_bytes());
        assert!(read.is_some(), "{event}");
        assert_eq!(read, deserialize_members(event.as_bytes()), "{event}");
    }
    let members = read(EVENTS[0].as_bytes()).unwrap();
    let text = |span: Option<Range<usize>>| span.map(|s| &EVENTS[0][s]);
    assert_eq!(text(members.id), Some(r#""chatcmpl-mock""#));
    assert_eq!(text(members.created), Some("1767765293"));
    assert_eq!(text(members.model), Some(r#""kimi-k2-turbo-preview""#));
    assert_eq!(text(members.usage), None);
    assert!(
        text(members.choice_usage)
            .unwrap()
            .starts_with(r#"{"cached_tokens":2"#)
    );
    // The first choice whose usage is an object, not the first choice.
    let members = read(EVENTS[4].as_bytes()).unwrap();
    assert_eq!(
        &EVENTS[4][members.choice_usage.unwrap()],
        r#"{ "total_tokens" : 9 }"#
    );
}

/// What the deserializer refuses, or reads in a way the reader does not
/// cover, is left to it.
#[test]
fn what_the_reader_does_not_cover_is_left_to_the_deserializer() {
    let deep = format!(r#"{{"x":{}1{}}}"#, "[".repeat(150), "]".repeat(150));
    let left: [&[u8]; 12] = [
        br#"{"us\u0061ge":{"total_tokens":1}}"#,
        br#"{"usage":null,"usage":{"total_tokens":1}}"#,
        br#"{"choices":[],"choices":[]}"#,
        br#"{"choices":null}"#,
        br#"{"choices":[[{"total_tokens":1}]]}"#,
        br#"{"choices":[{"usage":1,"usage":2}]}"#,
        deep.as_bytes(),
        b"{\"id\":\"\xff\"}",
        b"{\"id\":\"a\x01b\"}",
        br#"{"id":"\x"}"#,
        br#"{"id":1}x"#,
        br#"[{"usage":{}}]"#,
    ];
    for event in left {
        assert_eq!(read(event), None, "{}", String::from_utf8_lossy(event));
    }
    // Deep nesting within the limit is read.
    let nested = format!(r#"{{"x":{}1{}}}"#, "[".repeat(90), "]".repeat(90));
    assert!(read(nested.as_bytes()).is_some());
}

/// Every one-byte change (and deletion) of the provider events, and every
/// truncation: whenever the reader answers, deserializing gives the same
/// members. The changes are bytes that matter to JSON's grammar.
#[test]
fn the_reader_never_answers_otherwise_than_deserializing() {
    let replacements: &[u8] = b"\"\\{}[],: \t0-+.eEnultrfax/\x00\x1f\x7f\xc3\xa9\xff";
    let mut answered = 0;
    let mut checked = 0;
    for event in EVENTS {
        let event = event.as_bytes();
        let mut check = |candidate: &[u8]| {
            checked += 1;
            if let Some(members) = read(candidate) {
                answered += 1;
                assert_eq!(
                    Some(members),
                    deserialize_members(candidate),
                    "{}",
                    String::from_utf8_lossy(candidate)
                );
            }
        };
        for at in 0..event.len() {
            let mut changed = event.to_vec();
            for &byte in replacements {
                changed[at] = byte;
                check(&changed);
            }
            let mut deleted = event.to_vec();
            deleted.remove(at);
            check(&deleted);
            check(&event[..at]);
        }
    }
    // Many of the changes are still JSON the reader reads (inside strings,
    // whitespace, digits): the comparison is not vacuous.
    assert!(answered > checked / 10, "{answered} of {checked}");
}
