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
    let receipt = match CorrectionInputs::receipt_to_read(correction, named.as_ref()).and_then(|id| id.seq()) {
        Some(seq) => working.receipt(seq).await?,
        None => None,
    };
    let Some(receipt) = receipt else { return Ok(CorrectionInputs::default()) };
    let latest = match CorrectionInputs::latest_to_read(named.as_ref(), &receipt) {
        Some(id) => delivery(working, &id).await?,
        None => None,
    };
    let account = working.customer_account(&receipt.customer_id).await?;
    let mut inputs = CorrectionInputs::of(correction, named, receipt, latest);
    inputs.stock = working.stock(inputs.stock_to_read()).await?;
    inputs.account = account;
    Ok(inputs)
}

async fn delivery(working: &mut Working<'_, '_>, id: &DeliveryId) -> Result<Option<Delivery>, Failed> {
    match id.number() {
        Some(number) => working.delivery(number).await,
        None => Ok(None),
    }
}
