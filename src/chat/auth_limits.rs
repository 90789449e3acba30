//! Throttling of password guessing: growing waits after failed logins, per account and client
//! address, and one bucket per address for registration and setup attempts.
//!
//! The rule (docs/protocol.md, REST API): failures are counted on three keys, each with free
//! failures before its waits start, then a wait that doubles per further failure up to a cap,
//! all forgotten after a quiet period:
//!
//! - the (account, address) pair: the main brake on one guesser (5 free failures);
//! - the address, across accounts: one guesser spraying many usernames (20 free);
//! - the account, across addresses: many guessers on one account (100 free). It is counted in
//!   two classes: failures from pairs still within their own free failures (`fresh`), and the
//!   rest (`spent`); an attempt is held only by its own class. So an attacker at one address,
//!   which lands in `spent` after its fifth failure, never delays the owner's own device (a
//!   `fresh` pair); it takes at least 20 guessing addresses to delay the owner at all, and
//!   then by one capped wait (a minute by default), never longer.
//!
//! A success clears its pair and the account's counts (not the address's: an attacker who owns
//! one account must not reset his address by logging into it). Attempts still hashing count
//! as pending: past the free failures only one attempt per key runs at a time, so parallel
//! requests cannot multiply the guesses. The maps are swept of forgotten entries at most once
//! a minute, and each holds at most `MAX_ENTRIES` (the oldest are dropped first).

use super::ChatError;
use super::limits::Buckets;
use crate::config::RateLimits;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most entries each map keeps (about 100 B each): bounds memory under many addresses or names.
const MAX_ENTRIES: usize = 50_000;
/// How often forgotten entries are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The waiting rules, from `[rate_limits]`.
#[derive(Debug, Clone, Copy)]
struct Rules {
    pair_free: u32,
    address_free: u32,
    account_free: u32,
    base: Duration,
    max: Duration,
    forget: Duration,
}

impl Rules {
    /// The wait after `failures` failures on a key with `free` free ones.
    fn wait_after(&self, failures: u32, free: u32) -> Option<Duration> {
        let over = failures.checked_sub(free)?;
        // 2^20 times any base is past any sensible cap; stop doubling there.
        let wait = self.base.saturating_mul(1 << over.min(20));
        Some(wait.min(self.max))
    }
}

/// Failures and attempts in flight on one key.
#[derive(Debug, Clone, Copy)]
struct Counter {
    failures: u32,
    in_flight: u32,
    not_before: Instant,
    last: Instant,
}

impl Counter {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            in_flight: 0,
            not_before: now,
            last: now,
        }
    }

    /// Nothing to remember any more: no attempt running, the wait over, quiet long enough.
    fn forgotten(&self, now: Instant, rules: &Rules) -> bool {
        self.in_flight == 0
            && now >= self.not_before
            && now.saturating_duration_since(self.last) >= rules.forget
    }

    /// How long an attempt must wait, if it may not start now.
    fn wait(&self, now: Instant, free: u32, rules: &Rules) -> Option<Duration> {
        if now < self.not_before {
            return Some(self.not_before - now);
        }
        let pending = self.failures + self.in_flight;
        if pending >= free && self.in_flight > 0 {
            // Past the free failures, one attempt at a time: the wait is the one it would
            // leave if every attempt in flight failed.
            return rules.wait_after(pending, free);
        }
        None
    }

    /// Forgets the failures (attempts still in flight stay counted).
    fn clear(&mut self, now: Instant) {
        self.failures = 0;
        self.not_before = now;
    }

    fn fail(&mut self, now: Instant, free: u32, rules: &Rules) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.failures = self.failures.saturating_add(1);
        self.last = now;
        if let Some(w) = rules.wait_after(self.failures, free) {
            self.not_before = now + w;
        }
    }
}

/// An account's failures, in two classes (see the module doc).
#[derive(Debug, Clone, Copy)]
struct AccountCounters {
    fresh: Counter,
    spent: Counter,
}

impl AccountCounters {
    fn class(&mut self, spent: bool) -> &mut Counter {
        if spent {
            &mut self.spent
        } else {
            &mut self.fresh
        }
    }
}

#[derive(Debug)]
struct State {
    addresses: HashMap<IpAddr, Counter>,
    pairs: HashMap<(String, IpAddr), Counter>,
    accounts: HashMap<String, AccountCounters>,
    next_sweep: Instant,
}

/// Login, registration and setup throttling, shared by every request.
pub struct AuthLimits {
    rules: Rules,
    state: Mutex<State>,
    signups: Buckets<IpAddr>,
}

/// A login attempt that passed the limits. Dropped without `succeeded`, it counts as a failure
/// (a wrong password, an unknown user, a storage error, or a client that went away mid-check).
pub struct LoginAttempt {
    limits: Arc<AuthLimits>,
    account: Option<String>,
    ip: IpAddr,
    spent: bool,
    done: bool,
}

impl LoginAttempt {
    /// The password was right: clears the pair's and the account's failures.
    pub fn succeeded(mut self) {
        self.done = true;
        let now = Instant::now();
        let mut st = self.limits.lock();
        if let Some(c) = st.addresses.get_mut(&self.ip) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        let Some(account) = self.account.take() else {
            return;
        };
        if let Some(a) = st.accounts.get_mut(&account) {
            let class = a.class(self.spent);
            class.in_flight = class.in_flight.saturating_sub(1);
            a.fresh.clear(now);
            a.spent.clear(now);
        }
        if let Some(c) = st.pairs.get_mut(&(account, self.ip)) {
            c.in_flight = c.in_flight.saturating_sub(1);
            c.clear(now);
        }
    }
}

impl Drop for LoginAttempt {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let rules = self.limits.rules;
        let now = Instant::now();
        let mut st = self.limits.lock();
        if let Some(c) = st.addresses.get_mut(&self.ip) {
            c.fail(now, rules.address_free, &rules);
        }
        if let Some(account) = self.account.take() {
            if let Some(a) = st.accounts.get_mut(&account) {
                a.class(self.spent).fail(now, rules.account_free, &rules);
            }
            if let Some(c) = st.pairs.get_mut(&(account, self.ip)) {
                c.fail(now, rules.pair_free, &rules);
            }
        }
    }
}

fn refusal(wait: Duration) -> ChatError {
    ChatError::RateLimited(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
}

impl AuthLimits {
    pub fn new(r: &RateLimits) -> Self {
        let now = Instant::now();
        Self {
            rules: Rules {
                pair_free: r.login_free_failures,
                address_free: r.login_address_free_failures,
                account_free: r.login_account_free_failures,
                base: Duration::from_millis(r.login_backoff_base_ms),
                max: Duration::from_millis(r.login_backoff_max_ms),
                forget: Duration::from_secs(r.login_forget_secs),
            },
            state: Mutex::new(State {
                addresses: HashMap::new(),
                pairs: HashMap::new(),
                accounts: HashMap::new(),
                next_sweep: now + SWEEP_EVERY,
            }),
            signups: Buckets::with_period(
                Duration::from_secs(60) / r.registrations_per_min_per_ip.max(1),
                r.registrations_burst_per_ip,
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters behind: keep using them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses an address that is waiting out its failures (before the request body is read).
    pub fn check_address(&self, ip: IpAddr) -> Result<(), ChatError> {
        let now = Instant::now();
        let st = self.lock();
        match st.addresses.get(&ip) {
            Some(c) if !c.forgotten(now, &self.rules) => c
                .wait(now, self.rules.address_free, &self.rules)
                .map_or(Ok(()), |w| Err(refusal(w))),
            _ => Ok(()),
        }
    }

    /// Starts a login attempt for `account` (`None`: a name no account can have) from `ip`, or
    /// refuses it with the longest wait among the keys that hold it.
    pub fn begin_login(
        self: &Arc<Self>,
        account: Option<&str>,
        ip: IpAddr,
    ) -> Result<LoginAttempt, ChatError> {
        let rules = self.rules;
        let now = Instant::now();
        let mut guard = self.lock();
        let st = &mut *guard;
        st.sweep(now, &rules, &self.signups);
        let address = fresh_entry(&mut st.addresses, ip, now, &rules);
        let mut wait = address.wait(now, rules.address_free, &rules);
        let mut spent = false;
        if let Some(name) = account {
            let pair = fresh_entry(&mut st.pairs, (name.to_owned(), ip), now, &rules);
            spent = pair.failures >= rules.pair_free;
            wait = wait.max(pair.wait(now, rules.pair_free, &rules));
            let acc = st
                .accounts
                .entry(name.to_owned())
                .or_insert_with(|| AccountCounters {
                    fresh: Counter::new(now),
                    spent: Counter::new(now),
                });
            let class = acc.class(spent);
            if class.forgotten(now, &rules) {
                *class = Counter::new(now);
            }
            wait = wait.max(class.wait(now, rules.account_free, &rules));
        }
        if let Some(w) = wait {
            return Err(refusal(w));
        }
        if let Some(c) = st.addresses.get_mut(&ip) {
            c.in_flight += 1;
        }
        if let Some(name) = account {
            if let Some(c) = st.pairs.get_mut(&(name.to_owned(), ip)) {
                c.in_flight += 1;
            }
            if let Some(a) = st.accounts.get_mut(name) {
                a.class(spent).in_flight += 1;
            }
        }
        Ok(LoginAttempt {
            limits: Arc::clone(self),
            account: account.map(str::to_owned),
            ip,
            spent,
            done: false,
        })
    }

    /// Takes one registration or setup attempt from the address's bucket.
    pub fn signup(&self, ip: IpAddr) -> Result<(), ChatError> {
        self.signups.take(&ip)
    }

    /// Entries in the three maps (for tests of the bounds).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.addresses.len(), st.pairs.len(), st.accounts.len())
    }
}

/// The key's counter, started over if it was forgotten.
fn fresh_entry<'a, K: Hash + Eq>(
    map: &'a mut HashMap<K, Counter>,
    key: K,
    now: Instant,
    rules: &Rules,
) -> &'a mut Counter {
    let c = map.entry(key).or_insert_with(|| Counter::new(now));
    if c.forgotten(now, rules) {
        *c = Counter::new(now);
    }
    c
}

/// Drops forgotten entries; past `MAX_ENTRIES`, also the ones idle longest (but none with an
/// attempt in flight), down to half.
fn prune<K: Hash + Eq + Clone, V>(
    map: &mut HashMap<K, V>,
    forgotten: impl Fn(&V) -> bool,
    last: impl Fn(&V) -> Instant,
    in_flight: impl Fn(&V) -> bool,
) {
    map.retain(|_, v| !forgotten(v));
    if map.len() < MAX_ENTRIES {
        return;
    }
    let mut by_age: Vec<(Instant, K)> = map
        .iter()
        .filter(|(_, v)| !in_flight(v))
        .map(|(k, v)| (last(v), k.clone()))
        .collect();
    by_age.sort_unstable_by_key(|(t, _)| *t);
    let excess = map.len() - MAX_ENTRIES / 2;
    for (_, k) in by_age.into_iter().take(excess) {
        map.remove(&k);
    }
}

impl State {
    fn sweep(&mut self, now: Instant, rules: &Rules, signups: &Buckets<IpAddr>) {
        let full = self.addresses.len() >= MAX_ENTRIES
            || self.pairs.len() >= MAX_ENTRIES
            || self.accounts.len() >= MAX_ENTRIES;
        if now < self.next_sweep && !full {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        let gone = |c: &Counter| c.forgotten(now, rules);
        let last = |c: &Counter| c.last;
        let busy = |c: &Counter| c.in_flight > 0;
        prune(&mut self.addresses, gone, last, busy);
        prune(&mut self.pairs, gone, last, busy);
        prune(
            &mut self.accounts,
            |a| gone(&a.fresh) && gone(&a.spent),
            |a| a.fresh.last.max(a.spent.last),
            |a| busy(&a.fresh) || busy(&a.spent),
        );
        signups.forget_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(free: u32) -> Arc<AuthLimits> {
        let r = RateLimits {
            login_free_failures: free,
            login_address_free_failures: 1000,
            login_account_free_failures: 1000,
            login_backoff_base_ms: 1000,
            login_backoff_max_ms: 8000,
            ..RateLimits::default()
        };
        Arc::new(AuthLimits::new(&r))
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn wait_ms(e: ChatError) -> u64 {
        match e {
            ChatError::RateLimited(ms) => ms,
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }

    #[test]
    fn waits_start_after_the_free_failures_and_double_up_to_the_cap() {
        let r = limits(3).rules;
        assert_eq!(r.wait_after(2, 3), None);
        let waits: Vec<u64> = (3..9)
            .map(|n| r.wait_after(n, 3).map_or(0, |d| d.as_millis() as u64))
            .collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(r.wait_after(u32::MAX, 0), Some(r.max));
    }

    #[test]
    fn parallel_attempts_past_the_free_failures_run_one_at_a_time() {
        let l = limits(2);
        let a = l.begin_login(Some("ann"), ip(1)).expect("first");
        let b = l
            .begin_login(Some("ann"), ip(1))
            .expect("second, still free");
        let third = l.begin_login(Some("ann"), ip(1)).err().map(wait_ms);
        assert_eq!(
            third,
            Some(1000),
            "a third in flight would pass the free failures"
        );
        drop(a);
        drop(b);
        // Two failures now: the wait runs.
        assert!(l.begin_login(Some("ann"), ip(1)).is_err());
        // Another address is not held by this pair.
        let other = l.begin_login(Some("ann"), ip(2)).expect("another address");
        other.succeeded();
        // The success cleared the pair at ip(2) and the account, not ip(1)'s pair.
        assert!(l.begin_login(Some("ann"), ip(1)).is_err());
    }

    #[test]
    fn a_success_clears_the_pair() {
        let l = limits(2);
        drop(l.begin_login(Some("bo"), ip(1)).expect("1"));
        l.begin_login(Some("bo"), ip(1)).expect("2").succeeded();
        drop(l.begin_login(Some("bo"), ip(1)).expect("free again"));
        drop(l.begin_login(Some("bo"), ip(1)).expect("free again"));
        assert!(l.begin_login(Some("bo"), ip(1)).is_err());
    }

    #[test]
    fn guessers_past_their_free_failures_never_hold_back_a_fresh_address() {
        let r = RateLimits {
            login_free_failures: 2,
            login_address_free_failures: 1000,
            login_account_free_failures: 6,
            login_backoff_base_ms: 1000,
            login_backoff_max_ms: 8000,
            ..RateLimits::default()
        };
        let l = Arc::new(AuthLimits::new(&r));
        // One guesser: its third attempt waits out its pair; its spent failures, however
        // many, are not the fresh class.
        drop(l.begin_login(Some("cy"), ip(1)).expect("1"));
        drop(l.begin_login(Some("cy"), ip(1)).expect("2"));
        assert!(l.begin_login(Some("cy"), ip(1)).is_err());
        l.begin_login(Some("cy"), ip(9))
            .expect("the owner")
            .succeeded();
        // Three guessers using up their free failures reach the fresh class's threshold:
        // a fifth address now waits (a distributed attack), by one capped wait.
        for n in 2..=4 {
            drop(l.begin_login(Some("cy"), ip(n)).ok());
            drop(l.begin_login(Some("cy"), ip(n)).ok());
        }
        let held = l.begin_login(Some("cy"), ip(5)).err().map(wait_ms);
        // The wait started at the sixth failure, a moment ago.
        assert!(
            held.is_some_and(|ms| (900..=1000).contains(&ms)),
            "{held:?}"
        );
    }

    #[test]
    fn maps_stay_bounded_under_many_names_and_addresses() {
        let l = limits(5);
        for i in 0..(MAX_ENTRIES as u32 + 1000) {
            let name = format!("user{i}");
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(
                l.begin_login(Some(&name), addr)
                    .expect("first failure is free"),
            );
        }
        let (a, p, u) = l.sizes();
        assert!(
            a <= MAX_ENTRIES && p <= MAX_ENTRIES && u <= MAX_ENTRIES,
            "{a} {p} {u}"
        );
    }
}
