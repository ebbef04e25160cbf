//! API keys: `ak_` and 64 hex digits (256 random bits). Only the SHA-256 of a key is
//! stored; a key is shown once, when it is created.
//!
//! Looking a key up by its hash does not leak the key through timing: an attacker who
//! learnt how many leading hash bytes matched would still need a preimage of SHA-256.

use airlock_core::Error;
use sha2::{Digest, Sha256};

use crate::store::{KeyInfo, KeyStore, NewKey, now_ms};

/// The prefix of every key.
pub const KEY_PREFIX: &str = "ak_";

/// Who is asking: an API key, or the unauthenticated local user (loopback only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id; `None` for the unauthenticated local user.
    pub key_id: Option<String>,
    /// Live sessions this principal may hold.
    pub max_sandboxes: u32,
}

impl Principal {
    /// The unauthenticated local user.
    pub fn local(max_sandboxes: u32) -> Self {
        Principal { key_id: None, max_sandboxes }
    }

    /// The principal of a stored key, with `default_max` when the key has no limit of its own.
    pub fn of_key(k: &KeyInfo, default_max: u32) -> Self {
        Principal { key_id: Some(k.id.clone()), max_sandboxes: k.max_sandboxes.unwrap_or(default_max) }
    }

    /// A short name for logs and messages.
    pub fn label(&self) -> &str {
        self.key_id.as_deref().unwrap_or("local")
    }
}

/// SHA-256 of a key, lowercase hex.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A fresh key from the operating system's random source.
pub fn generate_key() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::host(format!("reading random bytes: {e}")))?;
    let mut s = String::from(KEY_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

/// Creates and stores a key; returns the key (shown once) and its record.
pub fn create_key(store: &dyn KeyStore, name: &str, max_sandboxes: Option<u32>) -> Result<(String, KeyInfo), Error> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(|c| c.is_control()) {
        return Err(Error::invalid("a key name must be 1 to 100 printable characters"));
    }
    let key = generate_key()?;
    let new = NewKey {
        id: airlock_core::new_id("key"),
        name: name.to_string(),
        hash: hash_key(&key),
        prefix: key[..KEY_PREFIX.len() + 8].to_string(),
        max_sandboxes,
        created_at_ms: now_ms(),
    };
    store.create_key(&new)?;
    let info =
        store.key_by_hash(&new.hash)?.ok_or_else(|| Error::host("the key was stored but cannot be read back"))?;
    Ok((key, info))
}

/// Checks the shape of a presented key before any lookup, with a message saying what
/// is wrong.
pub fn check_shape(key: &str) -> Result<(), Error> {
    let hex = key.strip_prefix(KEY_PREFIX).ok_or_else(|| {
        Error::invalid(format!("an airlock API key starts with '{KEY_PREFIX}'; create one with `airlock keys create`"))
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid("an airlock API key is 'ak_' followed by 64 hex digits; check for a copy error"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[test]
    fn keys_are_random_and_well_formed() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        check_shape(&a).unwrap();
        assert!(check_shape("ak_123").is_err());
        assert!(check_shape("sk-abc").is_err());
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn created_keys_are_stored_hashed() {
        let s = SqliteStore::in_memory().unwrap();
        let (key, info) = create_key(&s, "laptop", Some(2)).unwrap();
        assert!(key.starts_with(&info.prefix));
        assert_eq!(s.key_by_hash(&hash_key(&key)).unwrap().unwrap().id, info.id);
        let listed = s.keys().unwrap();
        let dump = serde_json::to_string(&listed).unwrap();
        assert!(!dump.contains(&key[KEY_PREFIX.len() + 8..]), "the key itself was stored");
        assert!(create_key(&s, "  ", None).is_err());
    }
}
