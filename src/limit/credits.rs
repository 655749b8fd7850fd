//! Credits: a balance on a key that each request spends, refilled each day or month, and
//! [`CreditsLayer`], which spends it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tower_layer::Layer;
use tower_service::Service;

use crate::access::{checked_identity, refusals_of};
use crate::body::ResponseBody;
use crate::clock::{Clock, SystemClock};
use crate::error::AuthError;
use crate::identity::KeyIdentity;
use crate::store::WritableKeyStore;

const DAY: u64 = 86_400;

/// How often a balance is refilled: at 00:00 UTC every day, or on the 1st of every month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefillPeriod {
    /// At 00:00 UTC every day.
    Day,
    /// At 00:00 UTC on the 1st of every month.
    Month,
}

impl RefillPeriod {
    /// The start of the period that `at` falls in. Times before 1970 count as 1970.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_api_key::limit::RefillPeriod;
    ///
    /// let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_688_496); // 2025-12-02T15:14:56Z
    /// let day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_633_600); // 2025-12-02T00:00:00Z
    /// let month = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_547_200); // 2025-12-01T00:00:00Z
    /// assert_eq!(RefillPeriod::Day.start_of(at), day);
    /// assert_eq!(RefillPeriod::Month.start_of(at), month);
    /// ```
    pub fn start_of(self, at: SystemTime) -> SystemTime {
        let days = unix_secs(at) / DAY;
        let days = match self {
            Self::Day => days,
            Self::Month => {
                let (year, month, _) = civil_from_days(days);
                days_from_civil(year, month, 1)
            }
        };
        SystemTime::UNIX_EPOCH + Duration::from_secs(days * DAY)
    }

    /// The start of the period after the one that `at` falls in.
    pub fn next_after(self, at: SystemTime) -> SystemTime {
        let days = unix_secs(at) / DAY;
        let days = match self {
            Self::Day => days + 1,
            Self::Month => {
                let (year, month, _) = civil_from_days(days);
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                days_from_civil(year, month, 1)
            }
        };
        SystemTime::UNIX_EPOCH + Duration::from_secs(days * DAY)
    }
}

/// Seconds since the Unix epoch, 0 before it.
fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The date of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The day counted from 1970-01-01 of a date from 1970 on (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * mp + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A refill: the balance is set back to `amount` at the start of every `every`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Refill {
    /// The balance after a refill (not added to what is left: set).
    pub amount: u64,
    /// When.
    pub every: RefillPeriod,
}

impl Refill {
    /// Back to `amount` at 00:00 UTC every day.
    pub fn daily(amount: u64) -> Self {
        Self {
            amount,
            every: RefillPeriod::Day,
        }
    }

    /// Back to `amount` on the 1st of every month.
    pub fn monthly(amount: u64) -> Self {
        Self {
            amount,
            every: RefillPeriod::Month,
        }
    }
}

/// A key's balance of credits: each request through a [`CreditsLayer`] spends its cost, and a
/// key whose balance cannot pay is refused with `429` `usage_exceeded` until a refill or a
/// [top-up](crate::KeyManager::top_up).
///
/// Every store applies the same rule, atomically, in [`Credits::spend`]: a refill that fell due
/// since `refilled_at` (a refill period started) first sets `remaining` back to the refill's
/// amount; then a request that costs no more than `remaining` takes its cost from it, and one
/// that costs more takes nothing and is refused.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_api_key::limit::{Credits, Refill};
///
/// let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_633_600); // 2025-12-02T00:00:00Z
/// let credits = Credits::new(2).refilled(Refill::daily(2), start);
/// let credits = credits.spend(2, start).unwrap();
/// assert_eq!(credits.remaining, 0);
/// assert!(credits.spend(1, start).is_err()); // used up until tomorrow
/// assert_eq!(credits.refills_at(), Some(start + Duration::from_secs(86_400)));
/// let tomorrow = start + Duration::from_secs(86_400);
/// assert_eq!(credits.spend(1, tomorrow).unwrap().remaining, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Credits {
    /// What is left, as of the last spend, top-up or refill: see [`Credits::as_of`].
    pub remaining: u64,
    /// How the balance is refilled, if it is.
    pub refill: Option<Refill>,
    /// When it was last refilled: the start of that period (or the creation time). `None`
    /// with a refill means that one is due.
    pub refilled_at: Option<SystemTime>,
}

impl Credits {
    /// A balance of `remaining` credits, never refilled.
    pub fn new(remaining: u64) -> Self {
        Self {
            remaining,
            refill: None,
            refilled_at: None,
        }
    }

    /// The same balance, refilled by `refill`, as of `now` (the next refill is at the start of
    /// the next period).
    pub fn refilled(self, refill: Refill, now: SystemTime) -> Self {
        Self {
            refill: Some(refill),
            refilled_at: Some(now),
            ..self
        }
    }

    /// The balance at `now`: refilled if a refill fell due since the last.
    pub fn as_of(self, now: SystemTime) -> Self {
        match self.refill {
            Some(refill)
                if (self.refilled_at)
                    .is_none_or(|refilled_at| refilled_at < refill.every.start_of(now)) =>
            {
                Self {
                    remaining: refill.amount,
                    refill: self.refill,
                    refilled_at: Some(refill.every.start_of(now)),
                }
            }
            _ => self,
        }
    }

    /// The balance after a request that costs `cost` at `now`, or, if it cannot pay, the
    /// balance as it is (refilled if one fell due): the rule that every store applies.
    pub fn spend(self, cost: u64, now: SystemTime) -> Result<Self, Self> {
        let credits = self.as_of(now);
        match credits.remaining.checked_sub(cost) {
            Some(remaining) => Ok(Self {
                remaining,
                ..credits
            }),
            None => Err(credits),
        }
    }

    /// The balance after `amount` more credits at `now` (a refill that fell due first).
    pub fn top_up(self, amount: u64, now: SystemTime) -> Self {
        let credits = self.as_of(now);
        Self {
            remaining: credits.remaining.saturating_add(amount),
            ..credits
        }
    }

    /// When the next refill is due, if the balance is refilled.
    pub fn refills_at(&self) -> Option<SystemTime> {
        let refill = self.refill?;
        let refilled_at = self.refilled_at.unwrap_or(SystemTime::UNIX_EPOCH);
        Some(refill.every.next_after(refilled_at))
    }
}

/// As listings show it: `{"remaining": 990, "refill": {"amount": 1000, "every": "month"},
/// "refills_at": "2026-01-01T00:00:00Z"}` (`refill` and `refills_at` `null` without a refill).
impl Serialize for Credits {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Form {
            remaining: u64,
            refill: Option<Refill>,
            #[serde(serialize_with = "crate::manage::rfc3339")]
            refills_at: Option<SystemTime>,
        }
        Form {
            remaining: self.remaining,
            refill: self.refill,
            refills_at: self.refills_at(),
        }
        .serialize(serializer)
    }
}

/// From the listing's form above, or from the form a serialized
/// [`KeyRecord`](crate::KeyRecord) keeps, `{"remaining": 990, "refill": {...}, "refilled_at":
/// "2025-12-02T08:00:00Z"}`, which gives the balance exactly. From the listing's form,
/// `refilled_at` is the start of the period before `refills_at`: a balance that spends, refills
/// and tops up as the one serialized. `refill` and the times may be absent or `null`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_api_key::limit::{Credits, Refill};
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_688_496); // 2025-12-02T15:14:56Z
/// let credits = Credits::new(990).refilled(Refill::monthly(1_000), now);
/// let listed = serde_json::to_string(&credits).unwrap();
/// let read: Credits = serde_json::from_str(&listed).unwrap();
/// assert_eq!(read.refills_at(), credits.refills_at());
/// let later = now + Duration::from_secs(40 * 86_400);
/// assert_eq!(read.spend(1, now).unwrap().remaining, 989);
/// assert_eq!(read.spend(1, later).unwrap().remaining, 999); // refilled on 2026-01-01
/// ```
impl<'de> Deserialize<'de> for Credits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Form {
            remaining: u64,
            #[serde(default)]
            refill: Option<Refill>,
            #[serde(default, with = "crate::store::times")]
            refilled_at: Option<SystemTime>,
            #[serde(default, with = "crate::store::times")]
            refills_at: Option<SystemTime>,
        }
        let form = Form::deserialize(deserializer)?;
        let refilled_at = match (form.refilled_at, form.refill, form.refills_at) {
            (Some(refilled_at), _, _) => Some(refilled_at),
            (None, Some(refill), Some(refills_at)) => {
                let before = refills_at
                    .checked_sub(Duration::from_secs(1))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Some(refill.every.start_of(before))
            }
            (None, _, _) => None,
        };
        Ok(Self {
            remaining: form.remaining,
            refill: form.refill,
            refilled_at,
        })
    }
}

/// What [`WritableKeyStore::spend_credits`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// The key has no balance: its requests are not metered.
    Unmetered,
    /// The request was paid: the balance after it.
    Spent(Credits),
    /// The balance cannot pay for the request, and nothing was taken: the balance as it is.
    Exhausted(Credits),
}

/// A [`Layer`] that makes each request spend `cost` credits of its key's balance, and refuses
/// with `429` `usage_exceeded` a key whose balance cannot pay: put it inside
/// [`ApiKeyLayer`](crate::ApiKeyLayer), around the whole service (each request costs 1) or
/// around the routes that cost more.
///
/// Each request is one atomic [`spend_credits`](WritableKeyStore::spend_credits) in the store
/// that holds the keys, so that instances sharing a store never accept more requests than
/// there were credits. Keys without a balance are not metered. When the store fails, the
/// request is refused with `503` (`authentication_unavailable`): credits fail closed.
///
/// ```
/// use std::convert::Infallible;
///
/// use http::{Request, Response, StatusCode};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_api_key::limit::{Credits, CreditsLayer};
/// use tower_api_key::{KeyManager, MemoryKeyStore, NewKey, Tier};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let keys = KeyManager::new(MemoryKeyStore::new());
/// let new = NewKey::new("acct_42", Tier::FREE, "ci").credits(Credits::new(10));
/// let created = keys.create(new).await.unwrap();
///
/// let mut service = ServiceBuilder::new()
///     .layer(keys.layer()) // outside: authenticates
///     .layer(CreditsLayer::new(keys.store().clone()).cost(4)) // inside: spends 4 per request
///     .service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) });
///
/// let request = || {
///     Request::builder()
///         .header("x-api-key", created.key.expose_secret())
///         .body(String::new())
///         .unwrap()
/// };
/// for _ in 0..2 {
///     let response = service.ready().await.unwrap().call(request()).await.unwrap();
///     assert_eq!(response.status(), StatusCode::OK);
/// }
/// // 2 credits left, and a request costs 4.
/// let response = service.ready().await.unwrap().call(request()).await.unwrap();
/// assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS); // code `usage_exceeded`
/// # }
/// ```
#[derive(Clone)]
pub struct CreditsLayer {
    store: Arc<dyn WritableKeyStore>,
    cost: u64,
    clock: Arc<dyn Clock>,
}

impl CreditsLayer {
    /// Each request spends 1 credit of its key's balance in `store`, the store that holds the
    /// keys.
    pub fn new(store: impl WritableKeyStore) -> Self {
        Self {
            store: Arc::new(store),
            cost: 1,
            clock: Arc::new(SystemClock),
        }
    }

    /// Each request spends `cost` credits (by default 1); a cost of 0 meters nothing.
    pub fn cost(self, cost: u64) -> Self {
        Self { cost, ..self }
    }

    /// Reads the time from `clock`, for refills in tests with a
    /// [`ManualClock`](crate::clock::ManualClock).
    pub fn clock(self, clock: impl Clock) -> Self {
        Self {
            clock: Arc::new(clock),
            ..self
        }
    }
}

impl fmt::Debug for CreditsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditsLayer")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for CreditsLayer {
    type Service = CreditsSpent<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CreditsSpent {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service built by [`CreditsLayer`]: spends the request's cost, then calls `S`, or
/// answers `429` (or `503`).
#[derive(Clone, Debug)]
pub struct CreditsSpent<S> {
    inner: S,
    layer: CreditsLayer,
}

impl<S> CreditsSpent<S> {
    inner_service_accessors!();
}

/// The response future of [`CreditsSpent`].
pub type CreditsFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CreditsSpent<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = CreditsFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready goes into the future; a clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let identity = checked_identity(request.extensions(), |_| Ok(())).cloned();
        Box::pin(async move {
            let spent = match identity {
                Ok(identity) => spend(&layer, &identity).await,
                Err(error) => Err(error),
            };
            let refusal = spent
                .err()
                .map(|error| refusals_of(request.extensions()).respond(error, (&request).into()));
            match refusal {
                None => Ok(inner.call(request).await?.map(ResponseBody::inner)),
                Some(response) => Ok(response.map(ResponseBody::rejection)),
            }
        })
    }
}

/// Spends the request's cost from its key's balance.
async fn spend(layer: &CreditsLayer, identity: &KeyIdentity) -> Result<(), AuthError> {
    if layer.cost == 0 {
        return Ok(());
    }
    let now = layer.clock.now();
    let spent = layer
        .store
        .spend_credits(identity.key_id(), layer.cost, now)
        .await;
    match spent {
        Ok(Some(Spend::Unmetered | Spend::Spent(_))) => Ok(()),
        Ok(Some(Spend::Exhausted(credits))) => {
            crate::metrics::usage_exceeded();
            let refills_at = credits.refills_at();
            tracing::debug!(
                outcome = "usage_exceeded",
                key_id = %identity.key_id(),
                account_id = identity.account_id(),
            );
            Err(AuthError::UsageExceeded {
                refills_in: refills_at.map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)),
                refills_at,
            })
        }
        // Deleted since the layer found it.
        Ok(None) => Err(AuthError::Invalid),
        Err(error) => {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                key_id = %identity.key_id(),
                "could not spend an API key's credits; refusing the request"
            );
            Err(AuthError::Unavailable(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn credits_read_back_from_the_listing_form_spend_alike() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_688_496);
        for refill in [Refill::daily(3), Refill::monthly(1_000)] {
            let credits = Credits::new(2).refilled(refill, start);
            let read: Credits =
                serde_json::from_value(serde_json::to_value(credits).unwrap()).unwrap();
            assert_eq!(read.refills_at(), credits.refills_at());
            // `refilled_at` may differ within its period; what it decides may not.
            let seen = |credits: Credits| (credits.remaining, credits.refills_at());
            for days in [0, 1, 2, 31, 40] {
                let now = start + Duration::from_secs(days * DAY);
                let (read_spend, spend) = (read.spend(1, now), credits.spend(1, now));
                assert_eq!(read_spend.map(seen), spend.map(seen), "{days}");
                assert_eq!(seen(read.top_up(1, now)), seen(credits.top_up(1, now)));
                let (read_later, later) = (read_spend.unwrap(), spend.unwrap());
                let next = now + Duration::from_secs(DAY);
                assert_eq!(
                    read_later.spend(1, next).map(seen),
                    later.spend(1, next).map(seen)
                );
            }
        }
        let plain: Credits =
            serde_json::from_str(r#"{"remaining":5,"refill":null,"refills_at":null}"#).unwrap();
        assert_eq!(plain, Credits::new(5));
    }

    #[test]
    fn credits_read_back_exactly_from_the_record_form() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_688_496);
        let credits = Credits::new(2).refilled(Refill::daily(3), start);
        let json = r#"{"remaining":2,"refill":{"amount":3,"every":"day"},"refilled_at":"2025-12-02T15:14:56Z"}"#;
        assert_eq!(serde_json::from_str::<Credits>(json).unwrap(), credits);
    }

    #[test]
    fn periods_start_at_midnight_and_on_the_first() {
        // 2024-02-29T12:00:00Z, a leap day.
        let leap_day = at(1_709_208_000);
        assert_eq!(RefillPeriod::Day.start_of(leap_day), at(1_709_164_800));
        assert_eq!(RefillPeriod::Month.start_of(leap_day), at(1_706_745_600)); // 2024-02-01
        assert_eq!(RefillPeriod::Month.next_after(leap_day), at(1_709_251_200)); // 2024-03-01
                                                                                 // 2025-12-31T23:59:59Z rolls over into the next year.
        assert_eq!(
            RefillPeriod::Month.next_after(at(1_767_225_599)),
            at(1_767_225_600)
        );
        assert_eq!(
            RefillPeriod::Day.next_after(at(1_767_225_599)),
            at(1_767_225_600)
        );
        assert_eq!(RefillPeriod::Month.start_of(at(0)), at(0));
    }

    #[test]
    fn every_day_since_1970_round_trips_through_its_date() {
        for days in (0..200_000).step_by(7) {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
            assert!((1..=12).contains(&month) && (1..=31).contains(&day));
        }
    }

    #[test]
    fn a_refill_sets_the_balance_and_a_spend_takes_nothing_it_cannot_pay() {
        let day = 86_400;
        let credits = Credits::new(5).refilled(Refill::daily(3), at(day));
        assert_eq!(credits.spend(6, at(day)), Err(credits));
        let credits = credits.spend(5, at(day)).unwrap();
        assert_eq!(credits.remaining, 0);
        let next = credits.spend(1, at(2 * day + 10)).unwrap();
        assert_eq!(next.remaining, 2);
        assert_eq!(next.refilled_at, Some(at(2 * day)));
        assert_eq!(next.refills_at(), Some(at(3 * day)));
        assert_eq!(Credits::new(1).spend(1, at(0)).unwrap().refills_at(), None);
    }

    #[test]
    fn a_top_up_adds_to_the_refilled_balance() {
        let credits = Credits::new(0).refilled(Refill::monthly(10), at(0));
        assert_eq!(credits.top_up(5, at(1)).remaining, 5);
        assert_eq!(credits.top_up(5, at(40 * 86_400)).remaining, 15);
        assert_eq!(Credits::new(u64::MAX).top_up(1, at(0)).remaining, u64::MAX);
    }
}
