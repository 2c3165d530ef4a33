//! Typed configuration: one key holding a value of a serde type (as JSON), read, written,
//! updated by compare-and-swap, and watched. Plain keys and transactions, so it works against etcd
//! too, and the value stays readable with `etcdctl get` / `kvctl get`.
//!
//! Contract: every read answers the value with its `revision` (the key's mod revision).
//! [`Config::compare_and_swap`] writes only if the key is still at the expected revision (0: absent)
//! and otherwise answers the current value: no lost update between concurrent writers.
//! [`Config::update`] loops on it. [`Config::watch`] yields the current value first, then every
//! later change in order (`None` when the key is deleted). A stored value that does not decode as
//! `T` is [`Error::Decode`], never a silent default.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::Error;
use crate::kv::{GetOptions, PutOptions};
use crate::txn::{Compare, CompareOp, Txn, TxnOp};
use crate::watch::{WatchMessage, WatchOptions, WatchStream};

/// A configuration value of type `T` under one key.
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
/// use conclave_client::Config;
///
/// #[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
/// struct Limits {
///     max_connections: u32,
/// }
///
/// let limits: Config<Limits> = Config::new(&client, "config/limits");
/// // Raise the limit without losing a concurrent writer's change.
/// limits
///     .update(|current| {
///         let mut l = current.unwrap_or_default();
///         l.max_connections += 10;
///         l
///     })
///     .await?;
/// let mut changes = limits.watch().await?;
/// while let Some(change) = changes.next().await {
///     println!("{:?}", change?);
/// }
/// # Ok(())
/// # }
/// ```
pub struct Config<T> {
    client: Client,
    key: Vec<u8>,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for Config<T> {
    fn clone(&self) -> Self {
        Config {
            client: self.client.clone(),
            key: self.key.clone(),
            _value: PhantomData,
        }
    }
}

/// A value read from a [`Config`], with the revision it was written at.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    /// The key's mod revision: what [`Config::compare_and_swap`] expects.
    pub revision: i64,
}

impl<T: Serialize + DeserializeOwned> Config<T> {
    /// The configuration stored under `key`.
    pub fn new(client: &Client, key: impl Into<Vec<u8>>) -> Config<T> {
        Config {
            client: client.clone(),
            key: key.into(),
            _value: PhantomData,
        }
    }

    fn decode(&self, bytes: &[u8], revision: i64) -> Result<Versioned<T>, Error> {
        serde_json::from_slice(bytes)
            .map(|value| Versioned { value, revision })
            .map_err(|e| Error::Decode {
                key: String::from_utf8_lossy(&self.key).into_owned(),
                reason: e.to_string(),
            })
    }

    fn encode(value: &T) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(value).map_err(|e| Error::Decode {
            key: String::new(),
            reason: format!("cannot encode: {e}"),
        })
    }

    /// The current value (linearizable), or `None` if the key does not exist.
    pub async fn get(&self) -> Result<Option<Versioned<T>>, Error> {
        let r = self
            .client
            .kv()
            .get(self.key.clone(), GetOptions::new())
            .await?;
        r.kvs
            .first()
            .map(|kv| self.decode(&kv.value, kv.mod_revision))
            .transpose()
    }

    /// Writes `value` unconditionally; answers its revision.
    pub async fn set(&self, value: &T) -> Result<i64, Error> {
        let r = self
            .client
            .kv()
            .put(self.key.clone(), Self::encode(value)?, PutOptions::new())
            .await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    /// Writes `value` only if the key is still at `expected` (its mod revision; 0: absent).
    /// `Ok(revision)` on success; `Err(current)` with the value found (or `None`) otherwise.
    pub async fn compare_and_swap(
        &self,
        expected: i64,
        value: &T,
    ) -> Result<Result<i64, Option<Versioned<T>>>, Error> {
        let swap = Txn::new()
            .when([Compare::mod_revision(
                self.key.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(
                self.key.clone(),
                Self::encode(value)?,
                PutOptions::new(),
            )])
            .or_else([TxnOp::get(self.key.clone(), GetOptions::new())]);
        let r = self.client.kv().txn(swap).await?;
        if r.succeeded {
            return Ok(Ok(r.header.map_or(0, |h| h.revision)));
        }
        use conclave_proto::etcdserverpb::response_op::Response;
        let current = match r.responses.into_iter().next().and_then(|op| op.response) {
            Some(Response::ResponseRange(range)) => range
                .kvs
                .first()
                .map(|kv| self.decode(&kv.value, kv.mod_revision))
                .transpose()?,
            _ => None,
        };
        Ok(Err(current))
    }

    /// Reads, applies `change` to the current value (`None` if absent) and writes the result by
    /// compare-and-swap, again until no concurrent write came in between; answers what was
    /// written.
    pub async fn update(
        &self,
        mut change: impl FnMut(Option<T>) -> T,
    ) -> Result<Versioned<T>, Error> {
        let mut current = self.get().await?;
        loop {
            let expected = current.as_ref().map_or(0, |c| c.revision);
            let next = change(current.map(|c| c.value));
            match self.compare_and_swap(expected, &next).await? {
                Ok(revision) => {
                    return Ok(Versioned {
                        value: next,
                        revision,
                    });
                }
                Err(found) => current = found,
            }
        }
    }

    /// The current value, then every change (`None`: deleted), in order.
    pub async fn watch(&self) -> Result<ConfigWatch<T>, Error> {
        let r = self
            .client
            .kv()
            .get(self.key.clone(), GetOptions::new())
            .await?;
        let at = r.header.map_or(0, |h| h.revision);
        let first = r
            .kvs
            .first()
            .map(|kv| self.decode(&kv.value, kv.mod_revision))
            .transpose();
        let options = WatchOptions::new().with_start_revision(at + 1);
        let stream = self.client.watch().watch(self.key.clone(), options).await?;
        Ok(ConfigWatch {
            config: self.clone(),
            first: Some(first),
            stream,
            queued: Vec::new(),
        })
    }
}

/// The changes of a [`Config`] (see [`Config::watch`]).
pub struct ConfigWatch<T> {
    config: Config<T>,
    first: Option<Result<Option<Versioned<T>>, Error>>,
    stream: WatchStream,
    queued: Vec<Result<Option<Versioned<T>>, Error>>,
}

impl<T: Serialize + DeserializeOwned> ConfigWatch<T> {
    /// The next value (`None` inside: the key was deleted); `None` when the watch ended.
    pub async fn next(&mut self) -> Option<Result<Option<Versioned<T>>, Error>> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            if !self.queued.is_empty() {
                return Some(self.queued.remove(0));
            }
            match self.stream.next().await? {
                Err(e) => return Some(Err(e)),
                Ok(WatchMessage::Progress { .. }) => {}
                Ok(WatchMessage::Events { events, .. }) => {
                    for e in events {
                        let Some(kv) = e.kv else { continue };
                        let item = if e.r#type
                            == conclave_proto::mvccpb::event::EventType::Delete as i32
                        {
                            Ok(None)
                        } else {
                            self.config.decode(&kv.value, kv.mod_revision).map(Some)
                        };
                        self.queued.push(item);
                    }
                }
            }
        }
    }
}
