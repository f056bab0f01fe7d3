//! Admission by predicted wait: each model keeps account of the images waiting for it and the
//! forward pass in progress, and a cost model of its passes learnt from the passes it ran, so that
//! it can say when a new request would be answered. With a latency budget
//! (`--latency-budget-us`), a request whose predicted answer lies beyond the budget is refused at
//! once (503 with `Retry-After`) instead of joining a queue it would wait out: under overload the
//! accepted requests keep their latency and the rest learn in microseconds that they should retry.
//!
//! Why a prediction and not only a queue bound: on a CPU a forward pass costs time in proportion to
//! its images (VGG-16 on one Xeon core: 0.27 s for one, 2.3 s for eight), so a queue of a fixed
//! number of requests bounds memory but not latency; the work ahead of a request does.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Weight of a new measurement in a batch size's running mean.
const SMOOTHING: f64 = 0.25;

/// Seconds per image of forward passes, by the number of images in the pass (in units of the
/// model's own input size: a pass of larger images counts as more images).
#[derive(Debug, Clone)]
pub struct CostModel {
    /// `per_image[n - 1]`: the running mean of seconds per image of passes of `n` images.
    per_image: Vec<Option<f64>>,
}

impl CostModel {
    /// No pass measured yet, for passes of 1 to `max_batch` images.
    pub fn new(max_batch: usize) -> Self {
        CostModel { per_image: vec![None; max_batch.max(1)] }
    }

    fn bucket(&self, units: f64) -> usize {
        (units.round() as usize).clamp(1, self.per_image.len()) - 1
    }

    /// A pass of `units` image units took `took`.
    pub fn record(&mut self, units: f64, took: Duration) {
        if units <= 0.0 {
            return;
        }
        let seconds = took.as_secs_f64() / units;
        let slot = self.bucket(units);
        self.per_image[slot] = Some(match self.per_image[slot] {
            Some(mean) => mean + SMOOTHING * (seconds - mean),
            None => seconds,
        });
    }

    /// The predicted time of a pass of `units` image units: its batch size's mean, or else the
    /// nearest measured batch size's cost per image (`None` before any pass). Taking a smaller
    /// batch's cost per image for a larger batch errs on the long side, as a prediction for
    /// admission should.
    pub fn pass(&self, units: f64) -> Option<Duration> {
        if units <= 0.0 {
            return Some(Duration::ZERO);
        }
        let want = self.bucket(units);
        let per_image = (0..self.per_image.len())
            .filter_map(|slot| self.per_image[slot].map(|s| (slot.abs_diff(want), std::cmp::Reverse(slot), s)))
            .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))?
            .2;
        Some(Duration::from_secs_f64(per_image * units))
    }
}

/// What a model has to do: image units waiting, the pass in progress, and what passes cost.
#[derive(Debug)]
pub struct Backlog {
    state: Mutex<State>,
    max_batch: usize,
    queue_delay: Duration,
    budget: Option<Duration>,
}

#[derive(Debug)]
struct State {
    /// Image units accepted and not yet in a pass.
    waiting: f64,
    /// When the pass in progress started, and its image units.
    running: Option<(Instant, f64)>,
    cost: CostModel,
}

/// A request that would be answered too late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// When it would be answered, from now.
    pub predicted: Duration,
    /// The budget.
    pub budget: Duration,
}

impl Backlog {
    /// An idle model batching up to `max_batch` images, whose first request waits up to
    /// `queue_delay` for others, refusing requests predicted past `budget` (if any).
    pub fn new(max_batch: usize, queue_delay: Duration, budget: Option<Duration>) -> Self {
        Backlog {
            state: Mutex::new(State { waiting: 0.0, running: None, cost: CostModel::new(max_batch) }),
            max_batch: max_batch.max(1),
            queue_delay,
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few numbers, consistent after any panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts `units` image units into the backlog, or refuses them when a budget is set, the
    /// model is busy, and their predicted answer lies beyond the budget. An idle model accepts
    /// anything, so that a budget below one pass's cost slows nothing but refuses overlap.
    pub fn admit(&self, units: f64) -> Result<(), OverBudget> {
        let mut state = self.lock();
        self.judge(&state, units)?;
        state.waiting += units;
        Ok(())
    }

    /// Whether [`Backlog::admit`] would refuse `units` now, admitting nothing. With `units` 0:
    /// whether any request would be refused, whatever its size (the prediction grows with the
    /// units), which the server asks before reading a request's body.
    pub fn check(&self, units: f64) -> Result<(), OverBudget> {
        self.judge(&self.lock(), units)
    }

    fn judge(&self, state: &State, units: f64) -> Result<(), OverBudget> {
        if let Some(budget) = self.budget {
            let busy = state.running.is_some() || state.waiting > 0.0;
            if busy {
                let predicted = self.predict(state, units);
                if predicted > budget {
                    return Err(OverBudget { predicted, budget });
                }
            }
        }
        Ok(())
    }

    /// Takes back units that were admitted but will not run (the queue refused them, or their
    /// client left).
    pub fn withdraw(&self, units: f64) {
        let mut state = self.lock();
        state.waiting = (state.waiting - units).max(0.0);
    }

    /// A pass of `units` image units starts.
    pub fn pass_started(&self, units: f64) {
        let mut state = self.lock();
        state.waiting = (state.waiting - units).max(0.0);
        state.running = Some((Instant::now(), units));
    }

    /// The pass in progress took `took`; `units` is what it held.
    pub fn pass_ended(&self, units: f64, took: Duration) {
        let mut state = self.lock();
        state.running = None;
        state.cost.record(units, took);
    }

    /// A pass that is not a request's (the warm-up) took `took`: teaches the cost model only.
    pub fn measured(&self, units: f64, took: Duration) {
        self.lock().cost.record(units, took);
    }

    /// When a request of `units` image units arriving now would be answered.
    pub fn predicted(&self, units: f64) -> Duration {
        let state = self.lock();
        self.predict(&state, units)
    }

    /// The rest of the pass in progress, then the waiting units and these in passes of at most the
    /// maximum batch (first come, first served), plus the queue delay when the last pass is not
    /// full (its first request waits for others). A cost not yet measured counts as zero.
    fn predict(&self, state: &State, units: f64) -> Duration {
        let cost = |u: f64| state.cost.pass(u).unwrap_or(Duration::ZERO);
        let rest = match state.running {
            Some((started, running)) => cost(running).saturating_sub(started.elapsed()),
            None => Duration::ZERO,
        };
        let ahead = state.waiting + units;
        let max = self.max_batch as f64;
        let full = ((ahead / max).ceil() - 1.0).max(0.0);
        let last = ahead - full * max;
        let delay = if last < max { self.queue_delay } else { Duration::ZERO };
        rest + cost(max).mul_f64(full) + cost(last) + delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    /// Equal to a microsecond (the costs go through f64 seconds).
    fn near(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(1)
    }

    #[test]
    fn the_cost_of_a_pass_comes_from_its_own_size_or_the_nearest_measured_one() {
        let mut cost = CostModel::new(8);
        assert_eq!(cost.pass(1.0), None);
        cost.record(1.0, ms(100));
        // Only batch 1 known: eight images at its cost per image.
        assert!(near(cost.pass(8.0).unwrap(), ms(800)));
        cost.record(8.0, ms(400));
        assert!(near(cost.pass(8.0).unwrap(), ms(400)));
        // 6 is nearer 8 than 1: 50 ms an image.
        assert!(near(cost.pass(6.0).unwrap(), ms(300)));
        // A running mean: a quarter of the way to the new measurement.
        cost.record(1.0, ms(200));
        assert!(near(cost.pass(1.0).unwrap(), ms(125)));
        // Beyond the largest batch: the largest batch's cost per image.
        assert!(near(cost.pass(20.0).unwrap(), ms(1000)));
    }

    #[test]
    fn the_prediction_counts_the_work_ahead_in_passes_of_the_maximum_batch() {
        let backlog = Backlog::new(4, ms(2), None);
        backlog.measured(1.0, ms(10));
        backlog.measured(4.0, ms(20));
        // Idle: one pass of one image, plus the wait for company.
        assert!(near(backlog.predicted(1.0), ms(12)));
        for _ in 0..5 {
            backlog.admit(1.0).unwrap();
        }
        // Five waiting and one more: a full pass of four (20 ms), then one of two at batch 1's
        // cost per image (20 ms), plus the delay.
        assert!(near(backlog.predicted(1.0), ms(42)));
        // Eight in all: two full passes, no delay.
        assert!(near(backlog.predicted(3.0), ms(40)));
        backlog.withdraw(5.0);
        assert!(near(backlog.predicted(1.0), ms(12)));
    }

    #[test]
    fn a_budget_refuses_what_would_be_late_but_never_an_idle_model() {
        let backlog = Backlog::new(8, Duration::ZERO, Some(ms(50)));
        backlog.measured(1.0, ms(100));
        // Idle: accepted although one pass exceeds the budget.
        backlog.admit(1.0).unwrap();
        let refused = backlog.admit(1.0).unwrap_err();
        assert!(near(refused.predicted, ms(200)) && refused.budget == ms(50), "{refused:?}");
        // The refused request left nothing behind.
        assert!(near(backlog.predicted(1.0), ms(200)));
        // Once the accepted one runs and ends, the model is idle again.
        backlog.pass_started(1.0);
        assert!(backlog.admit(1.0).is_err(), "busy with a pass predicted to take 100 ms");
        backlog.pass_ended(1.0, ms(100));
        backlog.admit(1.0).unwrap();
    }

    #[test]
    fn a_check_admits_nothing_and_refuses_only_when_any_request_would_be_late() {
        let backlog = Backlog::new(8, Duration::ZERO, Some(ms(150)));
        backlog.measured(1.0, ms(100));
        backlog.check(0.0).unwrap();
        backlog.admit(1.0).unwrap();
        // One image waiting (100 ms): a request of any size might still make it; of one, not.
        backlog.check(0.0).unwrap();
        assert!(backlog.check(1.0).is_err());
        backlog.admit(1.0).unwrap_err();
        // A pass in progress within the budget: any request might still make it.
        let late = Backlog::new(8, Duration::ZERO, Some(ms(150)));
        late.measured(1.0, ms(100));
        late.admit(1.0).unwrap();
        late.pass_started(1.0);
        assert!(late.check(0.0).is_ok(), "the pass in progress alone is within the budget");
        // An idle model took three images at once: the work ahead alone is past the budget.
        let ahead = Backlog::new(8, Duration::ZERO, Some(ms(150)));
        ahead.measured(1.0, ms(100));
        ahead.admit(3.0).unwrap();
        let refused = ahead.check(0.0).unwrap_err();
        assert!(near(refused.predicted, ms(300)), "{refused:?}");
        // Checks left nothing behind: withdrawing what was admitted leaves an idle model.
        ahead.withdraw(3.0);
        assert!(near(ahead.predicted(1.0), ms(100)));
    }

    #[test]
    fn without_a_budget_everything_is_admitted() {
        let backlog = Backlog::new(1, Duration::ZERO, None);
        backlog.measured(1.0, Duration::from_secs(10));
        for _ in 0..100 {
            backlog.admit(1.0).unwrap();
        }
        assert!(near(backlog.predicted(1.0), Duration::from_secs(1010)));
    }
}
