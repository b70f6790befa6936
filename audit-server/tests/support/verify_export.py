#!/usr/bin/env python3
"""Re-verify an audit-server export (NDJSON, one event per line, chain order) without the server.

This is the recipe of the audit-server README ("Re-verifying an export"), written with Python's
standard library only: an implementation of RFC 8785 independent of the server's Rust code.
Usage: verify_export.py EXPORT.ndjson [CHECKPOINT.json]
Prints "verified N" or the first broken link (exit 1). With a signed checkpoint, the export must
contain its head (sequence and hash), and the bytes its signature covers (the canonical form of the
checkpoint without `signature`) are written to CHECKPOINT.json.signed for `openssl pkeyutl -verify`.
"""
import hashlib
import json
import math
import sys


def jcs_number(x):
    """ECMAScript Number.prototype.toString of a double, from Python's shortest repr digits."""
    f = float(x)
    if not math.isfinite(f):
        raise ValueError(f"not a finite number: {x!r}")
    if f == 0:
        return "0"
    sign = "-" if f < 0 else ""
    mant, _, exp = repr(abs(f)).partition("e")
    whole, _, frac = mant.partition(".")
    digits = (whole + frac).lstrip("0")
    e10 = (int(exp) if exp else 0) - len(frac)  # value = int(digits) * 10**e10
    while digits.endswith("0"):
        digits, e10 = digits[:-1], e10 + 1
    k = len(digits)
    n = k + e10  # value = 0.digits * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        text = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + text


def jcs(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return jcs_number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + jcs(v[k]) for k in keys) + "}"
    raise TypeError(f"not JSON: {v!r}")


def main(path, checkpoint=None):
    cp = None
    if checkpoint:
        with open(checkpoint, encoding="utf-8") as f:
            cp = json.load(f)
        with open(checkpoint + ".signed", "w", encoding="utf-8") as f:
            f.write(jcs({k: v for k, v in cp.items() if k != "signature"}))
    hashes = {0: "GENESIS"}
    prev, count = "GENESIS", 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            e = json.loads(line)
            body = {k: v for k, v in e.items() if k not in ("hash", "previousHash")}
            digest = hashlib.sha256((jcs(body) + prev).encode("utf-8")).hexdigest()
            if e["previousHash"] != prev or digest != e["hash"] or e["sequence"] != count + 1:
                print(f"broken at sequence {e.get('sequence')}: canonical body {jcs(body)}")
                return 1
            prev, count = e["hash"], count + 1
            hashes[count] = prev
    if cp is not None and hashes.get(cp["sequence"]) != cp["hash"]:
        print(f"checkpoint at {cp['sequence']} not matched: export has {count} events")
        return 1
    print(f"verified {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
