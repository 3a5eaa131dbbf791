//! The exchanges of `kmsd probe`: a fixed, bounded battery of connections
//! and calls against one host, each wait bounded by the timeout, recorded
//! as [`Observations`] for [`super::grade`]. Binds and activation requests
//! go through the sans-IO client core ([`crate::protocol::client`]); the
//! calls a client never makes (a wrong opnum, an unknown context, an
//! alter_context adding a context, an unsupported version) are built with
//! the core's own encoders.

use super::grade::{
    Answered, BindSeen, CountSeen, ExchangeSeen, Negotiated, Observations, RefusalSeen, Seen,
    VERIFY_FAILED,
};
use crate::client::{ProductRequest, filetime_now};
use crate::codec::RpcPduCodec;
use crate::protocol::client::{AfterBind, BIND_CALL_ID, Binding, Bound, Offer, reply_header};
use crate::protocol::guid::Guid;
use crate::protocol::hex;
use crate::protocol::kms::products::{self, Date, Pool, Sku};
use crate::protocol::kms::{
    self, RequestBase, SentRequest, VerifiedResponse, VerifyError, Version, hresult,
};
use crate::protocol::rpc::bind::{check_ack, encode_bind};
use crate::protocol::rpc::pdu::{MAX_PDU_LEN, flags, ptype};
use crate::protocol::rpc::request::{self as rpc_request, Reply};
use crate::protocol::rpc::{Syntax, status};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// The machine ID of the battery's own requests: one fixed machine, so a
/// probe adds at most one machine to a pool, and probing again only renews
/// it. (`--count-check` adds fresh ones.)
pub const PROBE_CMID: Guid = Guid::from_u128(0x6b6d7364_7072_4f62_a500_000000000001);
/// The workstation name the probe sends.
pub const WORKSTATION: &str = "kmsd-probe";
/// The Windows product of the battery (threshold 5, so a real host's
/// Windows pool capacity is not raised by it).
pub const WINDOWS_PRODUCT: &str = "Windows Server 2022 Datacenter";
/// The Office product of the battery.
pub const OFFICE_PRODUCT: &str = "Office LTSC Professional Plus 2021";
/// A Windows client edition (threshold 25), asked by the counting check.
pub const CLIENT_PRODUCT: &str = "Windows 10/11 Enterprise";
/// A KMS counted ID no catalog has.
pub const UNKNOWN_KMS_ID: Guid = Guid::from_u128(0x6b6d7364_0000_4000_8000_756e6b6e6f77);
/// New machines per pool the counting check sends (plus one client
/// edition in the Windows pool).
pub const COUNT_MACHINES: usize = 3;
/// The call ids of PDUs the probe builds itself (well above the core's).
const RAW_CALL_ID: u32 = 1000;
/// The context id nobody negotiated.
const UNKNOWN_CONTEXT: u16 = 9;

/// How the battery runs.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Bound on each wait (connect, each reply).
    pub timeout: Duration,
    /// Run the counting check (adds machines to the target's pools).
    pub count_check: bool,
    /// The day ePID dates are judged against.
    pub today: Date,
}

impl ProbeOptions {
    pub fn new(timeout: Duration, count_check: bool) -> Self {
        let days = crate::store::unix_ms_now().div_euclid(86_400_000);
        Self {
            timeout,
            count_check,
            today: Date::from_days_since_unix_epoch(days),
        }
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// One TCP connection carrying whole PDUs, each reply awaited within the
/// timeout.
struct Wire {
    framed: Framed<TcpStream, RpcPduCodec>,
    timeout: Duration,
    next_raw: u32,
}

impl Wire {
    async fn open(addr: SocketAddr, timeout: Duration) -> Result<(Self, f64), String> {
        let t = Instant::now();
        let stream = crate::client::connect(addr, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let framed = Framed::new(stream, RpcPduCodec::new(MAX_PDU_LEN));
        Ok((
            Self {
                framed,
                timeout,
                next_raw: RAW_CALL_ID,
            },
            ms(t),
        ))
    }

    /// Sends `pdu` and reads one reply.
    async fn call(&mut self, pdu: &[u8]) -> Result<bytes::Bytes, String> {
        self.framed
            .send(pdu)
            .await
            .map_err(|e| format!("send failed: {e}"))?;
        match tokio::time::timeout(self.timeout, self.framed.next()).await {
            Err(_) => Err(format!("no reply within {:?}", self.timeout)),
            Ok(None) => Err("the host closed the connection".into()),
            Ok(Some(Err(e))) => Err(format!("unreadable reply: {e}")),
            Ok(Some(Ok(p))) => Ok(p.into_bytes()),
        }
    }

    fn raw_call_id(&mut self) -> u32 {
        self.next_raw += 1;
        self.next_raw
    }

    /// Binds as `offer` asks (with the alter_context the core asks for).
    async fn bind(&mut self, offer: Offer) -> Result<(Bound, Negotiated), String> {
        let binding = Binding::new(offer, BIND_CALL_ID);
        let mut out = Vec::new();
        binding.encode(&mut out);
        let ack = self.call(&out).await?;
        let (bound, alter) = match binding.on_bind_ack(&ack).map_err(|e| e.to_string())? {
            AfterBind::Bound(b) => (b, false),
            AfterBind::AlterContext(a) => {
                out.clear();
                a.encode(&mut out);
                let resp = self.call(&out).await?;
                (a.on_response(&resp).map_err(|e| e.to_string())?, true)
            }
        };
        let (first, rest) = bound.contexts();
        Ok((
            bound,
            Negotiated {
                first: first.syntax.name(),
                rest: rest.syntax.name(),
                alter_context: alter,
            },
        ))
    }

    /// One activation through the core; `Seen` and its latency.
    async fn activate(&mut self, bound: &mut Bound, base: &RequestBase) -> (Seen, f64) {
        let mut out = Vec::new();
        let pending = bound.request(base, iv(), &mut out);
        let t = Instant::now();
        let reply = match self.call(&out).await {
            Ok(r) => r,
            Err(e) => return (Seen::error(e), ms(t)),
        };
        let took = ms(t);
        let seen = match pending.on_reply(&reply) {
            Ok(x) => Seen::Answer(answered(&x.response, x.syntax)),
            Err(crate::protocol::client::ReplyError::Hresult(h)) => Seen::Hresult { hresult: h },
            Err(crate::protocol::client::ReplyError::Fault(s)) => Seen::Fault { status: s },
            Err(crate::protocol::client::ReplyError::Verify(v)) => verify_failed(&v),
            Err(e) => Seen::error(e),
        };
        (seen, took)
    }

    /// A request PDU built here: `kms` on `context` in `syntax` with
    /// `opnum`; a KMS answer is verified against `sent` when given.
    async fn raw(
        &mut self,
        context: u16,
        opnum: u16,
        syntax: Syntax,
        kms: &[u8],
        sent: Option<&SentRequest>,
    ) -> (Seen, f64) {
        let call_id = self.raw_call_id();
        let mut out = Vec::new();
        rpc_request::encode_call(call_id, context, opnum, syntax, kms, &mut out);
        let t = Instant::now();
        let reply = match self.call(&out).await {
            Ok(r) => r,
            Err(e) => return (Seen::error(e), ms(t)),
        };
        let took = ms(t);
        (decode_raw(&reply, call_id, syntax, sent), took)
    }

    /// An alter_context adding NDR32 as `context`, then a request on it.
    async fn alter_context(&mut self, context: u16, base: &RequestBase) -> Result<String, String> {
        let call_id = self.raw_call_id();
        let mut out = Vec::new();
        let item = (
            context,
            *Syntax::Ndr32.guid().as_bytes(),
            Syntax::Ndr32.version(),
        );
        encode_bind(
            ptype::ALTER_CONTEXT,
            flags::FIRST_LAST,
            call_id,
            &[item],
            &mut out,
        );
        let resp = self.call(&out).await?;
        let h = reply_header(&resp).map_err(|e| e.to_string())?;
        let mut results = Vec::new();
        check_ack(
            h,
            &resp,
            ptype::ALTER_CONTEXT_RESP,
            call_id,
            1,
            &mut results,
        )
        .map_err(|e| format!("alter_context_resp: {e}"))?;
        match results.first() {
            Some(&(0, _, g, v)) if g == *Syntax::Ndr32.guid().as_bytes() && v == 2 => {}
            Some(&(result, reason, ..)) => {
                return Err(format!(
                    "context {context} not accepted (result {result}, reason {reason})"
                ));
            }
            None => return Err("no result in the alter_context_resp".into()),
        }
        let (kms_bytes, sent) = kms::encode_request(base, iv());
        match self
            .raw(context, 0, Syntax::Ndr32, &kms_bytes, Some(&sent))
            .await
            .0
        {
            Seen::Answer(_) => Ok(format!(
                "context {context} (NDR32) added to the association and a request on it answered"
            )),
            s if s.is_reply() => Ok(format!(
                "context {context} (NDR32) added and a request on it replied to ({s})"
            )),
            other => Err(format!(
                "context {context} accepted, but a request on it got {other}"
            )),
        }
    }
}

fn iv() -> [u8; 16] {
    let mut iv = [0u8; 16];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut iv);
    iv
}

fn answered(r: &VerifiedResponse, syntax: Syntax) -> Answered {
    Answered {
        version: r.version.major(),
        syntax: syntax.name(),
        epid: r.epid.clone(),
        hwid: r.hwid.map(|h| hex::upper(&h)),
        count: r.count,
        activation_interval: r.activation_interval,
        renewal_interval: r.renewal_interval,
    }
}

fn verify_failed(v: &VerifyError) -> Seen {
    Seen::Error {
        error: format!("{VERIFY_FAILED}: {v}"),
        emulator: *v == VerifyError::EmulatorIv,
    }
}

/// A reply to a PDU built here: framing, call_id echo, then fault, error
/// stub or (verified when `sent` is given) KMS response.
fn decode_raw(reply: &[u8], call_id: u32, syntax: Syntax, sent: Option<&SentRequest>) -> Seen {
    let h = match reply_header(reply) {
        Ok(h) => h,
        Err(e) => return Seen::error(format!("malformed reply: {e}")),
    };
    if h.call_id != call_id {
        return Seen::error(format!("reply call_id {} for call {call_id}", h.call_id));
    }
    match rpc_request::decode_reply(h, reply, syntax) {
        Err(e) => Seen::error(format!("malformed reply: {e}")),
        Ok(Reply::Fault(s)) => Seen::Fault { status: s },
        Ok(Reply::Hresult(hr)) => Seen::Hresult { hresult: hr },
        Ok(Reply::Kms(bytes)) => match sent {
            Some(sent) => match kms::verify_response(sent, bytes) {
                Ok(r) => Seen::Answer(answered(&r, syntax)),
                Err(v) => verify_failed(&v),
            },
            None => Seen::error(format!("a KMS response of {} bytes", bytes.len())),
        },
    }
}

/// The request a client of `sku` sends in `version` as machine `cmid`,
/// now: the catalog's threshold for the product (5 for the battery's
/// Windows Server and Office products, so a real host's pool capacity is
/// not raised by the probe).
fn base(sku: &'static Sku, version: Version, cmid: Guid) -> RequestBase {
    let request = ProductRequest::new(sku).version(version);
    // WORKSTATION is a constant short enough to encode (tested).
    let request = request.workstation(WORKSTATION).unwrap_or(request);
    request.base(cmid, filetime_now())
}

fn sku(name: &str) -> &'static Sku {
    // The names are constants of this module, tested to be in the catalog.
    products::find_sku(name)
        .ok()
        .or_else(|| products::skus().first())
        .unwrap_or_else(|| unreachable!("the catalog is not empty"))
}

/// A retail product group and one of its SKUs, from the catalog.
fn retail() -> Option<(&'static products::KmsGroup, Guid)> {
    let g = products::kms_groups()
        .iter()
        .find(|g| g.is_retail && g.pool == Pool::Windows)?;
    let sku = products::skus().iter().find(|s| s.kms_id == g.id).map_or(
        Guid::from_u128(0x6b6d7364_0000_4000_8000_72657461696c),
        |s| s.id,
    );
    Some((g, sku))
}

/// The bind of connection A, as the card names it.
const NDR32_OFFER: &str = "NDR32 only";
/// The bind of connection B (and Windows), as the card names it.
const WINDOWS_OFFER: &str = "NDR32 + NDR64 + BTFN";

/// Runs the battery against `addr` (named `target` on the card).
pub async fn probe(target: String, addr: SocketAddr, opts: &ProbeOptions) -> Observations {
    let timeout = opts.timeout;
    let (mut a, connect_ms) = match Wire::open(addr, timeout).await {
        Ok(w) => w,
        Err(e) => return Observations::unreachable(target, Some(addr), e, opts.today),
    };
    let mut o = Observations::unreachable(target, Some(addr), String::new(), opts.today);
    o.connect = Ok(connect_ms);
    ndr32_battery(&mut a, &mut o).await;
    let _ = a.framed.close().await;
    match Wire::open(addr, timeout).await {
        Ok((mut b, _)) => {
            windows_battery(&mut b, &mut o).await;
            let _ = b.framed.close().await;
        }
        Err(e) => {
            o.binds.push(BindSeen {
                offer: WINDOWS_OFFER,
                result: Err(e),
                ms: 0.0,
            });
            return o;
        }
    }
    if opts.count_check {
        o.counting = Some(count_check(addr, timeout).await);
    }
    o
}

/// Binds offering `offer` (named `name` on the card) and records it; the
/// bound state when the bind worked.
async fn bind_seen(
    w: &mut Wire,
    o: &mut Observations,
    offer: Offer,
    name: &'static str,
) -> Option<Bound> {
    let t = Instant::now();
    let bound = w.bind(offer).await;
    o.binds.push(BindSeen {
        offer: name,
        result: bound.as_ref().map(|(_, n)| n.clone()).map_err(Clone::clone),
        ms: ms(t),
    });
    bound.ok().map(|(b, _)| b)
}

/// Connection A, bound with NDR32 only: the three protocol versions, an
/// alter_context adding a context, the two faults, and a request after
/// them on the same connection.
async fn ndr32_battery(w: &mut Wire, o: &mut Observations) {
    let Some(mut bound) = bind_seen(w, o, Offer::NDR32_ONLY, NDR32_OFFER).await else {
        return;
    };
    let win = sku(WINDOWS_PRODUCT);
    let mut answered = 0;
    let mut sent = 0;
    for v in [Version::V6, Version::V5, Version::V4] {
        let (seen, took) = w.activate(&mut bound, &base(win, v, PROBE_CMID)).await;
        sent += 1;
        answered += u32::from(seen.is_reply());
        o.exchanges.push(ExchangeSeen {
            what: format!("v{} {}", v.major(), win.name),
            kms_id: win.kms_id,
            version: v.major(),
            seen,
            ms: took,
        });
    }
    o.per_connection = Some((answered, sent));
    o.alter_context = Some(
        w.alter_context(1, &base(win, Version::V6, PROBE_CMID))
            .await,
    );
    faults(w, &bound, o).await;
    let (seen, _) = w
        .activate(&mut bound, &base(win, Version::V6, PROBE_CMID))
        .await;
    o.after_faults = Some(seen);
}

/// The calls a Windows host faults: opnum 1, and a context never
/// negotiated.
async fn faults(w: &mut Wire, bound: &Bound, o: &mut Observations) {
    let request = base(sku(WINDOWS_PRODUCT), Version::V6, PROBE_CMID);
    let (kms_bytes, _) = kms::encode_request(&request, iv());
    let ctx0 = bound.contexts().0;
    let (seen, took) = w.raw(ctx0.id, 1, ctx0.syntax, &kms_bytes, None).await;
    o.faults.push(RefusalSeen {
        what: "opnum 1".into(),
        expected: status::OP_RANGE_ERROR,
        fault: true,
        seen,
        ms: took,
    });
    let (seen, took) = w
        .raw(UNKNOWN_CONTEXT, 0, Syntax::Ndr32, &kms_bytes, None)
        .await;
    o.faults.push(RefusalSeen {
        what: format!("context {UNKNOWN_CONTEXT} never negotiated"),
        expected: status::UNKNOWN_INTERFACE,
        fault: true,
        seen,
        ms: took,
    });
}

/// Connection B, bound as Windows binds: Office twice and Windows again
/// (the ePIDs and counts of repeats), then the requests a host refuses.
async fn windows_battery(w: &mut Wire, o: &mut Observations) {
    let Some(mut bound) = bind_seen(w, o, Offer::WINDOWS, WINDOWS_OFFER).await else {
        return;
    };
    let win = sku(WINDOWS_PRODUCT);
    let office = sku(OFFICE_PRODUCT);
    let office_v = ProductRequest::new(office).version;
    for (s, v, what) in [
        (office, office_v, ""),
        (office, office_v, " (again)"),
        (win, Version::V6, " (again)"),
    ] {
        let (seen, took) = w.activate(&mut bound, &base(s, v, PROBE_CMID)).await;
        o.exchanges.push(ExchangeSeen {
            what: format!("v{} {}{what}", v.major(), s.name),
            kms_id: s.kms_id,
            version: v.major(),
            seen,
            ms: took,
        });
    }
    refusals(w, &mut bound, o).await;
}

/// What a Windows host refuses: an unsupported version (a v4 request
/// relabelled 7.0), a product no catalog has, a retail product.
async fn refusals(w: &mut Wire, bound: &mut Bound, o: &mut Observations) {
    let win = sku(WINDOWS_PRODUCT);
    let (mut v7, _) = kms::encode_request(&base(win, Version::V4, PROBE_CMID), iv());
    if let Some(major) = v7.get_mut(2..4) {
        major.copy_from_slice(&7u16.to_le_bytes());
    }
    let ctx = bound.contexts().1;
    let (seen, took) = w.raw(ctx.id, 0, ctx.syntax, &v7, None).await;
    o.refusals.push(RefusalSeen {
        what: "unsupported version 7.0".into(),
        expected: hresult::INVALID_DATA,
        fault: false,
        seen,
        ms: took,
    });
    let mut unknown = base(win, Version::V6, PROBE_CMID);
    unknown.kms_id = UNKNOWN_KMS_ID;
    unknown.sku_id = UNKNOWN_KMS_ID;
    let (seen, took) = w.activate(bound, &unknown).await;
    o.refusals.push(RefusalSeen {
        what: "unknown product".into(),
        expected: hresult::KMS_ID_MISMATCH,
        fault: false,
        seen,
        ms: took,
    });
    if let Some((g, sku_id)) = retail() {
        let mut r = base(win, Version::V6, PROBE_CMID);
        r.kms_id = g.id;
        r.sku_id = sku_id;
        let (seen, took) = w.activate(bound, &r).await;
        o.refusals.push(RefusalSeen {
            what: format!("retail product ({})", g.name),
            expected: hresult::KMS_ID_MISMATCH,
            fault: false,
            seen,
            ms: took,
        });
    }
}

/// The counting check on its own connection: new machines and a repeat in
/// the Windows pool (servers, then one client edition) and in the Office
/// 2013+ pool.
async fn count_check(addr: SocketAddr, timeout: Duration) -> Vec<CountSeen> {
    let mut steps = Vec::new();
    let fail = |pool, e: String| CountSeen {
        pool,
        fresh: true,
        n_policy: 0,
        seen: Seen::error(e),
        ms: 0.0,
    };
    let (mut w, _) = match Wire::open(addr, timeout).await {
        Ok(w) => w,
        Err(e) => return vec![fail(Pool::Windows, e)],
    };
    let mut bound = match w.bind(Offer::WINDOWS).await {
        Ok((b, _)) => b,
        Err(e) => return vec![fail(Pool::Windows, e)],
    };
    let mut rng = rand::rng();
    let server = sku(WINDOWS_PRODUCT);
    let client = sku(CLIENT_PRODUCT);
    let office = sku(OFFICE_PRODUCT);
    let mut plan: Vec<(&Sku, Pool, Option<Guid>)> = Vec::new();
    for (s, pool) in [(server, Pool::Windows), (office, Pool::Office2013Plus)] {
        for _ in 0..COUNT_MACHINES {
            plan.push((s, pool, None));
        }
        if pool == Pool::Windows {
            plan.push((client, pool, None));
        }
        plan.push((s, pool, Some(Guid::NIL)));
    }
    let mut first: Option<(Pool, Guid)> = None;
    for (s, pool, repeat) in plan {
        let cmid = match (repeat, first) {
            (Some(_), Some((p, c))) if p == pool => c,
            _ => Guid::random_v4(&mut rng),
        };
        if first.is_none_or(|(p, _)| p != pool) {
            first = Some((pool, cmid));
        }
        let req = base(s, Version::V6, cmid);
        let (seen, took) = w.activate(&mut bound, &req).await;
        let failed = !matches!(seen, Seen::Answer(_));
        steps.push(CountSeen {
            pool,
            fresh: repeat.is_none(),
            n_policy: req.n_policy,
            seen,
            ms: took,
        });
        if failed {
            break;
        }
    }
    let _ = w.framed.close().await;
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_battery_products_are_in_the_catalog() {
        for name in [WINDOWS_PRODUCT, OFFICE_PRODUCT, CLIENT_PRODUCT] {
            let s = products::find_sku(name).unwrap();
            assert_eq!(s.name, name);
        }
        assert_eq!(
            products::kms_group(&sku(WINDOWS_PRODUCT).kms_id)
                .unwrap()
                .n_policy,
            5
        );
        assert_eq!(
            products::kms_group(&sku(CLIENT_PRODUCT).kms_id)
                .unwrap()
                .n_policy,
            25
        );
        assert!(products::kms_group(&UNKNOWN_KMS_ID).is_none());
        let (g, _) = retail().unwrap();
        assert!(g.is_retail);
    }

    #[test]
    fn the_battery_requests_carry_the_catalog_threshold_and_the_probe_name() {
        for (name, n) in [
            (WINDOWS_PRODUCT, 5),
            (OFFICE_PRODUCT, 5),
            (CLIENT_PRODUCT, 25),
        ] {
            let b = base(sku(name), Version::V5, PROBE_CMID);
            assert_eq!(b.n_policy, n, "{name}");
            assert_eq!(b.version, Version::V5);
            assert_eq!(b.cmid, PROBE_CMID);
            assert_eq!(b.workstation.name(), WORKSTATION);
        }
    }
}
