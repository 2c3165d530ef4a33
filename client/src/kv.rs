//! Key-value calls (Range, Put, DeleteRange, Txn, Compact) and their option builders.
//!
//! Options translate to etcd's request fields exactly as etcd's Go client does (prefix and from-key
//! range ends included); responses are the generated types, unchanged. Ranges are retried on other
//! endpoints; writes never are unless they provably were not sent.

use conclave_proto::etcdserverpb::kv_client::KvClient;
use conclave_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnResponse,
};

/// How a Range sorts its result ([`GetOptions::with_sort`]): the generated etcd enums.
pub use conclave_proto::etcdserverpb::range_request::{SortOrder, SortTarget};

use crate::client::{Client, MAX_RESPONSE_BYTES, Retry};
use crate::error::Error;
use crate::txn::Txn;

/// The range end that selects every key starting with `prefix`, as etcd computes it: increment the
/// last byte below 0xff and drop the 0xff bytes after it. When no such byte exists (an empty or
/// all-0xff prefix) the answer is `"\0"`, meaning "every key from the start key on".
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(last) => {
            let mut end = prefix[..=last].to_vec();
            end[last] += 1;
            end
        }
        None => vec![0],
    }
}

/// Which keys an operation covers, besides its start key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum KeyRange {
    /// Just the key.
    #[default]
    Single,
    /// Every key with the key as prefix.
    Prefix,
    /// Every key greater than or equal to the key.
    FromKey,
    /// `[key, end)`.
    End(Vec<u8>),
}

impl KeyRange {
    /// The `(key, range_end)` pair to put on the wire, following etcd's client: an empty key with
    /// prefix or from-key means "all keys" (`key = range_end = "\0"`).
    pub(crate) fn resolve(&self, key: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        match self {
            KeyRange::Single => (key, Vec::new()),
            KeyRange::Prefix if key.is_empty() => (vec![0], vec![0]),
            KeyRange::Prefix => {
                let end = prefix_range_end(&key);
                (key, end)
            }
            KeyRange::FromKey if key.is_empty() => (vec![0], vec![0]),
            KeyRange::FromKey => (key, vec![0]),
            KeyRange::End(end) => (key, end.clone()),
        }
    }
}

/// Implements `with_prefix`, `with_from_key` and `with_range_end` for an options type with a
/// `range: KeyRange` field (the last call wins).
macro_rules! key_range_options {
    ($options:ty) => {
        impl $options {
            /// Every key with the given key as prefix (all keys when the key is empty).
            pub fn with_prefix(mut self) -> Self {
                self.range = $crate::kv::KeyRange::Prefix;
                self
            }

            /// Every key greater than or equal to the given key (all keys when the key is empty).
            pub fn with_from_key(mut self) -> Self {
                self.range = $crate::kv::KeyRange::FromKey;
                self
            }

            /// Keys in `[key, end)`.
            pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
                self.range = $crate::kv::KeyRange::End(end.into());
                self
            }
        }
    };
}
pub(crate) use key_range_options;

/// Options of a Range (`get`). The last of `with_prefix`, `with_from_key` and `with_range_end`
/// wins.
#[derive(Clone, Debug, Default)]
pub struct GetOptions {
    range: KeyRange,
    limit: i64,
    revision: i64,
    sort_order: SortOrder,
    sort_target: SortTarget,
    keys_only: bool,
    count_only: bool,
    serializable: bool,
    min_mod_revision: i64,
    max_mod_revision: i64,
    min_create_revision: i64,
    max_create_revision: i64,
}

key_range_options!(GetOptions);

impl GetOptions {
    /// A linearizable read of the single key, at the latest revision.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `limit` keys (0 = no limit).
    pub fn with_limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }

    /// Read at `revision` (0 = latest).
    pub fn with_revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }

    /// Sort the result by `target` in `order`.
    pub fn with_sort(mut self, order: SortOrder, target: SortTarget) -> Self {
        self.sort_order = order;
        self.sort_target = target;
        self
    }

    /// Return keys without values.
    pub fn with_keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// Return only the count of matching keys.
    pub fn with_count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// Serve from the contacted member's local state, skipping the linearizability round (may
    /// be stale).
    pub fn with_serializable(mut self) -> Self {
        self.serializable = true;
        self
    }

    /// Only keys whose mod revision is at least `revision`.
    pub fn with_min_mod_revision(mut self, revision: i64) -> Self {
        self.min_mod_revision = revision;
        self
    }

    /// Only keys whose mod revision is at most `revision`.
    pub fn with_max_mod_revision(mut self, revision: i64) -> Self {
        self.max_mod_revision = revision;
        self
    }

    /// Only keys whose create revision is at least `revision`.
    pub fn with_min_create_revision(mut self, revision: i64) -> Self {
        self.min_create_revision = revision;
        self
    }

    /// Only keys whose create revision is at most `revision`.
    pub fn with_max_create_revision(mut self, revision: i64) -> Self {
        self.max_create_revision = revision;
        self
    }

    /// The wire request for `key` with these options.
    pub fn into_request(self, key: impl Into<Vec<u8>>) -> RangeRequest {
        let (key, range_end) = self.range.resolve(key.into());
        RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.revision,
            sort_order: self.sort_order as i32,
            sort_target: self.sort_target as i32,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod_revision,
            max_mod_revision: self.max_mod_revision,
            min_create_revision: self.min_create_revision,
            max_create_revision: self.max_create_revision,
        }
    }
}

/// Options of a Put.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    lease: i64,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
}

impl PutOptions {
    /// A plain put with no lease.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach the key to lease `lease` (0 = no lease).
    pub fn with_lease(mut self, lease: i64) -> Self {
        self.lease = lease;
        self
    }

    /// Return the previous key-value pair.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Keep the current value (fails with [`Error::KeyNotFound`] if the key does not exist).
    pub fn with_ignore_value(mut self) -> Self {
        self.ignore_value = true;
        self
    }

    /// Keep the current lease (fails with [`Error::KeyNotFound`] if the key does not exist).
    pub fn with_ignore_lease(mut self) -> Self {
        self.ignore_lease = true;
        self
    }

    /// The wire request for `key` = `value` with these options.
    pub fn into_request(self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

/// Options of a DeleteRange. The last of `with_prefix`, `with_from_key` and `with_range_end` wins.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    range: KeyRange,
    prev_kv: bool,
}

key_range_options!(DeleteOptions);

impl DeleteOptions {
    /// Delete the single key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Return the deleted key-value pairs.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// The wire request for `key` with these options.
    pub fn into_request(self, key: impl Into<Vec<u8>>) -> DeleteRangeRequest {
        let (key, range_end) = self.range.resolve(key.into());
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        }
    }
}

/// Key-value operations of a [`Client`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Kv {
    client: Client,
}

fn kv_client(channel: tonic::transport::Channel) -> KvClient<tonic::transport::Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

impl Kv {
    pub(crate) fn new(client: Client) -> Self {
        Kv { client }
    }

    /// Range: reads `key` (or the range the options select). Retried on other endpoints when a
    /// member is unavailable.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), conclave_client::Error> {
    /// # let client = conclave_client::Client::connect(
    /// #     ["127.0.0.1:2379"],
    /// #     conclave_client::ConnectOptions::new(),
    /// # )
    /// # .await?;
    /// use conclave_client::GetOptions;
    ///
    /// // Every key under "config/", read linearizably.
    /// let response = client.kv().get("config/", GetOptions::new().with_prefix()).await?;
    /// for kv in &response.kvs {
    ///     println!("{} = {}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: GetOptions,
    ) -> Result<RangeResponse, Error> {
        self.range(options.into_request(key)).await
    }

    /// Sends a prepared [`RangeRequest`].
    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Error> {
        self.client
            .call(Retry::Safe, request, |channel, request| async move {
                kv_client(channel).range(request).await
            })
            .await
    }

    /// Put: sets `key` to `value`. Not retried once sent: a lost connection or deadline gives
    /// [`Error::Unknown`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), conclave_client::Error> {
    /// # let client = conclave_client::Client::connect(
    /// #     ["127.0.0.1:2379"],
    /// #     conclave_client::ConnectOptions::new(),
    /// # )
    /// # .await?;
    /// use conclave_client::PutOptions;
    ///
    /// match client.kv().put("config/mode", "active", PutOptions::new()).await {
    ///     Ok(response) => println!("written at {:?}", response.header.map(|h| h.revision)),
    ///     // The put may or may not have been applied: read before deciding what to do.
    ///     Err(err) if err.is_unknown_outcome() => eprintln!("outcome unknown: {err}"),
    ///     Err(err) => return Err(err),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: PutOptions,
    ) -> Result<PutResponse, Error> {
        let request = options.into_request(key, value);
        self.client
            .call(
                Retry::OnlyIfNotSent,
                request,
                |channel, request| async move { kv_client(channel).put(request).await },
            )
            .await
    }

    /// DeleteRange: deletes `key` (or the range the options select). Not retried once sent.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), conclave_client::Error> {
    /// # let client = conclave_client::Client::connect(
    /// #     ["127.0.0.1:2379"],
    /// #     conclave_client::ConnectOptions::new(),
    /// # )
    /// # .await?;
    /// use conclave_client::DeleteOptions;
    ///
    /// let response = client
    ///     .kv()
    ///     .delete("jobs/done/", DeleteOptions::new().with_prefix().with_prev_kv())
    ///     .await?;
    /// println!("deleted {} keys", response.deleted);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: DeleteOptions,
    ) -> Result<DeleteRangeResponse, Error> {
        let request = options.into_request(key);
        self.client
            .call(
                Retry::OnlyIfNotSent,
                request,
                |channel, request| async move { kv_client(channel).delete_range(request).await },
            )
            .await
    }

    /// Txn: runs a transaction. A transaction whose branches only read is retried like a Range;
    /// one that may write is not retried once sent.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), conclave_client::Error> {
    /// # let client = conclave_client::Client::connect(
    /// #     ["127.0.0.1:2379"],
    /// #     conclave_client::ConnectOptions::new(),
    /// # )
    /// # .await?;
    /// use conclave_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
    ///
    /// // Compare-and-swap: replace the value only if nobody changed it since revision 42.
    /// let txn = Txn::new()
    ///     .when([Compare::mod_revision("config/mode", CompareOp::Equal, 42)])
    ///     .and_then([TxnOp::put("config/mode", "standby", PutOptions::new())])
    ///     .or_else([TxnOp::get("config/mode", GetOptions::new())]);
    /// let response = client.kv().txn(txn).await?;
    /// println!("swapped: {}", response.succeeded);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        let retry = if txn.is_read_only() {
            Retry::Safe
        } else {
            Retry::OnlyIfNotSent
        };
        self.client
            .call(retry, txn.into_request(), |channel, request| async move {
                kv_client(channel).txn(request).await
            })
            .await
    }

    /// Compact: discards history before `revision`; with `physical`, answers only once the
    /// compaction has been applied to the backend. Not retried once sent.
    pub async fn compact(
        &self,
        revision: i64,
        physical: bool,
    ) -> Result<CompactionResponse, Error> {
        let request = CompactionRequest { revision, physical };
        self.client
            .call(
                Retry::OnlyIfNotSent,
                request,
                |channel, request| async move { kv_client(channel).compact(request).await },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_end_follows_etcd() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b"\0"),
            (b"a", b"b"),
            (b"abc", b"abd"),
            (b"a\xff", b"b"),
            (b"a\xff\xff", b"b"),
            (b"a\xfe\xff", b"a\xff"),
            (b"\xff", b"\0"),
            (b"\xff\xff\xff", b"\0"),
            (b"\x00", b"\x01"),
            (b"foo/", b"foo0"),
        ];
        for (prefix, want) in table {
            assert_eq!(prefix_range_end(prefix), *want, "prefix {prefix:?}");
        }
    }

    #[test]
    fn key_ranges_resolve_like_etcd_client() {
        /// (range, key, expected key, expected range end)
        type Case = (KeyRange, &'static [u8], &'static [u8], &'static [u8]);
        let table: &[Case] = &[
            (KeyRange::Single, b"k", b"k", b""),
            (KeyRange::Prefix, b"k", b"k", b"l"),
            (KeyRange::Prefix, b"", b"\0", b"\0"),
            (KeyRange::Prefix, b"\xff", b"\xff", b"\0"),
            (KeyRange::FromKey, b"k", b"k", b"\0"),
            (KeyRange::FromKey, b"", b"\0", b"\0"),
            (KeyRange::End(b"z".to_vec()), b"a", b"a", b"z"),
        ];
        for (range, key, want_key, want_end) in table {
            let (k, e) = range.resolve(key.to_vec());
            assert_eq!(
                (k.as_slice(), e.as_slice()),
                (*want_key, *want_end),
                "{range:?}"
            );
        }
    }

    #[test]
    fn get_options_fill_every_field() {
        let request = GetOptions::new()
            .with_prefix()
            .with_limit(3)
            .with_revision(7)
            .with_sort(SortOrder::Descend, SortTarget::Mod)
            .with_keys_only()
            .with_count_only()
            .with_serializable()
            .with_min_mod_revision(1)
            .with_max_mod_revision(2)
            .with_min_create_revision(3)
            .with_max_create_revision(4)
            .into_request("foo");
        assert_eq!(request.key, b"foo");
        assert_eq!(request.range_end, b"fop");
        assert_eq!(request.limit, 3);
        assert_eq!(request.revision, 7);
        assert_eq!(request.sort_order, SortOrder::Descend as i32);
        assert_eq!(request.sort_target, SortTarget::Mod as i32);
        assert!(request.keys_only && request.count_only && request.serializable);
        assert_eq!(
            (
                request.min_mod_revision,
                request.max_mod_revision,
                request.min_create_revision,
                request.max_create_revision
            ),
            (1, 2, 3, 4)
        );
    }

    #[test]
    fn last_range_option_wins() {
        let request = GetOptions::new()
            .with_prefix()
            .with_range_end("z")
            .into_request("a");
        assert_eq!(request.range_end, b"z");
        let request = DeleteOptions::new()
            .with_range_end("z")
            .with_from_key()
            .with_prev_kv()
            .into_request("a");
        assert_eq!(request.range_end, b"\0");
        assert!(request.prev_kv);
    }

    #[test]
    fn put_options_fill_every_field() {
        let request = PutOptions::new()
            .with_lease(42)
            .with_prev_kv()
            .with_ignore_value()
            .with_ignore_lease()
            .into_request("k", "v");
        assert_eq!(
            request,
            PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 42,
                prev_kv: true,
                ignore_value: true,
                ignore_lease: true,
            }
        );
    }
}
