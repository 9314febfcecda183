"""Bitcoin Core's relay policy (v28 defaults) and context-free consensus checks for transactions.

Consensus decides what may be mined; policy decides what a node relays and keeps in its mempool.
The bridge depends on the difference: a withdrawal that is *valid* but *non-standard* (high-S,
dust, too low a fee) will never reach a miner on the real network, so the devnet must refuse it
at ``sendrawtransaction`` exactly as bitcoind would, or tests would pass that production fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from .encoding import (
    MAX_MONEY,
    OP_CHECKMULTISIG,
    OP_CHECKSIG,
    DecodeError,
    TxoutType,
    is_low_der_signature,
    is_push_only,
    is_valid_der_signature_encoding,
    iter_script,
    solve,
    witness_program,
)
from .tx import Tx, TxOut

MAX_BLOCK_WEIGHT = 4_000_000
MAX_STANDARD_TX_WEIGHT = 400_000
MIN_STANDARD_TX_NONWITNESS_SIZE = 65
MAX_STANDARD_SCRIPTSIG_SIZE = 1650
MAX_OP_RETURN_RELAY = 83
MAX_STANDARD_TX_SIGOPS_COST = 16_000
MAX_BLOCK_SIGOPS_COST = 80_000
MAX_STANDARD_P2WSH_SCRIPT_SIZE = 3600
MAX_STANDARD_P2WSH_STACK_ITEMS = 100
MAX_STANDARD_P2WSH_STACK_ITEM_SIZE = 80
DEFAULT_MIN_RELAY_FEE = 1000  # sat/kvB (-minrelaytxfee)
DEFAULT_INCREMENTAL_RELAY_FEE = 1000  # sat/kvB
DUST_RELAY_FEE = 3000  # sat/kvB (-dustrelayfee)
DEFAULT_ANCESTOR_LIMIT = 25
DEFAULT_DESCENDANT_LIMIT = 25
MAX_REPLACEMENT_CANDIDATES = 100
COINBASE_MATURITY = 100
LOCKTIME_THRESHOLD = 500_000_000
SEQUENCE_LOCKTIME_DISABLE_FLAG = 1 << 31
SEQUENCE_LOCKTIME_TYPE_FLAG = 1 << 22
SEQUENCE_LOCKTIME_MASK = 0x0000FFFF
SEQUENCE_LOCKTIME_GRANULARITY = 9
MAX_BIP125_RBF_SEQUENCE = 0xFFFFFFFD


class TxValidationError(Exception):
    """A transaction rejected for ``reason`` (Core's reject-reason string).

    ``kind`` selects the RPC error: ``"missing-inputs"`` (-25), ``"already-in-chain"`` (-27),
    ``"consensus"`` or ``"policy"`` (-26).
    """

    def __init__(self, reason: str, kind: str = "policy", debug: str = "") -> None:
        super().__init__(reason + (f" ({debug})" if debug else ""))
        self.reason = reason
        self.kind = kind
        self.debug = debug


@dataclass(frozen=True)
class PolicySettings:
    """Node policy knobs (bitcoind's command-line options of the same names)."""

    min_relay_fee: int = DEFAULT_MIN_RELAY_FEE
    incremental_relay_fee: int = DEFAULT_INCREMENTAL_RELAY_FEE
    dust_relay_fee: int = DUST_RELAY_FEE
    full_rbf: bool = True  # Core 28 default; False enforces BIP125 opt-in signalling
    permit_bare_multisig: bool = True
    max_op_return: int = MAX_OP_RETURN_RELAY


def fee_for(feerate_per_kvb: int, vsize: int) -> int:
    """CFeeRate::GetFee: ceil-free integer fee as Core computes it (never zero for positive rates)."""
    fee = feerate_per_kvb * vsize // 1000
    if fee == 0 and vsize and feerate_per_kvb > 0:
        fee = 1
    return fee


def check_transaction(tx: Tx) -> None:
    """Consensus CheckTransaction: rules that need no chain context."""
    if not tx.vin:
        raise TxValidationError("bad-txns-vin-empty", "consensus")
    if not tx.vout:
        raise TxValidationError("bad-txns-vout-empty", "consensus")
    if len(tx.serialize(with_witness=False)) * 4 > MAX_BLOCK_WEIGHT:
        raise TxValidationError("bad-txns-oversize", "consensus")
    total = 0
    for out in tx.vout:
        if out.value < 0:
            raise TxValidationError("bad-txns-vout-negative", "consensus")
        if out.value > MAX_MONEY:
            raise TxValidationError("bad-txns-vout-toolarge", "consensus")
        total += out.value
        if total > MAX_MONEY:
            raise TxValidationError("bad-txns-txouttotal-toolarge", "consensus")
    if len({i.prevout for i in tx.vin}) != len(tx.vin):
        raise TxValidationError("bad-txns-inputs-duplicate", "consensus")
    if tx.is_coinbase():
        if not 2 <= len(tx.vin[0].script_sig) <= 100:
            raise TxValidationError("bad-cb-length", "consensus")
    elif any(i.prevout.is_null() for i in tx.vin):
        raise TxValidationError("bad-txns-prevout-null", "consensus")


def dust_threshold(out: TxOut, dust_relay_fee: int = DUST_RELAY_FEE) -> int:
    """GetDustThreshold: the value below which spending the output costs more than it is worth."""
    kind, _ = solve(out.script_pubkey)
    if kind == TxoutType.NULL_DATA or (out.script_pubkey[:1] == b"\x6a"):
        return 0
    size = len(out.serialize())
    if witness_program(out.script_pubkey) is not None:
        size += 32 + 4 + 1 + (107 // 4) + 4
    else:
        size += 32 + 4 + 1 + 107 + 4
    return fee_for(dust_relay_fee, size)


def is_standard_tx(tx: Tx, settings: PolicySettings) -> None:
    """IsStandardTx: version, size, scriptSig shape, output types, dust and OP_RETURN count."""
    if not 1 <= tx.version <= 2:
        raise TxValidationError("version")
    if tx.weight > MAX_STANDARD_TX_WEIGHT:
        raise TxValidationError("tx-size")
    for txin in tx.vin:
        if len(txin.script_sig) > MAX_STANDARD_SCRIPTSIG_SIZE:
            raise TxValidationError("scriptsig-size")
        if not is_push_only(txin.script_sig):
            raise TxValidationError("scriptsig-not-pushonly")
    n_data = 0
    for out in tx.vout:
        kind, sol = solve(out.script_pubkey)
        if kind == TxoutType.NONSTANDARD or kind == TxoutType.WITNESS_UNKNOWN:
            raise TxValidationError("scriptpubkey")
        if kind == TxoutType.NULL_DATA:
            if len(out.script_pubkey) > settings.max_op_return:
                raise TxValidationError("scriptpubkey")
            n_data += 1
        elif kind == TxoutType.MULTISIG:
            m, n = sol[0][0], sol[-1][0]
            if n < 1 or n > 3 or m < 1 or m > n:
                raise TxValidationError("scriptpubkey")
            if not settings.permit_bare_multisig:
                raise TxValidationError("bare-multisig")
        if kind != TxoutType.NULL_DATA and out.value < dust_threshold(out, settings.dust_relay_fee):
            raise TxValidationError("dust")
    if n_data > 1:
        raise TxValidationError("multi-op-return")
    if len(tx.serialize(with_witness=False)) < MIN_STANDARD_TX_NONWITNESS_SIZE:
        raise TxValidationError("tx-size-small")


def legacy_sigops(script: bytes, accurate: bool = False) -> int:
    """CScript::GetSigOpCount."""
    try:
        ops = iter_script(script)
    except DecodeError:
        ops = []
    count = 0
    last = 0xFF
    for op, _ in ops:
        if op in (OP_CHECKSIG, 0xAD):
            count += 1
        elif op in (OP_CHECKMULTISIG, 0xAF):
            count += (last - 0x50) if accurate and 0x51 <= last <= 0x60 else 20
        last = op
    return count


def sigop_cost(tx: Tx, prevouts: list[TxOut]) -> int:
    """GetTransactionSigOpCost for the script types the devnet relays."""
    cost = sum(legacy_sigops(i.script_sig) for i in tx.vin) + sum(legacy_sigops(o.script_pubkey) for o in tx.vout)
    cost *= 4
    if tx.is_coinbase():
        return cost
    for txin, prev in zip(tx.vin, prevouts, strict=True):
        spk = prev.script_pubkey
        kind, _ = solve(spk)
        if kind == TxoutType.SCRIPTHASH:
            pushes = _pushes(txin.script_sig)
            if pushes:
                redeem = pushes[-1]
                cost += 4 * legacy_sigops(redeem, accurate=True)
                spk = redeem
        wp = witness_program(spk)
        if wp is not None and wp[0] == 0:
            if len(wp[1]) == 20:
                cost += 1
            elif len(wp[1]) == 32 and txin.witness:
                cost += legacy_sigops(txin.witness[-1], accurate=True)
    return cost


def _pushes(script: bytes) -> list[bytes]:
    try:
        return [d for _, d in iter_script(script) if d is not None]
    except DecodeError:
        return []


def are_inputs_standard(tx: Tx, prevouts: list[TxOut]) -> None:
    """AreInputsStandard plus IsWitnessStandard."""
    for txin, prev in zip(tx.vin, prevouts, strict=True):
        kind, _ = solve(prev.script_pubkey)
        if kind in (TxoutType.NONSTANDARD, TxoutType.WITNESS_UNKNOWN):
            raise TxValidationError("bad-txns-nonstandard-inputs")
        spk = prev.script_pubkey
        if kind == TxoutType.SCRIPTHASH:
            pushes = _pushes(txin.script_sig)
            if not pushes or legacy_sigops(pushes[-1], accurate=True) > 15:
                raise TxValidationError("bad-txns-nonstandard-inputs")
            spk = pushes[-1]
        wp = witness_program(spk)
        if wp is None:
            if txin.witness:
                raise TxValidationError("bad-witness-nonstandard")
            continue
        version, prog = wp
        if version == 0 and len(prog) == 32:
            if not txin.witness or len(txin.witness[-1]) > MAX_STANDARD_P2WSH_SCRIPT_SIZE:
                raise TxValidationError("bad-witness-nonstandard")
            stack = txin.witness[:-1]
            if len(stack) > MAX_STANDARD_P2WSH_STACK_ITEMS or any(
                len(x) > MAX_STANDARD_P2WSH_STACK_ITEM_SIZE for x in stack
            ):
                raise TxValidationError("bad-witness-nonstandard")


def check_signature_policy(tx: Tx, prevouts: list[TxOut]) -> None:
    """The policy-only script flags Core adds to consensus: LOW_S, STRICTENC, WITNESS_PUBKEYTYPE.

    libbitcoinkernel exposes only consensus flags, so these checks are done here on every
    ECDSA signature the input reveals. Consensus accepts a high-S signature (it is still valid
    ECDSA); Core's mempool refuses it because anyone can flip S and change the wtxid.
    """
    for txin, prev in zip(tx.vin, prevouts, strict=True):
        spk = prev.script_pubkey
        kind, _ = solve(spk)
        stack_items: list[bytes] = _pushes(txin.script_sig)
        if kind == TxoutType.SCRIPTHASH and stack_items:
            spk = stack_items[-1]
            stack_items = stack_items[:-1]
        wp = witness_program(spk)
        if wp is not None and wp[0] == 0:
            stack_items = list(txin.witness)
            if len(wp[1]) == 20 and len(stack_items) == 2:
                if not (len(stack_items[1]) == 33 and stack_items[1][0] in (2, 3)):
                    raise TxValidationError(
                        "non-mandatory-script-verify-flag (Using non-compressed keys in segwit)")
            elif len(wp[1]) == 32:
                stack_items = stack_items[:-1]
        elif wp is not None:
            continue  # taproot: Schnorr signatures have no S malleability
        for item in stack_items:
            if not item:
                continue  # empty signature (e.g. CHECKMULTISIG dummy or deliberate failure)
            if 9 <= len(item) <= 73 and item[0] == 0x30:
                if not is_valid_der_signature_encoding(item):
                    raise TxValidationError("non-mandatory-script-verify-flag (Non-canonical DER signature)")
                if not is_low_der_signature(item):
                    raise TxValidationError(
                        "non-mandatory-script-verify-flag (Non-canonical signature: S value is unnecessarily high)")
                if item[-1] & ~0x80 not in (1, 2, 3):
                    raise TxValidationError("non-mandatory-script-verify-flag (Signature hash type missing or "
                                            "not understood)")


def signals_rbf(tx: Tx) -> bool:
    """BIP125 opt-in: any input with nSequence <= 0xfffffffd."""
    return any(i.sequence <= MAX_BIP125_RBF_SEQUENCE for i in tx.vin)


def is_final_tx(tx: Tx, block_height: int, block_time: int) -> bool:
    """IsFinalTx for a transaction in a block at ``block_height`` with median-time ``block_time``."""
    if tx.locktime == 0:
        return True
    limit = block_height if tx.locktime < LOCKTIME_THRESHOLD else block_time
    if tx.locktime < limit:
        return True
    return all(i.sequence == 0xFFFFFFFF for i in tx.vin)
