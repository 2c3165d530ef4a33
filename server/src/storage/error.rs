//! Storage errors: redb's many error types collapse into this one at the storage boundary.
//! A storage error means the member can no longer guarantee durability: callers stop the member.

/// A failure of the member's database.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error(
        "data dir was written by a newer Conclave (schema {found}, this binary understands up to {supported})"
    )]
    NewerSchema { found: u64, supported: u64 },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Database(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::CompactionError
);

/// Result of a storage operation.
pub type StorageResult<T> = Result<T, StorageError>;
