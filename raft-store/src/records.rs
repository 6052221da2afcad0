//! The records of a plaintext chunk, as snapshots and backups carry them: each record is a
//! key then a value, each field a 4-byte big-endian length and its bytes.

/// Appends one record to `chunk`; `None` (and nothing appended) for a field of 4 GiB or more.
pub(crate) fn add_record(chunk: &mut Vec<u8>, key: &[u8], value: &[u8]) -> Option<()> {
    let (k, v) = (u32::try_from(key.len()).ok()?, u32::try_from(value.len()).ok()?);
    for (n, field) in [(k, key), (v, value)] {
        chunk.extend_from_slice(&n.to_be_bytes());
        chunk.extend_from_slice(field);
    }
    Some(())
}

/// Splits a plaintext chunk into `(key, value)` records.
pub(crate) fn records(chunk: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), String>> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut take = || -> Result<&[u8], String> {
            if rest.len() < 4 {
                return Err("record length cut short".into());
            }
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() < 4 + n {
                return Err(format!("record of {n} bytes cut short"));
            }
            let (field, tail) = rest[4..].split_at(n);
            rest = tail;
            Ok(field)
        };
        let r = take().and_then(|k| Ok((k, take()?)));
        if r.is_err() {
            rest = &[];
        }
        Some(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written_and_a_cut_chunk_ends_in_an_error() {
        let mut chunk = Vec::new();
        add_record(&mut chunk, b"secret/1", b"sealed").expect("small record");
        add_record(&mut chunk, b"", b"an empty key is still a record").expect("small record");
        let read: Vec<_> = records(&chunk).collect::<Result<_, _>>().expect("whole chunk");
        assert_eq!(read, vec![(&b"secret/1"[..], &b"sealed"[..]), (&b""[..], &b"an empty key is still a record"[..])]);

        let cut: Vec<_> = records(&chunk[..chunk.len() - 1]).collect();
        assert_eq!(cut.len(), 2, "the error is the last item");
        assert!(cut[0].is_ok());
        assert_eq!(cut[1], Err("record of 30 bytes cut short".to_string()));
    }
}
