//! `elect NAME PROPOSAL` and `elect NAME --listen`, as etcdctl's: campaign with PROPOSAL on a
//! session of `--ttl` seconds, print the leader key and value once elected, and lead until
//! interrupted (then resign); or print every leader and every value it proclaims. Leadership lost
//! while leading (the lease ended, or the key was deleted) exits 4.

use conclave_client::mvccpb::KeyValue;
use conclave_client::{Election, Session, SessionOptions};
use serde_json::json;

use crate::output::emit;
use crate::{Ctx, Failure};

#[derive(clap::Args)]
pub struct ElectArgs {
    /// Election name (the candidates' keys live under NAME/).
    name: String,
    /// The value to lead with.
    proposal: Option<String>,
    /// Observe the election: print each leader and value as they come.
    #[arg(short = 'l', long)]
    listen: bool,
    /// TTL of the campaign's lease, in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
}

pub async fn elect(ctx: &Ctx, args: ElectArgs) -> Result<(), Failure> {
    let election = Election::new(&ctx.client, args.name);
    match (args.listen, args.proposal) {
        (true, None) => listen(ctx, &election).await,
        (false, Some(proposal)) => lead(ctx, &election, proposal, args.ttl).await,
        _ => Err(Failure::usage(
            "give either a PROPOSAL to campaign with or --listen to observe",
        )),
    }
}

fn print(ctx: &Ctx, kv: &KeyValue) {
    let key = String::from_utf8_lossy(&kv.key).into_owned();
    let value = String::from_utf8_lossy(&kv.value).into_owned();
    emit(
        ctx.format,
        vec![key.clone(), value.clone()],
        json!({"key": key, "value": value, "create_revision": kv.create_revision, "mod_revision": kv.mod_revision}),
        None,
    );
}

async fn listen(ctx: &Ctx, election: &Election) -> Result<(), Failure> {
    let mut observer = election.observe();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = observer.next() => match next {
                Some(Ok(kv)) => print(ctx, &kv),
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}

async fn lead(ctx: &Ctx, election: &Election, proposal: String, ttl: i64) -> Result<(), Failure> {
    if ttl <= 0 {
        return Err(Failure::usage("--ttl must be a positive number of seconds"));
    }
    let session = Session::new(&ctx.client, SessionOptions::new(ttl)).await?;
    let leadership = election.campaign(&session, proposal.clone()).await?;
    print(
        ctx,
        &KeyValue {
            key: leadership.key().to_vec(),
            value: proposal.into_bytes(),
            create_revision: leadership.revision(),
            mod_revision: leadership.revision(),
            ..Default::default()
        },
    );
    let stop = crate::stop_requested()?;
    let outcome = tokio::select! {
        _ = stop => Ok(()),
        _ = session.lost() => Err(lost()),
        _ = leadership.lost(&ctx.client) => Err(lost()),
    };
    let resigned = leadership.resign(&ctx.client).await;
    let closed = session.close().await;
    outcome?;
    resigned?;
    closed?;
    Ok(())
}

fn lost() -> Failure {
    Failure {
        message: "leadership lost: the campaign's lease or key is gone".into(),
        code: 4,
    }
}
