"""One rule for unexpected errors: whatever goes wrong inside a component's work is that component's failure.

Disk full, a permission, an embedded null byte, a bug: the component fails
with an ArtifactError naming it (and the member, when one is at fault); the
other components go on. ArtifactErrors raised on purpose pass through as they are.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from ..errors import ArtifactError


@contextmanager
def component_errors(component: str, member: Optional[str] = None, what: str = "") -> Iterator[None]:
    """Turn any exception in the block into ``ArtifactError(component, what + "<Type>: <text>", member)``."""
    try:
        yield
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(component, f"{what}{type(exc).__name__}: {exc}", member) from None
