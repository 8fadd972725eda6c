//! Corrections on PostgreSQL: what `domain::corrections::correct` reads, locked
//! in the caller's transaction.

use handover_shared::DeliveryId;

use super::{sql::Failed, working::Working};
use crate::domain::{
    corrections::{Correction, CorrectionInputs},
    shipments::Delivery,
};

/// Reads (and locks) what a correction is judged against: the delivery named
/// before its receipt, as pushes do; the receipt's latest delivery after it.
pub(super) async fn correction_inputs(
    working: &mut Working<'_, '_>,
    correction: &Correction,
) -> Result<CorrectionInputs, Failed> {
    let named = match correction.delivery() {
        Some(id) => match delivery(working, id).await? {
            Some(delivery) => Some(delivery),
            None => return Ok(CorrectionInputs::default()),
        },
        None => None,
    };
    let receipt_id = match (correction, &named) {
        (Correction::CancelReceipt(id), _) => id.clone(),
        (_, Some(delivery)) => delivery.receipt_id.clone(),
        (_, None) => return Ok(CorrectionInputs::default()),
    };
    let receipt = match receipt_id.seq() {
        Some(seq) => working.receipt(seq).await?,
        None => None,
    };
    let Some(receipt) = receipt else { return Ok(CorrectionInputs::default()) };
    let latest = match &receipt.delivery_id {
        Some(id) if named.as_ref().is_none_or(|named| named.delivery_id != *id) => delivery(working, id).await?,
        _ => None,
    };
    let (delivery, latest) = if named.is_some() { (named, latest) } else { (latest, None) };
    let keys: Vec<_> = delivery
        .iter()
        .chain(&latest)
        .flat_map(|d| d.stock_nodes().map(|node| (node.clone(), d.item_id.clone())))
        .collect();
    let stock = working.stock(keys).await?;
    let account = working.customer_account(&receipt.customer_id).await?;
    Ok(CorrectionInputs { receipt: Some(receipt), delivery, latest, stock, account })
}

async fn delivery(working: &mut Working<'_, '_>, id: &DeliveryId) -> Result<Option<Delivery>, Failed> {
    match id.number() {
        Some(number) => working.delivery(number).await,
        None => Ok(None),
    }
}
