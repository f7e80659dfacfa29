//! A key sent where a name goes: a client key (or a provider's) given as
//! the `model`, or as a segment of a path, is shown in the access line,
//! and in the error it quotes, as `***` (as a provider key quoted in an
//! error is). Only refusals that found no route are looked at (an unknown
//! model or path, a missing key), so served requests pay nothing.

use crate::access_log::AccessRecord;
use crate::config::Config;
use std::sync::Arc;

/// What a key is shown as.
const SHOWN: &str = "***";

/// Replaces in `record` a model or a path segment that is a key.
pub fn hide_in(record: &mut AccessRecord, config: &Config) {
    if record.status.is_success() || record.route.is_some() {
        return;
    }
    let mut found: Vec<Arc<str>> = Vec::new();
    if let Some(model) = record.model.as_mut()
        && is_key(config, model.name.as_bytes())
    {
        found.push(std::mem::replace(&mut model.name, SHOWN.into()));
    }
    let path = record.uri.path();
    let segments: Vec<&str> = path.split('/').collect();
    if path != crate::app::CHAT_PATH && segments.iter().any(|s| is_key(config, s.as_bytes())) {
        let shown: Vec<&str> = segments
            .iter()
            .map(|s| {
                if is_key(config, s.as_bytes()) {
                    SHOWN
                } else {
                    s
                }
            })
            .collect();
        found.extend(
            segments
                .iter()
                .filter(|s| is_key(config, s.as_bytes()))
                .map(|s| Arc::from(*s)),
        );
        // Rebuilt from the path alone: the query is never logged.
        if let Ok(uri) = http::Uri::try_from(shown.join("/")) {
            record.uri = uri;
        }
    }
    if let Some(error) = record.error.as_mut() {
        for key in &found {
            if error.message.contains(&**key) {
                error.message = error.message.replace(&**key, SHOWN).into();
            }
        }
    }
}

/// Whether `text` is one of the configured client keys or provider keys.
fn is_key(config: &Config, text: &[u8]) -> bool {
    if text.is_empty() {
        return false;
    }
    let provider_key = || {
        config
            .providers
            .iter()
            .flat_map(|p| &p.keys)
            .any(|key| key.secret.as_bytes() == text)
    };
    config.keys.find(text).is_some() || provider_key()
}
