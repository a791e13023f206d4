"""Secrets: one truth for finding, masking and redacting the model key (and a custom IV).

* :class:`Matcher` finds every form the key-site reader decodes, plus hex and base64, in
  bytes or text (:mod:`forkops.secrets.matcher`).
* :func:`mask_bytes` / :func:`mask_text` / :func:`mask_secrets` replace what it finds
  (:mod:`forkops.secrets.mask`); :class:`StreamRedactor` does it for a log stream, also for a
  secret split across lines (:mod:`forkops.secrets.stream`).
* :mod:`forkops.secrets.encodings` is the registry of key-site encodings.

Used by the git hooks, so importing this package costs only ``re``, ``base64`` and typing.
"""

from forkops.secrets.mask import MASKED_SITE, mask_bytes, mask_secrets, mask_text
from forkops.secrets.matcher import Hit, Matcher
from forkops.secrets.stream import StreamRedactor

__all__ = ["MASKED_SITE", "Hit", "Matcher", "StreamRedactor", "mask_bytes", "mask_secrets", "mask_text"]
