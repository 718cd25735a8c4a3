#!/bin/sh
# Build (or refresh) a signed, flat-suite apt repository from .deb files, for a file: or http source.
#
#   GNUPGHOME=... mkrepo-apt.sh REPO_DIR KEY_FINGERPRINT FILE.deb...
#
# Writes REPO_DIR/pool/main/*.deb, dists/stable/{Release,InRelease,Release.gpg}, the Packages index and
# REPO_DIR/gitops-archive-keyring.gpg (the public key, for Signed-By:). Needs apt-utils (apt-ftparchive)
# and gnupg. Run it again with more .deb files to add them; old ones are kept.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 REPO_DIR KEY_FINGERPRINT FILE.deb..." >&2; exit 2; }
repo=$1 key=$2
shift 2
mkdir -p "$repo/pool/main" "$repo/dists/stable/main/binary-amd64"
cp -f "$@" "$repo/pool/main/"
cd "$repo"
apt-ftparchive packages pool > dists/stable/main/binary-amd64/Packages
gzip -9nkf dists/stable/main/binary-amd64/Packages
apt-ftparchive \
  -o APT::FTPArchive::Release::Origin=gitops-agent \
  -o APT::FTPArchive::Release::Label=gitops-agent \
  -o APT::FTPArchive::Release::Suite=stable \
  -o APT::FTPArchive::Release::Codename=stable \
  -o APT::FTPArchive::Release::Components=main \
  -o APT::FTPArchive::Release::Architectures="amd64 all" \
  release dists/stable > dists/stable/Release.new
mv dists/stable/Release.new dists/stable/Release
gpg --batch --yes --local-user "$key" --clearsign -o dists/stable/InRelease dists/stable/Release
gpg --batch --yes --local-user "$key" --armor --detach-sign -o dists/stable/Release.gpg dists/stable/Release
gpg --batch --yes --export "$key" > gitops-archive-keyring.gpg
echo "apt repository ready in $repo (suite stable, component main)"
