//! Campaigns for leadership of an election, leads until Ctrl-C (then resigns), and prints every
//! leader meanwhile; if its lease is lost it says so and stops leading.
//!
//! ```sh
//! cargo run -p conclave-client --example leader -- --endpoints 127.0.0.1:2379 \
//!     --election demo/scheduler --value "$(hostname):9000"
//! ```
//!
//! Run several: one leads, the others wait; Ctrl-C the leader (or `kill -STOP` it past `--ttl`)
//! and the next one takes over, in the order they campaigned.

use std::error::Error as StdError;

use clap::Parser;
use conclave_client::{Client, ConnectOptions, Election, Session, SessionOptions};

/// The command line.
#[derive(Parser)]
#[command(about = "Campaigns in an election and leads until Ctrl-C")]
struct Args {
    /// Members to connect to.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Election name.
    #[arg(long, default_value = "demo/scheduler")]
    election: String,
    /// This candidate's value (its address, for instance).
    #[arg(long, default_value = "candidate")]
    value: String,
    /// Session TTL in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let args = Args::parse();
    let client = Client::connect(&args.endpoints, ConnectOptions::new()).await?;
    let election = Election::new(&client, args.election.as_str());
    let mut observer = election.observe();
    tokio::spawn(async move {
        while let Some(Ok(kv)) = observer.next().await {
            println!("leader: {}", String::from_utf8_lossy(&kv.value));
        }
    });
    let session = Session::new(&client, SessionOptions::new(args.ttl)).await?;
    println!("campaigning as {}", args.value);
    let leadership = election.campaign(&session, args.value.as_str()).await?;
    println!("elected (fencing token {})", leadership.revision());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            leadership.resign(&client).await?;
            session.close().await?;
            println!("resigned");
        }
        loss = session.lost() => println!("lease lost ({loss:?}): no longer leader"),
        _ = leadership.lost(&client) => println!("leader key gone: no longer leader"),
    }
    Ok(())
}
