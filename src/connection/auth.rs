//! The authkey handshake of Python's `multiprocessing.connection`, step for step: a mutual
//! HMAC challenge and response (`deliver_challenge` / `answer_challenge` in CPython's
//! `connection.py`).
//!
//! ```text
//! deliverer                                  answerer
//! "#CHALLENGE#" + "{sha256}" + 40 random ->
//!                                         <- "{sha256}" + HMAC-SHA256(key, "{sha256}"+random)
//!                                            (a peer of Python <= 3.11: HMAC-MD5, 16 bytes)
//! "#WELCOME#" or "#FAILURE#"             ->
//! ```
//! A listener delivers first and then answers; a client answers first and then delivers.
//! Every frame of the handshake is at most 256 bytes (a longer one is refused at its header,
//! before it is read). A challenge of exactly 20 bytes is the legacy form of Python <= 3.11,
//! answered with a bare HMAC-MD5; a response of 16 bytes is a legacy answer, checked as
//! HMAC-MD5 over the whole challenge. The MAC covers the `{digest}` prefix, so a peer cannot
//! downgrade a prefixed challenge.

use std::fmt;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};

use super::{Connection, ConnectionError};

pub(crate) const CHALLENGE: &[u8] = b"#CHALLENGE#";
pub(crate) const WELCOME: &[u8] = b"#WELCOME#";
pub(crate) const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a challenge (CPython 3.12's `MESSAGE_LENGTH`).
const MESSAGE_LENGTH: usize = 40;
/// The length of a legacy challenge, and of a legacy (HMAC-MD5) response.
const MD5ONLY_MESSAGE_LENGTH: usize = 20;
const MD5_DIGEST_LEN: usize = 16;
/// The largest handshake frame either side reads (Python's `recv_bytes(256)`).
pub(crate) const MAX_FRAME: u64 = 256;

/// Why an authkey handshake failed (Python's `AuthenticationError`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthenticationError {
    /// The peer's answer to our challenge was wrong: it holds another key (Python's "digest
    /// received was wrong").
    DigestReceivedWrong,
    /// The peer rejected our answer to its challenge: we hold another key (Python's "digest
    /// sent was rejected").
    DigestSentRejected,
    /// The peer did not follow the protocol (not a challenge, a bad digest prefix, a
    /// response of the wrong length).
    Protocol(String),
    /// The handshake did not finish within its timeout.
    Timeout(Duration),
}

impl fmt::Display for AuthenticationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthenticationError::DigestReceivedWrong => {
                f.write_str("digest received was wrong: the peer does not hold this authkey")
            }
            AuthenticationError::DigestSentRejected => f.write_str(
                "digest sent was rejected: the peer holds another authkey than this one",
            ),
            AuthenticationError::Protocol(why) => write!(f, "authentication protocol error: {why}"),
            AuthenticationError::Timeout(t) => write!(
                f,
                "the authentication handshake did not finish within {t:?} (a peer that does \
                 not speak multiprocessing's protocol, or one that stalled)"
            ),
        }
    }
}

impl std::error::Error for AuthenticationError {}

/// A digest a `{name}` prefix may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digest {
    Md5,
    Sha256,
    Sha384,
}

impl Digest {
    fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
        }
    }

    fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            // HMAC takes keys of any length.
            let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message),
        }
    }
}

/// The digest a challenge or response names and its payload (CPython's
/// `_get_digest_name_and_payload`): `None` is the legacy form (HMAC-MD5, no prefix).
fn digest_and_payload(message: &[u8]) -> Result<(Option<Digest>, &[u8]), AuthenticationError> {
    if message.len() == MD5ONLY_MESSAGE_LENGTH || message.len() == MD5_DIGEST_LEN {
        return Ok((None, message));
    }
    if let Some(rest) = message.strip_prefix(b"{") {
        // The longest name Python allows is 8 bytes (`sha3_384`).
        if let Some(end) = rest.iter().take(9).position(|&b| b == b'}') {
            let digest = match &rest[..end] {
                b"md5" => Some(Digest::Md5),
                b"sha256" => Some(Digest::Sha256),
                b"sha384" => Some(Digest::Sha384),
                _ => None,
            };
            if let Some(d) = digest {
                return Ok((Some(d), &rest[end + 1..]));
            }
            return Err(AuthenticationError::Protocol(format!(
                "unsupported digest {:?} (this side supports md5, sha256 and sha384)",
                String::from_utf8_lossy(&rest[..end])
            )));
        }
    }
    Err(AuthenticationError::Protocol(format!(
        "unsupported message length {} or missing digest prefix",
        message.len()
    )))
}

/// The answer to a challenge `message` (CPython's `_create_response`).
pub(crate) fn create_response(key: &[u8], message: &[u8]) -> Result<Vec<u8>, AuthenticationError> {
    match digest_and_payload(message)?.0 {
        None => Ok(Digest::Md5.mac(key, message)),
        Some(d) => {
            let mut out = format!("{{{}}}", d.name()).into_bytes();
            out.extend_from_slice(&d.mac(key, message));
            Ok(out)
        }
    }
}

/// Checks the answer to our challenge `message` (CPython's `_verify_challenge`), in constant
/// time.
pub(crate) fn verify(
    key: &[u8],
    message: &[u8],
    response: &[u8],
) -> Result<(), AuthenticationError> {
    let (digest, mac) = digest_and_payload(response)?;
    let digest = digest.unwrap_or(Digest::Md5);
    let expected = digest.mac(key, message);
    if expected.len() != mac.len() {
        return Err(AuthenticationError::Protocol(format!(
            "expected a {} digest of {} bytes, got {}",
            digest.name(),
            expected.len(),
            mac.len()
        )));
    }
    let diff = expected
        .iter()
        .zip(mac)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if std::hint::black_box(diff) != 0 {
        return Err(AuthenticationError::DigestReceivedWrong);
    }
    Ok(())
}

/// A fresh challenge: `{sha256}` and 40 random bytes (never repeated: the kernel's random
/// source, per connection).
pub(crate) fn new_challenge() -> Vec<u8> {
    let mut message = b"{sha256}".to_vec();
    message.extend_from_slice(&crate::lifecycle::random_bytes(MESSAGE_LENGTH));
    message
}

fn auth(e: AuthenticationError) -> ConnectionError {
    ConnectionError::Authentication(e)
}

/// Sends our challenge (the first step of `deliver_challenge`); returns the message to verify
/// the answer against.
pub(crate) fn send_challenge(conn: &Connection) -> Result<Vec<u8>, ConnectionError> {
    let message = new_challenge();
    conn.send_encoded_parts(&[CHALLENGE, &message], &[])?;
    Ok(message)
}

/// Checks the peer's answer and tells it the outcome (the rest of `deliver_challenge`).
pub(crate) fn judge_response(
    conn: &Connection,
    key: &[u8],
    message: &[u8],
    response: &[u8],
) -> Result<(), ConnectionError> {
    match verify(key, message, response) {
        Ok(()) => conn.send_bytes(WELCOME),
        Err(e) => {
            let _ = conn.send_bytes(FAILURE);
            Err(auth(e))
        }
    }
}

/// Answers the peer's challenge frame (`answer_challenge` up to the verdict).
pub(crate) fn answer(conn: &Connection, key: &[u8], frame: &[u8]) -> Result<(), ConnectionError> {
    let Some(message) = frame.strip_prefix(CHALLENGE) else {
        return Err(auth(AuthenticationError::Protocol(format!(
            "expected a challenge, got {} bytes starting {:?}",
            frame.len(),
            String::from_utf8_lossy(&frame[..frame.len().min(16)])
        ))));
    };
    if message.len() < MD5ONLY_MESSAGE_LENGTH {
        return Err(auth(AuthenticationError::Protocol(format!(
            "challenge too short: {} bytes",
            message.len()
        ))));
    }
    conn.send_bytes(&create_response(key, message).map_err(auth)?)
}

/// The peer's verdict on our answer.
pub(crate) fn check_verdict(frame: &[u8]) -> Result<(), ConnectionError> {
    if frame == WELCOME {
        Ok(())
    } else {
        Err(auth(AuthenticationError::DigestSentRejected))
    }
}

/// Receives one handshake frame, by `deadline`.
pub(crate) fn recv_frame(
    conn: &Connection,
    deadline: Instant,
    limit: Duration,
) -> Result<Vec<u8>, ConnectionError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match conn.recv_bytes_timeout(left) {
        Err(ConnectionError::Timeout) => Err(auth(AuthenticationError::Timeout(limit))),
        other => other,
    }
}

/// The client's side, blocking until `timeout`: answer the listener's challenge, then
/// challenge it.
pub(crate) fn client_handshake(
    conn: &Connection,
    key: &[u8],
    timeout: Duration,
) -> Result<(), ConnectionError> {
    let deadline = Instant::now() + timeout;
    let previous = conn.max_message_len();
    conn.set_max_message_len(MAX_FRAME);
    let result = (|| {
        answer(conn, key, &recv_frame(conn, deadline, timeout)?)?;
        check_verdict(&recv_frame(conn, deadline, timeout)?)?;
        let message = send_challenge(conn)?;
        let response = recv_frame(conn, deadline, timeout)?;
        judge_response(conn, key, &message, &response)
    })();
    conn.set_max_message_len(previous);
    result
}

/// Where a listener's handshake with one client stands (it advances one frame at a time, so
/// that a slow client never holds up the others).
#[derive(Debug)]
pub(crate) enum ServerStep {
    /// Our challenge is sent; waiting for the answer to it.
    Response(Vec<u8>),
    /// We accepted its answer; waiting for its challenge.
    Challenge,
    /// We answered its challenge; waiting for its verdict.
    Verdict,
}

impl ServerStep {
    /// Sends the first challenge.
    pub(crate) fn start(conn: &Connection) -> Result<ServerStep, ConnectionError> {
        conn.set_max_message_len(MAX_FRAME);
        Ok(ServerStep::Response(send_challenge(conn)?))
    }

    /// Takes the next frame; `Ok(None)` when the handshake is complete.
    pub(crate) fn advance(
        self,
        conn: &Connection,
        key: &[u8],
        frame: &[u8],
    ) -> Result<Option<ServerStep>, ConnectionError> {
        match self {
            ServerStep::Response(message) => {
                judge_response(conn, key, &message, frame)?;
                Ok(Some(ServerStep::Challenge))
            }
            ServerStep::Challenge => {
                answer(conn, key, frame)?;
                Ok(Some(ServerStep::Verdict))
            }
            ServerStep::Verdict => {
                check_verdict(frame)?;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_prefixed_forms() {
        let key = b"secret";
        // A legacy (Python <= 3.11) challenge: 20 bytes, answered with a bare HMAC-MD5.
        let legacy = [7u8; 20];
        let r = create_response(key, &legacy).unwrap();
        assert_eq!(r.len(), 16);
        verify(key, &legacy, &r).unwrap();
        // A prefixed challenge, answered with the prefix and HMAC-SHA256.
        let modern = new_challenge();
        let r = create_response(key, &modern).unwrap();
        assert!(r.starts_with(b"{sha256}"));
        assert_eq!(r.len(), 8 + 32);
        verify(key, &modern, &r).unwrap();
        // An old peer answers a prefixed challenge with HMAC-MD5 over all of it.
        let md5 = Digest::Md5.mac(key, &modern);
        verify(key, &modern, &md5).unwrap();
        assert_eq!(
            verify(b"other", &modern, &r),
            Err(AuthenticationError::DigestReceivedWrong)
        );
        assert!(matches!(
            verify(key, &modern, b"{sha3_256}abc"),
            Err(AuthenticationError::Protocol(_))
        ));
        assert!(matches!(
            verify(key, &modern, b"garbage of an odd length"),
            Err(AuthenticationError::Protocol(_))
        ));
        // Two challenges never repeat.
        assert_ne!(new_challenge(), new_challenge());
    }

    #[test]
    fn known_hmac_vectors() {
        // RFC 2104 / RFC 4231 test case 2 ("Jefe").
        let md5 = Digest::Md5.mac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            md5,
            [
                0x75, 0x0c, 0x78, 0x3e, 0x6a, 0xb0, 0xb5, 0x03, 0xea, 0xa8, 0x6e, 0x31, 0x0a, 0x5d,
                0xb7, 0x38
            ]
        );
        let sha = Digest::Sha256.mac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sha[..8], [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e]);
    }
}
