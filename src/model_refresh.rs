//! Catalogue refresh: a provider with `refresh_models_secs` is asked for
//! its `/models` that often; the ids it lists are kept (see
//! [`DiscoveredModels`]) and, when what the match picks from them changed,
//! the running configuration is rebuilt as a reload does, so a model the
//! provider adds is routed without an edit. A failed ask keeps the
//! catalogue as it was.

use crate::client::{ClientError, OutgoingBody, header_line, request_line};
use crate::config::{DiscoveredModels, Provider};
use crate::proxy::key_redaction;
use crate::state::AppState;
use http::header;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long one ask may take, connecting and reading the list included.
const ASK_TIME: Duration = Duration::from_secs(15);
/// The largest list read (AI/ML API's, every maker's models, is ~100 KB).
const MAX_LIST_BYTES: usize = 4 << 20;
/// Ids kept per provider, before `refresh_models_match` picks from them
/// (up to [`crate::config::MAX_FOUND_MODELS`], each a route and a metric
/// label) when a configuration is built: a reseller's list of every
/// maker's models may name its Kimi ids anywhere, and a reload that
/// changes the match picks from what was found at once.
const MAX_IDS: usize = 20_000;
/// How often the loop looks again when nothing is due sooner (a reload
/// may have turned a refresh on).
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Starts the refresh loop; it lives as long as the runtime.
pub fn spawn(state: AppState) {
    tokio::spawn(run(state));
}

async fn run(state: AppState) {
    // When each provider was last asked, at the base URL it had then: a
    // provider a reload moves to another endpoint is asked there at once.
    let mut asked: HashMap<(Arc<str>, String), Instant> = HashMap::new();
    loop {
        let config = state.config();
        let mut wake = Instant::now() + LOOK_AGAIN;
        let mut changed = false;
        // Every provider's keys, for ids that quote one (in any case).
        let secrets: Vec<String> = config
            .providers
            .iter()
            .flat_map(|p| p.keys.iter().map(|k| k.secret.clone()))
            .collect();
        for provider in config.usable_providers() {
            let Some(refresh) = &provider.models_refresh else {
                continue;
            };
            let now = Instant::now();
            let endpoint = (provider.name.clone(), provider.base_url.clone());
            let due = asked.get(&endpoint).map_or(now, |at| *at + refresh.every);
            if due > now {
                wake = wake.min(due);
                continue;
            }
            asked.insert(endpoint, now);
            wake = wake.min(now + refresh.every);
            // A reload that moves the provider (or turns its refresh off)
            // ends the ask: its answer is no longer the catalogue's, and
            // the new endpoint is asked at once, not after this one's
            // time runs out.
            changed |= tokio::select! {
                changed = ask_and_keep(&state, provider, &secrets, &config.discovered) => changed,
                () = endpoint_gone(&state, &provider.name, &provider.base_url) => false,
            };
        }
        // Endpoints no provider has any more are forgotten.
        asked.retain(|(name, url), _| {
            config
                .providers
                .iter()
                .any(|p| p.name == *name && p.base_url == *url)
        });
        drop(config);
        if changed {
            crate::reload::reload(&state, "models_refresh", crate::reload::Reading::Running).await;
        }
        tokio::time::sleep_until(wake).await;
    }
}

/// How often an ask in flight checks that its endpoint is still refreshed.
const MOVED_CHECK: Duration = Duration::from_millis(250);

/// Returns once no provider `name` with a refresh at `base_url` is in the
/// running configuration.
async fn endpoint_gone(state: &AppState, name: &str, base_url: &str) {
    loop {
        tokio::time::sleep(MOVED_CHECK).await;
        let config = state.config();
        let still = config
            .providers
            .iter()
            .any(|p| &*p.name == name && p.base_url == base_url && p.models_refresh.is_some());
        if !still {
            tracing::info!(
                provider = name,
                "the provider's endpoint changed while its model list was asked; the answer is not kept"
            );
            return;
        }
    }
}

/// Asks `provider` and keeps what it lists; true when that changed what
/// its `refresh_models_match` picks.
async fn ask_and_keep(
    state: &AppState,
    provider: &Provider,
    secrets: &[String],
    kept: &DiscoveredModels,
) -> bool {
    let Some(refresh) = &provider.models_refresh else {
        return false;
    };
    let asked = tokio::time::timeout(ASK_TIME, list_models(provider, secrets)).await;
    let result = asked
        .unwrap_or(Err(RefreshError::TimedOut))
        .and_then(|ids| match ids.iter().any(|id| refresh.takes(id)) {
            true => Ok(ids),
            false => Err(RefreshError::NonePicked(ids.len())),
        });
    let outcome = if result.is_ok() { "success" } else { "failure" };
    state
        .metrics
        .model_refreshes
        .with_label_values(&[&provider.name, outcome])
        .inc();
    match result {
        Ok(ids) => {
            let count = ids.len();
            let changed = kept.replace(&provider.name, &provider.base_url, ids, |id| {
                refresh.takes(id)
            });
            if changed {
                tracing::info!(provider = %provider.name, listed = count, "provider's model list changed");
            }
            changed
        }
        Err(err) => {
            tracing::warn!(provider = %provider.name, error = %err, "model catalogue refresh failed; the catalogue stays as it was");
            false
        }
    }
}

/// Why a provider's list could not be read.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("the provider answered {0}")]
    Status(http::StatusCode),
    #[error("the list could not be read: {0}")]
    Body(String),
    /// The parser's message, which may quote the provider's text: its keys
    /// masked (see [`kept_ids`]).
    #[error("not an OpenAI model list: {0}")]
    Shape(String),
    #[error("no answer within {} s", ASK_TIME.as_secs())]
    TimedOut,
    /// With how many ids were left out because they quote a key (a short
    /// test key may be in every id).
    #[error("the list names no usable model{}", quoting_note(*.0))]
    Empty(usize),
    /// A Kimi provider that lists no Kimi model is at fault for the moment.
    #[error("refresh_models_match picks none of the {0} ids listed")]
    NonePicked(usize),
}

/// `GET {base_url}/models` with the provider's first key; the ids listed.
async fn list_models(provider: &Provider, secrets: &[String]) -> Result<Vec<String>, RefreshError> {
    let key = provider
        .keys
        .first()
        .ok_or(RefreshError::Body("no key".into()))?;
    let chat_path = provider.chat_url.path.path();
    let base = chat_path
        .strip_suffix("/chat/completions")
        .unwrap_or(chat_path);
    let target = format!("{base}/models");
    let write_head = |head: &mut Vec<u8>| {
        request_line(head, &http::Method::GET, &target);
        header_line(head, &header::HOST, provider.chat_url.host.as_bytes());
        for (name, value) in &provider.headers {
            header_line(head, name, value.as_bytes());
        }
        header_line(head, &header::AUTHORIZATION, key.header.as_bytes());
        header_line(head, &header::ACCEPT, b"application/json");
        header_line(head, &header::ACCEPT_ENCODING, b"identity");
        let agent = crate::proxy::upstream_head::USER_AGENT;
        header_line(head, &header::USER_AGENT, agent.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    let deadline = Instant::now() + ASK_TIME;
    let body = OutgoingBody::from(bytes::Bytes::new());
    let response = provider.client.send(write_head, body, deadline).await?;
    if !response.status.is_success() {
        return Err(RefreshError::Status(response.status));
    }
    let list = http_body_util::Limited::new(response.body, MAX_LIST_BYTES)
        .collect()
        .await
        .map_err(|err| RefreshError::Body(err.to_string()))?
        .to_bytes();
    kept_ids(&list, secrets)
}

/// The ids of `list` the gateway may publish. A provider that quotes the
/// key it was sent, or any provider's key (`secrets`), in
/// an id or in text the parser's error repeats, must not put it in
/// `/v1/models`, the metrics or the log: such ids are left out, in any
/// letter case, and the error never repeats the provider's text.
fn kept_ids(list: &[u8], secrets: &[String]) -> Result<Vec<String>, RefreshError> {
    let quoting = std::cell::Cell::new(0);
    let quotes_no_key = |id: &str| {
        let quotes = secrets
            .iter()
            .any(|secret| key_redaction::find(id.as_bytes(), secret.as_bytes()).is_some());
        quoting.set(quoting.get() + usize::from(quotes));
        !quotes
    };
    let ids = listed_ids(list, quotes_no_key)
        .map_err(|err| RefreshError::Shape(unquoted(&err.to_string())))?;
    // A provider serves some model: a list of none is a fault of the
    // moment (an empty cache, a deploy), and taken as it is it would
    // unroute every model found until the next refresh.
    if ids.is_empty() {
        return Err(RefreshError::Empty(quoting.get()));
    }
    Ok(ids)
}

fn quoting_note(left_out: usize) -> String {
    match left_out {
        0 => String::new(),
        1 => " (1 id left out because it contains a provider's key)".into(),
        n => format!(" ({n} ids left out because they contain a provider's key)"),
    }
}

/// A parser's message without the text it quotes from the list (`invalid
/// type: string "..."`, or a number or character in backquotes): that
/// text is the provider's, and may hold the key in a form no search for
/// it finds (the parser escapes `"` and `\`).
fn unquoted(message: &str) -> String {
    let message = unquoted_by(message, '"');
    unquoted_by(&message, '`')
}

fn unquoted_by(message: &str, quote: char) -> String {
    match (message.find(quote), message.rfind(quote)) {
        (Some(first), Some(last)) => {
            format!(
                "{}(text not shown){}",
                &message[..first],
                &message[last + 1..]
            )
        }
        _ => message.to_string(),
    }
}

/// The usable ids of an OpenAI model list (`{"data":[{"id":...},...]}`)
/// that `kept` keeps, in its order, each once, at most [`MAX_IDS`].
fn listed_ids(list: &[u8], kept: impl Fn(&str) -> bool) -> Result<Vec<String>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<Listed>,
    }
    #[derive(serde::Deserialize)]
    struct Listed {
        #[serde(default)]
        id: Option<String>,
    }
    let list: List = serde_json::from_slice(list)?;
    let mut ids: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for id in list.data.into_iter().filter_map(|m| m.id) {
        let usable = crate::config::model_id::problem(&id).is_none();
        if usable && kept(&id) && seen.insert(id.clone()) {
            ids.push(id);
            if ids.len() == MAX_IDS {
                break;
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_list_gives_its_usable_ids_once_in_order() {
        let list = br#"{"object":"list","data":[
            {"id":"kimi-k2.6","object":"model","owned_by":"moonshot"},
            {"id":"kimi-k2.6"},
            {"object":"model"},
            {"id":""},
            {"id":"has space"},
            {"id":"moonshot/kimi-k3"}
        ]}"#;
        assert_eq!(
            listed_ids(list, |_| true).unwrap(),
            ["kimi-k2.6", "moonshot/kimi-k3"]
        );
    }

    #[test]
    fn anything_but_a_model_list_is_refused() {
        assert!(listed_ids(b"[]", |_| true).is_err());
        assert!(listed_ids(br#"{"models":[]}"#, |_| true).is_err());
        assert!(listed_ids(b"<html>", |_| true).is_err());
    }

    /// The providers' keys, one with capitals.
    fn secrets() -> Vec<String> {
        vec!["secret-key-123".into(), "SK-Other-Provider".into()]
    }

    #[test]
    fn a_list_that_quotes_the_key_publishes_and_logs_none_of_it() {
        let list = br#"{"data":[{"id":"kimi-secret-key-123"},{"id":"kimi-k2.6"}]}"#;
        assert_eq!(kept_ids(list, &secrets()).unwrap(), ["kimi-k2.6"]);
        // Another provider's key, or a key in other letters, is as bad.
        let list = br#"{"data":[{"id":"kimi-sk-other-provider"},{"id":"SECRET-KEY-123"},{"id":"kimi-k2.6"}]}"#;
        assert_eq!(kept_ids(list, &secrets()).unwrap(), ["kimi-k2.6"]);
        let list = br#"{"object":"list","data":"bad secret-key-123"}"#;
        let err = kept_ids(list, &secrets()).unwrap_err().to_string();
        assert_eq!(
            err,
            "not an OpenAI model list: invalid type: string (text not shown), \
             expected a sequence at line 1 column 44"
        );
        // A key the parser would escape in its message (`sk-"quoted\key`)
        // is not found by a search for it, and is not shown either.
        let list = br#"{"data":"Invalid key sk-\"quoted\\key"}"#;
        let err = kept_ids(list, &secrets()).unwrap_err().to_string();
        assert!(!err.contains("quoted"), "{err}");
    }

    #[test]
    fn a_long_list_is_cut_at_the_limit() {
        let data: Vec<String> = (0..MAX_IDS + 10)
            .map(|i| format!(r#"{{"id":"kimi-{i}"}}"#))
            .collect();
        let list = format!(r#"{{"data":[{}]}}"#, data.join(","));
        let ids = listed_ids(list.as_bytes(), |_| true).unwrap();
        assert_eq!(ids.len(), MAX_IDS);
        assert_eq!(ids[0], "kimi-0");
    }

    #[test]
    fn a_list_of_no_usable_model_is_a_failed_refresh() {
        for (list, message) in [
            (&br#"{"data":[]}"#[..], "the list names no usable model"),
            (
                br#"{"data":[{"id":""},{"object":"model"},{"id":"kimi-secret-key-123"}]}"#,
                "the list names no usable model (1 id left out because it contains a \
                 provider's key)",
            ),
        ] {
            let err = kept_ids(list, &secrets()).unwrap_err();
            assert!(matches!(err, RefreshError::Empty(_)), "{err}");
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn a_number_the_parser_quotes_is_not_shown_either() {
        let err = kept_ids(br#"{"data":[{"id":5}]}"#, &secrets())
            .unwrap_err()
            .to_string();
        assert!(!err.contains('5'), "{err}");
        assert!(err.contains("(text not shown)"), "{err}");
    }
}
