//! Registers one instance of a service under a key held by a [`Session`], lists the instances,
//! and prints joins and leaves until Ctrl-C, then deregisters.
//!
//! ```sh
//! cargo run -p conclave-client --example service_registry -- \
//!     --endpoints 127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379 \
//!     --service api --id api-1 --address 10.0.0.7:8080 --ttl 10
//! ```
//!
//! Run several with different `--id`s: each sees the others join and leave. Ctrl-C deregisters at
//! once (the session is closed, revoking its lease); `kill -9` leaves the key until the TTL runs
//! out, and the others see the instance leave then.

use std::collections::BTreeMap;
use std::error::Error as StdError;

use clap::Parser;
use conclave_client::mvccpb::KeyValue;
use conclave_client::{Client, ConnectOptions, Informer, InformerEvent, InformerOptions};
use tokio::sync::broadcast::error::RecvError;

/// The command line.
#[derive(Parser)]
#[command(about = "Registers one service instance and follows the others")]
struct Args {
    /// Members to connect to.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Service name (no '/').
    #[arg(long, default_value = "demo", value_parser = service_name)]
    service: String,
    /// This instance's name (default: instance-<pid>).
    #[arg(long)]
    id: Option<String>,
    /// The address this instance advertises.
    #[arg(long, default_value = "127.0.0.1:8080")]
    address: String,
    /// Session TTL in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
}

fn service_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.contains('/') {
        Err("a non-empty name without '/'".into())
    } else {
        Ok(name.to_owned())
    }
}

/// The instance name of a registry key (the key without the service prefix).
fn instance(prefix: &str, key: &[u8]) -> String {
    let name = key.strip_prefix(prefix.as_bytes()).unwrap_or(key);
    String::from_utf8_lossy(name).into_owned()
}

fn print_instances(prefix: &str, instances: &BTreeMap<Vec<u8>, KeyValue>) {
    println!("{} instance(s):", instances.len());
    for kv in instances.values() {
        println!(
            "  {} at {}",
            instance(prefix, &kv.key),
            String::from_utf8_lossy(&kv.value)
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let args = Args::parse();
    let client = Client::connect(&args.endpoints, ConnectOptions::new()).await?;
    let prefix = format!("services/{}/", args.service);
    let id = args
        .id
        .unwrap_or_else(|| format!("instance-{}", std::process::id()));
    let key = format!("{prefix}{id}");

    // Register: the key lives exactly as long as the session's lease.
    let session = client.session(args.ttl).await?;
    session.put(key.as_str(), args.address.as_str()).await?;
    println!(
        "registered {key} = {} (lease {:x}, TTL {} s)",
        args.address,
        session.lease_id(),
        session.ttl()
    );

    // Discover: the current instances, then every join and leave.
    let informer = Informer::start(&client, prefix.as_str(), InformerOptions::new()).await?;
    let (_, instances, mut events) = informer.subscribe_with_snapshot();
    print_instances(&prefix, &instances);

    let outcome: Result<(), String> = loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            loss = session.lost() => {
                break Err(format!("registration lost ({loss:?}): {key} is gone"));
            }
            event = events.recv() => event,
        };
        match event {
            Ok(InformerEvent::Put { kv, prev: None }) => println!(
                "joined: {} at {}",
                instance(&prefix, &kv.key),
                String::from_utf8_lossy(&kv.value)
            ),
            Ok(InformerEvent::Put { kv, prev: Some(_) }) => println!(
                "moved: {} now at {}",
                instance(&prefix, &kv.key),
                String::from_utf8_lossy(&kv.value)
            ),
            Ok(InformerEvent::Delete { key: left, .. }) => {
                println!("left: {}", instance(&prefix, &left));
            }
            Ok(InformerEvent::Resync { .. }) => {
                let (_, instances) = informer.snapshot();
                print_instances(&prefix, &instances);
            }
            Err(RecvError::Lagged(_)) => {
                let (_, instances, fresh) = informer.subscribe_with_snapshot();
                events = fresh;
                print_instances(&prefix, &instances);
            }
            Err(RecvError::Closed) => break Ok(()),
        }
    };

    match outcome {
        Ok(()) => {
            // Deregister at once rather than when the TTL runs out.
            session.close().await?;
            println!("deregistered {key}");
            Ok(())
        }
        Err(lost) => Err(lost.into()),
    }
}
