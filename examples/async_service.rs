//! A tokio service that runs CPU-heavy, crash-prone work in a process pool, one task per
//! request, without blocking its runtime or dying with the work.
//!
//! Run it with `cargo run --example async_service`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use multiprocess::{Pool, PoolErrorKind};

/// The heavy function: counts the primes below `n` (a native routine, in real life).
fn count_primes(n: u64) -> u64 {
    if n == 13 {
        // A request that crashes the code it runs (a segfault in a C library, say).
        std::process::abort();
    }
    (2..n)
        .filter(|k| (2..).take_while(|d| d * d <= *k).all(|d| k % d != 0))
        .count() as u64
}

/// One request: offloads the work and awaits it; the runtime thread is free meanwhile.
async fn handle(pool: Arc<Pool>, id: usize, n: u64) -> String {
    let started = Instant::now();
    match pool.apply_async(count_primes, n).await {
        Ok(primes) => format!(
            "request {id}: {primes} primes below {n} ({:.0} ms)",
            started.elapsed().as_secs_f64() * 1e3
        ),
        Err(e) if e.kind() == PoolErrorKind::WorkerLost => {
            format!("request {id}: the worker crashed on n = {n}; answered 500, service goes on")
        }
        Err(e) => format!("request {id}: error {e}"),
    }
}

fn main() -> Result<(), multiprocess::Error> {
    multiprocess::init();
    let pool = Arc::new(Pool::new(multiprocess::cpu_count())?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        // A heartbeat: it keeps ticking while the pool computes, because no runtime thread
        // waits for a result.
        let ticks = tokio::spawn(async {
            let mut n = 0;
            let mut every = tokio::time::interval(Duration::from_millis(10));
            let end = Instant::now() + Duration::from_millis(400);
            while Instant::now() < end {
                every.tick().await;
                n += 1;
            }
            n
        });
        let requests = [200_000, 13, 150_000, 50_000, 300_000, 1_000];
        let handles: Vec<_> = requests
            .iter()
            .enumerate()
            .map(|(id, &n)| tokio::spawn(handle(pool.clone(), id, n)))
            .collect();
        for h in handles {
            println!("{}", h.await.expect("a request task"));
        }
        println!(
            "heartbeat ticked {} times in 400 ms while the requests ran (40 = never blocked)",
            ticks.await.expect("the heartbeat")
        );
    });
    Ok(())
}
