//! A key sent where a name goes: a client key (or a provider's) given as
//! the `model` (or a `/`-separated part of it), or as a segment of a path
//! (as sent or percent-decoded), is shown in the access line, and in the
//! error it quotes, as `***` (as a provider key quoted in an error is).
//! Only refusals that found no route are looked at (an unknown model or
//! path, a missing key), so served requests pay nothing.

use crate::access_log::AccessRecord;
use crate::config::Config;
use std::borrow::Cow;

/// What a key is shown as.
const SHOWN: &str = "***";

/// Whether `record` is a refusal that found no route, whose model and
/// path are looked at (checked before the configuration is, which every
/// request would pay for).
pub fn may_show_keys(record: &AccessRecord) -> bool {
    !record.status.is_success() && record.route.is_none()
}

/// Replaces in `record` a model or a path segment that is a key; `true`
/// when the error's message quoted one (the answer's body, which quotes
/// it too, is then to be written again from the error).
pub fn hide_in(record: &mut AccessRecord, config: &Config) -> bool {
    if !may_show_keys(record) {
        return false;
    }
    // Every form a key was found in, to be hidden in the error's message.
    let mut found: Vec<String> = Vec::new();
    if let Some(model) = record.model.as_mut() {
        let parts = hidden_parts(&model.name, config, &mut found);
        if let Some(shown) = parts {
            model.name = shown.into();
        }
    }
    let path = record.uri.path();
    if path != crate::app::CHAT_PATH
        && let Some(shown) = hidden_parts(path, config, &mut found)
        // Rebuilt from the path alone: the query is never logged.
        && let Ok(uri) = http::Uri::try_from(shown)
    {
        record.uri = uri;
    }
    let mut error_changed = false;
    if let Some(error) = record.error.as_mut() {
        for key in &found {
            if error.message.contains(key.as_str()) {
                error.message = error.message.replace(key.as_str(), SHOWN).into();
                error_changed = true;
            }
        }
    }
    error_changed
}

/// `text` with each `/`-separated part that is a key, as it is or
/// percent-decoded, replaced by `***`; `None` when no part is one. The
/// forms found are added to `found`.
fn hidden_parts(text: &str, config: &Config, found: &mut Vec<String>) -> Option<String> {
    let mut any = false;
    let parts: Vec<&str> = text
        .split('/')
        .map(|part| {
            let decoded = percent_encoding::percent_decode_str(part).decode_utf8_lossy();
            // The part as sent, decoded, and each piece of the decoded
            // part between slashes (`%2F` is a slash to the model lookup,
            // whose error quotes the name decoded).
            let mut candidates: Vec<&str> = vec![part];
            if matches!(decoded, Cow::Owned(_)) {
                candidates.push(&decoded);
                if decoded.contains('/') {
                    candidates.extend(decoded.split('/'));
                }
            }
            let mut hidden = false;
            for candidate in candidates {
                let trimmed = candidate.trim_matches(invisible);
                if is_key(config, candidate.as_bytes())
                    || (trimmed.len() != candidate.len() && is_key(config, trimmed.as_bytes()))
                {
                    hidden = true;
                    found.push(trimmed.to_string());
                    found.push(candidate.to_string());
                }
            }
            if hidden {
                any = true;
                found.push(part.to_string());
                found.push(decoded.into_owned());
                SHOWN
            } else {
                part
            }
        })
        .collect();
    any.then(|| parts.join("/"))
}

/// Characters that show nothing around a key, so do not make it another
/// text: controls (a NUL, a line break), spaces, and the invisible format
/// characters (zero-width space and joiners, direction marks, the BOM, a
/// soft hyphen).
fn invisible(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Whether `text` is one of the configured client keys or provider keys
/// (a provider's in any letter case: its text is held; a client key only
/// as its digest, so exactly).
pub fn is_key(config: &Config, text: &[u8]) -> bool {
    if text.is_empty() {
        return false;
    }
    let provider_key = || {
        config
            .providers
            .iter()
            .flat_map(|p| &p.keys)
            // In any letter case, as a quoted provider key is masked.
            .any(|key| key.secret.as_bytes().eq_ignore_ascii_case(text))
    };
    config.keys.find(text).is_some() || provider_key()
}

/// Whether `text` holds a configured provider key anywhere in it, in any
/// letter case: for a request id, which is sent on to every provider and
/// short enough (128 bytes at most) to search whole.
pub fn holds_provider_key(config: &Config, text: &[u8]) -> bool {
    config
        .providers
        .iter()
        .flat_map(|p| &p.keys)
        .map(|key| key.secret.as_bytes())
        .filter(|key| !key.is_empty() && key.len() <= text.len())
        .any(|key| {
            text.windows(key.len())
                .any(|window| window.eq_ignore_ascii_case(key))
        })
}
