//! Session-ticket keys shared by a fleet, from files in the format of nginx's
//! `ssl_session_ticket_key`: 80 bytes (16 name, 32 HMAC secret, 32 AES key) or 48 bytes (16
//! name, 16 HMAC secret, 16 AES key), several keys concatenated allowed. Every replica given the
//! same files encrypts with the first key and decrypts with any of them, so a session made on
//! one resumes on the others, and keys rotate by listing the new one first and keeping the old
//! one until its tickets have expired.
//!
//! The files' format is nginx's; the tickets are Tollgate's own: `name (16) || nonce (12) ||
//! AES-256-GCM(ticket)`, the AEAD key derived with HKDF-SHA256 from the key's secret bytes and
//! the TLS policy the ticket was issued under. A ticket therefore resumes only under the policy
//! that issued it (a session made without a client-certificate request never resumes where one is
//! requested), the same separation per-policy random keys give a single process.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// How long a client may keep a ticket (rustls's own ticketer says 6 hours too). Rotation, not
/// this hint, is what ends a key's use.
const TICKET_LIFETIME_SECONDS: u32 = 6 * 60 * 60;
const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;

/// Why a ticket-key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    /// The length is not a whole number of 80- or 48-byte keys.
    #[error(
        "{0} bytes: expected 80-byte or 48-byte keys (nginx ssl_session_ticket_key format, e.g. \
         `openssl rand 80`)"
    )]
    Length(usize),
}

/// One key: its name (the ticket's first 16 bytes) and its secret.
#[derive(Clone)]
struct Key {
    name: [u8; NAME_LEN],
    secret: Vec<u8>,
}

/// The keys of a listener, in order: the first encrypts, every one decrypts.
#[derive(Clone, Default)]
pub struct TicketKeys {
    keys: Vec<Key>,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: the secrets stay out of logs.
        f.debug_list()
            .entries(self.keys.iter().map(|key| hex(&key.name)))
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TicketKeys {
    /// Appends the keys of one file's content.
    pub fn add_file(&mut self, bytes: &[u8]) -> Result<(), TicketKeyError> {
        let size = [80, 48]
            .into_iter()
            .find(|size| !bytes.is_empty() && bytes.len().is_multiple_of(*size))
            .ok_or(TicketKeyError::Length(bytes.len()))?;
        for chunk in bytes.chunks_exact(size) {
            let mut name = [0; NAME_LEN];
            name.copy_from_slice(&chunk[..NAME_LEN]);
            self.keys.push(Key {
                name,
                secret: chunk[NAME_LEN..].to_vec(),
            });
        }
        Ok(())
    }

    /// Whether no key was given.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The ticketer for the TLS policy whose stable fingerprint is `policy`.
    pub(super) fn ticketer(&self, policy: &[u8]) -> Ticketer {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, policy);
        let keys = self
            .keys
            .iter()
            .map(|key| {
                let mut aead_key = [0; 32];
                salt.extract(&key.secret)
                    .expand(&[b"tollgate session ticket"], hkdf::HKDF_SHA256)
                    .and_then(|okm| okm.fill(&mut aead_key))
                    .expect("32 bytes is a valid HKDF-SHA256 output length");
                let aead = LessSafeKey::new(
                    UnboundKey::new(&AES_256_GCM, &aead_key).expect("AES-256 takes 32 bytes"),
                );
                (key.name, aead)
            })
            .collect();
        Ticketer {
            keys,
            random: SystemRandom::new(),
        }
    }
}

/// A [`ProducesTickets`] over a listener's keys for one policy.
pub(super) struct Ticketer {
    keys: Vec<([u8; NAME_LEN], LessSafeKey)>,
    random: SystemRandom,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECONDS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (name, key) = self.keys.first()?;
        let mut nonce = [0; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(name);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        // The name is authenticated too.
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name),
            &mut sealed,
        )
        .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let (_, key) = self.keys.iter().find(|(key_name, _)| key_name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(name), &mut buffer)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(files: &[&[u8]]) -> TicketKeys {
        let mut keys = TicketKeys::default();
        for file in files {
            keys.add_file(file).unwrap();
        }
        keys
    }

    #[test]
    fn first_key_encrypts_every_key_decrypts() {
        let (old, new) = ([1u8; 80], [2u8; 48]);
        let before = keys(&[&old]).ticketer(b"policy");
        let rotated = keys(&[&new, &old]).ticketer(b"policy");
        let ticket = before.encrypt(b"session").unwrap();
        assert_eq!(rotated.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        let fresh = rotated.encrypt(b"later").unwrap();
        assert_eq!(&fresh[..16], &new[..16], "the first key encrypts");
        assert_eq!(before.decrypt(&fresh), None, "unknown key");
        let dropped = keys(&[&new]).ticketer(b"policy");
        assert_eq!(dropped.decrypt(&ticket), None, "old key no longer listed");
    }

    #[test]
    fn tickets_are_bound_to_their_policy_and_tamper_evident() {
        let file = [7u8; 80];
        let ticket = keys(&[&file]).ticketer(b"a").encrypt(b"session").unwrap();
        assert_eq!(keys(&[&file]).ticketer(b"b").decrypt(&ticket), None);
        let mut tampered = ticket.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(keys(&[&file]).ticketer(b"a").decrypt(&tampered), None);
        assert_eq!(keys(&[&file]).ticketer(b"a").decrypt(&ticket[..20]), None);
    }

    #[test]
    fn file_lengths_follow_nginx() {
        let mut keys = TicketKeys::default();
        assert!(keys.add_file(&[0; 160]).is_ok());
        assert!(keys.add_file(&[0; 96]).is_ok());
        assert!(keys.add_file(&[0; 81]).is_err());
        assert!(keys.add_file(&[]).is_err());
        assert_eq!(keys.keys.len(), 4);
    }
}
