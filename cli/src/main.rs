//! `kvctl`: the operator command line over `conclave-client`, shaped like etcdctl (a user of
//! etcdctl should guess the commands). This first version covers the key-value core: put, get, del,
//! compaction, member list, endpoint status and move-leader. Errors are one line on stderr and a
//! non-zero exit: 1 for a refused or failed request, 2 for bad usage (clap), 3 for an unknown outcome.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use conclave_client::{Client, ConnectOptions, DeleteOptions, Error, GetOptions, PutOptions};

#[derive(Parser)]
#[command(
    name = "kvctl",
    version,
    about = "Command line for Conclave and etcd v3"
)]
struct Cli {
    /// Comma-separated endpoints.
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
    /// Time allowed for one command, in seconds.
    #[arg(long, default_value_t = 5.0, global = true)]
    command_timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Puts KEY = VALUE.
    Put {
        key: String,
        value: String,
        /// Print the previous key-value.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Gets KEY, or a range.
    Get {
        key: String,
        #[command(flatten)]
        range: RangeArgs,
        /// At most this many keys.
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Read at this revision.
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Keys only.
        #[arg(long)]
        keys_only: bool,
        /// Print values only.
        #[arg(long)]
        print_value_only: bool,
        /// `l` (linearizable) or `s` (serializable).
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Deletes KEY, or a range.
    Del {
        key: String,
        #[command(flatten)]
        range: RangeArgs,
        /// Print the deleted key-values.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Discards history below REVISION.
    Compaction {
        revision: i64,
        #[arg(long)]
        physical: bool,
    },
    /// Cluster members.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Endpoint state.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// Transfers leadership to the member with this hex id.
    MoveLeader { target: String },
}

/// Which keys a `get` or `del` covers besides KEY itself (etcdctl's arguments).
#[derive(clap::Args)]
struct RangeArgs {
    /// End of the range [KEY, END).
    range_end: Option<String>,
    /// Every key with KEY as prefix.
    #[arg(long)]
    prefix: bool,
    /// Every key >= KEY.
    #[arg(long)]
    from_key: bool,
}

/// The option builders that take a key range (GetOptions, DeleteOptions).
trait RangeOptions: Sized {
    fn with_range_end(self, end: String) -> Self;
    fn with_prefix(self) -> Self;
    fn with_from_key(self) -> Self;
}

macro_rules! range_options {
    ($($t:ty),*) => {$(
        impl RangeOptions for $t {
            fn with_range_end(self, end: String) -> Self {
                <$t>::with_range_end(self, end)
            }
            fn with_prefix(self) -> Self {
                <$t>::with_prefix(self)
            }
            fn with_from_key(self) -> Self {
                <$t>::with_from_key(self)
            }
        }
    )*};
}

range_options!(GetOptions, DeleteOptions);

impl RangeArgs {
    fn apply<O: RangeOptions>(self, mut opts: O) -> O {
        if let Some(end) = self.range_end {
            opts = opts.with_range_end(end);
        }
        if self.prefix {
            opts = opts.with_prefix();
        }
        if self.from_key {
            opts = opts.with_from_key();
        }
        opts
    }
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Lists members.
    List,
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Status of each endpoint.
    Status,
}

/// A command's failure: what to print and the exit code.
struct Failure {
    message: String,
    code: u8,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            code: if e.is_unknown_outcome() { 3 } else { 1 },
            message: e.to_string(),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvctl: cannot start: {e}");
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
    let options = ConnectOptions::new()
        .with_dial_timeout(Duration::from_secs_f64(cli.dial_timeout))
        .with_request_timeout(Duration::from_secs_f64(cli.command_timeout));
    let endpoints: Vec<&str> = cli.endpoints.split(',').filter(|s| !s.is_empty()).collect();
    let client = Client::connect(endpoints.iter().copied(), options).await?;
    match cli.command {
        Command::Put {
            key,
            value,
            prev_kv,
        } => {
            let mut opts = PutOptions::new();
            if prev_kv {
                opts = opts.with_prev_kv();
            }
            let resp = client.kv().put(key, value, opts).await?;
            println!("OK");
            if let Some(prev) = resp.prev_kv {
                println!("{}\n{}", text(&prev.key), text(&prev.value));
            }
        }
        Command::Get {
            key,
            range,
            limit,
            rev,
            keys_only,
            print_value_only,
            consistency,
        } => {
            let mut opts = range.apply(GetOptions::new().with_limit(limit).with_revision(rev));
            if keys_only {
                opts = opts.with_keys_only();
            }
            match consistency.as_str() {
                "l" => {}
                "s" => opts = opts.with_serializable(),
                other => {
                    return Err(Failure {
                        message: format!("unknown --consistency {other:?} (use l or s)"),
                        code: 2,
                    });
                }
            }
            let resp = client.kv().get(key, opts).await?;
            for kv in resp.kvs {
                if !print_value_only {
                    println!("{}", text(&kv.key));
                }
                if !keys_only {
                    println!("{}", text(&kv.value));
                }
            }
        }
        Command::Del {
            key,
            range,
            prev_kv,
        } => {
            let mut opts = range.apply(DeleteOptions::new());
            if prev_kv {
                opts = opts.with_prev_kv();
            }
            let resp = client.kv().delete(key, opts).await?;
            println!("{}", resp.deleted);
            for kv in resp.prev_kvs {
                println!("{}\n{}", text(&kv.key), text(&kv.value));
            }
        }
        Command::Compaction { revision, physical } => {
            client.kv().compact(revision, physical).await?;
            println!("compacted revision {revision}");
        }
        Command::Member {
            command: MemberCommand::List,
        } => {
            let resp = client.cluster().member_list().await?;
            for m in resp.members {
                println!(
                    "{:x}, started, {}, {}, {}, {}",
                    m.id,
                    m.name,
                    m.peer_ur_ls.join(","),
                    m.client_ur_ls.join(","),
                    m.is_learner
                );
            }
        }
        Command::Endpoint {
            command: EndpointCommand::Status,
        } => {
            for endpoint in client.endpoints() {
                let s = client.maintenance().status_on(&endpoint).await?;
                let member = s.header.map(|h| h.member_id).unwrap_or_default();
                println!(
                    "{endpoint}, {member:x}, {}, {} B, leader={}, term={}, index={}, applied={}",
                    s.version,
                    s.db_size,
                    member == s.leader,
                    s.raft_term,
                    s.raft_index,
                    s.raft_applied_index
                );
            }
        }
        Command::MoveLeader { target } => {
            let id = u64::from_str_radix(&target, 16).map_err(|e| Failure {
                message: format!("bad member id {target:?}: {e}"),
                code: 2,
            })?;
            client.maintenance().move_leader(id).await?;
            println!("Leadership transferred to {id:x}");
        }
    }
    Ok(())
}
