"""Put signed checkpoints on the destination chain: deploy the registry, publish, read it back.

The registry (``contracts/src/SettlementCheckpoints.sol``) trusts only the group signature, so
whoever sends the transaction is just a relayer paying gas: any node, or anyone holding the JSON
file. A sender is one of

* an address the endpoint holds (an anvil dev account, a node's unlocked account): ``str``;
* an eth-account ``LocalAccount`` (has ``sign_transaction``): built, signed locally, sent raw;
* a :class:`~fusion_prime.bridge.chains.evm.adapter.RemoteSignerAccount` (has ``send``): the
  threshold network signs the transaction.

Before anything is sent the call is estimated, which executes it: a checkpoint the registry would
refuse (not the next cycle, wrong ``prevRoot``, wrong signer) raises web3's
``ContractLogicError`` here instead of burning gas on a revert. :func:`publish_checkpoint` also
refuses a checkpoint signed for another chain or registry before asking the chain at all.
"""

from __future__ import annotations

from typing import Any

from web3 import Web3
from web3.logs import DISCARD

from ..chainview import artifact
from .checkpoint import CheckpointError, SignedCheckpoint

REGISTRY_ARTIFACT = "SettlementCheckpoints"


def registry_contract(w3: Web3, address: str) -> Any:
    """The registry at ``address`` with its committed ABI."""
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact(REGISTRY_ARTIFACT)["abi"])


def _send(w3: Web3, sender: Any, call: Any, to: str | None) -> str:
    """Send ``call`` (a contract function or constructor) from ``sender``; the 0x transaction hash."""
    if isinstance(sender, str):
        return Web3.to_hex(call.transact({"from": Web3.to_checksum_address(sender)}))
    address = Web3.to_checksum_address(sender.address)
    if hasattr(sender, "sign_transaction"):  # eth-account LocalAccount
        tx = call.build_transaction({"from": address, "nonce": w3.eth.get_transaction_count(address, "pending")})
        signed = sender.sign_transaction(tx)
        return Web3.to_hex(w3.eth.send_raw_transaction(signed.raw_transaction))
    if hasattr(sender, "send"):  # RemoteSignerAccount: it estimates gas and fees itself
        data = call.build_transaction({"from": address})["data"]  # estimation here surfaces a revert early
        return str(sender.send(to, data=Web3.to_bytes(hexstr=data) if isinstance(data, str) else bytes(data)))
    raise TypeError(f"unsupported sender {type(sender).__name__}: an address, a LocalAccount or a RemoteSignerAccount")


def deploy_registry(w3: Web3, gateway: str, genesis_root: bytes, deployer: Any) -> str:
    """Deploy ``SettlementCheckpoints(gateway, genesis_root)``, wait for it, return its EIP-55 address.

    ``genesis_root`` is cycle 1's ``prevRoot``: the nodes use :data:`.checkpoint.GENESIS_ROOT` (the empty
    ledger's root); another value (a ledger migrated with balances) must be what cycle 1 names."""
    if len(genesis_root) != 32 or not any(genesis_root):
        raise ValueError("genesis_root must be 32 non-zero bytes")
    art = artifact(REGISTRY_ARTIFACT)
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    tx_hash = _send(w3, deployer, factory.constructor(Web3.to_checksum_address(gateway), bytes(genesis_root)), None)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if int(receipt["status"]) != 1:
        raise RuntimeError(f"registry deployment {tx_hash} reverted")
    return Web3.to_checksum_address(receipt["contractAddress"])


def publish_checkpoint(w3: Web3, registry_address: str, signed: SignedCheckpoint, sender_account: Any) -> str:
    """Relay ``signed`` to the registry; returns the transaction hash (``0x…``) without waiting.

    Raises :class:`CheckpointError` if the checkpoint was signed for another chain or registry, and
    web3's ``ContractLogicError`` if the registry would refuse it now."""
    registry = registry_contract(w3, registry_address)
    if Web3.to_checksum_address(registry_address) != signed.registry:
        raise CheckpointError(f"checkpoint signed for registry {signed.registry}, not {registry.address}")
    chain_id = int(w3.eth.chain_id)
    if chain_id != signed.chain_id:
        raise CheckpointError(f"checkpoint signed for chain {signed.chain_id}, the endpoint is chain {chain_id}")
    call = registry.functions.publish(signed.checkpoint.as_tuple(), signed.signature)
    return _send(w3, sender_account, call, registry.address)


def registry_state(w3: Web3, registry_address: str) -> tuple[int, bytes]:
    """``(lastCycle, lastRoot)`` as the registry stores them now (the genesis root before cycle 1)."""
    registry = registry_contract(w3, registry_address)
    return int(registry.functions.lastCycle().call()), bytes(registry.functions.lastRoot().call())


def published_root(w3: Web3, registry_address: str, cycle: int) -> bytes | None:
    """Cycle ``cycle``'s published root, or ``None`` if that cycle is not published yet."""
    root = bytes(registry_contract(w3, registry_address).functions.rootOf(cycle).call())
    return root if any(root) else None


class CheckpointRelay:
    """The coordinator's link to the registry.

    The registry, not this node's database, says what is published: a relay can fail (no gas, the
    endpoint down, the node killed between signing and sending) and another relayer can publish a
    cycle first, so the coordinator asks :meth:`last_cycle` each pass and sends the cycles after it,
    in order (the registry takes only the next cycle - one cycle never relayed would stop every
    later one)."""

    def __init__(self, w3: Web3, registry_address: str, sender: Any) -> None:
        self.w3, self.address, self.sender = w3, Web3.to_checksum_address(registry_address), sender

    def last_cycle(self) -> int:
        return registry_state(self.w3, self.address)[0]

    def root_of(self, cycle: int) -> bytes | None:
        return published_root(self.w3, self.address, cycle)

    def publication_tx(self, cycle: int) -> str | None:
        """The transaction that published ``cycle`` (whoever relayed it), if the endpoint still
        serves its log; ``None`` if not."""
        try:
            logs = registry_contract(self.w3, self.address).events.CheckpointPublished().get_logs(
                argument_filters={"cycle": cycle}, from_block=0)
        except Exception:  # a pruned or range-limited endpoint: the root is what counts
            return None
        return Web3.to_hex(logs[0]["transactionHash"]) if logs else None

    def published_by(self, tx: str, cycle: int) -> bool:
        """Whether ``tx`` is mined, succeeded and published ``cycle`` at this registry: a relay of
        ours that was dropped, replaced or beaten by another relayer is not the publication."""
        try:
            receipt = self.w3.eth.get_transaction_receipt(tx)  # type: ignore[arg-type]
        except Exception:  # not mined (dropped or pending) or the endpoint forgot it
            return False
        if int(receipt["status"]) != 1:
            return False
        event = registry_contract(self.w3, self.address).events.CheckpointPublished()
        return any(Web3.to_checksum_address(e["address"]) == self.address and int(e["args"]["cycle"]) == cycle
                   for e in event.process_receipt(receipt, errors=DISCARD))

    def publish(self, signed: SignedCheckpoint) -> str:
        return publish_checkpoint(self.w3, self.address, signed, self.sender)
