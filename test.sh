#!/usr/bin/env bash
# The test command: `cargo test`, built with the `mpi` feature when Open MPI and its headers are
# installed (Debian's openmpi-bin and libopenmpi-dev, with libclang-dev for the bindings), so
# that the multi-process tests (tests/mpi.rs, under mpirun) run too; without them, every other
# test. Arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")"
if command -v mpirun > /dev/null && command -v mpicc > /dev/null; then
    exec cargo test --features mpi "$@"
fi
echo "note: Open MPI is not installed (openmpi-bin libopenmpi-dev libclang-dev): the MPI tests do not run" >&2
exec cargo test "$@"
