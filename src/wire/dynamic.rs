//! [`Dynamic`]: a self-describing encoding for one value, nested in the compact wire format.
//!
//! Every value carries a one-byte tag saying what it is, structs carry their field names and
//! enum variants their names, so a decoder can ask the bytes what comes next (serde's
//! `deserialize_any`). That is what internally tagged and untagged enums,
//! `#[serde(flatten)]`, `serde_json::Value` and skipped fields need, at the price of a tag per
//! value and the names. The encoding of `Dynamic<T>` travels as one byte string inside the
//! compact format, so the rest of a message keeps its speed.
//!
//! | tag | value |
//! |---|---|
//! | `UNIT` | unit, unit struct |
//! | `FALSE`, `TRUE` | `bool` |
//! | `U8`..`U128`, `I8`..`I128`, `F32`, `F64` | then the number, little-endian |
//! | `CHAR` | then the code point as a `u32` |
//! | `STR`, `BYTES` | then a `u64` length and the bytes; a unit variant is its name as `STR` |
//! | `NONE`, `SOME` | `Option` (`SOME` then the value) |
//! | `SEQ` | then a `u64` count and the elements: sequences, tuples, tuple structs |
//! | `MAP` | then a `u64` count and key, value pairs: maps, structs (keys are field names) |
//! | `VARIANT` | then the variant's name (`u64` length, bytes) and its content |
//!
//! A newtype struct is its content. Decoding trusts nothing: lengths are checked against the
//! bytes left, and nesting is limited to [`MAX_DEPTH`] levels.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};
use serde::{Deserialize, Deserializer, Serializer};

use super::{Result, WireError};

const UNIT: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const U8: u8 = 3;
const U16: u8 = 4;
const U32: u8 = 5;
const U64: u8 = 6;
const U128: u8 = 7;
const I8: u8 = 8;
const I16: u8 = 9;
const I32: u8 = 10;
const I64: u8 = 11;
const I128: u8 = 12;
const F32: u8 = 13;
const F64: u8 = 14;
const CHAR: u8 = 15;
const STR: u8 = 16;
const BYTES: u8 = 17;
const NONE: u8 = 18;
const SOME: u8 = 19;
const SEQ: u8 = 20;
const MAP: u8 = 21;
const VARIANT: u8 = 22;

/// How deeply values may nest in a decoded `Dynamic` (as `serde_json`'s default): deeper
/// input is refused instead of overflowing the stack.
pub(crate) const MAX_DEPTH: usize = 128;

/// A value that crosses processes in a self-describing encoding, so that every serde shape
/// works: internally tagged (`#[serde(tag = "kind")]`) and untagged enums,
/// `#[serde(flatten)]`, fields skipped with `skip_serializing_if`, unknown fields, and
/// self-describing types such as `serde_json::Value`.
///
/// Everything else crosses in the crate's compact format, which stores values by position
/// (fixed-width numbers, bulk bytes in one copy). That format cannot answer a decoder that asks
/// "what comes next?", which is how serde decodes the shapes above; when a value needs it, the
/// error says so and names the field. Wrap that value (or only the field that needs it) in
/// `Dynamic`: it is encoded with a tag per value and the names of fields and variants, and
/// costs that much more.
///
/// Handles inside a `Dynamic` (a [`Queue`](crate::Queue), a [`Connection`](crate::Connection),
/// ...) travel as everywhere else. `Dynamic<T>` dereferences to `T`.
///
/// One limit comes from serde, not from this format: inside an internally tagged or untagged
/// enum or a flattened struct, serde buffers the content in a form without 128-bit integers,
/// so `i128`/`u128` fields there fail (with serde's message); elsewhere they work.
///
/// # Examples
/// ```
/// use multiprocess::{Dynamic, Pipe};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// #[serde(tag = "kind")]
/// enum Event {
///     Started { pid: i32 },
///     Stopped { code: i32, reason: Option<String> },
/// }
///
/// let (a, b) = Pipe::new()?;
/// a.send(&Dynamic(Event::Stopped { code: 3, reason: None }))?;
/// let Dynamic(event) = b.recv::<Dynamic<Event>>()?;
/// assert_eq!(event, Event::Stopped { code: 3, reason: None });
///
/// // Without the wrapper, the receiver is told what to do:
/// a.send(&Event::Started { pid: 7 })?;
/// let err = b.recv::<Event>().unwrap_err();
/// assert!(err.to_string().contains("multiprocess::Dynamic"));
/// # Ok::<(), multiprocess::ConnectionError>(())
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dynamic<T>(pub T);

impl<T> Dynamic<T> {
    /// The wrapped value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Dynamic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Dynamic").field(&self.0).finish()
    }
}

impl<T> From<T> for Dynamic<T> {
    fn from(value: T) -> Self {
        Dynamic(value)
    }
}

impl<T> std::ops::Deref for Dynamic<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Dynamic<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Serialize> Serialize for Dynamic<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        // A zero-sized value has no address of its own; its encoding is a few bytes anyway.
        let key = (std::mem::size_of::<T>() != 0)
            .then(|| (&self.0 as *const T as usize, std::any::type_name::<T>()));
        if let Some(bytes) = key.and_then(take_kept) {
            return serializer.serialize_bytes(&bytes);
        }
        let bytes = to_vec(&self.0).map_err(ser::Error::custom)?;
        let r = serializer.serialize_bytes(&bytes);
        if let Some(key) = key {
            keep(key, bytes);
        }
        r
    }
}

/// Where a value is and its type: within one encoding (the value is borrowed for all of it),
/// the same key is the same value.
type Key = (usize, &'static str);

/// The encodings of `Dynamic` values made by the counting pass of one
/// [`encode_into_vec`](super::encode_into_vec), for its writing pass: the nested encoding is
/// made once, not twice.
struct Kept {
    writing: bool,
    entries: Vec<(Key, Vec<u8>)>,
}

thread_local! {
    static KEPT: std::cell::RefCell<Option<Kept>> = const { std::cell::RefCell::new(None) };
}

/// While alive, `Dynamic` encodings are kept between the two passes; `None` when an
/// encoding of this thread already keeps them (a nested one shares its store).
pub(crate) struct KeepEncodings(());

impl KeepEncodings {
    /// The counting pass is over: from now on, kept encodings are used.
    pub(crate) fn now_writing(&self) {
        KEPT.with(|k| {
            if let Some(k) = k.borrow_mut().as_mut() {
                k.writing = true;
            }
        });
    }
}

impl Drop for KeepEncodings {
    fn drop(&mut self) {
        KEPT.with(|k| *k.borrow_mut() = None);
    }
}

pub(crate) fn keep_encodings() -> Option<KeepEncodings> {
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        if k.is_some() {
            return None;
        }
        *k = Some(Kept {
            writing: false,
            entries: Vec::new(),
        });
        Some(KeepEncodings(()))
    })
}

fn keep(key: Key, bytes: Vec<u8>) {
    KEPT.with(|k| {
        if let Some(k) = k.borrow_mut().as_mut() {
            if !k.writing {
                k.entries.push((key, bytes));
            }
        }
    });
}

fn take_kept(key: Key) -> Option<Vec<u8>> {
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        let k = k.as_mut().filter(|k| k.writing)?;
        let at = k.entries.iter().position(|(e, _)| *e == key)?;
        Some(k.entries.remove(at).1)
    })
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Dynamic<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Bytes<T>(std::marker::PhantomData<T>);
        impl<T: DeserializeOwned> Visitor<'_> for Bytes<T> {
            type Value = Dynamic<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the bytes of a multiprocess::Dynamic value")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> std::result::Result<Dynamic<T>, E> {
                from_slice(v).map(Dynamic).map_err(E::custom)
            }
        }
        deserializer.deserialize_bytes(Bytes(std::marker::PhantomData))
    }
}

/// Encodes `value` self-describingly.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut ser = DSer { out: Vec::new() };
    value.serialize(&mut ser)?;
    Ok(ser.out)
}

/// Decodes a `T` from all of `bytes`.
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let mut de = DDe {
        input: bytes,
        depth: 0,
    };
    let value = T::deserialize(&mut de).map_err(|e| {
        WireError::new(format!(
            "the `Dynamic` value does not decode as `{}`: {e}",
            std::any::type_name::<T>()
        ))
    })?;
    if de.input.is_empty() {
        Ok(value)
    } else {
        Err(WireError::new(format!(
            "the `Dynamic` value does not match the type `{}`: {} bytes were left over",
            std::any::type_name::<T>(),
            de.input.len()
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

struct DSer {
    out: Vec<u8>,
}

impl DSer {
    fn tag(&mut self, tag: u8, bytes: &[u8]) -> Result<()> {
        self.out.push(tag);
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn counted(&mut self, tag: u8) -> DMany<'_> {
        self.out.push(tag);
        let at = self.out.len();
        self.out.extend_from_slice(&0u64.to_le_bytes());
        DMany {
            ser: self,
            at,
            n: 0,
        }
    }

    fn name(&mut self, name: &str) {
        self.out
            .extend_from_slice(&(name.len() as u64).to_le_bytes());
        self.out.extend_from_slice(name.as_bytes());
    }

    fn variant(&mut self, name: &str) {
        self.out.push(VARIANT);
        self.name(name);
    }
}

/// A sequence, map or struct being written: its count is filled in at the end (skipped fields
/// and iterators of unknown length are simply not counted).
struct DMany<'a> {
    ser: &'a mut DSer,
    at: usize,
    n: u64,
}

impl DMany<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.n += 1;
        value.serialize(&mut *self.ser)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<()> {
        self.n += 1;
        self.ser.out.push(STR);
        self.ser.name(key);
        value.serialize(&mut *self.ser)
    }

    fn finish(self) -> Result<()> {
        super::patch_slice(&mut self.ser.out, self.at, self.n.to_le_bytes())
    }
}

impl<'a> ser::Serializer for &'a mut DSer {
    type Ok = ();
    type Error = WireError;
    type SerializeSeq = DMany<'a>;
    type SerializeTuple = DMany<'a>;
    type SerializeTupleStruct = DMany<'a>;
    type SerializeTupleVariant = DMany<'a>;
    type SerializeMap = DMany<'a>;
    type SerializeStruct = DMany<'a>;
    type SerializeStructVariant = DMany<'a>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<()> {
        self.tag(if v { TRUE } else { FALSE }, &[])
    }
    fn serialize_i8(self, v: i8) -> Result<()> {
        self.tag(I8, &v.to_le_bytes())
    }
    fn serialize_i16(self, v: i16) -> Result<()> {
        self.tag(I16, &v.to_le_bytes())
    }
    fn serialize_i32(self, v: i32) -> Result<()> {
        self.tag(I32, &v.to_le_bytes())
    }
    fn serialize_i64(self, v: i64) -> Result<()> {
        self.tag(I64, &v.to_le_bytes())
    }
    fn serialize_i128(self, v: i128) -> Result<()> {
        self.tag(I128, &v.to_le_bytes())
    }
    fn serialize_u8(self, v: u8) -> Result<()> {
        self.tag(U8, &[v])
    }
    fn serialize_u16(self, v: u16) -> Result<()> {
        self.tag(U16, &v.to_le_bytes())
    }
    fn serialize_u32(self, v: u32) -> Result<()> {
        self.tag(U32, &v.to_le_bytes())
    }
    fn serialize_u64(self, v: u64) -> Result<()> {
        self.tag(U64, &v.to_le_bytes())
    }
    fn serialize_u128(self, v: u128) -> Result<()> {
        self.tag(U128, &v.to_le_bytes())
    }
    fn serialize_f32(self, v: f32) -> Result<()> {
        self.tag(F32, &v.to_le_bytes())
    }
    fn serialize_f64(self, v: f64) -> Result<()> {
        self.tag(F64, &v.to_le_bytes())
    }
    fn serialize_char(self, v: char) -> Result<()> {
        self.tag(CHAR, &u32::from(v).to_le_bytes())
    }
    fn serialize_str(self, v: &str) -> Result<()> {
        self.out.push(STR);
        self.name(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.out.push(BYTES);
        self.out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<()> {
        self.tag(NONE, &[])
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        self.out.push(SOME);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<()> {
        self.tag(UNIT, &[])
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
        self.tag(UNIT, &[])
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<()> {
        self.serialize_str(variant)
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
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        self.variant(variant);
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<DMany<'a>> {
        Ok(self.counted(SEQ))
    }
    fn serialize_tuple(self, _: usize) -> Result<DMany<'a>> {
        Ok(self.counted(SEQ))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<DMany<'a>> {
        Ok(self.counted(SEQ))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<DMany<'a>> {
        self.variant(variant);
        Ok(self.counted(SEQ))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<DMany<'a>> {
        Ok(self.counted(MAP))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<DMany<'a>> {
        Ok(self.counted(MAP))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<DMany<'a>> {
        self.variant(variant);
        Ok(self.counted(MAP))
    }
}

/// The positional compounds (sequence, tuple, tuple struct, tuple variant) all count and
/// write their elements the same way.
macro_rules! positional {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for DMany<'_> {
            type Ok = ();
            type Error = WireError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
                self.element(value)
            }
            fn end(self) -> Result<()> {
                self.finish()
            }
        }
    )*};
}

positional!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for DMany<'_> {
    type Ok = ();
    type Error = WireError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        self.element(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

/// Structs and struct variants: named fields, written as a map.
macro_rules! named {
    ($($trait:ident),*) => {$(
        impl ser::$trait for DMany<'_> {
            type Ok = ();
            type Error = WireError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<()> {
                self.field(key, value)
            }
            fn end(self) -> Result<()> {
                self.finish()
            }
        }
    )*};
}

named!(SerializeStruct, SerializeStructVariant);

// ---------------------------------------------------------------------------------------------
// Decoding

struct DDe<'de> {
    input: &'de [u8],
    depth: usize,
}

impl<'de> DDe<'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if self.input.len() < n {
            return Err(WireError::new("the value ended early"));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        match self.input.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.input = rest;
                Ok(*head)
            }
            None => Err(WireError::new("the value ended early")),
        }
    }

    fn tag(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn peek(&self) -> Result<u8> {
        self.input
            .first()
            .copied()
            .ok_or_else(|| WireError::new("the value ended early"))
    }

    /// A count of items each at least `min` bytes long: never more than the bytes left can
    /// hold (so no decoder reserves memory for items that are not there).
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = u64::from_le_bytes(self.array()?);
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min) <= self.input.len() => Ok(n),
            _ => Err(WireError::new(format!(
                "a count of {n} items is more than the {} bytes left can hold",
                self.input.len()
            ))),
        }
    }

    fn str(&mut self) -> Result<&'de str> {
        let n = self.count(1)?;
        std::str::from_utf8(self.take(n)?)
            .map_err(|e| WireError::new(format!("invalid string: {e}")))
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.depth >= MAX_DEPTH {
            return Err(WireError::new(format!(
                "the value nests more than {MAX_DEPTH} levels deep"
            )));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }
}

impl<'de> de::Deserializer<'de> for &mut DDe<'de> {
    type Error = WireError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.tag()? {
            UNIT => visitor.visit_unit(),
            FALSE => visitor.visit_bool(false),
            TRUE => visitor.visit_bool(true),
            U8 => visitor.visit_u8(self.array::<1>()?[0]),
            U16 => visitor.visit_u16(u16::from_le_bytes(self.array()?)),
            U32 => visitor.visit_u32(u32::from_le_bytes(self.array()?)),
            U64 => visitor.visit_u64(u64::from_le_bytes(self.array()?)),
            U128 => visitor.visit_u128(u128::from_le_bytes(self.array()?)),
            I8 => visitor.visit_i8(i8::from_le_bytes(self.array()?)),
            I16 => visitor.visit_i16(i16::from_le_bytes(self.array()?)),
            I32 => visitor.visit_i32(i32::from_le_bytes(self.array()?)),
            I64 => visitor.visit_i64(i64::from_le_bytes(self.array()?)),
            I128 => visitor.visit_i128(i128::from_le_bytes(self.array()?)),
            F32 => visitor.visit_f32(f32::from_le_bytes(self.array()?)),
            F64 => visitor.visit_f64(f64::from_le_bytes(self.array()?)),
            CHAR => {
                let n = u32::from_le_bytes(self.array()?);
                match char::from_u32(n) {
                    Some(c) => visitor.visit_char(c),
                    None => Err(WireError::new(format!("invalid char {n:#x}"))),
                }
            }
            STR => visitor.visit_borrowed_str(self.str()?),
            BYTES => {
                let n = self.count(1)?;
                visitor.visit_borrowed_bytes(self.take(n)?)
            }
            NONE => visitor.visit_none(),
            SOME => self.nested(|de| visitor.visit_some(de)),
            SEQ => {
                let n = self.count(1)?;
                self.nested(|de| {
                    visitor.visit_seq(Items {
                        de,
                        left: n,
                        next: 0,
                        key: None,
                    })
                })
            }
            MAP => {
                let n = self.count(2)?;
                self.nested(|de| {
                    visitor.visit_map(Items {
                        de,
                        left: n,
                        next: 0,
                        key: None,
                    })
                })
            }
            VARIANT => {
                let name = self.str()?;
                self.nested(|de| {
                    visitor.visit_map(OneEntry {
                        key: Some(name),
                        de,
                    })
                })
            }
            t => Err(WireError::new(format!("unknown tag {t}"))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            NONE | UNIT => {
                self.tag()?;
                visitor.visit_none()
            }
            SOME => {
                self.tag()?;
                self.nested(|de| visitor.visit_some(de))
            }
            _ => self.nested(|de| visitor.visit_some(de)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.tag()? {
            STR => {
                let variant = self.str()?;
                visitor.visit_enum(IntoDeserializer::<WireError>::into_deserializer(variant))
            }
            VARIANT => {
                let variant = self.str()?;
                self.nested(|de| visitor.visit_enum(Variant { name: variant, de }))
                    .map_err(|e| e.within(|| format!("variant `{name}::{variant}`")))
            }
            t => Err(WireError::new(format!(
                "expected enum `{name}`, found a value of tag {t}"
            ))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_any(de::IgnoredAny)?;
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// The items of a `SEQ` or the entries of a `MAP`.
struct Items<'a, 'de> {
    de: &'a mut DDe<'de>,
    left: usize,
    next: usize,
    key: Option<&'de [u8]>,
}

/// The string at the start of `input`, when there is one (a map key, for errors).
#[cold]
fn key_name(input: &[u8]) -> Option<&str> {
    let (&tag, rest) = input.split_first()?;
    if tag != STR {
        return None;
    }
    let mut probe = DDe {
        input: rest,
        depth: 0,
    };
    probe.str().ok()
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = WireError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.next += 1;
        let index = self.next - 1;
        seed.deserialize(&mut *self.de)
            .map(Some)
            .map_err(|e| e.within(|| format!("element {index}")))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = WireError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.next += 1;
        let index = self.next - 1;
        // Where the key starts: a string key (a struct's field name) names the field in errors.
        self.key = Some(self.de.input);
        seed.deserialize(&mut *self.de)
            .map(Some)
            .map_err(|e| e.within(|| format!("the key of entry {index}")))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let index = self.next.saturating_sub(1);
        let key = self.key.take();
        seed.deserialize(&mut *self.de).map_err(|e| {
            e.within(|| match key.and_then(key_name) {
                Some(k) => format!("field `{k}`"),
                None => format!("the value of entry {index}"),
            })
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// A variant seen through `deserialize_any`: a map of one entry, name to content (as JSON
/// writes an externally tagged enum).
struct OneEntry<'a, 'de> {
    key: Option<&'de str>,
    de: &'a mut DDe<'de>,
}

impl<'de> de::MapAccess<'de> for OneEntry<'_, 'de> {
    type Error = WireError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.key.take() {
            Some(k) => seed
                .deserialize(de::value::BorrowedStrDeserializer::new(k))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }
}

/// A variant with content, decoded by name.
struct Variant<'a, 'de> {
    name: &'de str,
    de: &'a mut DDe<'de>,
}

impl<'a, 'de> de::EnumAccess<'de> for Variant<'a, 'de> {
    type Error = WireError;
    type Variant = &'a mut DDe<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant)> {
        let v = seed.deserialize(de::value::BorrowedStrDeserializer::<WireError>::new(
            self.name,
        ))?;
        Ok((v, self.de))
    }
}

impl<'de> de::VariantAccess<'de> for &mut DDe<'de> {
    type Error = WireError;

    fn unit_variant(self) -> Result<()> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}
