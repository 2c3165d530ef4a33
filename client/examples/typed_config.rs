//! Follows a typed configuration value and, with `--bump`, raises one of its fields by
//! compare-and-swap (concurrent bumps from several processes all count).
//!
//! ```sh
//! cargo run -p conclave-client --example typed_config -- --endpoints 127.0.0.1:2379 --watch
//! cargo run -p conclave-client --example typed_config -- --endpoints 127.0.0.1:2379 --bump 5
//! ```

use std::error::Error as StdError;

use clap::Parser;
use conclave_client::{Client, Config, ConnectOptions};
use serde::{Deserialize, Serialize};

/// The configuration this example manages.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
struct Limits {
    max_connections: u32,
}

/// The command line.
#[derive(Parser)]
#[command(about = "Watches or bumps a typed configuration value")]
struct Args {
    /// Members to connect to.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// The configuration key.
    #[arg(long, default_value = "demo/limits")]
    key: String,
    /// Raise max_connections this many times, one compare-and-swap each.
    #[arg(long, default_value_t = 0)]
    bump: u32,
    /// Print the value and every change until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let args = Args::parse();
    let client = Client::connect(&args.endpoints, ConnectOptions::new()).await?;
    let limits: Config<Limits> = Config::new(&client, args.key.as_str());
    for _ in 0..args.bump {
        let written = limits
            .update(|current| {
                let mut l = current.unwrap_or_default();
                l.max_connections += 1;
                l
            })
            .await?;
        println!("{:?} at revision {}", written.value, written.revision);
    }
    if args.watch {
        let mut changes = limits.watch().await?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                next = changes.next() => match next {
                    Some(Ok(Some(v))) => println!("{:?} at revision {}", v.value, v.revision),
                    Some(Ok(None)) => println!("not set"),
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                },
            }
        }
    }
    Ok(())
}
