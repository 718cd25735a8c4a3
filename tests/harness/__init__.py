"""Helpers for tests that need real, isolated Debian hosts on this machine (root only).

- image: a cached debootstrap Debian 12 minbase image, keyed by a hash of its recipe;
- netns: hosts in their own network, UTS, IPC, mount and PID namespaces on an overlay of that image;
- nspawn: boot a root (image + overlay) under systemd-nspawn to see packaged units run for real;
- aptrepo: a signed local apt repository served from a file: source.

Nothing here is imported by the product; `packaging/build.py` reuses `image` as its build root.
"""
