//! Cluster commands: `member list|add|remove|update|promote`, `endpoint health`, `endpoint
//! status`, `move-leader`, `defrag` — with etcdctl's simple lines, JSON and tables. Endpoint
//! commands (and defrag) ask each endpoint on its own.

use std::time::{Duration, Instant};

use conclave_client::{Client, ConnectOptions, GetOptions};
use serde_json::{Value, json};

use crate::output::{self, Obj, emit};
use crate::{Ctx, Failure};

#[derive(clap::Subcommand)]
pub enum MemberCommand {
    /// Lists members.
    List,
    /// Adds a member NAME reachable at --peer-urls; prints the flags to start it with.
    Add {
        name: String,
        /// Comma-separated peer URLs of the new member.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Adds a learner: it replicates without voting until promoted.
        #[arg(long)]
        learner: bool,
    },
    /// Removes the member with this hex id (it stops itself).
    Remove { id: String },
    /// Changes the peer URLs of the member with this hex id.
    Update {
        id: String,
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
    /// Makes the learner with this hex id a voter (refused until it has caught up).
    Promote { id: String },
}

/// A member id as etcdctl takes it: hexadecimal.
fn parse_id(text: &str) -> Result<u64, Failure> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|e| Failure {
        message: format!("bad member ID arg ({text}): {e}, expecting ID in Hex"),
        code: 1,
    })
}

/// The member list of a change's response, as JSON.
fn members_json(members: &[conclave_client::proto::Member]) -> Value {
    Value::Array(
        members
            .iter()
            .map(|m| {
                Obj::new()
                    .uint("ID", m.id)
                    .str("name", &m.name)
                    .value("peerURLs", json!(m.peer_ur_ls))
                    .value("clientURLs", json!(m.client_ur_ls))
                    .bool("isLearner", m.is_learner)
                    .build()
            })
            .collect(),
    )
}

/// Runs a member command and prints etcdctl's answer.
pub async fn member(ctx: &Ctx, cmd: MemberCommand) -> Result<(), Failure> {
    let cluster = ctx.client.cluster();
    match cmd {
        MemberCommand::List => list(ctx).await?,
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            let r = cluster.member_add(peer_urls.clone(), learner).await?;
            let header = r.header.unwrap_or_default();
            let id = r.member.as_ref().map_or(0, |m| m.id);
            let initial: Vec<String> = r
                .members
                .iter()
                .flat_map(|m| {
                    let n = if m.id == id {
                        name.clone()
                    } else {
                        m.name.clone()
                    };
                    m.peer_ur_ls
                        .iter()
                        .map(move |u| format!("{n}={u}"))
                        .collect::<Vec<_>>()
                })
                .collect();
            let lines = vec![
                format!("Member {id:16x} added to cluster {:16x}", header.cluster_id),
                String::new(),
                format!("ETCD_NAME=\"{name}\""),
                format!("ETCD_INITIAL_CLUSTER=\"{}\"", initial.join(",")),
                format!(
                    "ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"",
                    peer_urls.join(",")
                ),
                "ETCD_INITIAL_CLUSTER_STATE=\"existing\"".into(),
            ];
            let member = r.member.map(|m| members_json(&[m])).unwrap_or(Value::Null);
            let json = Obj::new()
                .value("header", output::header(&Some(header)))
                .value("member", member.get(0).cloned().unwrap_or(Value::Null))
                .value("members", members_json(&r.members))
                .build();
            emit(ctx.format, lines, json, None);
        }
        MemberCommand::Remove { id } => {
            let id = parse_id(&id)?;
            let r = cluster.member_remove(id).await?;
            let cluster_id = r.header.as_ref().map_or(0, |h| h.cluster_id);
            let json = Obj::new()
                .value("header", output::header(&r.header))
                .value("members", members_json(&r.members))
                .build();
            let line = format!("Member {id:16x} removed from cluster {cluster_id:16x}");
            emit(ctx.format, vec![line], json, None);
        }
        MemberCommand::Update { id, peer_urls } => {
            let id = parse_id(&id)?;
            let r = cluster.member_update(id, peer_urls).await?;
            let cluster_id = r.header.as_ref().map_or(0, |h| h.cluster_id);
            let json = Obj::new()
                .value("header", output::header(&r.header))
                .value("members", members_json(&r.members))
                .build();
            let line = format!("Member {id:16x} updated in cluster {cluster_id:16x}");
            emit(ctx.format, vec![line], json, None);
        }
        MemberCommand::Promote { id } => {
            let id = parse_id(&id)?;
            let r = cluster.member_promote(id).await?;
            let cluster_id = r.header.as_ref().map_or(0, |h| h.cluster_id);
            let json = Obj::new()
                .value("header", output::header(&r.header))
                .value("members", members_json(&r.members))
                .build();
            let line = format!("Member {id:16x} promoted in cluster {cluster_id:16x}");
            emit(ctx.format, vec![line], json, None);
        }
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum EndpointCommand {
    /// Checks that each endpoint serves a linearizable read.
    Health,
    /// Status of each endpoint.
    Status,
}

async fn list(ctx: &Ctx) -> Result<(), Failure> {
    let r = ctx.client.cluster().member_list().await?;
    let lines = r
        .members
        .iter()
        .map(|m| {
            format!(
                "{:x}, {}, {}, {}, {}, {}",
                m.id,
                started(m),
                m.name,
                m.peer_ur_ls.join(","),
                m.client_ur_ls.join(","),
                m.is_learner
            )
        })
        .collect();
    let json = Obj::new()
        .value("header", output::header(&r.header))
        .value("members", members_json(&r.members))
        .build();
    let rows: Vec<Vec<String>> = r
        .members
        .iter()
        .map(|m| {
            vec![
                format!("{:x}", m.id),
                started(m).into(),
                m.name.clone(),
                m.peer_ur_ls.join(","),
                m.client_ur_ls.join(","),
                m.is_learner.to_string(),
            ]
        })
        .collect();
    let table = output::table(
        &[
            "ID",
            "STATUS",
            "NAME",
            "PEER ADDRS",
            "CLIENT ADDRS",
            "IS LEARNER",
        ],
        &rows,
    );
    emit(ctx.format, lines, json, Some(table));
    Ok(())
}

/// etcdctl's status column: a member that never published its name has not started yet.
fn started(m: &conclave_client::proto::Member) -> &'static str {
    if m.name.is_empty() {
        "unstarted"
    } else {
        "started"
    }
}

/// A client bound to one endpoint, without failover: the answer is that endpoint's.
async fn single(ctx: &Ctx, endpoint: &str) -> Result<Client, conclave_client::Error> {
    let o: ConnectOptions = ctx.client.options().clone().with_max_attempts(1);
    Client::connect([endpoint], o).await
}

pub async fn endpoint(ctx: &Ctx, cmd: EndpointCommand) -> Result<(), Failure> {
    match cmd {
        EndpointCommand::Health => health(ctx).await,
        EndpointCommand::Status => status(ctx).await,
    }
}

async fn health(ctx: &Ctx) -> Result<(), Failure> {
    let mut lines = Vec::new();
    let mut json = Vec::new();
    let mut rows = Vec::new();
    let mut unhealthy = 0;
    for ep in ctx.client.endpoints() {
        let started = Instant::now();
        let outcome = match single(ctx, &ep).await {
            Ok(c) => c.kv().get("health", GetOptions::new()).await.map(|_| ()),
            Err(e) => Err(e),
        };
        let took = started.elapsed();
        match outcome {
            Ok(()) => {
                lines.push(format!(
                    "{ep} is healthy: successfully committed proposal: took = {took:?}"
                ));
                json.push(json!({"endpoint": ep, "health": true, "took": format!("{took:?}")}));
                rows.push(vec![
                    ep.clone(),
                    "true".into(),
                    format!("{took:?}"),
                    String::new(),
                ]);
            }
            Err(e) => {
                unhealthy += 1;
                lines.push(format!("{ep} is unhealthy: failed to commit proposal: {e}"));
                json.push(json!({"endpoint": ep, "health": false, "took": format!("{took:?}"), "error": e.to_string()}));
                rows.push(vec![
                    ep.clone(),
                    "false".into(),
                    format!("{took:?}"),
                    e.to_string(),
                ]);
            }
        }
    }
    let table = output::table(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"], &rows);
    emit(ctx.format, lines, Value::Array(json), Some(table));
    if unhealthy > 0 {
        return Err(Failure {
            message: "unhealthy cluster".into(),
            code: 1,
        });
    }
    Ok(())
}

async fn status(ctx: &Ctx) -> Result<(), Failure> {
    let mut lines = Vec::new();
    let mut json = Vec::new();
    let mut rows = Vec::new();
    let mut failed = None;
    for ep in ctx.client.endpoints() {
        let s = match ctx.client.maintenance().status_on(&ep).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("Failed to get the status of endpoint {ep} ({e})");
                failed = Some(e);
                continue;
            }
        };
        let member = s.header.map(|h| h.member_id).unwrap_or_default();
        let errors = s.errors.join(", ");
        lines.push(format!(
            "{ep}, {member:x}, {}, {}, {}, {}, {}, {}, {}, {errors}",
            s.version,
            output::human_size(s.db_size),
            member == s.leader,
            s.is_learner,
            s.raft_term,
            s.raft_index,
            s.raft_applied_index
        ));
        let st = Obj::new()
            .value("header", output::header(&s.header))
            .str("version", &s.version)
            .int("dbSize", s.db_size)
            .uint("leader", s.leader)
            .uint("raftIndex", s.raft_index)
            .uint("raftTerm", s.raft_term)
            .uint("raftAppliedIndex", s.raft_applied_index)
            .int("dbSizeInUse", s.db_size_in_use)
            .bool("isLearner", s.is_learner)
            .value("errors", json!(s.errors))
            .build();
        json.push(json!({"Endpoint": ep, "Status": st}));
        rows.push(vec![
            ep.clone(),
            format!("{member:x}"),
            s.version.clone(),
            output::human_size(s.db_size),
            (member == s.leader).to_string(),
            s.is_learner.to_string(),
            s.raft_term.to_string(),
            s.raft_index.to_string(),
            s.raft_applied_index.to_string(),
            errors,
        ]);
    }
    let table = output::table(
        &[
            "ENDPOINT",
            "ID",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "ERRORS",
        ],
        &rows,
    );
    emit(ctx.format, lines, Value::Array(json), Some(table));
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

#[derive(clap::Args)]
pub struct DefragArgs {
    /// Defragments every member (found through the member list) instead of the endpoints.
    #[arg(long)]
    cluster: bool,
}

/// Time allowed to one member's defragmentation when --command-timeout is shorter: copying a
/// large database takes a while (the member serves meanwhile).
const DEFRAG_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn defrag(ctx: &Ctx, args: DefragArgs) -> Result<(), Failure> {
    let targets = if args.cluster {
        let members = ctx.client.cluster().member_list().await?.members;
        members
            .into_iter()
            .filter_map(|m| m.client_ur_ls.into_iter().next())
            .collect()
    } else {
        ctx.client.endpoints()
    };
    let options = ctx.client.options().clone();
    let timeout = options.request_timeout().max(DEFRAG_TIMEOUT);
    let client = Client::connect(
        ctx.client.endpoints().iter().map(String::as_str),
        options.with_request_timeout(timeout),
    )
    .await?;
    let mut lines = Vec::new();
    let mut json = Vec::new();
    let mut failed = None;
    for ep in targets {
        let started = Instant::now();
        match client.maintenance().defragment_on(&ep).await {
            Ok(_) => {
                let took = started.elapsed();
                lines.push(format!(
                    "Finished defragmenting etcd member[{ep}]. took {took:?}"
                ));
                json.push(json!({"endpoint": ep, "took": format!("{took:?}")}));
            }
            Err(e) => {
                eprintln!("Failed to defragment etcd member[{ep}] ({e})");
                json.push(json!({"endpoint": ep, "error": e.to_string()}));
                failed = Some(e);
            }
        }
    }
    emit(ctx.format, lines, Value::Array(json), None);
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

pub async fn move_leader(ctx: &Ctx, target: &str) -> Result<(), Failure> {
    let id = u64::from_str_radix(target, 16)
        .map_err(|e| Failure::usage(format!("bad member id {target:?}: {e}")))?;
    let started = Instant::now();
    let r = ctx.client.maintenance().move_leader(id).await?;
    let took: Duration = started.elapsed();
    emit(
        ctx.format,
        vec![format!("Leadership transferred to {id:x} (took {took:?})")],
        Obj::new()
            .value("header", output::header(&r.header))
            .build(),
        None,
    );
    Ok(())
}
