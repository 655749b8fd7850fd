//! What the SQL stores (PostgreSQL, SQLite) share of their columns: a balance of credits in
//! four of them.

use std::future::Future;
use std::time::SystemTime;

use super::StoreError;
use crate::limit::{Credits, Refill, RefillPeriod, Spend};

/// How many times a spend is tried while top-ups keep changing the balance under it.
const SPEND_ATTEMPTS: usize = 8;

/// The SQL stores' spend: `spend(cost)` runs the one `UPDATE` that refills and takes `cost`,
/// answering the balance after it if it paid (`None` if it changed nothing); when it did not,
/// `read()` tells a missing key (`None`) from one without a balance (`Some(None)`) or one that
/// cannot pay. Should that read find a balance that can pay after all (topped up in between),
/// the spend is tried again. A cost above `i64::MAX` is more than any stored balance.
pub(super) async fn spend_in_sql<S, SF, R, RF>(
    cost: u64,
    now: SystemTime,
    spend: S,
    read: R,
) -> Result<Option<Spend>, StoreError>
where
    S: Fn(i64) -> SF,
    SF: Future<Output = Result<Option<Option<Credits>>, StoreError>>,
    R: Fn() -> RF,
    RF: Future<Output = Result<Option<Option<Credits>>, StoreError>>,
{
    for _ in 0..SPEND_ATTEMPTS {
        if let Ok(cost) = i64::try_from(cost) {
            if let Some(spent) = spend(cost).await? {
                let credits = spent.ok_or_else(|| StoreError::new("a spent balance vanished"))?;
                return Ok(Some(Spend::Spent(credits)));
            }
        }
        let Some(credits) = read().await? else {
            return Ok(None);
        };
        let Some(credits) = credits else {
            return Ok(Some(Spend::Unmetered));
        };
        let credits = credits.as_of(now);
        if credits.remaining < cost {
            return Ok(Some(Spend::Exhausted(credits)));
        }
    }
    Err(StoreError::new(
        "a key's balance kept changing while credits were spent",
    ))
}

/// A balance of credits as the schema keeps it, in four columns. Amounts above `i64::MAX` are
/// kept as `i64::MAX`: a balance that large is as good as unlimited.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct CreditColumns<'a> {
    pub(super) remaining: Option<i64>,
    pub(super) refill_amount: Option<i64>,
    pub(super) refill_every: Option<&'a str>,
    pub(super) refilled_at: Option<SystemTime>,
}

impl CreditColumns<'static> {
    /// The columns of `credits`, all NULL for none.
    pub(super) fn of(credits: Option<&Credits>) -> Self {
        let clamp = |amount: u64| i64::try_from(amount).unwrap_or(i64::MAX);
        let refill = credits.and_then(|credits| credits.refill);
        Self {
            remaining: credits.map(|credits| clamp(credits.remaining)),
            refill_amount: refill.map(|refill| clamp(refill.amount)),
            refill_every: refill.map(|refill| match refill.every {
                RefillPeriod::Day => "day",
                RefillPeriod::Month => "month",
            }),
            refilled_at: credits.and_then(|credits| credits.refilled_at),
        }
    }
}

impl CreditColumns<'_> {
    /// The balance the columns hold, or an error for columns the store would not have written.
    pub(super) fn credits(&self) -> Result<Option<Credits>, StoreError> {
        let invalid = || StoreError::new("a stored key's balance of credits is not a balance");
        let amount = |value: i64| u64::try_from(value).map_err(|_| invalid());
        let Some(remaining) = self.remaining else {
            let empty = self.refill_amount.is_none()
                && self.refill_every.is_none()
                && self.refilled_at.is_none();
            return if empty { Ok(None) } else { Err(invalid()) };
        };
        let refill = match (self.refill_amount, self.refill_every) {
            (None, None) => None,
            (Some(refill_amount), Some(every)) => Some(Refill {
                amount: amount(refill_amount)?,
                every: match every {
                    "day" => RefillPeriod::Day,
                    "month" => RefillPeriod::Month,
                    _ => return Err(invalid()),
                },
            }),
            _ => return Err(invalid()),
        };
        Ok(Some(Credits {
            remaining: amount(remaining)?,
            refill,
            refilled_at: self.refilled_at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at_secs(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn credits_round_trip_through_their_columns() {
        let balances = [
            Credits::new(0),
            Credits::new(42),
            Credits::new(7).refilled(Refill::daily(10), at_secs(86_400)),
            Credits::new(7).refilled(Refill::monthly(1_000), at_secs(1_764_547_200)),
            Credits {
                refilled_at: None,
                ..Credits::new(1).refilled(Refill::monthly(5), at_secs(0))
            },
        ];
        for credits in balances {
            let columns = CreditColumns::of(Some(&credits));
            assert_eq!(columns.credits().unwrap(), Some(credits), "{columns:?}");
        }
        let none = CreditColumns::of(None);
        assert_eq!(none.credits().unwrap(), None);
    }

    #[test]
    fn amounts_above_the_largest_integer_are_kept_as_it() {
        let credits = Credits::new(u64::MAX).refilled(Refill::daily(u64::MAX), at_secs(0));
        let columns = CreditColumns::of(Some(&credits));
        assert_eq!(columns.remaining, Some(i64::MAX));
        assert_eq!(columns.refill_amount, Some(i64::MAX));
        let read = columns.credits().unwrap().unwrap();
        assert_eq!(read.remaining, i64::MAX.unsigned_abs());
    }

    #[test]
    fn columns_the_store_would_not_have_written_are_refused() {
        let valid = || CreditColumns {
            remaining: Some(1),
            refill_amount: Some(5),
            refill_every: Some("day"),
            refilled_at: None,
        };
        assert!(valid().credits().is_ok());
        for columns in [
            CreditColumns {
                remaining: Some(-1),
                ..valid()
            },
            CreditColumns {
                refill_amount: Some(-1),
                ..valid()
            },
            CreditColumns {
                refill_every: Some("week"),
                ..valid()
            },
            CreditColumns {
                refill_every: Some("Day"),
                ..valid()
            },
            CreditColumns {
                refill_every: None,
                ..valid()
            },
            CreditColumns {
                refill_amount: None,
                ..valid()
            },
            CreditColumns {
                remaining: None,
                ..valid()
            },
            CreditColumns {
                remaining: None,
                refill_amount: None,
                refill_every: None,
                refilled_at: Some(at_secs(0)),
            },
        ] {
            assert!(columns.credits().is_err(), "{columns:?}");
        }
    }
}
