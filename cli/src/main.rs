//! `kvctl`: the operator command line over `conclave-client`, shaped like etcdctl (a user of
//! etcdctl should guess the commands): key-value (put, get, del, txn, compaction), watch, lease,
//! member list/add/remove/update/promote, endpoint health/status, move-leader, defrag, snapshot
//! save/status/restore, alarm list/disarm, lock, elect, group join/list/watch, config
//! get/set/watch, and shell completion. Every command prints in
//! `-w simple|json|table`. Errors are one line on stderr and a documented exit code: 1 refused or
//! failed, 2 bad usage, 3 outcome unknown (a write that may or may not have happened), 4 a lease
//! kept alive by `lease keep-alive` was lost.
//!
//! Each command family is a variant of [`Command`] in its own module.

mod alarm;
mod cluster;
mod config;
mod elect;
mod group;
mod kv;
mod lease;
mod lock;
mod output;
mod snapshot;
mod txn;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use conclave_client::{Client, ConnectOptions, Error};

use output::Format;

#[derive(Parser)]
#[command(
    name = "kvctl",
    version,
    about = "Command line for Conclave (and etcd v3)"
)]
pub struct Cli {
    /// Comma-separated endpoints (`host:port` or `http://host:port`).
    #[arg(
        long,
        env = "KVCTL_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        global = true
    )]
    endpoints: String,
    /// Time allowed to connect, in seconds.
    #[arg(long, default_value_t = 2.0, global = true)]
    dial_timeout: f64,
    /// Time allowed for one request, in seconds (retries included).
    #[arg(long, default_value_t = 5.0, global = true)]
    command_timeout: f64,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Format::Simple, global = true)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Puts KEY = VALUE.
    Put(kv::PutArgs),
    /// Gets KEY, or a range.
    Get(kv::GetArgs),
    /// Deletes KEY, or a range.
    Del(kv::DelArgs),
    /// Runs a transaction read from stdin (or --file) in etcdctl's format.
    Txn(kv::TxnArgs),
    /// Discards history below REVISION.
    Compaction(kv::CompactionArgs),
    /// Watches KEY (or a range) and prints events until interrupted.
    Watch(watch::WatchArgs),
    /// Lease commands.
    Lease {
        #[command(subcommand)]
        command: lease::LeaseCommand,
    },
    /// Cluster members.
    Member {
        #[command(subcommand)]
        command: cluster::MemberCommand,
    },
    /// Endpoint health and status.
    Endpoint {
        #[command(subcommand)]
        command: cluster::EndpointCommand,
    },
    /// Alarms: list, disarm.
    Alarm {
        #[command(subcommand)]
        command: alarm::AlarmCommand,
    },
    /// Backups: save from a member, check a file, restore into a new data dir.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Transfers leadership to the member with this hex id.
    MoveLeader { target: String },
    /// Defragments each endpoint's database file (or every member's, with --cluster).
    Defrag(cluster::DefragArgs),
    /// Takes a lock: runs a command under it, or holds it until interrupted.
    Lock(lock::LockArgs),
    /// Campaigns in an election and leads until interrupted, or observes it (--listen).
    Elect(elect::ElectArgs),
    /// Group membership: join, list, watch.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// Typed configuration: a key holding JSON (get, set with compare-and-swap, watch).
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Prints a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// A command's failure: what to print and the exit code.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// Bad input found after parsing (exit code 2, like clap's).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 2,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            code: if e.is_unknown_outcome() { 3 } else { 1 },
            message: e.to_string(),
        }
    }
}

/// Resolves when a long-running command is asked to stop: Ctrl-C, or SIGTERM (what a service
/// manager sends). Commands that hold something — a lock, a leadership, a group membership —
/// give it up then.
pub fn stop_requested() -> Result<impl std::future::Future<Output = ()>, Failure> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure {
        message: format!("cannot handle SIGTERM: {e}"),
        code: 1,
    })?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// What every command gets: the connected client and the output format.
pub struct Ctx {
    pub client: Client,
    pub format: Format,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("Error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "kvctl", &mut std::io::stdout());
        return Ok(());
    }
    let seconds = |what: &str, v: f64| {
        Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Failure::usage(format!("--{what} must be a positive number of seconds")))
    };
    let options = ConnectOptions::new()
        .with_dial_timeout(seconds("dial-timeout", cli.dial_timeout)?)
        .with_request_timeout(seconds("command-timeout", cli.command_timeout)?);
    let endpoints: Vec<&str> = cli.endpoints.split(',').filter(|s| !s.is_empty()).collect();
    let client = Client::connect(endpoints.iter().copied(), options).await?;
    let ctx = Ctx {
        client,
        format: cli.format,
    };
    match cli.command {
        Command::Put(a) => kv::put(&ctx, a).await,
        Command::Get(a) => kv::get(&ctx, a).await,
        Command::Del(a) => kv::del(&ctx, a).await,
        Command::Txn(a) => kv::txn(&ctx, a).await,
        Command::Compaction(a) => kv::compaction(&ctx, a).await,
        Command::Watch(a) => watch::watch(&ctx, a).await,
        Command::Lease { command } => lease::run(&ctx, command).await,
        Command::Member { command } => cluster::member(&ctx, command).await,
        Command::Endpoint { command } => cluster::endpoint(&ctx, command).await,
        Command::Snapshot { command } => snapshot::run(&ctx, command).await,
        Command::Alarm { command } => alarm::run(&ctx, command).await,
        Command::MoveLeader { target } => cluster::move_leader(&ctx, &target).await,
        Command::Defrag(a) => cluster::defrag(&ctx, a).await,
        Command::Lock(a) => lock::lock(&ctx, a).await,
        Command::Elect(a) => elect::elect(&ctx, a).await,
        Command::Group { command } => group::run(&ctx, command).await,
        Command::Config { command } => config::run(&ctx, command).await,
        Command::Completion { .. } => Ok(()),
    }
}
