//! Response header fields kept in their wire form (`name: value\r\n`),
//! handed to the server beside the response (not in its extensions: the
//! first extension allocates a map, a table and a box, ~1k instructions
//! with its drop) and written after the header map's fields.
//!
//! The fields every proxied response gets (the provider's, the rate-limit
//! headers, the ids) are appended as bytes: a `HeaderMap` insert hashes the
//! name (and for a name `http` does not know, builds one), and the server
//! then walked the map only to write the same bytes out again.
//!
//! Only checked bytes get in: names are [`HeaderName`]s or names from a
//! head `httparse` accepted, values are [`HeaderValue`]s, digits, or values
//! from such a head, so no field can end a line early.

use http::{HeaderName, HeaderValue};

/// Encoded fields, each `name: value\r\n`, names lowercase.
#[derive(Clone, Debug, Default)]
pub struct WireFields(Vec<u8>);

impl WireFields {
    /// Room for `bytes` more without growing.
    pub fn reserve(&mut self, bytes: usize) {
        self.0.reserve(bytes);
    }

    pub fn push(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.push_line(name.as_str().as_bytes(), |out| {
            out.extend_from_slice(value.as_bytes())
        });
    }

    pub fn push_u64(&mut self, name: &HeaderName, value: u64) {
        self.push_line(name.as_str().as_bytes(), |out| {
            out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes())
        });
    }

    /// A field whose value `write` appends: within the crate, for values
    /// built from digits and letters (rate-limit resets).
    pub(crate) fn push_with(&mut self, name: &HeaderName, write: impl FnOnce(&mut Vec<u8>)) {
        self.push_line(name.as_str().as_bytes(), write);
    }

    /// A field of a head `httparse` parsed: `name` lowercased by the
    /// caller, `value` as received (httparse admits no CR, LF or other
    /// control byte but tab in either).
    pub(crate) fn push_parsed(&mut self, name: &[u8], value: &[u8]) {
        debug_assert!(HeaderName::from_bytes(name).is_ok_and(|n| n.as_str().as_bytes() == name));
        debug_assert!(HeaderValue::from_bytes(value).is_ok());
        self.push_line(name, |out| out.extend_from_slice(value));
    }

    fn push_line(&mut self, name: &[u8], write_value: impl FnOnce(&mut Vec<u8>)) {
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(b": ");
        write_value(&mut self.0);
        self.0.extend_from_slice(b"\r\n");
    }

    /// Bytes encoded so far: a mark for [`WireFields::truncate`].
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Drops the fields pushed since `mark` (a [`WireFields::len`]).
    pub(crate) fn truncate(&mut self, mark: usize) {
        self.0.truncate(mark);
    }

    /// The encoded lines, as they go into the head.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Each field's name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0
            .split(|&b| b == b'\n')
            .filter_map(|line| line.strip_suffix(b"\r"))
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                Some((&line[..colon], &line[colon + 2..]))
            })
    }

    /// The first value of `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(field, _)| *field == name.as_bytes())
            .map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_lines_in_the_order_pushed() {
        let mut fields = WireFields::default();
        fields.push(
            &HeaderName::from_static("x-request-id"),
            &HeaderValue::from_static("req_1"),
        );
        fields.push_u64(&HeaderName::from_static("x-gateway-attempts"), 12);
        fields.push_with(&HeaderName::from_static("x-reset"), |out| {
            out.extend_from_slice(b"1.5s")
        });
        fields.push_parsed(b"retry-after", b"3");
        assert_eq!(
            fields.as_bytes(),
            b"x-request-id: req_1\r\nx-gateway-attempts: 12\r\nx-reset: 1.5s\r\nretry-after: 3\r\n"
        );
        assert_eq!(fields.get("x-gateway-attempts"), Some(&b"12"[..]));
        assert_eq!(fields.get("x-reset"), Some(&b"1.5s"[..]));
        assert_eq!(fields.get("missing"), None);
        assert_eq!(fields.iter().count(), 4);
    }
}
