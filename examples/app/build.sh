#!/bin/sh
# Builds the example service: one rustc call, no dependencies.
# It runs in a lease's sandbox as the lease's user, with the agent's PATH:
# first make sure that user can run a rustc, and say exactly why not.
set -e
who=$(id -un 2>/dev/null || id -u)
if ! rustc_path=$(command -v rustc); then
    echo "build.sh: no rustc on PATH for user $who (PATH=$PATH)." >&2
    echo "  Install one every user can run (Debian: apt install rustc), or start the" >&2
    echo "  agent with --run-as PRINCIPAL=USER for a user whose PATH has one." >&2
    exit 3
fi
if ! version=$(rustc --version 2>&1); then
    echo "build.sh: $rustc_path does not run for user $who: $version" >&2
    echo "  A rustup proxy needs a default toolchain (rustup default stable) in a" >&2
    echo "  ~/.rustup this user can read; a toolchain under a 0700 /root is not." >&2
    echo "  Install Debian's rustc, or start the agent with --run-as PRINCIPAL=root." >&2
    exit 3
fi
echo "building with $version ($rustc_path) as $who"
mkdir -p out
rustc -O --edition 2021 -o out/hello hello.rs
