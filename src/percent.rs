//! Text placed in a URL (a path segment, a password in `user:password@`): every byte but the
//! unreserved ones (RFC 3986: letters, digits, `-._~`) percent-encoded.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What stays as it is: the unreserved characters.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` with every byte but the unreserved ones percent-encoded.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_unreserved_bytes_stay() {
        assert_eq!(super::encode("saas-1.a_b~"), "saas-1.a_b~");
        assert_eq!(super::encode("a b/ü:@%"), "a%20b%2F%C3%BC%3A%40%25");
    }
}
