//! A provider's base URL checked before the gateway starts: an absolute
//! http(s) URL that can give a chat URL and be reached (a host and port
//! that can exist, no query, fragment or password), and shown in problems
//! without anything secret in it.

use super::{ChatUrl, ConfigProblem};
use http::HeaderValue;

/// Why a base URL is refused when it is not an absolute http(s) URL.
const NOT_A_URL: &str = "is not an http(s) URL";

/// A base URL as configured, without surrounding blanks or trailing slashes.
pub(super) fn normalized_base_url(base_url: &str) -> String {
    base_url.trim().trim_end_matches('/').to_string()
}

/// The chat URL of `base_url`, or a problem reported at `source` (the
/// URL shown without its password).
pub(super) fn check_base_url(
    base_url: &str,
    source: String,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ChatUrl> {
    let base_url = normalized_base_url(base_url);
    match chat_url(&base_url) {
        Ok(url) => Some(url),
        Err(why) if why == NOT_A_URL => {
            // Not a URL at all: the value may be anything, a key named in
            // `base_url_env` by mistake among them, so only its scheme (if
            // it has one) and its length are shown.
            let scheme = base_url
                .split_once("://")
                .map(|(scheme, _)| scheme)
                .filter(|s| {
                    (1..=16).contains(&s.len())
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                });
            let shown = match scheme {
                // The right scheme, but the rest does not parse.
                Some(scheme @ ("http" | "https")) => {
                    problems.push(ConfigProblem::new(
                        source,
                        format!(
                            "an `{scheme}` URL that does not parse (a space, an unclosed `[`, \
                             or a host name not in ASCII: write it in its `xn--` form)"
                        ),
                    ));
                    return None;
                }
                Some(scheme) => format!("a URL of scheme `{scheme}`"),
                None => format!(
                    "a value of {} characters (not shown)",
                    base_url.chars().count()
                ),
            };
            problems.push(ConfigProblem::new(source, format!("{shown} {why}")));
            None
        }
        Err(why) => {
            let shown = without_secrets(&base_url);
            problems.push(ConfigProblem::new(source, format!("{shown:?} {why}")));
            None
        }
    }
}

/// The provider's chat URL, `{base_url}/chat/completions`, or why
/// `base_url` cannot give one.
fn chat_url(base_url: &str) -> Result<ChatUrl, &'static str> {
    // `Uri` drops a fragment, and `/chat/completions` with it.
    if base_url.contains('#') {
        return Err(
            "has a fragment (`#`): the gateway adds `/chat/completions` to a base URL's path",
        );
    }
    let uri = http::Uri::try_from(format!("{base_url}/chat/completions")).map_err(|_| NOT_A_URL)?;
    let scheme = uri.scheme_str().ok_or(NOT_A_URL)?;
    if !matches!(scheme, "http" | "https") {
        return Err(NOT_A_URL);
    }
    if uri.query().is_some() {
        return Err("has a query (`?`): the gateway adds `/chat/completions` to a base URL's path");
    }
    // Every request would go to `…/chat/completions/chat/completions`.
    if uri.path().ends_with("/chat/completions/chat/completions") {
        return Err(
            "ends in `/chat/completions`: give the base URL (such as https://api.moonshot.ai/v1); the gateway adds `/chat/completions`",
        );
    }
    let authority = uri.authority().ok_or(NOT_A_URL)?.clone();
    if authority.as_str().contains('@') {
        return Err(
            "holds a user name or password, which the gateway does not send: give the key in the provider's key variable",
        );
    }
    if authority.host().is_empty() {
        return Err("has no host");
    }
    // A host whose last label is a number is an IPv4 address to resolvers
    // and browsers (no top-level domain is numeric); `Uri` takes
    // `256.256.256.256` as a name, which no connection could reach.
    let host = authority.host();
    let numeric_last_label = host
        .rsplit('.')
        .next()
        .is_some_and(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()));
    if numeric_last_label && host.parse::<std::net::Ipv4Addr>().is_err() {
        return Err("has a host that is not a valid IPv4 address (four numbers from 0 to 255)");
    }
    if let Some(inside) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        && inside.parse::<std::net::Ipv6Addr>().is_err()
    {
        return Err("has a host in brackets that is not a valid IPv6 address");
    }
    // `Uri` takes any run of digits or letters after the host's colon as
    // a port, and a connection to an impossible one could only fail.
    let port = &authority.as_str()[authority.host().len()..];
    // Digits only: `:+8080` parses as a number but goes out in `Host` as
    // written, which no server would take for its own.
    let digits = port.strip_prefix(':').unwrap_or(port);
    let port_ok = matches!(port, "" | ":")
        || (digits.bytes().all(|b| b.is_ascii_digit())
            && authority.port_u16().is_some_and(|p| p != 0));
    if !port_ok {
        return Err("has no valid port (1 to 65535)");
    }
    let origin = http::Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|_| NOT_A_URL)?;
    let path = http::Uri::try_from(uri.path()).map_err(|_| NOT_A_URL)?;
    Ok(ChatUrl {
        host: HeaderValue::from_str(authority.as_str()).map_err(|_| NOT_A_URL)?,
        origin,
        path,
    })
}

/// `url` for a message: a user name and password before the host, and a
/// query or fragment after the path, are replaced by `***`, so a secret put
/// there (`?api_key=...`) never reaches a log or `/readyz`.
fn without_secrets(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    let mut shown = match url[after_scheme..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..after_scheme], &url[after_scheme + at..]),
        None => url.to_string(),
    };
    if let Some(start) = shown.find(['?', '#']) {
        let mark = &shown[start..start + 1];
        shown = format!("{}{mark}***", &shown[..start]);
    }
    shown
}
