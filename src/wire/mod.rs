//! The crate's wire format: every value that crosses a process (Process arguments and
//! results, Connection messages, Queue items, Pool arguments and results) is encoded here, by
//! one serde format with one set of limits and one set of error messages.
//!
//! Values are encoded and decoded by processes running the same executable, so the format
//! needs no self-description and no compactness tricks: every value is written at its natural
//! fixed width, little-endian. Measured on 1,000,000 `u64`s, postcard's varints cost about
//! 10 ns per value to encode and 7-10 ns to decode; this format costs about a nanosecond (a
//! bounds check and an 8-byte copy), at the price of more bytes for small integers, which
//! shared memory carries for free.
//!
//! | value | bytes |
//! |---|---|
//! | `bool`, `u8`, `i8` | 1 |
//! | `u16`..`u128`, `i16`..`i128`, `f32`, `f64` | their width, little-endian (NaN bits kept) |
//! | `char` | its code point as a `u32` |
//! | `str`, bytes, sequences, maps | a `u64` length (bytes, elements, entries), then the contents |
//! | `Option` | a `u8` tag (0: `None`, 1: `Some`), then the value |
//! | enum | a `u32` variant index, then the variant's fields |
//! | unit, unit struct | nothing |
//! | tuples, structs, newtypes | their fields in order |
//!
//! A sequence or map of unknown length (an iterator without an exact size) gets its length
//! written after its elements, into the place kept for it. Shapes that a format can only
//! decode by asking the bytes what comes next (`deserialize_any`: internally or adjacently
//! tagged and untagged enums, `#[serde(flatten)]`, `serde_json::Value`) and structs that skip fields
//! (`skip_serializing_if`) go through [`Dynamic`], a self-describing encoding of one value
//! nested in this one ([`dynamic`]). Errors name the path to the failing field and point to
//! `Dynamic` where it is the fix.
//!
//! Handles inside values work as with every crate encoding: run the encoding inside
//! [`handle::collecting`] and the decoding inside [`handle::receiving`] (the `encode_*`/`decode`
//! helpers here do).

pub(crate) mod dynamic;

pub use dynamic::Dynamic;

use std::fmt;
use std::os::fd::{OwnedFd, RawFd};

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

use crate::handle;

/// Why a value could not be encoded or decoded: a message, and the path from the top of the
/// value to where it failed (built on the way out, so the success path pays nothing).
pub(crate) struct WireError(Box<Inner>);

struct Inner {
    message: String,
    /// Innermost first: "field `kind` of `Event`", "element 3", ...
    path: Vec<String>,
}

impl WireError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        WireError(Box::new(Inner {
            message: message.into(),
            path: Vec::new(),
        }))
    }

    /// Adds the place one level up the value.
    #[cold]
    pub(crate) fn within(mut self, place: impl FnOnce() -> String) -> Self {
        if self.0.path.len() < 32 {
            self.0.path.push(place());
        }
        self
    }

    /// The message and the path, as one line.
    pub(crate) fn into_message(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)?;
        for (i, place) in self.0.path.iter().enumerate() {
            f.write_str(if i == 0 { " (in " } else { ", in " })?;
            f.write_str(place)?;
        }
        if !self.0.path.is_empty() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl fmt::Debug for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WireError({self})")
    }
}

impl std::error::Error for WireError {}

impl ser::Error for WireError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WireError::new(msg.to_string())
    }
}

impl de::Error for WireError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WireError::new(msg.to_string())
    }
}

/// What to do about a shape the compact format cannot carry.
pub(crate) const USE_DYNAMIC: &str = "wrap the value, or the field, in `multiprocess::Dynamic` \
     (a self-describing encoding for that value only)";

type Result<T> = std::result::Result<T, WireError>;

// ---------------------------------------------------------------------------------------------
// Encoding

/// Where encoded bytes go.
pub(crate) trait Out {
    fn put(&mut self, bytes: &[u8]) -> Result<()>;
    /// How many bytes were put so far.
    fn pos(&self) -> usize;
    /// Overwrites 8 bytes put earlier at `at` (a length written after its elements).
    fn patch(&mut self, at: usize, bytes: [u8; 8]) -> Result<()>;
}

impl Out for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }
    fn pos(&self) -> usize {
        self.len()
    }
    fn patch(&mut self, at: usize, bytes: [u8; 8]) -> Result<()> {
        patch_slice(self, at, bytes)
    }
}

/// Overwrites `buf[at..at + 8]`.
pub(crate) fn patch_slice(buf: &mut [u8], at: usize, bytes: [u8; 8]) -> Result<()> {
    match buf.get_mut(at..at.saturating_add(8)) {
        Some(dst) => {
            dst.copy_from_slice(&bytes);
            Ok(())
        }
        None => Err(WireError::new(
            "a length to fill in lies outside the encoding",
        )),
    }
}

/// Counts the bytes an encoding takes (a first pass, so that the buffer is sized once).
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Out for Counter {
    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.0 += bytes.len();
        Ok(())
    }
    fn pos(&self) -> usize {
        self.0
    }
    fn patch(&mut self, _: usize, _: [u8; 8]) -> Result<()> {
        Ok(())
    }
}

/// Writes into a fixed buffer; running past its end is an error.
#[derive(Debug)]
pub(crate) struct SliceOut<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) pos: usize,
}

impl Out for SliceOut<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let end = self.pos + bytes.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
                Ok(())
            }
            None => Err(WireError::new("the encoding outgrew its buffer")),
        }
    }
    fn pos(&self) -> usize {
        self.pos
    }
    fn patch(&mut self, at: usize, bytes: [u8; 8]) -> Result<()> {
        patch_slice(&mut self.buf[..self.pos], at, bytes)
    }
}

/// The number of bytes `value` encodes to, and the number of handles inside it.
pub(crate) fn measure<T: Serialize + ?Sized>(value: &T) -> Result<(usize, usize)> {
    let mut ser = Ser { out: Counter(0) };
    let (r, fds) = handle::collecting(|| value.serialize(&mut ser));
    r?;
    Ok((ser.out.0, fds.len()))
}

/// Appends the encoding of `value` to `out`; returns the descriptors of the handles inside it
/// (borrowed from `value`). A counting pass sizes `out` once, then the value is written in
/// place (far cheaper than growing a buffer by doubling, or pushing byte by byte).
pub(crate) fn encode_into_vec<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<Vec<RawFd>> {
    // `Dynamic` values encoded by the counting pass are kept for the writing pass.
    let kept = dynamic::keep_encodings();
    let (len, _) = measure(value)?;
    if let Some(k) = &kept {
        k.now_writing();
    }
    let start = out.len();
    out.resize(start + len, 0);
    match encode_into_slice(value, &mut out[start..]) {
        Ok((n, fds)) if n == len => Ok(fds),
        Ok(_) => {
            out.truncate(start);
            Err(WireError::new(
                "the value encoded to another length than measured",
            ))
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Encodes `value` into the front of `buf`; returns the length written and the descriptors.
pub(crate) fn encode_into_slice<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut [u8],
) -> Result<(usize, Vec<RawFd>)> {
    let mut ser = Ser {
        out: SliceOut { buf, pos: 0 },
    };
    let (r, fds) = handle::collecting(|| value.serialize(&mut ser));
    r?;
    Ok((ser.out.pos, fds))
}

impl<O: Out + ?Sized> Out for &mut O {
    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        (**self).put(bytes)
    }
    fn pos(&self) -> usize {
        (**self).pos()
    }
    fn patch(&mut self, at: usize, bytes: [u8; 8]) -> Result<()> {
        (**self).patch(at, bytes)
    }
}

/// The serializer.
pub(crate) struct Ser<O> {
    pub(crate) out: O,
}

impl<O: Out> Ser<O> {
    #[inline]
    fn len(&mut self, n: usize) -> Result<()> {
        self.out.put(&(n as u64).to_le_bytes())
    }
}

impl<'a, O: Out> ser::Serializer for &'a mut Ser<O> {
    type Ok = ();
    type Error = WireError;
    type SerializeSeq = Many<'a, O>;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Many<'a, O>;
    type SerializeStruct = Fields<'a, O>;
    type SerializeStructVariant = Fields<'a, O>;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<()> {
        self.out.put(&[u8::from(v)])
    }
    #[inline]
    fn serialize_i8(self, v: i8) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_i16(self, v: i16) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_i32(self, v: i32) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_i128(self, v: i128) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<()> {
        self.out.put(&[v])
    }
    #[inline]
    fn serialize_u16(self, v: u16) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_u32(self, v: u32) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_u128(self, v: u128) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_f32(self, v: f32) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<()> {
        self.out.put(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_char(self, v: char) -> Result<()> {
        self.out.put(&u32::from(v).to_le_bytes())
    }
    fn serialize_str(self, v: &str) -> Result<()> {
        self.len(v.len())?;
        self.out.put(v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.len(v.len())?;
        self.out.put(v)
    }
    fn serialize_none(self) -> Result<()> {
        self.out.put(&[0])
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        self.out.put(&[1])?;
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<()> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Result<()> {
        self.serialize_u32(index)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<()> {
        self.serialize_u32(index)?;
        value.serialize(self)
    }
    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Many<'a, O>> {
        let unknown = match len {
            Some(n) => {
                self.len(n)?;
                None
            }
            None => {
                let at = self.out.pos();
                self.len(0)?;
                Some(at)
            }
        };
        Ok(Many {
            ser: self,
            unknown,
            n: 0,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.serialize_u32(index)?;
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Many<'a, O>> {
        self.serialize_seq(len)
    }
    #[inline]
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Fields<'a, O>> {
        Ok(Fields { ser: self, name })
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Fields<'a, O>> {
        self.serialize_u32(index)?;
        Ok(Fields { ser: self, name })
    }
}

/// A sequence or map being written; one of unknown length counts its elements and writes the
/// count into the place kept for it at the end.
pub(crate) struct Many<'a, O> {
    ser: &'a mut Ser<O>,
    /// Where the length goes when it was not known up front.
    unknown: Option<usize>,
    /// The elements (or entries) so far (counted always: an add is cheaper than a branch).
    n: u64,
}

impl<O: Out> Many<'_, O> {
    #[inline]
    fn one_more(&mut self) {
        self.n = self.n.wrapping_add(1);
    }

    fn finish(self) -> Result<()> {
        match self.unknown {
            Some(at) => self.ser.out.patch(at, self.n.to_le_bytes()),
            None => Ok(()),
        }
    }
}

impl<O: Out> ser::SerializeSeq for Many<'_, O> {
    type Ok = ();
    type Error = WireError;
    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.one_more();
        value.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl<O: Out> ser::SerializeTuple for &mut Ser<O> {
    type Ok = ();
    type Error = WireError;
    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<()> {
        Ok(())
    }
}

impl<O: Out> ser::SerializeTupleStruct for &mut Ser<O> {
    type Ok = ();
    type Error = WireError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<()> {
        Ok(())
    }
}

impl<O: Out> ser::SerializeTupleVariant for &mut Ser<O> {
    type Ok = ();
    type Error = WireError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<()> {
        Ok(())
    }
}

impl<O: Out> ser::SerializeMap for Many<'_, O> {
    type Ok = ();
    type Error = WireError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        self.one_more();
        key.serialize(&mut *self.ser)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

/// A struct's fields, written by position.
pub(crate) struct Fields<'a, O> {
    ser: &'a mut Ser<O>,
    name: &'static str,
}

impl<O: Out> Fields<'_, O> {
    /// A skipped field would shift every later one: refused, never silently lossy.
    #[cold]
    fn skipped(&self, field: &'static str) -> WireError {
        WireError::new(format!(
            "field `{field}` of `{}` was skipped while serializing (`skip_serializing_if` or \
             `skip_serializing`), and this format stores fields by position: {USE_DYNAMIC}",
            self.name
        ))
    }
}

/// Structs and struct variants: fields by position; a skipped one is refused.
macro_rules! by_position {
    ($($trait:ident),*) => {$(
        impl<O: Out> ser::$trait for Fields<'_, O> {
            type Ok = ();
            type Error = WireError;
            #[inline]
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                _: &'static str,
                value: &T,
            ) -> Result<()> {
                value.serialize(&mut *self.ser)
            }
            fn skip_field(&mut self, field: &'static str) -> Result<()> {
                Err(self.skipped(field))
            }
            fn end(self) -> Result<()> {
                Ok(())
            }
        }
    )*};
}

by_position!(SerializeStruct, SerializeStructVariant);

// ---------------------------------------------------------------------------------------------
// Decoding

/// Decodes a `T` from all of `bytes`, handing it the descriptors that came with them (those
/// it does not claim are closed).
pub(crate) fn decode<T: de::DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
    decode_seed(
        bytes,
        fds,
        std::marker::PhantomData::<T>,
        std::any::type_name::<T>,
    )
}

/// As [`decode`], through a seed (to decode into an existing value, say); `what` names the
/// type in errors.
pub(crate) fn decode_seed<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    fds: Vec<OwnedFd>,
    seed: S,
    what: fn() -> &'static str,
) -> Result<S::Value> {
    handle::receiving(fds, || {
        let mut de = De { input: bytes };
        let value = seed.deserialize(&mut de).map_err(|e| {
            WireError::new(format!("the message does not decode as `{}`: {e}", what()))
        })?;
        if de.input.is_empty() {
            Ok(value)
        } else {
            Err(WireError::new(format!(
                "the message does not match the type `{}`: {} bytes were left over",
                what(),
                de.input.len()
            )))
        }
    })
}

/// Decodes exactly `n` values of `T` from all of `bytes` (no length prefix).
pub(crate) fn decode_n<T: de::DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    n: usize,
) -> Result<Vec<T>> {
    handle::receiving(fds, || {
        let mut de = De { input: bytes };
        let mut v = Vec::with_capacity(n.min(bytes.len()));
        for i in 0..n {
            let value = T::deserialize(&mut de).map_err(|e| {
                WireError::new(format!(
                    "value {i} does not decode as `{}`: {e}",
                    std::any::type_name::<T>()
                ))
            })?;
            v.push(value);
        }
        if de.input.is_empty() {
            Ok(v)
        } else {
            Err(WireError::new("bytes were left over"))
        }
    })
}

/// A seed that decodes a sequence onto the end of a `Vec` (no second buffer, no copy).
pub(crate) struct Append<'a, T>(pub(crate) &'a mut Vec<T>);

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Append<'_, T> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: de::Deserialize<'de>> Visitor<'de> for Append<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(v) = seq.next_element()? {
            self.0.push(v);
        }
        Ok(())
    }
}

/// The deserializer: reads from the front of `input`.
pub(crate) struct De<'de> {
    input: &'de [u8],
}

impl<'de> De<'de> {
    pub(crate) fn new(input: &'de [u8]) -> Self {
        De { input }
    }

    /// Reads a sequence's length prefix.
    pub(crate) fn seq_len(&mut self) -> Result<usize> {
        self.len()
    }

    /// Whether every byte was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if self.input.len() < n {
            return Err(WireError::new("the message ended early"));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        match self.input.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.input = rest;
                Ok(*head)
            }
            None => Err(WireError::new("the message ended early")),
        }
    }

    #[inline]
    fn len(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| WireError::new(format!("length {n} too large")))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
}

macro_rules! fixed {
    ($method:ident, $visit:ident, $t:ty) => {
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.$visit(<$t>::from_le_bytes(self.array()?))
        }
    };
}

impl<'de> de::Deserializer<'de> for &mut De<'de> {
    type Error = WireError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        Err(WireError::new(format!(
            "{} must be read by asking the bytes what they hold (serde's `deserialize_any`: \
             internally or adjacently tagged and untagged enums, `#[serde(flatten)]`, \
             `serde_json::Value` and the like), and this compact format does not record that: {USE_DYNAMIC}",
            Expecting(&visitor)
        )))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.u8()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            b => Err(WireError::new(format!("invalid bool {b}"))),
        }
    }

    fixed!(deserialize_i8, visit_i8, i8);
    fixed!(deserialize_i16, visit_i16, i16);
    fixed!(deserialize_i32, visit_i32, i32);
    fixed!(deserialize_i64, visit_i64, i64);
    fixed!(deserialize_i128, visit_i128, i128);
    fixed!(deserialize_u8, visit_u8, u8);
    fixed!(deserialize_u16, visit_u16, u16);
    fixed!(deserialize_u32, visit_u32, u32);
    fixed!(deserialize_u64, visit_u64, u64);
    fixed!(deserialize_u128, visit_u128, u128);
    fixed!(deserialize_f32, visit_f32, f32);
    fixed!(deserialize_f64, visit_f64, f64);

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = u32::from_le_bytes(self.array()?);
        match char::from_u32(n) {
            Some(c) => visitor.visit_char(c),
            None => Err(WireError::new(format!("invalid char {n:#x}"))),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => visitor.visit_borrowed_str(s),
            Err(e) => Err(WireError::new(format!("invalid string: {e}"))),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.len()?;
        visitor.visit_borrowed_bytes(self.take(n)?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.u8()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            b => Err(WireError::new(format!("invalid option tag {b}"))),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.len()?;
        visitor.visit_seq(Counted::new(self, n, Place::Element))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(Counted::new(self, len, Place::Element))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.len()?;
        visitor.visit_map(Counted::new(self, n, Place::Entry))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_seq(Counted::new(self, fields.len(), Place::Field(name, fields)))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let before = self.input;
        visitor.visit_enum(&mut *self).map_err(|e| {
            e.within(|| {
                let index = before
                    .first_chunk::<4>()
                    .map(|b| u32::from_le_bytes(*b) as usize);
                match index.and_then(|i| variants.get(i)) {
                    Some(v) => format!("variant `{name}::{v}`"),
                    None => format!("enum `{name}`"),
                }
            })
        })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u32(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(WireError::new(format!(
            "a value to be skipped (a field the receiving type does not know, say) cannot be \
             skipped by this compact format: {USE_DYNAMIC}"
        )))
    }
}

/// What the elements of a [`Counted`] are, for the path in errors.
#[derive(Clone, Copy)]
pub(crate) enum Place {
    Element,
    Entry,
    /// The fields of a struct (or a struct variant): its name and the fields' names.
    Field(&'static str, &'static [&'static str]),
}

impl Place {
    /// The path segment of the element at `index`.
    #[cold]
    pub(crate) fn name(self, index: usize) -> String {
        match self {
            Place::Element => format!("element {index}"),
            Place::Entry => format!("map entry {index}"),
            Place::Field(name, fields) => match (fields.get(index), name.is_empty()) {
                (Some(field), true) => format!("field `{field}`"),
                (Some(field), false) => format!("field `{field}` of `{name}`"),
                (None, _) => format!("field {index}"),
            },
        }
    }
}

/// Shows what a visitor expected ("struct Event", "a sequence"...).
pub(crate) struct Expecting<'a, V>(pub(crate) &'a V);

impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
}

/// A sequence, tuple or map of a known number of elements.
struct Counted<'a, 'de> {
    de: &'a mut De<'de>,
    left: usize,
    total: usize,
    place: Place,
}

impl<'a, 'de> Counted<'a, 'de> {
    #[inline]
    fn new(de: &'a mut De<'de>, left: usize, place: Place) -> Self {
        Counted {
            de,
            left,
            total: left,
            place,
        }
    }

    /// The index of the element just taken (`left` was decremented for it): computed only
    /// when an error needs it, so the loop pays nothing.
    #[cold]
    fn taken_index(&self) -> usize {
        self.total - self.left - 1
    }
}

impl<'de> de::SeqAccess<'de> for Counted<'_, 'de> {
    type Error = WireError;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        match seed.deserialize(&mut *self.de) {
            Ok(v) => Ok(Some(v)),
            Err(e) => Err(e.within(|| self.place.name(self.taken_index()))),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        // Never more elements than bytes left (each takes at least one... or none, for units;
        // serde caps its preallocation anyway).
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Counted<'_, 'de> {
    type Error = WireError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de)
            .map(Some)
            .map_err(|e| e.within(|| format!("the key of {}", self.place.name(self.taken_index()))))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de).map_err(|e| {
            e.within(|| format!("the value of {}", self.place.name(self.taken_index())))
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::EnumAccess<'de> for &mut De<'de> {
    type Error = WireError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = u32::from_le_bytes(self.array()?);
        let value = seed.deserialize(IntoDeserializer::<WireError>::into_deserializer(index))?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut De<'de> {
    type Error = WireError;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_seq(Counted::new(self, fields.len(), Place::Field("", fields)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum E {
        Unit,
        New(i16),
        Tuple(u8, String),
        Struct { a: Option<u64>, b: char },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        x: f64,
        v: Vec<E>,
        m: BTreeMap<String, (bool, i128)>,
        unit: (),
        bytes: Vec<u8>,
    }

    fn round_trip<T: Serialize + de::DeserializeOwned>(v: &T) -> T {
        let mut buf = Vec::new();
        let fds = encode_into_vec(v, &mut buf).unwrap();
        assert!(fds.is_empty());
        assert_eq!(measure(v).unwrap(), (buf.len(), 0));
        let mut fixed = vec![0u8; buf.len()];
        let (n, _) = encode_into_slice(v, &mut fixed).unwrap();
        assert_eq!((n, &fixed), (buf.len(), &buf));
        decode(&buf, Vec::new()).unwrap()
    }

    #[test]
    fn values_round_trip() {
        let s = S {
            x: -1.5,
            v: vec![
                E::Unit,
                E::New(-3),
                E::Tuple(7, "héllo".into()),
                E::Struct {
                    a: Some(u64::MAX),
                    b: '√',
                },
                E::Struct { a: None, b: 'x' },
            ],
            m: [("k".to_string(), (true, i128::MIN))].into_iter().collect(),
            unit: (),
            bytes: vec![1, 2, 3],
        };
        assert_eq!(round_trip(&s), s);
        let r: Vec<std::result::Result<u64, String>> = vec![Ok(1), Err("boom".into())];
        assert_eq!(round_trip(&r), r);
        assert_eq!(round_trip(&(0u64..1000).collect::<Vec<_>>()).len(), 1000);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut buf = Vec::new();
        encode_into_vec(&vec![1u64, 2, 3], &mut buf).unwrap();
        assert!(decode::<Vec<u64>>(&buf[..buf.len() - 1], Vec::new()).is_err());
        assert!(decode::<u32>(&buf, Vec::new()).is_err());
        let huge = u64::MAX.to_le_bytes();
        assert!(decode::<Vec<u64>>(&huge, Vec::new()).is_err());
        assert!(decode::<String>(&[1, 0, 0, 0, 0, 0, 0, 0, 0xff], Vec::new()).is_err());
        assert!(decode::<bool>(&[2], Vec::new()).is_err());
        let mut small = [0u8; 4];
        assert!(encode_into_slice(&7u64, &mut small).is_err());
    }
}
