//! The host's whole answer to one PDU, bytes in and bytes out: RPC session
//! step, stub unmarshalling, KMS decode and verify, the caller's decision
//! (count, ePID, or a refusal), and the signed/encrypted response. Pure: the
//! decision, the randomness and the output buffer are passed in.

use super::kms::{self, Answer, KmsError, Request, ResponseRandom};
use super::rpc::pdu::PduError;
use super::rpc::request::{self as rpc_request, StubError};
use super::rpc::session::{Session, Step};
use super::rpc::{Syntax, status};

/// What the host decided for a verified request.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'a> {
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

/// Handles one complete PDU. `decide` is called once per verified request;
/// `rng` is drawn from only when a response is built. An `Err` means the
/// connection must close (nothing was written).
pub fn handle_pdu<'e>(
    session: &mut Session,
    pdu: &[u8],
    decide: impl FnOnce(&Request) -> Decision<'e>,
    rng: &mut impl rand::CryptoRng,
    out: &mut Vec<u8>,
) -> Result<Outcome, PduError> {
    let act = match session.handle(pdu, out)? {
        Step::Negotiated { alter, accepted } => return Ok(Outcome::Negotiated { alter, accepted }),
        Step::Fault {
            call_id,
            status,
            why,
        } => {
            return Ok(Outcome::Fault {
                call_id,
                status,
                why,
            });
        }
        Step::Activate(a) => a,
    };
    let (call_id, ctx, syntax) = (act.call_id, act.context_id, act.syntax);
    let kms_bytes = match rpc_request::decode_stub(act.stub, syntax) {
        Ok(b) => b,
        Err(error) => {
            rpc_request::encode_fault(call_id, ctx, status::BAD_STUB_DATA, out);
            return Ok(Outcome::BadStub { call_id, error });
        }
    };
    let request = match kms::decode_request(kms_bytes) {
        Ok(r) => r,
        Err(error) => {
            rpc_request::encode_error(call_id, ctx, syntax, error.hresult(), out);
            return Ok(Outcome::Invalid {
                call_id,
                syntax,
                error,
            });
        }
    };
    match decide(&request) {
        Decision::Refuse { hresult, why } => {
            rpc_request::encode_error(call_id, ctx, syntax, hresult, out);
            Ok(Outcome::Refused {
                call_id,
                context_id: ctx,
                syntax,
                request,
                hresult,
                why,
            })
        }
        Decision::Answer(answer) => {
            let rnd = ResponseRandom::draw(rng);
            rpc_request::encode_response(call_id, ctx, syntax, out, |o| {
                kms::encode_response(&request, &answer, &rnd, o);
            });
            Ok(Outcome::Answered {
                call_id,
                context_id: ctx,
                syntax,
                request,
                count: answer.count,
            })
        }
    }
}
