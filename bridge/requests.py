"""The bridge's sign request: what a mint (or pause) proposal carries in ``SignParams.client_request``.

A wallet sign session carries the wallet client's signed request (``signer/requests.py``); a bridge
session carries *this* instead, so that every participant's authorize hook can tell the two apart
and check a bridge session against its own chain view rather than against a wallet policy. There
is no client signature here on purpose: nobody's authority makes a node co-sign a mint — only its
own view of the chains does (``bridge/mint_policy.py``). The request only says *which* order the
digest claims to be, so the participant can rebuild the digest and compare.

Encoding (canonical, one byte string per request)::

    TAG ‖ kind(u8) ‖ body

* ``TAG = b"FPBRIDGE"``. A serialised wallet ``SignedRequest`` (protobuf) can never start with it:
  its first byte ``0x46`` would be field 8 with wire type 6, which protobuf does not have.
* kind ``1`` (mint): ``MintOrder.to_bytes()``.
* kind ``2`` (pause): ``destination chain id (u64) ‖ gateway (20) ‖ unpauseCount (u256) ‖ deadline
  (u256) ‖ reason length (u16) ‖ reason (UTF-8, ≤ 512 bytes)``. The reason is for the audit log of
  every participant; it is not part of the signed digest.
* kind ``3`` (Bitcoin payout input): ``input index (u16) ‖ the payout proposal`` (the whole unsigned
  transaction with what every participant needs to rebuild it, ``bridge/payouts.py``). The digest
  is that input's BIP143 sighash and the path the spent coin's derivation path: a participant
  rebuilds the whole transaction before it co-signs any one input of it.
* kind ``4`` (refund): ``RefundOrder.to_bytes()`` — the Gateway's ``RefundBurn``.
* kind ``5`` (EVM payout): ``evm_withdrawal.EvmProposal.to_bytes()`` (payout, replacement, gap
  filler or sweep, with the unsigned transaction); the digest is the transaction's signing hash.
* kind ``6`` (reserve attestation): ``u8 len ‖ chain ‖ u8 n ‖ n × u32 path ‖ u8 len ‖ challenge chain ‖
  u64 challenge height ‖ challenge hash (32)``; the digest is ``reserves.attestation_digest`` of the
  address *the participant derives itself* at that path: a tagged hash, never a transaction.

:func:`decode` accepts only what :func:`encode` produces.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusion_prime.protocol.addresses import keccak256

from .orders import MintOrder, OrderError, RefundOrder, address_bytes, checksum_address, domain_separator

TAG = b"FPBRIDGE"
KIND_MINT = 1
KIND_PAUSE = 2
KIND_BTC_PAYOUT = 3
KIND_REFUND = 4
KIND_EVM_PAYOUT = 5
KIND_ATTESTATION = 6
MAX_PROPOSAL = 1 << 20  # a 100-input, 100-output payout is ~ 20 kB; anything near this is abuse
MAX_REASON = 512
PAUSE_TYPE = "Pause(uint256 unpauseCount,uint256 deadline)"
PAUSE_TYPEHASH = keccak256(PAUSE_TYPE.encode())


class BridgeRequestError(ValueError):
    """Bytes that claim to be a bridge request but are not a canonical one."""


@dataclass(frozen=True)
class MintRequest:
    """Sign this mint order (the digest is the order's EIP-712 digest on the node's Gateway)."""

    order: MintOrder


@dataclass(frozen=True)
class PauseRequest:
    """Sign ``Pause(unpauseCount, deadline)`` for the Gateway at ``gateway`` on ``chain_id``."""

    chain_id: int
    gateway: str
    unpause_count: int
    deadline: int
    reason: str = ""

    def digest(self) -> bytes:
        struct = keccak256(PAUSE_TYPEHASH + self.unpause_count.to_bytes(32, "big") + self.deadline.to_bytes(32, "big"))
        return keccak256(b"\x19\x01" + domain_separator(self.gateway, self.chain_id) + struct)


@dataclass(frozen=True)
class PayoutInputRequest:
    """Sign input ``input_index`` of the Bitcoin payout ``proposal`` (opaque here; the authorize
    hook decodes and rebuilds it)."""

    input_index: int
    proposal: bytes


@dataclass(frozen=True)
class RefundRequest:
    """Sign this ``RefundBurn`` (the digest is its EIP-712 digest on the node's Gateway)."""

    order: RefundOrder


@dataclass(frozen=True)
class EvmPayoutRequest:
    """Sign the EVM transaction described by ``proposal`` (opaque here; see ``bridge/evm_payouts.py``)."""

    proposal: bytes


@dataclass(frozen=True)
class AttestationRequest:
    """Sign the proof-of-reserves attestation of the group's address at ``path`` on ``chain``,
    against the destination-chain block (``challenge_chain``, ``challenge_height``, ``challenge_hash``)."""

    chain: str
    path: tuple[int, ...]
    challenge_chain: str
    challenge_height: int
    challenge_hash: bytes


BridgeRequest = (MintRequest | PauseRequest | PayoutInputRequest | RefundRequest | EvmPayoutRequest
                 | AttestationRequest)


def is_bridge_request(raw: bytes) -> bool:
    """Whether ``raw`` claims to be a bridge request (then it must decode, or the proposal is refused)."""
    return bytes(raw[: len(TAG)]) == TAG


def encode(request: BridgeRequest) -> bytes:
    if isinstance(request, MintRequest):
        return TAG + bytes([KIND_MINT]) + request.order.to_bytes()
    if isinstance(request, PauseRequest):
        reason = request.reason.encode()[:MAX_REASON]
        return (TAG + bytes([KIND_PAUSE]) + request.chain_id.to_bytes(8, "big")
                + address_bytes(request.gateway, "gateway") + request.unpause_count.to_bytes(32, "big")
                + request.deadline.to_bytes(32, "big") + len(reason).to_bytes(2, "big") + reason)
    if isinstance(request, PayoutInputRequest):
        if not 0 <= request.input_index < 1 << 16 or not 0 < len(request.proposal) <= MAX_PROPOSAL:
            raise BridgeRequestError("payout input index or proposal size out of range")
        return TAG + bytes([KIND_BTC_PAYOUT]) + request.input_index.to_bytes(2, "big") + request.proposal
    if isinstance(request, RefundRequest):
        return TAG + bytes([KIND_REFUND]) + request.order.to_bytes()
    if isinstance(request, EvmPayoutRequest):
        if not 0 < len(request.proposal) <= MAX_PROPOSAL:
            raise BridgeRequestError("EVM payout proposal size out of range")
        return TAG + bytes([KIND_EVM_PAYOUT]) + request.proposal
    if isinstance(request, AttestationRequest):
        chain, cchain = request.chain.encode("ascii"), request.challenge_chain.encode("ascii")
        if (not 0 < len(chain) < 256 or not 0 < len(cchain) < 256 or len(request.path) > 32
                or not all(0 <= i < 2**31 for i in request.path) or len(request.challenge_hash) != 32
                or not 0 <= request.challenge_height < 2**64):
            raise BridgeRequestError("attestation request out of range")
        return (TAG + bytes([KIND_ATTESTATION, len(chain)]) + chain + bytes([len(request.path)])
                + b"".join(i.to_bytes(4, "big") for i in request.path) + bytes([len(cchain)]) + cchain
                + request.challenge_height.to_bytes(8, "big") + request.challenge_hash)
    raise TypeError(f"not a bridge request: {request!r}")


def _decode_attestation(body: bytes) -> AttestationRequest:
    try:
        pos = 0
        n = body[pos]
        chain = body[pos + 1:pos + 1 + n].decode("ascii")
        pos += 1 + n
        k = body[pos]
        path = tuple(int.from_bytes(body[pos + 1 + 4 * i:pos + 5 + 4 * i], "big") for i in range(k))
        pos += 1 + 4 * k
        m = body[pos]
        cchain = body[pos + 1:pos + 1 + m].decode("ascii")
        pos += 1 + m
        height = int.from_bytes(body[pos:pos + 8], "big")
        block = body[pos + 8:pos + 40]
        if len(block) != 32 or pos + 40 != len(body):
            raise BridgeRequestError("attestation request has a wrong length")
    except (IndexError, UnicodeDecodeError):
        raise BridgeRequestError("attestation request does not decode") from None
    return AttestationRequest(chain, path, cchain, height, bytes(block))


def decode(raw: bytes) -> BridgeRequest:
    """The request in ``raw``; :class:`BridgeRequestError` for anything :func:`encode` cannot produce."""
    raw = bytes(raw)
    if not is_bridge_request(raw) or len(raw) < len(TAG) + 1:
        raise BridgeRequestError("not a bridge request")
    kind, body = raw[len(TAG)], raw[len(TAG) + 1:]
    try:
        if kind == KIND_MINT:
            request: BridgeRequest = MintRequest(MintOrder.from_bytes(body))
        elif kind == KIND_PAUSE:
            if len(body) < 8 + 20 + 32 + 32 + 2:
                raise BridgeRequestError("pause request too short")
            n = int.from_bytes(body[92:94], "big")
            if len(body) != 94 + n or n > MAX_REASON:
                raise BridgeRequestError("pause request has a wrong length")
            request = PauseRequest(chain_id=int.from_bytes(body[:8], "big"),
                                   gateway=checksum_address(body[8:28], "gateway"),
                                   unpause_count=int.from_bytes(body[28:60], "big"),
                                   deadline=int.from_bytes(body[60:92], "big"),
                                   reason=body[94:].decode("utf-8"))
        elif kind == KIND_BTC_PAYOUT:
            if len(body) < 3 or len(body) - 2 > MAX_PROPOSAL:
                raise BridgeRequestError("payout request has a wrong length")
            request = PayoutInputRequest(int.from_bytes(body[:2], "big"), body[2:])
        elif kind == KIND_REFUND:
            request = RefundRequest(RefundOrder.from_bytes(body))
        elif kind == KIND_EVM_PAYOUT:
            if not 0 < len(body) <= MAX_PROPOSAL:
                raise BridgeRequestError("EVM payout request has a wrong length")
            request = EvmPayoutRequest(body)
        elif kind == KIND_ATTESTATION:
            request = _decode_attestation(body)
        else:
            raise BridgeRequestError(f"unknown bridge request kind {kind}")
    except (OrderError, UnicodeDecodeError) as exc:
        raise BridgeRequestError(str(exc)) from None
    if encode(request) != raw:
        raise BridgeRequestError("non-canonical bridge request")
    return request
