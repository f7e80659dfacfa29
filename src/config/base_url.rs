//! A provider's base URL checked before the gateway starts: an absolute
//! http(s) URL that can give a chat URL and be reached (a host and port
//! that can exist, no query, fragment or password), and shown in problems
//! without anything secret in it.

use super::{ChatUrl, ConfigProblem};
use http::HeaderValue;

/// Why a base URL is refused when it is not an absolute http(s) URL.
const NOT_A_URL: &str = "is not an http(s) URL";
const USERINFO: &str = "holds a user name or password, which the gateway does not send: give the key in the provider's key variable";

/// Whether `url` has an `@` in its authority, or one after a `#` or `?`
/// that comes before any `/` (a password holding those characters).
fn has_userinfo(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let Some(at) = rest.rfind('@') else {
        return false;
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    at < authority_end
        || rest[..at]
            .find(['#', '?'])
            .is_some_and(|mark| mark < authority_end)
}

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
        Err(whys) if whys == [NOT_A_URL] => {
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
            problems.push(ConfigProblem::new(source, format!("{shown} {NOT_A_URL}")));
            None
        }
        Err(whys) => {
            let shown = without_secrets(&base_url);
            for why in whys {
                problems.push(ConfigProblem::new(&source, format!("{shown:?} {why}")));
            }
            None
        }
    }
}

/// The provider's chat URL, `{base_url}/chat/completions`, or every reason
/// `base_url` cannot give one (only [`NOT_A_URL`] when it does not parse).
fn chat_url(base_url: &str) -> Result<ChatUrl, Vec<&'static str>> {
    let not_a_url = || vec![NOT_A_URL];
    // A user name or password, even one holding a `#`, `?` or `/` (a
    // pasted password): said alone, since what else its characters seem
    // to be (a fragment, a port) is not what is wrong.
    if has_userinfo(base_url) {
        return Err(vec![USERINFO]);
    }
    let mut whys = Vec::new();
    // `Uri` drops a fragment, and `/chat/completions` with it; the rest is
    // checked without it.
    let base_url = match base_url.split_once('#') {
        Some((before, _)) => {
            whys.push(
                "has a fragment (`#`): the gateway adds `/chat/completions` to a base URL's path",
            );
            before
        }
        None => base_url,
    };
    let uri =
        http::Uri::try_from(format!("{base_url}/chat/completions")).map_err(|_| not_a_url())?;
    let scheme = uri.scheme_str().ok_or_else(not_a_url)?;
    if !matches!(scheme, "http" | "https") {
        return Err(not_a_url());
    }
    if uri.query().is_some() {
        whys.push("has a query (`?`): the gateway adds `/chat/completions` to a base URL's path");
    }
    // Every request would go to `…/chat/completions/chat/completions`.
    // With a query, what was appended went into it: the base's own path
    // is what is left.
    let ends_in_chat = match uri.query() {
        Some(_) => uri
            .path()
            .trim_end_matches('/')
            .ends_with("/chat/completions"),
        None => uri.path().ends_with("/chat/completions/chat/completions"),
    };
    if ends_in_chat {
        whys.push(
            "ends in `/chat/completions`: give the base URL (such as https://api.moonshot.ai/v1); the gateway adds `/chat/completions`",
        );
    }
    let authority = uri.authority().ok_or_else(not_a_url)?.clone();
    if authority.as_str().contains('@') {
        whys.push(USERINFO);
    }
    let host = authority.host();
    if host.is_empty() {
        whys.push("has no host");
    }
    // A host whose last label is a number is an IPv4 address to resolvers
    // and browsers (no top-level domain is numeric); `Uri` takes
    // `256.256.256.256` as a name, which no connection could reach.
    let numeric_last_label = host
        .rsplit('.')
        .next()
        .is_some_and(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()));
    if numeric_last_label && host.parse::<std::net::Ipv4Addr>().is_err() {
        whys.push("has a host that is not a valid IPv4 address (four numbers from 0 to 255)");
    }
    if let Some(inside) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        && inside.parse::<std::net::Ipv6Addr>().is_err()
    {
        whys.push("has a host in brackets that is not a valid IPv6 address");
    }
    // `Uri` takes any run of digits or letters after the host's colon as
    // a port, and a connection to an impossible one could only fail.
    let host_and_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    let port = host_and_port.get(host.len()..).unwrap_or_default();
    // Digits only: `:+8080` parses as a number but goes out in `Host` as
    // written, which no server would take for its own.
    let digits = port.strip_prefix(':').unwrap_or(port);
    let port_ok = matches!(port, "" | ":")
        || (digits.bytes().all(|b| b.is_ascii_digit())
            && authority.port_u16().is_some_and(|p| p != 0));
    if !port_ok {
        whys.push("has no valid port (1 to 65535)");
    }
    if !whys.is_empty() {
        return Err(whys);
    }
    let origin = http::Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|_| not_a_url())?;
    let path = http::Uri::try_from(uri.path()).map_err(|_| not_a_url())?;
    Ok(ChatUrl {
        host: HeaderValue::from_str(authority.as_str()).map_err(|_| not_a_url())?,
        origin,
        path,
    })
}

/// `url` for a message: a user name and password before the host, and a
/// query or fragment after the path, are replaced by `***`, so a secret put
/// there (`?api_key=...`) never reaches a log or `/readyz`.
fn without_secrets(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    // Up to the last `@`: a password may hold a `#`, `?` or `/` (an `@`
    // in a path, rare in a base URL, is masked with what comes before it).
    let mut shown = match url[after_scheme..].rfind('@') {
        Some(at) => format!("{}***{}", &url[..after_scheme], &url[after_scheme + at..]),
        None => url.to_string(),
    };
    if let Some(start) = shown.find(['?', '#']) {
        let mark = &shown[start..start + 1];
        shown = format!("{}{mark}***", &shown[..start]);
    }
    shown
}
