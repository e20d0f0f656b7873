//! `Bytes`: a byte buffer that serializes as one block.

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte buffer that crosses processes as one block of bytes.
///
/// Serde writes a `Vec<u8>` element by element (it cannot tell bytes from any other sequence),
/// which costs about a nanosecond per byte in every format. `Bytes` serializes as a single byte
/// string instead: copied with `memcpy` on both sides. Use it for bulk data in messages, queue
/// items, task arguments and results; for raw bytes alone on a pipe,
/// [`Connection::send_bytes`](crate::Connection::send_bytes) avoids serde altogether.
///
/// # Examples
/// ```
/// use multiprocess::{Bytes, Pipe};
///
/// let (a, b) = Pipe::new()?;
/// a.send(&(7u32, Bytes::from(vec![1u8; 64 * 1024])))?; // fits the socket buffer: no reader yet
/// let (tag, data): (u32, Bytes) = b.recv()?;
/// assert_eq!((tag, data.len()), (7, 64 * 1024));
/// let raw: Vec<u8> = data.into_vec();
/// # let _ = raw;
/// # Ok::<(), multiprocess::ConnectionError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes(Vec<u8>);

impl Bytes {
    /// An empty buffer.
    pub fn new() -> Self {
        Bytes(Vec::new())
    }

    /// The bytes as a `Vec<u8>`.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        b.0
    }
}

impl Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(Bytes(v))
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_as_one_block() {
        let b = Bytes::from(vec![1u8, 2, 3]);
        let enc = crate::handle::encode(&b).unwrap();
        // The length (a u64) and the three bytes: no per-element encoding.
        assert_eq!(enc.bytes, [3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
        let back: Bytes = crate::handle::decode(&enc.bytes, Vec::new()).unwrap();
        assert_eq!(back, b);
    }
}
