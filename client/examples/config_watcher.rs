//! Mirrors a configuration prefix with an [`Informer`] and prints every change until Ctrl-C.
//!
//! ```sh
//! cargo run -p conclave-client --example config_watcher -- \
//!     --endpoints 127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379 --prefix config/
//! ```
//!
//! Try it with `kvctl put config/mode active`, `kvctl del config/mode`, and `kvctl compaction` while
//! a member is down: the watcher re-lists and prints the whole configuration again.

use std::collections::BTreeMap;
use std::error::Error as StdError;

use clap::Parser;
use conclave_client::mvccpb::KeyValue;
use conclave_client::{Client, ConnectOptions, Informer, InformerEvent, InformerOptions};
use tokio::sync::broadcast::error::RecvError;

/// The command line.
#[derive(Parser)]
#[command(about = "Prints a prefix's configuration and every change to it")]
struct Args {
    /// Members to connect to.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// The configuration prefix to follow.
    #[arg(long, default_value = "config/")]
    prefix: String,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn print_all(revision: i64, config: &BTreeMap<Vec<u8>, KeyValue>) {
    println!("# {} keys at revision {revision}", config.len());
    for kv in config.values() {
        println!("{} = {}", text(&kv.key), text(&kv.value));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let args = Args::parse();
    let client = Client::connect(&args.endpoints, ConnectOptions::new()).await?;
    let informer = Informer::start(&client, args.prefix.as_str(), InformerOptions::new()).await?;
    let (revision, config, mut events) = informer.subscribe_with_snapshot();
    print_all(revision, &config);
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => event,
        };
        match event {
            Ok(InformerEvent::Put { kv, prev: None }) => {
                println!(
                    "+ {} = {}  (rev {})",
                    text(&kv.key),
                    text(&kv.value),
                    kv.mod_revision
                );
            }
            Ok(InformerEvent::Put {
                kv,
                prev: Some(prev),
            }) => println!(
                "~ {} = {}  (was {}, rev {})",
                text(&kv.key),
                text(&kv.value),
                text(&prev.value),
                kv.mod_revision
            ),
            Ok(InformerEvent::Delete { key, revision, .. }) => {
                println!("- {}  (rev {revision})", text(&key));
            }
            Ok(InformerEvent::Resync { revision }) => {
                println!("# history was compacted; re-listed at revision {revision}");
                let (revision, config) = informer.snapshot();
                print_all(revision, &config);
            }
            Err(RecvError::Lagged(missed)) => {
                println!("# fell {missed} events behind; the whole configuration again:");
                let (revision, config, fresh) = informer.subscribe_with_snapshot();
                events = fresh;
                print_all(revision, &config);
            }
            Err(RecvError::Closed) => break,
        }
    }
    Ok(())
}
