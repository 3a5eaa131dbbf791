//! The host side of one exchange, bytes in and bytes out, in two steps:
//! [`decode`] runs the RPC session step, unmarshals the stub and decodes and
//! verifies the KMS request, giving either a reply already written (bind_ack,
//! fault, error stub) or a verified [`Pending`] request; the caller decides
//! it (product policy, count, durable commit) and then [`answer`]s or
//! [`refuse`]s it. Nothing is encrypted before the caller knows the answer.
//! [`handle_pdu`] composes the two for callers with nothing to commit
//! (tests, benchmarks, fuzzers). Pure: randomness and buffers are passed in.

use super::kms::{self, Answer, KmsError, Request, ResponseRandom};
use super::rpc::pdu::{Header, MAX_PDU_LEN, PduError};
use super::rpc::request::{self as rpc_request, StubError};
use super::rpc::session::{Session, Step};
use super::rpc::{Syntax, status};

/// What the caller of [`handle_pdu`] does with a verified request (the
/// host's product decision is [`crate::protocol::policy::Decision`]).
#[derive(Debug, Clone, Copy)]
pub enum Verdict<'a> {
    Answer(Answer<'a>),
    /// Refuse with this HRESULT (e.g. product not served).
    Refuse {
        hresult: u32,
        why: &'static str,
    },
}

/// What one PDU led to (the reply, if any, is in the output buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// bind_ack / alter_context_resp written.
    Negotiated { alter: bool, accepted: usize },
    /// RPC fault written.
    Fault {
        call_id: u32,
        status: u32,
        why: &'static str,
    },
    /// The stub did not unmarshal: fault written.
    BadStub { call_id: u32, error: StubError },
    /// The KMS request was malformed or failed its check: error stub written.
    Invalid {
        call_id: u32,
        syntax: Syntax,
        error: KmsError,
    },
    /// The request verified; the caller refused it: error stub written.
    Refused {
        call_id: u32,
        context_id: u16,
        syntax: Syntax,
        request: Request,
        hresult: u32,
        why: &'static str,
    },
    /// The request verified and was answered.
    Answered {
        call_id: u32,
        context_id: u16,
        syntax: Syntax,
        request: Request,
        count: u32,
    },
}

/// A verified activation request waiting for the caller's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub call_id: u32,
    pub context_id: u16,
    pub syntax: Syntax,
    pub request: Request,
}

/// What [`decode`] made of one PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The reply (if any) is written; nothing is left to decide.
    Done(Outcome),
    /// A verified request: answer it with [`answer`] or [`refuse`].
    Request(Pending),
}

/// Decodes one complete PDU. Replies that need no decision (bind_ack,
/// faults, the error stub of an invalid request) are written to `out`. An
/// `Err` means the connection must close (nothing was written).
pub fn decode(session: &mut Session, pdu: &[u8], out: &mut Vec<u8>) -> Result<Decoded, PduError> {
    let header = Header::peek(pdu, MAX_PDU_LEN)?
        .ok_or_else(|| PduError::malformed("PDU", "shorter than a header"))?;
    decode_parsed(session, header, pdu, out)
}

/// [`decode`] for a PDU whose header the framing already parsed.
pub fn decode_parsed(
    session: &mut Session,
    header: Header,
    pdu: &[u8],
    out: &mut Vec<u8>,
) -> Result<Decoded, PduError> {
    let act = match session.handle_parsed(header, pdu, out)? {
        Step::Negotiated { alter, accepted } => {
            return Ok(Decoded::Done(Outcome::Negotiated { alter, accepted }));
        }
        Step::Fault {
            call_id,
            status,
            why,
        } => {
            return Ok(Decoded::Done(Outcome::Fault {
                call_id,
                status,
                why,
            }));
        }
        Step::Activate(a) => a,
    };
    let (call_id, ctx, syntax) = (act.call_id, act.context_id, act.syntax);
    let kms_bytes = match rpc_request::decode_stub(act.stub, syntax) {
        Ok(b) => b,
        Err(error) => {
            rpc_request::encode_fault(call_id, ctx, status::BAD_STUB_DATA, out);
            return Ok(Decoded::Done(Outcome::BadStub { call_id, error }));
        }
    };
    match kms::decode_request(kms_bytes) {
        Ok(request) => Ok(Decoded::Request(Pending {
            call_id,
            context_id: ctx,
            syntax,
            request,
        })),
        Err(error) => {
            rpc_request::encode_error(call_id, ctx, syntax, error.hresult(), out);
            Ok(Decoded::Done(Outcome::Invalid {
                call_id,
                syntax,
                error,
            }))
        }
    }
}

/// Writes the signed/encrypted response to `p`; `rng` is drawn from here
/// and only here.
pub fn answer(
    p: &Pending,
    answer: &Answer<'_>,
    rng: &mut impl rand::CryptoRng,
    out: &mut Vec<u8>,
) -> Outcome {
    let rnd = ResponseRandom::draw(rng);
    rpc_request::encode_response(p.call_id, p.context_id, p.syntax, out, |o| {
        kms::encode_response(&p.request, answer, &rnd, o);
    });
    Outcome::Answered {
        call_id: p.call_id,
        context_id: p.context_id,
        syntax: p.syntax,
        request: p.request,
        count: answer.count,
    }
}

/// Writes the error stub refusing `p` with `hresult`.
pub fn refuse(p: &Pending, hresult: u32, why: &'static str, out: &mut Vec<u8>) -> Outcome {
    rpc_request::encode_error(p.call_id, p.context_id, p.syntax, hresult, out);
    Outcome::Refused {
        call_id: p.call_id,
        context_id: p.context_id,
        syntax: p.syntax,
        request: p.request,
        hresult,
        why,
    }
}

/// Handles one complete PDU: [`decode`], `decide` (called once per
/// verified request), then [`answer`] or [`refuse`]. For callers with no
/// store to commit to; the host's shell calls the steps itself.
pub fn handle_pdu<'e>(
    session: &mut Session,
    pdu: &[u8],
    decide: impl FnOnce(&Request) -> Verdict<'e>,
    rng: &mut impl rand::CryptoRng,
    out: &mut Vec<u8>,
) -> Result<Outcome, PduError> {
    Ok(match decode(session, pdu, out)? {
        Decoded::Done(o) => o,
        Decoded::Request(p) => match decide(&p.request) {
            Verdict::Refuse { hresult, why } => refuse(&p, hresult, why, out),
            Verdict::Answer(a) => answer(&p, &a, rng, out),
        },
    })
}
