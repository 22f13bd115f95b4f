# Sourced by the bench/gpu_*.sh scripts on a GPU machine (no Rust there):
# unpacks the carried binary (target/gpu/keel.xz) into $KEEL, puts the
# pip-installed NVIDIA libraries (nvrtc: cubecl compiles kernels at run
# time) on LD_LIBRARY_PATH, makes $OUT and records the card in it.
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
KEEL=/tmp/keel-bin
xz -dc target/gpu/keel.xz > "$KEEL" && chmod +x "$KEEL"
if ! "$KEEL" --version; then
    ldd --version | head -1; ldd "$KEEL"; exit 1
fi
LIBS=$(python3 -c 'import glob,os,site
for d in site.getsitepackages():
    for p in glob.glob(os.path.join(d,"nvidia","*","lib")): print(p)' 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
