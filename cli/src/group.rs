//! `group join|list|watch`: group membership (the client's `Group` recipe, on Conclave and etcd).
//! `join` keeps the member alive on a session until interrupted, then leaves (exit 4 if the
//! session is lost); `list` prints `ID METADATA JOIN_REVISION` per member; `watch` prints
//! `JOIN|UPDATE|LEAVE ID METADATA REVISION` per change, from `--rev` or from now, until interrupted.

use conclave_client::conclavepb::Member;
use conclave_client::conclavepb::group_event::EventType;
use conclave_client::{Group, Session, SessionOptions};
use serde_json::{Value, json};

use crate::output::{self, emit};
use crate::{Ctx, Failure};

#[derive(clap::Subcommand)]
pub enum GroupCommand {
    /// Joins GROUP as ID until interrupted (the member leaves with the session).
    Join {
        group: String,
        id: String,
        /// The member's metadata.
        #[arg(long, default_value = "")]
        metadata: String,
        /// TTL of the member's session, in seconds.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
    },
    /// Lists the members of GROUP.
    List { group: String },
    /// Prints the joins, updates and leaves of GROUP until interrupted.
    Watch {
        group: String,
        /// First revision to report (default: changes from now on).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn member_json(m: &Member) -> Value {
    json!({
        "id": text(&m.id),
        "metadata": text(&m.metadata),
        "join_revision": m.join_revision,
        "update_revision": m.update_revision,
        "lease": format!("{:x}", m.lease),
    })
}

pub async fn run(ctx: &Ctx, cmd: GroupCommand) -> Result<(), Failure> {
    match cmd {
        GroupCommand::Join {
            group,
            id,
            metadata,
            ttl,
        } => join(ctx, &group, id, metadata, ttl).await,
        GroupCommand::List { group } => list(ctx, &group).await,
        GroupCommand::Watch { group, rev } => watch(ctx, &group, rev).await,
    }
}

fn group_of(ctx: &Ctx, name: &str) -> Result<Group, Failure> {
    Group::new(&ctx.client, name).map_err(|e| Failure::usage(e.to_string()))
}

async fn join(
    ctx: &Ctx,
    name: &str,
    id: String,
    metadata: String,
    ttl: i64,
) -> Result<(), Failure> {
    if ttl <= 0 {
        return Err(Failure::usage("--ttl must be a positive number of seconds"));
    }
    let group = group_of(ctx, name)?;
    let session = Session::new(&ctx.client, SessionOptions::new(ttl)).await?;
    let member = group.join_session(&session, id.clone(), metadata).await?;
    emit(
        ctx.format,
        vec![format!("joined {name} as {id} (lease {:x})", member.lease)],
        member_json(&member),
        None,
    );
    let stop = crate::stop_requested()?;
    let outcome = tokio::select! {
        _ = stop => Ok(()),
        _ = session.lost() => Err(Failure {
            message: format!("the session of {id} expired: it left {name}"),
            code: 4,
        }),
    };
    let left = group.leave(id).await;
    let closed = session.close().await;
    outcome?;
    left?;
    closed?;
    Ok(())
}

async fn list(ctx: &Ctx, name: &str) -> Result<(), Failure> {
    let (revision, members) = group_of(ctx, name)?.list().await?;
    let lines = members
        .iter()
        .map(|m| format!("{} {} {}", text(&m.id), text(&m.metadata), m.join_revision))
        .collect();
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                text(&m.id),
                text(&m.metadata),
                m.join_revision.to_string(),
                format!("{:x}", m.lease),
            ]
        })
        .collect();
    let table = output::table(&["ID", "METADATA", "JOIN REVISION", "LEASE"], &rows);
    let json = json!({
        "revision": revision,
        "members": members.iter().map(member_json).collect::<Vec<_>>(),
    });
    emit(ctx.format, lines, json, Some(table));
    Ok(())
}

async fn watch(ctx: &Ctx, name: &str, rev: i64) -> Result<(), Failure> {
    let mut changes = group_of(ctx, name)?.watch(rev).await?;
    loop {
        let batch = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            batch = changes.next() => batch,
        };
        let Some(batch) = batch else { return Ok(()) };
        for event in batch? {
            let kind = EventType::try_from(event.r#type).map_or("UNKNOWN", |t| t.as_str_name());
            let member = event.member.unwrap_or_default();
            emit(
                ctx.format,
                vec![format!(
                    "{kind} {} {} {}",
                    text(&member.id),
                    text(&member.metadata),
                    event.revision
                )],
                json!({"type": kind, "revision": event.revision, "member": member_json(&member)}),
                None,
            );
        }
    }
}
