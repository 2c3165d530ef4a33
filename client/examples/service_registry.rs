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

use conclave_client::mvccpb::KeyValue;
use conclave_client::{Client, ConnectOptions, Informer, InformerEvent, InformerOptions};
use tokio::sync::broadcast::error::RecvError;

const USAGE: &str = "usage: service_registry [--endpoints HOST:PORT,...] [--service NAME] \
                     [--id INSTANCE] [--address HOST:PORT] [--ttl SECONDS]";

/// The command line.
struct Args {
    endpoints: Vec<String>,
    service: String,
    id: String,
    address: String,
    ttl: i64,
}

impl Args {
    /// Parses `--flag value` or `--flag=value` pairs.
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            service: "demo".to_owned(),
            id: format!("instance-{}", std::process::id()),
            address: "127.0.0.1:8080".to_owned(),
            ttl: 10,
        };
        let mut raw = std::env::args().skip(1);
        while let Some(arg) = raw.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            if flag == "-h" || flag == "--help" {
                return Err(USAGE.to_owned());
            }
            let value = match inline.or_else(|| raw.next()) {
                Some(value) => value,
                None => return Err(format!("{flag} needs a value\n{USAGE}")),
            };
            match flag.as_str() {
                "--endpoints" => {
                    args.endpoints = value
                        .split(',')
                        .filter(|e| !e.trim().is_empty())
                        .map(|e| e.trim().to_owned())
                        .collect();
                }
                "--service" => args.service = value,
                "--id" => args.id = value,
                "--address" => args.address = value,
                "--ttl" => {
                    args.ttl = value
                        .parse()
                        .map_err(|err| format!("--ttl {value:?}: {err}\n{USAGE}"))?;
                }
                _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
            }
        }
        if args.service.is_empty() || args.service.contains('/') {
            return Err(format!(
                "--service must be a non-empty name without '/'\n{USAGE}"
            ));
        }
        Ok(args)
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
    let args = Args::parse()?;
    let client = Client::connect(&args.endpoints, ConnectOptions::new()).await?;
    let prefix = format!("services/{}/", args.service);
    let key = format!("{prefix}{}", args.id);

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
