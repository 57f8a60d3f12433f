"""Model references: a local file or folder, or ``hf:ORG/NAME[@REV]`` on the Hugging Face hub.

A hub reference is fetched once with ``huggingface_hub.snapshot_download`` into its usual cache
(``~/.cache/huggingface/hub``, or ``$HF_HOME/hub``) and read from there afterwards; only the files a
converter reads are downloaded. Offline, the error names the URL and where to put the files by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

from nightseg.core.errors import UserError

HF_PREFIX = "hf:"
HF_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin", "*.md"]


def parse_hf(ref: str | os.PathLike) -> tuple[str, str | None] | None:
    """Return (repo id, revision or None) of an ``hf:ORG/NAME[@REV]`` reference, None for anything else."""
    text = str(ref)
    if not text.startswith(HF_PREFIX):
        return None
    repo, _, revision = text[len(HF_PREFIX):].partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"{text}: a hub reference is hf:ORG/NAME or hf:ORG/NAME@REVISION")
    return repo, revision or None


def is_reference(ref: str | os.PathLike) -> bool:
    """Return whether `ref` names a model on the Hugging Face hub (``hf:...``)."""
    return str(ref).startswith(HF_PREFIX)


def hub_cache() -> str:
    """Return the folder huggingface_hub downloads into (for messages)."""
    home = os.environ.get("HF_HOME")
    return os.environ.get("HF_HUB_CACHE") or (f"{home}/hub" if home else "~/.cache/huggingface/hub")


def resolve(ref: str | os.PathLike) -> Path:
    """Return the local path of `ref`: the file or folder itself, or the hub snapshot folder of an
    ``hf:`` reference (downloaded once into the hub cache). A UserError when it cannot be found or fetched."""
    parsed = parse_hf(ref)
    if parsed is None:
        path = Path(ref).expanduser()
        if not path.exists():
            raise UserError(f"{path}: not found (a NightSeg .safetensors, a foreign checkpoint file or folder, "
                            "or hf:ORG/NAME)")
        return path
    repo, revision = parsed
    url = f"https://huggingface.co/{repo}" + (f"/tree/{revision}" if revision else "")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=repo, revision=revision, allow_patterns=HF_FILES)
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{ref}: could not fetch {url} ({type(exc).__name__}: {reason}); go online once, or "
                        f"download config.json and model.safetensors from that page into a folder and pass the "
                        f"folder instead (the hub cache is {hub_cache()})") from exc
    return Path(folder)
