from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DepositAddressRequest(_message.Message):
    __slots__ = ("destination_chain", "recipient", "source_chain", "asset")
    DESTINATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    destination_chain: str
    recipient: str
    source_chain: str
    asset: str
    def __init__(self, destination_chain: _Optional[str] = ..., recipient: _Optional[str] = ..., source_chain: _Optional[str] = ..., asset: _Optional[str] = ...) -> None: ...

class ConfirmationRule(_message.Message):
    __slots__ = ("min_confirmations", "max_confirmations", "value_per_block")
    MIN_CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    VALUE_PER_BLOCK_FIELD_NUMBER: _ClassVar[int]
    min_confirmations: int
    max_confirmations: int
    value_per_block: str
    def __init__(self, min_confirmations: _Optional[int] = ..., max_confirmations: _Optional[int] = ..., value_per_block: _Optional[str] = ...) -> None: ...

class DepositAddressResponse(_message.Message):
    __slots__ = ("address", "path", "public_key", "source_chain", "asset", "destination_chain", "recipient", "minimum_deposit", "confirmations", "wrapped_token", "already_registered")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_DEPOSIT_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    address: str
    path: str
    public_key: bytes
    source_chain: str
    asset: str
    destination_chain: str
    recipient: str
    minimum_deposit: str
    confirmations: ConfirmationRule
    wrapped_token: str
    already_registered: bool
    def __init__(self, address: _Optional[str] = ..., path: _Optional[str] = ..., public_key: _Optional[bytes] = ..., source_chain: _Optional[str] = ..., asset: _Optional[str] = ..., destination_chain: _Optional[str] = ..., recipient: _Optional[str] = ..., minimum_deposit: _Optional[str] = ..., confirmations: _Optional[_Union[ConfirmationRule, _Mapping]] = ..., wrapped_token: _Optional[str] = ..., already_registered: _Optional[bool] = ...) -> None: ...

class DepositStatus(_message.Message):
    __slots__ = ("deposit_id", "state", "asset", "source_chain", "txid", "vout", "address", "amount", "recipient", "destination_chain", "block_hash", "height", "confirmations", "required_confirmations", "order_digest", "order_json", "order_signature", "mint_tx", "minted_block", "reason", "updated_at")
    DEPOSIT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    VOUT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    ORDER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ORDER_JSON_FIELD_NUMBER: _ClassVar[int]
    ORDER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    MINT_TX_FIELD_NUMBER: _ClassVar[int]
    MINTED_BLOCK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    deposit_id: bytes
    state: str
    asset: str
    source_chain: str
    txid: str
    vout: int
    address: str
    amount: str
    recipient: str
    destination_chain: str
    block_hash: str
    height: int
    confirmations: int
    required_confirmations: int
    order_digest: bytes
    order_json: str
    order_signature: bytes
    mint_tx: str
    minted_block: int
    reason: str
    updated_at: float
    def __init__(self, deposit_id: _Optional[bytes] = ..., state: _Optional[str] = ..., asset: _Optional[str] = ..., source_chain: _Optional[str] = ..., txid: _Optional[str] = ..., vout: _Optional[int] = ..., address: _Optional[str] = ..., amount: _Optional[str] = ..., recipient: _Optional[str] = ..., destination_chain: _Optional[str] = ..., block_hash: _Optional[str] = ..., height: _Optional[int] = ..., confirmations: _Optional[int] = ..., required_confirmations: _Optional[int] = ..., order_digest: _Optional[bytes] = ..., order_json: _Optional[str] = ..., order_signature: _Optional[bytes] = ..., mint_tx: _Optional[str] = ..., minted_block: _Optional[int] = ..., reason: _Optional[str] = ..., updated_at: _Optional[float] = ...) -> None: ...

class Outpoint(_message.Message):
    __slots__ = ("source_chain", "txid", "vout")
    SOURCE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    VOUT_FIELD_NUMBER: _ClassVar[int]
    source_chain: str
    txid: str
    vout: int
    def __init__(self, source_chain: _Optional[str] = ..., txid: _Optional[str] = ..., vout: _Optional[int] = ...) -> None: ...

class GetDepositRequest(_message.Message):
    __slots__ = ("deposit_id", "outpoint")
    DEPOSIT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPOINT_FIELD_NUMBER: _ClassVar[int]
    deposit_id: bytes
    outpoint: Outpoint
    def __init__(self, deposit_id: _Optional[bytes] = ..., outpoint: _Optional[_Union[Outpoint, _Mapping]] = ...) -> None: ...

class ListDepositsRequest(_message.Message):
    __slots__ = ("address", "recipient", "destination_chain", "page_size", "page_token")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    address: str
    recipient: str
    destination_chain: str
    page_size: int
    page_token: bytes
    def __init__(self, address: _Optional[str] = ..., recipient: _Optional[str] = ..., destination_chain: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[bytes] = ...) -> None: ...

class ListDepositsResponse(_message.Message):
    __slots__ = ("deposits", "next_page_token")
    DEPOSITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deposits: _containers.RepeatedCompositeFieldContainer[DepositStatus]
    next_page_token: bytes
    def __init__(self, deposits: _Optional[_Iterable[_Union[DepositStatus, _Mapping]]] = ..., next_page_token: _Optional[bytes] = ...) -> None: ...

class WatchDepositsRequest(_message.Message):
    __slots__ = ("deposit_id", "address")
    DEPOSIT_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    deposit_id: bytes
    address: str
    def __init__(self, deposit_id: _Optional[bytes] = ..., address: _Optional[str] = ...) -> None: ...

class DepositUpdate(_message.Message):
    __slots__ = ("deposit", "current", "event_seq", "event")
    DEPOSIT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    deposit: DepositStatus
    current: bool
    event_seq: int
    event: str
    def __init__(self, deposit: _Optional[_Union[DepositStatus, _Mapping]] = ..., current: _Optional[bool] = ..., event_seq: _Optional[int] = ..., event: _Optional[str] = ...) -> None: ...

class WithdrawalStatus(_message.Message):
    __slots__ = ("burn_id", "burn_nonce", "asset", "source_chain", "burner", "amount", "destination", "state", "txid", "confirmations", "required_confirmations", "refund_tx", "reason", "updated_at", "burn_tx", "burn_block")
    BURN_ID_FIELD_NUMBER: _ClassVar[int]
    BURN_NONCE_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    BURNER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    REFUND_TX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    BURN_TX_FIELD_NUMBER: _ClassVar[int]
    BURN_BLOCK_FIELD_NUMBER: _ClassVar[int]
    burn_id: bytes
    burn_nonce: int
    asset: str
    source_chain: str
    burner: str
    amount: str
    destination: bytes
    state: str
    txid: str
    confirmations: int
    required_confirmations: int
    refund_tx: str
    reason: str
    updated_at: float
    burn_tx: str
    burn_block: int
    def __init__(self, burn_id: _Optional[bytes] = ..., burn_nonce: _Optional[int] = ..., asset: _Optional[str] = ..., source_chain: _Optional[str] = ..., burner: _Optional[str] = ..., amount: _Optional[str] = ..., destination: _Optional[bytes] = ..., state: _Optional[str] = ..., txid: _Optional[str] = ..., confirmations: _Optional[int] = ..., required_confirmations: _Optional[int] = ..., refund_tx: _Optional[str] = ..., reason: _Optional[str] = ..., updated_at: _Optional[float] = ..., burn_tx: _Optional[str] = ..., burn_block: _Optional[int] = ...) -> None: ...

class ProveReservesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProveReservesResponse(_message.Message):
    __slots__ = ("report_json",)
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    def __init__(self, report_json: _Optional[str] = ...) -> None: ...

class GetWithdrawalRequest(_message.Message):
    __slots__ = ("burn_id",)
    BURN_ID_FIELD_NUMBER: _ClassVar[int]
    burn_id: bytes
    def __init__(self, burn_id: _Optional[bytes] = ...) -> None: ...

class ListWithdrawalsRequest(_message.Message):
    __slots__ = ("burner", "limit")
    BURNER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    burner: str
    limit: int
    def __init__(self, burner: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListWithdrawalsResponse(_message.Message):
    __slots__ = ("withdrawals",)
    WITHDRAWALS_FIELD_NUMBER: _ClassVar[int]
    withdrawals: _containers.RepeatedCompositeFieldContainer[WithdrawalStatus]
    def __init__(self, withdrawals: _Optional[_Iterable[_Union[WithdrawalStatus, _Mapping]]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChainHead(_message.Message):
    __slots__ = ("chain", "height", "block_hash", "updated_at")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    chain: str
    height: int
    block_hash: str
    updated_at: float
    def __init__(self, chain: _Optional[str] = ..., height: _Optional[int] = ..., block_hash: _Optional[str] = ..., updated_at: _Optional[float] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("source_chain", "asset", "destination_chain")
    SOURCE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    source_chain: str
    asset: str
    destination_chain: str
    def __init__(self, source_chain: _Optional[str] = ..., asset: _Optional[str] = ..., destination_chain: _Optional[str] = ...) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("serving", "node", "schema_version", "event_seq", "chains", "routes", "errata")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    ERRATA_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    node: str
    schema_version: int
    event_seq: int
    chains: _containers.RepeatedCompositeFieldContainer[ChainHead]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    errata: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, serving: _Optional[bool] = ..., node: _Optional[str] = ..., schema_version: _Optional[int] = ..., event_seq: _Optional[int] = ..., chains: _Optional[_Iterable[_Union[ChainHead, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., errata: _Optional[_Iterable[bytes]] = ...) -> None: ...
