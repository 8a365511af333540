"""Write docs/kernels.md from the kernel table (``fastopt/kernel_table.py``); tests/test_kernel_table.py checks
that the file is current. Run from the repository root: ``python scripts/make_kernel_docs.py``."""

from pathlib import Path

from fastopt.kernel_table import render_markdown

TARGET = Path(__file__).resolve().parent.parent / "docs" / "kernels.md"

if __name__ == "__main__":
    TARGET.write_text(render_markdown())
    print(f"wrote {TARGET}")
