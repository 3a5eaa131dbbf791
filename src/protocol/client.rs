//! The client side of a KMS connection as a sans-IO state machine over whole
//! PDUs: the bind (NDR32, NDR64, bind-time feature negotiation, as offered),
//! the bind_ack checked and turned into the contexts the requests use, the
//! alter_context Windows sends when the host prefers NDR64, then each
//! activation request and the checks of its reply (RPC framing, call_id
//! echo, stub, and every KMS check of SPEC §4.5).
//!
//! No socket, no clock, no random source: the caller passes the client time
//! (inside the [`RequestBase`]) and the request IV, writes the PDUs this
//! module encodes, and hands back the PDUs it reads. `kmsd activate`,
//! `kmsd load` and the `/healthz` probe all drive this one core.
//!
//! The steps are types: [`Binding`] (bind sent) → [`AfterBind`] →
//! optionally [`AlterContext`] (alter_context sent) → [`Bound`] → one
//! [`AwaitingReply`] per request → [`Exchange`].

use super::guid::Guid;
use super::kms::{self, RequestBase, SentRequest, VerifiedResponse, VerifyError};
use super::rpc::bind::{AckError, AckResult, Proposal, check_ack, encode_bind};
use super::rpc::pdu::{Header, MAX_PDU_LEN, PduError, flags, ptype};
use super::rpc::request::{self as rpc_request, Reply};
use super::rpc::{BTFN_PREFIX, Syntax};

/// The call id of the bind (and of the alter_context); requests count up
/// from the next one.
pub const BIND_CALL_ID: u32 = 2;

/// The bind-time features a client asks for: security context multiplexing
/// and keep connection on orphan, as Windows does.
pub const BTFN_REQUEST: u16 = 0x0003;

/// What a client proposes in its bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Propose NDR64 besides NDR32.
    pub ndr64: bool,
    /// Propose bind-time feature negotiation ([`BTFN_REQUEST`]).
    pub btfn: bool,
    /// When the host accepts NDR64 only, negotiate NDR32 with an
    /// alter_context and send the first request in it (as Windows does).
    pub alter_context: bool,
    /// Set PFC_CONC_MPX in the bind and alter_context.
    pub multiplex: bool,
}

impl Offer {
    /// What Windows 8 and later send: NDR32, NDR64 and BTFN, multiplexed,
    /// with the alter_context when the host prefers NDR64.
    pub const WINDOWS: Self = Self {
        ndr64: true,
        btfn: true,
        alter_context: true,
        multiplex: true,
    };

    /// One context, NDR32 only, no flags beyond first/last fragment: the
    /// health probe's bind (SPEC's example bind).
    pub const NDR32_ONLY: Self = Self {
        ndr64: false,
        btfn: false,
        alter_context: false,
        multiplex: false,
    };

    /// The proposed items in order; the context id of each is its index.
    fn items(self) -> impl Iterator<Item = Item> {
        [
            Some(Item::Syntax(Syntax::Ndr32)),
            self.ndr64.then_some(Item::Syntax(Syntax::Ndr64)),
            self.btfn.then_some(Item::Btfn),
        ]
        .into_iter()
        .flatten()
    }

    fn pfc_flags(self) -> u8 {
        if self.multiplex {
            flags::FIRST_LAST | flags::CONC_MPX
        } else {
            flags::FIRST_LAST
        }
    }
}

/// One proposed context item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Syntax(Syntax),
    Btfn,
}

impl Item {
    fn proposal(self, id: u16) -> Proposal {
        match self {
            Self::Syntax(s) => (id, s.guid().0, s.version()),
            Self::Btfn => {
                let mut g = [0u8; 16];
                if let Some(head) = g.get_mut(..8) {
                    head.copy_from_slice(&BTFN_PREFIX);
                }
                if let Some(bits) = g.get_mut(8..10) {
                    bits.copy_from_slice(&BTFN_REQUEST.to_le_bytes());
                }
                (id, g, 1)
            }
        }
    }

    /// The syntax this item's result makes usable, if any; an error for a
    /// result the client cannot take.
    fn accepted(self, id: u16, r: &AckResult) -> Result<Option<Syntax>, AckError> {
        let &(result, reason, got, got_version) = r;
        let ok = match self {
            // negotiate_ack with no bit we did not ask for, or a rejection.
            Self::Btfn => match result {
                3 if reason & !BTFN_REQUEST == 0 => Some(None),
                2 => Some(None),
                _ => None,
            },
            Self::Syntax(s) => match result {
                0 if got == s.guid().0 && got_version == s.version() => Some(Some(s)),
                2 if got == [0; 16] && got_version == 0 => Some(None),
                _ => None,
            },
        };
        ok.ok_or(AckError::UnexpectedResult { id, result, reason })
    }
}

/// A presentation context the requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub id: u16,
    pub syntax: Syntax,
}

/// Checks the framing of a reply PDU (exactly one whole PDU, one fragment,
/// no authentication trailer) and returns its header.
pub fn reply_header(pdu: &[u8]) -> Result<Header, PduError> {
    let h = Header::peek(pdu, MAX_PDU_LEN)?
        .ok_or_else(|| PduError::malformed("reply", "shorter than a header"))?;
    if usize::from(h.frag_len) != pdu.len() {
        return Err(PduError::malformed(
            "reply",
            format!("frag_length {} but {} bytes", h.frag_len, pdu.len()),
        ));
    }
    if h.flags & flags::FIRST_LAST != flags::FIRST_LAST || h.auth_len != 0 {
        return Err(PduError::malformed("reply", "fragmented or authenticated"));
    }
    Ok(h)
}

/// The checked results of a bind_ack (`want` BIND_ACK) or
/// alter_context_resp, one per item sent.
fn ack_results(
    pdu: &[u8],
    want: u8,
    call_id: u32,
    items: usize,
) -> Result<Vec<AckResult>, AckError> {
    let h = reply_header(pdu)?;
    let mut results = Vec::with_capacity(items);
    check_ack(h, pdu, want, call_id, items, &mut results)?;
    Ok(results)
}

/// A bind sent (or about to be): waits for its bind_ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    offer: Offer,
    call_id: u32,
}

/// Where a bind_ack leaves the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterBind {
    /// Ready for requests.
    Bound(Bound),
    /// The host accepted NDR64 only: send [`AlterContext::encode`] and pass
    /// its response to [`AlterContext::on_response`].
    AlterContext(AlterContext),
}

impl Binding {
    pub const fn new(offer: Offer, call_id: u32) -> Self {
        Self { offer, call_id }
    }

    pub const fn offer(&self) -> Offer {
        self.offer
    }

    pub const fn call_id(&self) -> u32 {
        self.call_id
    }

    /// Appends the bind PDU to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut items = [(0u16, [0u8; 16], 0u32); 3];
        let mut n = 0;
        for (slot, (id, item)) in items.iter_mut().zip((0u16..).zip(self.offer.items())) {
            *slot = item.proposal(id);
            n += 1;
        }
        let items = items.get(..n).unwrap_or(&[]);
        encode_bind(
            ptype::BIND,
            self.offer.pfc_flags(),
            self.call_id,
            items,
            out,
        );
    }

    /// Appends the alter_context this binding sends when the host accepts
    /// NDR64 only (for callers that prepare their PDUs once).
    pub fn encode_alter_context(&self, out: &mut Vec<u8>) {
        encode_alter(self.offer, self.call_id, out);
    }

    /// Checks the bind_ack (type, call_id echo, association group, port,
    /// one valid result per item) and decides the contexts: NDR32 for
    /// every request when only it is accepted; NDR32 for the first and
    /// NDR64 for the rest when both are; when NDR64 alone is, an
    /// alter_context for NDR32 (if the offer says so) or NDR64 throughout.
    pub fn on_bind_ack(self, pdu: &[u8]) -> Result<AfterBind, AckError> {
        let n = self.offer.items().count();
        let results = ack_results(pdu, ptype::BIND_ACK, self.call_id, n)?;
        let mut ndr32 = None;
        let mut ndr64 = None;
        for ((id, item), r) in (0u16..).zip(self.offer.items()).zip(&results) {
            match item.accepted(id, r)? {
                Some(Syntax::Ndr32) => {
                    ndr32 = Some(Context {
                        id,
                        syntax: Syntax::Ndr32,
                    })
                }
                Some(Syntax::Ndr64) => {
                    ndr64 = Some(Context {
                        id,
                        syntax: Syntax::Ndr64,
                    })
                }
                None => {}
            }
        }
        let bound = |first, rest| Bound::new(first, rest, self.call_id);
        Ok(match (ndr32, ndr64) {
            (Some(c), None) => AfterBind::Bound(bound(c, c)),
            (Some(c), Some(c64)) => AfterBind::Bound(bound(c, c64)),
            (None, Some(c64)) if self.offer.alter_context => {
                AfterBind::AlterContext(AlterContext {
                    offer: self.offer,
                    call_id: self.call_id,
                    ndr64: c64,
                })
            }
            (None, Some(c64)) => AfterBind::Bound(bound(c64, c64)),
            (None, None) => return Err(AckError::NoTransferSyntax),
        })
    }
}

fn encode_alter(offer: Offer, call_id: u32, out: &mut Vec<u8>) {
    let item = Item::Syntax(Syntax::Ndr32).proposal(0);
    encode_bind(
        ptype::ALTER_CONTEXT,
        offer.pfc_flags(),
        call_id,
        &[item],
        out,
    );
}

/// An alter_context for NDR32 (context 0) sent after a bind whose NDR32
/// the host rejected in favour of NDR64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterContext {
    offer: Offer,
    call_id: u32,
    ndr64: Context,
}

impl AlterContext {
    /// Appends the alter_context PDU to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_alter(self.offer, self.call_id, out);
    }

    /// Checks the alter_context_resp: NDR32 accepted makes it the first
    /// request's context (NDR64 the rest's); rejected, NDR64 serves all.
    pub fn on_response(self, pdu: &[u8]) -> Result<Bound, AckError> {
        let results = ack_results(pdu, ptype::ALTER_CONTEXT_RESP, self.call_id, 1)?;
        let first = match results.first() {
            Some(r) => Item::Syntax(Syntax::Ndr32).accepted(0, r)?,
            None => None,
        };
        let first = first.map_or(self.ndr64, |syntax| Context { id: 0, syntax });
        Ok(Bound::new(first, self.ndr64, self.call_id))
    }
}

/// A bound connection: encodes requests in the negotiated contexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    first: Context,
    rest: Context,
    last_call_id: u32,
    sent: u32,
}

impl Bound {
    fn new(first: Context, rest: Context, bind_call_id: u32) -> Self {
        Self {
            first,
            rest,
            last_call_id: bind_call_id,
            sent: 0,
        }
    }

    /// The context of the first request and of the ones after it.
    pub const fn contexts(&self) -> (Context, Context) {
        (self.first, self.rest)
    }

    /// Requests encoded so far.
    pub const fn requests_sent(&self) -> u32 {
        self.sent
    }

    /// Appends the request PDU carrying the KMS request for `base` (its
    /// client time included), encrypted with `iv` for protocol 5/6.
    pub fn request(
        &mut self,
        base: &RequestBase,
        iv: [u8; 16],
        out: &mut Vec<u8>,
    ) -> AwaitingReply {
        let (kms_bytes, sent) = kms::encode_request(base, iv);
        self.request_encoded(&kms_bytes, sent, out)
    }

    /// Like [`Bound::request`] for a KMS request already encoded by
    /// [`kms::encode_request`] (which returned `kms_bytes` and `sent`): for
    /// callers that send the same request many times.
    pub fn request_encoded(
        &mut self,
        kms_bytes: &[u8],
        sent: SentRequest,
        out: &mut Vec<u8>,
    ) -> AwaitingReply {
        let context = if self.sent == 0 {
            self.first
        } else {
            self.rest
        };
        self.sent = self.sent.saturating_add(1);
        self.last_call_id = self.last_call_id.wrapping_add(1);
        let call_id = self.last_call_id;
        rpc_request::encode_request(call_id, context.id, context.syntax, kms_bytes, out);
        AwaitingReply {
            call_id,
            context,
            sent,
        }
    }
}

/// A request sent, awaiting its reply: checks the reply against what was
/// sent (call id, context, the request it verifies against).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwaitingReply {
    call_id: u32,
    context: Context,
    sent: SentRequest,
}

/// One verified request/response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub syntax: Syntax,
    pub cmid: Guid,
    pub response: VerifiedResponse,
}

/// Why a reply to a request was not a verified response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply from the host: {0}")]
    Malformed(#[from] PduError),
    #[error("reply call_id {got} does not echo request {sent}")]
    CallId { got: u32, sent: u32 },
    #[error("RPC fault {0:#010x}")]
    Fault(u32),
    #[error("host answered error {0:#010X} instead of a response")]
    Hresult(u32),
    #[error("response failed verification: {0}")]
    Verify(#[from] VerifyError),
}

impl AwaitingReply {
    pub const fn call_id(&self) -> u32 {
        self.call_id
    }

    pub const fn context(&self) -> Context {
        self.context
    }

    /// What the response must match.
    pub const fn sent(&self) -> &SentRequest {
        &self.sent
    }

    /// Checks the reply PDU: framing, call_id echo, a response (not a fault)
    /// whose stub in the request's syntax carries a KMS response that
    /// passes [`kms::verify_response`] (integrity, IVs, echoed CMID and
    /// time, exact size).
    pub fn on_reply(&self, pdu: &[u8]) -> Result<Exchange, ReplyError> {
        let h = reply_header(pdu)?;
        if h.call_id != self.call_id {
            return Err(ReplyError::CallId {
                got: h.call_id,
                sent: self.call_id,
            });
        }
        match rpc_request::decode_reply(h, pdu, self.context.syntax)? {
            Reply::Fault(status) => Err(ReplyError::Fault(status)),
            Reply::Hresult(hr) => Err(ReplyError::Hresult(hr)),
            Reply::Kms(bytes) => Ok(Exchange {
                syntax: self.context.syntax,
                cmid: self.sent.base.cmid,
                response: kms::verify_response(&self.sent, bytes)?,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::kms::{Answer, Epid, Version, Workstation, hresult, products};
    use crate::protocol::rpc::bind::BindPolicy;
    use crate::protocol::rpc::session::Session;
    use crate::protocol::server::{Outcome, Verdict, handle_pdu};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const HWID: [u8; 8] = [0x3a, 0x1c, 0x04, 0x96, 0x00, 0xb6, 0x00, 0x76];

    /// A host core on one connection, answering every request with count 30.
    struct Host {
        session: Session,
        rng: StdRng,
        epid: Epid,
        refuse: Option<u32>,
    }

    impl Host {
        fn new(policy: BindPolicy) -> Self {
            Self {
                session: Session::new(policy, 1688, 0x1234),
                rng: StdRng::seed_from_u64(5),
                epid: Epid::new("06401-00206-271-392041-03-1033-17763.0000-2452019").unwrap(),
                refuse: None,
            }
        }

        fn answer(&mut self, pdu: &[u8]) -> (Outcome, Vec<u8>) {
            let mut out = Vec::new();
            let epid = &self.epid;
            let refuse = self.refuse;
            let outcome = handle_pdu(
                &mut self.session,
                pdu,
                |_| match refuse {
                    Some(hresult) => Verdict::Refuse {
                        hresult,
                        why: "test",
                    },
                    None => Verdict::Answer(Answer {
                        epid,
                        hwid: HWID,
                        count: 30,
                        activation_interval: 120,
                        renewal_interval: 10080,
                    }),
                },
                &mut self.rng,
                &mut out,
            )
            .unwrap();
            (outcome, out)
        }
    }

    fn base(version: Version, cmid: u128, client_time: u64) -> RequestBase {
        let sku = products::find_sku("Windows 10/11 Enterprise").unwrap();
        RequestBase {
            version,
            vm_info: 0,
            license_status: 2,
            binding_expiration: 43200,
            app_id: sku.app_id,
            sku_id: sku.id,
            kms_id: sku.kms_id,
            cmid: Guid::from_u128(cmid),
            n_policy: 25,
            client_time,
            previous_cmid: Guid::NIL,
            workstation: Workstation::new("unit-test").unwrap(),
        }
    }

    /// Binds `offer` against `host`; returns the bound state and the PDU
    /// types the client sent.
    fn bind(offer: Offer, host: &mut Host) -> (Bound, Vec<u8>) {
        let binding = Binding::new(offer, BIND_CALL_ID);
        let mut pdu = Vec::new();
        binding.encode(&mut pdu);
        let mut sent = vec![pdu[2]];
        let (_, ack) = host.answer(&pdu);
        let bound = match binding.on_bind_ack(&ack).unwrap() {
            AfterBind::Bound(b) => b,
            AfterBind::AlterContext(alter) => {
                pdu.clear();
                alter.encode(&mut pdu);
                sent.push(pdu[2]);
                let (_, resp) = host.answer(&pdu);
                alter.on_response(&resp).unwrap()
            }
        };
        (bound, sent)
    }

    fn ctx(id: u16, syntax: Syntax) -> Context {
        Context { id, syntax }
    }

    /// Sends one request for `version` and checks the reply.
    fn exchange(b: &mut Bound, host: &mut Host, version: Version, n: u128) -> Exchange {
        let mut pdu = Vec::new();
        let time = 133_801_632_000_000_000 + n as u64;
        let pending = b.request(&base(version, n, time), [n as u8; 16], &mut pdu);
        let (outcome, reply) = host.answer(&pdu);
        assert!(
            matches!(outcome, Outcome::Answered { call_id, .. } if call_id == pending.call_id())
        );
        let x = pending.on_reply(&reply).unwrap();
        assert_eq!(x.cmid, Guid::from_u128(n));
        assert_eq!(x.response.client_time, time);
        assert_eq!(x.response.count, 30);
        x
    }

    #[test]
    fn the_bind_pdus_match_the_spec_and_windows() {
        let hex = crate::protocol::hex::lower;
        let mut out = Vec::new();
        Binding::new(Offer::NDR32_ONLY, 2).encode(&mut out);
        assert_eq!(
            hex(&out),
            "05000b03100000004800000002000000d016d0160000000001000000000001007521c8514e845047b0d8ec255555bc0601000000045d888aeb1cc9119fe808002b10486002000000"
        );
        // NDR32 + BTFN: consecutive context ids, as vlmcs sends (captured
        // in tests/vectors, scenario v6_clientNoNDR64).
        out.clear();
        let offer = Offer {
            ndr64: false,
            ..Offer::WINDOWS
        };
        Binding::new(offer, 2).encode(&mut out);
        assert_eq!(
            hex(&out),
            "05000b13100000007400000002000000d016d0160000000002000000000001007521c8514e845047b0d8ec255555bc0601000000045d888aeb1cc9119fe808002b10486002000000010001007521c8514e845047b0d8ec255555bc06010000002c1cb76c12984045030000000000000001000000"
        );
        // Windows 8 and later (scenario v6_win10), and its alter_context.
        out.clear();
        let binding = Binding::new(Offer::WINDOWS, 2);
        binding.encode(&mut out);
        assert_eq!(
            hex(&out),
            "05000b1310000000a000000002000000d016d0160000000003000000000001007521c8514e845047b0d8ec255555bc0601000000045d888aeb1cc9119fe808002b10486002000000010001007521c8514e845047b0d8ec255555bc060100000033057171babe37498319b5dbef9ccc3601000000020001007521c8514e845047b0d8ec255555bc06010000002c1cb76c12984045030000000000000001000000"
        );
        out.clear();
        binding.encode_alter_context(&mut out);
        assert_eq!(
            hex(&out),
            "05000e13100000004800000002000000d016d0160000000001000000000001007521c8514e845047b0d8ec255555bc0601000000045d888aeb1cc9119fe808002b10486002000000"
        );
    }

    #[test]
    fn ndr32_only_serves_every_request_in_ndr32() {
        let mut host = Host::new(BindPolicy::default());
        let offer = Offer {
            ndr64: false,
            btfn: false,
            ..Offer::WINDOWS
        };
        let (mut b, sent) = bind(offer, &mut host);
        assert_eq!(sent, [ptype::BIND]);
        assert_eq!(b.contexts(), (ctx(0, Syntax::Ndr32), ctx(0, Syntax::Ndr32)));
        for n in 1..=3 {
            assert_eq!(
                exchange(&mut b, &mut host, Version::V6, n).syntax,
                Syntax::Ndr32
            );
        }
        assert_eq!(b.requests_sent(), 3);
    }

    #[test]
    fn ndr64_and_btfn_go_through_an_alter_context_like_windows() {
        let mut host = Host::new(BindPolicy::default());
        let (mut b, sent) = bind(Offer::WINDOWS, &mut host);
        assert_eq!(sent, [ptype::BIND, ptype::ALTER_CONTEXT]);
        assert_eq!(b.contexts(), (ctx(0, Syntax::Ndr32), ctx(1, Syntax::Ndr64)));
        assert_eq!(
            exchange(&mut b, &mut host, Version::V6, 1).syntax,
            Syntax::Ndr32
        );
        assert_eq!(
            exchange(&mut b, &mut host, Version::V6, 2).syntax,
            Syntax::Ndr64
        );
        assert_eq!(
            exchange(&mut b, &mut host, Version::V6, 3).syntax,
            Syntax::Ndr64
        );
    }

    #[test]
    fn without_the_alter_context_ndr64_serves_everything() {
        let mut host = Host::new(BindPolicy::default());
        let offer = Offer {
            alter_context: false,
            ..Offer::WINDOWS
        };
        let (mut b, sent) = bind(offer, &mut host);
        assert_eq!(sent, [ptype::BIND]);
        assert_eq!(b.contexts(), (ctx(1, Syntax::Ndr64), ctx(1, Syntax::Ndr64)));
        assert_eq!(
            exchange(&mut b, &mut host, Version::V5, 1).syntax,
            Syntax::Ndr64
        );
    }

    #[test]
    fn a_host_without_ndr64_or_btfn_is_served_in_ndr32() {
        let mut host = Host::new(BindPolicy {
            ndr64: false,
            btfn: false,
        });
        let (mut b, sent) = bind(Offer::WINDOWS, &mut host);
        assert_eq!(sent, [ptype::BIND]);
        assert_eq!(b.contexts(), (ctx(0, Syntax::Ndr32), ctx(0, Syntax::Ndr32)));
        assert_eq!(
            exchange(&mut b, &mut host, Version::V6, 1).syntax,
            Syntax::Ndr32
        );
        assert_eq!(
            exchange(&mut b, &mut host, Version::V6, 2).syntax,
            Syntax::Ndr32
        );
    }

    #[test]
    fn every_version_round_trips_and_call_ids_count_up() {
        for version in Version::ALL {
            let mut host = Host::new(BindPolicy::default());
            let (mut b, _) = bind(Offer::WINDOWS, &mut host);
            for n in 1..=3u128 {
                let x = exchange(&mut b, &mut host, version, n);
                assert_eq!(x.response.version, version);
                assert_eq!(x.response.hwid.is_some(), version == Version::V6);
                assert_eq!(x.response.epid, host.epid.as_str());
            }
            assert_eq!(b.last_call_id, BIND_CALL_ID + 3);
        }
    }

    #[test]
    fn a_tampered_response_byte_is_rejected() {
        for version in Version::ALL {
            let mut host = Host::new(BindPolicy::default());
            let (mut b, _) = bind(Offer::WINDOWS, &mut host);
            let mut pdu = Vec::new();
            let pending = b.request(&base(version, 9, 1 << 57), [7; 16], &mut pdu);
            let (_, reply) = host.answer(&pdu);
            assert!(pending.on_reply(&reply).is_ok());
            // A byte of the v4 MAC'd base, or of the v5/v6 ciphertext's last
            // block (the hash or HMAC), both fully protected.
            let at = match version {
                Version::V4 => reply.len() - 30,
                Version::V5 | Version::V6 => reply.len() - 10,
            };
            let mut bad = reply.clone();
            bad[at] ^= 0x40;
            assert!(
                matches!(pending.on_reply(&bad), Err(ReplyError::Verify(_))),
                "{version}: {:?}",
                pending.on_reply(&bad)
            );
            // Every byte of a v6 KMS response (and the status after it) is
            // protected.
            if version == Version::V6 {
                let kms_at = 24
                    + if pending.context().syntax == Syntax::Ndr64 {
                        24
                    } else {
                        12
                    };
                for i in kms_at..reply.len() {
                    let mut bad = reply.clone();
                    bad[i] ^= 0x01;
                    assert!(pending.on_reply(&bad).is_err(), "byte {i}");
                }
            }
            // A response is for its own request only.
            let mut other = Vec::new();
            let next = b.request(&base(version, 10, 1 << 57), [7; 16], &mut other);
            let mut moved = reply.clone();
            moved[12..16].copy_from_slice(&next.call_id().to_le_bytes());
            assert!(next.on_reply(&moved).is_err());
            assert_eq!(
                next.on_reply(&reply),
                Err(ReplyError::CallId {
                    got: pending.call_id(),
                    sent: next.call_id()
                })
            );
        }
    }

    #[test]
    fn refusals_and_faults_are_typed() {
        let mut host = Host::new(BindPolicy::default());
        let (mut b, _) = bind(Offer::WINDOWS, &mut host);
        host.refuse = Some(hresult::KMS_ID_MISMATCH);
        let mut pdu = Vec::new();
        let pending = b.request(&base(Version::V6, 1, 5), [1; 16], &mut pdu);
        let (_, reply) = host.answer(&pdu);
        assert_eq!(
            pending.on_reply(&reply),
            Err(ReplyError::Hresult(hresult::KMS_ID_MISMATCH))
        );
        // A request on a context the host never accepted draws a fault.
        let mut stray = pdu.clone();
        stray[20] = 7;
        let (_, fault) = host.answer(&stray);
        assert_eq!(
            pending.on_reply(&fault),
            Err(ReplyError::Fault(
                crate::protocol::rpc::status::UNKNOWN_INTERFACE
            ))
        );
    }

    #[test]
    fn a_bind_ack_with_the_wrong_call_id_is_rejected() {
        let mut host = Host::new(BindPolicy::default());
        let mut pdu = Vec::new();
        Binding::new(Offer::WINDOWS, 5).encode(&mut pdu);
        let (_, ack) = host.answer(&pdu);
        assert_eq!(
            Binding::new(Offer::WINDOWS, 6).on_bind_ack(&ack),
            Err(AckError::CallId { got: 5, sent: 6 })
        );
        // And an alter_context_resp likewise.
        let alter = match Binding::new(Offer::WINDOWS, 5).on_bind_ack(&ack).unwrap() {
            AfterBind::AlterContext(a) => a,
            AfterBind::Bound(b) => panic!("bound without alter_context: {b:?}"),
        };
        pdu.clear();
        encode_alter(Offer::WINDOWS, 9, &mut pdu);
        let (_, resp) = host.answer(&pdu);
        assert_eq!(
            alter.on_response(&resp),
            Err(AckError::CallId { got: 9, sent: 5 })
        );
    }

    #[test]
    fn bad_bind_acks_are_rejected_precisely() {
        let mut host = Host::new(BindPolicy::default());
        let binding = Binding::new(Offer::WINDOWS, BIND_CALL_ID);
        let mut pdu = Vec::new();
        binding.encode(&mut pdu);
        let (_, ack) = host.answer(&pdu);
        assert!(binding.on_bind_ack(&ack).is_ok());
        // Results start at 28 + the secondary address ("1688\0") padded.
        let results = 36;
        assert_eq!(ack[results - 4], 3, "three results");
        // NDR64 (context 1) "accepted" as NDR32: a syntax never proposed.
        let mut wrong = ack.clone();
        let ndr32 = Syntax::Ndr32.guid();
        wrong[results + 24 + 4..results + 24 + 20].copy_from_slice(ndr32.as_bytes());
        assert_eq!(
            binding.on_bind_ack(&wrong),
            Err(AckError::UnexpectedResult {
                id: 1,
                result: 0,
                reason: 0
            })
        );
        // BTFN granting a feature bit the client did not ask for.
        let mut greedy = ack.clone();
        greedy[results + 48 + 2] = 0x07;
        assert!(matches!(
            binding.on_bind_ack(&greedy),
            Err(AckError::UnexpectedResult {
                id: 2,
                result: 3,
                ..
            })
        ));
        // Every syntax rejected.
        let mut none = ack.clone();
        none[results + 24..results + 26].copy_from_slice(&2u16.to_le_bytes());
        none[results + 28..results + 48].fill(0);
        assert_eq!(binding.on_bind_ack(&none), Err(AckError::NoTransferSyntax));
        // A bind_nak, a reply of another type, a cut-off PDU.
        let mut nak = ack.clone();
        nak[2] = ptype::BIND_NAK;
        assert_eq!(binding.on_bind_ack(&nak), Err(AckError::Nak));
        let mut other = ack.clone();
        other[2] = ptype::RESPONSE;
        assert_eq!(
            binding.on_bind_ack(&other),
            Err(AckError::UnexpectedType(ptype::RESPONSE))
        );
        assert!(matches!(
            binding.on_bind_ack(&ack[..ack.len() - 1]),
            Err(AckError::Malformed(_))
        ));
        let mut fragment = ack.clone();
        fragment[3] &= !flags::LAST_FRAG;
        assert!(matches!(
            binding.on_bind_ack(&fragment),
            Err(AckError::Malformed(_))
        ));
    }

    #[test]
    fn a_rejected_alter_context_leaves_ndr64_for_every_request() {
        let mut host = Host::new(BindPolicy::default());
        let binding = Binding::new(Offer::WINDOWS, BIND_CALL_ID);
        let mut pdu = Vec::new();
        binding.encode(&mut pdu);
        let (_, ack) = host.answer(&pdu);
        let AfterBind::AlterContext(alter) = binding.on_bind_ack(&ack).unwrap() else {
            panic!("alter_context expected");
        };
        pdu.clear();
        alter.encode(&mut pdu);
        let (_, mut resp) = host.answer(&pdu);
        // Turn the acceptance into a provider rejection.
        let at = resp.len() - 24;
        resp[at..at + 2].copy_from_slice(&2u16.to_le_bytes());
        resp[at + 4..].fill(0);
        let b = alter.on_response(&resp).unwrap();
        assert_eq!(b.contexts(), (ctx(1, Syntax::Ndr64), ctx(1, Syntax::Ndr64)));
    }

    #[test]
    fn a_pre_encoded_request_is_the_same_request() {
        let mut host = Host::new(BindPolicy::default());
        let (mut b, _) = bind(Offer::WINDOWS, &mut host);
        let req = base(Version::V6, 77, 133_801_632_000_000_000);
        let (kms_bytes, sent) = kms::encode_request(&req, *b"kmsd-floor-iv-16");
        for _ in 0..3 {
            let mut pdu = Vec::new();
            let mut twin = b.clone();
            let p = b.request_encoded(&kms_bytes, sent, &mut pdu);
            let mut again = Vec::new();
            twin.request(&req, *b"kmsd-floor-iv-16", &mut again);
            assert_eq!(pdu, again);
            let (_, reply) = host.answer(&pdu);
            assert_eq!(p.on_reply(&reply).unwrap().cmid, Guid::from_u128(77));
        }
    }
}
