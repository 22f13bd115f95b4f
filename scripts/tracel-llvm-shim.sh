#!/usr/bin/env bash
# cubecl 0.11's CUDA runtime (like its CPU runtime) depends on cubecl-llvm,
# whose build script downloads an LLVM 23 bundle; offline that fails. This
# installs Debian's LLVM 22 and lays out the directory the bundler looks for
# (lib/include links, an llvm-config wrapper, the "installed" sentinel), so
# `cargo build --features cuda` builds without network. LLVM 22 standing in
# for 23 is experimental; only the CUDA build needs it.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
if ! [ -x /usr/lib/llvm-22/bin/llvm-config ]; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q llvm-22-dev libpolly-22-dev libzstd-dev
fi
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
DIR="$DATA/tracel/tracel-llvm-23.1.0-4"
mkdir -p "$DIR/bin"
ln -sfn /usr/lib/llvm-22/lib "$DIR/lib"
ln -sfn /usr/lib/llvm-22/include "$DIR/include"
cat > "$DIR/bin/llvm-config" <<'WRAP'
#!/usr/bin/env bash
# Debian's llvm-config names system libraries by path; the bundler wants -lNAME.
/usr/lib/llvm-22/bin/llvm-config "$@" | sed -E 's#/usr/lib/x86_64-linux-gnu/lib([A-Za-z0-9_+-]+)\.so#-l\1#g'
WRAP
chmod +x "$DIR/bin/llvm-config"
touch "$DIR/.tracel-llvm-installed"
echo "tracel LLVM shim ready at $DIR"
