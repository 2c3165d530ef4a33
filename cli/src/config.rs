//! `config get|set|watch`: a key holding a JSON value, through the client's typed `Config`
//! (here with any JSON). `set` refuses a value that is not JSON, and with `--if-revision` writes
//! only if the key is still at that revision (0: absent), exiting 1 with the current revision
//! otherwise; `watch` prints the current value, then every change, until interrupted.

use conclave_client::{Config, Versioned};
use serde_json::{Value, json};

use crate::output::emit;
use crate::{Ctx, Failure};

#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Prints the JSON value of KEY and its revision.
    Get { key: String },
    /// Sets KEY to a JSON value.
    Set {
        key: String,
        /// The value, as JSON (a bare word is not JSON: quote strings, e.g. '"on"').
        value: String,
        /// Write only if KEY is at this revision (0: only if it does not exist).
        #[arg(long)]
        if_revision: Option<i64>,
    },
    /// Prints the value of KEY, then every change, until interrupted.
    Watch { key: String },
}

fn show(ctx: &Ctx, key: &str, v: Option<&Versioned<Value>>) {
    match v {
        Some(v) => emit(
            ctx.format,
            vec![format!("{} {}", v.revision, v.value)],
            json!({"key": key, "revision": v.revision, "value": v.value}),
            None,
        ),
        None => emit(
            ctx.format,
            vec![format!("{key} is not set")],
            json!({"key": key, "value": null}),
            None,
        ),
    }
}

pub async fn run(ctx: &Ctx, cmd: ConfigCommand) -> Result<(), Failure> {
    match cmd {
        ConfigCommand::Get { key } => {
            let config: Config<Value> = Config::new(&ctx.client, key.as_str());
            let current = config.get().await?;
            show(ctx, &key, current.as_ref());
            if current.is_none() {
                return Err(Failure {
                    message: format!("{key} is not set"),
                    code: 1,
                });
            }
            Ok(())
        }
        ConfigCommand::Set {
            key,
            value,
            if_revision,
        } => {
            let value: Value = serde_json::from_str(&value)
                .map_err(|e| Failure::usage(format!("the value is not JSON: {e}")))?;
            let config: Config<Value> = Config::new(&ctx.client, key.as_str());
            let revision = match if_revision {
                None => config.set(&value).await?,
                Some(expected) => match config.compare_and_swap(expected, &value).await? {
                    Ok(revision) => revision,
                    Err(current) => {
                        let at = current.map_or(0, |c| c.revision);
                        return Err(Failure {
                            message: format!(
                                "{key} is at revision {at}, not {expected}: not written"
                            ),
                            code: 1,
                        });
                    }
                },
            };
            emit(
                ctx.format,
                vec![format!("OK {revision}")],
                json!({"key": key, "revision": revision}),
                None,
            );
            Ok(())
        }
        ConfigCommand::Watch { key } => {
            let config: Config<Value> = Config::new(&ctx.client, key.as_str());
            let mut changes = config.watch().await?;
            loop {
                let next = tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    next = changes.next() => next,
                };
                match next {
                    None => return Ok(()),
                    Some(next) => show(ctx, &key, next?.as_ref()),
                }
            }
        }
    }
}
