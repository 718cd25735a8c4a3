#!/bin/sh
# Build (or refresh) a signed dnf/yum repository from .rpm files.
#
#   GNUPGHOME=... mkrepo-dnf.sh REPO_DIR KEY_FINGERPRINT FILE.rpm...
#
# Writes REPO_DIR/Packages/*.rpm, repodata/ (createrepo_c), repodata/repomd.xml.asc (detached signature
# checked by dnf with repo_gpgcheck=1) and REPO_DIR/RPM-GPG-KEY-gitops-agent. Packages are also signed
# with rpmsign when it is installed (gpgcheck=1); otherwise set gpgcheck=0 and rely on repo_gpgcheck.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 REPO_DIR KEY_FINGERPRINT FILE.rpm..." >&2; exit 2; }
repo=$1 key=$2
shift 2
mkdir -p "$repo/Packages"
cp -f "$@" "$repo/Packages/"
if command -v rpmsign >/dev/null 2>&1; then
  for rpm in "$repo"/Packages/*.rpm; do
    rpmsign --define "_gpg_name $key" --define "_gpg_path ${GNUPGHOME:-$HOME/.gnupg}" \
      --define "__gpg $(command -v gpg)" --addsign "$rpm" >/dev/null
  done
fi
createrepo_c --quiet --update "$repo"
gpg --batch --yes --local-user "$key" --armor --detach-sign -o "$repo/repodata/repomd.xml.asc" \
  "$repo/repodata/repomd.xml"
gpg --batch --yes --armor --export "$key" > "$repo/RPM-GPG-KEY-gitops-agent"
echo "dnf repository ready in $repo"
