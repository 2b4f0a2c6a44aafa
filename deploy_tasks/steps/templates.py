"""Render the Jinja2 templates under ``templates/`` (a ``template_dir`` setting may override them)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import ConfigError

SHIPPED = Path(__file__).resolve().parent.parent.parent / "templates"


def render(name: str, override_dir: str = "", **values) -> str:
    """Render template ``name``; a file of that name in ``override_dir`` wins over the shipped one."""
    import jinja2

    dirs: Sequence[str] = ([override_dir] if override_dir else []) + [str(SHIPPED)]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(dirs), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    try:
        template = env.get_template(name)
        return template.render(**values)
    except jinja2.TemplateNotFound:
        raise ConfigError(f"template {name} not found in {', '.join(dirs)}") from None
    except jinja2.TemplateError as exc:
        where = getattr(exc, "filename", None) or name
        line = getattr(exc, "lineno", None)
        raise ConfigError(f"template {where}{':' + str(line) if line else ''}: {exc}") from None
