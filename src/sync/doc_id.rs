//! automerge-repo document ids: what they look like, how to make one, their URL.
//!
//! A document id is the bs58check encoding of 16 bytes: the Bitcoin base58 alphabet
//! applied to the 16 bytes followed by the first 4 bytes of SHA-256(SHA-256(bytes)).
//! automerge-repo 2.5.6 makes the 16 bytes with `uuid.v4()` (`generateAutomergeUrl` in
//! `packages/automerge-repo/src/AutomergeUrl.ts`) and encodes them with `bs58check`; a URL
//! is `automerge:<id>`. This module owns that format only; it stores and looks up nothing.
//!
//! Unlike `isValidDocumentId` in JS, which accepts any bs58check string, [`is_document_id`]
//! also requires exactly 16 bytes, as samod does (`samod-core/src/document_id.rs`).

use sha2::{Digest, Sha256};

/// The Bitcoin base58 alphabet.
const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Bytes in a document id before the checksum.
const ID_BYTES: usize = 16;

/// Bytes of checksum after the payload.
const CHECKSUM_BYTES: usize = 4;

/// Longer strings are refused before decoding (16 + 4 bytes take at most 28 characters).
const MAX_ID_CHARS: usize = 64;

/// The prefix of an automerge-repo URL.
pub const URL_PREFIX: &str = "automerge:";

/// True if `s` is a bs58check encoding of exactly 16 bytes with a correct checksum.
pub fn is_document_id(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_ID_CHARS {
        return false;
    }
    let Some(bytes) = base58_decode(s) else {
        return false;
    };
    if bytes.len() != ID_BYTES + CHECKSUM_BYTES {
        return false;
    }
    let (payload, checksum) = bytes.split_at(ID_BYTES);
    checksum == self::checksum(payload)
}

/// A fresh random document id, as `Repo.create()` makes one: 16 random bytes with the
/// version and variant bits of a UUID v4, in bs58check.
pub fn new_document_id() -> String {
    let mut bytes: [u8; ID_BYTES] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    encode_check(&bytes)
}

/// The automerge-repo URL of a document id: `automerge:<id>`.
pub fn url(id: &str) -> String {
    format!("{URL_PREFIX}{id}")
}

/// First 4 bytes of SHA-256(SHA-256(payload)).
fn checksum(payload: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let twice = Sha256::digest(Sha256::digest(payload));
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&twice[..CHECKSUM_BYTES]);
    out
}

/// bs58check encoding of `payload`.
fn encode_check(payload: &[u8]) -> String {
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(&checksum(payload));
    base58_encode(&bytes)
}

/// Base58 (Bitcoin alphabet): each leading zero byte becomes a `1`, the rest is the number
/// the bytes spell in big-endian, written in base 58.
fn base58_encode(bytes: &[u8]) -> String {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    // Base-58 digits of the number, least significant first.
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 138 / 100 + 1);
    for &byte in &bytes[zeros..] {
        let mut carry = u32::from(byte);
        for digit in digits.iter_mut() {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(
        digits
            .iter()
            .rev()
            .map(|&d| char::from(ALPHABET[usize::from(d)])),
    );
    out
}

/// Inverse of [`base58_encode`]; `None` if a character is not in the alphabet.
fn base58_decode(s: &str) -> Option<Vec<u8>> {
    let zeros = s.bytes().take_while(|&c| c == b'1').count();
    // Bytes of the number, least significant first.
    let mut bytes: Vec<u8> = Vec::with_capacity(s.len());
    for c in s.bytes().skip(zeros) {
        let mut carry = ALPHABET.iter().position(|&a| a == c)? as u32;
        for byte in bytes.iter_mut() {
            carry += u32::from(*byte) * 58;
            *byte = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let mut out = vec![0u8; zeros];
    out.extend(bytes.iter().rev());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids made by automerge-repo 2.5.6 in Node.js (`Repo.create()` for the first three,
    /// `generateAutomergeUrl()` for the last two), with the 16 bytes JS decodes them to.
    const JS_IDS: [(&str, &str); 5] = [
        (
            "2cqRtwUZjAWYz1vi9ZQypVhp58df",
            "74208482cbf048489381be9b7bb5a044",
        ),
        (
            "2yCTBbywut1xMamLCw7HG5PQRR2Y",
            "8d53b02b51ce4843ad3d35ea920df3c7",
        ),
        (
            "4SkgcLH33fvCYPdxjibCT8NMBdjG",
            "f735312478b74ad495f7f0d01399bb7c",
        ),
        (
            "2F3MCg8sBpBGNVaoQq8nkYwmQ146",
            "5927a672fda24b4ead755b2f661cc98d",
        ),
        (
            "2zvysT5UFVjbFmCbvjtgX7CdHX4m",
            "8f78d07cbffc40a0bcecf9dac28719cc",
        ),
    ];

    /// bs58check of edge-case payloads, computed by the `bs58check` package in Node.js.
    const JS_EDGES: [(&str, &str); 3] = [
        ("00000000000000000000000000000000", "11111111111111114Ki9Gx"),
        (
            "0000ff00000000000000000000000001",
            "11BaSpVYUmyTSqsqMrLCYxBwS4x",
        ),
        (
            "ffffffffffffffffffffffffffffffff",
            "4ZrjxJnU1LA5xSyrWMNuXTozYEvA",
        ),
    ];

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("test hex"))
            .collect()
    }

    #[test]
    fn ids_from_the_js_library_are_accepted() {
        for (id, hex) in JS_IDS {
            assert!(is_document_id(id), "{id}");
            let decoded = base58_decode(id).expect("valid base58");
            assert_eq!(&decoded[..ID_BYTES], unhex(hex).as_slice(), "{id}");
            assert_eq!(encode_check(&unhex(hex)), id);
        }
    }

    #[test]
    fn encoding_matches_js_bs58check_on_edge_cases() {
        for (hex, id) in JS_EDGES {
            assert_eq!(encode_check(&unhex(hex)), id, "{hex}");
            assert!(is_document_id(id), "{id}");
        }
    }

    #[test]
    fn mutated_ids_are_rejected() {
        for (id, _) in JS_IDS {
            let chars: Vec<char> = id.chars().collect();
            for i in 0..chars.len() {
                // Every other alphabet character in every position breaks the checksum.
                for &a in ALPHABET.iter() {
                    let a = char::from(a);
                    if a == chars[i] {
                        continue;
                    }
                    let mut changed = chars.clone();
                    changed[i] = a;
                    let changed: String = changed.into_iter().collect();
                    assert!(!is_document_id(&changed), "{changed}");
                }
                // Dropping a character.
                let mut shorter = chars.clone();
                shorter.remove(i);
                let shorter: String = shorter.into_iter().collect();
                assert!(!is_document_id(&shorter), "{shorter}");
            }
            assert!(!is_document_id(&format!("{id}1")));
            assert!(!is_document_id(&format!("1{id}")));
            assert!(!is_document_id(&id.to_lowercase()));
            assert!(!is_document_id(&url(id)));
        }
    }

    #[test]
    fn other_strings_are_rejected() {
        // Characters outside the alphabet (0, O, I, l), non-ASCII, empty, long.
        for s in [
            "",
            "0cqRtwUZjAWYz1vi9ZQypVhp58df",
            "2cqRtwUZjAWYz1vi9ZQypVhp58dO",
            "2cqRtwUZjAWYz1vi9ZQypVhp58dI",
            "2cqRtwUZjAWYz1vi9ZQypVhp58dl",
            "2cqRtwUZjAWYz1vi9ZQypVhp58d\u{e9}",
            "2cqRtwUZjAWYz1vi 9ZQypVhp58df",
            "74208482-cbf0-4848-9381-be9b7bb5a044",
        ] {
            assert!(!is_document_id(s), "{s:?}");
        }
        assert!(!is_document_id(&"z".repeat(10_000)));
    }

    #[test]
    fn valid_bs58check_of_another_length_is_rejected() {
        // From Node.js bs58check: 15 bytes, 17 bytes, and a 32-byte head hash as
        // automerge-repo writes heads in URLs.
        for s in [
            "13RdG935ESipHd59rhqRsXc4J",
            "1pEbmSWqJdBuPadRGm8tDbhpVsi",
            "e3qoozE4EMJqFS7g9DXzgjgJrg2V2yuQkQS7ZS3DoHcJDq2kj",
        ] {
            let bytes = base58_decode(s).expect("valid base58");
            let (payload, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
            assert_eq!(sum, checksum(payload), "{s} has a valid checksum");
            assert!(!is_document_id(s), "{s}");
        }
    }

    #[test]
    fn base58_round_trips() {
        let cases: [&[u8]; 6] = [
            &[],
            &[0],
            &[0, 0, 0],
            &[0, 1, 0],
            &[255; 20],
            &[
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
            ],
        ];
        for bytes in cases {
            let text = base58_encode(bytes);
            assert_eq!(base58_decode(&text).as_deref(), Some(bytes), "{text}");
        }
    }

    #[test]
    fn new_ids_are_valid_uuid_v4_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let id = new_document_id();
            assert!(is_document_id(&id), "{id}");
            let bytes = base58_decode(&id).expect("valid base58");
            assert_eq!(bytes[6] >> 4, 4, "{id}: UUID version 4");
            assert_eq!(bytes[8] >> 6, 0b10, "{id}: UUID variant");
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn url_has_the_automerge_prefix() {
        assert_eq!(
            url("2cqRtwUZjAWYz1vi9ZQypVhp58df"),
            "automerge:2cqRtwUZjAWYz1vi9ZQypVhp58df"
        );
    }
}
