//! Runs actors against a target until the deadline, and records what happened.
//!
//! An actor is one client: a source address, a tag (legit or attack) and a script that
//! picks its next request. Each actor has at most one request in flight, like a real
//! trading client whose nonces must arrive in order; load comes from many actors.
//! - **Open loop** ([`Pace::Every`]): the actor's requests are due at fixed intervals
//!   from a random phase. When the actor is still waiting for its previous answer at a
//!   request's due time, that request's latency is measured from when it was *due*, so a
//!   slow server cannot hide its queueing by slowing the generator down (no coordinated
//!   omission); when the actor was idle, from when it actually went out (tokio's timer
//!   wakes up to a millisecond late, which is the generator's delay, not the server's).
//! - **Closed loop** ([`Pace::Max`]): the next request goes as soon as the previous
//!   answer arrived.
//!
//! Every request can be kept as a [`Sent`] record (for the ledger verdict); counts,
//! histograms and the timeline are always kept.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyguard_policy::{Action, DialectKind};
use serde::{Deserialize, Serialize};

use crate::client::{self, HttpClient, Outcome, Target};
use crate::stats::{Latency, Timeline};
use crate::workload::{self, Planned};

/// Which side a request is on, in the generator's own bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tag {
    /// A trader using their own key as intended.
    Legit,
    /// Anything an attacker sends.
    Attack,
}

impl Tag {
    /// `legit` or `attack`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tag::Legit => "legit",
            Tag::Attack => "attack",
        }
    }
}

/// How fast an actor sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Open loop: one request due every interval.
    Every(Duration),
    /// Closed loop: as fast as answers come back.
    Max,
}

impl Pace {
    /// Open loop at `per_second` requests per second (at least one per minute).
    pub fn rate(per_second: f64) -> Pace {
        let per_second = per_second.max(1.0 / 60.0);
        Pace::Every(Duration::from_secs_f64(1.0 / per_second))
    }
}

/// Picks an actor's next request; `None` ends the actor.
pub trait Script: Send {
    /// The next request.
    fn next(&mut self, rng: &mut fastrand::Rng) -> Option<Planned>;
}

/// Where an actor's connections come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Always this address (one keep-alive connection).
    Fixed(IpAddr),
    /// A new address (and so a new connection) every `per_address` requests, from
    /// `pool` — for floods of distinct client IPs.
    Rotating {
        /// Addresses to draw from.
        pool: Arc<AddressPool>,
        /// Requests per address.
        per_address: u32,
    },
}

/// A large range of loopback addresses handed out one by one (wrapping around).
#[derive(Debug)]
pub struct AddressPool {
    first: u32,
    len: u32,
    next: AtomicU64,
}

impl AddressPool {
    /// `len` addresses starting at `first` (IPv4).
    pub fn new(first: std::net::Ipv4Addr, len: u32) -> AddressPool {
        AddressPool {
            first: u32::from(first),
            len: len.max(1),
            next: AtomicU64::new(0),
        }
    }

    /// The next address.
    pub fn take(&self) -> IpAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        IpAddr::V4(std::net::Ipv4Addr::from(
            self.first + (i % u64::from(self.len)) as u32,
        ))
    }

    /// How many addresses were handed out (capped at the pool size: distinct ones).
    pub fn distinct_used(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(u64::from(self.len))
    }
}

/// One client of a scenario.
pub struct ActorSpec {
    /// What it is (`trader`, `zaif-attacker`, `stuffer`, `flooder`, `bench`, ...).
    pub role: &'static str,
    /// Legit or attack.
    pub tag: Tag,
    /// Its source address(es).
    pub source: Source,
    /// Open or closed loop.
    pub pace: Pace,
    /// Its requests.
    pub script: Box<dyn Script>,
    /// Counts towards [`Readiness`] once this many responses arrived (owners, whose first
    /// use of each key teaches the gateway their IP); 0: never.
    pub ready_after: usize,
    /// Waits for every actor that signals readiness before its first request (the
    /// attacker arrives after the owners have been using their keys).
    pub waits_ready: bool,
}

/// One request as sent, for the verdict.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Legit or attack.
    pub tag: Tag,
    /// The actor's role.
    pub role: &'static str,
    /// The action the request performs (what the exchange would do).
    pub action: Action,
    /// Index of the provisioned key it names (`None`: forged key or public).
    pub key: Option<usize>,
    /// Whether it carried a valid signature.
    pub valid_signature: bool,
    /// The source address.
    pub source: IpAddr,
    /// The ledger fingerprint ([`workload::fingerprint`]).
    pub fingerprint: [u8; 16],
    /// What came back.
    pub outcome: Outcome,
    /// Latency in µs.
    pub latency_us: u64,
    /// When it was signed and sent, µs after the run started.
    pub sent_at_us: u64,
    /// When its answer (or failure) came back, µs after the run started.
    pub answered_at_us: u64,
}

/// Counts for one group of requests (a tag or a role).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests completed (answered or failed).
    pub requests: u64,
    /// By status (`"200"`, `"403"`, ... and `"error:<why>"` for no response).
    pub statuses: BTreeMap<String, u64>,
    /// By Keyguard deny code.
    pub deny_codes: BTreeMap<String, u64>,
}

impl Counts {
    fn record(&mut self, outcome: &Outcome) {
        self.requests += 1;
        let status = match (outcome.status, outcome.error) {
            (Some(s), _) => s.to_string(),
            (None, Some(e)) => format!("error:{e}"),
            (None, None) => "error".to_owned(),
        };
        *self.statuses.entry(status).or_default() += 1;
        if let Some(code) = &outcome.code {
            *self.deny_codes.entry(code.clone()).or_default() += 1;
        }
    }

    /// Adds another group's counts.
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        for (k, v) in &other.statuses {
            *self.statuses.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.deny_codes {
            *self.deny_codes.entry(k.clone()).or_default() += v;
        }
    }

    /// Requests answered with a 2xx status.
    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| s.starts_with('2'))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Everything a run measured.
#[derive(Debug, Default)]
pub struct RunData {
    /// Every request (when records were kept), in no particular order.
    pub sent: Vec<Sent>,
    /// All latencies.
    pub latency: Latency,
    /// Latencies by tag.
    pub latency_by_tag: BTreeMap<Tag, Latency>,
    /// Counts by tag.
    pub by_tag: BTreeMap<Tag, Counts>,
    /// Counts by role.
    pub by_role: BTreeMap<String, Counts>,
    /// Per second.
    pub timeline: Timeline,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Open-loop requests that went out later than due because the actor was still
    /// waiting for its previous answer.
    pub late: u64,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The dialect the target speaks.
    pub dialect: DialectKind,
    /// Where to send.
    pub target: Target,
    /// More replicas of the same service: actor `i` sends to the `i mod (1 + n)`-th of
    /// `target` and these, as a load balancer with sticky connections would.
    pub spread: Vec<Target>,
    /// No new request starts after this.
    pub duration: Duration,
    /// Keep a [`Sent`] per request.
    pub keep_records: bool,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
    /// Seed for the actors' random choices.
    pub seed: u64,
}

impl RunOptions {
    /// The replica actor `i` sends to.
    pub fn target(&self, i: usize) -> &Target {
        match i % (1 + self.spread.len()) {
            0 => &self.target,
            n => &self.spread[n - 1],
        }
    }
}

/// Actors that signal readiness, counted.
#[derive(Debug, Default)]
struct Readiness {
    needed: usize,
    ready: AtomicUsize,
}

/// Runs `actors` against the target until `opts.duration` has passed and every request in
/// flight has been answered (or timed out).
pub async fn run(actors: Vec<ActorSpec>, opts: &RunOptions) -> RunData {
    let readiness = Arc::new(Readiness {
        needed: actors.iter().filter(|a| a.ready_after > 0).count(),
        ready: AtomicUsize::new(0),
    });
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + opts.duration;
    let progress = progress_bar(opts, &completed, start);
    let mut clients: HashMap<IpAddr, HttpClient> = HashMap::new();
    let mut tasks = Vec::with_capacity(actors.len());
    for (i, actor) in actors.into_iter().enumerate() {
        let client = match &actor.source {
            Source::Fixed(ip) => Some(
                clients
                    .entry(*ip)
                    .or_insert_with(|| client::client_from(Some(*ip)))
                    .clone(),
            ),
            Source::Rotating { .. } => None,
        };
        let ctx = ActorCtx {
            opts: opts.clone(),
            readiness: Arc::clone(&readiness),
            completed: Arc::clone(&completed),
            start,
            deadline,
            rng: fastrand::Rng::with_seed(opts.seed.wrapping_add(i as u64 * 0x9e37_79b9)),
            target: opts.target(i).clone(),
            base_url: opts.target(i).url(),
        };
        tasks.push(tokio::spawn(run_actor(actor, client, ctx)));
    }
    let mut data = RunData::default();
    for task in tasks {
        let Ok(actor) = task.await else { continue };
        data.sent.extend(actor.sent);
        data.latency.add(&actor.latency);
        for (tag, l) in &actor.latency_by_tag {
            data.latency_by_tag.entry(*tag).or_default().add(l);
        }
        for (tag, c) in &actor.by_tag {
            data.by_tag.entry(*tag).or_default().add(c);
        }
        data.by_role
            .entry(actor.role.to_owned())
            .or_default()
            .add(&actor.counts);
        data.timeline.add(&actor.timeline);
        data.late += actor.late;
    }
    data.elapsed = start.elapsed();
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }
    data
}

struct ActorCtx {
    opts: RunOptions,
    readiness: Arc<Readiness>,
    completed: Arc<AtomicU64>,
    start: Instant,
    deadline: Instant,
    rng: fastrand::Rng,
    /// This actor's replica.
    target: Target,
    /// Where requests go, for dialects that sign the full URL (Coincheck).
    base_url: String,
}

struct ActorResult {
    role: &'static str,
    sent: Vec<Sent>,
    latency: Latency,
    latency_by_tag: BTreeMap<Tag, Latency>,
    by_tag: BTreeMap<Tag, Counts>,
    counts: Counts,
    timeline: Timeline,
    late: u64,
}

async fn run_actor(
    mut actor: ActorSpec,
    fixed: Option<HttpClient>,
    mut ctx: ActorCtx,
) -> ActorResult {
    let mut result = ActorResult {
        role: actor.role,
        sent: Vec::new(),
        latency: Latency::default(),
        latency_by_tag: BTreeMap::new(),
        by_tag: BTreeMap::new(),
        counts: Counts::default(),
        timeline: Timeline::default(),
        late: 0,
    };
    if actor.waits_ready {
        // The attacker shows up once the owners have used their keys (bounded wait).
        let give_up = Instant::now() + Duration::from_secs(10);
        while ctx.readiness.ready.load(Ordering::Acquire) < ctx.readiness.needed
            && Instant::now() < give_up
            && Instant::now() < ctx.deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut due = match actor.pace {
        // A random phase spreads the actors' requests over the interval.
        Pace::Every(interval) => {
            Instant::now() + interval.mul_f64(ctx.rng.f64()).min(Duration::from_secs(1))
        }
        Pace::Max => Instant::now(),
    };
    let mut rotating: Option<(HttpClient, u32, IpAddr)> = None;
    let mut answered = 0usize;
    let mut signalled = actor.ready_after == 0;
    loop {
        if due >= ctx.deadline {
            break;
        }
        let Some(planned) = actor.script.next(&mut ctx.rng) else {
            break;
        };
        // When the request's latency starts counting (see the module docs).
        let start = if let Pace::Every(_) = actor.pace {
            let now = Instant::now();
            if now < due {
                tokio::time::sleep_until(due.into()).await;
                Instant::now()
            } else {
                if now > due + Duration::from_millis(1) {
                    result.late += 1;
                }
                due
            }
        } else {
            due = Instant::now();
            due
        };
        let client = match &actor.source {
            Source::Fixed(_) => fixed.clone().expect("fixed sources have a client"),
            Source::Rotating { pool, per_address } => {
                let fresh = !matches!(&rotating, Some((_, used, _)) if *used < *per_address);
                if fresh {
                    let ip = pool.take();
                    rotating = Some((client::client_from(Some(ip)), 0, ip));
                }
                let (c, used, _) = rotating.as_mut().expect("set above");
                *used += 1;
                c.clone()
            }
        };
        let sent_at = Instant::now();
        let request = workload::build(ctx.opts.dialect, &ctx.base_url, &planned, &mut ctx.rng);
        let outcome = client::send(&client, &ctx.target, &request).await;
        let done = Instant::now();
        let latency_us = done.saturating_duration_since(start).as_micros() as u64;
        ctx.completed.fetch_add(1, Ordering::Relaxed);
        if !signalled && outcome.status.is_some() {
            answered += 1;
            if answered >= actor.ready_after {
                signalled = true;
                ctx.readiness.ready.fetch_add(1, Ordering::Release);
            }
        }

        result.latency.record(latency_us);
        result
            .latency_by_tag
            .entry(actor.tag)
            .or_default()
            .record(latency_us);
        result.by_tag.entry(actor.tag).or_default().record(&outcome);
        result.counts.record(&outcome);
        let second = result
            .timeline
            .at(done.saturating_duration_since(ctx.start).as_secs() as usize);
        second.requests += 1;
        second.latency.record(latency_us);
        match outcome.status {
            Some(s) if (200..300).contains(&s) => second.ok += 1,
            Some(_) if outcome.code.is_some() => second.denied += 1,
            Some(_) => {}
            None => second.errors += 1,
        }
        if ctx.opts.keep_records {
            let auth = planned.auth.as_ref();
            result.sent.push(Sent {
                tag: actor.tag,
                role: actor.role,
                action: planned.op.action(),
                key: auth.and_then(|a| a.key()).map(|k| k.index),
                valid_signature: matches!(auth, Some(workload::Auth::Valid(_))),
                source: match (&actor.source, &rotating) {
                    (Source::Fixed(ip), _) => *ip,
                    (Source::Rotating { .. }, Some((_, _, ip))) => *ip,
                    (Source::Rotating { .. }, None) => IpAddr::from([0, 0, 0, 0]),
                },
                fingerprint: workload::fingerprint_of(&request),
                outcome,
                latency_us,
                sent_at_us: sent_at.saturating_duration_since(ctx.start).as_micros() as u64,
                answered_at_us: done.saturating_duration_since(ctx.start).as_micros() as u64,
            });
        }
        if let Pace::Every(interval) = actor.pace {
            due += interval;
        }
    }
    result
}

type Progress = (indicatif::ProgressBar, tokio::task::JoinHandle<()>);

/// A progress bar over the run's duration, on stderr, only when it is a terminal and the
/// run is longer than a few seconds.
fn progress_bar(opts: &RunOptions, completed: &Arc<AtomicU64>, start: Instant) -> Option<Progress> {
    if !opts.progress || opts.duration < Duration::from_secs(4) || !std::io::stderr().is_terminal()
    {
        return None;
    }
    let total = opts.duration.as_millis() as u64;
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {elapsed_precise}/{msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let ticker_bar = bar.clone();
    let completed = Arc::clone(completed);
    let duration = opts.duration;
    let ticker = tokio::spawn(async move {
        loop {
            let elapsed = start.elapsed();
            let done = completed.load(Ordering::Relaxed);
            ticker_bar.set_position((elapsed.as_millis() as u64).min(total));
            ticker_bar.set_message(format!(
                "{}s  {done} requests  {:.0} req/s",
                duration.as_secs(),
                done as f64 / elapsed.as_secs_f64().max(0.001)
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Some((bar, ticker))
}
