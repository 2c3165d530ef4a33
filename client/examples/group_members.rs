//! Joins a membership group, prints its members, then every join, update and leave until Ctrl-C
//! (then leaves). List, then watch from the list's revision + 1: nothing is missed in between.
//!
//! ```sh
//! cargo run -p conclave-client --example group_members -- --endpoints 127.0.0.1:2379 \
//!     --group workers --id "w-$$" --metadata 10.0.0.7:7000
//! ```
//!
//! Run several with different `--id`s; `kill -9` one and the others see it leave once its TTL ran
//! out.

use std::error::Error as StdError;

use clap::Parser;
use conclave_client::conclavepb::group_event::EventType;
use conclave_client::{Client, ConnectOptions, Group, Session, SessionOptions};

/// The command line.
#[derive(Parser)]
#[command(about = "Joins a group and follows its members")]
struct Args {
    /// Members to connect to.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Group name (no '/').
    #[arg(long, default_value = "demo")]
    group: String,
    /// This member's id.
    #[arg(long, default_value = "member")]
    id: String,
    /// This member's metadata.
    #[arg(long, default_value = "")]
    metadata: String,
    /// Session TTL in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let args = Args::parse();
    let client = Client::connect(&args.endpoints, ConnectOptions::new()).await?;
    let group = Group::new(&client, &args.group)?;
    let session = Session::new(&client, SessionOptions::new(args.ttl)).await?;
    group
        .join_session(&session, args.id.as_str(), args.metadata.as_str())
        .await?;
    let (revision, members) = group.list().await?;
    for m in &members {
        println!(
            "member {} ({}) since revision {}",
            String::from_utf8_lossy(&m.id),
            String::from_utf8_lossy(&m.metadata),
            m.join_revision
        );
    }
    let mut changes = group.watch(revision + 1).await?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = session.lost() => {
                println!("session lost: this member has left");
                return Ok(());
            }
            batch = changes.next() => {
                let Some(batch) = batch else { break };
                for event in batch? {
                    let kind = EventType::try_from(event.r#type).map_or("?", |t| t.as_str_name());
                    let m = event.member.unwrap_or_default();
                    println!("{kind} {} ({}) at revision {}", String::from_utf8_lossy(&m.id),
                        String::from_utf8_lossy(&m.metadata), event.revision);
                }
            }
        }
    }
    group.leave(args.id.as_str()).await?;
    session.close().await?;
    Ok(())
}
