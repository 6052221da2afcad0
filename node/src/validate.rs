//! Input rules of the API (DESIGN.md §7), checked before anything is proposed: a request
//! that breaks one gets `invalid_argument` (or `payload_too_large`) and changes nothing.

use std::collections::BTreeMap;

use crate::api_error::ApiError;

pub const MAX_SECRET_BYTES: usize = 500 * 1024;
pub const MAX_REPLICAS: u32 = 10_000;
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 128;
const MAX_LABEL_VALUE: usize = 1024;
const MAX_TARGET: usize = 255;

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}`.
pub fn name(kind: &str, n: &str) -> Result<(), ApiError> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{kind} name {:?} is invalid: use 1 to 64 of [a-zA-Z0-9_.-], starting with a letter or digit",
            truncate(n)
        )))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

pub fn labels(l: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if l.len() > MAX_LABELS {
        return Err(ApiError::invalid(format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in l {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && k.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'/'));
        if !key_ok {
            return Err(ApiError::invalid(format!(
                "label key {:?} is invalid: 1 to {MAX_LABEL_KEY} of [a-zA-Z0-9_.-/]",
                truncate(k)
            )));
        }
        if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "label {k:?}: value over {MAX_LABEL_VALUE} bytes or with control characters"
            )));
        }
    }
    Ok(())
}

/// A secret value: 1 byte to 500 KiB.
pub fn secret_size(len: usize) -> Result<u32, ApiError> {
    if len == 0 {
        return Err(ApiError::invalid("a secret value must not be empty"));
    }
    if len > MAX_SECRET_BYTES {
        return Err(ApiError::new(
            coffer_api::error::ErrorCode::PayloadTooLarge,
            format!("a secret value is at most {MAX_SECRET_BYTES} bytes (500 KiB); this one is {len}"),
        ));
    }
    Ok(len as u32)
}

/// A file name under a task's secrets directory: relative, no `..`, no empty parts.
pub fn target(t: &str) -> Result<(), ApiError> {
    let bad = |why: &str| Err(ApiError::invalid(format!("secret target {:?} {why}", truncate(t))));
    if t.is_empty() {
        return bad("is empty");
    }
    if t.len() > MAX_TARGET {
        return bad("is too long");
    }
    if t.starts_with('/') {
        return bad("is absolute: give a path relative to the task's secrets directory");
    }
    if t.contains('\0') || t.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    for part in t.split('/') {
        if part.is_empty() || part == "." {
            return bad("has an empty or '.' path component");
        }
        if part == ".." {
            return bad("escapes its directory ('..')");
        }
    }
    Ok(())
}

pub fn mode(m: u32) -> Result<(), ApiError> {
    if m > 0o777 {
        return Err(ApiError::invalid(format!("mode {m:o} is not a file permission (at most 0777)")));
    }
    Ok(())
}

pub fn replicas(r: u32) -> Result<(), ApiError> {
    if r > MAX_REPLICAS {
        return Err(ApiError::invalid(format!("at most {MAX_REPLICAS} replicas")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        for ok in ["a", "db_password", "A.b-c_9", &"x".repeat(64)] {
            name("secret", ok).expect(ok);
        }
        for bad in ["", "_x", ".x", "-x", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(name("secret", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets_stay_in_their_directory() {
        for ok in ["db", "conf/db.pem", "a.b"] {
            target(ok).expect(ok);
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\0b"] {
            assert!(target(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_and_modes() {
        assert!(secret_size(0).is_err());
        assert_eq!(secret_size(1).expect("1 byte"), 1);
        secret_size(MAX_SECRET_BYTES).expect("500 KiB");
        let e = secret_size(MAX_SECRET_BYTES + 1).expect_err("too big");
        assert_eq!(e.code, coffer_api::error::ErrorCode::PayloadTooLarge);
        mode(0o440).expect("mode");
        assert!(mode(0o1777).is_err());
    }
}
