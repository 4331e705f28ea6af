#!/usr/bin/env bash
# Fetches MySQL 8.0 for the MySQL / MariaDB plugin's tests:
#   tests/fetch-mysql8.sh DIR
# unpacks mysqld and the mysql client, with the libraries they need beyond
# glibc, libstdc++, OpenSSL, zstd and lz4, into DIR (DIR/usr/sbin/mysqld,
# DIR/usr/bin/mysql, DIR/usr/lib/x86_64-linux-gnu). Nothing is installed.
#
# Debian ships only MariaDB, and Oracle's download sites are not reachable
# from every CI; Ubuntu 22.04's MySQL 8.0 packages are, and they run on
# Debian 12 (glibc 2.35 <= 2.36). The newest version in jammy-updates (else
# jammy) is taken: the package index comes over HTTPS from
# archive.ubuntu.com, its SHA-256 is checked against the release file, and
# each package's against the index. (The release file's signature is not
# checked: Debian does not ship Ubuntu's archive keyring. Trust is HTTPS,
# as for pip and npm.)
set -euo pipefail
dir=${1:?usage: tests/fetch-mysql8.sh DIR}
[ "$(uname -m)" = x86_64 ] || { echo "fetch-mysql8: only x86_64 packages are fetched; install MySQL 8 and set LESSOR_MYSQL8_DIR" >&2; exit 1; }
for tool in curl dpkg-deb sha256sum gzip; do
  command -v "$tool" >/dev/null 2>&1 || { echo "fetch-mysql8: $tool is missing" >&2; exit 1; }
done
mirror=https://archive.ubuntu.com/ubuntu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The index of one suite, checked against its release file.
index() {
  local suite=$1
  curl -fsS --retry 3 -m 120 -o "$work/$suite.Release" "$mirror/dists/$suite/InRelease"
  curl -fsS --retry 3 -m 300 -o "$work/$suite.Packages.gz" "$mirror/dists/$suite/main/binary-amd64/Packages.gz"
  local want
  want=$(awk '/^SHA256:/{s=1; next} /^[A-Za-z]/{s=0} s && $3=="main/binary-amd64/Packages.gz"{print $1}' "$work/$suite.Release")
  [ -n "$want" ] || { echo "fetch-mysql8: no checksum for $suite's index in its release file" >&2; exit 1; }
  echo "$want  $work/$suite.Packages.gz" | sha256sum -c --quiet -
  gzip -dc "$work/$suite.Packages.gz" > "$work/$suite.Packages"
}
index jammy-updates
index jammy

# "Filename SHA256" of a package, from jammy-updates if there, else jammy.
locate() {
  local p=$1 suite r
  for suite in jammy-updates jammy; do
    r=$(awk -v p="$p" '
      /^Package: /{cur=$2; f=""; h=""}
      cur==p && /^Filename: /{f=$2}
      cur==p && /^SHA256: /{h=$2}
      /^$/{if (cur==p && f!="" && h!="") {print f, h; exit}}' "$work/$suite.Packages")
    [ -n "$r" ] && { echo "$r"; return; }
  done
  echo "fetch-mysql8: package $p is not in Ubuntu 22.04" >&2
  exit 1
}

mkdir -p "$work/root"
for p in mysql-server-core-8.0 mysql-client-core-8.0 libicu70 libprotobuf-lite23 libaio1 \
  libevent-core-2.1-7 libevent-pthreads-2.1-7 libmecab2 libnuma1 libtirpc3; do
  read -r file sha < <(locate "$p")
  deb="$work/$(basename "$file")"
  curl -fsS --retry 3 -m 600 -o "$deb" "$mirror/$file"
  echo "$sha  $deb" | sha256sum -c --quiet -
  dpkg-deb -x "$deb" "$work/root"
  echo "fetch-mysql8: $(basename "$file")"
done

# Only a complete unpack takes the final name.
mkdir -p "$(dirname "$dir")"
rm -rf "$dir.partial"
mv "$work/root" "$dir.partial"
rm -rf "$dir"
mv "$dir.partial" "$dir"
missing=$(LD_LIBRARY_PATH="$dir/usr/lib/x86_64-linux-gnu" ldd "$dir/usr/sbin/mysqld" | grep "not found" || true)
if [ -n "$missing" ]; then
  echo "fetch-mysql8: mysqld needs libraries this system lacks:" >&2
  echo "$missing" >&2
  exit 1
fi
LD_LIBRARY_PATH="$dir/usr/lib/x86_64-linux-gnu" "$dir/usr/sbin/mysqld" --version
