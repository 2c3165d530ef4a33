//! The `conclave` binary: parse flags, set up logging, run a member until SIGINT or SIGTERM.

use std::process::ExitCode;

use conclave_server::{config, server};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: allocation was ~15% of the leader's CPU under write load
/// (gRPC buffers, protobuf messages); see docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let settings = match config::from_args().and_then(|f| f.validate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("conclave: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        config::LogFormat::Json => logs.json().init(),
        config::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(settings.worker_threads).enable_all();
    // A response finished on a worker wakes its connection's task; from the LIFO slot that task
    // would run at once and flush that one response. From the queue, it runs after the other
    // responses of the same apply batch and writes them together (.cargo/config.toml).
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("conclave: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(settings, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        // Removal is the cluster's decision, not a failure: a supervisor must not restart it.
        Err(e @ server::RunError::Removed) => {
            eprintln!("conclave: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("conclave: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
