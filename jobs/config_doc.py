"""Print every config field with its default and meaning: ``python -m jobs.config_doc``."""

from __future__ import annotations

from configs.schema import field_reference


def main(argv: list[str] | None = None) -> None:
    print("| key | default | meaning |\n| --- | --- | --- |")
    for key, default, description in field_reference():
        print(f"| `{key}` | `{default}` | {description} |")


if __name__ == "__main__":
    main()
