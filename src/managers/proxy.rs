//! Typed proxies to a manager's objects. Each is a handle: it serializes as the manager's
//! address, authkey and the object's id, and the receiving process connects on first use.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::protocol::{Op, Reply};
use super::{decode, encode, unexpected, Framer, ManagerError, ProxyWire, Session, Shared};

/// The session and object id every proxy holds.
#[derive(Clone)]
struct Handle {
    session: Arc<Session>,
    id: u64,
}

impl Handle {
    fn call(&self, op: Op) -> Result<Reply, ManagerError> {
        self.session.call(self.id, op)
    }

    fn unit(&self, op: Op) -> Result<(), ManagerError> {
        match self.call(op)? {
            Reply::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn flag(&self, op: Op) -> Result<bool, ManagerError> {
        match self.call(op)? {
            Reply::Bool(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    fn len(&self, op: Op) -> Result<usize, ManagerError> {
        match self.call(op)? {
            Reply::Len(n) => Ok(n as usize),
            other => Err(unexpected(other)),
        }
    }

    fn value<T: DeserializeOwned>(&self, op: Op) -> Result<T, ManagerError> {
        match self.call(op)? {
            Reply::Bytes(b) => decode(&b),
            other => Err(unexpected(other)),
        }
    }

    fn maybe<T: DeserializeOwned>(&self, op: Op) -> Result<Option<T>, ManagerError> {
        match self.call(op)? {
            Reply::Maybe(b) => b.map(|b| decode(&b)).transpose(),
            other => Err(unexpected(other)),
        }
    }

    fn list<T: DeserializeOwned>(&self, op: Op) -> Result<Vec<T>, ManagerError> {
        match self.call(op)? {
            Reply::List(items) => items.iter().map(|b| decode(b)).collect(),
            other => Err(unexpected(other)),
        }
    }

    /// Read, change, write back only if unchanged; again on a conflict. Returns the value
    /// written.
    fn update<T, F>(
        &self,
        read: impl Fn() -> Op,
        write: impl Fn(Vec<u8>, u64) -> Op,
        mut f: F,
    ) -> Result<T, ManagerError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        loop {
            let (current, version) = match self.call(read())? {
                Reply::Versioned(b, v) => (b.map(|b| decode::<T>(&b)).transpose()?, v),
                other => return Err(unexpected(other)),
            };
            let new = f(current);
            match self.call(write(encode(&new)?, version))? {
                Reply::Unit => return Ok(new),
                Reply::Conflict => continue,
                other => return Err(unexpected(other)),
            }
        }
    }
}

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ProxyWire::of(&self.session, self.id).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (session, id) = ProxyWire::deserialize(deserializer)?.session();
        Ok(Handle { session, id })
    }
}

/// Clone and Debug for a proxy type, whatever its type parameters.
macro_rules! proxy_common {
    ($name:ident $(<$($g:ident),*>)?, $python:literal) => {
        impl$(<$($g),*>)? Clone for $name$(<$($g),*>)? {
            fn clone(&self) -> Self {
                $name { handle: self.handle.clone(), types: PhantomData }
            }
        }
        impl$(<$($g),*>)? fmt::Debug for $name$(<$($g),*>)? {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({} #{} at {})"), $python, self.handle.id, self.handle.session.address)
            }
        }
        impl$(<$($g),*>)? $name$(<$($g),*>)? {
            pub(crate) fn new(session: Arc<Session>, id: u64) -> Self {
                $name { handle: Handle { session, id }, types: PhantomData }
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------

/// A dict held by a manager (Python's `DictProxy`), from [`Manager::dict`](super::Manager::dict).
/// Keys and values are any serde types; entries keep their insertion order.
///
/// Each method is one round trip; see [`set_many`](Self::set_many),
/// [`get_many`](Self::get_many) and [`batch`](Self::batch) to do many in one.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct DictProxy<K, V> {
    handle: Handle,
    #[serde(skip)]
    types: PhantomData<fn() -> (K, V)>,
}

proxy_common!(DictProxy<K, V>, "dict");

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> DictProxy<K, V> {
    /// The value of `key`, if any (Python's `d.get(k)`).
    ///
    /// # Errors
    /// [`ManagerError::Gone`] when the manager is gone; [`ManagerError::Decode`] when the
    /// stored value is not a `V`.
    pub fn get<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<Option<V>, ManagerError>
    where
        K: Borrow<Q>,
    {
        self.handle.maybe(Op::Get(encode(key)?))
    }

    /// Sets `key` to `value` (Python's `d[k] = v`).
    ///
    /// # Errors
    /// As [`get`](Self::get), or [`ManagerError::Encode`].
    pub fn set<Q: Serialize + ?Sized>(&self, key: &Q, value: &V) -> Result<(), ManagerError>
    where
        K: Borrow<Q>,
    {
        self.handle.unit(Op::Set(encode(key)?, encode(value)?))
    }

    /// Removes `key`, returning its value (Python's `d.pop(k, None)`).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn remove<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<Option<V>, ManagerError>
    where
        K: Borrow<Q>,
    {
        self.handle.maybe(Op::Remove(encode(key)?))
    }

    /// Whether `key` is there (Python's `k in d`).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn contains_key<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<bool, ManagerError>
    where
        K: Borrow<Q>,
    {
        self.handle.flag(Op::Contains(encode(key)?))
    }

    /// The value of `key`, after setting it to `default` if it was absent (Python's
    /// `setdefault`).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn setdefault<Q: Serialize + ?Sized>(&self, key: &Q, default: &V) -> Result<V, ManagerError>
    where
        K: Borrow<Q>,
    {
        self.handle
            .value(Op::SetDefault(encode(key)?, encode(default)?))
    }

    /// Changes the value of `key` in place, with `f` run on it (on `V::default()` when
    /// absent), and returns the new value: the fix for Python's lost `d[k].append(x)`.
    ///
    /// The value is read, changed here, and written back only if no one wrote it in between;
    /// otherwise it is read again and `f` runs again. So no update is lost, whatever the
    /// number of writers, and `f` may run more than once. Two round trips when uncontended.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    ///
    /// # Examples
    /// ```
    /// let manager = multiprocess::managers::Manager::start()?;
    /// let d = manager.dict::<String, Vec<i32>>()?;
    /// d.update("k", |v| v.push(1))?;
    /// d.update("k", |v| v.push(2))?;
    /// assert_eq!(d.get("k")?, Some(vec![1, 2]));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn update<Q: Serialize + ?Sized>(
        &self,
        key: &Q,
        mut f: impl FnMut(&mut V),
    ) -> Result<V, ManagerError>
    where
        K: Borrow<Q>,
        V: Default,
    {
        self.update_with(key, |v| {
            let mut v = v.unwrap_or_default();
            f(&mut v);
            v
        })
    }

    /// As [`update`](Self::update), with `f` given the current value or `None`, returning
    /// the new one.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn update_with<Q: Serialize + ?Sized>(
        &self,
        key: &Q,
        f: impl FnMut(Option<V>) -> V,
    ) -> Result<V, ManagerError>
    where
        K: Borrow<Q>,
    {
        let k = encode(key)?;
        self.handle.update(
            || Op::GetVersioned(k.clone()),
            |v, version| Op::SetIfVersion(k.clone(), v, version),
            f,
        )
    }

    /// The number of entries (Python's `len(d)`).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.handle.len(Op::Len)
    }

    /// Whether there are no entries.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// The keys, in insertion order.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn keys(&self) -> Result<Vec<K>, ManagerError> {
        self.handle.list(Op::Keys)
    }

    /// The values, in insertion order.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn values(&self) -> Result<Vec<V>, ManagerError> {
        self.handle.list(Op::Values)
    }

    /// The entries, in insertion order (Python's `d.items()`, or `d.copy()`).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn items(&self) -> Result<Vec<(K, V)>, ManagerError> {
        match self.handle.call(Op::Items)? {
            Reply::Pairs(p) => p
                .iter()
                .map(|(k, v)| Ok((decode(k)?, decode(v)?)))
                .collect(),
            other => Err(unexpected(other)),
        }
    }

    /// Removes every entry.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Clear)
    }

    /// Sets many entries in one round trip (Python's `d.update(pairs)`).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn set_many<A: Borrow<K>, B: Borrow<V>>(
        &self,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<(), ManagerError> {
        let blob = Framer::build(|f| {
            for (k, v) in items {
                f.push(k.borrow())?;
                f.push(v.borrow())?;
            }
            Ok(())
        })?;
        self.handle.unit(Op::SetMany(blob))
    }

    /// The values of many keys in one round trip.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn get_many<Q: Serialize>(
        &self,
        keys: impl IntoIterator<Item = Q>,
    ) -> Result<Vec<Option<V>>, ManagerError> {
        let blob = Framer::build(|f| {
            for k in keys {
                f.push(&k)?;
            }
            Ok(())
        })?;
        let Reply::Framed(answer) = self.handle.call(Op::GetMany(blob))? else {
            return Err(ManagerError::Decode("unexpected answer to get_many".into()));
        };
        let bad = || ManagerError::Decode("a malformed answer to get_many".into());
        let mut out = Vec::new();
        let mut rest: &[u8] = &answer;
        while let Some((&present, after)) = rest.split_first() {
            rest = after;
            if present == 0 {
                out.push(None);
                continue;
            }
            let (len, after) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
            let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| bad())?;
            if len > after.len() {
                return Err(bad());
            }
            let (value, after) = after.split_at(len);
            out.push(Some(decode(value)?));
            rest = after;
        }
        Ok(out)
    }

    /// Gathers sets, gets and removes to send in one round trip with [`DictBatch::run`]. They
    /// are applied in order; other clients' requests may come between them (a batch is not
    /// a transaction).
    ///
    /// # Examples
    /// ```
    /// let manager = multiprocess::managers::Manager::start()?;
    /// let d = manager.dict::<String, i32>()?;
    /// let mut batch = d.batch();
    /// batch.set("a", &1)?.set("b", &2)?.get("a")?.remove("b")?;
    /// assert_eq!(batch.run()?, [None, None, Some(1), Some(2)]);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn batch(&self) -> DictBatch<'_, K, V> {
        DictBatch {
            dict: self,
            ops: Vec::new(),
        }
    }
}

/// Operations on a [`DictProxy`] sent together (from [`DictProxy::batch`]).
pub struct DictBatch<'a, K, V> {
    dict: &'a DictProxy<K, V>,
    ops: Vec<Op>,
}

impl<K, V> fmt::Debug for DictBatch<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DictBatch")
            .field("operations", &self.ops.len())
            .finish()
    }
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> DictBatch<'_, K, V> {
    /// Adds a set (its result is `None`).
    ///
    /// # Errors
    /// [`ManagerError::Encode`].
    pub fn set<Q: Serialize + ?Sized>(
        &mut self,
        key: &Q,
        value: &V,
    ) -> Result<&mut Self, ManagerError>
    where
        K: Borrow<Q>,
    {
        self.ops.push(Op::Set(encode(key)?, encode(value)?));
        Ok(self)
    }

    /// Adds a get (its result is the value).
    ///
    /// # Errors
    /// [`ManagerError::Encode`].
    pub fn get<Q: Serialize + ?Sized>(&mut self, key: &Q) -> Result<&mut Self, ManagerError>
    where
        K: Borrow<Q>,
    {
        self.ops.push(Op::Get(encode(key)?));
        Ok(self)
    }

    /// Adds a remove (its result is the removed value).
    ///
    /// # Errors
    /// [`ManagerError::Encode`].
    pub fn remove<Q: Serialize + ?Sized>(&mut self, key: &Q) -> Result<&mut Self, ManagerError>
    where
        K: Borrow<Q>,
    {
        self.ops.push(Op::Remove(encode(key)?));
        Ok(self)
    }

    /// Sends them all in one round trip; one result per operation, in order.
    ///
    /// # Errors
    /// As [`DictProxy::get`].
    pub fn run(&mut self) -> Result<Vec<Option<V>>, ManagerError> {
        let ops = std::mem::take(&mut self.ops);
        self.dict
            .handle
            .session
            .batch(self.dict.handle.id, ops)?
            .into_iter()
            .map(|r| match r {
                Reply::Unit => Ok(None),
                Reply::Maybe(b) => b.map(|b| decode(&b)).transpose(),
                other => Err(unexpected(other)),
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------

/// A list held by a manager (Python's `ListProxy`), from [`Manager::list`](super::Manager::list).
/// Indices may be negative, counting from the end, as in Python.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ListProxy<T> {
    handle: Handle,
    #[serde(skip)]
    types: PhantomData<fn() -> T>,
}

proxy_common!(ListProxy<T>, "list");

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// Appends an item.
    ///
    /// # Errors
    /// [`ManagerError::Gone`] when the manager is gone, or [`ManagerError::Encode`].
    pub fn append(&self, item: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::Append(encode(item)?))
    }

    /// Appends many items in one round trip.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn extend<A: Borrow<T>>(
        &self,
        items: impl IntoIterator<Item = A>,
    ) -> Result<(), ManagerError> {
        let items = items
            .into_iter()
            .map(|i| encode(i.borrow()))
            .collect::<Result<Vec<_>, _>>()?;
        self.handle.unit(Op::Extend(items))
    }

    /// The item at `index` (Python's `l[i]`).
    ///
    /// # Errors
    /// [`ManagerError::Index`] outside the list; as [`append`](Self::append).
    pub fn get(&self, index: i64) -> Result<T, ManagerError> {
        self.handle.value(Op::At(index))
    }

    /// Replaces the item at `index` (Python's `l[i] = x`).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn set(&self, index: i64, item: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::SetAt(index, encode(item)?))
    }

    /// Inserts before `index` (clamped to the list, as Python's `insert`).
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn insert(&self, index: i64, item: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::Insert(index, encode(item)?))
    }

    /// Removes and returns the last item.
    ///
    /// # Errors
    /// [`ManagerError::Index`] when empty.
    pub fn pop(&self) -> Result<T, ManagerError> {
        self.handle.value(Op::PopAt(None))
    }

    /// Removes and returns the item at `index`.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn pop_at(&self, index: i64) -> Result<T, ManagerError> {
        self.handle.value(Op::PopAt(Some(index)))
    }

    /// Changes the item at `index` in place (see [`DictProxy::update`]) and returns it.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn update(&self, index: i64, mut f: impl FnMut(&mut T)) -> Result<T, ManagerError> {
        self.handle.update(
            || Op::AtVersioned(index),
            |v, version| Op::SetAtIfVersion(index, v, version),
            |v: Option<T>| {
                // The server answers an index outside the list with an error, so it is here.
                let mut v = v.expect("an item read at a valid index");
                f(&mut v);
                v
            },
        )
    }

    /// The number of items.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.handle.len(Op::Len)
    }

    /// Whether the list is empty.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// A copy of every item (Python's `l[:]`).
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn to_vec(&self) -> Result<Vec<T>, ManagerError> {
        self.handle.list(Op::All)
    }

    /// Removes every item.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Clear)
    }
}

// ---------------------------------------------------------------------------------------------

/// Named attributes of any serde type held by a manager (Python's `Namespace`), from
/// [`Manager::namespace`](super::Manager::namespace).
///
/// # Examples
/// ```
/// let manager = multiprocess::managers::Manager::start()?;
/// let ns = manager.namespace()?;
/// ns.set("x", &1)?;
/// ns.set("label", &"hello")?;
/// assert_eq!(ns.get::<i32>("x")?, 1);
/// assert_eq!(ns.get::<String>("label")?, "hello");
/// assert!(ns.get::<i32>("missing").is_err());
/// # Ok::<(), multiprocess::Error>(())
/// ```
#[derive(Serialize, Deserialize)]
pub struct NamespaceProxy {
    handle: Handle,
    #[serde(skip)]
    types: PhantomData<()>,
}

proxy_common!(NamespaceProxy, "Namespace");

impl NamespaceProxy {
    /// The attribute `name` (Python's `ns.name`).
    ///
    /// # Errors
    /// [`ManagerError::NoAttribute`] when it is not set; [`ManagerError::Decode`] when it is
    /// not a `T`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T, ManagerError> {
        self.handle
            .maybe(Op::Get(encode(name)?))?
            .ok_or_else(|| ManagerError::NoAttribute(name.to_string()))
    }

    /// Sets the attribute `name` (Python's `ns.name = value`).
    ///
    /// # Errors
    /// [`ManagerError::Encode`], or [`ManagerError::Gone`].
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::Set(encode(name)?, encode(value)?))
    }

    /// Removes the attribute `name` (Python's `del ns.name`); whether it was set.
    ///
    /// # Errors
    /// [`ManagerError::Gone`].
    pub fn remove(&self, name: &str) -> Result<bool, ManagerError> {
        match self.handle.call(Op::Remove(encode(name)?))? {
            Reply::Maybe(b) => Ok(b.is_some()),
            other => Err(unexpected(other)),
        }
    }

    /// Changes attribute `name` in place (see [`DictProxy::update`]); `T::default()` when
    /// not set.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn update<T: Serialize + DeserializeOwned + Default>(
        &self,
        name: &str,
        mut f: impl FnMut(&mut T),
    ) -> Result<T, ManagerError> {
        let k = encode(name)?;
        self.handle.update(
            || Op::GetVersioned(k.clone()),
            |v, version| Op::SetIfVersion(k.clone(), v, version),
            |v: Option<T>| {
                let mut v = v.unwrap_or_default();
                f(&mut v);
                v
            },
        )
    }

    /// The names set, in the order they were first set.
    ///
    /// # Errors
    /// [`ManagerError::Gone`].
    pub fn names(&self) -> Result<Vec<String>, ManagerError> {
        self.handle.list(Op::Keys)
    }
}

// ---------------------------------------------------------------------------------------------

/// A value held by a manager (Python's `ValueProxy`), from
/// [`Manager::value`](super::Manager::value).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ValueProxy<T> {
    handle: Handle,
    #[serde(skip)]
    types: PhantomData<fn() -> T>,
}

proxy_common!(ValueProxy<T>, "Value");

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// The value (Python's `v.value`).
    ///
    /// # Errors
    /// [`ManagerError::Gone`] when the manager is gone.
    pub fn get(&self) -> Result<T, ManagerError> {
        self.handle.value(Op::Load)
    }

    /// Replaces the value (Python's `v.value = x`).
    ///
    /// # Errors
    /// As [`get`](Self::get), or [`ManagerError::Encode`].
    pub fn set(&self, value: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::Store(encode(value)?))
    }

    /// Changes the value in place (see [`DictProxy::update`]; `v.value += 1` in Python is a
    /// race, this is not) and returns the new value.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn update(&self, mut f: impl FnMut(&mut T)) -> Result<T, ManagerError> {
        self.handle.update(
            || Op::LoadVersioned,
            Op::StoreIfVersion,
            |v: Option<T>| {
                let mut v = v.expect("a managed value always holds a value");
                f(&mut v);
                v
            },
        )
    }
}

// ---------------------------------------------------------------------------------------------

/// A queue held by a manager (Python's `manager.Queue()`), from
/// [`Manager::queue`](super::Manager::queue): usable across machines. An item taken for a
/// client that left before the answer reached it goes back to the front of the queue.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct QueueProxy<T> {
    handle: Handle,
    #[serde(skip)]
    types: PhantomData<fn() -> T>,
}

proxy_common!(QueueProxy<T>, "Queue");

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    /// Adds an item, waiting while the queue is full.
    ///
    /// # Errors
    /// [`ManagerError::Gone`] when the manager is gone, or [`ManagerError::Encode`].
    pub fn put(&self, item: &T) -> Result<(), ManagerError> {
        self.handle.unit(Op::Put(encode(item)?, None))
    }

    /// Adds an item, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`ManagerError::Full`] when there was no room in time; as [`put`](Self::put).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<(), ManagerError> {
        self.handle.unit(Op::Put(encode(item)?, Some(timeout)))
    }

    /// Adds an item if there is room now.
    ///
    /// # Errors
    /// [`ManagerError::Full`]; as [`put`](Self::put).
    pub fn put_nowait(&self, item: &T) -> Result<(), ManagerError> {
        self.put_timeout(item, Duration::ZERO)
    }

    /// Takes the first item, waiting for one.
    ///
    /// # Errors
    /// As [`put`](Self::put), or [`ManagerError::Decode`].
    pub fn get(&self) -> Result<T, ManagerError> {
        self.handle.value(Op::Take(None))
    }

    /// Takes the first item, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ManagerError::Empty`] when none came in time; as [`get`](Self::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, ManagerError> {
        self.handle.value(Op::Take(Some(timeout)))
    }

    /// Takes the first item if there is one now.
    ///
    /// # Errors
    /// [`ManagerError::Empty`]; as [`get`](Self::get).
    pub fn get_nowait(&self) -> Result<T, ManagerError> {
        self.get_timeout(Duration::ZERO)
    }

    /// The number of items.
    ///
    /// # Errors
    /// [`ManagerError::Gone`].
    pub fn qsize(&self) -> Result<usize, ManagerError> {
        self.handle.len(Op::QSize)
    }

    /// Whether the queue is empty.
    ///
    /// # Errors
    /// [`ManagerError::Gone`].
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.qsize()? == 0)
    }

    /// Whether the queue is full.
    ///
    /// # Errors
    /// [`ManagerError::Gone`].
    pub fn is_full(&self) -> Result<bool, ManagerError> {
        self.handle.flag(Op::IsFull)
    }
}

// ---------------------------------------------------------------------------------------------

/// A lock held by a manager (Python's `manager.Lock()`), from
/// [`Manager::lock`](super::Manager::lock). Any holder of a proxy may release it, as with
/// Python's; a client that ends while holding it releases it.
#[derive(Serialize, Deserialize)]
pub struct LockProxy {
    handle: Handle,
    #[serde(skip)]
    types: PhantomData<()>,
}

proxy_common!(LockProxy, "Lock");

impl LockProxy {
    /// Takes the lock, waiting as long as it takes (Python's `acquire()`).
    ///
    /// # Errors
    /// [`ManagerError::Gone`] when the manager is gone.
    pub fn acquire(&self) -> Result<(), ManagerError> {
        match self.handle.flag(Op::Acquire(None))? {
            true => Ok(()),
            false => Err(ManagerError::Remote("the lock was not acquired".into())),
        }
    }

    /// Takes the lock, waiting at most `timeout`; whether it was taken.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.handle.flag(Op::Acquire(Some(timeout)))
    }

    /// Releases the lock (Python's `release()`).
    ///
    /// # Errors
    /// [`ManagerError::NotLocked`] when it is not held.
    pub fn release(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::Release)
    }

    /// Takes the lock and returns a guard that releases it when dropped (Python's `with
    /// lock:`).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn lock(&self) -> Result<ManagedLockGuard<'_>, ManagerError> {
        self.acquire()?;
        Ok(ManagedLockGuard { lock: self })
    }

    /// Whether someone holds the lock.
    ///
    /// # Errors
    /// [`ManagerError::Gone`].
    pub fn locked(&self) -> Result<bool, ManagerError> {
        self.handle.flag(Op::Locked)
    }
}

/// Holds a [`LockProxy`]'s lock until dropped.
#[derive(Debug)]
pub struct ManagedLockGuard<'a> {
    lock: &'a LockProxy,
}

impl Drop for ManagedLockGuard<'_> {
    fn drop(&mut self) {
        // A manager that is gone released it with everything else.
        let _ = self.lock.release();
    }
}

// ---------------------------------------------------------------------------------------------

/// An event held by a manager (Python's `manager.Event()`), from
/// [`Manager::event`](super::Manager::event).
#[derive(Serialize, Deserialize)]
pub struct EventProxy {
    handle: Handle,
    #[serde(skip)]
    types: PhantomData<()>,
}

proxy_common!(EventProxy, "Event");

impl EventProxy {
    /// Sets the flag and wakes every waiter.
    ///
    /// # Errors
    /// [`ManagerError::Gone`] when the manager is gone.
    pub fn set(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::SetFlag)
    }

    /// Clears the flag.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.handle.unit(Op::ClearFlag)
    }

    /// Whether the flag is set.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn is_set(&self) -> Result<bool, ManagerError> {
        self.handle.flag(Op::IsSet)
    }

    /// Waits until the flag is set.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn wait(&self) -> Result<(), ManagerError> {
        self.handle.flag(Op::Wait(None)).map(|_| ())
    }

    /// Waits at most `timeout`; whether the flag is set.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.handle.flag(Op::Wait(Some(timeout)))
    }
}

// ---------------------------------------------------------------------------------------------

/// A proxy to a value of a registered type `T` (from [`Manager::create`](super::Manager::create)).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Proxy<T> {
    handle: Handle,
    #[serde(skip)]
    types: PhantomData<fn() -> T>,
}

proxy_common!(Proxy<T>, "registered");

impl<T: Shared> Proxy<T> {
    /// Sends `request` to the object; its [`Shared::handle`] answers in the manager's
    /// process.
    ///
    /// # Errors
    /// [`ManagerError::Remote`] when the handler panicked; [`ManagerError::Gone`] when the
    /// manager is gone.
    pub fn call(&self, request: T::Request) -> Result<T::Response, ManagerError> {
        self.handle.value(Op::User(encode(&request)?))
    }
}
