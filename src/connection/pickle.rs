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
    check_shape(bytes).map_err(|why| {
        ConnectionError::Decode(format!(
            "the message is not a pickle this end accepts: {why}"
        ))
    })?;
    serde_pickle::from_slice(bytes, serde_pickle::DeOptions::new()).map_err(|e| {
        ConnectionError::Decode(format!(
            "the message is not a pickle of {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// The deepest nesting a received pickle may have. serde-pickle builds a tree of values and
/// both its decoding into `T` and the tree's drop recurse once per level: a peer's few hundred
/// kilobytes of `]]]]...aaaa` would otherwise overflow the stack and abort the process.
const MAX_DEPTH: u32 = 512;

/// What a value on the pickle machine's stack would become: its nesting depth and how many
/// values it holds once memo references are copied out (serde-pickle copies a memoized
/// value at each reference, so a few bytes could name 2^n values).
#[derive(Clone, Copy)]
struct Shape {
    depth: u32,
    values: u64,
}

const SCALAR: Shape = Shape {
    depth: 0,
    values: 1,
};
const CONTAINER: Shape = Shape {
    depth: 1,
    values: 1,
};

/// Runs the pickle machine over `p` with shapes instead of values, refusing a pickle whose
/// result would nest deeper than [`MAX_DEPTH`] or hold more than 64 values per byte of the
/// pickle, before anything is built. Malformed pickles are left to serde-pickle to refuse.
fn check_shape(p: &[u8]) -> Result<(), String> {
    let max_values = 64 * p.len() as u64 + 1024;
    let mut stack: Vec<Shape> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: std::collections::HashMap<u64, Shape> = std::collections::HashMap::new();
    let mut at = 0usize;
    let short = || "the pickle is cut short".to_string();
    let malformed = || "the pickle's opcodes do not fit together".to_string();
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= p.len())
            .ok_or_else(short)?;
        let s = &p[*at..end];
        *at = end;
        Ok(s)
    };
    let le = |b: &[u8]| {
        b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    };
    let line = |at: &mut usize| -> Result<&[u8], String> {
        let rest = &p[*at..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(short)?;
        *at += n + 1;
        Ok(&rest[..n])
    };
    // The memo index of PUT/GET (a decimal line), BINPUT/BINGET (1 byte), LONG_* (4 bytes).
    let memo_key = |at: &mut usize, op: u8| -> Result<u64, String> {
        match op {
            b'p' | b'g' => std::str::from_utf8(line(at)?)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(malformed),
            b'q' | b'h' => Ok(le(take(at, 1)?)),
            _ => Ok(le(take(at, 4)?)),
        }
    };
    let nest = |into: &mut Shape, child: Shape| {
        into.depth = into.depth.max(child.depth.saturating_add(1));
        into.values = into.values.saturating_add(child.values);
    };
    loop {
        let op = *p.get(at).ok_or_else(short)?;
        at += 1;
        match op {
            b'.' => return Ok(()),
            b'(' => marks.push(stack.len()),
            b'0' => {
                stack.pop().ok_or_else(malformed)?;
            }
            b'1' => {
                let m = marks.pop().ok_or_else(malformed)?;
                stack.truncate(m);
            }
            b'2' => stack.push(*stack.last().ok_or_else(malformed)?),
            // Scalars: no argument, or a fixed-size one.
            b'N' | b'\x88' | b'\x89' => stack.push(SCALAR),
            b'K' | b'M' | b'J' | b'G' | b'\x82' | b'\x83' | b'\x84' => {
                let size = match op {
                    b'K' | b'\x82' => 1,
                    b'M' | b'\x83' => 2,
                    b'J' | b'\x84' => 4,
                    _ => 8,
                };
                take(&mut at, size)?;
                stack.push(SCALAR);
            }
            // Scalars: arguments after a 1-, 4- or 8-byte length.
            b'U' | b'C' | b'\x8c' | b'\x8a' | b'T' | b'X' | b'B' | b'\x8b' | b'\x8d' | b'\x8e'
            | b'\x96' => {
                let width = match op {
                    b'U' | b'C' | b'\x8c' | b'\x8a' => 1,
                    b'T' | b'X' | b'B' | b'\x8b' => 4,
                    _ => 8,
                };
                let n = usize::try_from(le(take(&mut at, width)?)).map_err(|_| short())?;
                take(&mut at, n)?;
                stack.push(SCALAR);
            }
            // Scalars and names: newline-terminated arguments (protocol 0).
            b'I' | b'L' | b'F' | b'S' | b'V' | b'P' => {
                line(&mut at)?;
                stack.push(SCALAR);
            }
            b'c' => {
                line(&mut at)?;
                line(&mut at)?;
                stack.push(SCALAR);
            }
            b'\x80' => {
                take(&mut at, 1)?;
            }
            b'\x95' => {
                take(&mut at, 8)?;
            }
            b'\x98' => {}
            b'\x97' => stack.push(SCALAR),
            // Empty containers.
            b']' | b'}' | b')' | b'\x8f' => stack.push(CONTAINER),
            // Into the container below.
            b'a' | b'b' => {
                let item = stack.pop().ok_or_else(malformed)?;
                nest(stack.last_mut().ok_or_else(malformed)?, item);
            }
            b's' => {
                let v = stack.pop().ok_or_else(malformed)?;
                let k = stack.pop().ok_or_else(malformed)?;
                let into = stack.last_mut().ok_or_else(malformed)?;
                nest(into, k);
                nest(into, v);
            }
            b'e' | b'u' | b'\x90' => {
                let m = marks.pop().ok_or_else(malformed)?;
                let items: Vec<Shape> = stack.drain(m.min(stack.len())..).collect();
                let into = stack.last_mut().ok_or_else(malformed)?;
                for item in items {
                    nest(into, item);
                }
            }
            // New containers from the items above the mark, or from the top items.
            b'l' | b'd' | b't' | b'\x91' | b'o' | b'i' => {
                if op == b'i' {
                    line(&mut at)?;
                    line(&mut at)?;
                }
                let m = marks.pop().ok_or_else(malformed)?;
                let mut c = CONTAINER;
                for item in stack.drain(m.min(stack.len())..) {
                    nest(&mut c, item);
                }
                stack.push(c);
            }
            b'\x85' | b'\x86' | b'\x87' | b'R' | b'\x81' | b'\x93' | b'\x92' | b'Q' => {
                let n = match op {
                    b'\x85' | b'Q' => 1,
                    b'\x86' | b'R' | b'\x81' | b'\x93' => 2,
                    _ => 3,
                };
                let mut c = CONTAINER;
                for _ in 0..n {
                    nest(&mut c, stack.pop().ok_or_else(malformed)?);
                }
                stack.push(c);
            }
            // The memo.
            b'p' | b'q' | b'r' | b'\x94' => {
                let key = match op {
                    b'\x94' => memo.len() as u64,
                    _ => memo_key(&mut at, op)?,
                };
                memo.insert(key, *stack.last().ok_or_else(malformed)?);
            }
            b'g' | b'h' | b'j' => {
                let key = memo_key(&mut at, op)?;
                stack.push(*memo.get(&key).ok_or_else(malformed)?);
            }
            other => return Err(format!("unknown pickle opcode {other:#04x}")),
        }
        if let Some(top) = stack.last() {
            if top.depth > MAX_DEPTH {
                return Err(format!(
                    "values nest deeper than {MAX_DEPTH} levels (refused before decoding)"
                ));
            }
            if top.values > max_values {
                return Err(format!(
                    "memo references would expand it to more than {max_values} values \
                     (refused before decoding)"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_shape;

    fn nested(n: usize) -> Vec<u8> {
        let mut p = vec![0x80u8, 2];
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        p
    }

    #[test]
    fn deep_and_exploding_pickles_are_refused_before_decoding() {
        assert!(check_shape(&nested(100)).is_ok());
        assert!(check_shape(&nested(100_000)).is_err());
        // L0 = []; Lk = [Lk-1, Lk-1] through memo references: 2^40 values in ~300 bytes.
        let mut p = vec![0x80u8, 2, b']', b'q', 0];
        for k in 1..40u8 {
            p.extend_from_slice(&[b']', b'h', k - 1, b'a', b'h', k - 1, b'a', b'q', k]);
        }
        p.push(b'.');
        let e = check_shape(&p).unwrap_err();
        assert!(e.contains("memo"), "{e}");
        // Ordinary pickles pass.
        let ok = serde_pickle::to_vec(
            &vec![(1, "a".to_string()), (2, "b".to_string())],
            serde_pickle::SerOptions::new(),
        )
        .unwrap();
        assert!(check_shape(&ok).is_ok());
        // Cut short, or an unknown opcode: refused, never a panic.
        for cut in 0..ok.len() {
            let _ = check_shape(&ok[..cut]);
        }
        assert!(check_shape(b"\xff.").is_err());
    }

    #[test]
    fn a_deep_pickle_through_a_connection_is_an_error_not_an_abort() {
        let (a, b) = crate::Pipe::new().unwrap();
        let p = nested(300_000);
        let t = std::thread::spawn(move || a.send_bytes(&p));
        let e = b.recv_pickle::<Vec<i32>>().unwrap_err();
        assert!(e.to_string().contains("deeper"), "{e}");
        t.join().unwrap().unwrap();
    }
}
