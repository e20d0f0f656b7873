//! Pickle for plain data, to exchange values with Python processes (feature `pickle`).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Connection, ConnectionError};

impl Connection {
    /// Sends `value` as a pickle, as Python's `conn.send(obj)` does, so that a Python peer's
    /// `conn.recv()` reads it (feature `pickle`).
    ///
    /// For plain data: numbers, strings, bytes (`serde_bytes`), `Vec` and slices (Python
    /// lists), tuples, maps (dicts), `Option` (`None`), `bool`. A struct arrives as a dict of
    /// its fields, a unit enum variant as its name. Between Rust processes, [`send`](Self::send)
    /// (this crate's own format) is faster and carries handles; use this one for Python
    /// peers.
    ///
    /// # Errors
    /// [`ConnectionError::Encode`] when the value has no pickle form; otherwise as `send`.
    ///
    /// # Examples
    /// ```
    /// use std::collections::BTreeMap;
    /// let (a, b) = multiprocess::Pipe::new()?;
    /// a.send_pickle(&BTreeMap::from([("answer", 42)]))?;
    /// let back: BTreeMap<String, i64> = b.recv_pickle()?;
    /// assert_eq!(back["answer"], 42);
    /// # Ok::<(), multiprocess::ConnectionError>(())
    /// ```
    pub fn send_pickle<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), ConnectionError> {
        let bytes = serde_pickle::to_vec(&value, serde_pickle::SerOptions::new())
            .map_err(|e| ConnectionError::Encode(format!("as a pickle: {e}")))?;
        self.send_bytes(&bytes)
    }

    /// Receives a pickle, as sent by a Python peer's `conn.send(obj)` (any protocol up to 5),
    /// into `T` (feature `pickle`): a Python dict arrives as a struct (its keys naming the
    /// fields) or a map, a list or tuple as a `Vec` or tuple, `None` as `Option::None`.
    ///
    /// Only data is decoded; a pickle that names a class or function (which Python would
    /// import and call) is refused. Take pickles only from authenticated peers.
    ///
    /// # Errors
    /// [`ConnectionError::Decode`] when the message is not a pickle of a `T` (it is consumed);
    /// otherwise as [`recv`](Self::recv).
    pub fn recv_pickle<T: DeserializeOwned>(&self) -> Result<T, ConnectionError> {
        decode(&self.recv_bytes()?)
    }

    /// As [`recv_pickle`](Self::recv_pickle), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ConnectionError::Timeout`], or as `recv_pickle`.
    pub fn recv_pickle_timeout<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<T, ConnectionError> {
        decode(&self.recv_bytes_timeout(timeout)?)
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConnectionError> {
    serde_pickle::from_slice(bytes, serde_pickle::DeOptions::new()).map_err(|e| {
        ConnectionError::Decode(format!(
            "the message is not a pickle of {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}
