#!/usr/bin/env python3
"""Checks that the crate's dependencies resolve within its declared minimum Rust versions.

Only one toolchain can be installed here, so the MSRV cannot be compiled against. Instead:
resolve the dependencies as a user on the MSRV would (Cargo's MSRV-aware resolver), and check
that every library the crate builds on, per feature, declares a `rust-version` no newer than the
one promised for that feature. The crate's own code is held to `rust-version` by clippy's
`incompatible_msrv` lint.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATE_MSRV = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["rust-version"]
# Features whose dependencies need a newer Rust than the crate; keep in step with the README.
FEATURE_MSRV = {"postgres": "1.94", "sqlite": "1.94", "cli": "1.94", "utoipa": "1.88"}


def version(text):
    parts = [int(part) for part in (text or "0").split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def newest_requirements(workdir, features):
    metadata = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--filter-platform",
         "x86_64-unknown-linux-gnu", *features],
        cwd=workdir, check=True, capture_output=True, text=True).stdout)
    packages = {package["id"]: package for package in metadata["packages"]}
    nodes = {node["id"]: node for node in metadata["resolve"]["nodes"]}
    seen, stack = set(), [metadata["resolve"]["root"]]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for dep in nodes[node]["deps"]:
            # Normal and build dependencies only: dev-dependencies are not the user's.
            if any(kind["kind"] in (None, "build") for kind in dep["dep_kinds"]):
                stack.append(dep["pkg"])
    return sorted(((version(packages[i].get("rust_version")), packages[i]["name"],
                    packages[i]["version"]) for i in seen), reverse=True)


def main():
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "crate"
        shutil.copytree(ROOT, workdir, ignore=shutil.ignore_patterns("target", ".git", "fuzz"))
        subprocess.run(["cargo", "generate-lockfile", "--quiet"], cwd=workdir, check=True,
                       env={**os.environ,
                            "CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS": "fallback"})
        for feature in ["axum", "cache", "redis", "postgres", "sqlite", "rate-limit", "cli", "testing", "metrics", "utoipa", "secret-scanning"]:
            promised = FEATURE_MSRV.get(feature, CRATE_MSRV)
            needed, name, ver = newest_requirements(workdir, ["--features", feature])[0]
            ok = needed <= version(promised)
            failed |= not ok
            print(f"feature {feature:8} promised Rust {promised:5}  newest need: {name} {ver} "
                  f"(Rust {'.'.join(map(str, needed))})  {'ok' if ok else 'TOO NEW'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
