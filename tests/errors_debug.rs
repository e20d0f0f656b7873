//! Every public error's `Debug` shows its message, as `io::Error`'s does: what
//! `fn main() -> Result<(), E>` and `unwrap()` print must say what went wrong.

use multiprocess::{Pipe, Pool, Process, Queue};

fn nothing(_: ()) {}

#[test]
fn debug_shows_the_message() {
    let p = Process::new(nothing, ());
    let e = p.terminate().unwrap_err();
    let d = format!("{e:?}");
    assert!(d.contains("can only terminate a started process"), "{d}");
    assert!(e.to_string().contains("terminate"), "wording: {e}");

    let e = Pool::new(0).unwrap_err();
    let d = format!("{e:?}");
    assert!(d.contains(&e.to_string()), "{d}");

    let q: Queue<u32> = Queue::new(1).unwrap();
    let d = format!("{:?}", q.get_nowait().unwrap_err());
    assert!(d.contains("empty"), "{d}");
    q.close();
    let e = q.put(1).unwrap_err();
    let d = format!("{e:?}");
    assert!(d.contains(&e.to_string()) && d.starts_with("Closed"), "{d}");

    let (a, b) = Pipe::new().unwrap();
    drop(a);
    let e = b.recv::<u32>().unwrap_err();
    let d = format!("{e:?}");
    assert!(d.starts_with("Eof") && d.contains("other end"), "{d}");
}

#[test]
fn every_error_converts_into_the_crate_error_and_keeps_its_message() {
    use multiprocess::{Error, PoolErrorKind};
    use std::error::Error as _;

    let mut p = Process::new(nothing, ());
    let specific = p.join().unwrap_err();
    let message = specific.to_string();
    let e: Error = specific.into();
    assert_eq!(e.to_string(), message);
    assert!(format!("{e:?}").contains(&message));
    assert!(e.source().is_some());

    let pe = Pool::new(0).unwrap_err();
    assert_eq!(pe.kind(), PoolErrorKind::Misuse);
    assert!(matches!(Error::from(pe), Error::Pool(_)));

    let q: Queue<String> = Queue::new(1).unwrap();
    q.close();
    let e: Error = q.put("lost".to_string()).unwrap_err().into();
    assert!(matches!(e, Error::Put(multiprocess::PutError::Closed(()))));

    let (a, b) = Pipe::new().unwrap();
    drop(a);
    assert!(matches!(
        Error::from(b.recv::<u32>().unwrap_err()),
        Error::Connection(_)
    ));

    // `?` in a function returning the crate error, across parts of the crate.
    fn uses_several() -> Result<u64, Error> {
        let pool = Pool::new(1)?;
        let q: Queue<u64> = Queue::new(0)?;
        q.put(pool.apply(|x: u64| x + 1, 1)?)?;
        let v = multiprocess::Value::new(0u64)?;
        *v.lock()? += q.get()?;
        pool.close();
        pool.join()?;
        Ok(v.get())
    }
    assert_eq!(uses_several().unwrap(), 2);

    let pool = Pool::new(1).unwrap();
    pool.close();
    let e = pool.apply(|x: u8| x, 1).unwrap_err();
    assert_eq!(e.kind(), PoolErrorKind::Closed);
}
