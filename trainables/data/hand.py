"""Reader for the Digital Hand Atlas radiographs with the 37-landmark annotation of Payer et al.

Expected layout:

    ROOT/all.csv                      no header; one row per image: id,x1,y1,...,x37,y37
    ROOT/images/<id>.png              (or .jpg/.jpeg; other suffixes such as .mha, .nii.gz need SimpleITK)
    ROOT/splits/<name>.txt            one id per line, e.g. set1.txt, set2.txt, set3.txt (cross-validation folds)

all.csv: coordinates are pixels of the full-size image (x = column, y = row); `nan` (any case)
marks a missing coordinate, and a landmark with either coordinate missing is a NaN row. Ids are
strings (leading zeros are kept). CRLF line endings and blank lines are tolerated, in the split
files too.

A split is a split-file stem ("set1"), several stems joined by "+" ("set2+set3", the usual
training folds of one cross-validation round), or "all" (every CSV row, in CSV order).

There is no physical pixel size in the atlas. The common normalisation takes the wrist width,
the distance between landmarks 1 and 5 (1-based; `ruler=(0, 4)` 0-based), as 50 mm, so each
image gets its own spacing_mm = 50 / that distance in pixels.

Usage:

    from trainables.data import hand
    problems = hand.layout_problems(root)              # [] when the layout looks fine (cheap)
    problems = hand.check(root)                        # every problem with every file, `file:line: what`
    records = hand.load_split(root, "set2+set3")       # parses all.csv, decodes no image
    image = hand.read_hand_image(records[0].image_path)  # (H, W) uint8, decoded on demand

Quick check from a shell:

    python -m trainables.data.hand ROOT                # prints check()'s problems (exit 2), or per-split counts
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from trainables.data.checks import ImageHeaders, outside, outside_message, parsed_once
from trainables.data.record import (
    DatasetFormatError,
    Record,
    check_folder_cli,
    raise_problems,
    read_image,
    read_text_lines,
    root_problems,
)

NUM_LANDMARKS = 37
# Horizontal flip: a mirrored left hand reads as a right hand, so every landmark keeps its
# identity (thumb tip stays thumb tip); no index swap, unlike faces.
FLIP_INDEX = tuple(range(NUM_LANDMARKS))
RULER = (0, 4)  # 0-based landmarks whose distance is the wrist width (landmarks 1 and 5, 1-based)
RULER_MM = 50.0  # the wrist width taken as 50 mm (the field's usual normalisation)
ALL = "all"  # the split holding every CSV row
PIL_SUFFIXES = ("png", "jpg", "jpeg")  # tried first, in this order; read with record.read_image


def _parse_csv(path: Path, num_landmarks: int) -> tuple[dict[str, tuple[int, np.ndarray | None]], list[str]]:
    """id -> (1-based line, (K, 2) landmarks, None if the line is bad), in file order; and every problem."""
    path = Path(path)
    ncols = 1 + 2 * num_landmarks
    try:
        lines = read_text_lines(path, "landmark CSV")
    except DatasetFormatError as e:
        return {}, [str(e)]
    rows: dict[str, tuple[int, np.ndarray | None]] = {}
    problems = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        rid = fields[0]
        if not rid:
            problems.append(f"{path}:{lineno}: empty id in column 1")
            continue
        if rid in rows:
            problems.append(f"{path}:{lineno}: id {rid!r} already given on line {rows[rid][0]}")
            continue
        if len(fields) != ncols:
            problems.append(
                f"{path}:{lineno}: expected {ncols} columns (id + {num_landmarks} x,y pairs), found {len(fields)}"
            )
            rows[rid] = (lineno, None)
            continue
        values = np.empty(2 * num_landmarks, dtype=np.float64)
        bad = []
        for col, text in enumerate(fields[1:], start=2):
            try:
                values[col - 2] = float(text)  # accepts nan / NaN / NAN
                if math.isinf(values[col - 2]):
                    raise ValueError
            except ValueError:
                bad.append(f'{path}:{lineno}: column {col}: expected a number or nan, got "{text}"')
        problems += bad
        if bad:
            rows[rid] = (lineno, None)
            continue
        xy = values.reshape(num_landmarks, 2)
        xy[np.isnan(xy).any(axis=1)] = np.nan  # half a landmark is no landmark
        rows[rid] = (lineno, xy)
    return rows, problems


def _read_csv_rows(path: Path, num_landmarks: int) -> dict[str, tuple[int, np.ndarray]]:
    """id -> (1-based line, (K, 2) landmarks), in file order; DatasetFormatError naming the first problem."""
    rows, problems = _parse_csv(path, num_landmarks)
    raise_problems(problems)
    return rows


def read_csv(path: Path, num_landmarks: int = NUM_LANDMARKS) -> dict[str, np.ndarray]:
    """Parse all.csv -> {id: (K, 2) float64 (x, y) pixels, NaN row = missing}, in file order."""
    if num_landmarks < 1:
        raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
    return {rid: xy for rid, (_, xy) in _read_csv_rows(Path(path), num_landmarks).items()}


def split_names(root: Path) -> list[str]:
    """Valid split names: "all", then the stems of ROOT/splits/*.txt, sorted ("+" joins stems).

    "all" always means every CSV row; a splits/all.txt, if any, is not used.
    """
    split_dir = Path(root) / "splits"
    stems = sorted(p.stem for p in split_dir.glob("*.txt") if p.is_file()) if split_dir.is_dir() else []
    return [ALL] + [s for s in stems if s != ALL]


def split_stems(root: Path, split: str) -> list[str] | None:
    """The split-file stems a split argument names; None for "all". ValueError when unknown."""
    if split == ALL:
        return None
    valid = split_names(root)
    stems = split.split("+")
    if any(s not in valid or s == ALL for s in stems) or len(set(stems)) != len(stems):
        raise ValueError(
            f"unknown split {split!r}; valid splits: {', '.join(valid)} "
            "(or distinct split-file names joined by '+', e.g. 'set2+set3')"
        )
    return stems


def _split_file_ids(split_path: Path, csv_path: Path, rows: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """(id, "file:line" where it is listed) of one split file, in order; and every problem."""
    try:
        lines = read_text_lines(split_path, "split file")
    except DatasetFormatError as e:
        return [], [str(e)]
    out: list[tuple[str, str]] = []
    problems = []
    seen: dict[str, str] = {}
    for lineno, line in enumerate(lines, start=1):
        rid = line.strip()
        if not rid:
            continue
        where = f"{split_path}:{lineno}"
        if rid not in rows:
            problems.append(f"{where}: id {rid!r} is not in {csv_path}")
        elif rid in seen:
            problems.append(f"{where}: id {rid!r} already listed at {seen[rid]}")
        else:
            seen[rid] = where
            out.append((rid, where))
    return out, problems


def _split_ids(root: Path, stems: list[str] | None, csv_path: Path, rows: dict) -> list[tuple[str, str]]:
    """(id, where it is listed) for a split, in split-file order (CSV order for "all")."""
    if stems is None:
        return [(rid, f"{csv_path}:{line}") for rid, (line, _) in rows.items()]
    out: list[tuple[str, str]] = []
    problems = []
    seen: dict[str, str] = {}
    for stem in stems:
        ids, bad = _split_file_ids(Path(root) / "splits" / f"{stem}.txt", csv_path, rows)
        problems += bad
        for rid, where in ids:
            if rid in seen:  # the same id in two joined split files
                problems.append(f"{where}: id {rid!r} already listed at {seen[rid]}")
            else:
                seen[rid] = where
                out.append((rid, where))
    raise_problems(problems)
    return out


def _have_simpleitk() -> bool:
    return importlib.util.find_spec("SimpleITK") is not None


def _image_index(image_dir: Path) -> dict[str, list[tuple[str, Path]]]:
    """name prefix before any "." -> [(rest of the name, path)], so "a.nii.gz" is found for id "a"."""
    if not image_dir.is_dir():
        raise DatasetFormatError(f"{image_dir}: image folder not found")
    index: dict[str, list[tuple[str, Path]]] = {}
    for p in image_dir.iterdir():
        name = p.name
        for i, ch in enumerate(name):
            if ch == "." and i > 0:
                index.setdefault(name[:i], []).append((name[i + 1 :], p))
    return index


def _pick_image(index: dict, image_dir: Path, rid: str, where: str) -> Path:
    candidates = [(rest, p) for rest, p in index.get(rid, []) if p.is_file()]
    for suffix in PIL_SUFFIXES:
        for rest, p in candidates:
            if rest.lower() == suffix:
                return p
    if not candidates:
        raise DatasetFormatError(
            f"{image_dir / (rid + '.png')}: image of id {rid!r} not found (also tried .jpg, .jpeg and any "
            f"other suffix; id listed at {where})"
        )
    path = min(p for _, p in candidates)
    if not _have_simpleitk():
        raise DatasetFormatError(
            f"{path}: image of id {rid!r} exists only in a format that needs SimpleITK "
            "(pip install SimpleITK), or convert it to PNG"
        )
    return path


def load_split(
    root: Path,
    split: str,
    num_landmarks: int = NUM_LANDMARKS,
    ruler: tuple[int, int] = RULER,
    ruler_mm: float = RULER_MM,
) -> list[Record]:
    """Records of a split, in split-file order ("all": CSV order). Parses all.csv; decodes no image.

    spacing_mm = ruler_mm / ‖p[ruler[0]] - p[ruler[1]]‖ per image (mm per pixel from the wrist width).
    """
    if num_landmarks < 1:
        raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
    if not ruler_mm > 0:
        raise ValueError(f"ruler_mm must be > 0, got {ruler_mm}")
    a, b = ruler
    if not (0 <= a < num_landmarks and 0 <= b < num_landmarks) or a == b:
        raise ValueError(f"ruler must be two distinct landmark indices in 0..{num_landmarks - 1}, got {ruler}")
    root = Path(root)
    stems = split_stems(root, split)
    csv_path = root / "all.csv"
    rows = _read_csv_rows(csv_path, num_landmarks)
    ids = _split_ids(root, stems, csv_path, rows)
    image_dir = root / "images"
    index = _image_index(image_dir)

    records = []
    problems = []
    for rid, where in ids:
        line, xy = rows[rid]
        missing = [i + 1 for i in (a, b) if np.isnan(xy[i]).any()]
        if missing:
            problems.append(
                f"{csv_path}:{line}: id {rid!r} lacks ruler landmark {missing[0]} (1-based), "
                f"needed for its mm scale (ruler_mm / distance of landmarks {a + 1} and {b + 1})"
            )
            continue
        dist = float(np.hypot(*(xy[a] - xy[b])))
        if dist == 0.0:
            problems.append(f"{csv_path}:{line}: ruler landmarks {a + 1} and {b + 1} coincide")
            continue
        try:
            path = _pick_image(index, image_dir, rid, where)
        except DatasetFormatError as e:
            problems.append(str(e))
            continue
        records.append(Record(id=rid, image_path=path, landmarks=xy, spacing_mm=ruler_mm / dist))
    raise_problems(problems)
    return records


def read_hand_image(path: Path) -> np.ndarray:
    """Decode a hand radiograph -> (H, W) uint8. PNG/JPEG via record.read_image; other formats via
    SimpleITK, rescaled linearly from the image's min..max to 0..255."""
    path = Path(path)
    if path.suffix.lower().lstrip(".") in PIL_SUFFIXES + ("bmp",):
        return read_image(path)
    try:
        import SimpleITK as sitk
    except ImportError:
        raise DatasetFormatError(f"{path}: reading this format needs SimpleITK (pip install SimpleITK)") from None
    if not path.is_file():
        raise DatasetFormatError(f"{path}: image file not found")
    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)
    except RuntimeError as e:
        raise DatasetFormatError(f"{path}: cannot decode image ({e})") from None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # vector pixels (RGB/RGBA) -> mean of colour channels
        arr = arr[..., :3].mean(axis=-1)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise DatasetFormatError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def layout_problems(root: Path) -> list[str]:
    """Human-readable problems with the folder layout; [] when it looks fine.

    Cheap (existence checks only, nothing is parsed or decoded). check() adds the files' contents.
    """
    root = Path(root)
    problems = root_problems(root)
    if problems:
        return problems
    if not (root / "all.csv").is_file():
        problems.append(f"{root / 'all.csv'}: landmark CSV missing (id,x1,y1,...,x37,y37 per row)")
    if not (root / "images").is_dir():
        problems.append(f"{root / 'images'}: image folder missing")
    split_dir = root / "splits"
    if not split_dir.is_dir():
        problems.append(f"{split_dir}: split folder missing (one <name>.txt of ids per split)")
    elif not any(p.is_file() for p in split_dir.glob("*.txt")):
        problems.append(f"{split_dir}: no .txt split files")
    return problems


def check(root: Path, num_landmarks: int = NUM_LANDMARKS, cache_dir: Path | None = None) -> list[str]:
    """Every problem with the dataset, `file:line: what`: the layout, all.csv and every split file
    parsed in full, each CSV row's image found and its header read (through the header cache in
    cache_dir, see checks.py), and each landmark inside its image. Images in a format that needs
    SimpleITK are found but their headers are not read. The ruler depends on the config: load_split
    checks it, per split."""
    root = Path(root)
    problems = layout_problems(root)
    if problems:
        return problems
    csv_path = root / "all.csv"
    rows, problems = parsed_once(csv_path, _parse_csv, num_landmarks)
    problems = list(problems)
    for split_path in sorted(p for p in (root / "splits").glob("*.txt") if p.is_file()):
        problems += _split_file_ids(split_path, csv_path, rows)[1]
    image_dir = root / "images"
    index = _image_index(image_dir)
    with ImageHeaders(cache_dir) as headers:
        for rid, (line, xy) in rows.items():
            try:
                path = _pick_image(index, image_dir, rid, f"{csv_path}:{line}")
                if path.suffix.lower().lstrip(".") not in PIL_SUFFIXES + ("bmp",):
                    continue  # read by SimpleITK; its header is not checked here
                info = headers.read(path)
            except DatasetFormatError as e:
                problems.append(str(e))
                continue
            if xy is not None:
                problems += [
                    f"{csv_path}:{line}: id {rid!r}: {outside_message(k, xy[k], info, path)}" for k in outside(xy, info)
                ]
    return problems


def _describe(root: Path):
    for split in split_names(root):
        recs = load_split(root, split)
        sp = np.array([r.spacing_mm for r in recs])
        yield f"{split}: {len(recs)} images, spacing {sp.min():.3f}..{sp.max():.3f} mm/px"


if __name__ == "__main__":
    check_folder_cli("hand", check, _describe)
