#!/usr/bin/env python3
"""Fails when a package in Cargo.lock declares a `rust-version` newer than the
workspace's, so the MSRV in Cargo.toml stays true for what the lock file
builds. Only the newest stable toolchain is installed here, so the MSRV is
not compiled against; this check and clippy's `incompatible_msrv` lint
(standard library items newer than `rust-version`) stand in for it.

    cargo metadata --format-version 1 --locked | python3 scripts/check-msrv.py
"""

import json
import sys


def version(text):
    return tuple(int(part) for part in text.split("."))[:3] + (0,) * (3 - len(text.split(".")))


def main():
    metadata = json.load(sys.stdin)
    members = set(metadata["workspace_members"])
    ours = {p["rust_version"] for p in metadata["packages"] if p["id"] in members and p.get("rust_version")}
    if len(ours) != 1:
        sys.exit(f"workspace crates declare {len(ours)} different rust-versions: {sorted(ours)}")
    msrv = ours.pop()
    newer = [
        f"{p['name']} {p['version']} needs Rust {p['rust_version']}"
        for p in metadata["packages"]
        if p.get("rust_version") and version(p["rust_version"]) > version(msrv)
    ]
    if newer:
        sys.exit(f"dependencies newer than the MSRV {msrv}:\n  " + "\n  ".join(sorted(newer)))
    print(f"MSRV {msrv}: no package in the lock file declares a newer rust-version")


if __name__ == "__main__":
    main()
