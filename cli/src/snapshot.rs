//! `snapshot save|status|restore`: take a backup from a running member, check one, and build a
//! new member's data dir from one (the start of a new cluster restored from a backup). Restore
//! works offline, on files, with the server's own storage code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use conclave_server::config::parse_initial_cluster;
use conclave_server::storage::backup::{self, BackupInfo};
use serde_json::json;

use crate::output::{self, Obj, emit};
use crate::{Ctx, Failure};

#[derive(clap::Subcommand)]
pub enum SnapshotCommand {
    /// Streams a backup of one member's state into FILE (checked before it is kept).
    Save { file: PathBuf },
    /// Checks FILE and prints its hash, revision, keys and size.
    Status { file: PathBuf },
    /// Builds a new data dir for one member of a new cluster from the backup FILE.
    Restore {
        file: PathBuf,
        /// The data dir to create (must not exist).
        #[arg(long)]
        data_dir: PathBuf,
        /// This member's name in --initial-cluster.
        #[arg(long, default_value = "default")]
        name: String,
        /// The new cluster: name=peer-url,...
        #[arg(long)]
        initial_cluster: String,
        #[arg(long, default_value = "conclave-cluster")]
        initial_cluster_token: String,
    },
}

fn failed(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure {
        message: format!("{what}: {e}"),
        code: 1,
    }
}

pub async fn run(ctx: &Ctx, cmd: SnapshotCommand) -> Result<(), Failure> {
    match cmd {
        SnapshotCommand::Save { file } => save(ctx, &file).await,
        SnapshotCommand::Status { file } => {
            let info = backup::verify(&file).map_err(|e| failed("snapshot status", e))?;
            status(ctx, &info);
            Ok(())
        }
        SnapshotCommand::Restore {
            file,
            data_dir,
            name,
            initial_cluster,
            initial_cluster_token,
        } => {
            let initial = parse_initial_cluster(&initial_cluster)
                .map_err(|e| Failure::usage(e.to_string()))?;
            let info = backup::restore(&file, &data_dir, &name, &initial, &initial_cluster_token)
                .map_err(|e| failed("snapshot restore", e))?;
            let line = format!(
                "restored snapshot (revision {}, {} keys) into {} for member {name}",
                info.header.revision,
                info.keys,
                data_dir.display()
            );
            let json = Obj::new()
                .int("revision", info.header.revision)
                .uint("totalKey", info.keys)
                .str("dataDir", &data_dir.display().to_string())
                .str("name", &name)
                .build();
            emit(ctx.format, vec![line], json, None);
            Ok(())
        }
    }
}

/// The hash, revision, keys and size, as etcdctl's `snapshot status`.
fn status(ctx: &Ctx, info: &BackupInfo) {
    let size = output::human_size(info.bytes as i64);
    let hash = format!("{:08x}", info.crc32);
    let line = format!("{hash}, {}, {}, {size}", info.header.revision, info.keys);
    let json = json!({
        "hash": info.crc32,
        "revision": info.header.revision,
        "totalKey": info.keys,
        "totalSize": info.bytes,
    });
    let table = output::table(
        &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
        &[vec![
            hash,
            info.header.revision.to_string(),
            info.keys.to_string(),
            size,
        ]],
    );
    emit(ctx.format, vec![line], json, Some(table));
}

async fn save(ctx: &Ctx, file: &Path) -> Result<(), Failure> {
    let partial = file.with_extension("part");
    let started = Instant::now();
    let mut stream = ctx.client.maintenance().snapshot().await?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&partial).map_err(|e| failed(&partial.display().to_string(), e))?,
    );
    let progress = std::io::stderr().is_terminal();
    let mut received: u64 = 0;
    let write_err = |e: std::io::Error| failed(&partial.display().to_string(), e);
    loop {
        let chunk = match stream.message().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(status) => {
                let _ = std::fs::remove_file(&partial);
                return Err(conclave_client::Error::from_status(status).into());
            }
        };
        out.write_all(&chunk.blob).map_err(write_err)?;
        received += chunk.blob.len() as u64;
        if progress {
            let total = received + chunk.remaining_bytes;
            let pct = (received * 100).checked_div(total).unwrap_or(100);
            let bar = "#".repeat((pct / 4) as usize);
            eprint!(
                "\r[{bar:<25}] {pct:>3}% {} / {}",
                output::human_size(received as i64),
                output::human_size(total as i64)
            );
        }
    }
    if progress {
        eprintln!();
    }
    let file_handle = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    file_handle.sync_all().map_err(write_err)?;
    drop(file_handle);
    // A Conclave backup is checked whole; an etcd server's (a bbolt file and its sha256) only by
    // its shape, as etcdctl does: etcd's own tools check its hash when they restore it.
    let conclave = backup::is_conclave_backup(&partial);
    if conclave {
        if let Err(e) = backup::verify(&partial) {
            let _ = std::fs::remove_file(&partial);
            return Err(failed("the received snapshot is damaged", e));
        }
    } else if received % 512 != 32 {
        let _ = std::fs::remove_file(&partial);
        return Err(failed(
            "the received snapshot",
            format!("{received} bytes: neither a Conclave backup nor an etcd snapshot"),
        ));
    }
    std::fs::rename(&partial, file).map_err(|e| failed(&file.display().to_string(), e))?;
    let kind = if conclave { "" } else { ", an etcd snapshot" };
    let line = format!(
        "Snapshot saved at {} ({}, {:.1} s{kind})",
        file.display(),
        output::human_size(received as i64),
        started.elapsed().as_secs_f64()
    );
    let json = Obj::new()
        .str("path", &file.display().to_string())
        .uint("bytes", received)
        .build();
    emit(ctx.format, vec![line], json, None);
    Ok(())
}
