//! The sale window, by the sale clock.

use super::{Attempt, Check, Pass, Refusal};
use crate::domain::sale::Window;
use crate::domain::Rejection;

/// Refuses outside the sale's window (by the engine's sale clock, which in
/// the distributed mode never runs ahead of the shared one).
pub struct SaleWindow;

impl Check for SaleWindow {
    fn name(&self) -> &'static str {
        "window"
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn check(&self, a: &Attempt<'_>) -> Result<Pass, Refusal> {
        match a.sale.window(a.now_ms) {
            Window::Upcoming => Err(Rejection::NotStarted.into()),
            Window::Ended => Err(Rejection::Ended.into()),
            Window::Open => Ok(Pass::Through),
        }
    }
}
