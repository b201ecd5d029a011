"""The evaluation sets ``lcnet eval --data ROOT`` reads, in the layouts they are distributed in
(docs/evaluation.md):

- ``gopro``: GOPRO_Large, ``ROOT/{train,test}/SEQUENCE/{blur,blur_gamma,sharp}/*.png``
  (:func:`lcnet.io.list_pairs`); the bundled synthetic sets have this layout too.
- ``hide``: HIDE_dataset, blurry ``ROOT/test/test-close-ups/*.png`` and
  ``ROOT/test/test-long-shot/*.png``, sharp ``ROOT/GT/<same name>.png``; reported for the
  whole test set and for each of the two subsets.
- ``realblur``: RealBlur, ``ROOT/RealBlur_J_test_list.txt`` and/or
  ``ROOT/RealBlur_R_test_list.txt``, each line ``<gt path> <blur path>`` relative to ROOT;
  each list is a subset (``RealBlur-J``, ``RealBlur-R``), scored with RealBlur's own protocol
  (:mod:`lcnet.realblur`). ``realblur-j`` / ``realblur-r`` take one list only.

:func:`detect_layout` recognises a root; :func:`list_eval_pairs` lists its pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import LCNetError
from .io import GOPRO_LAYOUT, SHARP_DIR, image_names, list_pairs

__all__ = [
    "HIDE_GT_DIR",
    "HIDE_SUBSETS",
    "LAYOUTS",
    "PROTOCOLS",
    "REALBLUR_LISTS",
    "EvalPair",
    "EvalSet",
    "detect_layout",
    "list_eval_pairs",
]

#: ``--layout`` choices; ``auto`` detects one of the others.
LAYOUTS = ("auto", "gopro", "hide", "realblur", "realblur-j", "realblur-r")
#: The scoring protocol of each layout (results.json's summary "protocol").
PROTOCOLS = {
    "gopro": "gopro",
    "hide": "hide",
    "realblur": "realblur-ecc",
    "realblur-j": "realblur-ecc",
    "realblur-r": "realblur-ecc",
}
HIDE_TEST_DIR = "test"
HIDE_GT_DIR = "GT"
#: HIDE's test subsets: (folder under ROOT/test, subset name in results.json).
HIDE_SUBSETS = (("test-close-ups", "close-ups"), ("test-long-shot", "long-shot"))
HIDE_LAYOUT = (
    "expected ROOT/test/test-close-ups/*.png and ROOT/test/test-long-shot/*.png (blurry) "
    "and ROOT/GT/<same name>.png (sharp)"
)
#: RealBlur's test lists: (subset name, file under ROOT).
REALBLUR_LISTS = (
    ("RealBlur-J", "RealBlur_J_test_list.txt"),
    ("RealBlur-R", "RealBlur_R_test_list.txt"),
)
REALBLUR_LAYOUT = (
    "expected ROOT/RealBlur_J_test_list.txt and/or ROOT/RealBlur_R_test_list.txt, "
    "each line '<gt path> <blur path>' relative to ROOT"
)
MAX_LISTED = 5


@dataclass(frozen=True)
class EvalPair:
    """One blurry/sharp pair of an evaluation set; ``subset`` is None for GOPRO, else the
    HIDE / RealBlur subset it belongs to."""

    name: str
    blur: Path
    sharp: Path
    subset: str | None = None


@dataclass(frozen=True)
class EvalSet:
    """The pairs of ``--data ROOT`` in one layout."""

    layout: str  # gopro, hide, realblur (realblur-j / realblur-r are realblur too)
    dataset: str  # e.g. "HIDE", "RealBlur-J", "RealBlur-J+RealBlur-R", "GOPRO layout"
    protocol: str  # gopro, hide, realblur-ecc
    subsets: tuple[str, ...]  # in report order; () for GOPRO
    pairs: list[EvalPair]


def _is_gopro(root: Path, split: str) -> bool:
    split_dir = root / split
    return split_dir.is_dir() and any(
        (seq / SHARP_DIR).is_dir() for seq in split_dir.iterdir() if seq.is_dir()
    )


def _is_hide(root: Path) -> bool:
    return (root / HIDE_GT_DIR).is_dir() and any(
        (root / HIDE_TEST_DIR / folder).is_dir() for folder, _ in HIDE_SUBSETS
    )


def _is_realblur(root: Path) -> bool:
    return any((root / name).is_file() for _, name in REALBLUR_LISTS)


def detect_layout(root: Path, split: str = "test") -> str:
    """``gopro``, ``hide`` or ``realblur``: the one layout ``root`` matches; LCNetError naming
    --data and the path when none or several match."""
    if not root.is_dir():
        raise LCNetError(f"--data {root}: no such folder")
    found = [
        name
        for name, test in (
            ("gopro", lambda: _is_gopro(root, split)),
            ("hide", lambda: _is_hide(root)),
            ("realblur", lambda: _is_realblur(root)),
        )
        if test()
    ]
    if not found:
        raise LCNetError(
            f"--data {root}: no known data layout found there. GOPRO: {GOPRO_LAYOUT}; HIDE: "
            f"{HIDE_LAYOUT}; RealBlur: {REALBLUR_LAYOUT}"
        )
    if len(found) > 1:
        raise LCNetError(
            f"--data {root} matches several layouts ({', '.join(found)}); choose one with --layout"
        )
    return found[0]


def _hide_pairs(root: Path) -> list[EvalPair]:
    where = f"--data {root} --layout hide"
    gt_dir = root / HIDE_GT_DIR
    if not gt_dir.is_dir():
        raise LCNetError(f"{where}: {gt_dir} is not a folder ({HIDE_LAYOUT})")
    pairs: list[EvalPair] = []
    missing: list[str] = []
    for folder, subset in HIDE_SUBSETS:
        blur_dir = root / HIDE_TEST_DIR / folder
        if not blur_dir.is_dir():
            raise LCNetError(f"{where}: {blur_dir} is not a folder ({HIDE_LAYOUT})")
        names = sorted(image_names(blur_dir))
        if not names:
            raise LCNetError(f"{where}: no .png images in {blur_dir}")
        for name in names:
            sharp = gt_dir / name
            if not sharp.is_file():
                missing.append(f"blurry image {blur_dir / name} has no sharp image {sharp}")
            pairs.append(EvalPair(f"{folder}/{name}", blur_dir / name, sharp, subset))
    if missing:
        more = f" (and {len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
        raise LCNetError(f"{where}: " + "; ".join(missing[:MAX_LISTED]) + more)
    return pairs


def _realblur_list(root: Path, subset: str, list_file: Path) -> list[EvalPair]:
    pairs: list[EvalPair] = []
    text = list_file.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise LCNetError(
                f"--data {root}: {list_file} line {number}: expected '<gt path> <blur path>', "
                f"got {line.strip()!r}"
            )
        gt, blur = (root / f for f in fields)
        for what, path in (("sharp (gt)", gt), ("blurry", blur)):
            if not path.is_file():
                raise LCNetError(
                    f"--data {root}: {list_file} line {number} names the {what} image {path}, "
                    "which does not exist"
                )
        pairs.append(EvalPair(fields[1], blur, gt, subset))
    if not pairs:
        raise LCNetError(f"--data {root}: {list_file} lists no image pairs")
    return pairs


def _realblur_pairs(root: Path, layout: str) -> tuple[list[str], list[EvalPair]]:
    wanted = {
        "realblur": ("RealBlur-J", "RealBlur-R"),
        "realblur-j": ("RealBlur-J",),
        "realblur-r": ("RealBlur-R",),
    }[layout]
    lists = [(s, root / name) for s, name in REALBLUR_LISTS if s in wanted]
    present = [(s, path) for s, path in lists if path.is_file()]
    if not present or (layout != "realblur" and len(present) != len(lists)):
        names = " or ".join(str(path) for _, path in lists)
        raise LCNetError(f"--data {root} --layout {layout}: {names} not found ({REALBLUR_LAYOUT})")
    pairs: list[EvalPair] = []
    for subset, path in present:
        pairs += _realblur_list(root, subset, path)
    return [s for s, _ in present], pairs


def list_eval_pairs(root: Path, layout: str = "auto", split: str = "test", blur_dir: str = "blur"):
    """The :class:`EvalSet` of ``root`` in ``layout`` (``auto``: :func:`detect_layout`).

    ``split`` and ``blur_dir`` apply to the GOPRO layout; HIDE and RealBlur are evaluated on
    their test sets. LCNetError naming --data (and --layout) for every mismatch.
    """
    if layout not in LAYOUTS:
        raise LCNetError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not root.is_dir():
        raise LCNetError(f"--data {root}: no such folder")
    if layout == "auto":
        layout = detect_layout(root, split)
    if layout == "gopro":
        try:
            pairs = list_pairs(root, split, blur_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise LCNetError(f"--data {root} (GOPRO layout): {exc}") from exc
        gopro = [EvalPair(p.name, p.blur, p.sharp) for p in pairs]
        return EvalSet("gopro", "GOPRO layout", PROTOCOLS["gopro"], (), gopro)
    if split != "test":
        raise LCNetError(f"--split {split}: the {layout} layout is evaluated on its test set only")
    if layout == "hide":
        subsets = tuple(name for _, name in HIDE_SUBSETS)
        return EvalSet("hide", "HIDE", PROTOCOLS["hide"], subsets, _hide_pairs(root))
    names, pairs = _realblur_pairs(root, layout)
    return EvalSet("realblur", "+".join(names), PROTOCOLS[layout], tuple(names), pairs)
