from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedRequest(_message.Message):
    __slots__ = ("body", "signature", "approvals")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approver_public_key", "signature")
    APPROVER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    approver_public_key: bytes
    signature: bytes
    def __init__(self, approver_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("request_id", "key_id", "group_public_key", "threshold", "parties")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    key_id: bytes
    group_public_key: bytes
    threshold: int
    parties: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., key_id: _Optional[bytes] = ..., group_public_key: _Optional[bytes] = ..., threshold: _Optional[int] = ..., parties: _Optional[_Iterable[str]] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("key_id", "group_public_key", "threshold", "parties", "epoch", "label", "presignatures_available")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRESIGNATURES_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    key_id: bytes
    group_public_key: bytes
    threshold: int
    parties: _containers.RepeatedScalarFieldContainer[str]
    epoch: int
    label: str
    presignatures_available: int
    def __init__(self, key_id: _Optional[bytes] = ..., group_public_key: _Optional[bytes] = ..., threshold: _Optional[int] = ..., parties: _Optional[_Iterable[str]] = ..., epoch: _Optional[int] = ..., label: _Optional[str] = ..., presignatures_available: _Optional[int] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class PublicKeyResponse(_message.Message):
    __slots__ = ("public_key", "ethereum_address", "bitcoin_address", "path")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ETHEREUM_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BITCOIN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    ethereum_address: str
    bitcoin_address: str
    path: str
    def __init__(self, public_key: _Optional[bytes] = ..., ethereum_address: _Optional[str] = ..., bitcoin_address: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("request_id", "r", "s", "recovery_id", "public_key", "replayed")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    R_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    r: bytes
    s: bytes
    recovery_id: int
    public_key: bytes
    replayed: bool
    def __init__(self, request_id: _Optional[str] = ..., r: _Optional[bytes] = ..., s: _Optional[bytes] = ..., recovery_id: _Optional[int] = ..., public_key: _Optional[bytes] = ..., replayed: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("request_id", "client_public_key")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    client_public_key: bytes
    def __init__(self, request_id: _Optional[str] = ..., client_public_key: _Optional[bytes] = ...) -> None: ...

class StatusUpdate(_message.Message):
    __slots__ = ("request_id", "state", "detail", "culprits", "phase")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CULPRITS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: str
    detail: str
    culprits: _containers.RepeatedScalarFieldContainer[str]
    phase: str
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ..., culprits: _Optional[_Iterable[str]] = ..., phase: _Optional[str] = ...) -> None: ...
