//! Txn, compare and range-option semantics, through real redb transactions.
