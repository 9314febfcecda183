from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitRequest(_message.Message):
    __slots__ = ("instruction", "wait_ms")
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    instruction: bytes
    wait_ms: int
    def __init__(self, instruction: _Optional[bytes] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class SubmitManyRequest(_message.Message):
    __slots__ = ("instructions", "wait_ms")
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    instructions: _containers.RepeatedScalarFieldContainer[bytes]
    wait_ms: int
    def __init__(self, instructions: _Optional[_Iterable[bytes]] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class SubmitManyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitResponse, _Mapping]]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("kind", "accepted", "reason", "ref", "duplicate", "batch_seq")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    kind: str
    accepted: bool
    reason: str
    ref: bytes
    duplicate: bool
    batch_seq: int
    def __init__(self, kind: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., ref: _Optional[bytes] = ..., duplicate: _Optional[bool] = ..., batch_seq: _Optional[int] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("client", "issued_at_ms", "what", "ref", "signature")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    client: bytes
    issued_at_ms: int
    what: str
    ref: bytes
    signature: bytes
    def __init__(self, client: _Optional[bytes] = ..., issued_at_ms: _Optional[int] = ..., what: _Optional[str] = ..., ref: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AccountDepositRequest(_message.Message):
    __slots__ = ("party", "asset")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    party: bytes
    asset: str
    def __init__(self, party: _Optional[bytes] = ..., asset: _Optional[str] = ...) -> None: ...

class AccountDepositResponse(_message.Message):
    __slots__ = ("address", "source_chain")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    address: str
    source_chain: str
    def __init__(self, address: _Optional[str] = ..., source_chain: _Optional[str] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("asset", "balance", "held", "available")
    ASSET_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    asset: str
    balance: str
    held: str
    available: str
    def __init__(self, asset: _Optional[str] = ..., balance: _Optional[str] = ..., held: _Optional[str] = ..., available: _Optional[str] = ...) -> None: ...

class BalancesResponse(_message.Message):
    __slots__ = ("balances", "batch_seq", "open_cycle")
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    OPEN_CYCLE_FIELD_NUMBER: _ClassVar[int]
    balances: _containers.RepeatedCompositeFieldContainer[Balance]
    batch_seq: int
    open_cycle: int
    def __init__(self, balances: _Optional[_Iterable[_Union[Balance, _Mapping]]] = ..., batch_seq: _Optional[int] = ..., open_cycle: _Optional[int] = ...) -> None: ...

class Leg(_message.Message):
    __slots__ = ("party", "asset", "quantity")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    party: bytes
    asset: str
    quantity: str
    def __init__(self, party: _Optional[bytes] = ..., asset: _Optional[str] = ..., quantity: _Optional[str] = ...) -> None: ...

class TradeStatus(_message.Message):
    __slots__ = ("trade_id", "status", "mode", "legs", "affirmed", "deadline_ms", "cycle", "note", "batch_seq", "reference", "rolled")
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LEGS_FIELD_NUMBER: _ClassVar[int]
    AFFIRMED_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    CYCLE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    ROLLED_FIELD_NUMBER: _ClassVar[int]
    trade_id: bytes
    status: str
    mode: str
    legs: _containers.RepeatedCompositeFieldContainer[Leg]
    affirmed: _containers.RepeatedScalarFieldContainer[bytes]
    deadline_ms: int
    cycle: int
    note: str
    batch_seq: int
    reference: str
    rolled: int
    def __init__(self, trade_id: _Optional[bytes] = ..., status: _Optional[str] = ..., mode: _Optional[str] = ..., legs: _Optional[_Iterable[_Union[Leg, _Mapping]]] = ..., affirmed: _Optional[_Iterable[bytes]] = ..., deadline_ms: _Optional[int] = ..., cycle: _Optional[int] = ..., note: _Optional[str] = ..., batch_seq: _Optional[int] = ..., reference: _Optional[str] = ..., rolled: _Optional[int] = ...) -> None: ...

class TradesResponse(_message.Message):
    __slots__ = ("trades",)
    TRADES_FIELD_NUMBER: _ClassVar[int]
    trades: _containers.RepeatedCompositeFieldContainer[TradeStatus]
    def __init__(self, trades: _Optional[_Iterable[_Union[TradeStatus, _Mapping]]] = ...) -> None: ...

class WithdrawalStatus(_message.Message):
    __slots__ = ("withdrawal_id", "asset", "amount", "destination_chain", "destination", "status", "txid", "note")
    WITHDRAWAL_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    withdrawal_id: bytes
    asset: str
    amount: str
    destination_chain: str
    destination: str
    status: str
    txid: str
    note: str
    def __init__(self, withdrawal_id: _Optional[bytes] = ..., asset: _Optional[str] = ..., amount: _Optional[str] = ..., destination_chain: _Optional[str] = ..., destination: _Optional[str] = ..., status: _Optional[str] = ..., txid: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class WithdrawalsResponse(_message.Message):
    __slots__ = ("withdrawals",)
    WITHDRAWALS_FIELD_NUMBER: _ClassVar[int]
    withdrawals: _containers.RepeatedCompositeFieldContainer[WithdrawalStatus]
    def __init__(self, withdrawals: _Optional[_Iterable[_Union[WithdrawalStatus, _Mapping]]] = ...) -> None: ...

class CycleReport(_message.Message):
    __slots__ = ("cycle", "json", "csv")
    CYCLE_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    CSV_FIELD_NUMBER: _ClassVar[int]
    cycle: int
    json: str
    csv: str
    def __init__(self, cycle: _Optional[int] = ..., json: _Optional[str] = ..., csv: _Optional[str] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("cycle",)
    CYCLE_FIELD_NUMBER: _ClassVar[int]
    cycle: int
    def __init__(self, cycle: _Optional[int] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("cycle", "checkpoint", "signature", "json", "published_tx")
    CYCLE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_TX_FIELD_NUMBER: _ClassVar[int]
    cycle: int
    checkpoint: bytes
    signature: bytes
    json: str
    published_tx: str
    def __init__(self, cycle: _Optional[int] = ..., checkpoint: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., json: _Optional[str] = ..., published_tx: _Optional[str] = ...) -> None: ...

class ProofResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("node_id", "after", "limit", "wait_ms", "time_ms", "signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    after: int
    limit: int
    wait_ms: int
    time_ms: int
    signature: bytes
    def __init__(self, node_id: _Optional[str] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ..., wait_ms: _Optional[int] = ..., time_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("batches", "head")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedScalarFieldContainer[bytes]
    head: int
    def __init__(self, batches: _Optional[_Iterable[bytes]] = ..., head: _Optional[int] = ...) -> None: ...
