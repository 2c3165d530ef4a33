//! `lock NAME [-- COMMAND...]`, as etcdctl's: takes the lock on a session of `--ttl` seconds, then
//! either runs COMMAND under it (with `ETCD_LOCK_KEY` and `ETCD_LOCK_REV` set, etcdctl's names;
//! kvctl exits 1 if the command fails), or prints the lock key and holds the lock until interrupted.
//! Either way the lock is released and the session's lease revoked at the end. If the lease is
//! lost while holding, the lock is gone: the command is stopped and kvctl exits 4.

use std::process::Stdio;

use conclave_client::{LockHeld, Mutex, Session, SessionOptions};
use serde_json::json;

use crate::output::emit;
use crate::{Ctx, Failure};

#[derive(clap::Args)]
pub struct LockArgs {
    /// Lock name (the lock keys live under NAME/).
    name: String,
    /// Command to run while holding the lock (its own flags may follow `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// TTL of the session's lease, in seconds: how long the lock outlives a crash of kvctl.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
}

pub async fn lock(ctx: &Ctx, args: LockArgs) -> Result<(), Failure> {
    if args.ttl <= 0 {
        return Err(Failure::usage("--ttl must be a positive number of seconds"));
    }
    let session = Session::new(&ctx.client, SessionOptions::new(args.ttl)).await?;
    let held = Mutex::new(&session, args.name).lock().await?;
    let outcome = if args.command.is_empty() {
        hold(ctx, &session, &held).await
    } else {
        run_command(&session, &held, &args.command).await
    };
    let released = held.unlock(&ctx.client).await;
    let closed = session.close().await;
    outcome?;
    released?;
    closed?;
    Ok(())
}

/// Prints the key and holds the lock until Ctrl-C (or SIGTERM).
async fn hold(ctx: &Ctx, session: &Session, held: &LockHeld) -> Result<(), Failure> {
    let key = String::from_utf8_lossy(held.key()).into_owned();
    emit(
        ctx.format,
        vec![key.clone()],
        json!({"key": key, "revision": held.fencing_token()}),
        None,
    );
    let stop = crate::stop_requested()?;
    tokio::select! {
        _ = stop => Ok(()),
        _ = session.lost() => Err(lost()),
    }
}

/// Runs `command` with the lock's key and revision in its environment.
async fn run_command(
    session: &Session,
    held: &LockHeld,
    command: &[String],
) -> Result<(), Failure> {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env(
            "ETCD_LOCK_KEY",
            String::from_utf8_lossy(held.key()).as_ref(),
        )
        .env("ETCD_LOCK_REV", held.fencing_token().to_string())
        .stdin(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure {
            message: format!("cannot run {:?}: {e}", command[0]),
            code: 1,
        })?;
    tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| Failure { message: e.to_string(), code: 1 })?;
            if status.success() {
                Ok(())
            } else {
                Err(Failure { message: format!("{:?} {status}", command[0]), code: 1 })
            }
        }
        _ = session.lost() => {
            let _ = child.kill().await;
            Err(lost())
        }
    }
}

fn lost() -> Failure {
    Failure {
        message: "the lock's session expired: the lock is lost".into(),
        code: 4,
    }
}
