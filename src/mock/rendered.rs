//! Answers the mock has rendered, kept for the next request that asks the
//! same question: every request of a benchmark asks the same one, and
//! building a JSON tree and serialising it per request made the mock cost
//! about as much CPU as the proxies measured in front of it.

use super::Flavour;
use super::reply::{Ask, completion, stream_events};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Everything an answer's bytes depend on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    pub flavour: Flavour,
    pub ask: Ask,
    /// `None` for a plain completion.
    pub stream: Option<StreamShape>,
    /// Filler bytes in a plain completion's content.
    pub filler: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamShape {
    pub chunks: usize,
    /// Filler bytes per content delta.
    pub chunk_bytes: usize,
}

/// A rendered answer; clones share the bytes.
#[derive(Debug, Clone)]
pub enum Rendered {
    Completion(Bytes),
    /// Each a complete `data: …\n\n` frame, without `[DONE]`.
    Stream(Arc<[Bytes]>),
}

/// Distinct answers kept. Tests ask many different questions (and the map
/// then starts over); a benchmark asks one.
const CAPACITY: usize = 256;

#[derive(Default)]
pub struct Renderings(Mutex<HashMap<Question, Rendered>>);

impl Renderings {
    /// The answer to `question`, rendered now or kept from before.
    pub fn answer(&self, question: &Question) -> Rendered {
        if let Some(kept) = self.lock().get(question) {
            return kept.clone();
        }
        let rendered = render(question);
        let mut kept = self.lock();
        if kept.len() >= CAPACITY {
            kept.clear();
        }
        kept.insert(question.clone(), rendered.clone());
        rendered
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Question, Rendered>> {
        self.0.lock().expect("renderings lock")
    }
}

fn render(question: &Question) -> Rendered {
    let Question {
        flavour,
        ask,
        stream,
        filler,
    } = question;
    match stream {
        None => Rendered::Completion(
            serde_json::to_vec(&completion(*flavour, ask, *filler))
                .expect("a JSON tree serialises")
                .into(),
        ),
        Some(shape) => Rendered::Stream(
            stream_events(*flavour, ask, shape.chunks, shape.chunk_bytes)
                .into_iter()
                .map(Bytes::from)
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(model: &str) -> Ask {
        Ask {
            model: model.into(),
            n: 1,
            include_usage: false,
            tool_call: None,
            tool_result: None,
            prompt_tokens: 19,
        }
    }

    fn completion_bytes(rendered: Rendered) -> Bytes {
        match rendered {
            Rendered::Completion(bytes) => bytes,
            Rendered::Stream(_) => panic!("a stream where a completion was asked for"),
        }
    }

    #[test]
    fn the_same_question_gets_the_bytes_rendered_the_first_time() {
        let renderings = Renderings::default();
        let question = Question {
            flavour: Flavour::Moonshot,
            ask: ask("kimi-k2"),
            stream: None,
            filler: 0,
        };
        let first = completion_bytes(renderings.answer(&question));
        let second = completion_bytes(renderings.answer(&question));
        assert_eq!(first.as_ptr(), second.as_ptr(), "not rendered again");
        let fresh = serde_json::to_vec(&completion(Flavour::Moonshot, &question.ask, 0)).unwrap();
        assert_eq!(first, fresh);
    }

    #[test]
    fn a_different_question_gets_its_own_answer() {
        let renderings = Renderings::default();
        let mut question = Question {
            flavour: Flavour::Moonshot,
            ask: ask("kimi-k2"),
            stream: None,
            filler: 0,
        };
        let k2 = completion_bytes(renderings.answer(&question));
        question.ask = ask("kimi-k2-thinking");
        let thinking = completion_bytes(renderings.answer(&question));
        assert!(
            std::str::from_utf8(&thinking)
                .unwrap()
                .contains("kimi-k2-thinking")
        );
        question.flavour = Flavour::Agentsflare;
        let agentsflare = completion_bytes(renderings.answer(&question));
        assert!(
            std::str::from_utf8(&agentsflare)
                .unwrap()
                .contains("system_fingerprint")
        );
        assert_ne!(k2, thinking);
        question.stream = Some(StreamShape {
            chunks: 4,
            chunk_bytes: 0,
        });
        match renderings.answer(&question) {
            Rendered::Stream(events) => {
                let fresh = stream_events(Flavour::Agentsflare, &question.ask, 4, 0);
                assert_eq!(events.len(), fresh.len());
                assert!(events.iter().zip(&fresh).all(|(a, b)| a == b.as_bytes()));
            }
            Rendered::Completion(_) => panic!("a completion where a stream was asked for"),
        }
    }

    #[test]
    fn a_full_map_starts_over_and_still_answers() {
        let renderings = Renderings::default();
        for i in 0..CAPACITY + 3 {
            let question = Question {
                flavour: Flavour::Aimlapi,
                ask: ask(&format!("model-{i}")),
                stream: None,
                filler: 0,
            };
            let answer = completion_bytes(renderings.answer(&question));
            assert!(
                std::str::from_utf8(&answer)
                    .unwrap()
                    .contains(&format!("model-{i}"))
            );
        }
        assert!(renderings.lock().len() <= CAPACITY);
    }
}
