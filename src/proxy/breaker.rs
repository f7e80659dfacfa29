//! A circuit breaker per target, lock-free: a closed circuit costs one atomic
//! load per request. It opens after N consecutive failures or an error ratio
//! over a window; after a cool-down one probe goes through (half-open); the
//! probe's success closes it, its failure re-opens it with a doubled
//! cool-down. A probe whose request is abandoned releases its slot, so an
//! open circuit always gets another chance.

use crate::coarse_clock;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Milliseconds on the coarse monotonic clock: windows and cool-downs are
/// seconds, and every answered request notes its outcome at a reading.
pub fn now_ms() -> u64 {
    coarse_clock::monotonic_ms()
}

/// When a circuit opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    pub error_ratio: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            consecutive_failures: 5,
            error_ratio: 0.5,
            window: Duration::from_secs(30),
            min_requests: 20,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(300),
        }
    }
}

/// The state a breaker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// A target's breaker: the settings of one configuration over a circuit
/// that outlives it. A reload that keeps the target hands the same
/// [`Circuit`] to the new configuration's breaker, so the outcomes of
/// requests still in flight on the old configuration count in it too.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    /// The target's label (`provider/model`), for the log lines that say
    /// when its circuit opens and closes.
    label: Box<str>,
    circuit: Arc<Circuit>,
}

/// The state of a target's circuit, shared by the breakers that different
/// configurations have for the target.
#[derive(Debug, Default)]
struct Circuit {
    consecutive: AtomicU32,
    /// 0 while closed; otherwise when the circuit opened (at least 1).
    opened_at_ms: AtomicU64,
    /// The cool-down of the opening running (doubled by failed probes),
    /// held within the reading breaker's bounds: a reload that lowers
    /// them brings a recovered provider back at once if its circuit has
    /// been open that long, rather than after the old cool-down.
    cooldown_ms: AtomicU64,
    probing: AtomicBool,
    window_start_ms: AtomicU64,
    window_total: AtomicU32,
    window_failed: AtomicU32,
}

/// Permission for one attempt. Report its outcome with [`Permit::success`]
/// or [`Permit::failure`]; dropping it unreported (the client left) frees a
/// probe slot without judging the target.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self::named(settings, "")
    }

    /// A breaker whose state changes are logged under `label`.
    pub fn named(settings: BreakerSettings, label: &str) -> Self {
        let circuit = Circuit {
            cooldown_ms: AtomicU64::new(settings.cooldown.as_millis() as u64),
            ..Circuit::default()
        };
        Breaker::resuming(settings, label, Arc::new(circuit))
    }

    fn resuming(settings: BreakerSettings, label: &str, circuit: Arc<Circuit>) -> Self {
        Breaker {
            settings,
            label: label.into(),
            circuit,
        }
    }

    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    pub fn state(&self) -> BreakerState {
        self.state_at(now_ms())
    }

    pub fn state_at(&self, now: u64) -> BreakerState {
        match self.open_until() {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// When the cool-down of an open circuit ends; `None` while closed.
    fn open_until(&self) -> Option<u64> {
        match self.circuit.opened_at_ms.load(Ordering::Acquire) {
            0 => None,
            opened_at => Some(opened_at + self.cooldown_ms()),
        }
    }

    /// The running cool-down, within this configuration's bounds.
    fn cooldown_ms(&self) -> u64 {
        let shortest = self.settings.cooldown.as_millis() as u64;
        let longest = self.settings.max_cooldown.as_millis() as u64;
        self.circuit
            .cooldown_ms
            .load(Ordering::Relaxed)
            .min(longest)
            .max(shortest)
    }

    /// The cool-down of a circuit that opens from closed: this
    /// configuration's, whatever the circuit last ran under (a reload may
    /// have changed it since).
    fn first_cooldown_ms(&self) -> u64 {
        self.settings.cooldown.as_millis() as u64
    }

    /// How long until an open circuit lets a probe through.
    pub fn opens_in(&self) -> Option<Duration> {
        let until = self.open_until()?;
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Whether an attempt would be let through now, without taking the
    /// half-open circuit's probe: for a caller that waits before it asks.
    pub fn would_admit(&self) -> bool {
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => !self.circuit.probing.load(Ordering::Acquire),
        }
    }

    /// Asks to send one attempt through this target.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        // A closed circuit, the usual case, needs no clock reading.
        let now = match self.circuit.opened_at_ms.load(Ordering::Acquire) {
            0 => 0,
            _ => now_ms(),
        };
        self.try_acquire_at(now)
    }

    pub fn try_acquire_at(&self, now: u64) -> Option<Permit<'_>> {
        match self.state_at(now) {
            BreakerState::Closed => Some(Permit {
                breaker: self,
                probe: false,
                reported: false,
            }),
            BreakerState::Open => None,
            BreakerState::HalfOpen => self
                .circuit
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .ok()
                .map(|_| Permit {
                    breaker: self,
                    probe: true,
                    reported: false,
                }),
        }
    }

    fn on_success(&self, probe: bool, now: u64) {
        let circuit = &*self.circuit;
        self.count(now, false);
        if circuit.consecutive.load(Ordering::Relaxed) != 0 {
            circuit.consecutive.store(0, Ordering::Relaxed);
        }
        if probe {
            circuit
                .cooldown_ms
                .store(self.settings.cooldown.as_millis() as u64, Ordering::Relaxed);
            circuit.opened_at_ms.store(0, Ordering::Release);
            circuit.probing.store(false, Ordering::Release);
            tracing::info!(upstream_target = %self.label, "circuit closed: the provider answered the probe");
        }
    }

    fn on_failure(&self, probe: bool, now: u64) {
        let (total, failed) = self.count(now, true);
        let consecutive = self.circuit.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if probe {
            let doubled =
                (self.cooldown_ms() * 2).min(self.settings.max_cooldown.as_millis() as u64);
            self.open(now, doubled);
            self.circuit.probing.store(false, Ordering::Release);
            return;
        }
        let ratio_tripped = total >= self.settings.min_requests
            && f64::from(failed) / f64::from(total) >= self.settings.error_ratio;
        if (consecutive >= self.settings.consecutive_failures || ratio_tripped)
            && self.state_at(now) == BreakerState::Closed
        {
            self.open(now, self.first_cooldown_ms());
        }
    }

    /// An attempt already reported a success failed after all: a stream
    /// the target cut, or left silent, after its first event. Counted as a
    /// failure in the error-ratio window, whose total already holds the
    /// attempt (a consecutive run, which the success ended, is not
    /// resumed): a target whose streams keep failing part-way opens its
    /// circuit by the ratio.
    pub fn late_failure(&self) {
        self.late_failure_at(now_ms());
    }

    fn late_failure_at(&self, now: u64) {
        let (total, failed) = self.count_late(now);
        let ratio_tripped = total >= self.settings.min_requests
            && f64::from(failed) / f64::from(total) >= self.settings.error_ratio;
        if ratio_tripped && self.state_at(now) == BreakerState::Closed {
            self.open(now, self.first_cooldown_ms());
        }
    }

    fn open(&self, now: u64, cooldown: u64) {
        let circuit = &*self.circuit;
        circuit.cooldown_ms.store(cooldown, Ordering::Relaxed);
        circuit.opened_at_ms.store(now.max(1), Ordering::Release);
        tracing::warn!(
            upstream_target = %self.label,
            cooldown_ms = cooldown,
            "circuit opened: the target is skipped until its cool-down ends"
        );
        circuit.consecutive.store(0, Ordering::Relaxed);
        circuit.window_total.store(0, Ordering::Relaxed);
        circuit.window_failed.store(0, Ordering::Relaxed);
    }

    /// Counts an outcome in the current window; returns (total, failed).
    fn count(&self, now: u64, failed: bool) -> (u32, u32) {
        let circuit = &*self.circuit;
        let start = circuit.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) > self.settings.window.as_millis() as u64 {
            // A racing reset may lose a count or two; the window is a heuristic.
            circuit.window_start_ms.store(now, Ordering::Relaxed);
            circuit.window_total.store(0, Ordering::Relaxed);
            circuit.window_failed.store(0, Ordering::Relaxed);
        }
        let total = circuit.window_total.fetch_add(1, Ordering::Relaxed) + 1;
        let failed_count = if failed {
            circuit.window_failed.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            circuit.window_failed.load(Ordering::Relaxed)
        };
        (total, failed_count)
    }

    /// Turns a success counted in the window into a failure; in a window
    /// begun since, counts it as a new outcome.
    fn count_late(&self, now: u64) -> (u32, u32) {
        let circuit = &*self.circuit;
        let start = circuit.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) > self.settings.window.as_millis() as u64 {
            return self.count(now, true);
        }
        let failed = circuit.window_failed.fetch_add(1, Ordering::Relaxed) + 1;
        let total = circuit.window_total.load(Ordering::Relaxed).max(failed);
        (total, failed)
    }
}

impl Permit<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn success(mut self) {
        self.reported = true;
        self.breaker.on_success(self.probe, now_ms());
    }

    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.on_failure(self.probe, now_ms());
    }

    /// The attempt says nothing about the target's health (e.g. the client's
    /// own bad request, or a rate limit), but the target did answer: a
    /// probe closes the circuit, a run of failures in a row ends, and the
    /// error ratio's window counts it among the answers that were no
    /// failure (the same answer cannot prove health to one rule and not
    /// the others).
    pub fn neutral(self) {
        self.neutral_at(now_ms());
    }

    fn neutral_at(mut self, now: u64) {
        self.reported = true;
        self.breaker.on_success(self.probe, now);
    }

    /// The attempt never reached the target (the gateway's own limit for
    /// its provider refused it): no verdict, and a probe's turn goes to the
    /// next attempt.
    pub fn not_sent(self) {
        // Dropping without a report releases a probe.
        drop(self);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.circuit.probing.store(false, Ordering::Release);
        }
    }
}

/// Every target's breaker by identity, carried from one configuration to the
/// next so a reload keeps the state of targets it does not change. A
/// target's identity is its provider, model, base URL and key variable:
/// adding, removing or reordering a provider's other keys leaves it.
#[derive(Debug, Default)]
pub struct BreakerRegistry {
    settings: BreakerSettings,
    by_identity: HashMap<String, Arc<Breaker>>,
    inherited: HashMap<String, Arc<Circuit>>,
}

impl BreakerRegistry {
    /// A registry whose breakers go on from `previous`'s circuits, under
    /// `settings` (the same or new ones).
    pub fn new(settings: BreakerSettings, previous: Option<&BreakerRegistry>) -> Self {
        let inherited = previous
            .map(|p| {
                p.by_identity
                    .iter()
                    .map(|(identity, old)| (identity.clone(), old.circuit.clone()))
                    .collect()
            })
            .unwrap_or_default();
        BreakerRegistry {
            settings,
            by_identity: HashMap::new(),
            inherited,
        }
    }

    /// The breaker of the target with this identity; its state changes
    /// are logged under `label`.
    pub fn get(&mut self, identity: &str, label: &str) -> Arc<Breaker> {
        if let Some(existing) = self.by_identity.get(identity) {
            return existing.clone();
        }
        let breaker = match self.inherited.remove(identity) {
            Some(circuit) => Breaker::resuming(self.settings, label, circuit),
            None => Breaker::named(self.settings, label),
        };
        let breaker = Arc::new(breaker);
        self.by_identity
            .insert(identity.to_string(), breaker.clone());
        breaker
    }

    /// Drops what was not reused.
    pub fn drop_unclaimed(&mut self) {
        self.inherited.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            consecutive_failures: 3,
            error_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            cooldown: Duration::from_millis(100),
            max_cooldown: Duration::from_millis(350),
        })
    }

    fn fail(b: &Breaker, now: u64) {
        let permit = b.try_acquire_at(now).expect("allowed");
        b.on_failure(permit.probe, now);
        std::mem::forget(permit);
    }

    fn succeed(b: &Breaker, now: u64) {
        let permit = b.try_acquire_at(now).expect("allowed");
        b.on_success(permit.probe, now);
        std::mem::forget(permit);
    }

    #[test]
    fn streams_that_fail_after_their_first_event_open_the_circuit_by_ratio() {
        // Each stream's attempt succeeded, then failed part-way: 10 of 10.
        let b = breaker();
        for now in 1..=10 {
            assert_eq!(b.state_at(now), BreakerState::Closed, "at {now}");
            succeed(&b, now);
            b.late_failure_at(now);
        }
        assert_eq!(b.state_at(11), BreakerState::Open);

        // Four of ten stay under the ratio; the window still counts ten.
        let b = breaker();
        for now in 1..=10 {
            succeed(&b, now);
            if now % 3 == 0 || now == 10 {
                b.late_failure_at(now);
            }
        }
        assert_eq!(b.state_at(11), BreakerState::Closed);
        assert_eq!(b.circuit.window_total.load(Ordering::Relaxed), 10);
        assert_eq!(b.circuit.window_failed.load(Ordering::Relaxed), 4);

        // A late failure in a window begun since counts as an outcome.
        let b = breaker();
        succeed(&b, 1);
        b.late_failure_at(20_000);
        assert_eq!(b.circuit.window_total.load(Ordering::Relaxed), 1);
        assert_eq!(b.circuit.window_failed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn opening_and_closing_are_logged_with_the_target() {
        let capture = crate::log_format::tests::Capture::default();
        let subscriber = crate::log_format::tests::json_lines_into(&capture);
        let mut registry = BreakerRegistry::new(breaker().settings, None);
        let b = registry.get(
            "moonshot/kimi-k2.6|https://api.moonshot.ai/v1|MOONSHOT_API_KEY",
            "moonshot/kimi-k2.6",
        );
        tracing::subscriber::with_default(subscriber, || {
            for now in 1..=3 {
                fail(&b, now);
            }
            let probe = b.try_acquire_at(200).expect("half-open");
            b.on_success(probe.probe, 200);
            std::mem::forget(probe);
        });
        let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["level"], "WARN");
        assert!(
            lines[0]["message"]
                .as_str()
                .unwrap()
                .starts_with("circuit opened")
        );
        assert_eq!(lines[0]["cooldown_ms"], 100);
        assert_eq!(lines[1]["level"], "INFO");
        assert!(
            lines[1]["message"]
                .as_str()
                .unwrap()
                .starts_with("circuit closed")
        );
        for line in &lines {
            assert_eq!(line["upstream_target"], "moonshot/kimi-k2.6");
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = breaker();
        fail(&b, 1);
        fail(&b, 2);
        b.on_success(false, 3);
        fail(&b, 4);
        fail(&b, 5);
        assert_eq!(b.state_at(5), BreakerState::Closed);
        fail(&b, 6);
        assert_eq!(b.state_at(6), BreakerState::Open);
        assert!(b.try_acquire_at(50).is_none());
    }

    /// An answer that says nothing of the target's health (the client's
    /// own 400, a refused key) still shows the target answering: the run
    /// of failures in a row ends there, as a probe would close on it.
    #[test]
    fn a_neutral_answer_ends_a_run_of_failures() {
        let b = breaker();
        fail(&b, 1);
        fail(&b, 2);
        b.try_acquire_at(3).expect("closed").neutral();
        fail(&b, 4);
        fail(&b, 5);
        assert_eq!(b.state_at(5), BreakerState::Closed);
        fail(&b, 6);
        assert_eq!(b.state_at(6), BreakerState::Open);
    }

    /// Answers that say nothing of the target's health count in the error
    /// ratio's window as answers that did not fail: one failure among
    /// three answers is a third, not all of them.
    #[test]
    fn neutral_answers_count_in_the_error_ratio() {
        let b = Breaker::new(BreakerSettings {
            consecutive_failures: 1000,
            ..breaker().settings
        });
        for round in 0..20 {
            let now = 1 + round * 3;
            fail(&b, now);
            b.try_acquire_at(now + 1)
                .expect("closed")
                .neutral_at(now + 1);
            b.try_acquire_at(now + 2)
                .expect("closed")
                .neutral_at(now + 2);
            assert_eq!(b.state_at(now + 2), BreakerState::Closed, "round {round}");
        }
        assert_eq!(b.circuit.window_total.load(Ordering::Relaxed), 60);
        assert_eq!(b.circuit.window_failed.load(Ordering::Relaxed), 20);
        // Failures that reach half of the answers still open it: 20 more
        // make 40 of 80.
        for now in 100..119 {
            fail(&b, now);
            assert_eq!(b.state_at(now), BreakerState::Closed, "at {now}");
        }
        fail(&b, 119);
        assert_eq!(b.state_at(119), BreakerState::Open);
    }

    #[test]
    fn half_open_lets_one_probe_through_and_success_closes() {
        let b = breaker();
        for t in 0..3 {
            fail(&b, t);
        }
        let now = 2 + 100;
        assert_eq!(b.state_at(now), BreakerState::HalfOpen);
        let probe = b.try_acquire_at(now).expect("one probe");
        assert!(probe.is_probe());
        assert!(b.try_acquire_at(now).is_none(), "only one probe at a time");
        b.on_success(true, now);
        std::mem::forget(probe);
        assert_eq!(b.state_at(now), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_with_a_longer_capped_cooldown() {
        let b = breaker();
        for t in 0..3 {
            fail(&b, t);
        }
        let mut now = 102;
        for expected in [200, 350, 350] {
            fail(&b, now);
            assert_eq!(b.state_at(now + expected - 1), BreakerState::Open);
            assert_eq!(b.state_at(now + expected), BreakerState::HalfOpen);
            now += expected;
        }
    }

    /// The breaker of `b`'s circuit under new settings, as a reload that
    /// changes `[breaker]` makes it.
    fn retuned(b: &Breaker, settings: BreakerSettings) -> Breaker {
        Breaker::resuming(settings, &b.label, b.circuit.clone())
    }

    #[test]
    fn a_reload_holds_the_running_cooldown_within_the_new_bounds() {
        let b = breaker();
        for t in 0..3 {
            fail(&b, t);
        }
        // Open from 2 until 102. Bounds lowered to 40 ms: it ends at 42.
        let lowered = BreakerSettings {
            cooldown: Duration::from_millis(20),
            max_cooldown: Duration::from_millis(40),
            ..b.settings
        };
        let carried = retuned(&b, lowered);
        assert_eq!(carried.state_at(41), BreakerState::Open);
        assert_eq!(carried.state_at(42), BreakerState::HalfOpen);
        // Bounds raised to at least 500 ms: it ends at 502.
        let raised = BreakerSettings {
            cooldown: Duration::from_millis(500),
            max_cooldown: Duration::from_millis(900),
            ..b.settings
        };
        let carried = retuned(&b, raised);
        assert_eq!(carried.state_at(501), BreakerState::Open);
        assert_eq!(carried.state_at(502), BreakerState::HalfOpen);
        // Unchanged bounds change nothing.
        let same = retuned(&b, b.settings);
        assert_eq!(same.state_at(101), BreakerState::Open);
        assert_eq!(same.state_at(102), BreakerState::HalfOpen);
    }

    /// A circuit closed at a reload opens next with the new cool-down, not
    /// the one it was created with (shorter or longer).
    #[test]
    fn a_circuit_closed_at_a_reload_opens_with_the_new_cooldown() {
        let b = breaker();
        assert_eq!(b.settings.cooldown, Duration::from_millis(100));
        for cooldown in [20, 300] {
            let reloaded = retuned(
                &b,
                BreakerSettings {
                    cooldown: Duration::from_millis(cooldown),
                    ..b.settings
                },
            );
            for t in 0..3 {
                fail(&reloaded, 1_000 * cooldown + t);
            }
            let opened = 1_000 * cooldown + 2;
            assert_eq!(reloaded.state_at(opened + cooldown - 1), BreakerState::Open);
            assert_eq!(reloaded.state_at(opened + cooldown), BreakerState::HalfOpen);
            succeed(&reloaded, opened + cooldown);
            assert_eq!(reloaded.state_at(opened + cooldown), BreakerState::Closed);
        }
    }

    /// Requests in flight across a reload report to the breaker of the
    /// configuration they started on: their outcomes count in the circuit
    /// the new configuration's breaker reads, and only one probe goes out
    /// between the two.
    #[test]
    fn outcomes_reported_to_the_breaker_before_a_reload_count_after_it() {
        let old = breaker();
        let mut registry = BreakerRegistry::new(old.settings, None);
        let before = registry.get("p/m|u|K", "p/m");
        let retuned_settings = BreakerSettings {
            window: Duration::from_secs(11),
            ..old.settings
        };
        let mut registry = BreakerRegistry::new(retuned_settings, Some(&registry));
        let after = registry.get("p/m|u|K", "p/m");
        fail(&before, 1);
        fail(&before, 2);
        fail(&after, 3);
        assert_eq!(after.state_at(3), BreakerState::Open);
        let probe = before.try_acquire_at(200).expect("half-open");
        assert!(
            after.try_acquire_at(200).is_none(),
            "one probe between them"
        );
        probe.success();
        assert_eq!(after.state_at(200), BreakerState::Closed);
        // Another identity starts closed, with a circuit of its own.
        let other = registry.get("p/m|u|OTHER", "p#2/m");
        assert_eq!(other.state_at(3), BreakerState::Closed);
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot() {
        let b = breaker();
        for t in 0..3 {
            fail(&b, t);
        }
        let probe = b.try_acquire_at(200).unwrap();
        drop(probe);
        assert!(b.try_acquire_at(200).is_some(), "another probe may go");
    }

    #[test]
    fn opens_on_error_ratio_over_the_window() {
        let b = breaker();
        for t in 0..10 {
            let permit = b.try_acquire_at(t).unwrap();
            // Failures on odd ticks, so a success always breaks the run.
            if t % 2 == 1 {
                b.on_failure(false, t);
            } else {
                b.on_success(false, t);
            }
            std::mem::forget(permit);
        }
        assert_eq!(b.state_at(10), BreakerState::Open);
    }

    /// Alternating outcomes, failures on even ticks: never three failures
    /// in a row, so only the error ratio can open the circuit.
    fn alternate(b: &Breaker, ticks: std::ops::Range<u64>) {
        for t in ticks {
            let permit = b.try_acquire_at(t).unwrap();
            if t % 2 == 0 {
                b.on_failure(false, t);
            } else {
                b.on_success(false, t);
            }
            std::mem::forget(permit);
        }
    }

    #[test]
    fn outcomes_of_an_earlier_window_are_forgotten() {
        let b = breaker();
        // 8 outcomes, half failed: under the 10 the ratio needs.
        alternate(&b, 1..9);
        // Two more, half failed, once the 10 s window has passed: counted
        // with the first eight, the last failure would be the 10th outcome
        // at a ratio of 0.5.
        alternate(&b, 20_001..20_003);
        assert_eq!(b.state_at(20_003), BreakerState::Closed);
        // The same ten outcomes within one window open it.
        let b = breaker();
        alternate(&b, 1..9);
        alternate(&b, 9_001..9_003);
        assert_eq!(b.state_at(9_003), BreakerState::Open);
    }
}
