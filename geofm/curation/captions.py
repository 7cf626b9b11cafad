"""Captions for image–text alignment, written from a store's labels and reference maps.

RemoteCLIP turned detection and segmentation annotations into captions by rules: Mask-to-Box
first turns each segmentation class's regions into boxes, then Box-to-Caption writes captions
from the boxes' classes, counts (exact small numbers, vague quantifiers such as "many", "lots
of", "a quantity of" for large ones) and coarse locations ("in the middle", "at the edge"); one
caption may name several classes ("4 large vehicles, a small vehicle and 5 planes at the edge of
the picture", in the release's ``assets/figure-2.png``). Its exact rules and templates were not
published, so they cannot be reproduced here. geofm's captions follow the same idea from a
store's multi-labels and reference maps, and store their templates and seed with the captions so
results can be reproduced.

Three kinds of caption:

* **Label captions** (:func:`caption_from_labels`): every class of a chip's multi-label, joined
  in natural English ("a, b and c"). With a reference map the classes are ordered by area, largest
  first, and templates that say which class dominates become available; without one the order
  carries no meaning and is shuffled.
* **Mask-to-Box** (:func:`boxes_from_mask`): connected components of each class in a reference
  map, as bounding boxes.
* **Box-to-Caption** (:func:`caption_from_boxes`): counts and coarse locations of those
  components, e.g. "there are two patches of coniferous forest at the top and one patch of inland
  waters in the centre".

:func:`caption_store` captions a whole store deterministically from a seed and
:func:`write_captions` stores the result with the chips.

Template placeholders:

* ``{all}``: every class, joined; usable for any number of classes.
* ``{a}`` and ``{b}``: the first class and the remaining classes joined. A template with ``{b}``
  needs two or more classes; a template with ``{a}`` but no ``{b}`` is used for exactly one.
* ``{main}``: the class with the largest area (with ``{b}`` for the rest); used only when areas
  are known, so captions never claim a dominance that no map supports.
* ``{be}`` and ``{boxes}`` (box templates): "is" or "are" agreeing with the first clause, and
  the clauses themselves.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> caption_from_labels(["Arable land", "Pastures"], [0.2, 0.8], rng,
    ...                     ["a satellite image of {all}"])
    'a satellite image of pastures and arable land'
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage

from geofm.errors import GeofmError
from geofm.io.schema import ATTRS_KEY, CHIP_TABLE, MASK_IGNORE

LABEL_TEMPLATES: tuple[str, ...] = (
    "a satellite image of {all}",
    "a satellite photo of {all}",
    "an aerial view of {all}",
    "a remote sensing image showing {all}",
    "a top-down view of {all}",
    "{a} next to {b}",
    "{a} alongside {b}",
    "a landscape of {a} beside {b}",
    "a satellite image covered by {a}",
    "an aerial view of an area of {a}",
)
"""Templates that make no claim about which class is largest."""

AREA_TEMPLATES: tuple[str, ...] = (
    "an aerial view showing mostly {main} with some {b}",
    "a satellite image dominated by {main}, with {b}",
    "mostly {main}, with smaller areas of {b}",
    "a scene covered largely by {main} and partly by {b}",
)
"""Templates that name the largest class first; used only with a reference map."""

BOX_TEMPLATES: tuple[str, ...] = (
    "there {be} {boxes}",
    "in this satellite image there {be} {boxes}",
    "an aerial image with {boxes}",
    "a satellite image showing {boxes}",
    "a remote sensing image in which there {be} {boxes}",
    "{boxes}, seen from above",
    "seen from above, there {be} {boxes}",
    "an overhead view of {boxes}",
)
"""Box-to-Caption templates."""

TEMPLATE_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "geofm-v1": {"labels": LABEL_TEMPLATES, "areas": AREA_TEMPLATES, "boxes": BOX_TEMPLATES},
}
"""Named template pools; a store's caption attributes record the name and every template."""

DEFAULT_TEMPLATES = "geofm-v1"

COUNT_WORDS: tuple[tuple[int, str], ...] = ((1, "one"), (2, "two"), (3, "three"),
                                            (6, "several"))
"""Upper bound (inclusive) → count word; more than 6 components are "many"."""

MANY = "many"

CELL_WORDS: tuple[tuple[str, str, str], ...] = (
    ("in the top left", "at the top", "in the top right"),
    ("on the left", "in the centre", "on the right"),
    ("in the bottom left", "at the bottom", "in the bottom right"),
)
"""Location word of each cell of a 3×3 grid over the chip (row, column; north up)."""

ROW_WORDS = ("across the top", "across the middle", "across the bottom")
COL_WORDS = ("down the left side", "down the middle", "down the right side")
SCATTERED = "scattered across the image"
COVERING = "covering most of the image"
COVERING_FRACTION = 0.5
"""A component holding at least this fraction of the chip's pixels is "covering most of it"."""

MIN_PIXELS = 16
"""Default smallest component kept by :func:`boxes_from_mask` (4×4 pixels; 40 m at 10 m)."""

_FIELDS = {"all", "a", "b", "main", "be", "boxes"}

Box = tuple[int, tuple[int, int, int, int], int]


def caption_name(name: str) -> str:
    """A class name as it reads inside a sentence.

    Underscores become spaces and each word is lower-cased unless it has a capital after its
    first character (acronyms and brand-like names such as "CLC" or "OpenStreetMap" keep theirs).

    Args:
        name: The class name as stored.

    Returns:
        The name for captions, e.g. ``"Coniferous forest"`` → ``"coniferous forest"``.
    """
    words = name.replace("_", " ").split()
    return " ".join(w if any(ch.isupper() for ch in w[1:]) else w.lower() for w in words)


def join_names(names: Sequence[str], sep: str | None = None) -> str:
    """Join names in natural English without an Oxford comma: "a", "a and b", "a, b and c".

    When a name itself contains a comma (reBEN has "Beaches, dunes, sands"), items are separated
    by semicolons instead so the list stays readable: "a; b, c and d".

    Args:
        names: One or more names, in order.
        sep: Separator between all but the last two items (default: chosen by the comma rule).

    Returns:
        The joined phrase.
    """
    if not names:
        raise GeofmError("nothing to join: a caption needs at least one class")
    if len(names) == 1:
        return names[0]
    if sep is None:
        sep = _separator(names)
    return sep.join(names[:-1]) + " and " + names[-1]


def _separator(names: Sequence[str]) -> str:
    return "; " if any("," in n for n in names) else ", "


def _fields(template: str) -> set[str]:
    found = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = found - _FIELDS
    if unknown or "" in found:
        raise GeofmError(f"caption template {template!r} has unknown placeholders "
                         f"{sorted(unknown)}", hint=f"use {sorted(_FIELDS)}")
    return found


def _eligible(template: str, n: int, with_areas: bool) -> bool:
    f = _fields(template)
    if "boxes" in f or "be" in f:
        return False
    if "main" in f and not with_areas:
        return False
    if "b" in f:
        return n >= 2 and bool(f & {"a", "main"})
    if f & {"a", "main"}:
        return n == 1
    return "all" in f


def caption_from_labels(
    class_names: Sequence[str],
    areas: Sequence[float] | None,
    rng: np.random.Generator,
    templates: Sequence[str] | None = None,
) -> str:
    """One caption naming every class of a chip.

    Args:
        class_names: The chip's classes (as stored; see :func:`caption_name`).
        areas: Area fraction of each class from a reference map, or ``None`` without one. With
            areas the classes are named largest first (ties keep the given order); without, their
            order is shuffled by ``rng``.
        rng: Random generator choosing the order (without areas) and the template.
        templates: Template pool (default: :data:`LABEL_TEMPLATES`, plus :data:`AREA_TEMPLATES`
            when areas are given). Templates that do not fit the number of classes are skipped.

    Returns:
        The caption, e.g. ``"an aerial view showing mostly arable land with some pastures"``.

    Raises:
        GeofmError: No classes, a length mismatch, or no template fits.
    """
    names = [caption_name(n) for n in class_names]
    if not names:
        raise GeofmError("a label caption needs at least one class")
    if areas is not None:
        if len(areas) != len(names):
            raise GeofmError(f"{len(areas)} areas for {len(names)} classes")
        order = sorted(range(len(names)), key=lambda i: -float(areas[i]))
        names = [names[i] for i in order]
    else:
        names = [names[i] for i in rng.permutation(len(names))]
    pool = list(templates) if templates is not None else (
        [*LABEL_TEMPLATES, *AREA_TEMPLATES] if areas is not None else list(LABEL_TEMPLATES))
    usable = [t for t in pool if _eligible(t, len(names), areas is not None)]
    if not usable:
        raise GeofmError(f"no caption template fits {len(names)} class(es)",
                         hint="include a template with '{all}'")
    template = usable[int(rng.integers(len(usable)))]
    sep = _separator(names)
    rest = join_names(names[1:], sep) if len(names) > 1 else ""
    return template.format(all=join_names(names, sep), a=names[0], main=names[0], b=rest)


def class_areas(mask: np.ndarray, num_classes: int, ignore: int = MASK_IGNORE) -> np.ndarray:
    """Area fraction of each class in a reference map, over its labelled pixels.

    Args:
        mask: ``[H, W]`` class ids.
        num_classes: Number of classes ``K``.
        ignore: Id of unlabelled pixels, excluded from the total.

    Returns:
        ``[K]`` float64 fractions (all zero when no pixel is labelled).
    """
    m = np.asarray(mask).ravel()
    m = m[(m != ignore) & (m < num_classes)].astype(np.int64)
    counts = np.bincount(m, minlength=num_classes)[:num_classes].astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def boxes_from_mask(
    mask: np.ndarray, ignore: int = MASK_IGNORE, min_pixels: int = MIN_PIXELS
) -> list[Box]:
    """Mask-to-Box: bounding boxes of each class's connected components.

    Components use 8-connectivity (pixels touching at a corner belong together), so a diagonal
    line of one class is one component.

    Args:
        mask: ``[H, W]`` class ids.
        ignore: Id of unlabelled pixels, never boxed.
        min_pixels: Components with fewer pixels are dropped as specks.

    Returns:
        ``(class_id, (row0, col0, row1, col1), pixels)`` per component, sorted by class id and
        then by the component's first pixel in row-major order; ``row1`` and ``col1`` are
        exclusive, as in slices.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise GeofmError(f"a reference map must be 2-D, got shape {m.shape}")
    structure = np.ones((3, 3), dtype=bool)
    out: list[Box] = []
    for cls in np.unique(m):
        if int(cls) == ignore:
            continue
        comp, n = ndimage.label(m == cls, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        for k, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None or sizes[k] < min_pixels:
                continue
            out.append((int(cls), (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop),
                        int(sizes[k])))
    return out


def count_word(n: int) -> str:
    """Count word: 1 "one", 2 "two", 3 "three", 4–6 "several", 7 or more "many"."""
    if n < 1:
        raise GeofmError(f"cannot describe a count of {n}")
    for bound, word in COUNT_WORDS:
        if n <= bound:
            return word
    return MANY


def location_word(boxes: Sequence[tuple[int, int, int, int]], shape: tuple[int, int],
                  pixels: Sequence[int] | None = None) -> str:
    """Coarse location of one class's components from their box centres on a 3×3 grid.

    Rules, in order: a single component holding at least :data:`COVERING_FRACTION` of the chip
    is "covering most of the image"; components whose centres share one cell take that cell's
    word (:data:`CELL_WORDS`, e.g. "in the top left", "in the centre"); centres in one grid row
    read "across the top/middle/bottom", in one column "down the left side/middle/right side";
    anything else is "scattered across the image".

    Args:
        boxes: ``(row0, col0, row1, col1)`` boxes with exclusive ends.
        shape: ``(H, W)`` of the chip.
        pixels: Pixel count of each component (for the covering rule).

    Returns:
        The location phrase.
    """
    h, w = shape
    if pixels is not None and len(boxes) == 1 and pixels[0] >= COVERING_FRACTION * h * w:
        return COVERING
    cells = set()
    for r0, c0, r1, c1 in boxes:
        r = min(int(3 * (r0 + r1) / 2 / h), 2)
        c = min(int(3 * (c0 + c1) / 2 / w), 2)
        cells.add((r, c))
    rows = {r for r, _ in cells}
    cols = {c for _, c in cells}
    if len(cells) == 1:
        r, c = next(iter(cells))
        return CELL_WORDS[r][c]
    if len(rows) == 1:
        return ROW_WORDS[next(iter(rows))]
    if len(cols) == 1:
        return COL_WORDS[next(iter(cols))]
    return SCATTERED


def caption_from_boxes(
    boxes: Sequence[Box],
    class_names: Sequence[str],
    shape: tuple[int, int],
    rng: np.random.Generator,
    templates: Sequence[str] | None = None,
) -> str:
    """Box-to-Caption: counts and coarse locations of every class's components.

    Each class gives one clause, "<count> patch(es) of <class> <location>", with the count word
    of :func:`count_word` and the location of :func:`location_word`. Clauses are ordered by the
    class's boxed pixels, largest first, and joined like :func:`join_names`; ``{be}`` agrees with
    the first clause ("there is one patch ..." / "there are two patches ...").

    Args:
        boxes: Output of :func:`boxes_from_mask`.
        class_names: Name of every class id.
        shape: ``(H, W)`` of the chip.
        rng: Random generator choosing the template.
        templates: Template pool with ``{boxes}`` (default: :data:`BOX_TEMPLATES`).

    Returns:
        The caption, e.g. ``"there are two patches of coniferous forest at the top and one patch
        of inland waters in the centre"``.

    Raises:
        GeofmError: No boxes, a class id without a name, or no template with ``{boxes}``.
    """
    if not boxes:
        raise GeofmError("a box caption needs at least one box")
    per_class: dict[int, list[Box]] = {}
    for b in boxes:
        if not 0 <= b[0] < len(class_names):
            raise GeofmError(f"box of class id {b[0]} but only {len(class_names)} class names")
        per_class.setdefault(b[0], []).append(b)
    order = sorted(per_class, key=lambda c: (-sum(b[2] for b in per_class[c]), c))
    clauses = []
    for cls in order:
        group = per_class[cls]
        n = len(group)
        noun = "patch" if n == 1 else "patches"
        where = location_word([b[1] for b in group], shape, [b[2] for b in group])
        clauses.append(f"{count_word(n)} {noun} of {caption_name(class_names[cls])} {where}")
    pool = [t for t in (templates if templates is not None else BOX_TEMPLATES)
            if "boxes" in _fields(t)]
    if not pool:
        raise GeofmError("no box caption template has '{boxes}'")
    template = pool[int(rng.integers(len(pool)))]
    be = "is" if len(per_class[order[0]]) == 1 else "are"
    return template.format(be=be, boxes=join_names(clauses))


def _chip_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _placeholders(store: Any) -> np.ndarray:
    chips = store.chips
    if "mask_placeholder" not in chips.columns:
        return np.zeros(len(store), dtype=bool)
    return np.array([v is True or v is np.True_ for v in chips["mask_placeholder"]], dtype=bool)


def _check_labelled(store: Any) -> None:
    if not store.classes or not ({"label", "mask"} & set(store.arrays)):
        raise GeofmError("the store has no labels to caption", store.path,
                         "build it from a labelled source")


def caption_store(
    store: Any,
    *,
    seed: int = 0,
    per_chip: int = 1,
    use_masks: bool = True,
    templates_id: str = DEFAULT_TEMPLATES,
    min_pixels: int = MIN_PIXELS,
    batch_size: int = 256,
) -> list[list[str]]:
    """Caption every chip of a store, deterministically.

    A chip's classes come from its multi-label (or, in a store without ``label``, from its
    reference map). Its reference map is used only when ``use_masks`` is set, the store has a
    ``mask`` array and the chip table's ``mask_placeholder`` is not True; then each caption is a
    label caption ordered by area or, with even odds, a Box-to-Caption caption (falling back to
    the label caption when no component reaches ``min_pixels``). Otherwise captions come from the
    labels alone. Each chip draws from its own generator seeded by ``(seed, chip index)``, so the
    same seed gives identical captions whatever the batch size; up to a few redraws keep a chip's
    captions distinct where its templates allow. Chips without any class get no captions.

    Args:
        store: A :class:`geofm.io.store.ChipStore`.
        seed: Random seed.
        per_chip: Captions per chip.
        use_masks: Use real (non-placeholder) reference maps for areas and boxes.
        templates_id: Name of the template pool in :data:`TEMPLATE_SETS`.
        min_pixels: Smallest component for box captions.
        batch_size: Chips read at a time.

    Returns:
        One list of ``per_chip`` captions per chip, in store order.

    Raises:
        GeofmError: A store without labels, an unknown template pool or ``per_chip`` below 1.
    """
    _check_labelled(store)
    if per_chip < 1:
        raise GeofmError(f"per_chip must be at least 1, got {per_chip}")
    if templates_id not in TEMPLATE_SETS:
        raise GeofmError(f"unknown caption templates {templates_id!r}",
                         hint=f"choose one of {sorted(TEMPLATE_SETS)}")
    tset = TEMPLATE_SETS[templates_id]
    label_pool = list(tset["labels"])
    area_pool = [*tset["labels"], *tset["areas"]]
    classes = store.classes
    has_label = "label" in store.arrays
    masks_ok = use_masks and "mask" in store.arrays
    placeholder = _placeholders(store) if masks_ok else np.ones(len(store), dtype=bool)
    if not has_label and placeholder.any():
        raise GeofmError("the store has no labels and placeholder reference maps", store.path,
                         "build it from a source with labels or real reference maps")
    ignore = int(store.attrs.get("mask_ignore_index", MASK_IGNORE))
    out: list[list[str]] = []
    for start in range(0, len(store), batch_size):
        idx = np.arange(start, min(len(store), start + batch_size))
        batch = store.read(idx, arrays=["label", "mask"])  # captions need no pixels
        for j, i in enumerate(idx):
            real = not placeholder[i]
            mask = batch["mask"][j] if real else None
            if has_label:
                ids = [int(k) for k in np.flatnonzero(batch["label"][j])]
            else:  # no labels: every map is real (checked above)
                assert mask is not None
                ids = [int(k) for k in np.flatnonzero(class_areas(mask, len(classes), ignore))]
            if not ids:
                out.append([])
                continue
            names = [classes[k] for k in ids]
            rng = _chip_rng(seed, int(i))
            areas = boxes = None
            if real:
                assert mask is not None
                areas = class_areas(mask, len(classes), ignore)[ids].tolist()
                boxes = boxes_from_mask(mask, ignore=ignore, min_pixels=min_pixels)
                boxes = [b for b in boxes if b[0] < len(classes)]
            caps: list[str] = []
            for _ in range(per_chip):
                for _attempt in range(8):
                    if boxes and mask is not None and rng.random() < 0.5:
                        cap = caption_from_boxes(boxes, classes, mask.shape, rng, tset["boxes"])
                    elif areas is not None:
                        cap = caption_from_labels(names, areas, rng, area_pool)
                    else:
                        cap = caption_from_labels(names, None, rng, label_pool)
                    if cap not in caps:
                        break
                caps.append(cap)
            out.append(caps)
    return out


def write_captions(
    store: Any,
    captions: Sequence[Sequence[str]],
    *,
    seed: int,
    templates_id: str = DEFAULT_TEMPLATES,
    use_masks: bool = True,
    min_pixels: int = MIN_PIXELS,
) -> None:
    """Store captions with the chips: a ``captions`` column and the store's attributes.

    The chip table is rewritten atomically (temporary file, then rename) with a ``captions``
    list column, and ``attrs["captions"]`` records ``seed``, ``per_chip``, ``templates_id``, every
    template of the pool (``templates``), ``method``, ``min_pixels`` and how many chips were
    captioned from real reference maps, so reports can state how captions were made.

    Args:
        store: A :class:`geofm.io.store.ChipStore` opened from a writable path.
        captions: Output of :func:`caption_store` (one list per chip).
        seed: The seed the captions were made with.
        templates_id: The template pool they were made with.
        use_masks: Whether reference maps were allowed (as given to :func:`caption_store`).
        min_pixels: The smallest component used for box captions.

    Raises:
        GeofmError: A store without labels, a chip count mismatch, non-string captions or an
            unknown template pool.
    """
    _check_labelled(store)
    if len(captions) != len(store):
        raise GeofmError(f"{len(captions)} caption lists for {len(store)} chips", store.path)
    rows = []
    for i, caps in enumerate(captions):
        if isinstance(caps, str) or not all(isinstance(c, str) and c.strip() for c in caps):
            raise GeofmError(f"captions of chip {i} must be a list of non-empty strings",
                             store.path)
        rows.append([str(c) for c in caps])
    if templates_id not in TEMPLATE_SETS:
        raise GeofmError(f"unknown caption templates {templates_id!r}",
                         hint=f"choose one of {sorted(TEMPLATE_SETS)}")
    masks_ok = use_masks and "mask" in store.arrays
    masked = int((~_placeholders(store)).sum()) if masks_ok else 0
    if masked:
        method = "labels ordered by reference-map area, and Mask-to-Box box captions"
    else:
        method = "labels only"
    tset = TEMPLATE_SETS[templates_id]
    chips = store.chips.copy()
    chips["captions"] = rows
    tmp = store.path / (CHIP_TABLE + ".tmp")
    chips.to_parquet(tmp, index=False)
    os.replace(tmp, store.path / CHIP_TABLE)
    store.__dict__.pop("chips", None)
    store.attrs["captions"] = {
        "seed": int(seed),
        "per_chip": max((len(r) for r in rows), default=0),
        "templates_id": templates_id,
        "templates": [*tset["labels"], *tset["areas"], *tset["boxes"]],
        "method": method,
        "min_pixels": int(min_pixels),
        "mask_chips": masked,
        "uncaptioned_chips": sum(1 for r in rows if not r),
    }
    root = zarr.open_group(str(store.path), mode="r+")
    root.attrs[ATTRS_KEY] = store.attrs


def caption_store_file(path: str | Path, *, seed: int = 0, per_chip: int = 1) -> dict[str, Any]:
    """Caption every chip of the store at ``path`` (:func:`caption_store`) and store the
    captions with the chips (:func:`write_captions`), as ``geofm caption`` does.

    Returns:
        ``{"captioned", "uncaptioned", "per_chip", "seed", "method", "example"}``: chips with
        captions and without (no class), the captioning method recorded in the store, and
        the first caption made (``None`` when no chip has a class).

    Raises:
        StoreError: Missing or unreadable store, or a store without labels.
    """
    from geofm.io.store import open_store

    store = open_store(path)
    captions = caption_store(store, seed=seed, per_chip=per_chip)
    write_captions(store, captions, seed=seed)
    done = sum(1 for c in captions if c)
    return {"captioned": done, "uncaptioned": len(captions) - done, "per_chip": per_chip,
            "seed": seed, "method": store.attrs["captions"]["method"],
            "example": next((c[0] for c in captions if c), None)}
