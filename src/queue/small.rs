//! A small message on the stack: serialized into it by `put`, copied out of the ring into it by
//! `get`, and moved between the two a word at a time (see `Ring::put_small`/`get_small`).
//!
//! The buffer is not zeroed first (a `put` of a `u64` would otherwise clear 256 bytes to write
//! one): only its first `len` bytes are ever read, and they are always written first.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

/// The largest small message, in bytes.
pub(crate) const SMALL: usize = 256;
const WORDS: usize = SMALL / 8;

/// Up to [`SMALL`] bytes, of which the first `len` are initialized; 8-aligned.
pub(crate) struct Small {
    // `len` comes first: with it after the words, LLVM merged its zeroing with the
    // uninitialized words into one `memset` of the whole buffer (seen in `get`).
    len: usize,
    words: MaybeUninit<[u64; WORDS]>,
}

impl Small {
    #[inline]
    pub(crate) fn new() -> Small {
        Small {
            len: 0,
            words: MaybeUninit::uninit(),
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn bytes_mut(&mut self) -> *mut u8 {
        self.words.as_mut_ptr() as *mut u8
    }

    #[inline]
    fn words_mut(&mut self) -> *mut u64 {
        self.words.as_mut_ptr() as *mut u64
    }

    /// Appends a byte; `false` (and nothing written) when the buffer is full.
    #[cfg(test)]
    pub(crate) fn push(&mut self, b: u8) -> bool {
        if self.len == SMALL {
            return false;
        }
        self.put_byte(b);
        true
    }

    /// Writes the byte at `len` (< SMALL) and counts it. A byte that starts a word zeroes the
    /// word first, so that the message's last word is always initialized up to its end (see
    /// [`padded_words`](Self::padded_words)).
    #[inline]
    fn put_byte(&mut self, b: u8) {
        let at = self.len;
        if at % 8 == 0 {
            // SAFETY: `at < SMALL`: the word is inside the buffer.
            unsafe { self.words_mut().add(at / 8).write(0) };
        }
        // SAFETY: `at < SMALL`: inside the buffer.
        unsafe { self.bytes_mut().add(at).write(b) };
        self.len = at + 1;
    }

    /// Appends `data`; `false` (and nothing written) when it does not fit.
    #[inline]
    pub(crate) fn extend(&mut self, data: &[u8]) -> bool {
        if data.len() > SMALL - self.len {
            return false;
        }
        for b in data {
            self.put_byte(*b);
        }
        true
    }

    /// The message, to overwrite bytes already written.
    #[inline]
    pub(crate) fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the first `len` bytes are initialized (every writer keeps this invariant),
        // and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.bytes_mut(), self.len) }
    }

    /// The message.
    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialized (every writer keeps this invariant).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    /// The message as whole words, the last one padded with zero bytes.
    #[inline]
    pub(crate) fn padded_words(&self) -> &[u64] {
        // SAFETY: the words holding the first `len` bytes are initialized to their end (the
        // writers zero a word before its first byte, or write it whole), and the buffer is
        // 8-aligned.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr() as *const u64, self.len.div_ceil(8))
        }
    }

    /// Sets the message to `len <= SMALL` bytes whose words (`len` rounded up to whole words)
    /// are `word(0)`, `word(1)`, ...; longer lengths are cut to `SMALL`.
    #[inline]
    pub(crate) fn fill_words(&mut self, len: usize, mut word: impl FnMut(usize) -> u64) {
        let len = len.min(SMALL);
        let words = self.words_mut();
        for i in 0..len.div_ceil(8) {
            // SAFETY: `i < SMALL / 8`: inside the buffer.
            unsafe { words.add(i).write(word(i)) };
        }
        self.len = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_extend_and_pad() {
        let mut s = Small::new();
        assert!(s.push(1));
        assert!(s.extend(&[2, 3, 4]));
        assert_eq!(s.as_bytes(), &[1, 2, 3, 4]);
        assert_eq!(
            s.padded_words(),
            &[u64::from_le_bytes([1, 2, 3, 4, 0, 0, 0, 0])]
        );
        assert!(!s.extend(&[0; SMALL]));
        assert_eq!(s.len(), 4);
        assert!(s.extend(&[9; SMALL - 4]));
        assert!(!s.push(0));
        assert_eq!(s.padded_words().len(), WORDS);
    }

    #[test]
    fn fill_words_sets_the_message() {
        let mut s = Small::new();
        s.fill_words(10, |i| u64::from_le_bytes([i as u8; 8]));
        assert_eq!(s.as_bytes(), &[0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        s.fill_words(SMALL + 100, |_| 7);
        assert_eq!(s.len(), SMALL);
    }
}
