"""The README documents every configuration key: the pydantic models are the one source of truth."""

import re

from pydantic import BaseModel

from dashboard.config import Config
from tests.support import ROOT


def keys_of(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(keys_of(annotation, f"{prefix}{name}."))
    return keys


def test_every_config_key_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in keys_of(Config) if not re.search(rf"\b{key.rsplit('.', 1)[-1]}\b", readme)]
    assert not missing, f"README.md does not mention: {missing}"
