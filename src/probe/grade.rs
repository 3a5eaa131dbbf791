//! Grading: what the driver observed ([`Observations`]) in, a report card
//! ([`Card`]: checks graded pass / warn / fail with one line of evidence
//! each, and a verdict) out. Pure: no I/O, no clock (the date the ePIDs
//! are judged against is part of the observations), so every rule is unit
//! tested on hand-made observations.

use crate::protocol::guid::Guid;
use crate::protocol::kms::products::{self, Date, Pool};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

pub use crate::protocol::kms::INTERVAL_RANGE;
/// The highest count a real host reports for a pool: twice the highest
/// threshold (25 for Windows client editions, 5 for servers and Office).
pub const MAX_WINDOWS_COUNT: u32 = 50;
/// The highest count a real host reports for an Office pool.
pub const MAX_OFFICE_COUNT: u32 = 10;
/// An exchange slower than this is worth a warning (ms).
pub const SLOW_MS: f64 = 1000.0;

/// How the error of a response that failed verification begins.
pub const VERIFY_FAILED: &str = "response failed verification";

/// What the host sent back for one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A response that passed every client check.
    Answer(Answered),
    /// The error stub with this HRESULT.
    Hresult { hresult: u32 },
    /// An RPC fault with this status.
    Fault { status: u32 },
    /// Anything else: a response that failed verification, a malformed
    /// reply, a timeout, a closed connection. `emulator` marks a failure
    /// only emulators produce (the v6 response IV equal to the request's).
    Error { error: String, emulator: bool },
}

impl Seen {
    pub fn error(e: impl fmt::Display) -> Self {
        Self::Error {
            error: e.to_string(),
            emulator: false,
        }
    }

    /// Whether the host replied with a KMS response or a refusal (a
    /// response failing verification included): the RPC layer worked,
    /// whatever the KMS layer's grade.
    pub fn is_reply(&self) -> bool {
        match self {
            Self::Error { error, .. } => error.starts_with(VERIFY_FAILED),
            _ => true,
        }
    }

    pub fn answer(&self) -> Option<&Answered> {
        match self {
            Self::Answer(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Answer(a) => write!(f, "a verified answer (count {})", a.count),
            Self::Hresult { hresult } => write!(f, "error {hresult:#010X}"),
            Self::Fault { status } => write!(f, "RPC fault {status:#010x}"),
            Self::Error { error, .. } => f.write_str(error),
        }
    }
}

/// A verified KMS response, as the card needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub version: u16,
    /// NDR32 or NDR64.
    pub syntax: &'static str,
    pub epid: String,
    /// Protocol 6 only, as hex.
    pub hwid: Option<String>,
    pub count: u32,
    pub activation_interval: u32,
    pub renewal_interval: u32,
}

/// One activation request and what came back.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSeen {
    /// e.g. "v6 Windows Server 2022 Datacenter".
    pub what: String,
    /// KMS counted ID asked for.
    pub kms_id: Guid,
    pub version: u16,
    pub seen: Seen,
    pub ms: f64,
}

/// A bind and what it negotiated.
#[derive(Debug, Clone, PartialEq)]
pub struct BindSeen {
    /// "NDR32 only" or "NDR32 + NDR64 + BTFN".
    pub offer: &'static str,
    pub result: Result<Negotiated, String>,
    pub ms: f64,
}

/// The contexts a bind left the client with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Syntax of the first request.
    pub first: &'static str,
    /// Syntax of the requests after it.
    pub rest: &'static str,
    /// The host accepted NDR64 alone and an alter_context got NDR32.
    pub alter_context: bool,
}

/// A call the host must refuse, with what it should answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusalSeen {
    /// e.g. "unsupported version 7.0".
    pub what: String,
    /// The HRESULT (or fault status) a Windows host sends.
    pub expected: u32,
    /// Whether `expected` is an RPC fault status rather than an HRESULT.
    pub fault: bool,
    pub seen: Seen,
    pub ms: f64,
}

/// One request of the counting check.
#[derive(Debug, Clone, PartialEq)]
pub struct CountSeen {
    pub pool: Pool,
    /// A machine ID the host has not seen (else a repeat of the first).
    pub fresh: bool,
    /// The threshold sent.
    pub n_policy: u32,
    pub seen: Seen,
    pub ms: f64,
}

/// Everything the driver saw of one host.
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    /// The host as named (HOST:PORT, or the SRV target).
    pub target: String,
    pub addr: Option<SocketAddr>,
    /// Time to connect (ms), or why it failed.
    pub connect: Result<f64, String>,
    pub binds: Vec<BindSeen>,
    /// An alter_context adding a context, then a request on it.
    pub alter_context: Option<Result<String, String>>,
    /// Requests answered on the first connection, and how many were sent.
    pub per_connection: Option<(u32, u32)>,
    /// Wrong opnum and unknown context.
    pub faults: Vec<RefusalSeen>,
    /// A request after the faults, on the same connection.
    pub after_faults: Option<Seen>,
    /// The activations of the battery (versions, products, repeats).
    pub exchanges: Vec<ExchangeSeen>,
    /// Unsupported version, unknown and retail products.
    pub refusals: Vec<RefusalSeen>,
    /// `--count-check` only.
    pub counting: Option<Vec<CountSeen>>,
    /// The day the ePID dates are judged against.
    pub today: Date,
}

impl Observations {
    /// Observations of a host not reached.
    pub fn unreachable(target: String, addr: Option<SocketAddr>, why: String, today: Date) -> Self {
        Self {
            target,
            addr,
            connect: Err(why),
            binds: Vec::new(),
            alter_context: None,
            per_connection: None,
            faults: Vec::new(),
            after_faults: None,
            exchanges: Vec::new(),
            refusals: Vec::new(),
            counting: None,
            today,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pass => "pass",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        })
    }
}

/// One graded check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub grade: Grade,
    pub evidence: String,
    /// A failure that marks an emulator rather than a misconfigured host.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub emulator: bool,
}

impl Check {
    fn new(name: impl Into<String>, grade: Grade, evidence: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            grade,
            evidence: evidence.into(),
            emulator: false,
        }
    }
    fn pass(name: impl Into<String>, evidence: impl Into<String>) -> Self {
        Self::new(name, Grade::Pass, evidence)
    }
    fn warn(name: impl Into<String>, evidence: impl Into<String>) -> Self {
        Self::new(name, Grade::Warn, evidence)
    }
    fn fail(name: impl Into<String>, evidence: impl Into<String>) -> Self {
        Self::new(name, Grade::Fail, evidence)
    }
    fn emulator(mut self) -> Self {
        self.emulator = true;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Conforms,
    DoesNotConform,
    Emulator,
    Unreachable,
}

impl Verdict {
    /// 0 conforms, 1 does not (or an emulator), 2 not reached.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Conforms => 0,
            Self::DoesNotConform | Self::Emulator => 1,
            Self::Unreachable => 2,
        }
    }
}

/// The exit code of a run over several hosts: the worst of theirs
/// (unreachable over non-conforming over conforming); 0 for none.
pub fn exit_code(cards: &[Card]) -> i32 {
    cards
        .iter()
        .map(|c| c.verdict.exit_code())
        .max()
        .unwrap_or(0)
}

/// The report card of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Card {
    pub target: String,
    pub addr: Option<SocketAddr>,
    pub checks: Vec<Check>,
    pub verdict: Verdict,
    /// The verdict in words.
    pub summary: String,
    pub exit_code: i32,
}

impl Card {
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(a) if a.to_string() != self.target => {
                writeln!(f, "KMS host {} ({a})", self.target)?
            }
            _ => writeln!(f, "KMS host {}", self.target)?,
        }
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            writeln!(f, "  {:<4}  {:<width$}  {}", c.grade, c.name, c.evidence)?;
        }
        write!(f, "  verdict: {}", self.summary)
    }
}

/// Grades everything observed of one host.
pub fn grade(o: &Observations) -> Card {
    let mut checks = Vec::new();
    match &o.connect {
        Ok(ms) => checks.push(Check::pass(
            "connect",
            format!("TCP connected in {ms:.1} ms"),
        )),
        Err(e) => {
            checks.push(Check::fail("connect", e.clone()));
            return finish(o, checks);
        }
    }
    checks.extend(binds(o));
    if let Some(a) = &o.alter_context {
        checks.push(match a {
            Ok(ev) => Check::pass("alter_context", ev.clone()),
            Err(e) => Check::fail("alter_context", e.clone()),
        });
    }
    if let Some((answered, sent)) = o.per_connection {
        checks.push(if answered == sent && sent > 1 {
            Check::pass(
                "requests per connection",
                format!("{answered} requests replied to on one connection"),
            )
        } else {
            Check::fail(
                "requests per connection",
                format!("{answered} of {sent} requests on one connection replied to"),
            )
        });
    }
    for f in &o.faults {
        checks.push(expect_refusal(&format!("fault: {}", f.what), f));
    }
    if let Some(s) = &o.after_faults {
        checks.push(match s {
            s if s.is_reply() => Check::pass(
                "connection survives faults",
                "a request after the faults was answered on the same connection",
            ),
            other => Check::warn(
                "connection survives faults",
                format!("after the faults: {other} (a Windows host keeps the connection)"),
            ),
        });
    }
    for x in &o.exchanges {
        checks.push(exchange(x));
    }
    for r in &o.refusals {
        checks.push(expect_refusal(&format!("refuses {}", r.what), r));
    }
    let answers: Vec<(&ExchangeSeen, &Answered)> = o
        .exchanges
        .iter()
        .filter_map(|x| x.seen.answer().map(|a| (x, a)))
        .collect();
    if !answers.is_empty() {
        checks.extend(epid::checks(&answers, o.today));
        checks.push(hwid(&answers));
        checks.push(intervals(&answers));
        checks.push(counts(&answers));
        checks.push(Check::pass(
            "client time echoed",
            format!(
                "{} answers echo the request's client time and machine ID",
                answers.len()
            ),
        ));
    }
    if let Some(steps) = &o.counting {
        checks.push(counting(steps));
    }
    checks.push(latency(o));
    finish(o, checks)
}

fn finish(o: &Observations, checks: Vec<Check>) -> Card {
    let fails: Vec<&Check> = checks.iter().filter(|c| c.grade == Grade::Fail).collect();
    let warns = checks.iter().filter(|c| c.grade == Grade::Warn).count();
    let (verdict, summary) = if o.connect.is_err() {
        (
            Verdict::Unreachable,
            "UNREACHABLE: the host could not be reached".to_owned(),
        )
    } else if fails.iter().any(|c| c.emulator) {
        let why: Vec<&str> = fails
            .iter()
            .filter(|c| c.emulator)
            .map(|c| c.name.as_str())
            .collect();
        (
            Verdict::Emulator,
            format!(
                "LOOKS LIKE AN EMULATOR: {} of {} checks failed, the signs in {}",
                fails.len(),
                checks.len(),
                why.join(", ")
            ),
        )
    } else if !fails.is_empty() {
        let names: Vec<&str> = fails.iter().map(|c| c.name.as_str()).collect();
        (
            Verdict::DoesNotConform,
            format!(
                "DOES NOT CONFORM: {} failed ({})",
                fails.len(),
                names.join(", ")
            ),
        )
    } else {
        let counted = if o.counting.is_some() {
            ""
        } else {
            "; counting not checked (--count-check)"
        };
        (
            Verdict::Conforms,
            format!(
                "CONFORMS: behaves like a Windows KMS host ({warns} warning{}{counted})",
                if warns == 1 { "" } else { "s" }
            ),
        )
    };
    Card {
        target: o.target.clone(),
        addr: o.addr,
        checks,
        exit_code: verdict.exit_code(),
        verdict,
        summary,
    }
}

fn binds(o: &Observations) -> Vec<Check> {
    o.binds
        .iter()
        .map(|b| {
            let name = format!("bind {}", b.offer);
            match &b.result {
                Err(e) => Check::fail(name, e.clone()),
                Ok(n) if b.offer.contains("NDR64") => {
                    if n.rest != "NDR64" {
                        Check::warn(
                            name,
                            format!(
                                "only {} accepted (a host on Windows Server 2012 or later accepts NDR64)",
                                n.rest
                            ),
                        )
                    } else if n.alter_context {
                        Check::pass(
                            name,
                            "NDR64 preferred; alter_context gave NDR32 for the first request, NDR64 after (as Windows hosts do)",
                        )
                    } else {
                        Check::pass(
                            name,
                            format!("{} for the first request, NDR64 after", n.first),
                        )
                    }
                }
                Ok(n) if n.first == "NDR32" => Check::pass(name, "NDR32 accepted"),
                Ok(n) => Check::fail(name, format!("{} negotiated though only NDR32 was offered", n.first)),
            }
        })
        .collect()
}

fn expect_refusal(name: &str, r: &RefusalSeen) -> Check {
    let want = if r.fault {
        Seen::Fault { status: r.expected }
    } else {
        Seen::Hresult {
            hresult: r.expected,
        }
    };
    if r.seen == want {
        return Check::pass(name, format!("{want}"));
    }
    let check = Check::fail(name, format!("{} instead of {want}", r.seen));
    // Emulators answer whatever they are asked for.
    if !r.fault && matches!(r.seen, Seen::Answer(_)) {
        check.emulator()
    } else {
        check
    }
}

fn integrity(version: u16) -> &'static str {
    match version {
        4 => "CBC-MAC",
        5 => "SHA-256 hash",
        _ => "HMAC-SHA256",
    }
}

fn exchange(x: &ExchangeSeen) -> Check {
    match &x.seen {
        Seen::Answer(a) => Check::pass(
            x.what.clone(),
            format!(
                "verified ({}, {}), count {}, {:.1} ms",
                integrity(x.version),
                a.syntax,
                a.count,
                x.ms
            ),
        ),
        Seen::Error { error, emulator } => {
            let c = Check::fail(x.what.clone(), error.clone());
            if *emulator { c.emulator() } else { c }
        }
        other => Check::fail(x.what.clone(), format!("{other} instead of an answer")),
    }
}

fn hwid(answers: &[(&ExchangeSeen, &Answered)]) -> Check {
    let v6: Vec<&Answered> = answers
        .iter()
        .filter(|(x, _)| x.version == 6)
        .map(|(_, a)| *a)
        .collect();
    if v6.is_empty() {
        return Check::warn("HwId (v6)", "no protocol 6 answer to look at");
    }
    let mut ids: Vec<&str> = v6.iter().filter_map(|a| a.hwid.as_deref()).collect();
    if ids.len() != v6.len() {
        return Check::fail("HwId (v6)", "a protocol 6 answer without a HwId");
    }
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [one] if one.bytes().all(|b| b == b'0') => Check::warn(
            "HwId (v6)",
            "all zero (a Windows host sends its hardware hash)",
        ),
        [one] => Check::pass(
            "HwId (v6)",
            format!("{one}, the same in {} answers", v6.len()),
        ),
        many => Check::fail(
            "HwId (v6)",
            format!("{} different HwIds from one host", many.len()),
        ),
    }
}

fn intervals(answers: &[(&ExchangeSeen, &Answered)]) -> Check {
    let bad: Vec<String> = answers
        .iter()
        .filter(|(_, a)| {
            !INTERVAL_RANGE.contains(&a.activation_interval)
                || !INTERVAL_RANGE.contains(&a.renewal_interval)
        })
        .map(|(x, a)| {
            format!(
                "{}: activation {} min, renewal {} min",
                x.what, a.activation_interval, a.renewal_interval
            )
        })
        .collect();
    if !bad.is_empty() {
        return Check::fail(
            "intervals",
            format!(
                "outside the {}..={} minutes Windows accepts: {}",
                INTERVAL_RANGE.start(),
                INTERVAL_RANGE.end(),
                bad.join("; ")
            ),
        );
    }
    let mut seen: Vec<(u32, u32)> = answers
        .iter()
        .map(|(_, a)| (a.activation_interval, a.renewal_interval))
        .collect();
    seen.sort_unstable();
    seen.dedup();
    let list: Vec<String> = seen
        .iter()
        .map(|(a, r)| format!("activation {a} min, renewal {r} min"))
        .collect();
    Check::pass("intervals", list.join("; "))
}

fn pool_max(pool: Pool) -> u32 {
    match pool {
        Pool::Windows => MAX_WINDOWS_COUNT,
        Pool::Office2010 | Pool::Office2013Plus => MAX_OFFICE_COUNT,
    }
}

/// Counts a real host can report: at least 1 (the client itself), at most
/// twice the highest threshold of the pool; and the same machine asking
/// again in the same pool keeps its count (other clients aside).
fn counts(answers: &[(&ExchangeSeen, &Answered)]) -> Check {
    for (x, a) in answers {
        let Some(g) = products::kms_group(&x.kms_id) else {
            continue;
        };
        let max = pool_max(g.pool);
        if a.count > max {
            return Check::fail(
                "count plausible",
                format!(
                    "count {} for {}: a real host's {} pool never reports more than {max}",
                    a.count, x.what, g.pool
                ),
            )
            .emulator();
        }
        if a.count == 0 {
            return Check::warn(
                "count plausible",
                format!("count 0 for {} (a host counts the client itself)", x.what),
            );
        }
    }
    let mut by_pool: BTreeMap<Pool, Vec<u32>> = BTreeMap::new();
    for (x, a) in answers {
        if let Some(g) = products::kms_group(&x.kms_id) {
            by_pool.entry(g.pool).or_default().push(a.count);
        }
    }
    let mut parts = Vec::new();
    for (pool, c) in &by_pool {
        if c.windows(2).any(|w| w[1] < w[0]) {
            return Check::warn(
                "count plausible",
                format!("{pool}: the same machine's count fell: {c:?}"),
            );
        }
        parts.push(format!("{pool} {}", c.first().copied().unwrap_or(0)));
    }
    Check::pass(
        "count plausible",
        format!(
            "{} (the probe's one machine kept its count)",
            parts.join(", ")
        ),
    )
}

/// The counting check: fresh machines raise the count by one each below
/// the pool's capacity; a repeat does not.
fn counting(steps: &[CountSeen]) -> Check {
    const NAME: &str = "counting";
    let mut pools: Vec<Pool> = steps.iter().map(|s| s.pool).collect();
    pools.dedup();
    let mut evidence = Vec::new();
    let mut worst = Grade::Pass;
    let mut emulator = false;
    for pool in pools {
        let mine: Vec<&CountSeen> = steps.iter().filter(|s| s.pool == pool).collect();
        let mut counts = Vec::with_capacity(mine.len());
        for s in &mine {
            match &s.seen {
                Seen::Answer(a) => counts.push(a.count),
                other => {
                    return Check::fail(NAME, format!("{pool}: a request failed: {other}"));
                }
            }
        }
        let fresh = mine.iter().filter(|s| s.fresh).count();
        let (grade, text, emu) = count_sequence(pool, &mine, &counts);
        worst = worst.max(grade);
        emulator |= emu;
        evidence.push(format!("{pool} ({fresh} new machines): {text}"));
    }
    let mut c = Check::new(NAME, worst, evidence.join("; "));
    c.emulator = emulator && worst == Grade::Fail;
    c
}

fn count_sequence(pool: Pool, steps: &[&CountSeen], counts: &[u32]) -> (Grade, String, bool) {
    let list = counts
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" → ");
    let (Some(&first), Some(&last)) = (counts.first(), counts.last()) else {
        return (Grade::Warn, "no requests".into(), false);
    };
    if counts.len() > 2 && counts.iter().all(|&c| c == first) {
        // A full pool stays at its capacity too; anything else is a
        // host that answers one number to everyone.
        let capacity = match pool {
            Pool::Windows => first == 10 || first == MAX_WINDOWS_COUNT,
            _ => first == MAX_OFFICE_COUNT,
        };
        return if capacity {
            (
                Grade::Warn,
                format!(
                    "stayed at {first}: the pool is full (capacity {first}) or the host does not count clients"
                ),
                false,
            )
        } else {
            (
                Grade::Fail,
                format!("does not count clients (fixed count {first})"),
                true,
            )
        };
    }
    let mut n_max = 0;
    let mut warn = None;
    for (i, w) in counts.windows(2).enumerate() {
        let (prev, cur) = (w[0], w[1]);
        let Some(s) = steps.get(i + 1) else { break };
        n_max = n_max.max(s.n_policy);
        if let Some(first) = steps.first() {
            n_max = n_max.max(first.n_policy);
        }
        let at_capacity = prev == 2 * n_max || prev == MAX_WINDOWS_COUNT;
        let ok = if s.fresh {
            cur == prev + 1 || (cur == prev && at_capacity)
        } else {
            cur == prev
        };
        if ok {
            continue;
        }
        if cur == 2 * s.n_policy && cur != prev + 1 {
            return (
                Grade::Fail,
                format!(
                    "does not count clients: the count follows the threshold asked (2 × {} = {cur}): {list}",
                    s.n_policy
                ),
                true,
            );
        }
        if cur < prev || !s.fresh && cur != prev && cur == first {
            return (
                Grade::Fail,
                format!(
                    "count went {prev} → {cur} for {}: {list}",
                    if s.fresh { "a new machine" } else { "a repeat" }
                ),
                false,
            );
        }
        // Rising more than expected: other clients may have asked meanwhile.
        warn.get_or_insert(format!(
            "count went {prev} → {cur} for {} (other clients meanwhile?): {list}",
            if s.fresh { "a new machine" } else { "a repeat" }
        ));
    }
    match warn {
        Some(w) => (Grade::Warn, w, false),
        None => (
            Grade::Pass,
            format!("counts {list}: +1 per new machine, a repeat kept {last}"),
            false,
        ),
    }
}

fn latency(o: &Observations) -> Check {
    let mut ms: Vec<f64> = o
        .binds
        .iter()
        .map(|b| b.ms)
        .chain(o.exchanges.iter().map(|x| x.ms))
        .chain(o.refusals.iter().map(|r| r.ms))
        .chain(o.faults.iter().map(|r| r.ms))
        .chain(o.counting.iter().flatten().map(|c| c.ms))
        .filter(|m| *m > 0.0)
        .collect();
    if ms.is_empty() {
        return Check::warn("latency", "no exchange completed");
    }
    ms.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
    let max = ms.last().copied().unwrap_or(0.0);
    let text = format!(
        "{} exchanges: median {median:.1} ms, max {max:.1} ms",
        ms.len()
    );
    if max > SLOW_MS {
        Check::warn("latency", text)
    } else {
        Check::pass("latency", text)
    }
}

mod epid;
#[cfg(test)]
mod tests;
