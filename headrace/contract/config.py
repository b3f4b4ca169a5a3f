"""The base of every plugin's config model: unknown keys are errors; docs and schema come from it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PluginConfig(BaseModel):
    """Base of every plugin's config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoConfig(PluginConfig):
    pass


