//! Client keys: who is calling. A presented key is hashed with SHA-256 and
//! found by its digest, so the gateway never holds or compares the secret
//! itself; the digest comparison is constant-time. With no keys configured
//! the gateway is open (and says so loudly at start-up). A few public paths
//! (health, readiness, metrics) never need a key.

use crate::error::code;
use crate::error::{ErrorType, GatewayError};
use crate::limits::Scope;
use crate::state::AppState;
use axum::response::{IntoResponse, Response};
use foldhash::{HashMap, HashMapExt};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};
use std::sync::{Arc, LazyLock};
use subtle::ConstantTimeEq;

/// The models a key may use (looked up on every request).
pub type ModelSet = foldhash::HashSet<Box<str>>;

/// Paths served without a key even when keys are configured.
pub const PUBLIC_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The name logged for requests when the gateway runs without keys.
pub const ANONYMOUS: &str = "anonymous";

static ANONYMOUS_NAME: LazyLock<Arc<str>> = LazyLock::new(|| ANONYMOUS.into());
static NO_NAME: LazyLock<Arc<str>> = LazyLock::new(|| "".into());

/// One configured client key. Its secret is kept only as a digest.
pub struct ClientKey {
    /// The configured name: logged, never the key.
    pub name: Arc<str>,
    digest: [u8; 32],
    /// Route names this key may use; `None`: every one.
    pub models: Option<ModelSet>,
    /// `[keys.NAME.limits]`.
    pub limits: Option<Arc<Scope>>,
    /// `[keys.NAME.model_limits."MODEL"]`, by route name.
    pub model_limits: HashMap<Box<str>, Arc<Scope>>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    pub fn new(name: Arc<str>, digest: [u8; 32]) -> Self {
        ClientKey {
            name,
            digest,
            models: None,
            limits: None,
            model_limits: HashMap::new(),
        }
    }

    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }

    fn has_limits(&self) -> bool {
        self.limits.is_some() || !self.model_limits.is_empty()
    }
}

/// SHA-256 of a key, as stored.
pub fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Every configured key, by digest.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_digest: HashMap<[u8; 32], Arc<ClientKey>>,
}

impl KeyTable {
    /// Adds a key; `false` when another key has the same secret.
    pub fn insert(&mut self, key: ClientKey) -> bool {
        match self.by_digest.entry(key.digest) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Arc::new(key));
                true
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Every key, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ClientKey>> {
        self.by_digest.values()
    }

    pub fn any_limits(&self) -> bool {
        self.by_digest.values().any(|k| k.has_limits())
    }

    /// The key whose secret is `presented`. The map is keyed by digests, so
    /// its probing reveals nothing about secrets (learning a digest's bytes
    /// from timing would need SHA-256 preimages); the final comparison is
    /// constant-time all the same.
    pub fn find(&self, presented: &[u8]) -> Option<&Arc<ClientKey>> {
        let wanted = digest(presented);
        let key = self.by_digest.get(&wanted)?;
        bool::from(key.digest.ct_eq(&wanted)).then_some(key)
    }
}

/// Who is calling, in the request's extensions for the router's handlers
/// (the access log is handed the key's name directly).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name, or `anonymous` when the gateway runs open.
    pub key_name: Arc<str>,
    pub key: Option<Arc<ClientKey>>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Caller {
            key_name: ANONYMOUS_NAME.clone(),
            key: None,
        }
    }

    /// A caller on a public path of a gateway that has keys: no key is
    /// checked there, so none is named (the log's `key` is empty, as for a
    /// missing one; `anonymous` would say the gateway runs open).
    fn unchecked() -> Self {
        Caller {
            key_name: NO_NAME.clone(),
            key: None,
        }
    }

    /// Whether this caller may use the route name `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.key.as_ref().is_none_or(|key| key.may_use(model))
    }

    fn with_key(key: &Arc<ClientKey>) -> Self {
        Caller {
            key_name: key.name.clone(),
            key: Some(key.clone()),
        }
    }
}

/// Finds the caller's key, or the 401 to answer. Runs inside the request
/// context, so refusals are logged.
pub fn authenticate(
    state: &AppState,
    request: &http::request::Parts,
) -> Result<Caller, Unauthenticated> {
    let caller = {
        let config = state.peek_config();
        if config.keys.is_empty() {
            // A web page the user visits can make the browser POST to a
            // gateway on localhost (a form's or `fetch`'s simple request
            // needs no consent from the server), and spend its providers'
            // accounts. Browsers name the page's origin on such requests;
            // other clients do not. A keyed gateway needs no such check:
            // a browser adds no key to another origin's request.
            if request.headers.contains_key(header::ORIGIN)
                && !PUBLIC_PATHS.contains(&request.uri.path())
            {
                return Err(Unauthenticated::BrowserOnOpenGateway);
            }
            Caller::anonymous()
        } else if PUBLIC_PATHS.contains(&request.uri.path()) {
            Caller::unchecked()
        } else {
            match presented_key(&request.headers) {
                Err(twice) => return Err(Unauthenticated::NoKey(twice)),
                Ok(None) => {
                    return Err(Unauthenticated::NoKey(
                        "missing API key: send it as 'Authorization: Bearer <key>' or in 'x-api-key'",
                    ));
                }
                Ok(Some(presented)) => match config.keys.find(presented) {
                    Some(key) => Caller::with_key(key),
                    None => return Err(Unauthenticated::NoKey("invalid API key")),
                },
            }
        }
    };
    Ok(caller)
}

/// The key from `Authorization: Bearer …`, else from `x-api-key`. The
/// field read, given twice, is refused: which one counts would be the
/// reader's choice (a proxy in front that adds its own could be read
/// either way).
fn presented_key(headers: &HeaderMap) -> Result<Option<&[u8]>, &'static str> {
    let authorization = only_one(headers.get_all(header::AUTHORIZATION))?;
    let bearer = authorization.and_then(|value| {
        let bytes = value.as_bytes();
        let (scheme, rest) = bytes.split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
    });
    let key = match bearer {
        Some(key) => Some(key),
        None => match only_one(headers.get_all("x-api-key"))? {
            Some(value) => Some(value.as_bytes()),
            // A key sent in another form is not "missing": say which form.
            None if authorization.is_some() => {
                return Err(
                    "the Authorization header field is not 'Bearer <key>': send the key as \
                     'Authorization: Bearer <key>' or in 'x-api-key'",
                );
            }
            None => None,
        },
    };
    Ok(key
        .map(|key| key.trim_ascii())
        .filter(|key| !key.is_empty()))
}

/// Whether `text` is a key the request presents (`Authorization: Bearer`
/// or `x-api-key`), valid or not: it is the caller's secret either way.
pub fn is_presented_key(headers: &HeaderMap, text: &[u8]) -> bool {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|value| {
            let (scheme, rest) = value.as_bytes().split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        });
    let api_key = headers
        .get_all("x-api-key")
        .iter()
        .map(HeaderValue::as_bytes);
    bearer
        .chain(api_key)
        .any(|key| !key.trim_ascii().is_empty() && key.trim_ascii() == text)
}

/// A field's one value (or none); a second is refused.
fn only_one(
    values: http::header::GetAll<'_, HeaderValue>,
) -> Result<Option<&HeaderValue>, &'static str> {
    let mut values = values.iter();
    let first = values.next();
    match values.next() {
        Some(_) => Err("more than one Authorization or x-api-key header field: send the key once"),
        None => Ok(first),
    }
}

/// A caller the gateway does not serve.
#[derive(Debug)]
pub enum Unauthenticated {
    /// No usable key, and keys are configured: 401 with `WWW-Authenticate`.
    NoKey(&'static str),
    /// A browser's request (it names its page's `Origin`) to a gateway
    /// without keys: 403.
    BrowserOnOpenGateway,
}

impl Unauthenticated {
    /// The name the access log gives the caller: `anonymous` on a gateway
    /// that runs open, as for the requests it serves; none where a key was
    /// needed and not found.
    pub fn key_name(&self) -> Option<Arc<str>> {
        match self {
            Unauthenticated::NoKey(_) => None,
            Unauthenticated::BrowserOnOpenGateway => Some(ANONYMOUS_NAME.clone()),
        }
    }
}

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        match self {
            Unauthenticated::NoKey(why) => {
                let mut response = GatewayError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorType::InvalidAuthenticationError,
                    why,
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Unauthenticated::BrowserOnOpenGateway => GatewayError::new(
                StatusCode::FORBIDDEN,
                ErrorType::PermissionDeniedError,
                "a request from a web page (it has an Origin header field) is refused by a \
                 gateway without client keys: any page the user visits could send one; \
                 configure [keys] to serve browsers",
            )
            .with_code(code::BROWSER_REQUEST_REFUSED)
            .into_response(),
        }
    }
}

/// 403 for a key asking for a model it may not use.
pub fn model_not_allowed(caller: &Caller, model: &str) -> GatewayError {
    GatewayError::new(
        StatusCode::FORBIDDEN,
        ErrorType::PermissionDeniedError,
        format!(
            "key {} may not use model {:?}",
            caller.key_name,
            crate::proxy::request::shown_model(model)
        ),
    )
    .with_param("model")
    .with_code(code::MODEL_NOT_ALLOWED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_by_secret_only() {
        let mut table = KeyTable::default();
        assert!(table.insert(ClientKey::new("team-a".into(), digest(b"sk-a"))));
        assert!(!table.insert(ClientKey::new("dup".into(), digest(b"sk-a"))));
        assert_eq!(&*table.find(b"sk-a").unwrap().name, "team-a");
        assert!(table.find(b"sk-b").is_none());
        assert!(table.find(b"").is_none());
    }

    #[test]
    fn reads_bearer_then_x_api_key() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("sk-x"));
        assert_eq!(presented_key(&headers), Ok(Some(&b"sk-x"[..])));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer sk-b "),
        );
        assert_eq!(presented_key(&headers), Ok(Some(&b"sk-b"[..])));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&headers), Ok(Some(&b"sk-x"[..])));
        assert_eq!(presented_key(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn a_key_sent_in_another_form_is_named_as_such_not_missing() {
        for value in ["sk-a", "Basic c2stYQ==", "Bearer\tsk-a", "Bearersk-a"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            let refused = presented_key(&headers).expect_err(value);
            assert!(
                refused.contains("is not 'Bearer <key>'"),
                "{value}: {refused}"
            );
            assert!(!refused.contains("sk-a"), "the key is not echoed");
        }
        // An empty Bearer key is missing.
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(presented_key(&headers), Ok(None));
    }

    #[test]
    fn a_key_field_given_twice_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-a"),
        );
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-b"),
        );
        assert!(presented_key(&headers).is_err());
        let mut headers = HeaderMap::new();
        headers.append("x-api-key", HeaderValue::from_static("sk-a"));
        headers.append("x-api-key", HeaderValue::from_static("sk-a"));
        assert!(presented_key(&headers).is_err());
        // With a Bearer key, `x-api-key` is not read at all.
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-b"),
        );
        assert_eq!(presented_key(&headers), Ok(Some(&b"sk-b"[..])));
    }
}
