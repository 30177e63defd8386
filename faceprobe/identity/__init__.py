"""Face verification ("same person?") and identification ("who is this?") on stored embeddings.

Everything here reads embeddings only through :class:`faceprobe.embed.store.Store`; nothing
re-embeds an image. Public API:

- :func:`faceprobe.identity.verification.verify` — the LFW-style k-fold protocol on a pair list.
- :func:`faceprobe.identity.identification.identify` — closed-set top-k search, open-set counted.
- :func:`faceprobe.identity.pairs.generate_pairs` / :func:`~faceprobe.identity.pairs.write_pairs`
  — seeded pairs from identity labels, optionally conditioned on an attribute.
- :mod:`faceprobe.identity.similarity` — chunked cosine similarity and top-k search.
"""

from faceprobe.identity.identification import identify
from faceprobe.identity.pairs import generate_pairs, write_pairs
from faceprobe.identity.verification import verify

__all__ = ["generate_pairs", "identify", "verify", "write_pairs"]
