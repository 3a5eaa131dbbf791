//! The host side of one RPC connection as a state machine over whole PDUs:
//! bind and alter_context negotiate presentation contexts, requests on an
//! accepted context become activation calls, everything else is refused with
//! a fault or ends the connection.

use super::bind::{self, Bind, BindPolicy, ContextResult};
use super::pdu::{Header, MAX_PDU_LEN, PduError, flags, ptype};
use super::request::{self, decode_call};
use super::{Syntax, status};

/// Most presentation contexts one connection may hold.
pub const MAX_CONTEXTS: usize = 16;

/// An activation call the host must answer (with
/// [`request::encode_response`] or [`request::encode_error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activation<'a> {
    pub call_id: u32,
    pub context_id: u16,
    pub syntax: Syntax,
    /// The stub; [`request::decode_stub`] yields the KMS bytes.
    pub stub: &'a [u8],
}

/// What one PDU led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// A bind_ack / alter_context_resp was written; `accepted` contexts are usable.
    Negotiated { alter: bool, accepted: usize },
    /// A fault was written; the connection stays open.
    Fault {
        call_id: u32,
        status: u32,
        why: &'static str,
    },
    /// An activation call to answer.
    Activate(Activation<'a>),
}

/// Per-connection RPC state.
#[derive(Debug, Clone)]
pub struct Session {
    policy: BindPolicy,
    port: u16,
    assoc_group: u32,
    contexts: Vec<(u16, Syntax)>,
    bound: bool,
}

impl Session {
    /// `port` is the listening port the bind_ack names; `assoc_group` the
    /// non-zero association group this connection gets.
    pub fn new(policy: BindPolicy, port: u16, assoc_group: u32) -> Self {
        Self {
            policy,
            port,
            assoc_group: assoc_group.max(1),
            contexts: Vec::new(),
            bound: false,
        }
    }

    /// The syntax negotiated for `context_id`, if any.
    pub fn context(&self, context_id: u16) -> Option<Syntax> {
        self.contexts
            .iter()
            .find(|(id, _)| *id == context_id)
            .map(|&(_, s)| s)
    }

    /// Handles one complete PDU (exactly frag_length bytes), writing any
    /// answer to `out`. An error means the connection must close.
    pub fn handle<'a>(&mut self, pdu: &'a [u8], out: &mut Vec<u8>) -> Result<Step<'a>, PduError> {
        let header = Header::peek(pdu, MAX_PDU_LEN)?
            .ok_or_else(|| PduError::malformed("PDU", "shorter than a header"))?;
        self.handle_parsed(header, pdu, out)
    }

    /// [`Session::handle`] for a PDU whose `header` the framing already
    /// parsed (and bounded) with [`Header::peek`].
    pub fn handle_parsed<'a>(
        &mut self,
        header: Header,
        pdu: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Result<Step<'a>, PduError> {
        if usize::from(header.frag_len) != pdu.len() {
            return Err(PduError::malformed(
                "PDU",
                format!("frag_length {} but {} bytes", header.frag_len, pdu.len()),
            ));
        }
        match header.ptype {
            ptype::BIND | ptype::ALTER_CONTEXT => {
                if header.flags & flags::FIRST_LAST != flags::FIRST_LAST {
                    return Err(PduError::Fragmented(header.flags));
                }
                let alter = header.ptype == ptype::ALTER_CONTEXT;
                if alter && !self.bound {
                    return Err(PduError::malformed("alter_context", "sent before any bind"));
                }
                let b = Bind::decode(header, pdu)?;
                if !alter {
                    self.contexts.clear();
                }
                let results = self.record(&b, bind::negotiate(&b.items, self.policy));
                self.bound = true;
                let group = if b.assoc_group != 0 {
                    b.assoc_group
                } else {
                    self.assoc_group
                };
                let port = (!alter).then_some(self.port);
                bind::encode_ack(&b, &results, group, port, out);
                Ok(Step::Negotiated {
                    alter,
                    accepted: results.iter().filter(|r| r.accepted.is_some()).count(),
                })
            }
            ptype::REQUEST => {
                if header.flags & flags::FIRST_LAST != flags::FIRST_LAST {
                    return Err(PduError::Fragmented(header.flags));
                }
                let call = decode_call(header, pdu)?;
                let mut fault = |status, why| {
                    request::encode_fault(call.call_id, call.context_id, status, out);
                    Ok(Step::Fault {
                        call_id: call.call_id,
                        status,
                        why,
                    })
                };
                if header.auth_len != 0 {
                    return fault(
                        status::PROTOCOL_ERROR,
                        "authenticated request on an anonymous interface",
                    );
                }
                let Some(syntax) = self.context(call.context_id) else {
                    return fault(
                        status::UNKNOWN_INTERFACE,
                        "request on a context that was not accepted",
                    );
                };
                if call.opnum != 0 {
                    return fault(status::OP_RANGE_ERROR, "operation number out of range");
                }
                Ok(Step::Activate(Activation {
                    call_id: call.call_id,
                    context_id: call.context_id,
                    syntax,
                    stub: call.stub,
                }))
            }
            other => Err(PduError::UnexpectedType(other)),
        }
    }

    /// Remembers accepted contexts, refusing (local limit) any past the cap.
    fn record(&mut self, b: &Bind, mut results: Vec<ContextResult>) -> Vec<ContextResult> {
        for (item, res) in b.items.iter().zip(results.iter_mut()) {
            let Some(syntax) = res.accepted else { continue };
            if let Some(slot) = self.contexts.iter_mut().find(|(id, _)| *id == item.id) {
                slot.1 = syntax;
            } else if self.contexts.len() < MAX_CONTEXTS {
                self.contexts.push((item.id, syntax));
            } else {
                *res = ContextResult {
                    result: 2,
                    reason: 3,
                    accepted: None,
                };
            }
        }
        results
    }
}
