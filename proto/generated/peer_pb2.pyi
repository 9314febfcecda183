from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("session_id", "phase", "round", "sender", "receiver", "broadcast", "epoch", "sequence", "payload", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    phase: str
    round: int
    sender: str
    receiver: str
    broadcast: bool
    epoch: int
    sequence: int
    payload: bytes
    signature: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., phase: _Optional[str] = ..., round: _Optional[int] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., broadcast: _Optional[bool] = ..., epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("status", "reason")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[Ack.Status]
        ACCEPTED: _ClassVar[Ack.Status]
        BUFFERED: _ClassVar[Ack.Status]
        DUPLICATE: _ClassVar[Ack.Status]
        REJECTED: _ClassVar[Ack.Status]
    STATUS_UNSPECIFIED: Ack.Status
    ACCEPTED: Ack.Status
    BUFFERED: Ack.Status
    DUPLICATE: Ack.Status
    REJECTED: Ack.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: Ack.Status
    reason: str
    def __init__(self, status: _Optional[_Union[Ack.Status, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class KeygenParams(_message.Message):
    __slots__ = ("threshold", "level")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    threshold: int
    level: str
    def __init__(self, threshold: _Optional[int] = ..., level: _Optional[str] = ...) -> None: ...

class AuxInfoParams(_message.Message):
    __slots__ = ("level",)
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: str
    def __init__(self, level: _Optional[str] = ...) -> None: ...

class PresignParams(_message.Message):
    __slots__ = ("key_id", "aux_id", "epoch")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    AUX_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    key_id: bytes
    aux_id: bytes
    epoch: int
    def __init__(self, key_id: _Optional[bytes] = ..., aux_id: _Optional[bytes] = ..., epoch: _Optional[int] = ...) -> None: ...

class SignParams(_message.Message):
    __slots__ = ("key_id", "presignature_id", "digest", "path", "client_request")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PRESIGNATURE_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    key_id: bytes
    presignature_id: bytes
    digest: bytes
    path: _containers.RepeatedScalarFieldContainer[int]
    client_request: bytes
    def __init__(self, key_id: _Optional[bytes] = ..., presignature_id: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., path: _Optional[_Iterable[int]] = ..., client_request: _Optional[bytes] = ...) -> None: ...

class OpaqueParams(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class SessionProposal(_message.Message):
    __slots__ = ("session_id", "phase", "coordinator", "participants", "nonce", "round_deadline_ms", "expires_at_ms", "keygen", "aux_info", "presign", "sign", "opaque", "signature", "client_request")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ROUND_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    KEYGEN_FIELD_NUMBER: _ClassVar[int]
    AUX_INFO_FIELD_NUMBER: _ClassVar[int]
    PRESIGN_FIELD_NUMBER: _ClassVar[int]
    SIGN_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    phase: str
    coordinator: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    nonce: bytes
    round_deadline_ms: int
    expires_at_ms: int
    keygen: KeygenParams
    aux_info: AuxInfoParams
    presign: PresignParams
    sign: SignParams
    opaque: OpaqueParams
    signature: bytes
    client_request: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., phase: _Optional[str] = ..., coordinator: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., nonce: _Optional[bytes] = ..., round_deadline_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., keygen: _Optional[_Union[KeygenParams, _Mapping]] = ..., aux_info: _Optional[_Union[AuxInfoParams, _Mapping]] = ..., presign: _Optional[_Union[PresignParams, _Mapping]] = ..., sign: _Optional[_Union[SignParams, _Mapping]] = ..., opaque: _Optional[_Union[OpaqueParams, _Mapping]] = ..., signature: _Optional[bytes] = ..., client_request: _Optional[bytes] = ...) -> None: ...

class ProposalReply(_message.Message):
    __slots__ = ("accepted", "reason", "node_id", "refusal")
    class Refusal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REFUSAL_UNSPECIFIED: _ClassVar[ProposalReply.Refusal]
        PRESIGNATURE_CONSUMED: _ClassVar[ProposalReply.Refusal]
        PRESIGNATURE_UNKNOWN: _ClassVar[ProposalReply.Refusal]
        NOT_PRESIGNATURE_LEADER: _ClassVar[ProposalReply.Refusal]
        POOL_QUARANTINED: _ClassVar[ProposalReply.Refusal]
    REFUSAL_UNSPECIFIED: ProposalReply.Refusal
    PRESIGNATURE_CONSUMED: ProposalReply.Refusal
    PRESIGNATURE_UNKNOWN: ProposalReply.Refusal
    NOT_PRESIGNATURE_LEADER: ProposalReply.Refusal
    POOL_QUARANTINED: ProposalReply.Refusal
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    node_id: str
    refusal: ProposalReply.Refusal
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., node_id: _Optional[str] = ..., refusal: _Optional[_Union[ProposalReply.Refusal, str]] = ...) -> None: ...

class SessionWithdrawal(_message.Message):
    __slots__ = ("session_id", "coordinator", "reason", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    coordinator: str
    reason: str
    signature: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., coordinator: _Optional[str] = ..., reason: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("node_id", "status", "active_sessions", "version", "phases")
    class ServingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SERVING_STATUS_UNSPECIFIED: _ClassVar[HealthReply.ServingStatus]
        SERVING: _ClassVar[HealthReply.ServingStatus]
        DRAINING: _ClassVar[HealthReply.ServingStatus]
    SERVING_STATUS_UNSPECIFIED: HealthReply.ServingStatus
    SERVING: HealthReply.ServingStatus
    DRAINING: HealthReply.ServingStatus
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    status: HealthReply.ServingStatus
    active_sessions: int
    version: str
    phases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., status: _Optional[_Union[HealthReply.ServingStatus, str]] = ..., active_sessions: _Optional[int] = ..., version: _Optional[str] = ..., phases: _Optional[_Iterable[str]] = ...) -> None: ...

class PresignatureQuery(_message.Message):
    __slots__ = ("presignature_ids",)
    PRESIGNATURE_IDS_FIELD_NUMBER: _ClassVar[int]
    presignature_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, presignature_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PresignatureStates(_message.Message):
    __slots__ = ("node_id", "states")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[PresignatureStates.State]
        AVAILABLE: _ClassVar[PresignatureStates.State]
        RESERVED: _ClassVar[PresignatureStates.State]
        CONSUMED: _ClassVar[PresignatureStates.State]
        UNKNOWN: _ClassVar[PresignatureStates.State]
    STATE_UNSPECIFIED: PresignatureStates.State
    AVAILABLE: PresignatureStates.State
    RESERVED: PresignatureStates.State
    CONSUMED: PresignatureStates.State
    UNKNOWN: PresignatureStates.State
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    states: _containers.RepeatedScalarFieldContainer[PresignatureStates.State]
    def __init__(self, node_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[PresignatureStates.State, str]]] = ...) -> None: ...

class CertificateQuery(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    def __init__(self, session_id: _Optional[bytes] = ...) -> None: ...

class CertificateReply(_message.Message):
    __slots__ = ("node_id", "certificate")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    certificate: bytes
    def __init__(self, node_id: _Optional[str] = ..., certificate: _Optional[bytes] = ...) -> None: ...
