//! The local sold-out flag.

use super::{Attempt, Check, Pass, Refusal};
use crate::domain::Rejection;

/// Refuses when the local ledger (the truth in the embedded default, a
/// mirror over a shared stock) has fewer units than asked for: a sold-out
/// sale costs one atomic load.
pub struct SoldOutFlag;

impl Check for SoldOutFlag {
    fn name(&self) -> &'static str {
        "sold_out_flag"
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn check(&self, a: &Attempt<'_>) -> Result<Pass, Refusal> {
        if a.sale.ledger.is_sold_out_for(a.quantity) {
            Err(Rejection::SoldOut.into())
        } else {
            Ok(Pass::Through)
        }
    }
}
