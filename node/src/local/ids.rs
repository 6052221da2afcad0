//! Random identifiers: object ids, cluster ids, token ids and temporary names, all
//! lowercase hex from the operating system's CSPRNG.

use rand::RngCore;

/// `n` random bytes, in lowercase hex (`2n` characters).
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    data_encoding::HEXLOWER.encode(&b)
}

/// A fresh object id (secrets, services, tasks): 64 random bits.
pub fn new_id() -> String {
    random_hex(8)
}

/// A node id as people see it, in logs and on the command line: 16 lowercase hex digits
/// (fixed width; tables shorten it to 12, as Docker does). The API carries the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeHex(pub u64);

impl std::fmt::Display for NodeHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_hex_of_the_asked_length_and_differ() {
        let (a, b) = (super::new_id(), super::new_id());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert_eq!(super::NodeHex(0xabc).to_string(), "0000000000000abc");
    }
}
