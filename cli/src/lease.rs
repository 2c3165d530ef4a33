//! `kvctl lease grant|revoke|timetolive|list|keep-alive` with etcdctl's output lines.

use std::time::Duration;

use conclave_client::LeaseLoss;
use serde_json::Value;

use crate::kv::lease_id;
use crate::output::{self, Format, Obj, emit, text};
use crate::{Ctx, Failure};

#[derive(clap::Subcommand)]
pub enum LeaseCommand {
    /// Grants a lease of TTL seconds.
    Grant { ttl: i64 },
    /// Revokes a lease and deletes its keys.
    Revoke { id: String },
    /// Shows a lease's granted and remaining TTL.
    Timetolive {
        id: String,
        /// Also list the keys attached to it.
        #[arg(long)]
        keys: bool,
    },
    /// Lists the leases.
    List,
    /// Keeps a lease alive until interrupted (or renews it once with --once).
    KeepAlive {
        id: String,
        #[arg(long)]
        once: bool,
    },
}

fn header_only(h: &Option<conclave_client::proto::ResponseHeader>) -> Value {
    Obj::new().value("header", output::header(h)).build()
}

pub async fn run(ctx: &Ctx, cmd: LeaseCommand) -> Result<(), Failure> {
    let lease = ctx.client.lease();
    match cmd {
        LeaseCommand::Grant { ttl } => {
            let r = lease.grant(ttl, None).await?;
            let json = Obj::new()
                .value("header", output::header(&r.header))
                .int("ID", r.id)
                .int("TTL", r.ttl)
                .build();
            let line = format!("lease {:016x} granted with TTL({}s)", r.id, r.ttl);
            emit(ctx.format, vec![line], json, None);
        }
        LeaseCommand::Revoke { id } => {
            let id = lease_id(&id)?;
            let r = lease.revoke(id).await?;
            emit(
                ctx.format,
                vec![format!("lease {id:016x} revoked")],
                header_only(&r.header),
                None,
            );
        }
        LeaseCommand::Timetolive { id, keys } => {
            let id = lease_id(&id)?;
            let r = lease.time_to_live(id, keys).await?;
            let key_list: Vec<String> = r.keys.iter().map(|k| text(k)).collect();
            let line = if r.ttl == -1 {
                format!("lease {id:016x} already expired")
            } else if keys {
                format!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s), attached keys([{}])",
                    r.granted_ttl,
                    r.ttl,
                    key_list.join(" ")
                )
            } else {
                format!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s)",
                    r.granted_ttl, r.ttl
                )
            };
            let json = Obj::new()
                .value("header", output::header(&r.header))
                .int("ID", r.id)
                .int("TTL", r.ttl)
                .int("granted-ttl", r.granted_ttl)
                .value(
                    "keys",
                    Value::Array(r.keys.iter().map(|k| output::base64(k).into()).collect()),
                )
                .build();
            let table = output::table(
                &["ID", "GRANTED TTL", "REMAINING", "KEYS"],
                &[vec![
                    format!("{id:016x}"),
                    output::human_duration(Duration::from_secs(r.granted_ttl.max(0) as u64)),
                    if r.ttl < 0 {
                        "expired".into()
                    } else {
                        output::human_duration(Duration::from_secs(r.ttl as u64))
                    },
                    key_list.join(", "),
                ]],
            );
            emit(ctx.format, vec![line], json, Some(table));
        }
        LeaseCommand::List => {
            let r = lease.leases().await?;
            let mut lines = vec![format!("found {} leases", r.leases.len())];
            lines.extend(r.leases.iter().map(|l| format!("{:016x}", l.id)));
            let json = Obj::new()
                .value("header", output::header(&r.header))
                .value(
                    "leases",
                    Value::Array(
                        r.leases
                            .iter()
                            .map(|l| Obj::new().int("ID", l.id).build())
                            .collect(),
                    ),
                )
                .build();
            let rows: Vec<Vec<String>> = r
                .leases
                .iter()
                .map(|l| vec![format!("{:016x}", l.id)])
                .collect();
            emit(ctx.format, lines, json, Some(output::table(&["ID"], &rows)));
        }
        LeaseCommand::KeepAlive { id, once } => {
            let id = lease_id(&id)?;
            keep_alive(ctx, id, once).await?;
        }
    }
    Ok(())
}

fn print_renewal(format: Format, id: i64, ttl: i64) {
    let json = Obj::new().int("ID", id).int("TTL", ttl).build();
    emit(
        format,
        vec![format!("lease {id:016x} keepalived with TTL({ttl})")],
        json,
        None,
    );
}

async fn keep_alive(ctx: &Ctx, id: i64, once: bool) -> Result<(), Failure> {
    let handle = match ctx.client.lease().keep_alive(id).await {
        Ok(h) => h,
        Err(conclave_client::Error::LeaseNotFound) => {
            return Err(Failure {
                message: format!("lease {id:016x} expired or revoked"),
                code: 4,
            });
        }
        Err(e) => return Err(e.into()),
    };
    print_renewal(ctx.format, id, handle.ttl());
    if once {
        return Ok(());
    }
    let mut last = handle.deadline();
    loop {
        tokio::select! {
            loss = handle.lost() => {
                let why = match loss {
                    LeaseLoss::NotFound => "expired or revoked",
                    LeaseLoss::Expired => "expired: no renewal succeeded within its TTL",
                };
                return Err(Failure { message: format!("lease {id:016x} {why}"), code: 4 });
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let deadline = handle.deadline();
                if deadline != last {
                    last = deadline;
                    print_renewal(ctx.format, id, handle.ttl());
                }
            }
        }
    }
}
