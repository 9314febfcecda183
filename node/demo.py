"""`make demo`: a 2-of-3 CGGMP21 network doing real work, end to end.

Three parties generate a key together (nobody ever holds the private key), generate and prove
their Paillier/ring-Pedersen parameters, presign, and sign; the signature is checked by two
verifiers that share no code with the protocol: libsecp256k1 (coincurve) and eth-account's
public-key recovery. Runs at the default 128-bit level unless ``--level test-2048`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
import time

from coincurve import PublicKey
from eth_account import Account

from ..protocol.addresses import ethereum_address, p2wpkh_address
from ..protocol.aux_info import AuxInfoMachine
from ..protocol.hd import derive
from ..protocol.identity import PartyIdentity
from ..protocol.keygen import KeygenMachine
from ..protocol.levels import level_by_name
from ..protocol.presign import PresignMachine
from ..protocol.runner import run_in_process
from ..protocol.sign import SignMachine


def _phase(name: str, machines: dict) -> dict:  # type: ignore[type-arg]
    start = time.perf_counter()
    out = run_in_process(machines)
    elapsed = time.perf_counter() - start
    if len(out) != len(machines):
        failed = {i: m.abort for i, m in machines.items() if m.abort}
        raise SystemExit(f"{name} failed: {failed}")
    print(f"  {name:<24} {elapsed:8.3f} s  ({len(machines)} parties, in process)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--level", default="128", help="security level name (default 128)")
    parser.add_argument("--message", default="Fusion Prime demo", help="text whose SHA-256 is signed")
    parser.add_argument("--path", default="m/0/7", help="BIP32 path of the signing key")
    args = parser.parse_args(argv)
    level = level_by_name(args.level)
    parties = [1, 2, 3]
    ids = {i: PartyIdentity.generate() for i in parties}
    roster = {i: k.public_key for i, k in ids.items()}
    print(f"Fusion Prime demo: 2-of-3 threshold ECDSA (CGGMP21), level {level.name}, "
          f"Paillier {level.paillier_bits} bits")

    sid = secrets.token_bytes(32)
    shares = _phase("key generation", {i: KeygenMachine(sid, i, parties, ids[i], roster, threshold=2, level=level)
                                       for i in parties})
    sid = secrets.token_bytes(32)
    aux = _phase("aux info (primes+proofs)", {i: AuxInfoMachine(sid, i, parties, ids[i], roster, level=level)
                                              for i in parties})
    signers = [1, 3]
    sid = secrets.token_bytes(32)
    pre = _phase("presign (signers 1, 3)", {i: PresignMachine(sid, i, signers, ids[i], roster,
                                                              key_share=shares[i], aux_info=aux[i]) for i in signers})
    digest = hashlib.sha256(args.message.encode()).digest()
    sid = secrets.token_bytes(32)
    sigs = _phase("sign (online)", {i: SignMachine(sid, i, signers, ids[i], roster, key_share=shares[i],
                                                   presignature=pre[i], digest=digest, path=args.path)
                                    for i in signers})
    share = shares[1]
    child = derive(share.group_key, share.chain_code, args.path).public_key
    sig = sigs[1]
    print()
    print(f"  group key              {share.group_key.to_bytes().hex()}")
    print(f"  Ethereum address       {ethereum_address(share.group_key)}")
    print(f"  Bitcoin regtest        {p2wpkh_address(share.group_key, 'regtest')}")
    print(f"  signing key {args.path:<10} {ethereum_address(child)}  /  {p2wpkh_address(child, 'regtest')}")
    print(f"  digest                 sha256({args.message!r}) = {digest.hex()}")
    print(f"  signature              r={sig.r:064x}")
    print(f"                         s={sig.s:064x}  v={sig.recovery_id}")
    ok_secp = PublicKey(child.to_bytes()).verify(sig.to_der(), digest, hasher=None)
    recovered = Account._recover_hash(digest, vrs=(27 + sig.recovery_id, sig.r, sig.s))
    ok_eth = recovered == ethereum_address(child)
    print(f"  libsecp256k1 verify    {'OK' if ok_secp else 'FAILED'}")
    print(f"  eth-account recovery   {recovered} {'OK' if ok_eth else 'FAILED'}")
    return 0 if ok_secp and ok_eth else 1


if __name__ == "__main__":
    sys.exit(main())
