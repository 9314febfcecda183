"""One module per zero-knowledge proof of CGGMP21 (eprint 2021/060), each with `prove` and `verify`.

Figure numbers. Every "Fig. N" in ``protocol`` follows the numbering of the eprint 2021/060
revisions *before* the 2024-10-21 revision (the ones current in 2022-2023, whose presigning is
the three-round Π^enc / Π^aff-g / Π^log* protocol implemented here). The paper's text itself was
not available when these citations were checked: each number below is the one that public
implementations of that numbering cite for the same construct, and the numbers agree across
them (entropyxyz/synedrion before it moved to the 2024-10-21 revision, "Section X, Fig. N";
boltlabs-inc/tss-ecdsa, "Implements the ZKP from Figure N"; Safeheron's CMP code, "Section X
(Figure N)" or only "Section X" — marked (§) below where it gives the section alone).

    Fig. 5   key generation                        keygen            synedrion
    Fig. 6   auxiliary info & key refresh          aux_info, refresh synedrion, ZenGo-X fs-dkr
    Fig. 7   presigning                            presign           synedrion
    Fig. 8   signing                               sign              synedrion
    Fig. 14  Π^enc   (§6.1)                        zk.enc            synedrion, tss-ecdsa, Safeheron (§)
    Fig. 15  Π^aff-g (§6.2)                        zk.aff_g          synedrion, tss-ecdsa, Safeheron (§)
    Fig. 16  Π^mod   (§6.3)                        zk.mod            synedrion, tss-ecdsa, Safeheron
    Fig. 17  Π^prm   (§6.4)                        zk.prm            synedrion, tss-ecdsa, Safeheron (§)
    Fig. 22  Π^sch   (App. C.1)                    zk.sch            synedrion, tss-ecdsa, Safeheron (§)
    Fig. 25  Π^log*  (App. C.2)                    zk.log_star       synedrion, tss-ecdsa, Safeheron (§)
    Fig. 28  Π^fac   (App. C.5)                    zk.fac            synedrion, tss-ecdsa
    Fig. 29  Π^mul   (App. C.6)                    zk.mul            synedrion, Safeheron
    Fig. 30  Π^dec   (App. C.6)                    zk.dec            synedrion, Safeheron
    Fig. 31  Π^mul*  (App. C.6)                    zk.mul_star       synedrion, Safeheron
    ?        Π^aff-p (App. C)                      zk.aff_p          no source found that numbers it

The latest revision, 2024-10-21, is not the reference: its presigning uses El-Gamal commitments,
its numbering differs (per synedrion's notes on it: key refresh Fig. 7, presigning Fig. 8,
Π^mod Fig. 12, Π^prm Fig. 13, Π^aff-g Fig. 25, Π^fac Fig. 26 without the public σ, Π^sch still
Fig. 22), its Π^dec (Fig. 28) is a different proof (decryption in the exponent), and no source
found locates this package's Π^enc, Π^log*, Π^mul, Π^mul* or Π^aff-p in it.
"""
