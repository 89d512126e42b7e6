//! What a document id is, for every interface of a node: the HTTP API's paths, the peer
//! protocol and automerge-repo clients (`GET /v1/sync`) all take the same ids.
//!
//! A leaf: [`crate::api`] and [`crate::sync`] both check ids here, so neither depends on
//! the other for it. Owns the rule only. automerge-repo's own ids (bs58check of 16 bytes,
//! made and recognised by [`crate::sync::doc_id`]) are a subset of these.

/// The longest document id accepted, in bytes.
pub const MAX_DOC_ID: usize = 256;

/// Whether `id` is a valid document id: `[A-Za-z0-9_.~-]{1,256}`, other than `.` and `..`
/// (path segments that URLs, proxies and file names treat as "here" and "up").
pub fn is_valid_doc_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= MAX_DOC_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'~' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_the_allowed_characters_up_to_the_limit() {
        for id in [
            "a",
            "doc-1",
            "A.b~c_d-9",
            "2DrjgbFdhNiSFCWQ4cyvxAzsYkTW",
            "...",
            ".a",
            "a..",
        ] {
            assert!(is_valid_doc_id(id), "{id}");
        }
        assert!(is_valid_doc_id(&"x".repeat(MAX_DOC_ID)));
    }

    #[test]
    fn empty_long_or_other_characters_are_refused() {
        assert!(!is_valid_doc_id(""));
        assert!(!is_valid_doc_id(&"x".repeat(MAX_DOC_ID + 1)));
        for id in [
            ".", "..", "a/b", "a b", "a%2F", "é", "a\0", "a:b", "a?b", "a#b",
        ] {
            assert!(!is_valid_doc_id(id), "{id:?}");
        }
    }
}
