#!/usr/bin/env bash
# Fetches what an aarch64 build and its run under emulation need, from Debian's archive only
# (rustup cannot download here), into .cache/aarch64 (or $EMBER_AARCH64_CACHE), once:
#   sid/          Debian sid's rustc with its x86-64 and aarch64 standard libraries (the same
#                 version), run through sid's own loader: sid's rustc needs a newer glibc than
#                 the host's. bin/rustc is the wrapper that cargo and maturin call (RUSTC);
#                 bin/clippy-driver (sid's rust-clippy, the same version) lints for aarch64
#                 (RUSTC_WORKSPACE_WRAPPER, as `cargo clippy` sets it).
#   sysroot/      an aarch64 root: sid's glibc and CPython 3.13 (+ venv, pip), for qemu's -L.
#   qemu/         bookworm's qemu-user-static (qemu-aarch64-static).
# Packages are unpacked with dpkg-deb -x; nothing is installed on the host. apt reads a private
# configuration and package lists under the cache folder. Prints the cache folder's path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${EMBER_AARCH64_CACHE:-$root/.cache/aarch64}"
# sid moves: these names follow its rustc 1.97 (libstd-rust-1.97, libllvm22). When sid moves on,
# apt says which package is gone; update the names here.
rustc_debs=(rustc rust-clippy libstd-rust-1.97 libstd-rust-dev libstd-rust-dev:arm64 libllvm22 libc6
    libgcc-s1 libstdc++6 libedit2 libffi8 libxml2-16 libz3-4 libzstd1 zlib1g libbsd0 libmd0 libtinfo6)
python_debs=(libc6:arm64 libgcc-s1:arm64 python3.13:arm64 python3.13-minimal:arm64
    libpython3.13-minimal:arm64 libpython3.13-stdlib:arm64 python3.13-venv:arm64 libexpat1:arm64
    zlib1g:arm64 libssl3t64:arm64 libbz2-1.0:arm64 libffi8:arm64 liblzma5:arm64 libsqlite3-0:arm64
    libuuid1:arm64 libzstd1:arm64 python3-pip-whl python3-setuptools-whl)
# The stamp names the packages: a cache fetched for another list is fetched again.
manifest="${rustc_debs[*]} ${python_debs[*]}"
if [[ -f "$cache/ready" && $(cat "$cache/ready") == "$manifest" ]]; then
    echo "$cache"
    exit 0
fi

rm -rf "$cache" && mkdir -p "$cache"/apt/{etc/preferences.d,etc/apt.conf.d,etc/sources.list.d,state/lists/partial,cache/archives/partial} "$cache"/debs/{rustc,python,qemu}
echo "deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" \
    >"$cache/apt/etc/sources.list"
touch "$cache/apt/state/status"
apt_opts=(-o "Dir::Etc=$cache/apt/etc" -o "Dir::State=$cache/apt/state" -o "Dir::State::status=$cache/apt/state/status"
    -o "Dir::Cache=$cache/apt/cache" -o APT::Architecture=amd64 -o APT::Architectures::=amd64
    -o APT::Architectures::=arm64 -o Debug::NoDropPrivs=true -o APT::Sandbox::User=root)
echo "fetching sid's package lists (amd64 + arm64) into $cache/apt" >&2
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$cache/debs/rustc" && apt-get "${apt_opts[@]}" download -qq "${rustc_debs[@]}" >&2)
(cd "$cache/debs/python" && apt-get "${apt_opts[@]}" download -qq "${python_debs[@]}" >&2)
# The emulator comes from the host's own release (its package lists are the system's).
(cd "$cache/debs/qemu" && apt-get -o APT::Sandbox::User=root download -qq qemu-user-static >&2)

for deb in "$cache"/debs/rustc/*.deb; do dpkg-deb -x "$deb" "$cache/sid"; done
for deb in "$cache"/debs/python/*.deb; do dpkg-deb -x "$deb" "$cache/sysroot"; done
dpkg-deb -x "$cache"/debs/qemu/*.deb "$cache/qemu"
# Merged /usr: the loader and libraries are looked up under /lib.
ln -sfn usr/lib "$cache/sysroot/lib"
ln -sfn usr/bin "$cache/sysroot/bin"
mkdir -p "$cache/bin"
cat >"$cache/bin/rustc" <<WRAP
#!/bin/sh
exec "$cache/sid/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$cache/sid/usr/lib/x86_64-linux-gnu" \\
    "$cache/sid/usr/bin/rustc" --sysroot "$cache/sid/usr" "\$@"
WRAP
cat >"$cache/bin/clippy-driver" <<WRAP
#!/bin/sh
exec "$cache/sid/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$cache/sid/usr/lib/x86_64-linux-gnu" \\
    "$cache/sid/usr/bin/clippy-driver" "\$@" --sysroot "$cache/sid/usr"
WRAP
chmod +x "$cache/bin/rustc" "$cache/bin/clippy-driver"
"$cache/bin/rustc" --version >&2
"$cache/bin/clippy-driver" --version >&2
"$cache/qemu/usr/bin/qemu-aarch64-static" -L "$cache/sysroot" "$cache/sysroot/usr/bin/python3.13" \
    -c "import platform, sys; print('aarch64 python', sys.version.split()[0], platform.machine())" >&2
rm -rf "$cache/debs" "$cache/apt/cache"
echo "$manifest" >"$cache/ready"
echo "$cache"
