//! How records are encoded and keyed in sled, and the reads that decode them.
//! Values are JSON (readable with any sled tool, tolerant of added fields);
//! keys are ids, big-endian numbers (so that key order is number order), or
//! ids joined with a 0 byte (ids can never contain one).

use handover_shared::{ItemId, NodeId};
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::{Abort, Tx};
use crate::{
    domain::{
        changes::StockBook,
        stock::{Balance, LedgerEntry},
    },
    store::{ImportError, StoreError},
};

pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<Abort>>;

pub(super) fn abort(err: StoreError) -> ConflictableTransactionError<Abort> {
    ConflictableTransactionError::Abort(Abort::Store(err))
}

/// Turns a finished transaction into the caller's error types.
pub(super) fn finish<T>(result: Result<T, TransactionError<Abort>>) -> Result<T, ImportError> {
    match result {
        Ok(value) => Ok(value),
        Err(TransactionError::Abort(Abort::Conflicts(problems))) => Err(ImportError::Conflicts(problems)),
        Err(TransactionError::Abort(Abort::Store(err))) => Err(ImportError::Store(err)),
        Err(TransactionError::Storage(err)) => Err(ImportError::Store(backend(err))),
    }
}

/// For transactions that never abort with conflicts.
pub(super) fn finish_store<T>(result: Result<T, TransactionError<Abort>>) -> Result<T, StoreError> {
    finish(result).map_err(|err| match err {
        ImportError::Store(err) => err,
        ImportError::Conflicts(problems) => StoreError::Backend(format!("unexpected conflicts: {problems:?}")),
    })
}

/// Reads the balances of `keys` inside a transaction (absent ones as zero).
pub(super) fn tx_stock<'k>(
    tx: &Tx<'_>,
    keys: impl IntoIterator<Item = (&'k NodeId, &'k ItemId)>,
) -> TxResult<StockBook> {
    let mut read = Vec::new();
    for (node, item) in keys {
        let balance: Balance = tx_get(tx.stock, &stock_key(node, item))?.unwrap_or_default();
        read.push((node.clone(), item.clone(), balance));
    }
    Ok(StockBook::new(read))
}

pub(super) fn backend(err: sled::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|err| StoreError::Backend(format!("cannot encode a record: {err}")))
}

pub(super) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), source })
}

pub(super) fn pair_key(first: &str, second: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(first.len() + 1 + second.len());
    key.extend_from_slice(first.as_bytes());
    key.push(0);
    key.extend_from_slice(second);
    key
}

/// The stock tree's key of an item at a node.
pub(super) fn stock_key(node: &NodeId, item: &ItemId) -> Vec<u8> {
    pair_key(node.as_str(), item.as_str().as_bytes())
}

pub(super) fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    tree.get(key).map_err(backend)?.map(|bytes| decode(key, &bytes)).transpose()
}

pub(super) fn tx_get<T: DeserializeOwned>(tree: &TransactionalTree, key: &[u8]) -> TxResult<Option<T>> {
    let value = tree.get(key)?;
    value.map(|bytes| decode(key, &bytes).map_err(abort)).transpose()
}

pub(super) fn tx_put<T: Serialize>(tree: &TransactionalTree, key: &[u8], value: &T) -> TxResult<()> {
    tree.insert(key, encode(value).map_err(abort)?)?;
    Ok(())
}

/// Reads a big-endian counter inside a transaction (0 when absent).
pub(super) fn tx_get_counter(tree: &TransactionalTree, key: &[u8]) -> TxResult<u64> {
    match tree.get(key)? {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                abort(StoreError::Backend(format!("counter {} is not 8 bytes", String::from_utf8_lossy(key))))
            })?;
            Ok(u64::from_be_bytes(array))
        }
    }
}

pub(super) fn scan<T: DeserializeOwned>(
    iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> Result<Vec<T>, StoreError> {
    iter.map(|entry| {
        let (key, value) = entry.map_err(backend)?;
        decode(&key, &value)
    })
    .collect()
}

/// A big-endian number key.
pub(super) fn number_key(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Backend(format!("bad number key {key:?}")))?;
    Ok(u64::from_be_bytes(bytes))
}

/// One page of records keyed by a big-endian number, in key order, from `start`
/// on: through a secondary index (`owner \0 number` to nothing) when one is
/// given, else over the main tree. Records that `keep` refuses are skipped.
pub(super) fn page<T: DeserializeOwned>(
    main: &sled::Tree,
    index: Option<(&sled::Tree, &str)>,
    start: u64,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>, StoreError> {
    let mut page = Vec::new();
    match index {
        Some((index, owner)) => {
            let prefix = pair_key(owner, b"");
            for key in index.range(pair_key(owner, &start.to_be_bytes())..).keys() {
                let key = key.map_err(backend)?;
                if !key.starts_with(&prefix) || page.len() >= limit {
                    break;
                }
                if let Some(record) = get::<T>(main, &key[prefix.len()..])?.filter(|record| keep(record)) {
                    page.push(record);
                }
            }
        }
        None => {
            for entry in main.range(start.to_be_bytes()..) {
                if page.len() >= limit {
                    break;
                }
                let (key, value) = entry.map_err(backend)?;
                let record: T = decode(&key, &value)?;
                if keep(&record) {
                    page.push(record);
                }
            }
        }
    }
    Ok(page)
}

/// Every balance of the stock tree, with its node and item.
pub(super) fn balances(stock: &sled::Tree) -> Result<Vec<(NodeId, ItemId, Balance)>, StoreError> {
    let mut balances = Vec::new();
    for entry in stock.iter() {
        let (key, value) = entry.map_err(backend)?;
        let split = key.iter().position(|b| *b == 0).ok_or_else(|| StoreError::Backend("bad stock key".into()))?;
        let node = std::str::from_utf8(&key[..split]).ok().and_then(|raw| NodeId::parse(raw).ok());
        let item = std::str::from_utf8(&key[split + 1..]).ok().and_then(|raw| ItemId::parse(raw).ok());
        let (Some(node), Some(item)) = (node, item) else {
            return Err(StoreError::Backend(format!("bad stock key {key:?}")));
        };
        balances.push((node, item, decode(&key, &value)?));
    }
    Ok(balances)
}

/// Every ledger entry in order: a record holds one entry (stores written
/// before grouped appends), or the array of entries that one transaction
/// appended (see `write::Appends`).
pub(super) fn ledger_entries(ledger: &sled::Tree) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut entries = Vec::new();
    for record in ledger.iter() {
        let (key, value) = record.map_err(backend)?;
        if value.first() == Some(&b'[') {
            entries.extend(decode::<Vec<LedgerEntry>>(&key, &value)?);
        } else {
            entries.push(decode(&key, &value)?);
        }
    }
    // Transactions take turns, so records never interleave; sorting keeps the
    // order by sequence number should that ever change (already sorted: linear).
    entries.sort_by_key(|entry| entry.seq);
    Ok(entries)
}

/// Bytes of one (change number, delivery) pair in a feed record.
pub(super) const FEED_PAIR: usize = 16;

/// The (change number, delivery) pairs of one feed record: a single-line
/// record (stores written before grouped appends) is keyed by its change and
/// holds the delivery; a grouped one holds its pairs (see `write::Appends`).
pub(super) fn feed_changes(change_key: &[u8], value: &[u8]) -> Result<Vec<(u64, u64)>, StoreError> {
    let number = |bytes: &[u8]| bytes.try_into().map(u64::from_be_bytes);
    let bad = || StoreError::Backend("bad feed record".into());
    if value.len() == 8 {
        return Ok(vec![(number(change_key).map_err(|_| bad())?, number(value).map_err(|_| bad())?)]);
    }
    if value.is_empty() || value.len() % FEED_PAIR != 0 {
        return Err(bad());
    }
    value
        .chunks_exact(FEED_PAIR)
        .map(|pair| Ok((number(&pair[..8]).map_err(|_| bad())?, number(&pair[8..]).map_err(|_| bad())?)))
        .collect()
}
