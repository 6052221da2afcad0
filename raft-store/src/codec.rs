//! The on-disk encoding: postcard behind a one-byte format version.
//!
//! Every record this crate stores (log entries, Raft metadata, state-machine records,
//! snapshot chunks' headers) is `FORMAT_VERSION || postcard(value)` before it is sealed.
//! A reader that finds a newer version refuses with [`CodecError::NewerFormat`] instead of
//! misreading it; an older version would be migrated here (there is none yet).
//!
//! postcard is not self-describing: types encoded here avoid `#[serde(flatten)]`,
//! `untagged` and `skip_serializing_if`, and enums only ever gain variants at the end.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("record has format version {found}, newer than the {supported} this build reads; upgrade coffer")]
    NewerFormat { found: u8, supported: u8 },
    #[error("record has unknown format version {0}")]
    UnknownFormat(u8),
    #[error("record does not decode: {0}")]
    Malformed(String),
    #[error("record does not encode: {0}")]
    Encode(String),
}

/// Encodes `value` with the current format version in front.
///
/// # Errors
/// Only for types postcard cannot encode (a bug, reported rather than panicking).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    postcard::to_io(value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a record written by [`encode`] of this or an older release.
///
/// # Errors
/// [`CodecError::NewerFormat`] for data of a newer release, [`CodecError::Malformed`] for
/// bytes that do not decode (including trailing garbage).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        FORMAT_VERSION => {
            let (value, rest) = postcard::take_from_bytes(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
            if !rest.is_empty() {
                return Err(CodecError::Malformed(format!("{} trailing bytes", rest.len())));
            }
            Ok(value)
        }
        v if v > FORMAT_VERSION => Err(CodecError::NewerFormat { found: v, supported: FORMAT_VERSION }),
        v => Err(CodecError::UnknownFormat(v)),
    }
}

/// Checks that a record is of a format version this build reads, without decoding it.
///
/// # Errors
/// As [`decode`], for the version byte alone.
pub fn check_version(bytes: &[u8]) -> Result<(), CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(&FORMAT_VERSION) => Ok(()),
        Some(&v) if v > FORMAT_VERSION => Err(CodecError::NewerFormat { found: v, supported: FORMAT_VERSION }),
        Some(&v) => Err(CodecError::UnknownFormat(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        let bytes = encode(&(7u32, "x".to_string())).expect("encode");
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<(u32, String)>(&bytes).expect("decode"), (7, "x".to_string()));

        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        assert_eq!(
            decode::<(u32, String)>(&newer),
            Err(CodecError::NewerFormat { found: FORMAT_VERSION + 1, supported: FORMAT_VERSION })
        );
        assert_eq!(decode::<u32>(&[]), Err(CodecError::Empty));
        let mut trailing = bytes;
        trailing.push(0);
        assert!(matches!(decode::<(u32, String)>(&trailing), Err(CodecError::Malformed(_))));
        assert!(matches!(decode::<String>(&[FORMAT_VERSION, 0xff]), Err(CodecError::Malformed(_))));
    }
}
