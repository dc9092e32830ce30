"""Sweep files -> lists of runs.

A sweep file is a base run config (the sections of ``RunSpec``) plus a ``[sweep]`` table:

    [sweep]
    name = "quick"                 # default: the file's stem
    seeds = [0, 1]                 # one run per seed (sets train.seed)
    fuse = 4                       # train up to 4 compatible runs as one fused group
    [sweep.product]                # cartesian product of named axes
    train.lr = [1e-3, 2e-4]
    [[sweep.zip]]                  # a group of axes that vary together
    model.hidden = [[16, 32, 32, 16], [32, 64, 64, 32]]
    train.lr = [2e-4, 5e-4]
    [[sweep.cases]]                # hand-written variants, each a partial config
    label = "impulse"
    degradation = { name = "impulse", params = { rho_end = 0.25 } }

Runs = cases x product x zip groups x seeds. Each run's id is a short hash of its resolved
config (``RunSpec.run_identity``), so the same sweep file always finds the same runs.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from hpcdiff.config import tomlio
from hpcdiff.config.registry import unknown_message
from hpcdiff.config.spec import SECTIONS, SEED_LIMIT, RunSpec, SpecError, check_text

# Completes a validated spec with the registries' knowledge (hpcdiff.resolve.validate_spec).
Resolver = Callable[[RunSpec], RunSpec]

SWEEP_KEYS = ("name", "seeds", "product", "zip", "cases", "fuse")
# The sweep name is a directory name and a label lands in file names of the analysis; both
# also carry suffixes (".tmp<pid>", "-<run id>.png"). 100 characters stays well under the
# 255-byte NAME_MAX of every common file system, even at 2 bytes per character.
MAX_NAME = 100
# A sweep bigger than this is a mistake (an axis pasted with a range of thousands); checked
# from the axis lengths before the cartesian product is built.
MAX_RUNS = 10_000


@dataclass(frozen=True)
class SweepRun:
    """One run a sweep file expands to, before it has a directory (analysis.load.Run is a
    run read back from its directory)."""

    run_id: str
    spec: RunSpec
    # The values that distinguish this run within its sweep, by dotted key path.
    axes: dict = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class Sweep:
    name: str
    source: str
    runs: tuple[SweepRun, ...]
    # Dotted key paths whose values differ between runs (the columns worth showing).
    varying: tuple[str, ...] = ()
    # The most runs trained as one fused group ([sweep] fuse; 1 = off): config/fusion.py.
    fuse: int = 1


def run_id(spec: RunSpec) -> str:
    blob = json.dumps(spec.run_identity(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, resolve: Resolver) -> Sweep:
    """``resolve`` completes each run's spec with what the registries know (degradation
    parameters, recipe values): ``hpcdiff.resolve.validate_spec``, passed in from above so
    that this module stays stdlib-only. Run ids hash the resolved spec."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise SpecError(f"sweep file not found: {path}")
    try:
        raw = tomlio.load(path)
    except UnicodeDecodeError as err:
        raise SpecError(f"not valid TOML: not UTF-8 text ({err.reason} at byte {err.start})", source=source) from None
    except OSError as err:
        raise SpecError(f"cannot read the sweep file: {err.strerror or err}", source=source) from None
    except Exception as err:  # tomllib's message has the line and column
        raise SpecError(f"not valid TOML: {err}", source=source) from None
    if not raw:
        # Nothing but whitespace or comments: expanding it would launch one run of all
        # defaults, which nobody asks for on purpose.
        raise SpecError("the sweep file is empty (no settings, only whitespace or comments)", source=source)
    try:
        return expand(raw, name_default=path.stem, source=source, overrides=overrides, resolve=resolve)
    except SpecError as err:
        raise (err if err.source else err.with_source(source)) from None


def parse_overrides(overrides) -> list[tuple[list[str], object]]:
    """``--set section.key=value`` -> (key path, value). They are applied last, over the
    base, the cases and the axes, so an override holds for every run."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set expects SECTION.KEY=VALUE, got {item!r}", path="--set")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if len(parts) < 2 or not all(parts):
            raise SpecError(f"--set expects SECTION.KEY=VALUE, got {item!r}", path="--set")
        if not text.strip():
            # An empty value is almost always a shell variable that expanded to nothing.
            raise SpecError(f"--set {key}= has no value (for an empty string write {key}='\"\"')", path=f"--set {key}")
        if parts[0] == "sweep":
            if len(parts) != 2 or parts[1] not in ("name", "seeds", "fuse"):
                raise SpecError(
                    f"only sweep.name, sweep.seeds and sweep.fuse can be set, got {key!r}", path=f"--set {key}"
                )
        else:
            _check_key_path(key, f"--set {key}")
        parsed.append((parts, tomlio.parse_value(text.strip())))
    return parsed


def expand(
    raw: dict, *, name_default: str = "sweep", source: str | None = None, overrides=(), resolve: Resolver
) -> Sweep:
    raw = copy.deepcopy(raw)
    sweep_table = raw.pop("sweep", {})
    if not isinstance(sweep_table, dict):
        raise SpecError("must be a table", path="sweep")
    settings = parse_overrides(overrides)
    for parts, value in settings:
        if parts[0] == "sweep":
            sweep_table[parts[1]] = value
    _check_tables(raw, sweep_table)
    name = _sweep_name(sweep_table, name_default)
    fuse = check_fuse(sweep_table.get("fuse", 1), "sweep.fuse")
    axes = _axes(sweep_table)
    seeds = sweep_table.get("seeds")
    if seeds is not None:
        axes.append(_seed_axis(seeds))
    cases = _cases(sweep_table)
    _check_count(cases, axes)
    runs = _runs(raw, cases, axes, settings, resolve)
    varying = _varying([r.spec for r in runs])
    return Sweep(name=name, source=str(source or ""), runs=tuple(runs), varying=tuple(varying), fuse=fuse)


def check_fuse(value, where: str) -> int:
    """``[sweep] fuse`` (or ``--fuse``): the most runs per fused group, an integer >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(
            f"must be an integer >= 1 (the most runs trained as one fused group; 1 = off), got {value!r}", path=where
        )
    return value


def _check_tables(raw: dict, sweep_table: dict) -> None:
    for key in raw:
        if key not in SECTIONS:
            raise SpecError(unknown_message("section", key, [*SECTIONS, "sweep"]), path=key)
    for key in sweep_table:
        if key not in SWEEP_KEYS:
            raise SpecError(unknown_message("key", key, SWEEP_KEYS, listing="valid keys"), path=f"sweep.{key}")


def _sweep_name(sweep_table: dict, name_default: str) -> str:
    name = sweep_table.get("name", name_default)
    if isinstance(name, str) and len(name) > MAX_NAME:
        raise SpecError(
            f"must be at most {MAX_NAME} characters (it names a directory), got {len(name)}"
            + ("" if "name" in sweep_table else " (the default is the file's name: set sweep.name)"),
            path="sweep.name",
        )
    if (
        not isinstance(name, str)
        or not name
        or name.startswith(".")
        or not all(c.isalnum() or c in "-_." for c in name)
    ):
        raise SpecError(f"must be letters, digits, '-', '_' or '.' (not first), got {name!r}", path="sweep.name")
    return name


def _seed_axis(seeds) -> list[dict]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise SpecError(f"must be a non-empty list of integers, got {seeds!r}", path="sweep.seeds")
    for i, s in enumerate(seeds):
        if not 0 <= s < SEED_LIMIT:
            raise SpecError(f"must be in [0, 2**32), got {s}", path=f"sweep.seeds[{i}]")
    return [{"train.seed": s} for s in seeds]


def _cases(sweep_table: dict) -> list[dict]:
    cases = sweep_table.get("cases", [{}]) or [{}]
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        raise SpecError("must be an array of tables ([[sweep.cases]])", path="sweep.cases")
    for case_index, case in enumerate(cases):
        label = case.get("label", "")
        where = f"sweep.cases[{case_index}].label"
        if not isinstance(label, str):
            raise SpecError(f"must be a string, got {label!r}", path=where)
        check_text(label, where, max_len=MAX_NAME)
    return cases


def _check_count(cases: list[dict], axes: list[list[dict]]) -> None:
    count = len(cases)
    for axis in axes:
        count *= len(axis)
    if count > MAX_RUNS:
        sizes = " x ".join(str(len(a)) for a in axes)
        raise SpecError(
            f"expands to {count} runs ({len(cases)} case(s) x axes of {sizes} values), "
            f"more than {MAX_RUNS}; split it into several sweeps",
            path="sweep",
        )


def _runs(raw: dict, cases: list[dict], axes, settings, resolve: Resolver) -> list[SweepRun]:
    """Cases x axes, each merged over the base config, with the --set overrides last; runs
    that resolve to the same id are kept once."""
    runs: list[SweepRun] = []
    seen: set[str] = set()
    for case_index, case in enumerate(cases):
        case = dict(case)
        label = case.pop("label", "")
        for combo in itertools.product(*axes) if axes else [()]:
            assignment: dict = {}
            for part in combo:
                assignment.update(part)
            merged = _deep_merge(raw, case)
            for key, value in assignment.items():
                _set_path(merged, key.split("."), copy.deepcopy(value))
            for parts, value in settings:
                if parts[0] != "sweep":
                    _set_path(merged, parts, copy.deepcopy(value))
                    assignment.pop(".".join(parts), None)
            try:
                spec = RunSpec.from_dict(merged)
            except SpecError as err:
                where = f" (in sweep.cases[{case_index}])" if len(cases) > 1 else ""
                raise SpecError(err.message + where, path=err.path) from None
            spec = resolve(spec)
            rid = run_id(spec)
            if rid in seen:
                continue
            seen.add(rid)
            shown = dict(flatten_settings(case, ""))
            shown.update(assignment)
            for parts, _value in settings:
                shown.pop(".".join(parts), None)
            runs.append(SweepRun(run_id=rid, spec=spec, axes=shown, label=label))
    return runs


def _axes(sweep_table: dict) -> list[list[dict]]:
    axes: list[list[dict]] = []
    product = sweep_table.get("product", {})
    if not isinstance(product, dict):
        raise SpecError("must be a table", path="sweep.product")
    for key, values in _flatten_axes(product, "").items():
        _check_key_path(key, f"sweep.product.{key}")
        if not isinstance(values, list) or not values:
            raise SpecError(f"an axis must be a non-empty list of values, got {values!r}", path=f"sweep.product.{key}")
        axes.append([{key: v} for v in values])
    groups = sweep_table.get("zip", [])
    if not isinstance(groups, list):
        raise SpecError("must be an array of tables ([[sweep.zip]])", path="sweep.zip")
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            raise SpecError(f"must be a table of axes, got {group!r}", path=f"sweep.zip[{i}]")
        flat = _flatten_axes(group, "")
        lengths = set()
        for key, values in flat.items():
            _check_key_path(key, f"sweep.zip[{i}].{key}")
            if not isinstance(values, list) or not values:
                raise SpecError(
                    f"an axis must be a non-empty list of values, got {values!r}", path=f"sweep.zip[{i}].{key}"
                )
            lengths.add(len(values))
        if len(lengths) > 1:
            detail = ", ".join(f"{k}: {len(v)}" for k, v in flat.items())
            raise SpecError(f"zipped axes must have equal lengths, got {detail}", path=f"sweep.zip[{i}]")
        if flat:
            n = lengths.pop()
            axes.append([{k: v[j] for k, v in flat.items()} for j in range(n)])
    return axes


def _flatten_axes(table: dict, prefix: str) -> dict:
    """Nested axis tables -> dotted paths. A list ends a path; so does degradation.params.X,
    whose values may themselves be tables."""
    out = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not path.startswith("degradation.params."):
            out.update(_flatten_axes(value, path + "."))
        else:
            out[path] = value
    return out


def _check_key_path(key: str, where: str) -> None:
    parts = key.split(".")
    section = parts[0]
    if section not in SECTIONS:
        raise SpecError(unknown_message("section", section, SECTIONS), path=where)
    valid = [f.name for f in fields(SECTIONS[section])]
    if len(parts) < 2 or parts[1] not in valid:
        bad = parts[1] if len(parts) > 1 else ""
        raise SpecError(
            unknown_message("key", key, valid, listing="valid keys", match=bad, prefix=f"{section}."), path=where
        )
    if len(parts) > 2 and not (section == "degradation" and parts[1] == "params" and len(parts) == 3):
        raise SpecError(f"{key!r} is not a settable key", path=where)


def _set_path(d: dict, parts: list[str], value) -> None:
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            d[p] = nxt
        d = nxt
    d[parts[-1]] = value


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "params":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def flatten_settings(d: dict, prefix: str = ""):
    """(dotted key, value) of a nested settings dict; degradation.params stays one value."""
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and path != "degradation.params":
            yield from flatten_settings(v, path + ".")
        else:
            yield path, v


def _varying(specs: list[RunSpec]) -> list[str]:
    if len(specs) < 2:
        return []
    flat = [dict(flatten_settings(s.run_identity(), "")) for s in specs]
    # Every run's keys, not only the first's: a key that one model has and another lacks
    # (a UNet's channel_mults beside a CNN; model.name, absent at its default) varies too.
    keys = list(dict.fromkeys(key for f in flat for key in f))
    return [key for key in keys if len({json.dumps(f.get(key), sort_keys=True) for f in flat}) > 1]
