//! Capture's memory bound. A request holds memory for its body as received, for each
//! decoded form of it and for the JSON tree it is parsed into; a small compressed body
//! can ask for a thousand times its size. Every such allocation is first reserved here:
//! against a cap per request (past it: 413, the request can never fit) and against one
//! budget shared by all requests in flight (past it: 503, SDKs retry). So capture's
//! memory has a ceiling whatever the input, and one hostile request cannot take more
//! than its share.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are KiB: tokio's semaphore takes at most `u32` permits per call.
const UNIT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BudgetError {
    #[error("request needs more than {limit} bytes of memory to decode and parse; send smaller batches")]
    RequestTooLarge { limit: usize },
    #[error("capture's memory for requests in flight is in use; retry later")]
    Exhausted,
}

impl BudgetError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            BudgetError::RequestTooLarge { .. } => "payload_too_complex",
            BudgetError::Exhausted => "memory_exhausted",
        }
    }
}

/// The shared budget; cloning shares it.
#[derive(Clone)]
pub(crate) struct MemoryBudget {
    units: Arc<Semaphore>,
    per_request: usize,
}

impl MemoryBudget {
    pub(crate) fn new(total_bytes: usize, per_request_bytes: usize) -> Self {
        let units = total_bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        MemoryBudget { units: Arc::new(Semaphore::new(units)), per_request: per_request_bytes.min(total_bytes) }
    }

    /// An empty reservation for one request; what it holds is given back when it drops.
    pub(crate) fn reservation(&self) -> Reservation {
        Reservation { units: self.units.clone(), permit: None, held: 0, per_request: self.per_request }
    }

    /// Bytes not reserved by any request right now.
    #[cfg(test)]
    pub(crate) fn available_bytes(&self) -> usize {
        self.units.available_permits() * UNIT
    }
}

/// What one request holds of the budget. Never waits: a request that cannot get its
/// memory at once is answered instead of queued, so nothing piles up behind it.
pub(crate) struct Reservation {
    units: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    held: usize,
    per_request: usize,
}

impl Reservation {
    /// Reserves `bytes` more.
    pub(crate) fn hold(&mut self, bytes: usize) -> Result<(), BudgetError> {
        let total = self.held.saturating_add(bytes);
        if total > self.per_request {
            return Err(BudgetError::RequestTooLarge { limit: self.per_request });
        }
        let have = self.permit.as_ref().map_or(0, |p| p.num_permits());
        let need = total.div_ceil(UNIT).saturating_sub(have);
        if need > 0 {
            let more = u32::try_from(need).map_err(|_| BudgetError::RequestTooLarge { limit: self.per_request })?;
            let permit = self.units.clone().try_acquire_many_owned(more).map_err(|_| BudgetError::Exhausted)?;
            match &mut self.permit {
                Some(p) => p.merge(permit),
                None => self.permit = Some(permit),
            }
        }
        self.held = total;
        Ok(())
    }

    /// Makes room in `v` for `additional` more elements, reserving what its growth
    /// allocates before it is allocated. Grows by doubling, or exactly when doubling
    /// would not fit.
    pub(crate) fn make_room<T>(&mut self, v: &mut Vec<T>, additional: usize) -> Result<(), BudgetError> {
        let needed = v.len().saturating_add(additional);
        if needed <= v.capacity() {
            return Ok(());
        }
        let size = std::mem::size_of::<T>().max(1);
        let doubled = needed.max(v.capacity().saturating_mul(2)).max(4096 / size);
        let target = match self.hold((doubled - v.capacity()).saturating_mul(size)) {
            Ok(()) => doubled,
            Err(_) => {
                self.hold((needed - v.capacity()).saturating_mul(size))?;
                needed
            }
        };
        v.reserve_exact(target - v.len());
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_capped_and_the_budget_is_shared() {
        let budget = MemoryBudget::new(100 * UNIT, 60 * UNIT);
        let mut a = budget.reservation();
        a.hold(30 * UNIT).unwrap();
        a.hold(30 * UNIT).unwrap();
        assert_eq!(a.hold(1), Err(BudgetError::RequestTooLarge { limit: 60 * UNIT }));
        let mut b = budget.reservation();
        b.hold(40 * UNIT).unwrap();
        assert_eq!(b.hold(1), Err(BudgetError::Exhausted), "60 + 40 KiB is the whole budget");
        drop(a);
        assert_eq!(budget.available_bytes(), 60 * UNIT, "a finished request gives its memory back");
        b.hold(20 * UNIT).unwrap();
        assert_eq!(b.held(), 60 * UNIT);
    }

    #[test]
    fn vectors_grow_only_into_reserved_memory() {
        let budget = MemoryBudget::new(64 * UNIT, 64 * UNIT);
        let mut r = budget.reservation();
        let mut v: Vec<u64> = Vec::new();
        for i in 0..6_000u64 {
            r.make_room(&mut v, 1).unwrap();
            v.push(i);
        }
        assert!(v.capacity() * 8 <= r.held(), "capacity {} against {} held", v.capacity(), r.held());
        assert_eq!(r.make_room(&mut v, 8 * UNIT), Err(BudgetError::RequestTooLarge { limit: 64 * UNIT }));
    }

    #[test]
    fn small_holds_round_up_once() {
        let budget = MemoryBudget::new(4 * UNIT, 4 * UNIT);
        let mut a = budget.reservation();
        for _ in 0..UNIT {
            a.hold(1).unwrap();
        }
        assert_eq!(budget.available_bytes(), 3 * UNIT);
        assert_eq!(a.hold(usize::MAX), Err(BudgetError::RequestTooLarge { limit: 4 * UNIT }));
    }
}
