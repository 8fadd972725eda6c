//! What a correction reads on sled, in its transaction, by the plan of
//! `domain::corrections::CorrectionInputs`.

use handover_shared::DeliveryId;

use super::{
    codec::{tx_get, tx_stock, TxResult},
    trees::Tx,
};
use crate::domain::{
    corrections::{Correction, CorrectionInputs},
    orders::Receipt,
    shipments::Delivery,
};

/// Reads what `corrections::correct` judges a correction against.
pub(super) fn tx_correction_inputs(tx: &Tx<'_>, correction: &Correction) -> TxResult<CorrectionInputs> {
    let delivery_at = |id: &DeliveryId| -> TxResult<Option<Delivery>> {
        match id.number() {
            Some(number) => tx_get(tx.deliveries, &number.to_be_bytes()),
            None => Ok(None),
        }
    };
    let named = match correction.delivery() {
        Some(id) => match delivery_at(id)? {
            Some(delivery) => Some(delivery),
            None => return Ok(CorrectionInputs::default()),
        },
        None => None,
    };
    let receipt = match CorrectionInputs::receipt_to_read(correction, named.as_ref()).and_then(|id| id.seq()) {
        Some(seq) => tx_get::<Receipt>(tx.receipts, &seq.to_be_bytes())?,
        None => None,
    };
    let Some(receipt) = receipt else { return Ok(CorrectionInputs::default()) };
    let latest = match CorrectionInputs::latest_to_read(named.as_ref(), &receipt) {
        Some(id) => delivery_at(&id)?,
        None => None,
    };
    let account = tx_get(tx.customer_accounts, receipt.customer_id.as_str().as_bytes())?;
    let mut inputs = CorrectionInputs::of(correction, named, receipt, latest);
    let keys = inputs.stock_to_read();
    inputs.stock = tx_stock(tx, keys.iter().map(|(node, item)| (node, item)))?;
    inputs.account = account;
    Ok(inputs)
}
