//! Increments a shared counter under a lock, with every write fenced by the lock's token: the
//! pattern docs/coordination.md teaches. Run several at once; the counter ends at the sum of their
//! `--times`, whatever happens to any of them.
//!
//! ```sh
//! cargo run -p conclave-client --example fenced_counter -- \
//!     --endpoints 127.0.0.1:2379 --lock demo/lock --counter demo/counter --times 20
//! ```
//!
//! Stop one with SIGSTOP for longer than `--ttl` and SIGCONT it: its lock is gone by then, its next
//! write is refused by the fence, and it says so instead of overwriting someone else's increment.

use std::error::Error as StdError;

use clap::Parser;
use conclave_client::{
    Client, ConnectOptions, GetOptions, Mutex, PutOptions, Session, SessionOptions, Txn, TxnOp,
};

/// The command line.
#[derive(Parser)]
#[command(about = "Increments a counter under a fenced lock")]
struct Args {
    /// Members to connect to.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Lock name.
    #[arg(long, default_value = "demo/lock")]
    lock: String,
    /// Counter key.
    #[arg(long, default_value = "demo/counter")]
    counter: String,
    /// Increments to make.
    #[arg(long, default_value_t = 10)]
    times: u32,
    /// Session TTL in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let args = Args::parse();
    let client = Client::connect(&args.endpoints, ConnectOptions::new()).await?;
    let mut session = Session::new(&client, SessionOptions::new(args.ttl)).await?;
    let mut done = 0;
    while done < args.times {
        if session.is_lost() {
            session = Session::new(&client, SessionOptions::new(args.ttl)).await?;
        }
        let held = Mutex::new(&session, args.lock.as_str()).lock().await?;
        let current = client
            .kv()
            .get(args.counter.as_str(), GetOptions::new())
            .await?;
        let value: u64 = current
            .kvs
            .first()
            .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
            .unwrap_or(0);
        let write = Txn::new().when([held.fence()]).and_then([TxnOp::put(
            args.counter.as_str(),
            (value + 1).to_string(),
            PutOptions::new(),
        )]);
        if client.kv().txn(write).await?.succeeded {
            done += 1;
            println!(
                "{} -> {} (token {})",
                value,
                value + 1,
                held.fencing_token()
            );
        } else {
            println!(
                "lock lost before writing (token {}): not written",
                held.fencing_token()
            );
        }
        held.unlock(&client).await?;
    }
    session.close().await?;
    Ok(())
}
