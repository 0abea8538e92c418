"""Test support for real components: processes, ports, a CNCF registry, git servers, buildah.

The modules here start real programs (``docker-registry``, ``git daemon``, ``buildah``) on
127.0.0.1 only, wait for them by polling with deadlines (never fixed sleeps), and always stop
them again. ``tests/conftest.py`` turns them into pytest fixtures; the system packages come
from ``scripts/install-system-deps.sh``.
"""
