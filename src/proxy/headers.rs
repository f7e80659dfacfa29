//! Which upstream response headers reach the client: everything but
//! hop-by-hop headers, cookies, account identifiers and headers the gateway
//! sets itself.

use super::key_redaction::redact_secrets;
use crate::client::Headers;
use crate::config::Provider;
use crate::wire_fields::WireFields;
use http::HeaderName;

/// Header names the gateway sets or reads on every request, parsed once
/// (a `&str` name is validated and hashed on each use).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
pub const X_GATEWAY_ATTEMPTS: HeaderName = HeaderName::from_static("x-gateway-attempts");
pub const X_GATEWAY_PROVIDER: HeaderName = HeaderName::from_static("x-gateway-provider");

/// Upstream response headers never forwarded: hop-by-hop (RFC 9110 7.6.1)
/// and framing, which the server writes itself; the state and identity of the
/// gateway's provider account; what the gateway sets itself; the
/// provider account's own rate limits, which are not the client's; and
/// policy a browser would apply to the gateway's own origin (cross-origin
/// access, HSTS, other services, site data, redirects, downloads): the
/// provider's say about its origin is not the gateway's.
fn is_dropped(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection"
            | b"keep-alive"
            | b"proxy-authenticate"
            | b"proxy-authorization"
            | b"proxy-connection"
            | b"te"
            | b"trailer"
            | b"transfer-encoding"
            | b"upgrade"
            | b"content-length"
            | b"set-cookie"
            | b"msh-uid"
            | b"msh-gid"
            | b"content-type"
            | b"date"
            | b"server"
            | b"x-request-id"
            | b"x-should-retry"
            | b"cache-control"
            | b"x-accel-buffering"
            | b"x-gateway-provider"
            | b"x-gateway-attempts"
            | b"x-upstream-request-id"
            | b"set-cookie2"
            | b"strict-transport-security"
            | b"alt-svc"
            | b"clear-site-data"
            | b"refresh"
            | b"location"
            | b"content-location"
            | b"content-disposition"
            | b"content-security-policy"
            | b"content-security-policy-report-only"
            | b"permissions-policy"
            | b"www-authenticate"
            | b"report-to"
            | b"nel"
    ) || name.starts_with(b"x-ratelimit-")
        || name.starts_with(b"access-control-")
        || name.starts_with(b"cross-origin-")
}

/// The names the providers give their id for a request, best first.
// Inlined into the copying loop, where it ran before the loop had two callers.
#[inline(always)]
fn request_id_rank(name: &[u8]) -> Option<u8> {
    match name {
        b"x-request-id" => Some(0),
        b"msh-request-id" => Some(1),
        b"request-id" => Some(2),
        b"x-amzn-requestid" => Some(3),
        _ => None,
    }
}

/// The provider's id for a request, under the best name it gave a usable
/// one.
pub fn provider_request_id(from: &Headers) -> Option<&[u8]> {
    from.iter()
        .filter(|(_, value)| crate::request_id::is_usable_id(value))
        .filter_map(|(name, value)| Some((request_id_rank(&name.to_ascii_lowercase())?, value)))
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, value)| value)
}

/// Most provider fields passed on to the client, and most bytes of them
/// (each `name: value` and its line end): past either the rest are left
/// out. A provider's own fields are a dozen and about a kilobyte; without
/// a bound a provider head of 64 KiB or 100 fields (what the gateway reads)
/// would reach clients that refuse it after the answer was made and billed
/// (Node's HTTP parser stops at 16 KiB and the OpenAI Node SDK retries that
/// as a connection failure; Python's `http.client` at 100 fields; nginx's
/// default `proxy_buffer_size` at 4 or 8 KiB).
pub const MAX_PASSED_FIELDS: usize = 32;
pub const MAX_PASSED_BYTES: usize = 4096;

/// Names longer than this are lowercased on the heap (no provider sends
/// one).
const SHORT_NAME: usize = 64;

/// Copies the forwardable headers of an upstream response into `to`, and
/// the provider's id for the request (found on the same pass: a lookup per
/// name the providers use would go over the fields again) as
/// `x-upstream-request-id`. Names are lowercased on the stack and matched
/// before anything is written. A value that quotes one of `provider`'s
/// keys has it replaced by `***`. Fields the provider's `Connection`
/// field names are hop-by-hop too (RFC 9110 7.6.1); providers send none
/// but `keep-alive`/`close`, so the fields are copied in one pass and
/// copied again, without those, only when a `Connection` field names
/// another. Returns the first coding found that the gateway cannot undo
/// (see [`Coding`]), on the same pass.
pub fn copy_response_headers<'a>(
    from: &'a Headers,
    to: &mut WireFields,
    provider: &Provider,
) -> Option<Coding<'a>> {
    let mark = to.len();
    match copy_fields(from, to, provider, None) {
        Ok(coding) => coding,
        Err(()) => {
            to.truncate(mark);
            // Every `Connection` field's tokens, lowercase, comma-separated.
            let listed: Vec<u8> = from
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(b"connection"))
                .flat_map(|(_, value)| value.iter().map(u8::to_ascii_lowercase).chain([b',']))
                .collect();
            copy_fields(from, to, provider, Some(&listed)).unwrap_or_default()
        }
    }
}

/// A coding in an answer's `Content-Encoding` (anything but `identity`:
/// the gateway asks for that) or `Transfer-Encoding` (anything but
/// `chunked`, which the client decodes): its field's name, and the coding.
pub type Coding<'a> = (&'static str, &'a [u8]);

/// The coding of one field, when it is one the gateway cannot undo.
fn coding_in<'a>(lower_name: &[u8], value: &'a [u8]) -> Option<Coding<'a>> {
    let (field, plain): (&'static str, &[u8]) = match lower_name {
        b"content-encoding" => ("Content-Encoding", b"identity"),
        b"transfer-encoding" => ("Transfer-Encoding", b"chunked"),
        _ => return None,
    };
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(plain))
        .map(|coding| (field, coding))
}

/// One copying pass. `Err`: a `Connection` field names other fields, and
/// `hop_by_hop` (the names the `Connection` fields list) was not given.
fn copy_fields<'a>(
    from: &'a Headers,
    to: &mut WireFields,
    provider: &Provider,
    hop_by_hop: Option<&[u8]>,
) -> Result<Option<Coding<'a>>, ()> {
    let mut coding = None;
    let mut request_id: Option<(u8, &[u8])> = None;
    let (mut passed_fields, mut passed_bytes, mut left_out) = (0, 0, 0);
    let mut lower = [0u8; SHORT_NAME];
    // Values shorter than every key cannot quote one: nearly all of them.
    let shortest_key = provider
        .keys
        .iter()
        .map(|key| key.secret.len())
        .min()
        .unwrap_or(usize::MAX);
    for (raw_name, value) in from.iter() {
        let long_name;
        let lower: &[u8] = match lower.get_mut(..raw_name.len()) {
            Some(lower) => {
                lower.copy_from_slice(raw_name);
                lower.make_ascii_lowercase();
                lower
            }
            None => {
                long_name = raw_name.to_ascii_lowercase();
                &long_name
            }
        };
        if let Some(rank) = request_id_rank(lower)
            && request_id.is_none_or(|(best, _)| rank < best)
            && crate::request_id::is_usable_id(value)
        {
            request_id = Some((rank, value));
        }
        if coding.is_none() {
            coding = coding_in(lower, value);
        }
        if is_dropped(lower) {
            if hop_by_hop.is_none() && lower == b"connection" && names_other_fields(value) {
                return Err(());
            }
            continue;
        }
        if hop_by_hop.is_some_and(|listed| lists(listed, lower)) {
            continue;
        }
        // A field named after the key (a name cannot be masked and stay a
        // field the client could make sense of) is not passed on.
        if lower.len() >= shortest_key && name_quotes_a_key(lower, provider) {
            continue;
        }
        let redacted = (value.len() >= shortest_key)
            .then(|| redact_secrets(value, provider))
            .flatten();
        let value = redacted.as_deref().unwrap_or(value);
        let wire_len = lower.len() + value.len() + 4;
        if passed_fields == MAX_PASSED_FIELDS || passed_bytes + wire_len > MAX_PASSED_BYTES {
            left_out += 1;
            continue;
        }
        passed_fields += 1;
        passed_bytes += wire_len;
        to.push_parsed(lower, value);
    }
    if left_out > 0 {
        tracing::debug!(
            provider = %provider.name,
            left_out,
            "provider response fields past {MAX_PASSED_FIELDS} or {MAX_PASSED_BYTES} bytes not passed on"
        );
    }
    if let Some((_, id)) = request_id {
        // Copied under the gateway's name too, so redacted like the rest.
        match (id.len() >= shortest_key)
            .then(|| redact_secrets(id, provider))
            .flatten()
        {
            Some(redacted) => to.push_parsed(X_UPSTREAM_REQUEST_ID.as_str().as_bytes(), &redacted),
            None => to.push_parsed(X_UPSTREAM_REQUEST_ID.as_str().as_bytes(), id),
        }
    }
    Ok(coding)
}

/// Whether a lowercase field name holds one of the provider's keys (in
/// any case: names are compared without it).
fn name_quotes_a_key(lower: &[u8], provider: &Provider) -> bool {
    // No allocation, and only where the key's first character is: a short
    // test key makes this run for most names.
    provider
        .keys
        .iter()
        .any(|key| super::key_redaction::find(lower, key.secret.as_bytes()).is_some())
}

/// Whether a `Connection` value names anything but `keep-alive` and
/// `close`.
fn names_other_fields(value: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|token| {
        let token = token.trim_ascii();
        !token.is_empty()
            && !token.eq_ignore_ascii_case(b"keep-alive")
            && !token.eq_ignore_ascii_case(b"close")
    })
}

/// Whether the comma-separated lowercase `listed` names `name`.
fn lists(listed: &[u8], name: &[u8]) -> bool {
    listed
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_provider;

    #[test]
    fn fields_the_connection_field_names_are_dropped() {
        let from = Headers::from_head(
            "HTTP/1.1 200 OK\r\nx-kept: 1\r\nX-Secret-Hop: 2\r\nConnection: keep-alive, X-Secret-Hop\r\nx-other-hop: 3\r\nconnection: x-other-hop\r\n\r\n",
        )
        .unwrap();
        let mut to = WireFields::default();
        to.push_parsed(b"x-before", b"0");
        copy_response_headers(&from, &mut to, &test_provider());
        assert_eq!(to.as_bytes(), b"x-before: 0\r\nx-kept: 1\r\n");
    }

    #[test]
    fn a_value_quoting_the_providers_key_has_it_redacted() {
        let from = Headers::from_head(
            "HTTP/1.1 200 OK\r\nx-debug-auth: Bearer secret-key-123\r\nx-short: secret\r\n\
             X-Secret-KEY-123-Seen: yes\r\n\r\n",
        )
        .unwrap();
        let mut to = WireFields::default();
        copy_response_headers(&from, &mut to, &test_provider());
        // A field named after the key, in any case, is left out.
        assert_eq!(
            to.as_bytes(),
            b"x-debug-auth: Bearer ***\r\nx-short: secret\r\n"
        );
    }

    #[test]
    fn the_providers_request_id_quoting_its_key_is_redacted_under_both_names() {
        let from =
            Headers::from_head("HTTP/1.1 200 OK\r\nMsh-Request-Id: m-secret-key-123\r\n\r\n")
                .unwrap();
        let mut to = WireFields::default();
        copy_response_headers(&from, &mut to, &test_provider());
        assert_eq!(
            to.as_bytes(),
            b"msh-request-id: m-***\r\nx-upstream-request-id: m-***\r\n"
        );
    }

    #[test]
    fn only_a_usable_provider_request_id_is_passed_on() {
        let long = "r".repeat(129);
        for (wire, upstream) in [
            // An empty id does not win over a real one of lower rank.
            (
                "x-request-id: \r\nmsh-request-id: real-1\r\n".to_string(),
                Some("real-1"),
            ),
            (
                format!("x-request-id: {long}\r\nmsh-request-id: real-2\r\n"),
                Some("real-2"),
            ),
            (format!("x-request-id: {long}\r\n"), None),
            ("x-request-id: a b\r\n".to_string(), None),
            ("x-request-id: caf\u{e9}\r\n".to_string(), None),
            (
                format!("x-request-id: {}\r\n", "r".repeat(128)),
                Some(&long[1..]),
            ),
        ] {
            let from = Headers::from_head(&format!("HTTP/1.1 500 Oops\r\n{wire}\r\n")).unwrap();
            let mut to = WireFields::default();
            copy_response_headers(&from, &mut to, &test_provider());
            let passed = to
                .iter()
                .find(|(name, _)| *name == b"x-upstream-request-id")
                .map(|(_, value)| value);
            assert_eq!(passed, upstream.map(str::as_bytes), "{wire:?}");
            assert_eq!(
                provider_request_id(&from),
                upstream.map(str::as_bytes),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn provider_fields_are_passed_on_up_to_their_bounds() {
        // Fields past the count are left out.
        let many: String = (0..MAX_PASSED_FIELDS + 5)
            .map(|i| format!("x-f{i}: v\r\n"))
            .collect();
        let from = Headers::from_head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).unwrap();
        let mut to = WireFields::default();
        copy_response_headers(&from, &mut to, &test_provider());
        assert_eq!(to.iter().count(), MAX_PASSED_FIELDS);
        assert_eq!(
            to.iter().last().unwrap().0,
            format!("x-f{}", MAX_PASSED_FIELDS - 1).as_bytes()
        );

        // A field that would take the bytes past theirs is left out, and
        // a smaller one after it still passes; the request id is passed on
        // whatever the rest took.
        let long = "a".repeat(MAX_PASSED_BYTES);
        let almost = "b".repeat(MAX_PASSED_BYTES - 100);
        let from = Headers::from_head(&format!(
            "HTTP/1.1 200 OK\r\nx-long: {long}\r\nx-almost: {almost}\r\nx-next: {almost}\r\nx-small: 1\r\nmsh-request-id: r-1\r\n\r\n"
        ))
        .unwrap();
        let mut to = WireFields::default();
        copy_response_headers(&from, &mut to, &test_provider());
        let names: Vec<&[u8]> = to.iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                &b"x-almost"[..],
                b"x-small",
                b"msh-request-id",
                b"x-upstream-request-id"
            ]
        );
        assert!(to.as_bytes().len() <= MAX_PASSED_BYTES + 128 + 30);
    }

    #[test]
    fn drops_private_and_hop_by_hop_headers() {
        let mut wire = String::from("HTTP/1.1 200 OK\r\n");
        for (k, v) in [
            ("msh-uid", "u1"),
            ("Msh-Gid", "g1"),
            ("set-cookie", "a=b"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("x-ratelimit-remaining-requests", "5"),
            ("msh-context-cache-id", "cache-1"),
            ("retry-after", "3"),
            ("Retry-After", "3"),
            // A gateway in front of another: its fields are this one's.
            ("x-gateway-provider", "moonshot"),
            ("X-Gateway-Attempts", "1"),
            ("x-upstream-request-id", "inner"),
            // Policy for the provider's origin, not the gateway's.
            ("Access-Control-Allow-Origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("Cross-Origin-Resource-Policy", "cross-origin"),
            ("strict-transport-security", "max-age=0"),
            ("alt-svc", "h3=\":443\""),
            ("clear-site-data", "\"*\""),
            ("refresh", "0;url=http://elsewhere"),
            ("location", "http://elsewhere"),
            ("content-disposition", "attachment"),
            ("content-security-policy", "default-src *"),
            ("set-cookie2", "a=b"),
            ("www-authenticate", "Bearer"),
        ] {
            wire.push_str(&format!("{k}: {v}\r\n"));
        }
        let from = Headers::from_head(&format!("{wire}\r\n")).unwrap();
        let mut to = WireFields::default();
        copy_response_headers(&from, &mut to, &test_provider());
        assert_eq!(
            to.as_bytes(),
            b"msh-context-cache-id: cache-1\r\nretry-after: 3\r\nretry-after: 3\r\n",
            "repeated fields all kept, names lowercased, no request id"
        );
    }

    #[test]
    fn finds_the_providers_request_id_under_its_best_name() {
        let ids = [
            ("x-amzn-requestid", "amzn"),
            ("request-id", "plain"),
            ("msh-request-id", "moonshot"),
            ("x-request-id", "openai"),
        ];
        for present in 1..=ids.len() {
            let mut wire = String::from("HTTP/1.1 200 OK\r\n");
            // In any order, in any case: the best name wins.
            for (name, value) in ids[..present].iter().rev().chain(&ids[..present]) {
                wire.push_str(&format!("{}: {value}\r\n", name.to_ascii_uppercase()));
            }
            let from = Headers::from_head(&format!("{wire}\r\n")).unwrap();
            let mut to = WireFields::default();
            copy_response_headers(&from, &mut to, &test_provider());
            let found = to.get("x-upstream-request-id");
            assert_eq!(found.unwrap(), ids[present - 1].1.as_bytes());
            assert_eq!(
                to.iter().count(),
                2 * present - 2 * usize::from(present == 4) + 1
            );
            // The provider's own `x-request-id` is not forwarded: the
            // gateway sets its own.
            assert!(to.get("x-request-id").is_none());
        }
    }

    #[test]
    fn long_names_are_copied_lowercased() {
        let name = "X-".to_string() + &"Long".repeat(30);
        let from = Headers::from_head(&format!("HTTP/1.1 200 OK\r\n{name}: v\r\n\r\n")).unwrap();
        let mut to = WireFields::default();
        copy_response_headers(&from, &mut to, &test_provider());
        assert_eq!(to.get(&name.to_ascii_lowercase()), Some(&b"v"[..]));
    }
}
