#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets from the captured vectors.

    python3 fuzz/seed_corpus.py            # from the repository root

Seeds (file name = what it came from; identical contents written once):
  rpc_pdu/       every PDU of every capture (both directions) and every
                 probe chunk of tests/vectors/vlmcsd_edge_case_probes.json
  codec_chunks/  every client stream and probe stream, behind a few chunkings
  kms_request/   every KMS request of index.json (valid, wrong version, short)
  conn_state/    every client stream and probe stream behind a config byte
  round_trip/    each captured request's fields in the layout the target reads

The committed corpus is these seeds plus what `cargo fuzz cmin` kept of a
run; re-running this script only adds files.
"""

import hashlib
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
CORPUS = ROOT / "fuzz" / "corpus"


def split_pdus(stream):
    out, at = [], 0
    while at + 10 <= len(stream):
        n = struct.unpack_from("<H", stream, at + 8)[0]
        if n < 16 or at + n > len(stream):
            break
        out.append(stream[at : at + n])
        at += n
    return out


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:12]
    for existing in d.iterdir():
        if existing.read_bytes() == data:
            return
    (d / f"{name}-{digest}").write_bytes(data)


def main():
    index = json.loads((VECTORS / "index.json").read_text())
    probes = json.loads((VECTORS / "vlmcsd_edge_case_probes.json").read_text())["probes"]

    streams = {}
    for s in index["scenarios"]:
        name = s["name"]
        c2s = (VECTORS / s["files"]["client_to_server"]).read_bytes()
        s2c = (VECTORS / s["files"]["server_to_client"]).read_bytes()
        streams[name] = c2s
        for i, pdu in enumerate(split_pdus(c2s)):
            write("rpc_pdu", f"{name}-c2s{i}", pdu)
        for i, pdu in enumerate(split_pdus(s2c)):
            write("rpc_pdu", f"{name}-s2c{i}", pdu)
        for x in s["kms_exchanges"]:
            req = bytes.fromhex(x["kms_request_hex"])
            write("kms_request", f"{name}-call{x['call_id']}", req)
            # round_trip reads: version byte, the base fields after the
            # version, raw-workstation flag, workstation, IV, ePID length and
            # text, HwId, count and intervals, randoms, tamper position.
            major = struct.unpack_from("<H", req, 2)[0]
            base = req[:236] if major == 4 else None
            if base is not None:
                iv = bytes(16)
            else:
                iv = req[4:20]
                base = bytes(4) + bytes(232)  # encrypted: fields unknown
            epid = b"03612-00206-556-123727-03-1033-17763.0000-2972018"
            seed = (
                bytes([major - 4])
                + base[4:108]
                + b"\x01"
                + base[108:236]
                + iv
                + bytes([len(epid) - 1])
                + epid
                + bytes.fromhex("3a1c049600b60076")
                + struct.pack("<III", 25, 120, 10080)
                + bytes(range(32))
                + b"\x05\x00\x01"
            )
            write("round_trip", f"{name}-call{x['call_id']}", seed)

    probe_streams = {}
    for name, p in probes.items():
        c2s = b"".join(bytes.fromhex(c["hex"]) for c in p["chunks"] if c["dir"] == "c2s")
        probe_streams[name] = c2s
        for i, c in enumerate(p["chunks"]):
            write("rpc_pdu", f"probe-{name}-{c['dir']}{i}", bytes.fromhex(c["hex"]))
        for pdu in split_pdus(c2s):
            if pdu[2] == 0 and len(pdu) >= 32:
                kms = pdu[32:] if pdu[20] == 0 else pdu[40:]
                write("kms_request", f"probe-{name}", kms)

    for name, c2s in {**streams, **probe_streams}.items():
        write("conn_state", f"{name}-ndr64-btfn", b"\x03" + c2s)
        write("codec_chunks", f"{name}-bytewise", b"\x00" + c2s)
        write("codec_chunks", f"{name}-1-7-200", bytes([3, 1, 7, 200]) + c2s)
        write("codec_chunks", f"{name}-15-16-17", bytes([3, 15, 16, 17]) + c2s)
    for name in ["v6_win10", "v4_win7", "v5_win8"]:
        write("conn_state", f"{name}-ndr32only", b"\x00" + streams[name])
        write("conn_state", f"{name}-refuse", b"\x07" + streams[name])
        write("conn_state", f"{name}-nobtfn", b"\x01" + streams[name])


if __name__ == "__main__":
    main()
