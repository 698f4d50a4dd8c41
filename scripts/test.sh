#!/usr/bin/env bash
# Runs every test that this machine can run, from a fresh checkout: Rust formatting,
# clippy, the Rust tests, the NVRTC compile check of every kernel for sm_80, sm_89
# and sm_90a (NVRTC comes from PyPI; no CUDA toolkit or GPU needed), and the Python
# package's tests.
# GPU tests are marked #[ignore = "needs a CUDA GPU"]; run them on a GPU host with
#   cargo test --release -- --include-ignored
set -euo pipefail
cd "$(dirname "$0")/.."

# NVRTC 13.0 from PyPI, cached under target/ (git-ignored).
nvrtc_dir=target/pypi-nvrtc
if [ ! -f "$nvrtc_dir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$nvrtc_dir" 'nvidia-cuda-nvrtc==13.0.*'
fi
export LD_LIBRARY_PATH="$PWD/$nvrtc_dir/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# With NVRTC installed above, the kernel compile test must run, never skip.
export WARP_BITNET_REQUIRE_NVRTC=1

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
cargo test --release --workspace

# Python package: build the abi3 wheel (no CUDA toolkit needed), install it with
# torch (CPU use; GPU tests are marked `gpu` and skip without a device), run pytest.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'torch==2.11.*' 'maturin>=1.7,<2' 'pytest>=8' 'ruff==0.17.*' 'transformers>=5,<6' 'mypy==1.*' 'openai>=1'
python3 -m ruff check --quiet python examples scripts
python3 -m ruff format --check --quiet python examples scripts
rm -rf target/wheels
python3 -m maturin build --release --quiet -o target/wheels
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --force-reinstall --no-deps target/wheels/warp_bitnet-*.whl
# The native module's type stubs must match what it exports.
python3 -m mypy.stubtest warp_bitnet._native
# From the repository root, so that `import warp_bitnet` finds the installed wheel.
python3 -m pytest -q -p no:cacheprovider -W ignore::UserWarning python/tests
