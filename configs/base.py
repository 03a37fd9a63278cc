"""What every config section shares: the base class (unknown keys refused), the error type, the precision rule
and the storage locations a config may name."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Object stores an output_dir may name (pyarrow.fs opens each); anything else with '://' is refused by name.
OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs")


def is_uri(location: str) -> bool:
    """Whether ``location`` names an object store (``scheme://...``) rather than a local path."""
    return "://" in str(location)


def check_location(location: str | None) -> str | None:
    """``location`` if it is a local path or an object-store URI of a scheme in :data:`OBJECT_STORE_SCHEMES`."""
    if location and is_uri(location):
        scheme = location.split("://", 1)[0]
        if scheme not in OBJECT_STORE_SCHEMES:
            raise ValueError(
                f"{location}: the scheme '{scheme}' is not one this project stores to "
                f"({', '.join(OBJECT_STORE_SCHEMES)}, or a local path)"
            )
        if not location.split("://", 1)[1].strip("/"):
            raise ValueError(f"{location}: name a bucket, e.g. s3://my-bucket/runs/demo")
    return location


def resolve_dtype(setting: str, accelerator: bool) -> str:
    """The precision a dtype setting means in a process with or without an accelerator: 'auto' is bf16 on a GPU and
    fp32 on the CPU; 'bf16' and 'fp32' are taken as said."""
    if setting == "auto":
        return "bf16" if accelerator else "fp32"
    return setting


class ConfigError(ValueError):
    """A configuration file or override that does not validate."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
