#!/bin/sh
# Builds the example service: one rustc call, no dependencies.
set -e
mkdir -p out
rustc -O --edition 2021 -o out/hello hello.rs
