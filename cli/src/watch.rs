//! `kvctl watch`: prints events until interrupted (Ctrl-C) or the watch ends. The client resumes
//! the watch across member failures without gaps or duplicates; a compacted start revision ends
//! it with an error.

use conclave_client::{WatchMessage, WatchOptions};

use crate::output::{self, Format, Obj, kv_lines};
use crate::{Ctx, Failure};

#[derive(clap::Args)]
pub struct WatchArgs {
    key: String,
    /// End of the range [KEY, END).
    range_end: Option<String>,
    /// Watch every key with KEY as prefix.
    #[arg(long)]
    prefix: bool,
    /// Start at this revision (history still in the store is replayed first).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Also print each key's previous value.
    #[arg(long)]
    prev_kv: bool,
    /// Ask the server for periodic progress notifications (printed in json output).
    #[arg(long)]
    progress_notify: bool,
}

pub async fn watch(ctx: &Ctx, a: WatchArgs) -> Result<(), Failure> {
    let mut o = WatchOptions::new().with_start_revision(a.rev);
    if let Some(end) = a.range_end {
        o = o.with_range_end(end);
    }
    if a.prefix {
        o = o.with_prefix();
    }
    if a.prev_kv {
        o = o.with_prev_kv();
    }
    if a.progress_notify {
        o = o.with_progress_notify();
    }
    let mut stream = ctx.client.watch().watch(a.key, o).await?;
    loop {
        let next = tokio::select! {
            m = stream.next() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match next {
            None => return Ok(()),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(WatchMessage::Progress { revision })) => {
                if ctx.format == Format::Json {
                    let h = Obj::new().int("revision", revision).build();
                    if output::line(&Obj::new().value("header", h).build().to_string()).is_err() {
                        return Ok(());
                    }
                }
            }
            Some(Ok(WatchMessage::Events { revision, events })) => match ctx.format {
                Format::Json => {
                    let h = Obj::new().int("revision", revision).build();
                    let evs = events.iter().map(output::event).collect();
                    let v = Obj::new()
                        .value("header", h)
                        .value("events", serde_json::Value::Array(evs))
                        .build();
                    if output::line(&v.to_string()).is_err() {
                        // Nobody reads our output any more.
                        return Ok(());
                    }
                }
                Format::Simple | Format::Table => {
                    for e in &events {
                        let mut lines = vec![output::event_type(e).to_string()];
                        if let Some(p) = &e.prev_kv {
                            kv_lines(&mut lines, p, false, false);
                        }
                        if let Some(kv) = &e.kv {
                            kv_lines(&mut lines, kv, false, false);
                        }
                        if lines.iter().try_for_each(|l| output::line(l)).is_err() {
                            return Ok(());
                        }
                    }
                }
            },
        }
    }
}
