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
