# Sourced by the GPU scripts: finds NVRTC and cuBLAS on a CUDA host (the toolkit's
# lib folder, else the pip wheels beside torch) and sets OUT.
OUT=${OUT:-/tmp/warp-bitnet-out}
mkdir -p "$OUT"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  [ -d "$d" ] && export LD_LIBRARY_PATH=$d:${LD_LIBRARY_PATH:-}
done
