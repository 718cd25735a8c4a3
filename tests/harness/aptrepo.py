"""Signed local package repositories for tests, built with the operator scripts in packaging/repo/.

    key = throwaway_key(tmp_path / "gnupg")
    repo = build_apt_repo(tmp_path / "repo", debs, key)
    host_files = apt_source(Path("/srv/gitops-repo"))    # what to write into the host

The key is made fresh in a temporary GNUPGHOME (ed25519, no passphrase) and thrown away with it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.harness.image import REPO_ROOT

SCRIPTS = REPO_ROOT / "packaging" / "repo"
KEYRING_NAME = "gitops-archive-keyring.gpg"


@dataclass(frozen=True)
class SigningKey:
    gnupghome: Path
    fingerprint: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.gnupghome)}


def throwaway_key(gnupghome: Path, uid: str = "gitops-agent test repo <repo@example.org>") -> SigningKey:
    gnupghome.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {**os.environ, "GNUPGHOME": str(gnupghome)}
    subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key", uid, "ed25519",
                    "sign", "never"], check=True, env=env, capture_output=True)
    listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], check=True, env=env,
                             capture_output=True, text=True).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    return SigningKey(gnupghome, fingerprint)


def build_apt_repo(repo: Path, debs: list[Path], key: SigningKey) -> Path:
    subprocess.run([str(SCRIPTS / "mkrepo-apt.sh"), str(repo), key.fingerprint, *map(str, debs)],
                   check=True, env=key.env(), capture_output=True)
    return repo


def build_dnf_repo(repo: Path, rpms: list[Path], key: SigningKey) -> Path:
    subprocess.run([str(SCRIPTS / "mkrepo-dnf.sh"), str(repo), key.fingerprint, *map(str, rpms)],
                   check=True, env=key.env(), capture_output=True)
    return repo


def apt_source(repo_in_host: Path) -> str:
    """deb822 source for a repository at repo_in_host inside the host, trusting only its own key."""
    return (f"Types: deb\nURIs: file:{repo_in_host}\nSuites: stable\nComponents: main\n"
            f"Signed-By: {repo_in_host / KEYRING_NAME}\n")


def download_debs(names: list[str], dest: Path) -> list[Path]:
    """Fetch Debian packages (e.g. dependencies a site mirrors) with this machine's apt, as files."""
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", "-q", *names], cwd=dest, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(["apt-get", "download", "-q", *names], cwd=dest, check=True, capture_output=True)
    return sorted(dest.glob("*.deb"))
