"""Output to a remote folder (any fsspec URL: s3://, gs://, ...): write shards locally, then publish them so that
a failure never leaves part of an object under a final name.

An object store makes an object visible only when its upload completes (a single PUT, or a multipart upload
completed at its end), so shards go straight to their final names there; on any other filesystem each file is
uploaded under a temporary name beside its final one and renamed. A shard's marker is published after its shard,
so a marker under its final name means the shard before it is whole; a rerun skips shards whose remote marker
matches the local one, and removes temporaries a killed publish left. Uploads retry what may pass, as reads do
(`dedup/io/remote.py`).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from dedup.io.atomic import TMP_PREFIX
from dedup.io.remote import DEFAULT_POLICY, RetryPolicy, filesystem, with_retries

OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}


def is_object_store(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return bool(OBJECT_STORES & set(protocols))


class RemoteFolder:
    def __init__(self, url: str, policy: RetryPolicy = DEFAULT_POLICY):
        self.url = url.rstrip("/")
        self.policy = policy
        self.fs, self.path = filesystem(self.url, policy)
        self.atomic_uploads = is_object_store(self.fs)

    def _remote(self, name: str) -> str:
        return f"{self.path}/{name}"

    def put(self, local: Path) -> None:
        """`local` under its own name in the folder, whole or not at all."""
        final = self._remote(local.name)
        if self.atomic_uploads:
            with_retries(lambda: self.fs.put_file(str(local), final), self.policy, f"upload {local.name}")
            return
        temporary = self._remote(f"{TMP_PREFIX}{local.name}.{secrets.token_hex(4)}")
        with_retries(lambda: self.fs.put_file(str(local), temporary), self.policy, f"upload {local.name}")
        with_retries(lambda: self.fs.mv(temporary, final), self.policy, f"rename {local.name} into place")

    def read_text(self, name: str) -> str | None:
        try:
            return with_retries(lambda: self.fs.cat_file(self._remote(name)), self.policy, f"read {name}").decode()
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        try:
            listed = with_retries(lambda: self.fs.ls(self.path, detail=False), self.policy, f"list {self.url}")
        except FileNotFoundError:
            return []
        return sorted(str(item).rstrip("/").rsplit("/", 1)[-1] for item in listed)

    def remove(self, name: str) -> None:
        with_retries(lambda: self.fs.rm_file(self._remote(name)), self.policy, f"remove {name}")


def publish(staging: Path, url: str, names: list[tuple[str, str]], extra: list[str], prefix: str) -> int:
    """Publish (shard, marker) pairs from `staging` to `url` in order, each marker after its shard, skipping those
    whose remote marker equals the local one; then `extra` files (removal lists); remove temporaries of an
    earlier publish and this prefix's remote shards that the plan no longer has. Returns the shards uploaded."""
    folder = RemoteFolder(url)
    present = folder.names()
    for name in present:
        if name.startswith(TMP_PREFIX):
            folder.remove(name)
    uploaded = 0
    for shard, marker in names:
        local_marker = json.loads((staging / marker).read_text())
        remote_marker = folder.read_text(marker) if marker in present else None
        if remote_marker is not None and json.loads(remote_marker) == local_marker and shard in present:
            continue
        folder.put(staging / shard)
        folder.put(staging / marker)
        uploaded += 1
    for name in extra:
        if (staging / name).exists():
            folder.put(staging / name)
    planned = {name for pair in names for name in pair}
    for name in present:
        ours = name.startswith(f"{prefix}-") and (name.endswith(".tar") or name.endswith("_stats.json"))
        if ours and name not in planned and "-inc" not in name[len(prefix) :]:
            folder.remove(name)
    return uploaded
